"""Per-sample seeded noise and A1111's variation seeds.

Noise is drawn on the CPU from a generator owned by the sample, so an image depends only on its own seed:
not on the device, the batch it rides in, or its neighbours. The same generator then feeds the sample's
ancestral/SDE step noise, as A1111 does with its per-image generators.
"""

from __future__ import annotations

import torch


def slerp(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of two noise tensors of shape (C, H, W), as A1111's variation seeds do it.

    Like A1111, vectors are taken along dim 1 of the per-image tensor, so a variation pasted back into A1111
    starts from the same noise. Nearly parallel inputs fall back to linear interpolation.
    """
    if t <= 0:
        return a
    if t >= 1:
        return b
    a_n = a / a.norm(dim=1, keepdim=True)
    b_n = b / b.norm(dim=1, keepdim=True)
    dot = (a_n * b_n).sum(1)
    if dot.mean() > 0.9995:
        return a * (1 - t) + b * t
    omega = torch.acos(dot.clamp(-1, 1))
    so = torch.sin(omega)
    return (torch.sin((1.0 - t) * omega) / so).unsqueeze(1) * a + (torch.sin(t * omega) / so).unsqueeze(1) * b


def initial_noise(
    shape: tuple[int, int, int], seed: int, subseed: int = 0, subseed_strength: float = 0.0
) -> tuple[torch.Tensor, torch.Generator]:
    """The starting noise (C, H, W) for one sample, and the generator that continues its stream."""
    if subseed_strength > 0:
        sub = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(subseed))
    generator = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn(shape, generator=generator)
    if subseed_strength > 0:
        noise = slerp(subseed_strength, noise, sub)
    return noise, generator
