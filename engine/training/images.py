"""Training images from uploaded bytes, checked by content: what a member posts becomes a clean, square set.

Nothing here trusts a file name: the format comes from the bytes, the pixel count from the header before any
decoding (so a small file claiming 50 000 × 50 000 pixels is refused without allocating them), and a file that
fails to decode is refused by name. Accepted images are oriented by their EXIF tag (phones store portraits
rotated), flattened onto white (transparent PNGs would otherwise train on black), centre-cropped and resized to
the model's native size. Exact duplicates (same decoded pixels) are dropped: they would weigh double.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from PIL import Image, ImageOps

from engine.requests import RequestError

FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
MAX_FILE_BYTES = 25 * 2**20  # Discord's upload limit for most servers
MAX_PIXELS = 40_000_000  # a 7 × 5.7 k photo; far more than training needs, far less than a bomb
MIN_SIDE = 32
MIN_IMAGES, MAX_IMAGES = 3, 50


class TrainingInputError(RequestError):
    """The uploads cannot make a training set; the message says which files and why."""


@dataclass(frozen=True)
class TrainingImage:
    name: str  # as uploaded: every message about it uses this
    image: Image.Image  # RGB at the training size
    caption: str  # feeds [filewords]
    pixels_sha256: str  # of the decoded, oriented, flattened pixels (before resizing)


@dataclass
class TrainingSet:
    images: list[TrainingImage]
    refused: list[tuple[str, str]] = field(default_factory=list)  # (file name, reason)

    def report(self) -> str:
        """One line per refused file, for the member (empty when all were used)."""
        return "\n".join(f"• {name}: {reason}" for name, reason in self.refused)


def _megabytes(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def load_training_image(data: bytes, name: str, size: tuple[int, int], caption: str = "") -> TrainingImage:
    """One upload as a training image of ``size`` (width, height); :class:`TrainingInputError` says why not."""
    if len(data) > MAX_FILE_BYTES:
        raise TrainingInputError(f"{name}: {_megabytes(len(data))} is over the {_megabytes(MAX_FILE_BYTES)} limit")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise TrainingInputError(f"{name}: too many pixels for an image (refused without decoding it)") from None
    except (OSError, SyntaxError, ValueError):
        raise TrainingInputError(f"{name}: not a PNG, JPEG, WEBP or GIF image") from None
    width, height = opened.size
    if width * height > MAX_PIXELS:
        raise TrainingInputError(f"{name}: {width}×{height} is over the {MAX_PIXELS / 1e6:.0f}-megapixel limit")
    if min(width, height) < MIN_SIDE:
        raise TrainingInputError(f"{name}: {width}×{height} is too small to learn from (at least {MIN_SIDE} "
                                 "pixels a side)")
    try:
        opened.seek(0)  # a GIF's (or animated WEBP's) first frame
        opened.load()
        image = ImageOps.exif_transpose(opened)
    except (OSError, SyntaxError, ValueError, EOFError):
        raise TrainingInputError(f"{name}: the image is damaged or cut short") from None
    image = _flatten(image)
    digest = hashlib.sha256(image.tobytes()).hexdigest()
    fitted = ImageOps.fit(image, size, method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))
    return TrainingImage(name, fitted, caption.strip(), digest)


def _flatten(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto white."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def prepare_training_set(uploads: Iterable[tuple[str, bytes, str]], size: tuple[int, int], *,
                         min_images: int = MIN_IMAGES, max_images: int = MAX_IMAGES) -> TrainingSet:
    """``(name, bytes, caption)`` uploads → the usable images plus every refusal (file and reason).

    Too few usable images (or too many uploads) raise :class:`TrainingInputError` listing the refusals, so the
    member sees everything to fix at once rather than one problem per attempt.
    """
    items: Sequence[tuple[str, bytes, str]] = list(uploads)
    if len(items) > max_images:
        raise TrainingInputError(f"{len(items)} images; at most {max_images} per training")
    result = TrainingSet([])
    first_by_digest: dict[str, str] = {}
    for name, data, caption in items:
        try:
            image = load_training_image(data, name, size, caption)
        except TrainingInputError as exc:
            result.refused.append((name, str(exc).removeprefix(f"{name}: ")))
            continue
        if image.pixels_sha256 in first_by_digest:
            result.refused.append((name, f"the same picture as {first_by_digest[image.pixels_sha256]} (dropped)"))
            continue
        first_by_digest[image.pixels_sha256] = name
        result.images.append(image)
    if len(result.images) < min_images:
        details = f"\n{result.report()}" if result.refused else ""
        raise TrainingInputError(f"{len(result.images)} usable image(s); training needs at least {min_images}"
                                 f"{details}")
    return result
