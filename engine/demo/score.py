"""The deterministic prompt-adherence score of the demo model, read from pixels.

Why from pixels and not with a learned judge (CLIP etc.): the scenes are a closed vocabulary of flat colours and
simple shapes, so plain image statistics recover every attribute exactly on clean renders, cost milliseconds,
need no download and never change between runs. :func:`evaluate` pushes fixed prompts × fixed seeds through the
real :class:`engine.pipeline.Pipeline`, so the numbers measure what a user would get.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from engine.demo.dataset import COLOURS, HELD_OUT, PALETTE, POSITIONS, SHAPES, SIZES, Scene

if TYPE_CHECKING:
    from engine.pipeline import Pipeline

ATTRIBUTES = ("colour", "shape", "background", "position", "size")

_PALETTE = np.array([PALETTE[c] for c in COLOURS], dtype=np.float32) / 255.0
# Shape prototypes in (fill ratio of the bounding box, top-half area / bottom-half area). Fill alone separates
# square from circle; the triangle also differs in the second cue (1/3 vs 1), which survives blur and bad edges.
_SHAPE_PROTOTYPES = {"square": (1.0, 1.0), "circle": (np.pi / 4, 1.0), "triangle": (0.5, 1 / 3)}
# Bounding-box side / image side: small shapes are 0.4, large 0.7.
_SIZE_THRESHOLD = 0.55
# A box centre within this fraction of the side from the image centre (on both axes) reads as "center"; quadrant
# positions sit ≥ 0.11 away (large shapes are pulled inwards to stay inside the image), centred ones at 0.
_CENTRE_TOLERANCE = 0.09
# Mask threshold floor (RGB distance in [0, 1] units): above σ≈0.03 per-channel noise, far below colour gaps.
_MIN_THRESHOLD = 0.15


@dataclass
class SceneScore:
    """Which attributes of the asked-for scene one image shows; ``detected`` holds what was read, for debugging."""

    colour: bool
    shape: bool
    background: bool
    position: bool
    size: bool
    detected: dict[str, str] = field(default_factory=dict)

    @property
    def all_correct(self) -> bool:
        return all(getattr(self, a) for a in ATTRIBUTES)


def _nearest_colour(rgb: np.ndarray) -> str:
    return COLOURS[int(np.argmin(((_PALETTE - rgb) ** 2).sum(axis=1)))]


def _to_float(pixels: np.ndarray) -> np.ndarray:
    pixels = np.asarray(pixels)
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / 255.0
    return np.clip(pixels.astype(np.float32), 0.0, 1.0)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of ``mask`` (numpy only: min-label propagation until stable).

    Keeping only it makes noise specks and stray blobs irrelevant to the colour, box and area read-outs.
    """
    if not mask.any():
        return mask
    h, w = mask.shape
    big = h * w
    labels = np.where(mask, np.arange(big, dtype=np.int64).reshape(h, w), big)
    while True:
        padded = np.pad(labels, 1, constant_values=big)
        neighbours = np.minimum.reduce([labels, padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2],
                                        padded[1:-1, 2:]])
        new = np.where(mask, neighbours, big)
        # Pointer jumping: follow each label to its own label, which collapses long chains quickly.
        flat = new.ravel()
        inside = flat < big
        flat[inside] = np.minimum(flat[inside], flat[flat[inside]])
        if np.array_equal(new, labels):
            break
        labels = new
    values, counts = np.unique(labels[mask], return_counts=True)
    return labels == values[np.argmax(counts)]


def _box3(values: np.ndarray) -> np.ndarray:
    """3×3 mean (edges replicated): cuts per-pixel noise threefold; a straight edge's half-way point stays put."""
    padded = np.pad(values, 1, mode="edge")
    h, w = values.shape
    return sum(padded[i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9.0


def _foreground(pixels: np.ndarray, bg_rgb: np.ndarray, bg_name: str) -> np.ndarray:
    """The shape's mask: pixels far from the background, in two passes.

    Pass one thresholds at half the gap between the background and its nearest other palette colour, which any
    palette foreground clears. Pass two re-thresholds at half the measured background–foreground distance, so the
    mask edge sits where anti-aliased pixels are half covered whatever the two colours are.
    """
    distance = _box3(np.sqrt(((pixels - bg_rgb) ** 2).sum(axis=2)))
    ref = np.array(PALETTE[bg_name], dtype=np.float32) / 255.0
    gaps = np.sqrt(((_PALETTE - ref) ** 2).sum(axis=1))
    first = max(_MIN_THRESHOLD, 0.5 * float(np.min(gaps[gaps > 0])))
    mask = _largest_component(distance > first)
    if not mask.any():
        return mask
    fg_rgb = np.median(pixels[mask], axis=0)
    second = max(_MIN_THRESHOLD, 0.5 * float(np.sqrt(((fg_rgb - bg_rgb) ** 2).sum())))
    return _largest_component(distance > second)


def _shape_of(box_mask: np.ndarray) -> str:
    bh = box_mask.shape[0]
    fill = float(box_mask.mean())
    top, bottom = box_mask[: bh // 2].sum(), box_mask[(bh + 1) // 2:].sum()
    balance = min(float(top) / max(float(bottom), 1.0), 1.5)
    return min(_SHAPE_PROTOTYPES, key=lambda s: (fill - _SHAPE_PROTOTYPES[s][0]) ** 2
               + (balance - _SHAPE_PROTOTYPES[s][1]) ** 2)


def background_colour(pixels: np.ndarray) -> np.ndarray:
    """The border pixels' median RGB in [0, 1]: the background (the border is kept clear of the shape)."""
    img = _to_float(pixels)[..., :3]
    return np.median(np.concatenate([img[0], img[-1], img[1:-1, 0], img[1:-1, -1]]), axis=0)


def detect(pixels: np.ndarray) -> dict[str, str]:
    """Read the scene attributes from an image (float H×W×3 in [0, 1] or uint8); foreground keys absent if none."""
    img = _to_float(pixels)[..., :3]
    h, w = img.shape[:2]
    bg_rgb = background_colour(img)
    detected = {"background": _nearest_colour(bg_rgb)}
    mask = _foreground(img, bg_rgb, detected["background"])
    if not mask.any():
        return detected
    detected["colour"] = _nearest_colour(np.median(img[mask], axis=0))
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    detected["shape"] = _shape_of(mask[y0:y1, x0:x1])
    # The box centre, not the centroid: a triangle's centroid sits h/6 below its box centre.
    dx, dy = (x0 + x1) / (2 * w) - 0.5, (y0 + y1) / (2 * h) - 0.5
    if abs(dx) < _CENTRE_TOLERANCE and abs(dy) < _CENTRE_TOLERANCE:
        detected["position"] = "center"
    else:
        detected["position"] = f"{'top' if dy < 0 else 'bottom'} {'left' if dx < 0 else 'right'}"
    detected["size"] = "large" if max((x1 - x0) / w, (y1 - y0) / h) > _SIZE_THRESHOLD else "small"
    return detected


def foreground_colour(pixels: np.ndarray) -> np.ndarray | None:
    """The shape's median RGB in [0, 1] (None without a foreground): for colours outside the palette, such as a
    concept taught by training, where :func:`detect`'s nearest palette name would hide how close it came."""
    img = _to_float(pixels)[..., :3]
    bg_rgb = background_colour(img)
    mask = _foreground(img, bg_rgb, _nearest_colour(bg_rgb))
    return np.median(img[mask], axis=0) if mask.any() else None


def score_image(pixels: np.ndarray, scene: Scene) -> SceneScore:
    """Compare what the image shows with ``scene``; an image without a foreground gets every shape attribute wrong."""
    detected = detect(pixels)
    return SceneScore(**{a: detected.get(a) == getattr(scene, a) for a in ATTRIBUTES}, detected=detected)


@dataclass
class AdherenceReport:
    """Fraction of images showing each asked-for attribute (and all of them at once) over ``n`` images."""

    colour: float
    shape: float
    background: float
    position: float
    size: float
    all_correct: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """One line, e.g. ``n=96 | colour 93.8% | shape 91.7% | ... | all 60.4%``."""
        parts = [f"{a} {100 * getattr(self, a):.1f}%" for a in ATTRIBUTES]
        return " | ".join([f"n={self.n}", *parts, f"all {100 * self.all_correct:.1f}%"])


def report_from_scores(scores: Sequence[SceneScore]) -> AdherenceReport:
    n = len(scores)

    def fraction(values: Iterable[bool]) -> float:
        return sum(values) / n if n else 0.0

    fractions = {a: fraction(getattr(s, a) for s in scores) for a in ATTRIBUTES}
    return AdherenceReport(**fractions, all_correct=fraction(s.all_correct for s in scores), n=n)


def report_over(images_and_scenes: Iterable[tuple[np.ndarray, Scene]]) -> AdherenceReport:
    """Score (image, scene) pairs and aggregate them."""
    return report_from_scores([score_image(img, scene) for img, scene in images_and_scenes])


def evaluation_scenes(held_out: bool = False, n: int = 48, seed: int = 1234) -> list[Scene]:
    """The fixed evaluation set: training pairs (or only held-out ones), deterministic for ``seed``.

    Pairs are taken in an order that walks colours and shapes together (colour i mod 8, shape i mod 3), so any
    n ≥ 10 covers every colour and shape (held-out sets: every held-out pair from n ≥ 3); sizes alternate and
    positions cycle, so each is balanced; backgrounds are random but never the shape's colour.
    """
    if held_out:
        pairs = sorted(HELD_OUT)
    else:
        ordered = [(COLOURS[i % len(COLOURS)], SHAPES[i % len(SHAPES)]) for i in range(len(COLOURS) * len(SHAPES))]
        pairs = [p for p in ordered if p not in HELD_OUT]
    rng = random.Random(seed)
    scenes = []
    for i in range(n):
        colour, shape = pairs[i % len(pairs)]
        background = rng.choice([c for c in COLOURS if c != colour])
        scenes.append(Scene(colour, shape, background, SIZES[i % len(SIZES)],
                            POSITIONS[(i // len(SIZES)) % len(POSITIONS)]))
    return scenes


def evaluate(pipeline: Pipeline, scenes: Sequence[Scene], seeds: Sequence[int] = (0, 1), steps: int = 20,
             sampler: str = "Euler a", cfg_scale: float = 5.0, width: int = 0, height: int = 0) -> AdherenceReport:
    """Generate every scene's prompt with every seed in one ``generate`` call and score the images."""
    from engine.requests import GenerationRequest

    jobs = [(scene, GenerationRequest(prompt=scene.prompt, width=width, height=height, steps=steps,
                                      cfg_scale=cfg_scale, sampler=sampler, seed=seed, subseed=seed))
            for scene in scenes for seed in seeds]
    results = pipeline.generate([request for _, request in jobs])
    return report_over((image.pixels, scene) for (scene, _), images in zip(jobs, results, strict=True)
                       for image in images)
