"""Training jobs in the ``jobs`` table (kind ``train``): enough to rebuild and resume a job after a restart.

The row holds the :class:`~engine.training.request.TrainingRequest`, where the prepared images were saved, and
where progress is shown (channel and message ids), all in the JSON ``payload``; ``state`` is the column the
start-up recovery and the quotas query. Files (images, checkpoints) live under ``<data>/training/jobs/<id>/``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bot.db import Database
from engine.training.request import TrainingRequest

KIND = "train"
QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
UNFINISHED = (QUEUED, RUNNING)


@dataclass(frozen=True)
class TrainingRow:
    id: int
    owner_id: int
    guild_id: int | None
    state: str
    payload: dict[str, Any]
    created_at: str

    @property
    def request(self) -> TrainingRequest:
        return TrainingRequest.from_json(self.payload["request"])

    @property
    def channel_id(self) -> int | None:
        value = self.payload.get("channel_id")
        return int(value) if value else None

    @property
    def message_id(self) -> int | None:
        value = self.payload.get("message_id")
        return int(value) if value else None


def _row(r: Any) -> TrainingRow:
    return TrainingRow(int(r["id"]), int(r["owner_id"]), r["guild_id"], str(r["state"]), json.loads(r["payload"]),
                       str(r["created_at"]))


class TrainingStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, request: TrainingRequest, *, owner_id: int, guild_id: int | None,
                  **payload: Any) -> TrainingRow:
        body = {"request": json.loads(request.to_json()), **payload}
        row_id = await self.db.execute(
            "INSERT INTO jobs (kind, owner_id, guild_id, state, payload) VALUES (?, ?, ?, ?, ?)",
            (KIND, owner_id, guild_id, QUEUED, json.dumps(body)))
        row = await self.get(row_id)
        assert row is not None
        return row

    async def get(self, job_id: int) -> TrainingRow | None:
        r = await self.db.fetchone("SELECT * FROM jobs WHERE id = ? AND kind = ?", (job_id, KIND))
        return _row(r) if r is not None else None

    async def update(self, job_id: int, state: str | None = None, **payload: Any) -> TrainingRow | None:
        """Set the state and/or merge keys into the payload (one statement: no lost updates between them)."""
        await self.db.execute(
            "UPDATE jobs SET state = COALESCE(?, state), payload = json_patch(payload, ?), "
            "updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ? AND kind = ?",
            (state, json.dumps(payload), job_id, KIND))
        return await self.get(job_id)

    async def unfinished(self) -> list[TrainingRow]:
        rows = await self.db.fetchall(
            "SELECT * FROM jobs WHERE kind = ? AND state IN (?, ?) ORDER BY id", (KIND, *UNFINISHED))
        return [_row(r) for r in rows]

    async def active_for(self, owner_id: int) -> list[TrainingRow]:
        """The member's trainings that are queued or running (anywhere: the GPU is shared by every guild)."""
        rows = await self.db.fetchall(
            "SELECT * FROM jobs WHERE kind = ? AND owner_id = ? AND state IN (?, ?) ORDER BY id",
            (KIND, owner_id, *UNFINISHED))
        return [_row(r) for r in rows]

    async def recent(self, guild_id: int | None, limit: int = 10) -> list[TrainingRow]:
        rows = await self.db.fetchall(
            "SELECT * FROM jobs WHERE kind = ? AND guild_id IS ? ORDER BY id DESC LIMIT ?", (KIND, guild_id, limit))
        return [_row(r) for r in rows]
