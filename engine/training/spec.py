"""One training run as every backend receives it: what to train, where its files live, how it is sliced.

Why one value: the local engine, a Ray replica and the bridge to it all start the same run from it, so the bot
builds it once (:class:`bot.training.TrainingService`) and cannot tell where it trains. The folders are the
*caller's*: the local engine trains in them; a remote backend gives the replica a scratch folder and writes the
checkpoints and the result it streams back into these, so a resume (after a restart, or a replica's death) starts
from the caller's last checkpoint wherever the run goes next. Everything here pickles (images are PIL images).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from engine.loading import LoadedModel
    from engine.training.images import TrainingImage
    from engine.training.job import TrainEvent, TrainingJob
    from engine.training.request import TrainingRequest


@dataclass(frozen=True)
class TrainingSpec:
    request: TrainingRequest
    images: list[TrainingImage]
    checkpoint_dir: Path
    result_path: Path
    checkpoint_every: int = 100
    slice_s: float = 0.1
    preview_every: int = 0  # steps between preview grids (0: only the final one)
    preview_steps: int = 20  # sampling steps of a preview image
    preview_scale: int = 0  # display upscale of the grid (0: none)

    def job(self, model: LoadedModel, loop: asyncio.AbstractEventLoop | None, *,
            ship_files: bool = False) -> TrainingJob:
        """The :class:`~engine.training.job.TrainingJob` that runs this spec on ``model`` (not yet queued)."""
        from engine.training.job import TrainingJob
        from engine.training.preview import PreviewRenderer

        request = self.request
        renderer = PreviewRenderer(model, request.kind, request.name, request.preview(self.images[0].caption),
                                   steps=self.preview_steps, scale=self.preview_scale)
        return TrainingJob(request.trainer_factory(model, self.images), checkpoint_dir=self.checkpoint_dir,
                           result_path=self.result_path, loop=loop, checkpoint_every=self.checkpoint_every,
                           preview=renderer, slice_seconds=self.slice_s, preview_every=self.preview_every,
                           ship_files=ship_files)


class TrainingHandle(Protocol):
    """What ``backend.train(spec)`` returns, whichever backend: follow, cancel, or stop for a shutdown."""

    def events(self) -> AsyncIterator[TrainEvent]:
        """Events until the run ends (:data:`~engine.training.job.TERMINAL`)."""
        ...

    def cancel(self) -> None:
        """A member's cancel: the run stops and a ``TrainCancelled`` event says at which step."""

    def stop(self) -> None:
        """Shutdown: the run stops without an event; its checkpoint stays for the next start."""
