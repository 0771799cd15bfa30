"""Training uploads are checked by content: formats, bombs, damage, orientation, transparency, duplicates, counts."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from engine.training.images import (
    MAX_IMAGES,
    TrainingInputError,
    load_training_image,
    prepare_training_set,
)

SIZE = (64, 64)


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _picture(colour: tuple[int, int, int], size: tuple[int, int] = (96, 96)) -> Image.Image:
    """A flat picture with a black block in its top-left quarter, so orientation and cropping are visible."""
    image = Image.new("RGB", size, colour)
    image.paste((0, 0, 0), (0, 0, size[0] // 2, size[1] // 2))
    return image


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny file whose header claims ``width`` × ``height`` pixels: what a decompression bomb looks like."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(
        b"IEND", b"")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_each_supported_format_becomes_an_rgb_image_at_the_training_size(fmt: str) -> None:
    item = load_training_image(_encode(_picture((200, 30, 30)), fmt), f"cat.{fmt.lower()}", SIZE, " a cat ")
    assert item.image.mode == "RGB" and item.image.size == SIZE and item.caption == "a cat"
    pixels = np.asarray(item.image, dtype=int)
    assert pixels[5, 5].max() < 40 and pixels[60, 60, 0] > 150  # block top left, red elsewhere


def test_the_name_does_not_matter_the_content_does() -> None:
    item = load_training_image(_encode(_picture((10, 200, 10)), "JPEG"), "photo.png", SIZE)
    assert item.image.size == SIZE
    with pytest.raises(TrainingInputError, match=r"^notes\.png: not a PNG, JPEG, WEBP or GIF image$"):
        load_training_image(b"just some text pretending to be a picture", "notes.png", SIZE)
    with pytest.raises(TrainingInputError, match="not a PNG"):  # a real image, but not one we accept
        load_training_image(_encode(_picture((1, 2, 3)), "BMP"), "scan.bmp", SIZE)


def test_exif_orientation_is_applied() -> None:
    stored = _picture((30, 30, 200), (120, 80))  # landscape as stored, block top left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    item = load_training_image(_encode(stored, "JPEG", exif=exif.tobytes(), quality=95), "phone.jpg", SIZE)
    pixels = np.asarray(item.image, dtype=int)
    # Rotated clockwise the block sits top right; the centre crop of the 80×120 portrait keeps that corner.
    assert pixels[8, 56].max() < 60 and pixels[8, 8, 2] > 150


def test_transparency_is_flattened_onto_white() -> None:
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    image.paste((200, 0, 0, 255), (16, 16, 48, 48))
    pixels = np.asarray(load_training_image(_encode(image, "PNG"), "sticker.png", SIZE).image, dtype=int)
    assert pixels[2, 2].tolist() == [255, 255, 255] and pixels[32, 32].tolist() == [200, 0, 0]


def test_a_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (64, 64), c) for c in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    pixels = np.asarray(load_training_image(buffer.getvalue(), "anim.gif", SIZE).image, dtype=int)
    assert pixels[32, 32, 0] > 200 and pixels[32, 32, 2] < 50


def test_a_bomb_is_refused_from_its_header_and_damage_is_named() -> None:
    with pytest.raises(TrainingInputError, match=r"^bomb\.png: (too many pixels|50000×50000 is over)"):
        load_training_image(_png_header_only(50_000, 50_000), "bomb.png", SIZE)
    with pytest.raises(TrainingInputError, match=r"^wide\.png: 9000×5000 is over the 40-megapixel limit"):
        load_training_image(_png_header_only(9000, 5000), "wide.png", SIZE)
    whole = _encode(_picture((5, 5, 5), (256, 256)).effect_spread(9), "PNG")
    with pytest.raises(TrainingInputError, match=r"^cut\.png: the image is damaged or cut short$"):
        load_training_image(whole[: len(whole) // 2], "cut.png", SIZE)
    with pytest.raises(TrainingInputError, match=r"^icon\.png: 16×16 is too small"):
        load_training_image(_encode(Image.new("RGB", (16, 16)), "PNG"), "icon.png", SIZE)


def test_a_set_drops_duplicates_and_names_every_refusal() -> None:
    red, blue, green = (_encode(_picture(c), "PNG") for c in ((200, 0, 0), (0, 0, 200), (0, 200, 0)))
    uploads = [("a.png", red, "one"), ("b.png", blue, ""), ("again.png", red, ""), ("x.png", b"nope", ""),
               ("c.png", green, "")]
    result = prepare_training_set(uploads, SIZE)
    assert [i.name for i in result.images] == ["a.png", "b.png", "c.png"]
    assert result.refused == [("again.png", "the same picture as a.png (dropped)"),
                              ("x.png", "not a PNG, JPEG, WEBP or GIF image")]
    assert "• again.png: the same picture as a.png" in result.report()


def test_too_few_or_too_many_images_are_refused_with_the_reasons() -> None:
    red = _encode(_picture((200, 0, 0)), "PNG")
    with pytest.raises(TrainingInputError) as caught:
        prepare_training_set([("a.png", red, ""), ("b.png", red, ""), ("c.txt", b"text", "")], SIZE)
    message = str(caught.value)
    assert message.startswith("1 usable image(s); training needs at least 3")
    assert "• b.png: the same picture as a.png" in message and "• c.txt: not a PNG" in message
    with pytest.raises(TrainingInputError, match=f"at most {MAX_IMAGES} per training"):
        prepare_training_set([(f"{i}.png", red, "") for i in range(MAX_IMAGES + 1)], SIZE)
