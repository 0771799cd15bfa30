"""Preview grids during training: what the adapter draws so far, from fixed seeds, so grids compare across steps.

Runs on the queue's worker thread inside a training slice (like every other GPU call), through a private
:class:`~engine.pipeline.Pipeline` whose library holds only the adapter being trained: the in-progress file is
never visible to prompts in any guild, and the real generation path (prompt language, adapters, sampler) is
what draws it — a preview shows exactly what members will get.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from engine.images import upscale_for_display
from engine.requests import GenerationRequest

if TYPE_CHECKING:
    from engine.loading import LoadedModel
    from engine.pipeline import Pipeline
    from engine.training.request import TrainKind

GAP = 4
BACKDROP = (54, 57, 63)  # Discord's dark grey: the gaps read as borders, not as part of an image


def grid(images: list[Image.Image], columns: int = 4, scale: int = 0) -> Image.Image:
    """Images (all one size) upscaled for display and laid out ``columns`` wide with thin gaps."""
    shown = [upscale_for_display(image.convert("RGB"), scale) for image in images]
    if not shown:
        raise ValueError("a grid needs at least one image")
    w, h = shown[0].size
    columns = max(1, min(columns, len(shown)))
    rows = -(-len(shown) // columns)
    sheet = Image.new("RGB", (columns * w + (columns - 1) * GAP, rows * h + (rows - 1) * GAP), BACKDROP)
    for i, image in enumerate(shown):
        sheet.paste(image, ((i % columns) * (w + GAP), (i // columns) * (h + GAP)))
    return sheet


@dataclass
class PreviewRenderer:
    """Draws ``prompt`` with the adapter file at ``path`` (re-read each call: it changes as training goes)."""

    model: LoadedModel
    kind: TrainKind
    name: str
    prompt: str
    seeds: tuple[int, ...] = (1, 2, 3, 4)
    steps: int = 20
    cfg_scale: float = 7.0
    scale: int = 0
    _pipeline: Pipeline | None = None

    def close(self) -> None:
        """Remove the private pipeline's prompt hook from the shared text encoder."""
        if self._pipeline is not None:
            self._pipeline.encoder.close()
            self._pipeline = None

    def __call__(self, path: Path) -> Image.Image:
        from engine.adapters.library import AdapterLibrary
        from engine.pipeline import Pipeline

        if self._pipeline is None:
            self._pipeline = Pipeline(self.model, max_batch=len(self.seeds), library=AdapterLibrary())
        library = self._pipeline.library
        library.unregister(self.kind, self.name)
        library.register(self.kind, self.name, Path(path))  # a fresh entry: nothing cached from the last grid
        requests = [GenerationRequest(prompt=self.prompt, seed=seed, subseed=seed, steps=self.steps,
                                      cfg_scale=self.cfg_scale) for seed in self.seeds]
        images = [result[0].image for result in self._pipeline.generate(requests)]
        return grid(images, columns=len(self.seeds), scale=self.scale)
