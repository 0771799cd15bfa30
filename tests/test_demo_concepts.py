"""The pink concept's plain-prompt competition: what counts as "a plain prompt gives it" (no model needed)."""

from __future__ import annotations

import numpy as np

from engine.demo import concepts
from engine.demo.dataset import COLOURS, PALETTE


def test_named_colours_are_the_palette_and_every_two_colour_midpoint() -> None:
    named = concepts.named_colours()
    assert len(named) == 8 + 28
    red, white = (np.array(PALETTE[c], dtype=float) / 255 for c in ("red", "white"))
    assert np.isclose(np.linalg.norm(named - (red + white) / 2, axis=1), 0).any()  # salmon is "named"
    # Pink stays outside all of them by a clear margin, so it is something plain prompts do not name.
    pink = np.array(concepts.PINK, dtype=float) / 255
    assert np.linalg.norm(named - pink, axis=1).min() > 0.2


def test_plain_prompts_cover_words_unknown_words_no_word_and_the_nearest_blends() -> None:
    pink = np.array(concepts.PINK, dtype=float) / 255
    prompts = concepts.plain_prompts(pink, blends=4)
    assert set(COLOURS) <= set(prompts) and set(concepts.UNKNOWN_WORDS) <= set(prompts) and "" in prompts
    blends = [p for p in prompts if len(p.split()) == 2]
    assert len(blends) == 8 and {" ".join(reversed(b.split())) for b in blends} == set(blends)  # both orders
    assert "red white" in blends or "white red" in blends  # the nearest midpoint to pink
