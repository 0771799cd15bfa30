"""The asynchronous engine facade the application talks to.

GPU work never runs on the event loop: the model loads in a helper thread, and generation runs in the queue's
worker thread (:mod:`engine.queue.worker`), which batches every user's requests through one pipeline. The
application submits requests and gets job handles (awaitable results, positions, progress events, cancel).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.adapters.library import AdapterLibrary
from engine.devices import set_threads
from engine.loading import LoadedModel, load_model
from engine.model_info import ModelInfo
from engine.pipeline import Pipeline
from engine.queue.jobs import Job, JobHandle, Progress
from engine.queue.policy import INTERACTIVE
from engine.queue.worker import GenerationQueue, QueueOptions
from engine.requests import GeneratedImage, GenerationRequest

if TYPE_CHECKING:
    from engine.training.job import TrainingJob
    from engine.training.spec import TrainingSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineOptions:
    """What the engine needs from the application's settings (the engine never reads config files)."""

    model: str
    config_dir: str = ""
    device: str = "auto"
    dtype: str = "auto"
    threads: int = 0
    allow_download: bool = True
    cache_dir: Path | None = None
    search_dirs: tuple[Path, ...] = ()
    max_batch: int = 8
    pixel_budget: int | None = None
    max_jobs_per_user: int = 3
    max_queued: int = 100
    collect_window_ms: int = 50
    preview_every: int = 5
    shutdown_timeout_s: float = 30.0
    background_share: float = 0.25
    embedding_dirs: tuple[Path, ...] = ()
    hypernetwork_dirs: tuple[Path, ...] = ()


class EngineNotReady(RuntimeError):
    """submit() was called before start() finished, or after close()."""


class Engine:
    """Owns the loaded model, the adapter library and the generation queue."""

    def __init__(self, options: EngineOptions) -> None:
        self.options = options
        self._pipeline: Pipeline | None = None
        self._info: ModelInfo | None = None
        self.queue: GenerationQueue | None = None
        self._closed = False
        # Names only (one directory scan); files are read when a prompt first uses them.
        self.library = AdapterLibrary(options.embedding_dirs, options.hypernetwork_dirs)

    @property
    def ready(self) -> bool:
        return self.queue is not None and not self._closed

    @property
    def model(self) -> LoadedModel:
        """The loaded model itself: for work that runs in this process (training); the application reads
        :attr:`info`."""
        if self._pipeline is None:
            raise EngineNotReady("the engine has no model loaded yet")
        return self._pipeline.model

    @property
    def info(self) -> ModelInfo:
        """The loaded model as plain values (name, family, device, native size, adapter widths)."""
        if self._info is None:
            raise EngineNotReady("the engine has no model loaded yet")
        return self._info

    def _load(self) -> Pipeline:
        o = self.options
        set_threads(o.threads)
        model = load_model(o.model, config_dir=o.config_dir or None, device=o.device, dtype=o.dtype,
                           allow_download=o.allow_download, cache_dir=o.cache_dir, search_dirs=o.search_dirs)
        return Pipeline(model, max_batch=o.max_batch, pixel_budget=o.pixel_budget, library=self.library)

    async def start(self) -> None:
        """Load the model off the loop and start the queue; raises ModelLoadError with a readable message."""
        if self._closed:
            raise EngineNotReady("the engine is closed")
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="atelier-load") as pool:
            pipeline = await loop.run_in_executor(pool, self._load)
        if self._closed:  # close() ran while the model was loading: do not keep it alive
            raise EngineNotReady("the engine was closed while loading")
        o = self.options
        self._pipeline = pipeline
        self._info = ModelInfo.of(pipeline.model)
        self.queue = GenerationQueue(pipeline, QueueOptions(
            max_jobs_per_user=o.max_jobs_per_user, max_queued=o.max_queued,
            collect_window_s=o.collect_window_ms / 1000, preview_every=o.preview_every,
            background_share=o.background_share))
        self.queue.start()

    def submit(self, request: GenerationRequest, *, user_id: int = 0, guild_id: int | None = None,
               priority: int = INTERACTIVE) -> JobHandle:
        """Queue a request; see :meth:`GenerationQueue.submit` for the errors it raises."""
        if not self.ready or self.queue is None:
            raise EngineNotReady("the engine is not running")
        return self.queue.submit(request, user_id=user_id, guild_id=guild_id, priority=priority)

    def train(self, spec: TrainingSpec, *, ship_files: bool = False) -> TrainingJob:
        """Start a training run in the queue's background slices (lower priority than generation); follow the
        returned job's events. ``ship_files`` puts checkpoints and the result in the events (a Ray replica)."""
        if not self.ready or self.queue is None:
            raise EngineNotReady("the engine is not running")
        job = spec.job(self.model, asyncio.get_running_loop(), ship_files=ship_files)
        self.queue.add_background(job)
        return job

    def jobs(self, user_id: int | None = None) -> list[Job]:
        """Queued and running jobs (one member's, or everyone's); empty when the engine is not running."""
        return self.queue.jobs(user_id) if self.ready and self.queue is not None else []

    def cancel(self, job: Job, reason: str = "cancelled by its owner") -> bool:
        """Cancel a queued or running job; False when it had already ended (or the engine is not running)."""
        return self.queue.cancel(job, reason) if self.ready and self.queue is not None else False

    async def generate(self, request: GenerationRequest,
                       progress: Callable[[int, int], None] | None = None) -> list[GeneratedImage]:
        """Submit and wait; ``progress(done, total)`` is called on the loop as steps complete."""
        handle = self.submit(request)
        if progress is None:
            return await handle
        async for event in handle.events():
            if isinstance(event, Progress):
                progress(event.step, event.total)
        return await handle

    async def close(self) -> list[Job]:
        """Stop accepting, let running work finish (bounded), cancel the rest; returns unfinished jobs. Idempotent."""
        if self._closed:
            return []
        self._closed = True
        left: list[Job] = []
        if self.queue is not None:
            left = await self.queue.shutdown(self.options.shutdown_timeout_s)
        self._pipeline = None
        log.info("engine closed (%d unfinished jobs cancelled)", len(left))
        return left
