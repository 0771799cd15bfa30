"""The bot's Ray backend runs the Ray driver in a child process: when the cluster is lost (here: the child and
the local cluster it started are killed), the jobs it carried fail with a clear reason, the backend reports
itself unavailable instead of taking the bot down, and it comes back on its own when the cluster answers."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.queue.jobs import JobFailed, Progress
from engine.ray.backend import RayOptions
from engine.ray.bridge import BridgedBackend
from engine.requests import GenerationRequest
from engine.service import EngineNotReady, EngineOptions


async def test_losing_the_cluster_fails_its_jobs_and_the_backend_comes_back(tiny_model_dir: Path) -> None:
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

        deadline = time.monotonic() + 240
        while not backend.ready and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        assert backend.ready and backend.restarts == 1 and changes == [True, False, True]
        pgids.add(backend._process.pid)
        again = await backend.generate(GenerationRequest("a cat", steps=3, seed=1))
        assert np.abs(np.asarray(again[0].pixels) - np.asarray(first[0].pixels)).max() < 1e-4
    finally:
        await backend.close()
    assert backend._process is not None and backend._process.returncode is not None  # the child is gone
    deadline = time.monotonic() + 10
    while (left := _alive_in(pgids)) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert not left, f"processes of a bridge's cluster outlived it: {left}"  # killed with their group


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


async def test_the_bot_generates_through_the_ray_backend_as_through_the_local_one(tmp_path: Path,
                                                                                 tiny_model_dir: Path) -> None:
    """``[backend] kind = "ray"``: the same /imagine reply, /status names the model; the cogs cannot tell."""
    import simcord
    from test_discord_bot import GUILD_ID, _settings  # tests/ is on sys.path

    from bot.app import create_bot
    from bot.db import open_database

    settings = _settings(tmp_path, tiny_model_dir, backend={"kind": "ray", "replicas": 1, "gpus_per_replica": 0.0,
                                                            "cpus_per_replica": 0.0})
    await (await open_database(settings.path(settings.paths.database))).close()
    bot = create_bot(settings)
    assert type(bot.engine).__name__ == "BridgedBackend"
    env = simcord.Env(bot, settle_timeout=120)
    bot.engine.await_io = lambda awaitable: env.external_wait(awaitable, reason="the Ray bridge")  # type: ignore
    guild = env.create_guild("Studio", id=GUILD_ID)
    general = guild.create_text_channel("general")
    alice = guild.add_member(env.create_user("alice"))
    await env.start()
    try:
        assert bot.generation_available, bot.engine_error
        r = await alice.slash(general, "imagine", prompt="a red circle", seed=1234)
        assert r.response is not None and len(r.response.attachments) == 1, r.response
        assert "Seed: 1234" in Image.open(io.BytesIO(await r.response.attachments[0].read())).info["parameters"]
        status = await alice.slash(general, "status")
        assert "Generation: available" in status.response.content and "Model: `" in status.response.content
    finally:
        await bot.close()
        await env.shutdown()
