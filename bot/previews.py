"""Preview images for imported styles: the same prompt and seed without and with the style, side by side.

A before/after pair says what a hypernetwork or an embedding does at a glance, which a single image cannot
(is it the style, or the seed?). Previews are made in the background at the queue's background priority, so an
import answers at once and members' own generations go first; ``/styles info`` shows the preview once it exists.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw

from engine.images import upscale_for_display
from engine.queue.policy import BACKGROUND
from engine.requests import GenerationRequest

if TYPE_CHECKING:
    from bot.store.adapters import AdapterRow
    from engine.service import Engine

log = logging.getLogger("atelier.previews")

PREVIEW_FOLDER = "previews"
GAP = 4  # pixels between the two panels (after upscaling)


def preview_requests(row: AdapterRow, prompt: str, seed: int, steps: int) -> tuple[GenerationRequest,
                                                                                     GenerationRequest]:
    """The plain request and the one with the style, identical otherwise (same seed, so only the style differs)."""
    styled = (f"{prompt} <hypernet:{row.name}:1>" if row.kind == "hypernetwork" else f"{prompt}, {row.name}")
    common = {"seed": seed, "subseed": seed, "steps": steps, "guild_id": row.guild_id}
    return GenerationRequest(prompt=prompt, **common), GenerationRequest(prompt=styled, **common)


def side_by_side(before: Image.Image, after: Image.Image, scale: int = 0) -> Image.Image:
    """The two images upscaled for display, left and right, on a neutral grey."""
    left, right = upscale_for_display(before, scale), upscale_for_display(after, scale)
    sheet = Image.new("RGB", (left.width + GAP + right.width, max(left.height, right.height)), (54, 57, 63))
    sheet.paste(left, (0, 0))
    sheet.paste(right, (left.width + GAP, 0))
    ImageDraw.Draw(sheet).line([(left.width + GAP // 2, 0), (left.width + GAP // 2, sheet.height)],
                               fill=(54, 57, 63), width=GAP)
    return sheet


def preview_path(root: Path, row_id: int) -> Path:
    """Keyed by the row id, so renames and promotions need not move it."""
    return Path(root) / PREVIEW_FOLDER / f"{row_id}.png"


async def make_preview(engine: Engine, row: AdapterRow, root: Path, *, prompt: str, seed: int = 1,
                       steps: int = 20, scale: int = 0) -> Path:
    """Generate the before/after pair for ``row`` and write it as PNG; returns the file's path."""
    plain, styled = preview_requests(row, prompt, seed, steps)
    handles = [engine.submit(request, guild_id=row.guild_id, priority=BACKGROUND) for request in (plain, styled)]
    before, after = [(await handle)[0] for handle in handles]
    path = preview_path(root, row.id)

    def write() -> None:
        from engine.adapters.files import write_atomically

        sheet = side_by_side(before.image, after.image, scale)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda tmp: sheet.save(tmp, format="PNG"))

    await asyncio.to_thread(write)
    return path
