"""Writing result images: PNG with A1111's ``parameters`` text chunk, named the way A1111 names them."""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image, PngImagePlugin

INFOTEXT_KEY = "parameters"
_NUMBERED = re.compile(r"^(\d{5})-")


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
