"""Training runs on the cluster, seen from the bot: a handle fed by a stream, and the files kept on the bot's side.

Why the files come back: the bot keeps the job row, the images and the folders (``TrainingSpec.checkpoint_dir``,
``result_path``); a replica trains in a scratch folder and ships every checkpoint and the result in its events
(``ship_files``). Writing them here means a resume — after the bot restarts, or after the replica running the job
dies — starts from the last checkpoint on whichever replica takes it, and no node needs shared storage for
training. The result then registers in the bot's database exactly as a local run's does.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable

from engine.adapters.files import write_atomically
from engine.training.job import (
    TERMINAL,
    TrainCancelled,
    TrainCheckpoint,
    TrainEvent,
    TrainFinished,
    TrainPreview,
    TrainProgress,
    write_checkpoint_files,
)
from engine.training.spec import TrainingSpec


class RemoteTraining:
    """A :class:`~engine.training.spec.TrainingHandle` for a run elsewhere: events arrive through :meth:`emit`.

    ``on_cancel`` asks the far side to cancel and returns True when it will answer with ``TrainCancelled``; when
    it returns False (the far side is gone) the cancel is reported here. ``on_stop`` stops the run silently.
    """

    def __init__(self, spec: TrainingSpec, *, on_cancel: Callable[[], bool], on_stop: Callable[[], None]) -> None:
        self.spec = spec
        self.step = 0  # the last step heard of (what a cancel reports when the far side cannot)
        self.checkpointed = 0  # the step of the last checkpoint written on this side (where a resume starts)
        self.ended = False
        self._on_cancel, self._on_stop = on_cancel, on_stop
        self._events: asyncio.Queue[TrainEvent] = asyncio.Queue()
        self.cancelling = False

    def emit(self, event: TrainEvent) -> None:
        if self.ended:
            return
        if isinstance(event, TrainProgress | TrainPreview | TrainCheckpoint):
            self.step = max(self.step, event.step)
        if isinstance(event, TrainCheckpoint):
            self.checkpointed = max(self.checkpointed, event.step)
        self._events.put_nowait(event)
        if isinstance(event, TERMINAL):
            self.ended = True

    def cancel(self) -> None:
        if self.ended or self.cancelling:
            return
        self.cancelling = True
        if not self._on_cancel():
            self.emit(TrainCancelled(self.step))

    def stop(self) -> None:
        if not self.ended:
            self.ended = True
            self._on_stop()

    async def events(self) -> AsyncIterator[TrainEvent]:
        while True:
            event = await self._events.get()
            yield event
            if isinstance(event, TERMINAL):
                return


async def keep_files(spec: TrainingSpec, event: TrainEvent) -> TrainEvent:
    """Write what an event ships into the caller's folders (off the loop); returns the event without the bytes."""
    if isinstance(event, TrainCheckpoint) and event.files is not None:
        await asyncio.to_thread(write_checkpoint_files, spec.checkpoint_dir, event.files)
        return TrainCheckpoint(event.step)
    if isinstance(event, TrainFinished) and event.data is not None:
        data = event.data

        def write() -> None:
            spec.result_path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(spec.result_path, lambda tmp: tmp.write_bytes(data))

        await asyncio.to_thread(write)
        return dataclasses.replace(event, path=spec.result_path, data=None)
    return event
