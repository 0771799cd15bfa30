"""Generations and their images: every parameter, seed, message id and status, so a reaction or a button on a
result can be answered after a restart from the database alone."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from bot.db import Database, run
from engine.requests import GenerationRequest

# Statuses a row moves through; "deleted" = its message was removed with ❌ (the row stays for the record).
QUEUED, RUNNING, DONE, FAILED, CANCELLED, DELETED = "queued", "running", "done", "failed", "cancelled", "deleted"
UNFINISHED = (QUEUED, RUNNING)

# Request fields stored in ``params`` (prompt and negative prompt have their own columns).
_PARAM_FIELDS = tuple(f.name for f in dataclasses.fields(GenerationRequest)
                      if f.name not in ("prompt", "negative_prompt"))


@dataclass(frozen=True)
class ImageRow:
    index: int
    seed: int
    subseed: int
    path: str
    infotext: str


@dataclass(frozen=True)
class Generation:
    id: int
    guild_id: int | None
    channel_id: int | None
    user_id: int
    message_id: int | None
    request: GenerationRequest
    status: str
    origin: str
    parent_id: int | None
    error: str | None
    created_at: str
    images: tuple[ImageRow, ...] = ()


def request_params(request: GenerationRequest) -> dict[str, Any]:
    return {name: getattr(request, name) for name in _PARAM_FIELDS}


def request_from_row(prompt: str, negative: str, params: dict[str, Any]) -> GenerationRequest:
    known = {k: v for k, v in params.items() if k in _PARAM_FIELDS}
    return GenerationRequest(prompt=prompt, negative_prompt=negative, **known)


class GenerationStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, request: GenerationRequest, *, user_id: int, guild_id: int | None,
                     channel_id: int | None, origin: str = "imagine", parent_id: int | None = None) -> int:
        """Record an accepted request (seeds resolved) before it is acknowledged; returns the row id."""
        seeds = [seed for seed, _ in request.sample_seeds()]
        return await self.db.execute(
            "INSERT INTO generations (guild_id, channel_id, user_id, prompt, negative_prompt, params, seeds, count,"
            " origin, parent_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (guild_id, channel_id, user_id, request.prompt, request.negative_prompt,
             json.dumps(request_params(request)), json.dumps(seeds), request.count, origin, parent_id))

    async def set_status(self, generation_id: int, status: str, error: str | None = None) -> None:
        finished = status not in UNFINISHED
        await self.db.execute(
            "UPDATE generations SET status = ?, error = ?, finished_at = CASE WHEN ? THEN "
            "strftime('%Y-%m-%dT%H:%M:%fZ', 'now') ELSE finished_at END WHERE id = ?",
            (status, error, finished, generation_id))

    async def set_message(self, generation_id: int, message_id: int, channel_id: int | None = None) -> None:
        await self.db.execute(
            "UPDATE generations SET message_id = ?, channel_id = COALESCE(?, channel_id) WHERE id = ?",
            (message_id, channel_id, generation_id))

    async def finish(self, generation_id: int, images: list[ImageRow]) -> None:
        """Store the images and mark the row done, in one transaction."""
        async with self.db.transaction() as conn:
            await (await conn.executemany(
                "INSERT OR REPLACE INTO generation_images (generation_id, idx, seed, subseed, path, infotext) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(generation_id, i.index, i.seed, i.subseed, i.path, i.infotext) for i in images])).close()
            await run(
                conn, "UPDATE generations SET status = ?, error = NULL, finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', "
                "'now') WHERE id = ?", (DONE, generation_id))

    async def get(self, generation_id: int) -> Generation | None:
        row = await self.db.fetchone("SELECT * FROM generations WHERE id = ?", (generation_id,))
        return None if row is None else await self._with_images(row)

    async def by_message(self, message_id: int) -> Generation | None:
        row = await self.db.fetchone("SELECT * FROM generations WHERE message_id = ?", (message_id,))
        return None if row is None else await self._with_images(row)

    async def unfinished(self) -> list[Generation]:
        rows = await self.db.fetchall(
            f"SELECT * FROM generations WHERE status IN ({', '.join('?' * len(UNFINISHED))}) ORDER BY id",
            UNFINISHED)
        return [await self._with_images(r) for r in rows]

    async def _with_images(self, row: Any) -> Generation:
        images = await self.db.fetchall(
            "SELECT idx, seed, subseed, path, infotext FROM generation_images WHERE generation_id = ? ORDER BY idx",
            (row["id"],))
        return Generation(
            id=row["id"], guild_id=row["guild_id"], channel_id=row["channel_id"], user_id=row["user_id"],
            message_id=row["message_id"],
            request=request_from_row(row["prompt"], row["negative_prompt"], json.loads(row["params"])),
            status=row["status"], origin=row["origin"], parent_id=row["parent_id"], error=row["error"],
            created_at=row["created_at"],
            images=tuple(ImageRow(r["idx"], r["seed"], r["subseed"], r["path"], r["infotext"]) for r in images))
