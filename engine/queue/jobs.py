"""Jobs and the handles callers hold: an awaitable result, a live queue position, progress events, cancel.

A :class:`Job` lives in two threads: the event loop submits, watches and cancels it; the worker thread runs its
samples. State that both touch is either written by one side only or crosses through
``loop.call_soon_threadsafe`` (events, the result), so the loop never waits on the worker.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from engine.requests import GeneratedImage, GenerationRequest

_ids = itertools.count(1)


class JobState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobFailed(RuntimeError):
    """The job's batch raised; the message is the cause, readable by the user who asked."""


class JobCancelled(RuntimeError):
    """The job was cancelled (by its owner, a moderator, or shutdown); the message says why."""


# -- events ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Queued:
    position: int  # 1 = next to start


@dataclass(frozen=True)
class Started:
    pass


@dataclass(frozen=True)
class Progress:
    step: int  # model evaluations done over all the job's images
    total: int
    preview: np.ndarray | None = None  # uint8 H×W×3, a cheap projection of the first running image


@dataclass(frozen=True)
class Finished:
    images: list[GeneratedImage]


@dataclass(frozen=True)
class Failed:
    error: str


@dataclass(frozen=True)
class Cancelled:
    reason: str


Event = Queued | Started | Progress | Finished | Failed | Cancelled
TERMINAL = (Finished, Failed, Cancelled)


@dataclass(eq=False)
class Job:
    """One request in the queue. ``request`` is resolved (seeds and size fixed) before it is queued."""

    request: GenerationRequest
    user_id: int = 0
    guild_id: int | None = None
    priority: int = 0
    id: int = field(default_factory=lambda: next(_ids))
    state: JobState = JobState.QUEUED
    position: int = 0
    steps_done: int = 0
    steps_total: int = 0
    cancel_reason: str | None = None  # set on the loop; the worker drops the job's samples at the next step
    images: list[GeneratedImage | None] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None
    _future: asyncio.Future[list[GeneratedImage]] | None = None
    _events: list[asyncio.Queue[Event]] = field(default_factory=list)
    _last_event: Event | None = None

    @property
    def size(self) -> tuple[int, int]:
        return (self.request.width, self.request.height)

    @property
    def samples_total(self) -> int:
        return self.request.count

    @property
    def done(self) -> bool:
        return self.state in (JobState.FINISHED, JobState.FAILED, JobState.CANCELLED)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._future = loop.create_future()
        self.images = [None] * self.request.count

    # -- called on the loop ------------------------------------------------------------------------------------

    def emit(self, event: Event) -> None:
        """Publish ``event`` to watchers and settle the result on a terminal event (loop thread only)."""
        if self._last_event is not None and isinstance(self._last_event, TERMINAL):
            return
        self._last_event = event
        if isinstance(event, Started):
            self.state = JobState.RUNNING
        elif isinstance(event, Queued):
            self.position = event.position
        elif isinstance(event, Finished):
            self.state = JobState.FINISHED
            self._settle(result=event.images)
        elif isinstance(event, Failed):
            self.state = JobState.FAILED
            self._settle(error=JobFailed(event.error))
        elif isinstance(event, Cancelled):
            self.state = JobState.CANCELLED
            self._settle(error=JobCancelled(event.reason))
        for queue in self._events:
            queue.put_nowait(event)

    def _settle(self, *, result: Any = None, error: BaseException | None = None) -> None:
        if self._future is None or self._future.done():
            return
        if error is not None:
            self._future.set_exception(error)
            self._future.exception()  # mark retrieved: nobody awaiting a cancelled job is not an error
        else:
            self._future.set_result(result)

    # -- called from the worker thread -------------------------------------------------------------------------

    def emit_threadsafe(self, event: Event) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.emit, event)


class JobHandle:
    """What a caller gets back from ``submit``: await it for the images, watch it, or cancel it."""

    def __init__(self, job: Job, queue: Any) -> None:
        self._job = job
        self._queue = queue

    @property
    def id(self) -> int:
        return self._job.id

    @property
    def job(self) -> Job:
        return self._job

    @property
    def state(self) -> JobState:
        return self._job.state

    @property
    def position(self) -> int:
        """1 = next to start; 0 once running or done."""
        return self._job.position if self._job.state is JobState.QUEUED else 0

    async def result(self) -> list[GeneratedImage]:
        """The images; raises :class:`JobFailed` or :class:`JobCancelled`."""
        assert self._job._future is not None
        return await asyncio.shield(self._job._future)

    def __await__(self):
        return self.result().__await__()

    async def events(self) -> AsyncIterator[Event]:
        """Every event from now on (starting with the current state), ending after the terminal one."""
        queue: asyncio.Queue[Event] = asyncio.Queue()
        job = self._job
        if job._last_event is not None:
            queue.put_nowait(job._last_event)
        elif job.state is JobState.QUEUED:
            queue.put_nowait(Queued(job.position))
        job._events.append(queue)
        try:
            while True:
                event = await queue.get()
                yield event
                if isinstance(event, TERMINAL):
                    return
        finally:
            job._events.remove(queue)

    def cancel(self, reason: str = "cancelled by its owner") -> bool:
        """Cancel a queued or running job; False if it had already ended."""
        return self._queue.cancel(self._job, reason)
