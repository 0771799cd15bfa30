"""Concepts the bundled demo model cannot draw from any plain prompt, for showing (and testing) that training learns.

Two concepts, each with its training images, its recipe (a :class:`~engine.training.request.TrainingRequest`, the
same value ``/train`` builds) and a score read from generated pixels with :mod:`engine.demo.score`:

* **pink** — an embedding. The demo model knows eight colours (:data:`~engine.demo.dataset.PALETTE`); pink is not
  one of them, and no plain prompt gives it: not a palette word, not a word the model never saw, not a blend of
  two colour words (:func:`plain_prompts`). Its VAE can show pink (a quarter of the VAE's training pictures are in
  random colours), its UNet never drew it. Trained from six pink shapes on palette backgrounds, captioned
  "a [name] circle on a blue background". Score: the fraction of images whose shape is nearer *the pink the model
  can show* than any colour a plain prompt names (:func:`named_colours`). "The pink the model can show" is the
  training images' foreground after a round trip through the demo VAE: the concept as the model's own decoder
  draws it, so the score measures learning, not the VAE's range.
* **rgb-swap** — a hypernetwork for a colour-shifted style: every picture with its colour channels rotated
  (red → green → blue → red), captioned with what was asked ("a red circle on a blue background" shows a green
  circle on red). Score: the fraction of colour reads (shape and background) that come out shifted.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from engine.demo.dataset import COLOURS, PALETTE, Scene, render
from engine.demo.score import background_colour, detect, foreground_colour
from engine.requests import GenerationRequest
from engine.training.images import TrainingImage
from engine.training.request import TrainingRequest

if TYPE_CHECKING:
    from engine.loading import LoadedModel
    from engine.pipeline import Pipeline

PINK = (255, 105, 180)
# Dark backgrounds, where a light pink shape stands out for the score's foreground mask (on white or yellow the
# mask cannot tell a pale shape from the background). Training sees six of the nine pairs.
PINK_BACKGROUNDS = ("blue", "green", "black")
PINK_SCENES: tuple[tuple[str, str], ...] = (("circle", "blue"), ("square", "green"), ("triangle", "black"),
                                            ("circle", "black"), ("square", "blue"), ("triangle", "green"))
# Evaluation: every shape on every one of those backgrounds (three pairs never trained on), two seeds each.
PINK_EVAL: tuple[tuple[str, str], ...] = tuple((shape, background) for shape in ("circle", "square", "triangle")
                                               for background in PINK_BACKGROUNDS)
PINK_RECIPE = TrainingRequest(kind="embedding", name="pink", what="caption", steps=600, lr="0.02", vectors=2,
                              init_text="purple", batch_size=4, seed=0,
                              preview_prompt="a pink circle on a green background")

SWAP_COLOURS = ("red", "green", "blue", "purple")  # whose rotations land near a palette colour
# Modules for the text context's width only (64 on the demo model; A1111's "Modules" choice): colour lives in
# the cross-attention context, and modules on every width learned slower and garbled the pictures.
SWAP_RECIPE = TrainingRequest(kind="hypernetwork", name="rgb-swap", what="caption", steps=1000, lr="0.001",
                              batch_size=4, seed=0, modules=(64,),
                              preview_prompt="a green circle on a red background")

EVAL_STEPS = 20
EVAL_CFG = 7.0


def pink_images() -> list[TrainingImage]:
    """Six pink shapes on dark backgrounds; each caption places ``[name]`` where a colour word goes."""
    images = []
    for i, (shape, background) in enumerate(PINK_SCENES):
        scene = Scene("red", shape, background, "large", "center")  # the colour is replaced by pink
        images.append(TrainingImage(f"pink{i}.png", Image.fromarray(render(scene, 64, fill=PINK)),
                                    f"a [name] {shape} on a {background} background", f"{i:064x}"))
    return images


def rotate_channels(image: Image.Image) -> Image.Image:
    """(r, g, b) → (b, r, g): red becomes green, green blue, blue red."""
    pixels = np.asarray(image.convert("RGB"))
    return Image.fromarray(np.ascontiguousarray(pixels[..., [2, 0, 1]]))


def _nearest(rgb: np.ndarray) -> str:
    palette = np.array([PALETTE[c] for c in COLOURS], dtype=float)
    return COLOURS[int(np.argmin(((palette - rgb) ** 2).sum(1)))]


# The palette colour each colour becomes under the rotation (purple → orange, and so on).
SHIFTED: dict[str, str] = {c: _nearest(np.array(PALETTE[c], dtype=float)[[2, 0, 1]]) for c in COLOURS}


def swap_images(n: int = 16, seed: int = 0) -> list[TrainingImage]:
    """``n`` demo scenes in :data:`SWAP_COLOURS`, channel-rotated, captioned with the unrotated scene."""
    rng = random.Random(seed)
    images = []
    for i in range(n):
        colour, background = rng.sample(SWAP_COLOURS, 2)
        scene = Scene(colour, rng.choice(("circle", "square", "triangle")), background, "large", "center")
        images.append(TrainingImage(f"swap{i}.png", rotate_channels(Image.fromarray(render(scene, 64))),
                                    scene.prompt, f"{i:064x}"))
    return images


@torch.no_grad()
def reachable_colour(model: LoadedModel, images: Sequence[TrainingImage]) -> np.ndarray:
    """The images' shape colour after a round trip through the model's VAE (RGB in [0, 1], median over images)."""
    from engine.training.core import encode_latents

    latents = encode_latents(model, list(images)) / float(model.vae.config.scaling_factor)
    decoded = model.vae.decode(latents.to(model.vae.dtype)).sample.float()
    pixels = ((decoded.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()
    colours = [c for c in (foreground_colour(p) for p in pixels) if c is not None]
    return np.median(np.stack(colours), axis=0)


# Words the demo model never saw: each is a random condition (never-trained token embeddings stay at their random
# initialisation), so one of them may land near the target by chance; the baseline tries several.
UNKNOWN_WORDS = ("pink", "rose", "magenta", "fuchsia", "salmon")


def named_colours() -> np.ndarray:
    """RGB in [0, 1] of everything a plain prompt names: the palette, and the midpoint of every two palette colours
    (the demo model blends two colour words: "purple white" draws a lilac)."""
    palette = np.array([PALETTE[c] for c in COLOURS], dtype=float) / 255
    pairs = [(palette[i] + palette[j]) / 2 for i in range(len(palette)) for j in range(i + 1, len(palette))]
    return np.concatenate([palette, np.array(pairs)])


def plain_prompts(target: np.ndarray, blends: int = 4) -> list[str]:
    """The plain-text competition for a colour concept: every palette word, the unknown words, no colour word at
    all, and the ``blends`` two-word blends whose midpoints are nearest ``target`` (in both word orders)."""
    palette = np.array([PALETTE[c] for c in COLOURS], dtype=float) / 255
    pairs = [(a, b) for i, a in enumerate(COLOURS) for b in COLOURS[i + 1:]]
    pairs.sort(key=lambda p: float(np.linalg.norm(
        (palette[COLOURS.index(p[0])] + palette[COLOURS.index(p[1])]) / 2 - target)))
    two_words = [f"{a} {b}" for a, b in pairs[:blends]] + [f"{b} {a}" for a, b in pairs[:blends]]
    return [*COLOURS, *UNKNOWN_WORDS, "", *two_words]


@dataclass(frozen=True)
class ColourScore:
    """How often generated shapes come out in a concept's colour."""

    hits: float  # fraction nearer the target than anything a plain prompt names (:func:`named_colours`)
    distance: float  # mean RGB distance to the target, in [0, √3] (images without a shape count as 1)
    n: int


def colour_score(pipeline: Pipeline, word: str, target: np.ndarray, seeds: Sequence[int] = (0, 1)) -> ColourScore:
    """``a {word} {shape} on a {background} background`` over :data:`PINK_EVAL` × ``seeds``.

    A hit must be nearer the target than any palette colour *and* any two-colour midpoint: a salmon from "red
    white" is nearer pink than red or white are, but it is what the words already give, not the concept.
    """
    requests = [GenerationRequest(" ".join(f"a {word} {shape} on a {background} background".split()), seed=seed,
                                  subseed=seed, steps=EVAL_STEPS, cfg_scale=EVAL_CFG)
                for shape, background in PINK_EVAL for seed in seeds]
    named = named_colours()
    hits, distances = 0, []
    for result in pipeline.generate(requests):
        colour = foreground_colour(result[0].pixels)
        if colour is None:
            distances.append(1.0)
            continue
        distance = float(np.sqrt(((colour - target) ** 2).sum()))
        distances.append(distance)
        hits += distance < float(np.sqrt(((named - colour) ** 2).sum(1)).min())
    return ColourScore(hits / len(requests), float(np.mean(distances)), len(requests))


def best_plain_colour(pipeline: Pipeline, target: np.ndarray, words: Sequence[str] | None = None,
                      seeds: Sequence[int] = (0,)) -> tuple[str, ColourScore]:
    """The plain prompt that comes nearest the target (most hits, then least distance), over ``words`` (default
    :func:`plain_prompts`)."""
    scores = {word: colour_score(pipeline, word, target, seeds) for word in (words or plain_prompts(target))}
    best = max(scores, key=lambda w: (scores[w].hits, -scores[w].distance))
    return best, scores[best]


@dataclass(frozen=True)
class ShiftScore:
    shifted: float  # fraction of colour reads (shape and background) whose nearest palette colour is the rotated one
    original: float  # fraction whose nearest palette colour is the asked-for one
    toward: float  # fraction nearer (in RGB) the rotated colour than the asked-for one: moved toward the style
    n: int


def shift_score(pipeline: Pipeline, suffix: str = "", seeds: Sequence[int] = (0,)) -> ShiftScore:
    """Every ordered pair of :data:`SWAP_COLOURS` as a circle on a background, with ``suffix`` after the prompt.

    ``toward`` is the graded read: the demo VAE decodes any colour, so a style can land between palette colours
    (a rotated purple came out (190, 140, 40)-ish), which the nearest-palette ``shifted`` read may call neither.
    """
    pairs = [(c, b) for c in SWAP_COLOURS for b in SWAP_COLOURS if c != b]
    requests = [GenerationRequest(f"a {c} circle on a {b} background{suffix}", seed=seed, subseed=seed,
                                  steps=EVAL_STEPS, cfg_scale=EVAL_CFG) for c, b in pairs for seed in seeds]
    rgb = {c: np.array(PALETTE[c], dtype=float) / 255 for c in COLOURS}
    shifted = original = toward = 0
    for (colour, background), result in zip([p for p in pairs for _ in seeds], pipeline.generate(requests),
                                            strict=True):
        pixels = result[0].pixels
        found = detect(pixels)
        shifted += (found.get("colour") == SHIFTED[colour]) + (found.get("background") == SHIFTED[background])
        original += (found.get("colour") == colour) + (found.get("background") == background)
        reads = [(background_colour(pixels), background), (foreground_colour(pixels), colour)]
        for seen, asked in reads:
            if seen is not None:
                toward += np.linalg.norm(seen - rgb[SHIFTED[asked]]) < np.linalg.norm(seen - rgb[asked])
    n = 2 * len(requests)
    return ShiftScore(shifted / n, original / n, float(toward) / n, n)
