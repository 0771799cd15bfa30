"""The batched denoising loop: every sample is independent of its batch, reproducible, and A1111-numbered."""

from __future__ import annotations

import numpy as np
import pytest

from engine.infotext import parse_infotext
from engine.pipeline import Pipeline
from engine.requests import GenerationRequest

REQUIRED = ["Euler a", "Euler", "DPM++ 2M", "DPM++ 2M Karras", "DPM++ SDE Karras", "DDIM", "UniPC", "Heun", "LMS"]
TOLERANCE = 1e-4  # on the decoded image in [0, 1]


def _diff(a, b) -> float:
    return float(np.abs(a.pixels - b.pixels).max())


@pytest.mark.parametrize("sampler", REQUIRED)
def test_request_renders_the_same_alone_and_inside_any_batch(tiny_pipeline: Pipeline, sampler: str) -> None:
    target = GenerationRequest("a red circle", negative_prompt="blurry", steps=5, sampler=sampler, seed=123,
                               subseed=9, subseed_strength=0.25, cfg_scale=6.0)
    others = [
        GenerationRequest("a blue square on green", steps=5, sampler=sampler, seed=7, count=3, cfg_scale=9.0),
        GenerationRequest("a cat", steps=7, sampler="Heun", seed=1, cfg_scale=3.0),  # another sampler and length
        GenerationRequest("a dog", negative_prompt="red", steps=4, sampler="Euler a", seed=99, cfg_scale=12.0),
    ]
    alone = tiny_pipeline.generate([target])[0][0]
    again = tiny_pipeline.generate([target])[0][0]
    assert np.array_equal(alone.pixels, again.pixels), "the same request twice must be bit-identical"
    batched = tiny_pipeline.generate([others[0], target, others[1]])[1][0]
    assert _diff(alone, batched) < TOLERANCE
    batched_last = tiny_pipeline.generate([*others, target])[3][0]
    assert _diff(alone, batched_last) < TOLERANCE
    # and the image is a picture, not a constant or garbage
    assert alone.pixels.shape == (64, 64, 3)
    assert alone.pixels.min() >= 0.0 and alone.pixels.max() <= 1.0 and alone.pixels.std() > 1e-3


def test_each_sample_keeps_its_own_parameters(tiny_pipeline: Pipeline) -> None:
    base = GenerationRequest("a red circle", steps=4, sampler="Euler", seed=5)
    variants = {
        "seed": GenerationRequest("a red circle", steps=4, sampler="Euler", seed=6),
        "prompt": GenerationRequest("a green triangle", steps=4, sampler="Euler", seed=5),
        "negative": GenerationRequest("a red circle", negative_prompt="blue", steps=4, sampler="Euler", seed=5),
        "cfg": GenerationRequest("a red circle", steps=4, sampler="Euler", seed=5, cfg_scale=2.0),
        "variation": GenerationRequest("a red circle", steps=4, sampler="Euler", seed=5, subseed=8,
                                       subseed_strength=0.5),
    }
    results = tiny_pipeline.generate([base, *variants.values()])
    reference = results[0][0]
    for (name, _), images in zip(variants.items(), results[1:], strict=True):
        assert _diff(reference, images[0]) > 1e-3, f"changing the {name} did not change the image"


def test_count_uses_consecutive_seeds_like_a1111(tiny_pipeline: Pipeline) -> None:
    batch = tiny_pipeline.generate([GenerationRequest("x", steps=3, seed=40, subseed=70, subseed_strength=0.2,
                                                      count=3, sampler="DPM++ 2M")])[0]
    assert [(img.seed, img.subseed, img.index) for img in batch] == [(40, 70, 0), (41, 71, 1), (42, 72, 2)]
    single = tiny_pipeline.generate([GenerationRequest("x", steps=3, seed=42, subseed=72, subseed_strength=0.2,
                                                       sampler="DPM++ 2M")])[0][0]
    assert _diff(batch[2], single) < TOLERANCE


def test_full_variation_strength_gives_the_subseed_image(tiny_pipeline: Pipeline) -> None:
    a, b = tiny_pipeline.generate([
        GenerationRequest("x", steps=3, sampler="Euler", seed=1, subseed=2, subseed_strength=1.0),
        GenerationRequest("x", steps=3, sampler="Euler", seed=2),
    ])
    assert _diff(a[0], b[0]) < TOLERANCE


def test_small_batch_limit_refills_without_changing_results(tiny_model) -> None:
    requests = [GenerationRequest(f"prompt {i}", steps=3 + i % 3, seed=i, sampler=s)
                for i, s in enumerate(["Euler a", "DDIM", "UniPC", "Heun", "Euler"])]
    wide = Pipeline(tiny_model, max_batch=8).generate(requests)
    narrow = Pipeline(tiny_model, max_batch=2).generate(requests)
    for w, n in zip(wide, narrow, strict=True):
        assert _diff(w[0], n[0]) < TOLERANCE


def test_sizes_are_grouped_and_native_size_is_the_default(tiny_pipeline: Pipeline) -> None:
    native, wide = tiny_pipeline.generate([
        GenerationRequest("x", steps=2, seed=1),
        GenerationRequest("x", steps=2, seed=1, width=96, height=64),
    ])
    assert native[0].pixels.shape == (64, 64, 3)
    assert wide[0].pixels.shape == (64, 96, 3)
    assert parse_infotext(wide[0].infotext).params["Size"] == "96x64"


def test_progress_counts_every_model_evaluation(tiny_pipeline: Pipeline) -> None:
    seen: list[tuple[int, int]] = []
    tiny_pipeline.generate([GenerationRequest("x", steps=4, seed=1, count=2),
                            GenerationRequest("y", steps=3, seed=2, sampler="Heun")],
                           progress=lambda d, t: seen.append((d, t)))
    total = 2 * 4 + (2 * 3 - 1)  # Heun evaluates the model twice per step but the last
    assert seen[-1] == (total, total)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_infotext_describes_the_image(tiny_pipeline: Pipeline, tiny_model) -> None:
    image = tiny_pipeline.generate([GenerationRequest("a cat", negative_prompt="dog", steps=3, seed=11,
                                                      subseed=12, subseed_strength=0.3,
                                                      sampler="DPM++ 2M Karras", cfg_scale=5.5)])[0][0]
    info = parse_infotext(image.infotext)
    assert (info.prompt, info.negative_prompt) == ("a cat", "dog")
    assert info.params == {
        "Steps": "3", "Sampler": "DPM++ 2M Karras", "CFG scale": "5.5", "Seed": "11", "Size": "64x64",
        "Model hash": tiny_model.hash, "Model": "tiny", "Variation seed": "12", "Variation seed strength": "0.3",
        "RNG": "CPU",
    }
    assert len(tiny_model.hash) == 10 and tiny_model.hash != "0" * 10


def test_pixel_budget_lowers_the_batch_limit(tiny_model) -> None:
    pipeline = Pipeline(tiny_model, max_batch=8, pixel_budget=3 * 64 * 64)
    assert pipeline.batch_limit(64, 64) == 3
    assert pipeline.batch_limit(128, 128) == 1  # never below one sample
    assert Pipeline(tiny_model, max_batch=2, pixel_budget=10**9).batch_limit(64, 64) == 2
    calls: list[int] = []
    original = pipeline.denoise_step
    pipeline.denoise_step = lambda active: (calls.append(len(active)), original(active))[1]  # type: ignore[method-assign]
    pipeline.generate([GenerationRequest("x", steps=2, seed=1, count=5)])
    assert max(calls) == 3
