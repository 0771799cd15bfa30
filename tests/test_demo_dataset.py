"""The demo dataset: deterministic, held-out pairs really held out, captions and renders match their scenes."""

from __future__ import annotations

import random

import numpy as np
import pytest

from engine.demo.dataset import (
    HELD_OUT,
    PALETTE,
    POSITIONS,
    SHAPES,
    SIZES,
    UNNAMED,
    Scene,
    any_colour_images,
    make_dataset,
    render,
    sample_scenes,
    shape_box,
    shape_weights,
)


def test_palette_is_well_separated() -> None:
    colours = np.array(list(PALETTE.values()), dtype=float)
    distances = np.sqrt(((colours[:, None] - colours[None]) ** 2).sum(-1))
    assert len(PALETTE) == 8
    assert distances[~np.eye(8, dtype=bool)].min() > 100
    assert all(colour in PALETTE for colour, _ in HELD_OUT) and all(shape in SHAPES for _, shape in HELD_OUT)


def test_dataset_is_deterministic_for_a_seed() -> None:
    a = make_dataset(40, seed=3)
    b = make_dataset(40, seed=3)
    c = make_dataset(40, seed=4)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]
    assert a[2] != c[2]
    assert a[0].shape == (40, 64, 64, 3) and a[0].dtype == np.uint8
    assert sample_scenes(20, 7, held_out=True) == sample_scenes(20, 7, held_out=True)


def test_held_out_pairs_never_in_training_and_only_in_held_out() -> None:
    train = sample_scenes(5000, seed=0)
    pairs = {(s.colour, s.shape) for s in train}
    assert not pairs & HELD_OUT
    assert len(pairs) == len(PALETTE) * len(SHAPES) - len(HELD_OUT)  # every allowed pair does occur
    held = sample_scenes(300, seed=0, held_out=True)
    assert {(s.colour, s.shape) for s in held} == HELD_OUT
    assert all(s.background != s.colour for s in train + held)
    assert {s.size for s in train} == set(SIZES) and {s.position for s in train} == set(POSITIONS)


def test_full_caption_and_prompt() -> None:
    scene = Scene("red", "circle", "blue", "small", "top left")
    assert scene.caption() == scene.prompt == "a small red circle on a blue background, top left"
    assert Scene("orange", "square", "orange", "large", "center").prompt.startswith("a large orange square on an")


def test_shortened_captions_keep_colour_shape_background() -> None:
    rng = random.Random(0)
    scene = Scene("purple", "triangle", "white", "large", "bottom right")
    captions = [scene.caption(rng) for _ in range(400)]
    for caption in captions:
        assert "purple triangle" in caption and "white background" in caption
    assert sum("large" in c for c in captions) in range(220, 340)  # ~70 % keep the size word
    assert sum("bottom right" in c for c in captions) in range(220, 340)
    assert "a purple triangle on a white background" in captions


def test_dataset_captions_match_scenes_with_some_empty() -> None:
    _, captions, scenes = make_dataset(400, seed=1, size=16, empty_caption_rate=0.1)
    empty = [c for c in captions if not c]
    assert 20 <= len(empty) <= 65
    for caption, scene in zip(captions, scenes, strict=True):
        if caption:
            assert f"{scene.colour} {scene.shape} on" in caption and f"{scene.background} background" in caption


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("position", POSITIONS)
def test_render_draws_the_shape_inside_in_its_colours(shape: str, size: str, position: str) -> None:
    scene = Scene("yellow", shape, "blue", size, position)
    image = render(scene).astype(int)
    fg, bg = np.array(PALETTE["yellow"]), np.array(PALETTE["blue"])
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    assert (np.abs(border - bg).max(axis=1) == 0).all()  # the shape never touches the edge
    pure_fg = (np.abs(image - fg).max(axis=2) == 0)
    assert pure_fg.any()
    # Only the two colours and their blends (anti-aliased edge): each pixel lies on the segment bg → fg.
    t = ((image - bg) @ (fg - bg)) / ((fg - bg) @ (fg - bg))
    assert np.abs(bg + t[..., None] * (fg - bg) - image).max() <= 2
    ys, xs = np.nonzero(pure_fg)
    x0, y0, x1, y1 = shape_box(scene, 64)
    assert x0 - 1 <= xs.min() and xs.max() <= x1 and y0 - 1 <= ys.min() and ys.max() <= y1
    if shape == "triangle":  # points up: narrow at the top of its box, wide at the bottom
        rows = pure_fg.sum(axis=1)[ys.min():ys.max() + 1]
        assert rows[0] < rows[-1] / 3


def test_unnamed_colours_are_off_the_palette_and_pink_off_its_blends() -> None:
    """No colour word reaches them; pink (the embedding's target) is not even a midpoint of two palette colours."""
    palette = np.array(list(PALETTE.values()), dtype=float)
    blends = (palette[:, None] + palette[None]) / 2
    for name, rgb in UNNAMED.items():
        assert np.sqrt(((palette - np.array(rgb, dtype=float)) ** 2).sum(-1)).min() > 100, name
    assert np.sqrt(((blends - np.array(UNNAMED["pink"], dtype=float)) ** 2).sum(-1)).min() > 55


def test_unnamed_colour_scenes_are_captioned_without_a_colour_word() -> None:
    images, captions, scenes = make_dataset(400, seed=2, unnamed_rate=0.2)
    plain_images, _, plain_scenes = make_dataset(400, seed=2)
    unnamed = [i for i, s in enumerate(scenes) if s.colour in UNNAMED]
    assert 50 <= len(unnamed) <= 110 and {scenes[i].colour for i in unnamed} == set(UNNAMED)
    for i in unnamed:
        assert not any(word in captions[i] for word in [*PALETTE, *UNNAMED] if word != scenes[i].background)
        if captions[i]:
            assert f" {scenes[i].shape} on" in captions[i]
        assert (np.abs(images[i].astype(int) - UNNAMED[scenes[i].colour]).max(axis=2) == 0).any()
    # Only the repainted shapes change: the rest of the dataset is the one without unnamed colours.
    same = [i for i in range(400) if i not in unnamed]
    assert [scenes[i] for i in same] == [plain_scenes[i] for i in same]
    assert all(scenes[i].shape == plain_scenes[i].shape for i in unnamed)
    assert np.array_equal(images[same], plain_images[same])


def test_shape_weights_mark_the_outline_cells() -> None:
    scenes = [Scene("red", "square", "blue", "small", "top left"), Scene("red", "circle", "blue", "large", "center")]
    images = np.stack([render(s) for s in scenes])
    weights = shape_weights(images, scenes, factor=4, weight=4.0, margin=0)
    assert weights.shape == (2, 1, 16, 16)
    assert np.allclose(weights.mean(axis=(1, 2, 3)), 1.0)
    for scene, w in zip(scenes, weights[:, 0], strict=True):
        x0, y0, x1, y1 = (v / 4 for v in shape_box(scene, 64))
        heavy = w > w.min()
        assert np.isclose(w.max() / w.min(), 5.0)
        ys, xs = np.nonzero(heavy)
        # The heavy cells are the ones the outline crosses: the box's border cells, not far outside or deep inside.
        assert int(x0) <= xs.min() and xs.max() <= int(np.ceil(x1)) and int(y0) <= ys.min()
        assert not heavy[int(np.ceil(y0)) + 2:int(y1) - 2, int(np.ceil(x0)) + 2:int(x1) - 2].any()
        assert heavy[int(y0), int((x0 + x1) / 2)] or heavy[int(y0) + 1, int((x0 + x1) / 2)]


def test_any_colour_images_repaint_a_fraction_keeping_each_scene_s_geometry() -> None:
    images, _, scenes = make_dataset(200, seed=5)
    repainted = any_colour_images(images, scenes, rate=0.3, seed=5)
    assert np.array_equal(repainted, any_colour_images(images, scenes, rate=0.3, seed=5))  # deterministic
    assert np.array_equal(any_colour_images(images, scenes, rate=0.0, seed=5), images)
    changed = [i for i in range(len(images)) if not np.array_equal(images[i], repainted[i])]
    assert 0.2 < len(changed) / len(images) < 0.4
    for i in changed:
        # Same shape in the same place: where the original shows the shape, the repaint does too.
        x0, y0, x1, y1 = shape_box(scenes[i], 64)
        cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2 if scenes[i].shape != "triangle" else y0 + 0.75 * (y1 - y0))
        original, new = images[i].astype(int), repainted[i].astype(int)
        if np.abs(new[0, 0] - new[cy, cx]).max() > 60:  # fill and background far enough apart for a clean mask
            mask_a = np.abs(original - original[0, 0]).max(-1) > 24
            mask_b = np.abs(new - new[0, 0]).max(-1) > 24
            assert (mask_a == mask_b).mean() > 0.97, i
    # Backgrounds in new colours, mostly off the palette: the VAE is meant to see colours no word names.
    palette = np.array(list(PALETTE.values()), dtype=int)
    corners = np.array([repainted[i][0, 0] for i in changed], dtype=int)
    assert (np.sqrt(((corners[:, None] - palette[None]) ** 2).sum(-1)).min(1) > 40).mean() > 0.7
