"""Training as queue work: slices between generation steps, events on the loop, checkpoints that resume the
same run exactly, and the adapter written at the end."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.adapters.embeddings import read_embedding
from engine.pipeline import Pipeline
from engine.prompts.encoding import PromptEncoder
from engine.queue.worker import GenerationQueue, QueueOptions
from engine.requests import GenerationRequest
from engine.training.embedding import EmbeddingTrainConfig, EmbeddingTrainer
from engine.training.images import TrainingImage
from engine.training.job import TrainCancelled, TrainFinished, TrainingJob, TrainProgress, read_checkpoint


def _images() -> list[TrainingImage]:
    rng = np.random.default_rng(2)
    return [TrainingImage(f"{i}.png", Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), "",
                          f"{i:064x}") for i in range(3)]


@pytest.fixture
def pipeline(tiny_model) -> Pipeline:
    p = Pipeline(tiny_model, max_batch=4)
    yield p
    p.encoder.close()


def _job(pipeline: Pipeline, folder: Path, *, steps: int = 4, loop=None, slice_seconds: float = 0.0) -> TrainingJob:
    config = EmbeddingTrainConfig(name="zzdot", vectors=2, steps=steps, lr="0.02", template_set="plain")
    encoder: PromptEncoder = pipeline.encoder
    return TrainingJob(lambda: EmbeddingTrainer(pipeline.model, encoder, _images(), config),
                       checkpoint_dir=folder / "ckpt", result_path=folder / "zzdot.safetensors", loop=loop,
                       checkpoint_every=2, slice_seconds=slice_seconds)


def _run(job: TrainingJob, slices: int | None = None) -> None:
    done, count = False, 0
    while not done and (slices is None or count < slices):
        done = job.run_slice()
        count += 1


def test_a_job_resumed_from_its_checkpoint_ends_where_an_uninterrupted_one_does(pipeline: Pipeline,
                                                                              tmp_path: Path) -> None:
    straight = _job(pipeline, tmp_path / "a")
    _run(straight)
    expected = read_embedding(tmp_path / "a" / "zzdot.safetensors").vectors

    interrupted = _job(pipeline, tmp_path / "b")
    _run(interrupted, slices=3)  # set-up, then one step per slice: a checkpoint at step 2
    assert read_checkpoint(tmp_path / "b" / "ckpt")["steps_done"] == 2
    assert not (tmp_path / "b" / "zzdot.safetensors").exists()
    resumed = _job(pipeline, tmp_path / "b")  # e.g. after a restart
    _run(resumed)
    assert resumed.resumed_from == 2
    assert torch.equal(read_embedding(tmp_path / "b" / "zzdot.safetensors").vectors, expected)
    assert read_embedding(tmp_path / "b" / "zzdot.safetensors").step == 4


async def test_training_shares_the_queue_and_reports_progress(pipeline: Pipeline, tmp_path: Path) -> None:
    queue = GenerationQueue(pipeline, QueueOptions(collect_window_s=0.0, preview_every=0))
    queue.start()
    try:
        job = _job(pipeline, tmp_path, steps=6, loop=asyncio.get_running_loop())
        queue.add_background(job)
        image = await queue.submit(GenerationRequest("a cat", seed=1, steps=3), user_id=1)  # not held up
        assert image[0].pixels.shape == (64, 64, 3)
        events = [event async for event in job.events()]
    finally:
        await queue.shutdown(timeout=5)
    progress = [e for e in events if isinstance(e, TrainProgress)]
    assert [e.step for e in progress] == sorted(e.step for e in progress) and progress[0].total == 6
    assert isinstance(events[-1], TrainFinished) and events[-1].steps == 6
    assert read_embedding(events[-1].path).n_vectors == 2


async def test_a_cancelled_job_stops_and_says_so(pipeline: Pipeline, tmp_path: Path) -> None:
    job = _job(pipeline, tmp_path, steps=50, loop=asyncio.get_running_loop())
    _run(job, slices=2)
    job.cancel()
    assert job.run_slice() is True and job.trainer is not None and job.trainer.steps_done == 1
    events = [event async for event in job.events()]
    assert isinstance(events[-1], TrainCancelled) and events[-1].step == 1
    assert not (tmp_path / "zzdot.safetensors").exists()


def test_previews_show_the_adapter_so_far_as_members_will_see_it(pipeline: Pipeline, tmp_path: Path) -> None:
    from engine.adapters.library import AdapterLibrary
    from engine.training.job import TrainPreview
    from engine.training.preview import PreviewRenderer

    renderer = PreviewRenderer(pipeline.model, "embedding", "zzdot", "zzdot, a cat", seeds=(1, 2), steps=3)
    job = _job(pipeline, tmp_path, steps=4, loop=None)
    job.preview, job.preview_every = renderer, 2
    emitted: list = []
    job._emit = emitted.append  # type: ignore[method-assign]
    _run(job)
    previews = [e for e in emitted if isinstance(e, TrainPreview)]
    finished = emitted[-1]
    assert [p.step for p in previews] == [2] and isinstance(finished, TrainFinished)
    grid_mid = np.asarray(Image.open(__import__("io").BytesIO(previews[0].png)))
    grid_end = np.asarray(Image.open(__import__("io").BytesIO(finished.preview)))
    assert grid_end.shape[1] > 2 * 64 and grid_end.shape == grid_mid.shape
    assert not np.array_equal(grid_mid, grid_end)  # the vectors moved between step 2 and 4

    # The final grid is what a member's prompt gives with the finished file, seed for seed.
    library = AdapterLibrary()
    library.register("embedding", "zzdot", finished.path)
    member = Pipeline(pipeline.model, max_batch=2, library=library)
    images = member.generate([GenerationRequest("zzdot, a cat", seed=s, subseed=s, steps=3) for s in (1, 2)])
    from engine.training.preview import grid

    expected = np.asarray(grid([r[0].image for r in images], columns=2))
    assert np.array_equal(grid_end, expected)
    member.encoder.close()


def test_a_preview_that_fails_does_not_stop_training(pipeline: Pipeline, tmp_path: Path) -> None:
    def broken(path: Path) -> Image.Image:
        raise RuntimeError("out of memory")

    job = _job(pipeline, tmp_path, steps=2, loop=None)
    job.preview, job.preview_every = broken, 1
    _run(job)
    assert (tmp_path / "zzdot.safetensors").is_file()


def test_an_ended_job_leaves_no_hooks_on_the_shared_text_encoder(pipeline: Pipeline, tmp_path: Path) -> None:
    from engine.training.preview import PreviewRenderer
    from engine.training.request import TrainingRequest

    layer = pipeline.model.text_encoder.get_input_embeddings()
    before = len(layer._forward_hooks)
    for i, cancel in enumerate((False, True)):
        request = TrainingRequest("embedding", "zzdot", steps=3, what="plain")
        job = TrainingJob(request.trainer_factory(pipeline.model, _images()), checkpoint_dir=tmp_path / f"c{i}",
                          result_path=tmp_path / f"r{i}.safetensors", checkpoint_every=2, slice_seconds=0.0,
                          preview=PreviewRenderer(pipeline.model, "embedding", "zzdot", "zzdot", seeds=(1,), steps=2),
                          preview_every=1)
        _run(job, slices=2)  # set-up and a step with a preview: the trainer's and the renderer's hooks are on
        assert len(layer._forward_hooks) == before + 2
        if cancel:
            job.cancelled = True
        _run(job)
        assert len(layer._forward_hooks) == before
