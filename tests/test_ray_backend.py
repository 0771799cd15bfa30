"""The Ray Serve backend on a real local Ray cluster (two replicas of the tiny model, CPU): it gives the local
backend's pixels, batches different users' requests inside a replica, cancels, and loses no job when a replica's
process is killed mid-run (the job is retried once elsewhere, with the same pixels). Trainings run on a replica
with their checkpoints and result written on the bot's side, so a killed replica's training resumes elsewhere
from its last checkpoint and ends with the very weights an uninterrupted local run gives."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
import torch
from PIL import Image
from safetensors.torch import load_file

from engine.queue.jobs import JobCancelled, Progress
from engine.ray.backend import RayBackend, RayOptions, adapter_key
from engine.requests import GenerationRequest
from engine.service import Engine, EngineOptions
from engine.training.images import TrainingImage
from engine.training.job import TERMINAL, TrainCheckpoint, TrainEvent, TrainFinished, TrainProgress
from engine.training.request import TrainingRequest
from engine.training.spec import TrainingHandle, TrainingSpec

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


async def test_autoscaling_adds_a_replica_when_demand_stays_high(backend: RayBackend,
                                                                 options: EngineOptions) -> None:
    """A second app on the same cluster, autoscaling between 1 and 2 replicas at one request per replica."""
    scaled = RayBackend(options, RayOptions(app_name="atelier-autoscale", replicas=1, max_replicas=2,
                                            target_ongoing_requests=1, upscale_delay_s=0,
                                            num_cpus=0))
    await scaled.start()
    try:
        assert await scaled.replica_count() == 1
        handles = [scaled.submit(GenerationRequest(f"busy {i}", steps=1000, seed=i), user_id=i) for i in range(6)]
        deadline = time.monotonic() + 120
        while (count := await scaled.replica_count()) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        assert count == 2, "six ongoing requests at a target of one per replica did not add a replica"
        for handle in handles:
            handle.cancel("done measuring")
    finally:
        await scaled.close()


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


async def test_adapter_files_travel_to_replicas_by_content(backend: RayBackend, options: EngineOptions,
                                                           tmp_path: Path) -> None:
    """A style registered on the bot's side reaches the replicas as content (no shared storage): they fetch it
    once, draw what the local backend draws with it, and a changed file is fetched again, never served stale."""
    from engine.adapters.embeddings import Embedding, write_embedding_safetensors

    path = tmp_path / "zzspots.safetensors"

    def write(seed: int) -> None:
        vectors = torch.randn(2, 32, generator=torch.Generator().manual_seed(seed)) * 3
        write_embedding_safetensors(Embedding("zzspots", vectors), path)

    write(1)
    backend.library.register("embedding", "zzspots", path, guild_id=9)
    request = GenerationRequest("a cat, zzspots", steps=3, seed=8, guild_id=9)
    before = await _replicas(backend)
    first = (await backend.generate(request))[0]
    await backend.generate(request)
    after = await _replicas(backend)
    fetched = sum(s["adapters_fetched"] - before.get(pid, {}).get("adapters_fetched", 0) for pid, s in after.items())
    assert 1 <= fetched <= 2, fetched  # once per replica that served it, not once per request
    elsewhere = (await backend.generate(dataclasses.replace(request, guild_id=10)))[0]  # not registered there
    assert np.abs(np.asarray(first.pixels) - np.asarray(elsewhere.pixels)).max() > 1e-2

    write(2)
    second = (await backend.generate(request))[0]
    local_engine = Engine(options)
    await local_engine.start()
    try:
        local_engine.library.register("embedding", "zzspots", path, guild_id=9)
        local = (await local_engine.generate(request))[0]
    finally:
        await local_engine.close()
    assert np.abs(np.asarray(second.pixels) - np.asarray(local.pixels)).max() < 1e-4
    assert np.abs(np.asarray(second.pixels) - np.asarray(first.pixels)).max() > 1e-2


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


async def test_previews_arrive_and_cancel_stops_the_job_in_its_replica(backend: RayBackend) -> None:
    handle = backend.submit(GenerationRequest("a long one", steps=400, seed=5), user_id=42)
    async for event in handle.events():  # progress with previews, as from the local queue (every 5 steps)
        if isinstance(event, Progress) and event.preview is not None:
            break
    assert event.preview.dtype == np.uint8 and event.preview.shape[2] == 3, event
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


# -- training on the cluster -------------------------------------------------------------------------------------


def _spec(folder: Path, steps: int, checkpoint_every: int) -> TrainingSpec:
    rng = np.random.default_rng(3)
    images = [TrainingImage(f"{i}.png", Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)),
                            "a dotted square", f"{i:064d}") for i in range(3)]
    request = TrainingRequest("embedding", "zzray", steps=steps, vectors=2, what="plain", seed=5, batch_size=2)
    return TrainingSpec(request, images, checkpoint_dir=folder / "checkpoint", result_path=folder / "zzray.safetensors",
                        checkpoint_every=checkpoint_every, slice_s=0.05, preview_steps=2)


async def _events(handle: TrainingHandle, timeout: float = 120) -> list[TrainEvent]:
    async def collect() -> list[TrainEvent]:
        return [event async for event in handle.events()]

    return await asyncio.wait_for(collect(), timeout)


async def _local_result(options: EngineOptions, spec: TrainingSpec) -> dict[str, torch.Tensor]:
    engine = Engine(options)
    await engine.start()
    try:
        events = await _events(engine.train(spec))
    finally:
        await engine.close()
    assert isinstance(events[-1], TrainFinished), events[-1]
    return load_file(str(spec.result_path))


async def test_a_training_runs_on_a_replica_and_its_files_land_here(backend: RayBackend, options: EngineOptions,
                                                                   tmp_path: Path) -> None:
    spec = _spec(tmp_path / "ray", steps=12, checkpoint_every=4)
    events = await _events(backend.train(spec))
    finished = events[-1]
    assert isinstance(finished, TrainFinished) and finished.steps == 12, events[-1]
    assert finished.path == spec.result_path and finished.data is None and finished.preview  # written here
    assert [e.step for e in events if isinstance(e, TrainCheckpoint)] == [4, 8, 12]
    assert all(e.files is None for e in events if isinstance(e, TrainCheckpoint))  # bytes stay off the events
    assert (spec.checkpoint_dir / "state.safetensors").is_file()
    remote = load_file(str(spec.result_path))
    local = await _local_result(options, _spec(tmp_path / "local", steps=12, checkpoint_every=4))
    assert remote.keys() == local.keys()
    for key in local:  # the same run: same images, seed and schedule give the same vectors
        assert torch.allclose(remote[key], local[key], atol=1e-5), key


async def test_killing_the_replica_mid_training_resumes_from_the_bots_checkpoint(
        backend: RayBackend, options: EngineOptions, tmp_path: Path) -> None:
    assert len(await _replicas(backend)) == 2  # both up (an earlier test's killed replica has been replaced)
    spec = _spec(tmp_path / "ray", steps=200, checkpoint_every=5)
    handle = backend.train(spec)
    retried = backend.retried
    events: list[TrainEvent] = []
    async for event in handle.events():
        events.append(event)
        if isinstance(event, TrainCheckpoint):
            break
    training = [pid for pid, s in (await _replicas(backend)).items() if s["training"] > 0]
    assert len(training) == 1, training
    os.kill(training[0], signal.SIGKILL)
    events += await _events(handle)
    assert backend.retried == retried + 1 and isinstance(events[-1], TrainFinished), events[-1]
    resumed = [e.resumed_from for e in events if isinstance(e, TrainProgress) and e.resumed_from is not None]
    assert resumed and resumed[0] >= 5 and resumed[0] % 5 == 0, resumed  # from a checkpoint the bot kept
    assert not any(isinstance(e, TERMINAL) for e in events[:-1])
    remote = load_file(str(spec.result_path))
    local = await _local_result(options, _spec(tmp_path / "local", steps=200, checkpoint_every=5))
    for key in local:  # resuming is exact: the interrupted run ends where an uninterrupted one does
        assert torch.allclose(remote[key], local[key], atol=1e-5), key


async def test_a_new_replica_removes_the_scratch_folders_of_dead_ones(tmp_path: Path) -> None:
    """A killed replica leaves its adapter cache and training folders behind; the next one on the node removes
    them, and only them (a live process's folders stay)."""
    import subprocess
    import sys

    from engine.ray.replica import SCRATCH_PREFIX, remove_orphans

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead = tmp_path / f"{SCRATCH_PREFIX}{gone.stdout.strip()}-train-x1"
    alive = tmp_path / f"{SCRATCH_PREFIX}{os.getppid()}-adapters-x2"
    other = tmp_path / "someone-else"
    for folder in (dead, alive, other):
        (folder / "sub").mkdir(parents=True)
    assert remove_orphans(tmp_path) == 1
    assert not dead.exists() and alive.exists() and other.exists()
