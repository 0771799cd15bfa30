"""The bot's Ray backend runs the Ray driver in a child process: when the cluster is lost (here: the child and
the local cluster it started are killed), the jobs it carried fail with a clear reason, a training pauses, the
backend reports itself unavailable instead of taking the bot down, and it comes back on its own when the cluster
answers — the training then goes on from the checkpoint the bot kept. Through the bot, /imagine, /status and
/train work on the cluster as on the local backend."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.queue.jobs import JobFailed, Progress
from engine.ray.backend import RayOptions
from engine.ray.bridge import BridgedBackend
from engine.requests import GenerationRequest
from engine.service import EngineNotReady, EngineOptions
from engine.training.job import TrainCheckpoint, TrainEvent, TrainFinished, TrainPaused, TrainPreview, TrainProgress


async def test_losing_the_cluster_fails_its_jobs_and_the_backend_comes_back(tiny_model_dir: Path,
                                                                          tmp_path: Path) -> None:
    from test_ray_backend import _spec  # tests/ is on sys.path

    options = EngineOptions(model=str(tiny_model_dir), device="cpu", dtype="float32", threads=1,
                            collect_window_ms=0, shutdown_timeout_s=0.5)
    backend = BridgedBackend(options, RayOptions(replicas=1, num_cpus=0, local_num_cpus=2), backoff_s=(0.5,),
                             start_timeout_s=240)
    changes: list[bool] = []
    backend.on_change = changes.append
    await backend.start()
    try:
        assert backend.ready and backend.info.native_size == (64, 64)
        first = await backend.generate(GenerationRequest("a cat", steps=3, seed=1))

        training = backend.train(_spec(tmp_path, steps=300, checkpoint_every=5))
        trained = training.events()
        async for event in trained:
            if isinstance(event, TrainCheckpoint):
                break
        handle = backend.submit(GenerationRequest("a long one", steps=1000, seed=2, count=4), user_id=5)
        async for event in handle.events():
            if isinstance(event, Progress):
                break
        assert backend._process is not None
        pgids = {backend._process.pid}
        os.kill(backend._process.pid, signal.SIGKILL)  # the driver and the cluster it started go away
        with pytest.raises(JobFailed, match="unreachable"):
            await asyncio.wait_for(handle.result(), 60)
        assert not backend.ready and backend.jobs() == []
        with pytest.raises(EngineNotReady, match="unreachable"):
            backend.submit(GenerationRequest("a dog"))
        paused = await asyncio.wait_for(_next_not_checkpoint(trained), 60)
        assert isinstance(paused, TrainPaused) and "unreachable" in paused.reason, paused

        deadline = time.monotonic() + 240
        while not backend.ready and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        assert backend.ready and backend.restarts == 1 and changes == [True, False, True]
        pgids.add(backend._process.pid)
        again = await backend.generate(GenerationRequest("a cat", steps=3, seed=1))
        assert np.abs(np.asarray(again[0].pixels) - np.asarray(first[0].pixels)).max() < 1e-4
        rest = await asyncio.wait_for(_all(trained), 240)  # the paused training goes on by itself
        assert isinstance(rest[-1], TrainFinished) and rest[-1].steps == 300, rest[-1]
        resumed = [e.resumed_from for e in rest if isinstance(e, TrainProgress) and e.resumed_from is not None]
        assert resumed and resumed[0] >= paused.step >= 5, (resumed, paused)
    finally:
        await backend.close()
    assert backend._process is not None and backend._process.returncode is not None  # the child is gone
    deadline = time.monotonic() + 10
    while (left := _alive_in(pgids)) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert not left, f"processes of a bridge's cluster outlived it: {left}"  # killed with their group


async def _next_not_checkpoint(events: AsyncIterator[TrainEvent]) -> TrainEvent:
    async for event in events:
        if not isinstance(event, TrainCheckpoint | TrainProgress | TrainPreview):
            return event
    raise AssertionError("the training's events ended")


async def _all(events: AsyncIterator[TrainEvent]) -> list[TrainEvent]:
    return [event async for event in events]


def _alive_in(groups: set[int]) -> list[int]:
    """Running (not zombie) processes in these process groups."""
    alive = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) in groups:  # state, ppid, pgrp
            alive.append(int(entry))
    return alive


async def test_the_bot_generates_and_trains_through_the_ray_backend(tmp_path: Path, tiny_model_dir: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """``[backend] kind = "ray"``: the same /imagine reply, /status names the model, and /train ends as a style
    in the bot's database, usable at once; the cogs cannot tell."""
    from test_discord_train import GUILD_ID, _images, _said, _settings, _until, build_world  # tests/ is on sys.path

    from bot.store.adapters import AdapterStore

    settings = _settings(tmp_path, tiny_model_dir, backend={"kind": "ray", "replicas": 1, "gpus_per_replica": 0.0,
                                                            "cpus_per_replica": 0.0})
    w = await build_world(settings, monkeypatch)
    try:
        assert type(w.bot.engine).__name__ == "BridgedBackend"
        assert w.bot.generation_available, w.bot.engine_error
        r = await w.alice.slash(w.general, "imagine", prompt="a red circle", seed=1234)
        assert r.response is not None and len(r.response.attachments) == 1, r.response
        assert "Seed: 1234" in Image.open(io.BytesIO(await r.response.attachments[0].read())).info["parameters"]
        status = await w.alice.slash(w.general, "status")
        assert "Generation: available" in status.response.content and "Model: `" in status.response.content

        t = await w.alice.slash(w.general, "train", name="zzcluster", steps=6, vectors=2, what="plain",
                                captions="a spotted square", **_images(3))
        assert "accepted" in t.response.content, t.response.content
        await _until(w, lambda: bool(_said(w, "trained a new embedding")), timeout=180)
        [style] = [row for row in await AdapterStore(w.bot.db).for_guild(GUILD_ID) if row.name == "zzcluster"]
        assert style.metadata["trained"] is True and style.metadata["steps"] == 6 and style.metadata["preview"]
        styled = await w.bob.slash(w.general, "imagine", prompt="a square, zzcluster", seed=3)
        assert "zzcluster" in Image.open(io.BytesIO(await styled.response.attachments[0].read())).info["parameters"]
    finally:
        await w.bot.close()
        await w.env.shutdown()
