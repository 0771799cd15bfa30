"""Writing result images: PNG with A1111's ``parameters`` text chunk, named the way A1111 names them."""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image, PngImagePlugin

INFOTEXT_KEY = "parameters"
_NUMBERED = re.compile(r"^(\d{5})-")


DISPLAY_TARGET = 512  # pixels on the longer side that auto scaling reaches: readable in a Discord embed


def display_factor(width: int, height: int, scale: int = 0) -> int:
    """The integer upscale factor for showing an image: ``scale`` when set, else the smallest factor that
    brings the longer side to DISPLAY_TARGET (1 for real SD sizes, 8 for the 64-pixel demo model)."""
    if scale > 0:
        return scale
    return max(1, -(-DISPLAY_TARGET // max(width, height)))


def upscale_for_display(image: Image.Image, scale: int = 0) -> Image.Image:
    """Nearest-neighbour upscale, so tiny native images read well without inventing detail.

    The infotext of the result still names the native size: it describes how the image was generated.
    """
    factor = display_factor(image.width, image.height, scale)
    if factor == 1:
        return image
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def png_info(infotext: str) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text(INFOTEXT_KEY, infotext)  # tEXt, or iTXt when the text is not Latin-1 (as A1111)
    return info


def save_png(image: Image.Image, path: Path, infotext: str) -> Path:
    """Write ``image`` as PNG carrying ``infotext``; parent folders are created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", pnginfo=png_info(infotext))
    return path


def read_infotext(path: Path) -> str | None:
    """The ``parameters`` text of a PNG, or None when it has none."""
    with Image.open(path) as im:
        return im.info.get(INFOTEXT_KEY)


def next_output_path(folder: Path, seed: int) -> Path:
    """``folder/NNNNN-seed.png`` with the next free five-digit number (A1111's naming)."""
    folder.mkdir(parents=True, exist_ok=True)
    numbers = [int(m.group(1)) for p in folder.iterdir() if (m := _NUMBERED.match(p.name))]
    number = max(numbers, default=-1) + 1
    while True:
        path = folder / f"{number:05d}-{seed}.png"
        try:
            path.touch(exist_ok=False)  # claim the name, so two writers never share it
            return path
        except FileExistsError:
            number += 1
