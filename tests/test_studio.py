"""The studio's follow loop on scripted engine events: queue positions and progress only on change, progress
throttled to ``discord.progress_interval_s`` with previews attached, terminal states recorded and shown."""

from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from bot.config import parse_settings
from bot.db import open_database
from bot.store.generations import CANCELLED, FAILED, QUEUED, GenerationStore
from bot.studio import Running, Studio, Target
from engine.queue.jobs import Cancelled, Failed, Progress, Queued, Started
from engine.requests import GenerationRequest


class FakeHandle:
    def __init__(self, events: list[Any]) -> None:
        self.id = 1
        self._events = events

    async def events(self):
        for event in self._events:
            yield event


class RecordingTarget(Target):
    def __init__(self, clock: list[float]) -> None:
        self.user = SimpleNamespace(id=1, display_name="alice")
        self.shown: list[tuple[float, str, int, bool]] = []
        self.clock = clock

    async def show(self, content: str, *, embed=None, files=(), view=None, final=False):
        self.shown.append((self.clock[0], content, len(files), final))
        return None


async def _run(tmp_path: Path, events: list[Any], closing: bool = False) -> tuple[RecordingTarget, str, str | None]:
    settings = parse_settings({"discord": {"progress_interval_s": 1.0}}, base_dir=tmp_path, environ={})
    db = await open_database(tmp_path / "a.db")
    bot = SimpleNamespace(settings=settings, db=db, engine=None, is_closed=lambda: closing)
    now = [0.0]

    def clock() -> float:
        now[0] += 0.4  # every look at the clock is 0.4 s later
        return now[0]

    studio = Studio(bot, clock=clock)  # type: ignore[arg-type]
    request = GenerationRequest(prompt="a cat", seed=1, subseed=1)
    gid = await GenerationStore(db).create(request, user_id=1, guild_id=None, channel_id=None)
    target = RecordingTarget(now)
    await studio._follow(Running(gid, FakeHandle(events), 1, None), target)  # type: ignore[arg-type]
    gen = await GenerationStore(db).get(gid)
    await db.close()
    return target, gen.status, gen.error


async def test_positions_and_progress_are_shown_on_change_and_throttled(tmp_path: Path) -> None:
    preview = np.zeros((8, 8, 3), dtype=np.uint8)
    events = [Queued(3), Queued(3), Queued(2), Started(), *[Progress(i, 20, preview) for i in range(1, 21)],
              Cancelled("cancelled by its owner")]
    target, status, error = await _run(tmp_path, events)
    texts = [t for _, t, _, _ in target.shown]
    assert texts[:3] == ["⏳ Queued — position 3.", "⏳ Queued — position 2.", texts[2]]
    assert texts[2].startswith("🎨 Generating") and texts[2].endswith(" 0%")
    progress = [(at, n) for at, t, n, _ in target.shown[3:-1]]
    assert 2 <= len(progress) < 20  # throttled: not every step
    assert all(b - a >= 1.0 for (a, _), (b, _) in itertools.pairwise(progress))
    assert all(n == 1 for _, n in progress)  # each progress edit carries the preview
    assert all(a != b for a, b in itertools.pairwise(texts))  # never the same text twice in a row
    assert target.shown[-1][3] and "cancelled by its owner" in texts[-1]
    assert (status, error) == (CANCELLED, "cancelled by its owner")


async def test_failure_is_recorded_and_shown(tmp_path: Path) -> None:
    target, status, error = await _run(tmp_path, [Started(), Failed("CUDA out of memory")])
    assert (status, error) == (FAILED, "CUDA out of memory")
    assert "failed: CUDA out of memory" in target.shown[-1][1] and target.shown[-1][3]


async def test_jobs_cancelled_by_a_shutdown_stay_queued_to_run_after_the_restart(tmp_path: Path) -> None:
    target, status, error = await _run(tmp_path, [Queued(1), Cancelled("the bot is shutting down")], closing=True)
    assert (status, error) == (QUEUED, "interrupted by a shutdown")
    assert "will run again" in target.shown[-1][1]
