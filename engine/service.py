"""The asynchronous engine facade the application talks to.

GPU work never runs on the event loop: model loading and generation run in one worker thread (one model,
one device, so one thread), and progress callbacks hop back onto the loop. The queue issue replaces the
single worker with the batching scheduler; the interface stays.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from engine.adapters.library import AdapterLibrary
from engine.devices import set_threads
from engine.loading import LoadedModel, load_model
from engine.pipeline import Pipeline
from engine.requests import GeneratedImage, GenerationRequest

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
    embedding_dirs: tuple[Path, ...] = ()
    hypernetwork_dirs: tuple[Path, ...] = ()


class EngineNotReady(RuntimeError):
    """generate() was called before start() finished, or after close()."""


class Engine:
    """Owns the loaded model and the worker thread that runs it."""

    def __init__(self, options: EngineOptions) -> None:
        self.options = options
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="atelier-gpu")
        self._pipeline: Pipeline | None = None
        self._closed = False
        # Names only (one directory scan); files are read when a prompt first uses them.
        self.library = AdapterLibrary(options.embedding_dirs, options.hypernetwork_dirs)

    @property
    def ready(self) -> bool:
        return self._pipeline is not None and not self._closed

    @property
    def model(self) -> LoadedModel:
        if self._pipeline is None:
            raise EngineNotReady("the engine has no model loaded yet")
        return self._pipeline.model

    def _load(self) -> Pipeline:
        o = self.options
        set_threads(o.threads)
        model = load_model(o.model, config_dir=o.config_dir or None, device=o.device, dtype=o.dtype,
                           allow_download=o.allow_download, cache_dir=o.cache_dir, search_dirs=o.search_dirs)
        return Pipeline(model, max_batch=o.max_batch, pixel_budget=o.pixel_budget, library=self.library)

    async def start(self) -> None:
        """Load the model in the worker thread; raises ModelLoadError with a readable message."""
        if self._closed:
            raise EngineNotReady("the engine is closed")
        loop = asyncio.get_running_loop()
        pipeline = await loop.run_in_executor(self._executor, self._load)
        if self._closed:  # close() ran while the model was loading: do not keep it alive
            raise EngineNotReady("the engine was closed while loading")
        self._pipeline = pipeline

    async def generate(self, request: GenerationRequest,
                       progress: Callable[[int, int], None] | None = None) -> list[GeneratedImage]:
        """Render one request off the loop; ``progress(done, total)`` is called on the loop."""
        if not self.ready:
            raise EngineNotReady("the engine is not running")
        loop = asyncio.get_running_loop()
        pipeline = self._pipeline
        assert pipeline is not None

        def report(done: int, total: int) -> None:
            if progress is not None:
                loop.call_soon_threadsafe(progress, done, total)

        results = await loop.run_in_executor(self._executor, lambda: pipeline.generate([request], progress=report))
        return results[0]

    async def close(self) -> None:
        """Stop accepting work and wait for the running job; idempotent."""
        if self._closed:
            return
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)
        self._pipeline = None
        log.info("engine closed")
