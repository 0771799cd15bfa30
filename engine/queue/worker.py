"""The GPU queue: jobs from many users batched through one pipeline, joining a running batch at the next step.

:class:`GenerationQueue` is the event loop's side (submit, cancel, shutdown; never blocks); its worker thread
runs the loop below, which owns the model:

1. Idle: wait for work; when the first job arrives, wait the collection window so near-simultaneous requests
   start together.
2. Fill free slots of the running batch from :class:`~engine.queue.policy.SchedulingPolicy` (fair, by priority,
   only samples of the batch's size). A job's samples are prepared (prompts encoded, noise drawn) when its first
   sample is admitted; a job whose prompt cannot be encoded (an embedding of the wrong width) fails alone.
3. Drop samples of cancelled jobs; run one UNet step for the batch (``Pipeline.denoise_step``).
4. Decode samples that finished, hand images to their jobs, emit progress and previews.

Faults stay with their jobs: an exception in a step fails the jobs in that batch and the loop goes on; CUDA
out-of-memory halves the batch limit for that size and retries with the samples that fit (a step changes no
sample before the UNet call returns, so a retry is exact).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch

from engine.queue.jobs import Cancelled, Failed, Finished, Job, JobHandle, JobState, Progress, Queued, Started
from engine.queue.policy import INTERACTIVE, QueueFullError, SchedulingPolicy
from engine.queue.preview import PreviewProjector

if TYPE_CHECKING:
    from engine.pipeline import Pipeline, Sample
    from engine.requests import GenerationRequest

log = logging.getLogger(__name__)


class QueueClosed(RuntimeError):
    """The queue is shutting down and takes no new jobs."""


@dataclass(frozen=True)
class QueueOptions:
    max_jobs_per_user: int = 3
    max_queued: int = 100
    collect_window_s: float = 0.05
    preview_every: int = 5  # steps between previews; 0 = none
    idle_poll_s: float = 0.5
    # False = static batching (a batch is formed when the worker is idle and runs to the end); only for
    # comparisons in bench/, the product always joins requests at the next step.
    continuous: bool = True
    # While interactive work runs, background tasks (training slices) get at most this share of worker time;
    # when there is no interactive work they run back to back.
    background_share: float = 0.25


class BackgroundTask(Protocol):
    """Low-priority work that runs on the worker thread in short slices between generation steps (training).

    ``run_slice`` does one unit (a few hundred milliseconds at most) and returns True when the task is done;
    an exception ends the task and is passed to ``failed``. ``cancelled`` is polled before each slice; a cancelled
    task with a ``release()`` method gets it called here, on the worker thread, before it is dropped.
    """

    cancelled: bool

    def run_slice(self) -> bool: ...

    def failed(self, error: BaseException) -> None: ...


def _is_oom(exc: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None)
    return (oom is not None and isinstance(exc, oom)) or "out of memory" in str(exc).lower()


@dataclass
class _Running:
    """Worker-thread state of one job that has started."""

    job: Job
    pending: deque[Sample] = field(default_factory=deque)  # prepared, not yet in the batch
    admitted: int = 0  # slots the policy granted and not yet taken from ``pending``
    finished: int = 0
    evaluations: dict[int, int] = field(default_factory=dict)  # sample index → evaluations done


class GenerationQueue:
    """Submit requests from the event loop; one worker thread batches them through ``pipeline``."""

    def __init__(self, pipeline: Pipeline, options: QueueOptions | None = None) -> None:
        self.pipeline = pipeline
        self.options = options or QueueOptions()
        self.policy = SchedulingPolicy(self.options.max_jobs_per_user, self.options.max_queued)
        self.preview = PreviewProjector(pipeline.model.latent_channels)
        self._jobs: dict[int, Job] = {}  # every unfinished job (loop and worker read; changes under the lock)
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._accepting = False
        self._stop = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._limits: dict[tuple[int, int], int] = {}  # lowered batch limits after out-of-memory
        self._started: set[int] = set()  # jobs whose samples the worker has prepared
        self._background: deque[BackgroundTask] = deque()
        self._time = {"generation": 0.0, "background": 0.0}  # decaying sums of worker time, for the share
        self.stats = {"steps": 0, "batched_samples": 0, "max_batch": 0, "oom_splits": 0}

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker (call on the event loop that will receive events)."""
        self._loop = asyncio.get_running_loop()
        self._accepting = True
        self._thread = threading.Thread(target=self._run, name="atelier-queue", daemon=True)
        self._thread.start()

    async def shutdown(self, timeout: float = 30.0) -> list[Job]:
        """Stop accepting; let running work finish within ``timeout``; cancel the rest. Returns unfinished jobs."""
        self._accepting = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._has_running():
            await asyncio.sleep(0.05)
        with self._lock:
            left = [job for job in self._jobs.values() if not job.done]
        for job in left:
            self.cancel(job, "the bot is shutting down; please ask again later")
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, max(1.0, timeout))
        await asyncio.sleep(0)  # deliver the events queued by the worker's last step
        return left

    def _has_running(self) -> bool:
        with self._lock:
            return any(job.state is JobState.RUNNING or job.steps_done for job in self._jobs.values()
                       if not job.done)

    # -- the loop's API ----------------------------------------------------------------------------------------

    def submit(self, request: GenerationRequest, *, user_id: int = 0, guild_id: int | None = None,
               priority: int = INTERACTIVE) -> JobHandle:
        """Queue ``request``; raises ``RequestError`` (bad names), :class:`QueueFullError` or :class:`QueueClosed`."""
        if not self._accepting or self._loop is None:
            raise QueueClosed("the queue is not accepting jobs (starting up or shutting down)")
        if request.guild_id is None and guild_id is not None:
            import dataclasses

            request = dataclasses.replace(request, guild_id=guild_id)
        self._check_names(request)
        job = Job(self.pipeline.resolve(request), user_id=user_id, guild_id=request.guild_id, priority=priority)
        job.bind(self._loop)
        job.steps_total = job.samples_total * self.pipeline.evaluations(job.request)
        with self._lock:
            self.policy.add(job)
            self._jobs[job.id] = job
        self._publish_positions()
        self._wake.set()
        return JobHandle(job, self)

    def _check_names(self, request: GenerationRequest) -> None:
        """Unknown hypernetwork names fail at once, on the loop, instead of after the wait."""
        from engine.prompts.parser import strip_networks

        for text in (request.prompt, request.negative_prompt):
            for tag in strip_networks(text)[1]:
                self.pipeline.library.find("hypernetwork", tag.name, request.guild_id)

    def cancel(self, job: Job, reason: str = "cancelled by its owner") -> bool:
        """Cancel a queued job at once, a running one at its batch's next step; False if it had ended."""
        with self._lock:
            if job.done or job.cancel_reason is not None:
                return False
            job.cancel_reason = reason
            self.policy.remove(job.id)
            started = job.id in self._started
        if not started:
            self._end(job, Cancelled(reason))
        self._wake.set()
        return True

    def add_background(self, task: BackgroundTask) -> None:
        """Run ``task`` in slices at background priority (see :class:`BackgroundTask`)."""
        if not self._accepting:
            raise QueueClosed("the queue is not accepting work (starting up or shutting down)")
        with self._lock:
            self._background.append(task)
        self._wake.set()

    def jobs(self, user_id: int | None = None) -> list[Job]:
        """Unfinished jobs (a user's, or all), in queue order: running first, then by position."""
        with self._lock:
            jobs = [j for j in self._jobs.values() if not j.done and (user_id is None or j.user_id == user_id)]
        return sorted(jobs, key=lambda j: (j.state is not JobState.RUNNING, j.position, j.id))

    # -- events ------------------------------------------------------------------------------------------------

    def _end(self, job: Job, event: Finished | Failed | Cancelled) -> None:
        """Finish a job from either thread: publish the terminal event, free its user's slot."""
        with self._lock:
            if self._jobs.pop(job.id, None) is None:
                return  # already ended (a cancel and a finish can race)
            self._started.discard(job.id)
            self.policy.finished(job)
        if threading.current_thread() is self._thread:
            job.emit_threadsafe(event)
        else:
            job.emit(event)
        self._publish_positions()

    def _publish_positions(self) -> None:
        positions = self.policy.positions()
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            position = positions.get(job.id)
            if position is not None and position != job.position:
                job.position = position  # read by handles at once; the event follows on the loop
                job.emit_threadsafe(Queued(position))

    # -- the worker thread -------------------------------------------------------------------------------------

    def _run(self) -> None:
        running: dict[int, _Running] = {}
        active: list[Sample] = []
        size: tuple[int, int] | None = None
        while True:
            if not active:
                size = None
                if self._stop:
                    return
                deferred = next((st for st in running.values() if st.admitted > 0 and st.pending), None)
                if deferred is not None:  # samples set aside by an out-of-memory split go first
                    size = deferred.job.size
                elif not self.policy.has_waiting():
                    if self._background:
                        self._run_background_slice()
                        continue
                    self._wake.wait(self.options.idle_poll_s)
                    self._wake.clear()
                    continue
                else:
                    time.sleep(self.options.collect_window_s)  # gather near-simultaneous arrivals
                    size = self.policy.next_size()
                    if size is None:
                        continue
            assert size is not None
            self._admit(size, active, running)
            active = self._drop_cancelled(active, running)
            if not active:
                continue
            started = time.perf_counter()
            active = self._step(size, active, running)
            self._account("generation", time.perf_counter() - started)
            if self._background and self._background_due():
                self._run_background_slice()

    # -- background work ---------------------------------------------------------------------------------------

    def _account(self, kind: str, seconds: float) -> None:
        for key in self._time:
            self._time[key] *= 0.97  # forget slowly: the share is over the last few dozen steps
        self._time[kind] += seconds

    def _background_due(self) -> bool:
        share = self.options.background_share
        total = self._time["generation"] + self._time["background"]
        return share > 0 and (total == 0 or self._time["background"] / total < share)

    def _run_background_slice(self) -> None:
        """One slice of the oldest background task, then it goes to the back (round-robin between tasks)."""
        with self._lock:
            if not self._background:
                return
            task = self._background.popleft()
        if getattr(task, "cancelled", False):
            release = getattr(task, "release", None)  # on this thread: it may detach hooks the worker uses
            if release is not None:
                try:
                    release()
                except Exception:
                    log.exception("background task %r: release failed", task)
            return
        started = time.perf_counter()
        try:
            done = task.run_slice()
        except Exception as exc:
            log.exception("background task %r failed", task)
            try:
                task.failed(exc)
            except Exception:
                log.exception("background task %r: failure handler raised", task)
            done = True
        self._account("background", time.perf_counter() - started)
        if not done:
            with self._lock:
                self._background.append(task)

    def _limit(self, size: tuple[int, int]) -> int:
        limit = self.pipeline.batch_limit(*size)
        return min(limit, self._limits.get(size, limit))

    def _admit(self, size: tuple[int, int], active: list[Sample], running: dict[int, _Running]) -> None:
        """Fill free slots: granted samples already prepared go first, then new grants from the policy."""
        if not self.options.continuous and active:
            return
        free = self._limit(size) - len(active)
        for state in running.values():  # samples granted earlier but deferred (after an out-of-memory split)
            while free > 0 and state.admitted > 0 and state.pending and state.job.size == size:
                active.append(state.pending.popleft())
                state.admitted -= 1
                free -= 1
        if free <= 0:
            return
        granted = self.policy.admit(size, free)
        if granted:
            self._publish_positions()
        for job in granted:
            state = running.get(job.id)
            if state is None:
                if job.cancel_reason is not None:
                    continue
                state = self._prepare(job)
                if state is None:
                    continue
                running[job.id] = state
            if state.pending:
                active.append(state.pending.popleft())

    def _prepare(self, job: Job) -> _Running | None:
        """Encode the job's prompts and draw its noise; a failure here fails only this job."""
        with self._lock:
            self._started.add(job.id)
        try:
            samples = self.pipeline.make_samples(job.request, request_index=job.id)
        except Exception as exc:  # RequestError (names, widths, length) or anything else: this job only
            log.info("job %s failed while preparing: %s", job.id, exc)
            self._end(job, Failed(str(exc)))
            return None
        job.emit_threadsafe(Started())
        return _Running(job, deque(samples))

    def _drop_cancelled(self, active: list[Sample], running: dict[int, _Running]) -> list[Sample]:
        for job_id, state in list(running.items()):
            job = state.job
            if job.cancel_reason is not None:
                running.pop(job_id)
                self._end(job, Cancelled(job.cancel_reason))
        return [s for s in active if s.request_index in running]

    def _step(self, size: tuple[int, int], active: list[Sample], running: dict[int, _Running]) -> list[Sample]:
        try:
            finished = self.pipeline.denoise_step(active)
        except Exception as exc:
            if _is_oom(exc) and len(active) > 1:
                keep = max(1, len(active) // 2)
                self._limits[size] = keep
                self.stats["oom_splits"] += 1
                log.warning("out of memory at batch %d for %dx%d; lowering the limit to %d", len(active), *size,
                            keep)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                for sample in reversed(active[keep:]):  # back to their jobs, state untouched
                    state = running[sample.request_index]
                    state.pending.appendleft(sample)
                    state.admitted += 1
                return active[:keep]
            message = f"generation failed: {type(exc).__name__}: {exc}"
            log.exception("a batch of %d samples failed", len(active))
            for job_id in dict.fromkeys(s.request_index for s in active):
                state = running.pop(job_id)
                self._end(state.job, Failed(message))
            return []
        self.stats["steps"] += 1
        self.stats["batched_samples"] += len(active)
        self.stats["max_batch"] = max(self.stats["max_batch"], len(active))
        self._report_progress(active, running)
        if finished:
            self._deliver(finished, running)
        return [s for s in active if not s.done and s.request_index in running]

    def _report_progress(self, active: list[Sample], running: dict[int, _Running]) -> None:
        every = self.options.preview_every
        first_of_job: dict[int, Sample] = {}
        for s in active:
            state = running[s.request_index]
            state.evaluations[s.index] = s.step
            first_of_job.setdefault(s.request_index, s)
        for job_id, sample in first_of_job.items():
            state = running[job_id]
            job = state.job
            job.steps_done = sum(state.evaluations.values())
            preview = None
            if every and (sample.step % every == 0 or sample.done):
                latent = sample.denoised if sample.denoised is not None else sample.latents
                preview = self.preview.project(latent[0])
            job.emit_threadsafe(Progress(job.steps_done, job.steps_total, preview))

    def _deliver(self, finished: list[Sample], running: dict[int, _Running]) -> None:
        try:
            images = self.pipeline.decode(finished)
        except Exception as exc:
            for job_id in dict.fromkeys(s.request_index for s in finished):
                state = running.pop(job_id, None)
                if state is not None:
                    self._end(state.job, Failed(f"decoding failed: {type(exc).__name__}: {exc}"))
            return
        for sample, image in zip(finished, images, strict=True):
            self.preview.observe(sample.latents[0], image.pixels)
            state = running.get(sample.request_index)
            if state is None:
                continue
            state.job.images[sample.index] = image
            state.finished += 1
            if state.finished == state.job.samples_total:
                running.pop(sample.request_index)
                self._end(state.job, Finished([img for img in state.job.images if img is not None]))


__all__ = ["GenerationQueue", "QueueClosed", "QueueFullError", "QueueOptions"]
