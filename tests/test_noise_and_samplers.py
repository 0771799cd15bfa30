"""Seeds, variation noise and sampler names: the parts of A1111 behaviour users rely on."""

from __future__ import annotations

import pytest
import torch

from engine.noise import initial_noise, slerp
from engine.requests import GenerationRequest, RequestError
from engine.samplers import SAMPLERS, UnknownSamplerError, make_scheduler, resolve_sampler

REQUIRED = ["Euler a", "Euler", "DPM++ 2M", "DPM++ 2M Karras", "DPM++ SDE Karras", "DDIM", "UniPC", "Heun", "LMS"]
SD_SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1,
               "num_train_timesteps": 1000, "prediction_type": "epsilon"}


def test_noise_depends_only_on_seed() -> None:
    a, gen = initial_noise((4, 8, 8), 1234)
    b, _ = initial_noise((4, 8, 8), 1234)
    c, _ = initial_noise((4, 8, 8), 1235)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # the generator continues the same stream, so step noise is seeded too
    assert torch.equal(torch.randn(3, generator=gen), torch.randn(3, generator=initial_noise((4, 8, 8), 1234)[1]))


def test_variation_strength_moves_from_seed_to_subseed() -> None:
    base, _ = initial_noise((4, 8, 8), 1)
    sub, _ = initial_noise((4, 8, 8), 2)
    assert torch.equal(initial_noise((4, 8, 8), 1, 2, 0.0)[0], base)
    assert torch.allclose(initial_noise((4, 8, 8), 1, 2, 1.0)[0], sub)
    mid = initial_noise((4, 8, 8), 1, 2, 0.3)[0]
    # closer to the seed's noise than to the subseed's, and still unit-variance-like noise (slerp, not lerp)
    assert (mid - base).norm() < (mid - sub).norm()
    assert abs(mid.std().item() - base.std().item()) < 0.15
    assert abs(slerp(0.5, base, sub).std().item() - 1) < 0.2


@pytest.mark.parametrize("name", REQUIRED)
def test_required_samplers_build_and_step(name: str) -> None:
    spec = resolve_sampler(name)
    scheduler = make_scheduler(spec, SD_SCHEDULE, seed=3)
    scheduler.set_timesteps(5)
    x = torch.randn(1, 4, 8, 8) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = scheduler.step(torch.zeros_like(x), t, scheduler.scale_model_input(x, t)).prev_sample
    assert torch.isfinite(x).all()


def test_karras_variants_really_use_karras_sigmas() -> None:
    plain = make_scheduler(resolve_sampler("DPM++ 2M"), SD_SCHEDULE)
    karras = make_scheduler(resolve_sampler("DPM++ 2M Karras"), SD_SCHEDULE)
    plain.set_timesteps(10)
    karras.set_timesteps(10)
    assert not torch.allclose(plain.sigmas, karras.sigmas)


def test_names_resolve_loosely_and_unknown_names_list_the_choices() -> None:
    assert resolve_sampler("euler A").name == "Euler a"
    assert resolve_sampler("dpm++ 2m karras").name == "DPM++ 2M Karras"
    assert resolve_sampler("DPM++ 2M", schedule_type="Karras").name == "DPM++ 2M Karras"
    with pytest.raises(UnknownSamplerError) as err:
        resolve_sampler("Eulr")
    assert all(name in str(err.value) for name in REQUIRED)
    assert set(REQUIRED) <= set(SAMPLERS)


def test_requests_validate_and_number_seeds_like_a1111() -> None:
    request = GenerationRequest("x", seed=10, subseed=20, count=3, sampler="euler a")
    assert request.sampler == "Euler a"
    assert request.sample_seeds() == [(10, 20), (11, 21), (12, 22)]
    resolved = GenerationRequest("x", count=2).with_seeds()
    assert resolved.seed != -1 and resolved.sample_seeds()[1][0] == resolved.seed + 1
    for bad in ({"width": 500}, {"steps": 0}, {"subseed_strength": 1.5}, {"count": 0}, {"seed": -5},
                {"sampler": "nope"}):
        with pytest.raises(RequestError):
            GenerationRequest("x", **bad)
