"""A training run as queue work: short slices on the GPU worker, checkpoints on disk, events on the loop.

A :class:`TrainingJob` is a :class:`~engine.queue.worker.BackgroundTask`: the queue runs :meth:`run_slice`
between generation steps, so members' images keep flowing while a model trains. Each slice does optimizer
steps until ``slice_seconds`` pass; the first slice builds the trainer (encoding the images is GPU work too).

Checkpoints: every ``checkpoint_every`` steps the trainer's :meth:`~engine.training.core.DiffusionTrainer.state`
goes to ``<dir>/state.safetensors``: the tensors, with the rest (step, captions) as JSON in the file's metadata, so
one atomic write makes a checkpoint and a crash can never pair one step's tensors with another's step count.
A job built again over the same folder resumes from it and takes exactly the steps it would have taken. The
finished adapter is written to ``result_path`` as safetensors.

Shipping files (``ship_files``): a job that runs where the caller's disk is not (a Ray replica, issue 8) puts
each checkpoint's files in its :class:`TrainCheckpoint` event and the result's bytes in :class:`TrainFinished`,
so the caller keeps both and can resume the job anywhere.

Previews: with a ``preview`` renderer, every ``preview_every`` steps (and at the end) the adapter so far is written
to ``<dir>/preview.safetensors`` and drawn from fixed seeds (:mod:`engine.training.preview`); the grid travels as
PNG bytes in a :class:`TrainPreview` event. A failing preview is logged and skipped: it never stops training.

Events reach the asyncio loop through ``call_soon_threadsafe`` only; nothing on the loop waits on the worker.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors.torch import load, save

from engine.adapters.files import write_atomically
from engine.training.core import DiffusionTrainer

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainProgress:
    step: int
    total: int
    loss: float
    eta_s: float | None  # None until a few steps have been timed
    resumed_from: int | None = None  # set on the first event of a resumed job


@dataclass(frozen=True)
class TrainPreview:
    step: int
    png: bytes  # the grid, ready to upload
    total: int = 0
    loss: float = math.nan


@dataclass(frozen=True)
class TrainCheckpoint:
    """A checkpoint was written at ``step``; ``files`` (name → bytes) when the job ships them (``ship_files``)."""

    step: int
    files: dict[str, bytes] | None = None


@dataclass(frozen=True)
class TrainPaused:
    """The run cannot go on for now (the GPU cluster is unreachable, issue 8); it continues from its last
    checkpoint (``step``) when it can, and the next ``TrainProgress`` then carries ``resumed_from``."""

    step: int
    reason: str


@dataclass(frozen=True)
class TrainFinished:
    path: Path
    steps: int
    loss: float
    preview: bytes | None = None  # the final grid (PNG), when the job has a renderer
    data: bytes | None = None  # the result file's bytes, when the job ships them (``ship_files``)


@dataclass(frozen=True)
class TrainFailed:
    error: BaseException


@dataclass(frozen=True)
class TrainCancelled:
    step: int


TrainEvent = (TrainProgress | TrainPreview | TrainCheckpoint | TrainPaused | TrainFinished | TrainFailed
              | TrainCancelled)
TERMINAL = (TrainFinished, TrainFailed, TrainCancelled)

# A checkpoint is one file, written atomically: the tensors, and the rest as JSON under this metadata key.
CHECKPOINT_FILE = "state.safetensors"
_STATE_KEY = "atelier.training_state"


def checkpoint_files(trainer: DiffusionTrainer) -> dict[str, bytes]:
    """The trainer's state as the checkpoint's file contents (name → bytes)."""
    state = trainer.state()
    plain = {"steps_done": state["steps_done"], "captions": state["captions"]}
    tensors = {k: v.contiguous() for k, v in state["tensors"].items()}
    return {CHECKPOINT_FILE: save(tensors, metadata={_STATE_KEY: json.dumps(plain)})}


def write_checkpoint_files(folder: Path, files: dict[str, bytes]) -> None:
    """Write a checkpoint's files atomically (a crash leaves the previous checkpoint whole)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        write_atomically(folder / name, lambda tmp, data=data: tmp.write_bytes(data))


def read_checkpoint_files(folder: Path) -> dict[str, bytes] | None:
    """The checkpoint's file contents, or None when the folder holds no checkpoint."""
    path = folder / CHECKPOINT_FILE
    return {CHECKPOINT_FILE: path.read_bytes()} if path.is_file() else None


def write_checkpoint(trainer: DiffusionTrainer, folder: Path) -> dict[str, bytes]:
    files = checkpoint_files(trainer)
    write_checkpoint_files(folder, files)
    return files


def read_checkpoint(folder: Path) -> dict[str, object] | None:
    """The saved state, or None when the folder holds no complete checkpoint."""
    files = read_checkpoint_files(folder)
    if files is None:
        return None
    data = files[CHECKPOINT_FILE]
    size = int.from_bytes(data[:8], "little")  # safetensors: u64 header length, then the JSON header
    plain = json.loads(json.loads(data[8:8 + size])["__metadata__"][_STATE_KEY])
    return {**plain, "tensors": load(data)}


class TrainingJob:
    """One training run; give it to ``GenerationQueue.add_background`` and follow :meth:`events`."""

    def __init__(self, make_trainer: Callable[[], DiffusionTrainer], *,
                 checkpoint_dir: Path, result_path: Path, loop: asyncio.AbstractEventLoop | None = None,
                 checkpoint_every: int = 100, slice_seconds: float = 0.1,
                 preview: Callable[[Path], Image.Image] | None = None, preview_every: int = 0,
                 ship_files: bool = False) -> None:
        self.make_trainer = make_trainer
        self.checkpoint_dir, self.result_path = Path(checkpoint_dir), Path(result_path)
        self.checkpoint_every, self.slice_seconds = max(1, checkpoint_every), slice_seconds
        self.loop = loop
        self.preview, self.preview_every = preview, max(0, preview_every)
        self.ship_files = ship_files
        self.cancelled = False
        self.released = False  # set once the trainer and renderer have let go of the shared model
        self.trainer: DiffusionTrainer | None = None
        self.resumed_from: int | None = None
        self._events: asyncio.Queue[TrainEvent] | None = asyncio.Queue() if loop is not None else None
        self._timed_seconds = 0.0  # spent in steps by this job (a resumed job times only its own steps)

    # -- the worker's side (BackgroundTask) --------------------------------------------------------------

    def run_slice(self) -> bool:
        if self.cancelled:
            self.release()
            return True  # nothing more to do
        if self.trainer is None:
            self.trainer = self.make_trainer()
            state = read_checkpoint(self.checkpoint_dir)
            if state is not None:
                self.trainer.load_state(state)
                self.resumed_from = self.trainer.steps_done
            if self.trainer.done:  # resumed after its last step: only the result is left to write
                return self._finish()
            return False  # set-up was this slice's work
        trainer = self.trainer
        start = time.monotonic()
        while not trainer.done and not self.cancelled:
            trainer.step()
            if trainer.steps_done % self.checkpoint_every == 0 and not trainer.done:
                self._checkpoint()
            if self.preview_every and trainer.steps_done % self.preview_every == 0 and not trainer.done:
                png = self.render_preview()
                if png is not None:
                    self._emit(TrainPreview(trainer.steps_done, png, trainer.total_steps, trainer.last_loss))
                break  # a preview is a slice's worth of work
            if time.monotonic() - start >= self.slice_seconds:
                break
        self._timed_seconds += time.monotonic() - start
        timed_steps = trainer.steps_done - (self.resumed_from or 0)
        if trainer.done:
            return self._finish()
        eta = None
        if timed_steps >= 3:
            eta = (trainer.total_steps - trainer.steps_done) * self._timed_seconds / timed_steps
        self._emit(TrainProgress(trainer.steps_done, trainer.total_steps, trainer.last_loss, eta,
                                 self.resumed_from))
        return False

    def render_preview(self) -> bytes | None:
        """The current adapter drawn by the renderer, as PNG bytes; None without a renderer or when it fails."""
        if self.preview is None or self.trainer is None:
            return None
        try:
            path = self.trainer.save(self.checkpoint_dir / "preview.safetensors")
            image = self.preview(path)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            return buffer.getvalue()
        except Exception:
            log.exception("training preview failed at step %d", self.trainer.steps_done)
            return None

    def _checkpoint(self) -> None:
        assert self.trainer is not None
        files = write_checkpoint(self.trainer, self.checkpoint_dir)
        self._emit(TrainCheckpoint(self.trainer.steps_done, files if self.ship_files else None))

    def _finish(self) -> bool:
        assert self.trainer is not None
        self._checkpoint()
        self.result_path.parent.mkdir(parents=True, exist_ok=True)
        self.trainer.save(self.result_path)
        data = self.result_path.read_bytes() if self.ship_files else None
        preview = self.render_preview()
        self.release()
        self._emit(TrainFinished(self.result_path, self.trainer.steps_done, self.trainer.last_loss, preview, data))
        return True

    def failed(self, error: BaseException) -> None:
        self.release()
        self._emit(TrainFailed(error))

    def release(self) -> None:
        """Detach the trainer and the preview renderer from the shared model (worker thread, once the job ends)."""
        for part in (self.trainer, self.preview):
            close = getattr(part, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.exception("training job: releasing %r failed", part)
        self.released = True

    # -- the loop's side ---------------------------------------------------------------------------------

    def cancel(self) -> None:
        """A member's cancel: stop before the next step and say so (:class:`TrainCancelled`); the last checkpoint
        stays (the caller decides whether to delete it)."""
        if not self.cancelled:
            self.cancelled = True
            self._emit(TrainCancelled(self.trainer.steps_done if self.trainer is not None else 0))

    def stop(self) -> None:
        """Shutdown, not cancel: no more slices and no event, so the job resumes from its checkpoint next time."""
        self.cancelled = True

    def _emit(self, event: TrainEvent) -> None:
        if self.loop is None or self._events is None:
            return
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self._events.put_nowait, event)

    async def events(self) -> AsyncIterator[TrainEvent]:
        """Events until the job ends (finished, failed or cancelled)."""
        assert self._events is not None, "create the job with loop= to follow its events"
        while True:
            event = await self._events.get()
            yield event
            if isinstance(event, TERMINAL):
                return
