"""Prompt text → weighted segments and extra-network tags, in A1111's prompt language.

Users paste prompts from AUTOMATIC1111 and expect the same emphasis: ``(text)`` ×1.1, ``[text]`` ÷1.1,
``(text:1.3)`` explicit, nesting multiplies, ``\\(`` escapes, ``BREAK`` starts a new token chunk, and
``<hypernet:name:0.7>`` tags pick hypernetworks. The weights come out exactly as A1111 computes them (same
multiplication order, same merging of neighbours), so an image reproduces from its infotext.

Where A1111 fails silently we raise :class:`PromptError` instead, because a Discord user cannot see a silently
ignored typo: unbalanced or mismatched brackets, prompt editing ``[a:b:0.5]`` and alternation ``[a|b]`` (which we
do not implement, so treating them as text would render something other than what was asked), tag kinds other than
``hypernet`` (``<lora:…>``), malformed names or multipliers, explicit weights outside 0..100 and over-long prompts.

Positions in messages are 1-based character numbers in the text the user typed (tags included), because that is
what a person counts; :attr:`ExtraNetwork.position` and :attr:`PromptError.position` are 0-based offsets for code.

Written from the documented behaviour (docs/ARCHITECTURE.md, shared/reference/a1111-compat.md), not from A1111's
source, which is AGPL.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from engine.requests import RequestError

__all__ = [
    "MAX_MULTIPLIER",
    "MAX_PROMPT_CHARS",
    "MAX_WEIGHT",
    "MIN_WEIGHT",
    "NAME_PATTERN",
    "SUPPORTED_NETWORKS",
    "ExtraNetwork",
    "ParsedPrompt",
    "PromptError",
    "Segment",
    "is_valid_name",
    "parse_prompt",
    "strip_networks",
]

SUPPORTED_NETWORKS = frozenset({"hypernet"})
MAX_PROMPT_CHARS = 8000
"""Far above what CLIP can use (75 tokens per chunk); bounds the work one request can cause."""
MAX_MULTIPLIER = 10.0
"""Hypernetwork strengths beyond ±10 only produce noise; a bigger number is almost surely a typo."""
MIN_WEIGHT = 0.0
MAX_WEIGHT = 100.0
"""Explicit emphasis weights must lie in [MIN_WEIGHT, MAX_WEIGHT]. A1111 accepts anything, but a negative weight
flips the token's embedding and weights past 100 swamp the prompt; both are far likelier typos than intent."""

NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""Adapter names: ASCII letters, digits, ``_`` and ``-`` — safe as file names and in Discord autocomplete."""

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
"""A1111 multiplies by the reciprocal rather than dividing; kept so the floats match bit for bit."""

# A1111's tag shape: a word, a colon, then anything up to the next '>'.
_TAG_RE = re.compile(r"<(\w+):([^>]+)>")
# Plain decimal numbers (optional exponent). Stricter than float(): no 'nan', 'inf' or '1_0'.
_MULTIPLIER_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# BREAK as a whole uppercase word; the whitespace around it belongs to the marker, not to the text.
_BREAK_RE = re.compile(r"\s*\bBREAK\b\s*")
# One token of the emphasis language. Every character of the input is matched by exactly one alternative, in this
# order: escapes before lone backslashes, a ':weight)' before a plain ':'.
_TOKEN_RE = re.compile(
    r"""
      (?P<escape>\\[()\[\]\\])
    | (?P<weight>:\s*(?P<number>[+-]?[.\d]+)\s*\))
    | (?P<open>[(\[])
    | (?P<close>[)\]])
    | (?P<colon>:)
    | (?P<pipe>\|)
    | (?P<text>[^\\()\[\]:|]+|\\)
    """,
    re.VERBOSE,
)
_CLOSER = {"(": ")", "[": "]"}
_OPENER = {")": "(", "]": "["}
_EXCERPT_RADIUS = 12
_TAG_DISPLAY_CHARS = 60
_NAME_DISPLAY_CHARS = 30


class PromptError(RequestError):
    """The prompt cannot be parsed. The message is one line for the user: what, where, how to fix.

    ``position`` is the 0-based offset in the original text (``None`` for whole-prompt problems such as length),
    so a caller can point at it or prefix "negative prompt: " without re-parsing the message.
    """

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message)
        self.position = position


@dataclass(frozen=True)
class Segment:
    """A run of prompt text sharing one emphasis weight, or a ``BREAK`` marker (text "" and weight 1.0)."""

    text: str
    weight: float = 1.0
    is_break: bool = False


@dataclass(frozen=True)
class ExtraNetwork:
    """One ``<kind:name[:multiplier]>`` tag; ``position`` is its 0-based offset in the original text."""

    kind: str
    name: str
    multiplier: float = 1.0
    position: int = 0


@dataclass(frozen=True)
class ParsedPrompt:
    """A parsed prompt: weighted segments for the text encoder and the extra networks it asked for."""

    segments: tuple[Segment, ...]
    networks: tuple[ExtraNetwork, ...]

    @property
    def text(self) -> str:
        """Plain text without tags or emphasis syntax, for display and logs; a break reads as " BREAK "."""
        out = ""
        after_break = False
        for segment in self.segments:
            if segment.is_break:
                out = f"{out} BREAK" if out else "BREAK"
                after_break = True
            else:
                out = f"{out} {segment.text}" if after_break else out + segment.text
                after_break = False
        return out


def is_valid_name(name: str) -> bool:
    """True when ``name`` is usable as an adapter name (see :data:`NAME_PATTERN`)."""
    return isinstance(name, str) and NAME_PATTERN.fullmatch(name) is not None


def strip_networks(text: str) -> tuple[str, tuple[ExtraNetwork, ...]]:
    """Remove and return the extra-network tags, leaving everything else exactly as written.

    Used where only the tags matter (infotext hashes, autocomplete). Tags are validated as in
    :func:`parse_prompt`, so both agree on what a prompt asks for; emphasis syntax is not checked here.
    """
    stripped, networks, _ = _strip_tags(text)
    return stripped, networks


def parse_prompt(text: str) -> ParsedPrompt:
    """Parse a prompt into weighted segments and extra-network tags, or raise :class:`PromptError`.

    Tags are removed first (as A1111 does), then emphasis is parsed on what is left. Adjacent segments of equal
    weight are merged and empty ones dropped, so ``a (b) c`` gives three segments and ``a b`` one.
    """
    stripped, networks, origin = _strip_tags(text)
    segments = _parse_emphasis(text, stripped, origin)
    return ParsedPrompt(segments=segments, networks=networks)


# ---------------------------------------------------------------------------------------------------------------
# tags


def _strip_tags(text: str) -> tuple[str, tuple[ExtraNetwork, ...], list[int]]:
    """Tags removed, the tags, and for each kept character its offset in ``text`` (plus one past the end)."""
    if not isinstance(text, str):
        raise PromptError("the prompt must be text")
    if len(text) > MAX_PROMPT_CHARS:
        raise PromptError(
            f"the prompt is too long: {len(text)} characters, at most {MAX_PROMPT_CHARS} are allowed; shorten it"
        )
    kept: list[str] = []
    origin: list[int] = []
    networks: list[ExtraNetwork] = []
    last = 0
    for match in _TAG_RE.finditer(text):
        networks.append(_parse_tag(text, match))
        kept.append(text[last : match.start()])
        origin.extend(range(last, match.start()))
        last = match.end()
    kept.append(text[last:])
    origin.extend(range(last, len(text) + 1))
    return "".join(kept), tuple(networks), origin


def _parse_tag(text: str, match: re.Match[str]) -> ExtraNetwork:
    """Validate one tag. Whitespace around the name and multiplier is ignored (``<hypernet: x : 0.5>``)."""
    kind, body = match.group(1), match.group(2)
    position = match.start()
    tag = match.group(0)
    if len(tag) > _TAG_DISPLAY_CHARS:
        tag = tag[: _TAG_DISPLAY_CHARS - 2] + "…>"
    where = f"tag {_quote(tag)} at character {position + 1}"
    usage = "write <hypernet:name> or <hypernet:name:multiplier>"

    if kind not in SUPPORTED_NETWORKS:
        supported = ", ".join(f"<{k}:…>" for k in sorted(SUPPORTED_NETWORKS))
        hint = f" (did you mean <{kind.lower()}:…>?)" if kind.lower() in SUPPORTED_NETWORKS else ""
        raise PromptError(
            f"{where}: '{kind}' tags are not supported{hint}; only {supported} tags are, so remove it or {usage}",
            position,
        )
    fields = body.split(":")
    if len(fields) > 2:
        raise PromptError(f"{where} has too many ':' parts; {usage}", position)
    name = fields[0].strip()
    shown = name if len(name) <= _NAME_DISPLAY_CHARS else name[: _NAME_DISPLAY_CHARS - 1] + "…"
    if not is_valid_name(name):
        raise PromptError(
            f"{where}: the name {shown!r} may only contain letters, digits, '_' and '-'; {usage}", position
        )
    multiplier = 1.0
    if len(fields) == 2:
        raw = fields[1].strip()
        if not raw:
            raise PromptError(f"{where} has an empty multiplier; {usage} such as <{kind}:{shown}:0.7>", position)
        if _MULTIPLIER_RE.fullmatch(raw) is None:
            raise PromptError(
                f"{where}: the multiplier {raw!r} is not a number; use a number between {-MAX_MULTIPLIER:g} and "
                f"{MAX_MULTIPLIER:g} such as <{kind}:{shown}:0.7>",
                position,
            )
        multiplier = float(raw)
        if not math.isfinite(multiplier) or abs(multiplier) > MAX_MULTIPLIER:
            raise PromptError(
                f"{where}: the multiplier {raw} is out of range; use a number between {-MAX_MULTIPLIER:g} and "
                f"{MAX_MULTIPLIER:g}",
                position,
            )
    return ExtraNetwork(kind=kind, name=name, multiplier=multiplier, position=position)


# ---------------------------------------------------------------------------------------------------------------
# emphasis


def _parse_emphasis(original: str, text: str, origin: list[int]) -> tuple[Segment, ...]:
    """Emphasis, escapes and BREAK over ``text`` (tags already removed); errors point into ``original``.

    Like A1111, each bracket pair multiplies the weight of everything produced since it opened when it closes,
    innermost first; that order matters for the exact float result of nested brackets.
    """
    pieces: list[list] = []  # [text, weight, is_break]
    stack: list[tuple[str, int, int]] = []  # (bracket, index into pieces where it opened, offset in text)

    def fail(offset: int, subject: str, problem: str, fix: str) -> PromptError:
        position = origin[offset]
        return PromptError(
            f"{subject} at character {position + 1} {problem} (near {_excerpt(original, position)}); {fix}",
            position,
        )

    def check_close(bracket: str, offset: int) -> None:
        if not stack:
            raise fail(offset, f"'{bracket}'", f"has no matching '{_OPENER[bracket]}'",
                       f"remove it or write '\\{bracket}' for a literal bracket")
        opener, _, opened_at = stack[-1]
        if _CLOSER[opener] != bracket:
            raise fail(offset, f"'{bracket}'", f"does not match the '{opener}' at character {origin[opened_at] + 1}",
                       f"close it with '{_CLOSER[opener]}' instead")

    def close(bracket: str, offset: int, multiplier: float | None) -> None:
        check_close(bracket, offset)
        opener, start, _ = stack.pop()
        if multiplier is None:
            multiplier = ROUND_MULTIPLIER if opener == "(" else SQUARE_MULTIPLIER
        for piece in pieces[start:]:
            if not piece[2]:
                piece[1] *= multiplier

    def inside_square() -> tuple[bool, int]:
        return (bool(stack) and stack[-1][0] == "[", stack[-1][2] if stack else 0)

    offset = 0
    while offset < len(text):
        match = _TOKEN_RE.match(text, offset)
        assert match is not None and match.end() > offset  # the alternatives cover every character
        kind = match.lastgroup
        token = match.group(0)
        if kind == "escape":
            pieces.append([token[1], 1.0, False])
        elif kind == "text":
            for i, part in enumerate(_BREAK_RE.split(token)):
                if i:
                    pieces.append(["", 1.0, True])
                pieces.append([part, 1.0, False])
        elif kind == "open":
            stack.append((token, len(pieces), offset))
        elif kind == "close":
            close(token, offset, None)
        elif kind == "weight":
            check_close(")", match.end() - 1)  # a misplaced ')' is the real mistake, whatever the number
            number = match.group("number")
            number_at = match.start("number")
            try:
                weight = float(number)
            except ValueError:
                raise fail(number_at, f"the weight {number!r}", "is not a number", "write it like (text:1.2)") from None
            if not MIN_WEIGHT <= weight <= MAX_WEIGHT:
                raise fail(number_at, f"the weight {number}", "is out of range",
                           f"use a weight between {MIN_WEIGHT:g} and {MAX_WEIGHT:g}, like (text:1.2)")
            close(")", match.end() - 1, weight)
        elif kind in ("colon", "pipe"):
            square, opened_at = inside_square()
            if square:
                if kind == "colon":
                    fix = "prompt editing like [a:b:0.5] is not supported; use (text:0.9) to weaken, or remove the ':'"
                else:
                    fix = "alternation like [a|b] is not supported; pick one of the words or remove the '|'"
                raise fail(offset, f"'{token}'", f"is inside the '[' at character {origin[opened_at] + 1}", fix)
            pieces.append([token, 1.0, False])
        offset = match.end()

    if stack:
        opener, _, opened_at = stack[0]
        raise fail(opened_at, f"'{opener}'", "is never closed",
                   f"add a matching '{_CLOSER[opener]}' or write '\\{opener}' for a literal bracket")
    return _merge(pieces)


def _merge(pieces: list[list]) -> tuple[Segment, ...]:
    """Drop empty text, merge neighbours of exactly equal weight (A1111 compares floats exactly); keep breaks."""
    segments: list[Segment] = []
    for text, weight, is_break in pieces:
        if is_break:
            segments.append(Segment("", 1.0, is_break=True))
        elif not text:
            continue
        elif segments and not segments[-1].is_break and segments[-1].weight == weight:
            segments[-1] = Segment(segments[-1].text + text, weight)
        else:
            segments.append(Segment(text, weight))
    return tuple(segments)


# ---------------------------------------------------------------------------------------------------------------
# messages


def _excerpt(text: str, position: int) -> str:
    """A short one-line excerpt around ``position``, in backticks so Discord shows it verbatim."""
    start = max(0, position - _EXCERPT_RADIUS)
    end = min(len(text), position + _EXCERPT_RADIUS + 1)
    snippet = text[start:end]
    return _quote(("…" if start > 0 else "") + snippet + ("…" if end < len(text) else ""))


def _quote(snippet: str) -> str:
    """Backtick-quote for Discord: one line, no backticks inside to break the code span."""
    return "`" + re.sub(r"\s", " ", snippet).replace("`", "'") + "`"
