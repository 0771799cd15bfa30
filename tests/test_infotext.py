"""A1111 infotext: our layout pastes back into A1111, and we parse A1111's own."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from engine.images import next_output_path, read_infotext, save_png
from engine.infotext import build_infotext, parse_infotext

A1111_SAMPLE = (
    "masterpiece, (red:1.2) circle\n"
    "Negative prompt: blurry, lowres\n"
    "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1234, Size: 512x768, Model hash: 6ce0161689, "
    'Model: v1-5-pruned-emaonly, Variation seed: 42, Variation seed strength: 0.3, TI hashes: "easyneg: 1a2b3c", '
    "Version: v1.10.1"
)


def test_layout_matches_a1111() -> None:
    text = build_infotext("a cat", "dog", {"Steps": 20, "Sampler": "Euler a", "CFG scale": 7.0, "Seed": 5,
                                           "Size": "64x64", "Model hash": "abcdef0123", "Model": "tiny",
                                           "Variation seed": None})
    assert text == ("a cat\nNegative prompt: dog\n"
                    "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 64x64, Model hash: abcdef0123, "
                    "Model: tiny")


def test_no_negative_line_when_empty_and_fractional_numbers_kept() -> None:
    text = build_infotext("p", "", {"Steps": 4, "CFG scale": 7.5, "Seed": 1})
    assert text == "p\nSteps: 4, CFG scale: 7.5, Seed: 1"


def test_values_with_commas_are_quoted_and_round_trip() -> None:
    text = build_infotext("multi\nline, prompt", "neg: x", {"Steps": 1, "Sampler": "Euler", "Model": 'a, "b"',
                                                           "Seed": 3})
    parsed = parse_infotext(text)
    assert parsed.prompt == "multi\nline, prompt"
    assert parsed.negative_prompt == "neg: x"
    assert parsed.params["Model"] == 'a, "b"'
    assert parsed.params["Seed"] == "3"


def test_parses_a1111_text() -> None:
    parsed = parse_infotext(A1111_SAMPLE)
    assert parsed.prompt == "masterpiece, (red:1.2) circle"
    assert parsed.negative_prompt == "blurry, lowres"
    assert parsed.params["Sampler"] == "DPM++ 2M Karras"
    assert parsed.params["Variation seed strength"] == "0.3"
    assert parsed.params["TI hashes"] == "easyneg: 1a2b3c"
    assert parsed.params["Size"] == "512x768"


def test_png_carries_parameters_chunk(tmp_path: Path) -> None:
    image = Image.new("RGB", (8, 8), (255, 0, 0))
    path = save_png(image, tmp_path / "out" / "x.png", "prompt ünïcødé ✓\nSteps: 1, Seed: 2, Size: 8x8")
    assert read_infotext(path) == "prompt ünïcødé ✓\nSteps: 1, Seed: 2, Size: 8x8"
    with Image.open(path) as im:
        assert im.format == "PNG" and im.getpixel((0, 0)) == (255, 0, 0)


def test_output_names_count_up_and_never_collide(tmp_path: Path) -> None:
    first = next_output_path(tmp_path, 77)
    second = next_output_path(tmp_path, 77)
    assert (first.name, second.name) == ("00000-77.png", "00001-77.png")
    (tmp_path / "00041-3.png").touch()
    assert next_output_path(tmp_path, 9).name == "00042-9.png"


def test_small_images_are_upscaled_nearest_neighbour_for_display() -> None:
    from engine.images import display_factor, upscale_for_display

    assert display_factor(64, 64) == 8 and display_factor(512, 512) == 1 and display_factor(96, 64) == 6
    assert display_factor(512, 512, scale=2) == 2
    tiny = Image.new("RGB", (2, 1))
    tiny.putpixel((0, 0), (255, 0, 0))
    tiny.putpixel((1, 0), (0, 0, 255))
    shown = upscale_for_display(tiny, scale=3)
    assert shown.size == (6, 3)
    assert {shown.getpixel((x, y)) for x in range(3) for y in range(3)} == {(255, 0, 0)}  # no blending
    assert upscale_for_display(Image.new("RGB", (512, 512))).size == (512, 512)
