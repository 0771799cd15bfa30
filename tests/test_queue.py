"""The generation queue with a real worker thread on the tiny model: results equal running alone, requests join a
running batch, fairness, cancellation, faults, out-of-memory splitting, events, positions and shutdown.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.pipeline import Pipeline
from engine.queue.jobs import Cancelled, Finished, JobCancelled, JobFailed, Progress, Queued, Started
from engine.queue.policy import QueueFullError
from engine.queue.worker import GenerationQueue, QueueClosed, QueueOptions
from engine.requests import GenerationRequest, RequestError


def _req(prompt: str = "a red circle", steps: int = 6, seed: int = 1, count: int = 1, **kw) -> GenerationRequest:
    return GenerationRequest(prompt, steps=steps, seed=seed, subseed=seed, count=count, cfg_scale=5.0, **kw)


@pytest.fixture()
def pipeline(tiny_model) -> Pipeline:
    return Pipeline(tiny_model, max_batch=4)


@pytest.fixture()
async def queue(pipeline: Pipeline):
    q = GenerationQueue(pipeline, QueueOptions(collect_window_s=0.01, preview_every=2, max_jobs_per_user=5))
    q.start()
    yield q
    await q.shutdown(timeout=5)


def _alone(pipeline: Pipeline, request: GenerationRequest) -> list[np.ndarray]:
    return [img.pixels for img in pipeline.generate([request])[0]]


async def test_results_equal_running_alone(queue: GenerationQueue, pipeline: Pipeline) -> None:
    requests = [_req(seed=1, count=2), _req("a blue square", seed=5, sampler="DPM++ 2M Karras", steps=8),
                _req("a cat", seed=9, steps=4)]
    handles = [queue.submit(r, user_id=i) for i, r in enumerate(requests)]
    results = await asyncio.gather(*handles)
    for request, images in zip(requests, results, strict=True):
        expected = _alone(pipeline, request)
        assert len(images) == len(expected) == request.count
        for got, want in zip(images, expected, strict=True):
            assert np.abs(got.pixels - want).max() < 1e-4
    assert queue.stats["batched_samples"] > queue.stats["steps"]  # they shared UNet calls


async def test_a_request_joins_a_running_batch_at_the_next_step(queue: GenerationQueue, pipeline: Pipeline) -> None:
    long = queue.submit(_req(steps=60, seed=2), user_id=1)
    async for event in long.events():
        if isinstance(event, Progress) and event.step >= 3:
            break
    short = queue.submit(_req("a cat", steps=5, seed=3), user_id=2)
    images = await short
    assert not long.job.done  # the short one did not wait for the long one to finish
    assert np.abs(images[0].pixels - _alone(pipeline, _req("a cat", steps=5, seed=3))[0]).max() < 1e-4
    long_images = await long
    assert np.abs(long_images[0].pixels - _alone(pipeline, _req(steps=60, seed=2))[0]).max() < 1e-4


async def test_one_users_ten_images_do_not_starve_anothers_one(tiny_model) -> None:
    q = GenerationQueue(Pipeline(tiny_model, max_batch=2), QueueOptions(collect_window_s=0.0))
    q.start()
    try:
        big = q.submit(_req(steps=4, count=10, seed=1), user_id=1)
        async for event in big.events():
            if isinstance(event, Progress):
                break
        small = q.submit(_req("a cat", steps=4, seed=2), user_id=2)
        await small
        # At most the two samples running when it arrived, plus one more batch of A's, finished before it.
        assert sum(img is not None for img in big.job.images) <= 4
        assert len(await big) == 10
    finally:
        await q.shutdown(timeout=5)


async def test_cancel_queued_and_running_jobs_leaves_the_others_intact(tiny_model, pipeline: Pipeline) -> None:
    q = GenerationQueue(Pipeline(tiny_model, max_batch=2), QueueOptions(collect_window_s=0.0))
    q.start()
    try:
        running = q.submit(_req(steps=80, seed=4), user_id=1)
        neighbour = q.submit(_req("a cat", steps=12, seed=5), user_id=2)
        waiting = q.submit(_req(steps=5, seed=6), user_id=3)  # no slot free: it waits
        async for event in running.events():
            if isinstance(event, Progress) and event.step >= 2:
                break
        assert waiting.position == 1
        assert waiting.cancel() is True and waiting.cancel() is False
        with pytest.raises(JobCancelled, match="owner"):
            await waiting
        assert running.cancel("cancelled by a moderator") is True
        with pytest.raises(JobCancelled, match="moderator"):
            await running
        images = await neighbour
        assert np.abs(images[0].pixels - _alone(pipeline, _req("a cat", steps=12, seed=5))[0]).max() < 1e-4
        assert q.jobs() == []
        assert len(await q.submit(_req(steps=2), user_id=1)) == 1  # the owners' slots were freed
    finally:
        await q.shutdown(timeout=5)


async def test_a_failing_batch_fails_only_its_jobs_and_the_queue_goes_on(queue: GenerationQueue,
                                                                        monkeypatch) -> None:
    original = queue.pipeline.denoise_step
    calls = {"n": 0}

    def flaky(active):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return original(active)

    monkeypatch.setattr(queue.pipeline, "denoise_step", flaky)
    doomed = [queue.submit(_req(seed=s), user_id=s) for s in (1, 2)]
    for handle in doomed:
        with pytest.raises(JobFailed, match="illegal memory access"):
            await handle
    assert len(await queue.submit(_req(seed=3), user_id=1)) == 1


async def test_a_job_whose_prompt_cannot_be_encoded_fails_alone(tmp_path: Path, tiny_model) -> None:
    from engine.adapters.embeddings import Embedding, write_embedding_pt
    from engine.adapters.library import AdapterLibrary

    folder = tmp_path / "emb"
    write_embedding_pt(Embedding("w", torch.ones(1, 768)), folder / "sd15style.pt")
    q = GenerationQueue(Pipeline(tiny_model, library=AdapterLibrary([folder], [])), QueueOptions(collect_window_s=0.05))
    q.start()
    try:
        bad = q.submit(_req("a sd15style cat"), user_id=1)
        good = q.submit(_req("a cat"), user_id=2)
        with pytest.raises(JobFailed, match="width 768"):
            await bad
        assert len(await good) == 1
        with pytest.raises(RequestError, match="unknown hypernetwork"):
            q.submit(_req("a cat <hypernet:nothing>"), user_id=3)  # refused at once, before queueing
    finally:
        await q.shutdown(timeout=5)


async def test_out_of_memory_splits_the_batch_and_lowers_the_limit(tiny_model, pipeline: Pipeline,
                                                                   monkeypatch) -> None:
    q = GenerationQueue(Pipeline(tiny_model, max_batch=4), QueueOptions(collect_window_s=0.05))
    original = q.pipeline.denoise_step

    def small_memory(active):
        if len(active) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(active)

    monkeypatch.setattr(q.pipeline, "denoise_step", small_memory)
    q.start()
    try:
        requests = [_req(seed=s, steps=5) for s in range(4)]
        results = await asyncio.gather(*(q.submit(r, user_id=i) for i, r in enumerate(requests)))
        for request, images in zip(requests, results, strict=True):
            assert np.abs(images[0].pixels - _alone(pipeline, request)[0]).max() < 1e-4
        assert q.stats["oom_splits"] >= 1 and q._limit((64, 64)) == 2
    finally:
        await q.shutdown(timeout=5)


async def test_events_positions_and_previews(tiny_model) -> None:
    q = GenerationQueue(Pipeline(tiny_model, max_batch=1), QueueOptions(collect_window_s=0.0, preview_every=2))
    q.start()
    try:
        first = q.submit(_req(steps=30, seed=1), user_id=1)
        async for event in first.events():
            if isinstance(event, Started):
                break
        second = q.submit(_req(steps=4, seed=2), user_id=2)
        third = q.submit(_req(steps=4, seed=3), user_id=3)
        assert (second.position, third.position) == (1, 2)
        events = [event async for event in third.events()]
        assert isinstance(events[0], Queued) and events[0].position == 2
        positions = [e.position for e in events if isinstance(e, Queued)]
        assert positions[-1] == 1  # it moved up when the second started
        progress = [e for e in events if isinstance(e, Progress)]
        assert [p.step for p in progress] == [1, 2, 3, 4] and progress[-1].total == 4
        previews = [p.preview for p in progress if p.preview is not None]
        assert previews and all(p.shape == (8, 8, 3) and p.dtype == np.uint8 for p in previews)
        assert isinstance(events[-1], Finished) and len(events[-1].images) == 1
        await first
    finally:
        await q.shutdown(timeout=5)


async def test_the_event_loop_runs_while_the_worker_computes(queue: GenerationQueue, monkeypatch) -> None:
    """The step blocks until the loop itself releases it: a worker that ran on the loop would deadlock here."""
    release = threading.Event()
    threads = set()
    original = queue.pipeline.denoise_step

    def gated(active):
        threads.add(threading.get_ident())
        assert release.wait(10), "the event loop never ran while a step was in progress"
        return original(active)

    monkeypatch.setattr(queue.pipeline, "denoise_step", gated)
    handle = queue.submit(_req(steps=2), user_id=1)
    await asyncio.sleep(0.2)  # the worker is now inside a step, waiting for us
    release.set()
    assert len(await asyncio.wait_for(handle.result(), 10)) == 1
    assert threading.get_ident() not in threads


async def test_limits_and_shutdown(tiny_model) -> None:
    q = GenerationQueue(Pipeline(tiny_model, max_batch=1),
                        QueueOptions(collect_window_s=0.0, max_jobs_per_user=2))
    q.start()
    long = q.submit(_req(steps=400, seed=1), user_id=1)
    q.submit(_req(seed=2), user_id=1)
    with pytest.raises(QueueFullError, match="2 jobs"):
        q.submit(_req(seed=3), user_id=1)
    async for event in long.events():
        if isinstance(event, Progress):
            break
    unfinished = await q.shutdown(timeout=0.2)
    assert {job.id for job in unfinished} >= {long.id}
    with pytest.raises(JobCancelled, match="shutting down"):
        await long
    with pytest.raises(QueueClosed):
        q.submit(_req(), user_id=2)
    assert any(isinstance(e, Cancelled) for e in [long.job._last_event])


class _Task:
    """A background task that logs its slices into a shared log."""

    def __init__(self, log: list[str], slices: int, boom_at: int | None = None) -> None:
        self.log, self.left, self.boom_at = log, slices, boom_at
        self.cancelled = False
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run_slice(self) -> bool:
        if self.boom_at is not None and self.left == self.boom_at:
            raise ValueError("the training data vanished")
        self.log.append("bg")
        self.left -= 1
        if self.left == 0:
            self.done.set()
        return self.left == 0

    def failed(self, error: BaseException) -> None:
        self.error = error
        self.done.set()


async def test_background_slices_run_between_generation_steps_never_instead_of_them(queue: GenerationQueue,
                                                                                  monkeypatch) -> None:
    log: list[str] = []
    original = queue.pipeline.denoise_step

    def logged(active):
        log.append("gen")
        return original(active)

    monkeypatch.setattr(queue.pipeline, "denoise_step", logged)
    task = _Task(log, slices=10_000)
    handle = queue.submit(_req(steps=12), user_id=1)
    queue.add_background(task)
    await handle
    first, last = log.index("gen"), len(log) - 1 - log[::-1].index("gen")
    during = log[first:last + 1]
    assert during.count("gen") == 12
    assert "bg" in during  # training progresses while people generate...
    assert all(not (a == b == "bg") for a, b in itertools.pairwise(during))  # ...one slice per step
    await asyncio.sleep(0.2)
    assert log[-1] == "bg" and log.count("bg") > during.count("bg")  # idle: slices back to back
    task.cancelled = True


async def test_a_failing_background_task_ends_alone(queue: GenerationQueue) -> None:
    log: list[str] = []
    task = _Task(log, slices=5, boom_at=3)
    queue.add_background(task)
    assert await asyncio.get_running_loop().run_in_executor(None, task.done.wait, 10)
    assert isinstance(task.error, ValueError) and log == ["bg", "bg"]
    assert len(await queue.submit(_req(steps=2), user_id=1)) == 1
