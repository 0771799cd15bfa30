"""From what a member typed (slash-command options) to an engine request: defaults, limits, styles, rules.

No Discord here, so every rule is testable on its own and the same for ``/imagine``, rerun buttons and
reactions. Every refusal is a :class:`engine.requests.RequestError` whose message says what to change; the cogs
show it ephemerally.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from bot.config import GenerationSettings, GuildSettings
from bot.store.settings import StyleDefaults
from engine.requests import GenerationRequest, RequestError

# Aspect presets offered as choices: (label, width ratio, height ratio).
ASPECTS: dict[str, tuple[int, int]] = {
    "1:1": (1, 1), "3:2": (3, 2), "2:3": (2, 3), "4:3": (4, 3), "3:4": (3, 4), "16:9": (16, 9), "9:16": (9, 16),
}
_SIZE = re.compile(r"^\s*(\d{1,5})\s*[x×*,]\s*(\d{1,5})\s*$", re.IGNORECASE)
MIN_STRENGTH, MAX_STRENGTH = -2.0, 2.0


@dataclass(frozen=True)
class ImagineOptions:
    """``/imagine``'s options as typed; ``None`` = not given (defaults apply)."""

    prompt: str
    negative: str | None = None
    steps: int | None = None
    cfg: float | None = None
    seed: int | None = None
    size: str | None = None
    aspect: str | None = None
    sampler: str | None = None
    count: int | None = None
    hypernet: str | None = None
    strength: float | None = None
    embedding: str | None = None


def _round8(value: float) -> int:
    return max(8, round(value / 8) * 8)


def parse_size(size: str | None, aspect: str | None, native: tuple[int, int], max_pixels: int) -> tuple[int, int]:
    """(width, height): an explicit ``WxH``, or an aspect preset with the native size's pixel count, or native."""
    if size and aspect:
        raise RequestError("size and aspect: give one of them, not both")
    if size:
        match = _SIZE.match(size)
        if match is None:
            raise RequestError(f"size: write it as WIDTHxHEIGHT, for example 512x768; got {size!r}")
        width, height = int(match.group(1)), int(match.group(2))
        if width % 8 or height % 8 or not width or not height:
            raise RequestError(f"size: width and height must be multiples of 8, for example "
                               f"{_round8(width or 8)}x{_round8(height or 8)}; got {width}x{height}")
    elif aspect:
        if aspect not in ASPECTS:
            raise RequestError(f"aspect: choose one of {', '.join(ASPECTS)}; got {aspect!r}")
        rw, rh = ASPECTS[aspect]
        area = native[0] * native[1]
        scale = (area / (rw * rh)) ** 0.5
        width, height = _round8(rw * scale), _round8(rh * scale)
    else:
        width, height = native
    if width * height > max_pixels:
        raise RequestError(f"size: {width}x{height} is {width * height:,} pixels; this server allows at most "
                           f"{max_pixels:,} (for example {native[0]}x{native[1]})")
    return width, height


def banned_word(text: str, banned: list[str]) -> str | None:
    """The first banned word or phrase found in ``text`` as whole words (case-insensitive), or None."""
    lowered = text.casefold()
    for word in banned:
        w = word.strip().casefold()
        if w and re.search(rf"(?<!\w){re.escape(w)}(?!\w)", lowered):
            return word
    return None


def apply_styles(prompt: str, negative: str, styles: StyleDefaults) -> tuple[str, str]:
    """A member's personal defaults appended to the prompts: embeddings by name, hypernetworks as tags.

    Appended as text (not hidden state) so the result's parameters and infotext show them and a copy-paste
    into A1111 reproduces the image.
    """
    extra = [*styles.embeddings, *(f"<hypernet:{h.name}:{h.strength:g}>" for h in styles.hypernetworks)]
    if extra:
        prompt = ", ".join([p for p in (prompt.strip(), *extra) if p])
    if styles.negative_embeddings:
        negative = ", ".join([p for p in (negative.strip(), *styles.negative_embeddings) if p])
    return prompt, negative


def compose_request(options: ImagineOptions, *, defaults: GenerationSettings, guild: GuildSettings,
                    styles: StyleDefaults, native: tuple[int, int], guild_id: int | None) -> GenerationRequest:
    """The request ``options`` ask for, or a :class:`RequestError` naming the option to change."""
    prompt = options.prompt.strip()
    if not prompt:
        raise RequestError("prompt: describe the image you want, for example `a red circle on a blue background`")
    negative = defaults.negative_prompt if options.negative is None else options.negative
    for label, text in (("prompt", prompt), ("negative", negative)):
        word = banned_word(text, guild.banned_words)
        if word is not None:
            raise RequestError(f"{label}: {word!r} is not allowed on this server; remove it and try again")
    if options.strength is not None and options.hypernet is None:
        raise RequestError("strength: it sets the hypernet option's strength; choose a hypernet too")
    if options.hypernet:
        strength = 1.0 if options.strength is None else options.strength
        if not MIN_STRENGTH <= strength <= MAX_STRENGTH:
            raise RequestError(f"strength: must be between {MIN_STRENGTH:g} and {MAX_STRENGTH:g}, got {strength:g}")
        prompt = f"{prompt} <hypernet:{options.hypernet}:{strength:g}>"
    if options.embedding:
        prompt = f"{prompt}, {options.embedding}"
    prompt, negative = apply_styles(prompt, negative, styles)
    max_steps = min(defaults.max_steps, guild.max_steps or defaults.max_steps)
    max_count = min(defaults.max_count, guild.max_count or defaults.max_count)
    steps = min(defaults.steps, max_steps) if options.steps is None else options.steps
    if not 1 <= steps <= max_steps:
        raise RequestError(f"steps: must be between 1 and {max_steps}, got {steps}")
    count = 1 if options.count is None else options.count
    if not 1 <= count <= max_count:
        raise RequestError(f"count: must be between 1 and {max_count}, got {count}")
    base = (defaults.width or native[0], defaults.height or native[1])
    width, height = parse_size(options.size, options.aspect, base, defaults.max_pixels)
    return GenerationRequest(
        prompt=prompt, negative_prompt=negative, width=width, height=height, steps=steps,
        cfg_scale=defaults.cfg_scale if options.cfg is None else options.cfg,
        sampler=options.sampler or defaults.sampler, seed=-1 if options.seed is None else options.seed,
        count=count, guild_id=guild_id)


def rerun(request: GenerationRequest) -> GenerationRequest:
    """🔁: the same request with new random seeds."""
    return dataclasses.replace(request, seed=-1, subseed=-1, subseed_strength=0.0).with_seeds()


def variations(request: GenerationRequest, strength: float, seed: int | None = None) -> GenerationRequest:
    """🎲: every image varied from its own seed; with ``seed`` (1️⃣–4️⃣) every image varied from that one image.

    New variation seeds at ``strength`` (A1111's "Variation seed" / "Variation strength").
    """
    if seed is None:
        return dataclasses.replace(request, subseed=-1, subseed_strength=strength).with_seeds()
    return dataclasses.replace(request, seed=seed, subseed=-1, subseed_strength=strength,
                               same_seed=True).with_seeds()
