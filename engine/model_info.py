"""What the application may know about the loaded model, as plain values (no torch modules).

Why a separate value: the bot needs the model's name, family, native size and adapter widths for replies and
checks, but it must not hold the model itself — with a remote backend (issue 8: Ray Serve replicas) the model
lives in another process. Everything in ``bot/`` and ``cogs/`` reads :class:`ModelInfo`, so the cogs cannot tell
where the model runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.adapters.compat import ModelWidths, loaded_widths

if TYPE_CHECKING:
    from engine.loading import LoadedModel


@dataclass(frozen=True)
class ModelInfo:
    """The loaded model as the application sees it."""

    name: str
    source: str
    family: str
    device: str
    dtype: str  # "float16", "float32", …
    native_size: tuple[int, int]  # (width, height) in pixels
    widths: ModelWidths  # what adapters must match

    @classmethod
    def of(cls, model: LoadedModel) -> ModelInfo:
        return cls(name=model.name, source=model.source, family=model.family, device=str(model.device),
                   dtype=str(model.dtype).removeprefix("torch."), native_size=model.native_size,
                   widths=loaded_widths(model))
