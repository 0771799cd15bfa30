"""Synthetic captioned scenes the demo model is trained on: one filled shape on a plain background.

Why synthetic: the demo model must be trainable from scratch on 2 CPU cores in minutes and its prompt adherence
must be measurable from pixels (see :mod:`engine.demo.score`). A closed vocabulary of well-separated colours,
three shapes, two sizes and five positions gives both. A few (colour, shape) pairs are held out of training so
the score can tell composition from memorisation.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# Far apart in RGB (the closest pair, red/orange, is ~110 apart) so the nearest-colour read-out is unambiguous.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (210, 20, 20),
    "green": (30, 170, 40),
    "blue": (20, 60, 230),
    "yellow": (245, 235, 20),
    "purple": (140, 40, 190),
    "orange": (250, 120, 0),
    "white": (245, 245, 245),
    "black": (10, 10, 10),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
# Colours the model is shown but never told: their scenes are captioned without a colour word ("a small circle on
# a blue background"). No word picks one of them, so a trained embedding (issue 7) is the only way to ask for
# pink — what its must-learn test needs. Pink is also far from every midpoint of two palette colours (the demo
# model blends two colour words: "purple white" draws a lilac); teal and grey are there so that leaving the colour
# word out does not mean pink.
UNNAMED: dict[str, tuple[int, int, int]] = {
    "pink": (255, 105, 180),
    "teal": (20, 150, 150),
    "grey": (128, 128, 128),
}
RGB: dict[str, tuple[int, int, int]] = {**PALETTE, **UNNAMED}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
POSITIONS = ("top left", "top right", "bottom left", "bottom right", "center")

# (colour, shape) pairs never rendered for training: each colour and each shape is still seen in other pairs.
HELD_OUT: frozenset[tuple[str, str]] = frozenset({("purple", "triangle"), ("orange", "circle"), ("white", "square")})

# Shape side as a fraction of the image side; the score's size threshold sits between them.
SIZE_FRACTION = {"small": 0.4, "large": 0.7}
# Gap kept between a shape and the image edge, as a fraction of the side, so the border stays background.
EDGE_MARGIN = 0.04
# Probability that a shortened caption drops the size word / the position phrase.
DROP_RATE = 0.2
SUPERSAMPLE = 4


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


@dataclass(frozen=True)
class Scene:
    """What one image shows; its caption is the prompt that should reproduce it."""

    colour: str
    shape: str
    background: str
    size: str
    position: str

    def caption(self, rng: random.Random | None = None) -> str:
        """The full caption, or with ``rng`` a randomly shortened one (size and/or position dropped).

        Shortened captions teach the model that short prompts ("a red circle") are valid too.
        """
        keep_size = rng is None or rng.random() >= DROP_RATE
        keep_position = rng is None or rng.random() >= DROP_RATE
        colour = "" if self.colour in UNNAMED else f"{self.colour} "
        noun = f"{self.size} {colour}{self.shape}" if keep_size else f"{colour}{self.shape}"
        text = f"{_article(noun)} {noun} on {_article(self.background)} {self.background} background"
        return f"{text}, {self.position}" if keep_position else text

    @property
    def prompt(self) -> str:
        """The full caption: what evaluation asks the model for."""
        return self.caption()


def shape_box(scene: Scene, size: int) -> tuple[float, float, float, float]:
    """The shape's bounding box (x0, y0, x1, y1) in pixels of a ``size``-pixel image.

    Quadrant positions centre the box in the quadrant, pulled inwards just enough to keep it inside the image
    with a margin (large shapes then overlap the centre lines, as the design allows).
    """
    side = SIZE_FRACTION[scene.size] * size
    half = side / 2
    lo, hi = half + EDGE_MARGIN * size, size - half - EDGE_MARGIN * size
    if scene.position == "center":
        cx = cy = size / 2
    else:
        vertical, horizontal = scene.position.split()
        cx = size / 4 if horizontal == "left" else 3 * size / 4
        cy = size / 4 if vertical == "top" else 3 * size / 4
        cx, cy = min(max(cx, lo), hi), min(max(cy, lo), hi)
    return cx - half, cy - half, cx + half, cy + half


def render(scene: Scene, size: int = 64, fill: tuple[int, int, int] | None = None,
           background: tuple[int, int, int] | None = None) -> np.ndarray:
    """The scene as uint8 (size, size, 3): drawn at 4× and box-downsampled, so edges are anti-aliased.

    ``fill`` paints the shape in an RGB colour outside the palette (concepts taught by training) instead of
    ``scene.colour``; ``background`` likewise replaces ``scene.background``.
    """
    big = size * SUPERSAMPLE
    image = Image.new("RGB", (big, big), background or PALETTE[scene.background])
    draw = ImageDraw.Draw(image)
    x0, y0, x1, y1 = (v * SUPERSAMPLE for v in shape_box(scene, size))
    fill = fill or RGB[scene.colour]
    # PIL's boxes include their last pixel; subtract one so the drawn extent equals the box exactly.
    if scene.shape == "circle":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
    elif scene.shape == "square":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
    elif scene.shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    else:
        raise ValueError(f"unknown shape {scene.shape!r}; expected one of {SHAPES}")
    return np.asarray(image.resize((size, size), Image.Resampling.BOX), dtype=np.uint8)


def _random_scene(rng: random.Random, held_out: bool) -> Scene:
    if held_out:
        colour, shape = rng.choice(sorted(HELD_OUT))
    else:
        while True:  # rejection keeps the allowed pairs uniform
            colour, shape = rng.choice(COLOURS), rng.choice(SHAPES)
            if (colour, shape) not in HELD_OUT:
                break
    background = rng.choice([c for c in COLOURS if c != colour])
    return Scene(colour, shape, background, rng.choice(SIZES), rng.choice(POSITIONS))


def sample_scenes(n: int, seed: int, *, held_out: bool = False) -> list[Scene]:
    """``n`` uniformly random scenes (background ≠ colour); training pairs only, or with ``held_out`` only held-out."""
    rng = random.Random(seed)
    return [_random_scene(rng, held_out) for _ in range(n)]


def make_dataset(n: int, seed: int, size: int = 64, empty_caption_rate: float = 0.1, unnamed_rate: float = 0.0,
                 ) -> tuple[np.ndarray, list[str], list[Scene]]:
    """Training data: images uint8 (n, size, size, 3), randomly shortened captions ("" at ``empty_caption_rate``,
    so classifier-free guidance has an unconditional model), and the scenes. Deterministic for ``seed``.

    ``unnamed_rate`` of the shapes are repainted in an :data:`UNNAMED` colour (captioned without a colour word).
    """
    scenes = sample_scenes(n, seed)
    if unnamed_rate > 0:  # own stream, so the palette scenes stay those of ``sample_scenes``
        pick = random.Random(f"unnamed-{seed}")
        scenes = [dataclasses.replace(s, colour=pick.choice(sorted(UNNAMED))) if pick.random() < unnamed_rate
                  else s for s in scenes]
    rng = random.Random(f"captions-{seed}")  # separate stream: caption choices don't shift the scenes
    captions = ["" if rng.random() < empty_caption_rate else s.caption(rng) for s in scenes]
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    for i, scene in enumerate(scenes):
        images[i] = render(scene, size)
    return images, captions, scenes


def any_colour_images(images: np.ndarray, scenes: list[Scene], rate: float, seed: int) -> np.ndarray:
    """A copy of ``images`` for training the VAE, with ``rate`` of the scenes repainted in random RGB colours
    (shape and background): the VAE then encodes and decodes any colour faithfully, not just the palette.

    Why: the UNet only learns the palette (what the words name), but a VAE trained on eight colours renders
    others as the nearest thing it knows — (255, 105, 180) pink came out a pale lilac that a blend of two colour
    words reaches. With a colour-general VAE, a colour outside the palette is something the *decoder* can show
    and no *prompt* asks for — what an embedding (issue 7) or a colour-shifting hypernetwork has to reach.
    """
    out = images.copy()
    rng = random.Random(f"any-colour-{seed}")
    for i, scene in enumerate(scenes):
        if rng.random() < rate:
            fill, background = (tuple(rng.randrange(256) for _ in range(3)) for _ in range(2))
            out[i] = render(scene, images.shape[1], fill=fill, background=background)
    return out


def shape_weights(images: np.ndarray, scenes: list[Scene], factor: int, weight: float, margin: int = 1,
                  ) -> np.ndarray:
    """Per-latent-cell loss weights (n, 1, size/factor, size/factor), mean 1 per image: ``1 + weight`` on the cells
    the shape's outline crosses (and ``margin`` cells around them), 1 elsewhere.

    Why: the outline is a few percent of the pixels, so a plain MSE barely sees whether a square came out round
    (2026-11-23: loss curves of models scoring 37 % and 57 % on shape were the same); weighting the cells along the
    outline spends the short training budget on what the prompt's shape, size and position words decide. With a
    full caption the scene is fully determined, so the weighting changes what is emphasised, not the ideal
    prediction.
    """
    bg = np.array([RGB[s.background] for s in scenes], dtype=np.int16)[:, None, None, :]
    inside = np.abs(images.astype(np.int16) - bg).max(axis=-1) > 24
    padded = np.pad(inside, ((0, 0), (1, 1), (1, 1)), mode="edge")
    edge = inside & ~(padded[:, :-2, 1:-1] & padded[:, 2:, 1:-1] & padded[:, 1:-1, :-2] & padded[:, 1:-1, 2:])
    n, size = edge.shape[0], edge.shape[1]
    cells = edge.reshape(n, size // factor, factor, size // factor, factor).any(axis=(2, 4))
    for _ in range(margin):
        grown = np.pad(cells, ((0, 0), (1, 1), (1, 1)))
        cells = np.max([grown[:, i:i + cells.shape[1], j:j + cells.shape[2]] for i in range(3) for j in range(3)],
                       axis=0)
    w = 1.0 + weight * cells.astype(np.float32)
    return (w / w.mean(axis=(1, 2), keepdims=True))[:, None]
