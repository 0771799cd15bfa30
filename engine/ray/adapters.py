"""Adapter files travel to replicas by content, so the cluster's nodes need no shared storage for them.

Why: the bot's library (community styles, imports, trainings) lives in the bot's ``data/``; a replica on another
machine cannot read those paths. The driver puts each file the request names into Ray's object store once per
content (sha256), and sends the reference with the registration; the replica fetches what it lacks into its own
content-addressed cache and registers the cached copy. A file changed on the bot's side has a new digest, so no
replica serves a stale copy. Only the adapters a prompt names travel, so a guild with hundreds of styles costs
nothing until one is used.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from engine.adapters.files import write_atomically
from engine.adapters.library import Registration
from engine.requests import GenerationRequest


def named_in(request: GenerationRequest, registrations: Sequence[Registration]) -> list[Registration]:
    """The registrations whose name occurs in the prompt or the negative prompt (case-insensitive): a superset
    of what the prompt can use, so the replica resolves it exactly as the bot would."""
    text = f"{request.prompt}\n{request.negative_prompt}".lower()
    return [r for r in registrations if r.name.lower() in text]


class AdapterShipper:
    """The driver's side: file → digest (cached by path, size and mtime) → one object-store reference each.

    Blocking (reads files, ``ray.put``): call it on the Ray driver thread.
    """

    def __init__(self) -> None:
        self._digests: dict[tuple[str, int, int], str] = {}
        self._refs: dict[str, object] = {}

    def ship(self, registrations: Sequence[Registration]) -> list[Registration]:
        import ray

        shipped = []
        for r in registrations:
            try:
                stat = os.stat(r.path)
            except OSError:
                shipped.append(r)  # gone on this side too: the replica reports it as the local engine would
                continue
            key = (r.path, stat.st_size, stat.st_mtime_ns)
            digest = self._digests.get(key)
            if digest is None or digest not in self._refs:
                data = Path(r.path).read_bytes()
                digest = hashlib.sha256(data).hexdigest()
                self._digests[key] = digest
                if digest not in self._refs:
                    self._refs[digest] = ray.put(data)
            shipped.append(r._replace(digest=digest, content=self._refs[digest]))
        return shipped


class AdapterCache:
    """The replica's side: shipped files land in ``folder`` named by their digest; registrations point there."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.fetched = 0  # files fetched from the object store (tests and stats)

    async def localise(self, registrations: Sequence[Registration]) -> list[Registration]:
        local = []
        for r in registrations:
            if not r.digest or r.content is None:
                local.append(r)
                continue
            path = self.folder / f"{r.digest}{Path(r.path).suffix.lower()}"
            if not path.is_file():
                data = await r.content  # an ObjectRef: awaited without blocking the replica's loop
                if hashlib.sha256(data).hexdigest() != r.digest:
                    raise OSError(f"adapter {r.name!r} arrived damaged (its content does not match its digest)")
                await asyncio.to_thread(write_atomically, path, lambda tmp, data=data: tmp.write_bytes(data))
                self.fetched += 1
            local.append(r._replace(path=str(path), content=None))
        return local
