"""Engine-level generation requests and results (no Discord here).

A request is what one user asked for: a prompt and its parameters, ``count`` images. Validation happens at
construction, so every caller (CLI, cogs, queue) gets the same clear message for the same mistake.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from engine.samplers import UnknownSamplerError, resolve_sampler

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

MAX_SEED = 2**32 - 1  # A1111 seeds are unsigned 32-bit
MAX_STEPS = 1000
MAX_SIDE = 8192


class RequestError(ValueError):
    """A request parameter is invalid; the message names it and says what would be accepted."""


@dataclass(frozen=True)
class GenerationRequest:
    """One user's ask. ``width``/``height`` 0 mean the model's native size; seed -1 means random."""

    prompt: str
    negative_prompt: str = ""
    width: int = 0
    height: int = 0
    steps: int = 20
    cfg_scale: float = 7.0
    sampler: str = "Euler a"
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    count: int = 1
    # Every image keeps ``seed`` and only the variation seed advances (variations of one image); A1111 numbers a
    # batch seed, seed+1, … and so does the default.
    same_seed: bool = False
    # Whose adapter library the prompt's names resolve in: the global library plus this guild's (None: global).
    guild_id: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not isinstance(self.negative_prompt, str):
            raise RequestError("prompt: must be text")
        from engine.prompts.parser import parse_prompt  # the syntax needs no model: check it at once

        parse_prompt(self.prompt)
        parse_prompt(self.negative_prompt)
        for name in ("width", "height"):
            value = getattr(self, name)
            if value < 0 or value > MAX_SIDE or value % 8:
                raise RequestError(f"{name}: must be a multiple of 8 between 8 and {MAX_SIDE}, got {value}")
        if not 1 <= self.steps <= MAX_STEPS:
            raise RequestError(f"steps: must be between 1 and {MAX_STEPS}, got {self.steps}")
        if not 0.0 <= self.cfg_scale <= 100.0:
            raise RequestError(f"cfg scale: must be between 0 and 100, got {self.cfg_scale}")
        if not 0.0 <= self.subseed_strength <= 1.0:
            raise RequestError(f"variation strength: must be between 0 and 1, got {self.subseed_strength}")
        if self.count < 1:
            raise RequestError(f"count: must be at least 1, got {self.count}")
        for name in ("seed", "subseed"):
            value = getattr(self, name)
            if value != -1 and not 0 <= value <= MAX_SEED:
                raise RequestError(f"{name}: must be -1 (random) or between 0 and {MAX_SEED}, got {value}")
        try:
            canonical = resolve_sampler(self.sampler).name
        except UnknownSamplerError as exc:
            raise RequestError(str(exc)) from None
        object.__setattr__(self, "sampler", canonical)

    def with_seeds(self, rng: random.Random | None = None) -> GenerationRequest:
        """A copy with random seeds (-1) replaced by concrete ones, as A1111 does before generating."""
        rng = rng or random.Random()
        seed = self.seed if self.seed != -1 else rng.randrange(MAX_SEED)
        subseed = self.subseed if self.subseed != -1 else rng.randrange(MAX_SEED)
        return dataclasses.replace(self, seed=seed, subseed=subseed)

    def sample_seeds(self) -> list[tuple[int, int]]:
        """(seed, subseed) of each image: seed, seed+1, … as A1111 numbers a batch."""
        if self.seed == -1 or self.subseed == -1:
            raise RequestError("seeds must be resolved (with_seeds) before sampling")
        step = 0 if self.same_seed else 1
        return [((self.seed + step * i) % (MAX_SEED + 1), (self.subseed + i) % (MAX_SEED + 1))
                for i in range(self.count)]


@dataclass
class GeneratedImage:
    """One finished image: its pixels in [0, 1] (H, W, 3 float32), the seeds that made it, its infotext."""

    pixels: np.ndarray
    seed: int
    subseed: int
    subseed_strength: float
    infotext: str
    request: GenerationRequest
    index: int = 0  # position within its request
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def image(self) -> Image.Image:
        """The image as 8-bit RGB, rounded the same way every time."""
        import numpy as np
        from PIL import Image

        return Image.fromarray((self.pixels * 255.0 + 0.5).clip(0, 255).astype(np.uint8), "RGB")
