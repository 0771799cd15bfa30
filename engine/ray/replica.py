"""One Ray Serve replica: a whole local engine (model, continuous-batching queue) behind streaming methods.

Why the local engine and not Serve's ``@serve.batch``: batching here is per denoising step, fair per user, with
per-request adapters (issue 5), which a request-level batcher cannot do. Serve only routes requests to replicas;
inside a replica everything is exactly the local backend, so pixels, events and cancellation behave the same.

This module imports no Ray: :mod:`engine.ray.backend` wraps :class:`GenerationReplica` in ``serve.deployment``
with the configured resources, so the class stays testable without a cluster.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from engine.adapters.library import Registration
from engine.model_info import ModelInfo
from engine.queue.jobs import Event
from engine.queue.policy import INTERACTIVE
from engine.ray.adapters import AdapterCache
from engine.requests import GenerationRequest
from engine.service import Engine, EngineOptions
from engine.training.job import TrainEvent, TrainingJob, write_checkpoint_files
from engine.training.spec import TrainingSpec

SCRATCH_PREFIX = "atelier-replica-"


def scratch(kind: str) -> Path:
    """A new scratch folder named for this process, so a later replica on the node can tell it is orphaned."""
    return Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-{kind}-"))


def remove_orphans(root: Path | None = None) -> int:
    """Delete the scratch folders of replicas that are gone (killed ones never clean up); returns how many."""
    removed = 0
    for folder in Path(root or tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"):
        pid = folder.name[len(SCRATCH_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # still running (or not ours to signal): keep
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed += 1
    return removed


class GenerationReplica:
    """Loads the model on first use (off the event loop) and serves ``generate`` as a stream of queue events
    (and ``train``, a training run in the same queue's background slices)."""

    def __init__(self, options: EngineOptions) -> None:
        self._engine = Engine(options)
        self._starting: asyncio.Task[None] | None = None
        self.served: dict[str, int] = {}  # requests served per adapter key (affinity is seen here)
        self._trainings: list[tuple[TrainingJob, Path]] = []  # running or stopping, with their scratch folders
        remove_orphans()
        self.adapters = AdapterCache(scratch("adapters"))

    async def _ready(self) -> Engine:
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._engine.start())
        await asyncio.shield(self._starting)
        return self._engine

    async def info(self) -> ModelInfo:
        return (await self._ready()).info

    async def generate(self, request: GenerationRequest, user_id: int = 0, guild_id: int | None = None,
                       priority: int = INTERACTIVE, registrations: Sequence[Registration] = (),
                       ) -> AsyncIterator[Event]:
        """Queue ``request`` here and yield its events until the terminal one.

        ``registrations`` are the guild's registered adapters the prompt names, as the bot sees them (their
        files shipped by content, :mod:`engine.ray.adapters`); the replica's library is synced first so the
        prompt resolves exactly as in the bot.
        When the caller cancels (Serve raises ``CancelledError`` at the next ``await``), the job is cancelled
        in this replica's queue, so its batch slot frees at the next step.
        """
        engine = await self._ready()
        engine.library.sync(guild_id, await self.adapters.localise(registrations),
                            named_in=f"{request.prompt}\n{request.negative_prompt}")
        key = await self._affinity()
        self.served[key] = self.served.get(key, 0) + 1
        handle = engine.submit(request, user_id=user_id, guild_id=guild_id, priority=priority)
        try:
            async for event in handle.events():
                yield event
        except (asyncio.CancelledError, GeneratorExit):
            engine.cancel(handle.job, "cancelled by its owner")
            raise

    async def train(self, spec: TrainingSpec, checkpoint: dict[str, bytes] | None = None,
                    ) -> AsyncIterator[TrainEvent]:
        """Run a training here, in this engine's background slices (generation keeps priority), and yield its
        events; checkpoints and the result travel in them (the caller keeps the files, see
        :mod:`engine.ray.training`). ``checkpoint`` (the caller's last one) resumes the run where it stopped.

        A caller that goes away (cancel, shutdown, lost bot) stops the run here; the caller decides whether that
        was a member's cancel.
        """
        engine = await self._ready()
        self._sweep()
        folder = scratch("train")
        local = dataclasses.replace(spec, checkpoint_dir=folder / "checkpoint",
                                    result_path=folder / spec.result_path.name)
        if checkpoint is not None:
            await asyncio.to_thread(write_checkpoint_files, local.checkpoint_dir, checkpoint)
        job = engine.train(local, ship_files=True)
        self._trainings.append((job, folder))
        try:
            async for event in job.events():
                yield event
        except (asyncio.CancelledError, GeneratorExit):
            job.stop()
            raise
        finally:
            self._sweep()

    def _sweep(self) -> None:
        """Remove the scratch folders of trainings that have let go of the model (a stopped one may still be in
        its last slice, writing there)."""
        keep = []
        for job, folder in self._trainings:
            if job.released:
                shutil.rmtree(folder, ignore_errors=True)
            else:
                keep.append((job, folder))
        self._trainings = keep

    async def _affinity(self) -> str:
        """The request's adapter key, with its hypernetworks warmed; the served subclass in
        :mod:`engine.ray.backend` reads it from Serve's multiplexing (which routes a key to replicas that hold
        it). Here: none."""
        return ""

    async def warm(self, key: str) -> str:
        """Load and place the hypernetworks an adapter key names (``guild:name,name``), so this replica's
        requests for them find them ready; returns the key (what Serve's multiplexing caches per replica)."""
        engine = await self._ready()
        guild, _, names = key.partition(":")
        view = engine.library.view(int(guild) if guild else None)
        model = engine.model
        for name in filter(None, names.split(",")):
            await asyncio.to_thread(view.hypernetwork, name, model.device, model.dtype)
        return key

    async def stats(self) -> dict[str, int]:
        """This replica's process id, unfinished jobs and queue counters (UNet steps, batched samples, largest
        batch): where batching and cancellation are seen."""
        engine = await self._ready()
        counters = dict(engine.queue.stats) if engine.queue is not None else {}
        served = {f"served:{k}": v for k, v in self.served.items()}
        self._sweep()
        return {**counters, **served, "pid": os.getpid(), "unfinished": len(engine.jobs()),
                "training": len(self._trainings), "adapters_fetched": self.adapters.fetched}

    async def shutdown(self) -> None:
        if self._starting is not None:
            await self._engine.close()
        shutil.rmtree(self.adapters.folder, ignore_errors=True)
