"""The pixel adherence score: exact on clean renders, robust to mild noise and blur, and says no when it should."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image, ImageFilter

from engine.demo.dataset import COLOURS, HELD_OUT, PALETTE, SHAPES, Scene, render, sample_scenes
from engine.demo.score import (
    ATTRIBUTES,
    AdherenceReport,
    evaluate,
    evaluation_scenes,
    report_over,
    score_image,
)


def _perturbed(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    blurred = Image.fromarray(render(scene)).filter(ImageFilter.GaussianBlur(0.8))
    return np.clip(np.asarray(blurred) / 255.0 + rng.normal(0.0, 0.03, (64, 64, 3)), 0.0, 1.0)


def test_every_attribute_recognised_on_clean_renders() -> None:
    scenes = sample_scenes(250, seed=11) + sample_scenes(50, seed=12, held_out=True)
    for scene in scenes:
        pixels = render(scene)
        score = score_image(pixels, scene)
        assert score.all_correct, (scene, score.detected)
        assert score_image(pixels / 255.0, scene).all_correct  # float input reads the same


def test_robust_to_mild_noise_and_blur() -> None:
    rng = np.random.default_rng(0)
    report = report_over((_perturbed(s, rng), s) for s in sample_scenes(150, seed=21))
    assert report.n == 150 and report.all_correct == 1.0, report.summary()


@pytest.mark.parametrize("colour", COLOURS)
def test_swapped_attributes_score_false(colour: str) -> None:
    background = "blue" if colour != "blue" else "red"
    scene = Scene(colour, "circle", background, "large", "top left")
    pixels = render(scene)
    other_colour = next(c for c in COLOURS if c not in (colour, background))
    wrong = dataclasses.replace(scene, colour=other_colour, shape="square", background=colour,
                                size="small", position="bottom right")
    score = score_image(pixels, wrong)
    assert not any(getattr(score, a) for a in ATTRIBUTES), score.detected
    for shape in SHAPES:
        assert score_image(render(dataclasses.replace(scene, shape=shape)), scene).shape == (shape == "circle")


def test_blank_image_has_no_foreground() -> None:
    scene = Scene("red", "circle", "white", "small", "center")
    blank = np.broadcast_to(np.array(PALETTE["white"], dtype=np.uint8), (64, 64, 3))
    noisy = np.clip(blank / 255.0 + np.random.default_rng(1).normal(0, 0.03, blank.shape), 0, 1)
    for pixels in (blank, noisy):
        score = score_image(pixels, scene)
        assert score.background and not (score.colour or score.shape or score.position or score.size)
        assert set(score.detected) == {"background"}


def test_a_speck_does_not_change_the_reading() -> None:
    scene = Scene("green", "triangle", "black", "small", "top right")
    pixels = render(scene).copy()
    pixels[50:52, 8:10] = PALETTE["white"]  # a stray 2×2 blob elsewhere
    assert score_image(pixels, scene).all_correct


def test_evaluation_scenes_fixed_and_covering() -> None:
    scenes = evaluation_scenes()
    assert scenes == evaluation_scenes() and len(scenes) == 48
    assert {s.colour for s in scenes} == set(COLOURS) and {s.shape for s in scenes} == set(SHAPES)
    assert not {(s.colour, s.shape) for s in scenes} & HELD_OUT
    held = evaluation_scenes(held_out=True, n=12)
    assert {(s.colour, s.shape) for s in held} == HELD_OUT
    assert all(s.background != s.colour for s in scenes + held)
    assert report_over((render(s), s) for s in scenes + held).all_correct == 1.0


def test_report_summary_and_dict() -> None:
    report = AdherenceReport(colour=1.0, shape=0.5, background=0.25, position=0.0, size=1.0, all_correct=0.0, n=4)
    assert report.summary().startswith("n=4 | colour 100.0% | shape 50.0%")
    assert report.as_dict()["background"] == 0.25
    assert report_over([]).n == 0


def test_evaluate_runs_end_to_end_on_the_tiny_model(tiny_pipeline) -> None:
    scenes = evaluation_scenes(n=2)
    report = evaluate(tiny_pipeline, scenes, seeds=(0,), steps=2)
    assert report.n == 2 and report.as_dict()["n"] == 2
    assert all(0.0 <= getattr(report, a) <= 1.0 for a in (*ATTRIBUTES, "all_correct"))


def test_foreground_colour_reads_colours_outside_the_palette() -> None:
    from engine.demo.score import foreground_colour

    scene = Scene("red", "square", "blue", "large", "center")
    pixels = render(scene).copy()
    assert np.allclose(foreground_colour(pixels) * 255, PALETTE["red"], atol=1)
    pixels[np.all(pixels == PALETTE["red"], axis=-1)] = (255, 105, 180)  # repaint the shape pink
    assert np.allclose(foreground_colour(pixels) * 255, (255, 105, 180), atol=1)
    assert foreground_colour(np.full((64, 64, 3), 30, dtype=np.uint8)) is None  # nothing but background


def test_background_colour_reads_any_colour_from_the_border() -> None:
    from engine.demo.score import background_colour

    pixels = render(Scene("red", "square", "blue", "large", "center"), background=(20, 150, 150))
    assert np.allclose(background_colour(pixels) * 255, (20, 150, 150), atol=1)  # teal: off the palette
