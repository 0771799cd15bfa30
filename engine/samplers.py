"""A1111 sampler names → diffusers schedulers.

Users type the names they know from the A1111 web UI ("Euler a", "DPM++ 2M Karras"), and the infotext we
write must carry the same names so it pastes back. The table maps each name to a diffusers scheduler class
and the config overrides that make it behave like A1111's k-diffusion sampler of that name.

The table is plain data (no diffusers import) so settings validation can check names without loading torch;
``make_scheduler`` imports diffusers only when a scheduler is actually built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    scheduler: str  # diffusers class name
    options: dict[str, Any] = field(default_factory=dict)
    # Stochastic samplers whose extra noise is seeded per sample (ancestral / SDE).
    stochastic: bool = False


# k-diffusion (A1111's samplers) spaces its sigmas linearly in model time; diffusers calls that "linspace".
_K = {"timestep_spacing": "linspace"}
_KARRAS = {"use_karras_sigmas": True}
# A1111's DPM++ samplers end on sigma 0.
_DPMPP = {"algorithm_type": "dpmsolver++", "solver_order": 2, "final_sigmas_type": "zero", **_K}

_SPECS = [
    SamplerSpec("Euler a", "EulerAncestralDiscreteScheduler", _K, stochastic=True),
    SamplerSpec("Euler", "EulerDiscreteScheduler", _K),
    SamplerSpec("LMS", "LMSDiscreteScheduler", _K),
    SamplerSpec("LMS Karras", "LMSDiscreteScheduler", {**_K, **_KARRAS}),
    SamplerSpec("Heun", "HeunDiscreteScheduler", _K),
    SamplerSpec("DPM2", "KDPM2DiscreteScheduler", _K),
    SamplerSpec("DPM2 Karras", "KDPM2DiscreteScheduler", {**_K, **_KARRAS}),
    SamplerSpec("DPM2 a", "KDPM2AncestralDiscreteScheduler", _K, stochastic=True),
    SamplerSpec("DPM2 a Karras", "KDPM2AncestralDiscreteScheduler", {**_K, **_KARRAS}, stochastic=True),
    SamplerSpec("DPM++ 2M", "DPMSolverMultistepScheduler", _DPMPP),
    SamplerSpec("DPM++ 2M Karras", "DPMSolverMultistepScheduler", {**_DPMPP, **_KARRAS}),
    SamplerSpec("DPM++ 2M SDE", "DPMSolverMultistepScheduler",
                {**_DPMPP, "algorithm_type": "sde-dpmsolver++"}, stochastic=True),
    SamplerSpec("DPM++ 2M SDE Karras", "DPMSolverMultistepScheduler",
                {**_DPMPP, "algorithm_type": "sde-dpmsolver++", **_KARRAS}, stochastic=True),
    SamplerSpec("DPM++ SDE", "DPMSolverSDEScheduler", _K, stochastic=True),
    SamplerSpec("DPM++ SDE Karras", "DPMSolverSDEScheduler", {**_K, **_KARRAS}, stochastic=True),
    SamplerSpec("DDIM", "DDIMScheduler", {"timestep_spacing": "leading", "set_alpha_to_one": False}),
    SamplerSpec("PLMS", "PNDMScheduler", {"timestep_spacing": "leading", "skip_prk_steps": True}),
    SamplerSpec("UniPC", "UniPCMultistepScheduler", {"final_sigmas_type": "zero", **_K}),
]

SAMPLERS: dict[str, SamplerSpec] = {s.name: s for s in _SPECS}
_BY_KEY = {s.name.casefold().replace(" ", ""): s for s in _SPECS}
# A1111 1.9+ writes "Sampler: DPM++ 2M, Schedule type: Karras"; accept the joined form too.
_SCHEDULE_SUFFIX = {"karras": " Karras", "automatic": "", "": ""}


class UnknownSamplerError(ValueError):
    """The sampler name is not one we know; the message lists the known names."""


def resolve_sampler(name: str, schedule_type: str = "") -> SamplerSpec:
    """Find a sampler by A1111 name, case- and space-insensitively ("euler a", "DPM++ 2M karras")."""
    suffix = _SCHEDULE_SUFFIX.get(schedule_type.strip().casefold())
    key = (name + (suffix or "")).casefold().replace(" ", "").replace("_", "")
    spec = _BY_KEY.get(key)
    if spec is None:
        raise UnknownSamplerError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}")
    return spec


def make_scheduler(spec: SamplerSpec, base_config: dict[str, Any], *, seed: int | None = None) -> Any:
    """Build a fresh scheduler for one sample from the model's scheduler config.

    ``base_config`` carries the model's noise schedule (betas, prediction type); the spec's options override
    how the sampler walks it. DPM++ SDE draws its Brownian-tree noise from ``noise_sampler_seed``, so each
    sample seeds it with its own seed and stays independent of its batch.
    """
    import inspect

    import diffusers

    cls = getattr(diffusers, spec.scheduler)
    accepted = set(inspect.signature(cls.__init__).parameters)
    options = dict(spec.options)
    if spec.scheduler == "DPMSolverSDEScheduler" and seed is not None:
        options["noise_sampler_seed"] = seed
    config = {k: v for k, v in base_config.items() if k in accepted}
    config.update(options)
    return cls(**config)
