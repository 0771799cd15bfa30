"""What results and progress look like in Discord: embeds, attachments, progress lines, error lines.

Pure functions from engine objects to ``discord.Embed`` / ``discord.File`` / text, so the cogs stay thin and
the look is tested without a gateway. Attachments are PNGs carrying A1111's infotext (the ``parameters``
chunk), upscaled nearest-neighbour for display; one over Discord's upload limit is re-encoded (WEBP, then
smaller JPEG) for the message while the full PNG stays on disk, and the embed says so.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import discord
import numpy as np
from PIL import Image

from engine.images import png_info, upscale_for_display
from engine.requests import GenerationRequest

EMBED_COLOUR = discord.Colour.from_rgb(120, 90, 200)
FIELD_LIMIT = 1024  # Discord's embed field value limit
DESCRIPTION_LIMIT = 4096
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024  # Discord's limit for bots in unboosted guilds (bytes)
NUMBER_EMOJI = ("1️⃣", "2️⃣", "3️⃣", "4️⃣")
RERUN, VARIATIONS, INFO, DELETE = "🔁", "🎲", "ℹ️", "❌"


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def reaction_emojis(count: int) -> list[str]:
    """The reactions added under a result: numbers only when a batch has more than one image."""
    numbers = list(NUMBER_EMOJI[:count]) if count > 1 else []
    return [RERUN, VARIATIONS, *numbers, INFO, DELETE]


@dataclass(frozen=True)
class Attachment:
    """One image as it will be uploaded: the bytes, the file name, and whether it had to be re-encoded."""

    data: bytes
    filename: str
    reencoded: bool = False

    def file(self) -> discord.File:
        return discord.File(io.BytesIO(self.data), filename=self.filename)


def png_bytes(image: Image.Image, infotext: str | None = None) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=png_info(infotext) if infotext else None, optimize=False)
    return buffer.getvalue()


def attachment_for(image: Image.Image, infotext: str, stem: str, limit: int, scale: int = 0) -> Attachment:
    """The display attachment: the upscaled PNG with infotext, else WEBP/JPEG that fits ``limit`` bytes."""
    shown = upscale_for_display(image, scale)
    data = png_bytes(shown, infotext)
    if len(data) <= limit:
        return Attachment(data, f"{stem}.png")
    for fmt, quality in (("WEBP", 90), ("JPEG", 90), ("JPEG", 75), ("JPEG", 60)):
        buffer = io.BytesIO()
        shown.convert("RGB").save(buffer, format=fmt, quality=quality)
        if buffer.tell() <= limit:
            return Attachment(buffer.getvalue(), f"{stem}.{fmt.lower()}", reencoded=True)
    # Still too big: halve the display size until it fits (a 4K result on a 10 MB limit, say).
    smaller = shown
    while True:
        smaller = smaller.resize((max(1, smaller.width // 2), max(1, smaller.height // 2)), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        smaller.convert("RGB").save(buffer, format="JPEG", quality=75)
        if buffer.tell() <= limit or smaller.width <= 64:
            return Attachment(buffer.getvalue(), f"{stem}.jpg", reencoded=True)


def preview_file(preview: np.ndarray, scale: int = 0) -> discord.File:
    """A progress preview (uint8 H×W×3) as a small PNG attachment."""
    image = upscale_for_display(Image.fromarray(preview, "RGB"), scale)
    return discord.File(io.BytesIO(png_bytes(image)), filename="preview.png")


def result_embed(request: GenerationRequest, seeds: Sequence[int], *, user: discord.abc.Snowflake | None,
                 generation_id: int, model_name: str, reencoded: bool = False, title: str = "Result") -> discord.Embed:
    """The parameters of a finished generation, each image's seed, and how to reproduce it."""
    embed = discord.Embed(title=title, description=clip(request.prompt, DESCRIPTION_LIMIT), colour=EMBED_COLOUR)
    if request.negative_prompt:
        embed.add_field(name="Negative", value=clip(request.negative_prompt, FIELD_LIMIT), inline=False)
    embed.add_field(name="Size", value=f"{request.width}×{request.height}")
    embed.add_field(name="Steps", value=str(request.steps))
    embed.add_field(name="CFG", value=f"{request.cfg_scale:g}")
    embed.add_field(name="Sampler", value=request.sampler)
    if len(seeds) == 1:
        embed.add_field(name="Seed", value=str(seeds[0]))
    else:
        embed.add_field(name="Seeds", value=clip(" · ".join(f"{i + 1}: {s}" for i, s in enumerate(seeds)),
                                                 FIELD_LIMIT), inline=False)
    if request.subseed_strength > 0:
        embed.add_field(name="Variation", value=f"seed {request.subseed}, strength {request.subseed_strength:g}")
    footer = f"#{generation_id} · {model_name}"
    name = getattr(user, "display_name", None)
    if name:
        footer = f"{name} · {footer}"
    if reencoded:
        footer += " · shown compressed; the full PNG is kept on the server"
    embed.set_footer(text=footer)
    return embed


def info_text(request: GenerationRequest, infotexts: Sequence[str], generation_id: int) -> str:
    """ℹ️: the full A1111 parameters of every image, ready to paste into A1111's PNG Info."""
    blocks = [f"**Generation #{generation_id}**"]
    for i, text in enumerate(infotexts):
        header = f"Image {i + 1}:\n" if len(infotexts) > 1 else ""
        blocks.append(f"{header}```\n{text.replace('```', '`​``')}\n```")
    return clip("\n".join(blocks), 2000)


def queued_text(position: int) -> str:
    return "⏳ Queued — you are next." if position <= 1 else f"⏳ Queued — position {position}."


def progress_text(step: int, total: int) -> str:
    percent = int(100 * step / max(total, 1))
    filled = percent // 10
    return f"🎨 Generating… {'▰' * filled}{'▱' * (10 - filled)} {percent}%"


def error_text(message: str) -> str:
    return f"⚠️ {clip(message, 1900)}"
