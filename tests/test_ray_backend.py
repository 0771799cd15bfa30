"""The Ray Serve backend on a real local Ray cluster (two replicas of the tiny model, CPU): it gives the local
backend's pixels, batches different users' requests inside a replica, cancels, and loses no job when a replica's
process is killed mid-run (the job is retried once elsewhere, with the same pixels)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio

from engine.queue.jobs import JobCancelled, Progress
from engine.ray.backend import RayBackend, RayOptions, adapter_key
from engine.requests import GenerationRequest
from engine.service import Engine, EngineOptions

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def options(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> EngineOptions:
    from engine.adapters.hypernetwork import create_hypernetwork, write_hypernetwork_pt

    folder = tmp_path_factory.mktemp("hypernetworks")
    write_hypernetwork_pt(create_hypernetwork("look", [32, 64], seed=1), folder / "look.pt")
    return EngineOptions(model=str(tiny_model_dir), device="cpu", dtype="float32", threads=1,
                         collect_window_ms=100, shutdown_timeout_s=0.5, max_jobs_per_user=10,
                         hypernetwork_dirs=(folder,))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def backend(options: EngineOptions) -> AsyncIterator[RayBackend]:
    ray_backend = RayBackend(options, RayOptions(replicas=2, num_cpus=0, local_num_cpus=2))
    await ray_backend.start()
    try:
        yield ray_backend
    finally:
        await ray_backend.close()


async def _replicas(backend: RayBackend, want: int = 2, tries: int = 40) -> dict[int, dict[str, int]]:
    """Each replica's stats by process id (Serve routes each call to one replica; ask until all answered)."""
    seen: dict[int, dict[str, int]] = {}
    for _ in range(tries):
        stats = await backend.replica_stats()
        seen[stats["pid"]] = stats
        if len(seen) >= want:
            break
    return seen


REQUESTS = [GenerationRequest("a red circle", steps=6, seed=11),
            GenerationRequest("a blue square, top left", steps=6, seed=12, sampler="DPM++ 2M"),
            GenerationRequest("a cat", negative_prompt="blurry", steps=5, seed=13, count=2),
            GenerationRequest("a cat <hypernet:look:0.8>", steps=4, seed=14)]


async def test_pixels_equal_the_local_backends(backend: RayBackend, options: EngineOptions) -> None:
    assert backend.info.native_size == (64, 64) and backend.info.family == "sd1"
    remote = await asyncio.gather(*(backend.generate(r) for r in REQUESTS))
    local_engine = Engine(options)
    await local_engine.start()
    try:
        local = [await local_engine.generate(r) for r in REQUESTS]
    finally:
        await local_engine.close()
    for got, want in zip(remote, local, strict=True):
        assert [i.seed for i in got] == [i.seed for i in want]
        for a, b in zip(got, want, strict=True):
            # Batched with others vs alone: float rounding only (the local queue's own guarantee, 1e-4).
            assert np.abs(np.asarray(a.pixels) - np.asarray(b.pixels)).max() < 1e-4
            assert a.infotext == b.infotext


async def test_the_adapter_key_names_the_hypernetworks_only() -> None:
    assert adapter_key(GenerationRequest("a cat, pink")) == ""
    assert adapter_key(GenerationRequest("a cat <hypernet:Look:0.5>", negative_prompt="<hypernet:dark>",
                                         guild_id=9)) == "9:dark,look"


async def test_requests_for_a_hypernetwork_go_where_it_is_loaded(backend: RayBackend) -> None:
    before = await _replicas(backend)
    for i in range(6):
        await backend.generate(GenerationRequest(f"a dog <hypernet:look:{0.5 + i / 10}>", steps=2, seed=i))
    after = await _replicas(backend)
    served = sorted(s.get("served::look", 0) - before.get(pid, {}).get("served::look", 0) for pid, s in after.items())
    assert served[-1] >= 5 and sum(served) == 6, served  # the replica holding it took (nearly) all of them


async def test_users_requests_batch_inside_a_replica(backend: RayBackend) -> None:
    before = await _replicas(backend)
    handles = [backend.submit(GenerationRequest(f"a shape {i}", steps=12, seed=100 + i), user_id=i % 4)
               for i in range(8)]
    await asyncio.gather(*handles)
    after = await _replicas(backend)
    grew = {pid: after[pid]["batched_samples"] - before.get(pid, {}).get("batched_samples", 0) for pid in after}
    steps = {pid: after[pid]["steps"] - before.get(pid, {}).get("steps", 0) for pid in after}
    # 8 one-image requests × 12 steps = 96 sample-steps; batching means fewer UNet calls than that.
    assert sum(grew.values()) == 96, (before, after)
    assert sum(steps.values()) < 96, steps
    assert max(s["max_batch"] for s in after.values()) >= 2


async def test_cancel_stops_the_job_in_its_replica(backend: RayBackend) -> None:
    handle = backend.submit(GenerationRequest("a long one", steps=400, seed=5), user_id=42)
    async for event in handle.events():
        if isinstance(event, Progress):
            break
    assert handle.cancel("changed my mind")
    with pytest.raises(JobCancelled, match="changed my mind"):
        await handle
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the replica's queue lets go of it too (not only the caller)
        if all(s["unfinished"] == 0 for s in (await _replicas(backend)).values()):
            break
        await asyncio.sleep(0.2)
    else:
        pytest.fail("a replica still holds the cancelled job")
    assert backend.jobs() == []


async def test_killing_a_replica_mid_run_retries_the_job_elsewhere(backend: RayBackend) -> None:
    request = GenerationRequest("a green triangle", steps=300, seed=21)
    handle = backend.submit(request, user_id=7)
    async for event in handle.events():
        if isinstance(event, Progress):
            break
    running = [pid for pid, s in (await _replicas(backend)).items() if s["unfinished"] > 0]
    assert len(running) == 1, running
    os.kill(running[0], signal.SIGKILL)
    images = await asyncio.wait_for(handle.result(), timeout=120)
    assert backend.retried == 1
    again = await backend.generate(request)  # same seed on a live replica: the retry drew the same pixels
    assert np.abs(np.asarray(images[0].pixels) - np.asarray(again[0].pixels)).max() < 1e-4
