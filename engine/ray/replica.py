"""One Ray Serve replica: a whole local engine (model, continuous-batching queue) behind streaming methods.

Why the local engine and not Serve's ``@serve.batch``: batching here is per denoising step, fair per user, with
per-request adapters (issue 5), which a request-level batcher cannot do. Serve only routes requests to replicas;
inside a replica everything is exactly the local backend, so pixels, events and cancellation behave the same.

This module imports no Ray: :mod:`engine.ray.backend` wraps :class:`GenerationReplica` in ``serve.deployment``
with the configured resources, so the class stays testable without a cluster.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence

from engine.adapters.library import Registration
from engine.model_info import ModelInfo
from engine.queue.jobs import Event
from engine.queue.policy import INTERACTIVE
from engine.requests import GenerationRequest
from engine.service import Engine, EngineOptions


class GenerationReplica:
    """Loads the model on first use (off the event loop) and serves ``generate`` as a stream of queue events."""

    def __init__(self, options: EngineOptions) -> None:
        self._engine = Engine(options)
        self._starting: asyncio.Task[None] | None = None
        self.served: dict[str, int] = {}  # requests served per adapter key (affinity is seen here)

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

        ``registrations`` are the guild's registered adapters as the bot sees them (files on storage every
        replica reads); the replica's library is synced first so the prompt resolves exactly as in the bot.
        When the caller cancels (Serve raises ``CancelledError`` at the next ``await``), the job is cancelled
        in this replica's queue, so its batch slot frees at the next step.
        """
        engine = await self._ready()
        engine.library.sync(guild_id, registrations)
        key = await self._affinity()
        self.served[key] = self.served.get(key, 0) + 1
        handle = engine.submit(request, user_id=user_id, guild_id=guild_id, priority=priority)
        try:
            async for event in handle.events():
                yield event
        except (asyncio.CancelledError, GeneratorExit):
            engine.cancel(handle.job, "cancelled by its owner")
            raise

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
        return {**counters, **served, "pid": os.getpid(), "unfinished": len(engine.jobs())}

    async def shutdown(self) -> None:
        if self._starting is not None:
            await self._engine.close()
