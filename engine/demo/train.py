"""The trainer of the bundled demo model: a tiny SD 1.x-architecture model learned from scratch on the CPU.

Why a trainer and not shipped random weights: the demo model must *follow prompts* ("a small red circle on a
blue background, top left") so that a fresh install shows real behaviour and training features (issue 7) have a
model whose adherence can be measured. The architecture is the real one (AutoencoderKL, UNet2DConditionModel
with cross-attention, CLIPTextModel with the real 49408-token tokenizer, the SD 1.x DDPM schedule rescaled to zero
terminal SNR and stored as ``trained_betas``), only narrow, so every loader and sampler treats it like any SD
checkpoint with v-prediction.

Phases (see docs/ARCHITECTURE.md, "Issue 3 design"):

1. :func:`train_vae` — reconstruction (MSE + L1, which keeps flat colours flat and edges sharp) plus a tiny KL.
2. :func:`cache_latents` — encode the dataset once (posterior mean) and set ``scaling_factor`` so the latents
   have unit standard deviation, as SD's 0.18215 does for the real VAE.
3. :func:`train_unet_and_text` — v-prediction MSE (see :class:`DemoTrainConfig` for why), UNet and text
   encoder jointly, AdamW with warmup and cosine decay; the dataset's empty captions teach the unconditional
   model that classifier-free guidance needs.

Everything is seeded: weights come from forked generators, batches from seeded index permutations, noise and
timesteps from a dedicated generator, so the same config gives bit-identical weights on one machine.
Step counts are fixed in the config (``--minutes`` in the script calibrates them *before* training starts);
the time budgets are only a safety cap that stops a phase early, logging that it did.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from engine.tiny import BOS_ID, EOS_ID, SD1_PAD_TOKEN, VOCAB_SIZE, load_tokenizer, sd_scheduler_config, write_skeleton
from engine.training.core import alphas_cumprod

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

LogFn = Callable[[str], None]


@dataclass(frozen=True)
class DemoTrainConfig:
    """Everything that determines the demo model; the same config (and machine) gives the same weights."""

    seed: int = 0
    n_images: int = 8000
    image_size: int = 64
    empty_caption_rate: float = 0.1
    # Fraction of shapes painted in a colour no word names (``dataset.UNNAMED``, captioned without a colour word),
    # so an embedding can ask for a colour no plain prompt reaches (issue 7's must-learn test).
    unnamed_rate: float = 0.0
    # Extra loss weight on the latent cells around the shape (``dataset.shape_weights``; 0 = plain MSE): the
    # outline is a few percent of the pixels, and the plain loss hardly tells a round square from a square.
    shape_weight: float = 0.0
    # VAE: three encoder blocks = ×4 downsampling (64×64 ↔ 16×16×4), so small shapes keep their outline.
    vae_channels: tuple[int, ...] = (16, 32, 64)
    vae_steps: int = 1000
    vae_batch: int = 16
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-5
    # Fraction of the VAE's training images repainted in random RGB colours (``dataset.any_colour_images``), so
    # the decoder can show colours no word names; the UNet still trains on the palette images only.
    vae_any_colour_rate: float = 0.25
    # Text encoder: from scratch; hidden 64 keeps the 49408-token embedding at 3.2 M parameters.
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    # UNet on the 16×16×4 latent. Four levels (down to 2×2): at the coarsest level every cell touches the zero
    # padding on its own two sides, which is the UNet's only absolute-position signal — with three levels the
    # 2026-11-23 model ignored position words entirely. Measured: 7 % slower per step than three levels.
    unet_channels: tuple[int, ...] = (32, 64, 128, 128)
    # Levels, from the 16×16 one, without attention (plain ResNet blocks, like SD 1.x's coarsest level). Self-
    # attention over 256 positions is half the step time at the 16×16 level, but without it shape fell from 57 %
    # to 37 % (2026-11-23): the 16×16 attention is what draws outlines. Kept as an option for experiments.
    unet_plain_levels: int = 0
    # Transformer blocks per level, from the 16×16 one (empty = one everywhere, as SD 1.x).
    unet_transformer_layers: tuple[int, ...] = ()
    unet_layers: int = 1
    unet_heads: int = 4
    unet_steps: int = 3000
    unet_batch: int = 32
    unet_lr: float = 2e-3  # pilot: loss 0.021 at step 400 vs 0.028 with 8e-4, stable
    text_lr: float = 2e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
    # Exponential moving average of the UNet and text-encoder weights (0 = off); the averaged weights are the
    # ones written. The decay warms up as (1 + step) / (10 + step), so early steps do not linger in the average.
    # Tried 0.998 (2026-11-23, 2682 steps): no measurable effect on the scores, so off, as the shipped model.
    ema_decay: float = 0.0
    # Also write the last step's (un-averaged) weights to ``<out>-raw``, to compare with the average.
    keep_raw: bool = False
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    # The noise schedule and what the UNet predicts. SD 1.x's schedule leaves ~7 % of the image in the noise at
    # t=999, so a model learns to read the layout from that leak and, given pure noise at inference, draws shape
    # and place at random (the 2026-11-23 model: shape 42 %, position 25 %). Zero terminal SNR (Lin et al. 2024,
    # "Common Diffusion Noise Schedules and Sample Steps are Flawed") removes the leak: at t=999 the model must
    # draw the scene from the prompt alone. It needs v-prediction (epsilon is trivial there). The rescaled
    # schedule is stored as ``trained_betas`` in the scheduler config, which every sampler's scheduler reads.
    prediction_type: str = "v_prediction"
    zero_terminal_snr: bool = True
    # Per-channel constant noise added to the training noise: with the SD 1.x schedule's leak, the model would
    # otherwise read the background colour from the noise's mean. Not needed with zero terminal SNR.
    offset_noise: float = 0.0
    # Min-SNR-γ loss weighting (Hang et al. 2023): caps the weight of the nearly clean timesteps, whose fine
    # detail these flat scenes do not need, so the short budget goes to layout and colour. 0 = plain MSE.
    min_snr_gamma: float = 5.0
    # Timestep sampling: t = 1000 · u^(1 / (1 + bias)) for uniform u, so bias 0 is uniform and bias 1 draws the
    # noisy half three times as often as the clean half (density ∝ t): the noisy steps are where the prompt must
    # place and shape the scene.
    timestep_bias: float = 0.0
    # Epsilon prediction only: floor of the loss weight in clean-image (x0) terms (0 = plain Min-SNR-γ).
    # Epsilon-MSE weighs x0 errors by the SNR, ~0.005 at the noisiest timesteps where layout is decided; a floor
    # of 1 makes those steps count like an x0 loss. Tried with the SD 1.x schedule (2026-11-23, 38-min run): no
    # gain (shape 38 %, position 24 %). Kept for experiments; see docs/ARCHITECTURE.md.
    snr_floor: float = 0.0
    # Safety caps in minutes (0 = none); a phase that hits its cap stops early and says so.
    vae_minutes: float = 0.0
    unet_minutes: float = 0.0
    # GroupNorm groups in VAE and UNet. Few groups on purpose: with one channel per group (SD's 32 groups on a
    # 32-channel block) a flat image normalises to zero, so the networks cannot carry a flat colour through the
    # final norm — backgrounds come out wrong. Measured: VAE MSE after 200 steps 0.14 with 8 groups, 0.04 with 2.
    norm_groups: int = 2
    log_every: int = 50
    save_fp16: bool = True
    smoke: bool = False

    def resolved(self) -> DemoTrainConfig:
        """The config actually trained: ``smoke`` shrinks data, steps and widths so a run takes seconds.

        The result has ``smoke=False`` so resolving is idempotent and callers may adjust a resolved smoke config.
        """
        if not self.smoke:
            return self
        return dataclasses.replace(
            self, smoke=False, n_images=48, vae_channels=(16, 32, 32), vae_steps=4, vae_batch=8, text_hidden=32,
            unet_channels=(32, 32, 64, 64), unet_heads=2, unet_steps=4, unet_batch=8, warmup_steps=2, log_every=1,
        )


# -- building ---------------------------------------------------------------------------------------------------


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's global generator for the block (module constructors draw from it), then restore it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def vae_config(cfg: DemoTrainConfig) -> dict[str, Any]:
    """AutoencoderKL kwargs: one block per width, ×2 downsampling between blocks; no mid-block attention (the
    scenes need none, and it is the slowest part of a small VAE on a CPU)."""
    n = len(cfg.vae_channels)
    return {
        "sample_size": cfg.image_size,
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "block_out_channels": tuple(cfg.vae_channels),
        "down_block_types": ("DownEncoderBlock2D",) * n,
        "up_block_types": ("UpDecoderBlock2D",) * n,
        "layers_per_block": 1,
        "norm_num_groups": cfg.norm_groups,
        "mid_block_add_attention": False,
    }


def unet_config(cfg: DemoTrainConfig) -> dict[str, Any]:
    """UNet2DConditionModel kwargs: cross-attention at every level but the ``unet_plain_levels`` finest ones,
    SD 1.x-style conv projections."""
    n = len(cfg.unet_channels)
    plain = min(max(cfg.unet_plain_levels, 0), n - 1)  # at least the coarsest level attends to the prompt
    return {
        "sample_size": cfg.image_size // 2 ** (len(cfg.vae_channels) - 1),
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": tuple(cfg.unet_channels),
        "layers_per_block": cfg.unet_layers,
        "transformer_layers_per_block": (tuple(cfg.unet_transformer_layers) + (1,) * n)[:n],
        "down_block_types": ("DownBlock2D",) * plain + ("CrossAttnDownBlock2D",) * (n - plain),
        "up_block_types": ("CrossAttnUpBlock2D",) * (n - plain) + ("UpBlock2D",) * plain,
        "cross_attention_dim": cfg.text_hidden,
        "attention_head_dim": cfg.unet_heads,  # diffusers' name for the head *count* in SD 1.x configs
        "norm_num_groups": cfg.norm_groups,
    }


def text_config(cfg: DemoTrainConfig) -> dict[str, Any]:
    """CLIPTextConfig kwargs: SD 1.x's text encoder shape (quick GELU, 77 positions, real vocabulary), narrow."""
    return {
        "vocab_size": VOCAB_SIZE,
        "max_position_embeddings": 77,
        "hidden_size": cfg.text_hidden,
        "intermediate_size": cfg.text_hidden * 4,
        "num_hidden_layers": cfg.text_layers,
        "num_attention_heads": cfg.text_heads,
        "projection_dim": cfg.text_hidden,
        "hidden_act": "quick_gelu",
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": EOS_ID,
    }


@dataclass
class DemoComponents:
    """The trainable networks plus the tokenizer and the noise schedule they are trained for."""

    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    scheduler_config: dict[str, Any] = field(default_factory=sd_scheduler_config)


# ᾱ at t=999 after the zero-SNR rescale: exactly 0 makes σ infinite, which the k-diffusion-style samplers cannot
# step from; 2**-24 (σ ≈ 4096) is diffusers' own choice for its ``rescale_betas_zero_snr`` flag.
TERMINAL_ALPHA_CUMPROD = 2.0**-24


def zero_snr_betas(scheduler_config: dict[str, Any]) -> list[float]:
    """The schedule's betas rescaled so the last timestep carries (almost) no signal (Lin et al. 2024, alg. 1).

    √ᾱ is shifted so its last value is 0 and scaled so its first is unchanged; the last ᾱ is then raised to
    :data:`TERMINAL_ALPHA_CUMPROD` so every sampler can start from it.
    """
    config = {k: v for k, v in scheduler_config.items() if k != "trained_betas"}
    sqrt_acp = alphas_cumprod(config).double().sqrt()
    first, last = sqrt_acp[0].clone(), sqrt_acp[-1].clone()
    sqrt_acp = (sqrt_acp - last) * first / (first - last)
    acp = sqrt_acp.pow(2)
    acp[-1] = TERMINAL_ALPHA_CUMPROD
    alphas = torch.cat([acp[:1], acp[1:] / acp[:-1]])
    return [float(b) for b in (1.0 - alphas)]


def demo_scheduler_config(cfg: DemoTrainConfig) -> dict[str, Any]:
    """The scheduler config the demo model is trained for and ships with (SD 1.x's, plus cfg's prediction and,
    with ``zero_terminal_snr``, the rescaled betas as ``trained_betas``)."""
    config = sd_scheduler_config(cfg.prediction_type)
    if cfg.zero_terminal_snr:
        config["trained_betas"] = zero_snr_betas(config)
    return config


def build_demo_components(cfg: DemoTrainConfig) -> DemoComponents:
    """Fresh, seeded networks for ``cfg`` (resolved for smoke mode); the same seed gives identical weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = cfg.resolved()
    with _seeded(cfg.seed):
        vae = AutoencoderKL(**vae_config(cfg))
        unet = UNet2DConditionModel(**unet_config(cfg))
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_config(cfg)))
    return DemoComponents(load_tokenizer("sd1"), text_encoder, unet, vae, demo_scheduler_config(cfg))


# -- helpers ----------------------------------------------------------------------------------------------------


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N,H,W,3] → float32 [N,3,H,W] in [-1, 1], the range SD's VAE works in."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def _batches(n: int, batch: int, steps: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """``steps`` index batches from successive seeded permutations (epochs) of ``range(n)``."""
    order = torch.randperm(n, generator=generator)
    pos = 0
    for _ in range(steps):
        if pos + batch > n:
            order, pos = torch.randperm(n, generator=generator), 0
        yield order[pos:pos + min(batch, n)]
        pos += batch


def _lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup, then cosine decay to ``min_ratio`` of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class _Clock:
    """Steps/s and the optional time cap of one phase."""

    def __init__(self, minutes: float) -> None:
        self.start = time.perf_counter()
        self.limit = minutes * 60 if minutes > 0 else math.inf

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def over(self) -> bool:
        return self.elapsed > self.limit


def tokenize(tokenizer: CLIPTokenizer, captions: Sequence[str]) -> torch.Tensor:
    """Token ids padded to 77 exactly as :class:`engine.prompts.encoding.PromptEncoder` pads prompts at inference."""
    return tokenizer(list(captions), padding="max_length", max_length=77, truncation=True,
                     return_tensors="pt").input_ids


# -- phase 1: VAE -----------------------------------------------------------------------------------------------


def train_vae(vae: AutoencoderKL, images: np.ndarray, cfg: DemoTrainConfig, log: LogFn = print) -> dict[str, float]:
    """Train the autoencoder on the images; returns ``{"loss", "mse", "steps", "steps_per_s"}``.

    MSE + L1 (L1 pulls flat regions to exactly flat colours instead of MSE's blur-tolerant average) and a KL
    term small enough to keep the posterior nearly deterministic but the latents bounded.
    """
    cfg = cfg.resolved()
    data = _to_tensor(images)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    clock = _Clock(cfg.vae_minutes)
    stats = {"loss": math.nan, "mse": math.nan}
    step = 0
    for step, idx in enumerate(_batches(len(data), cfg.vae_batch, cfg.vae_steps, gen), start=1):
        for group in opt.param_groups:
            group["lr"] = cfg.vae_lr * _lr_factor(step - 1, cfg.vae_steps, min(100, cfg.vae_steps // 10 + 1),
                                                  cfg.min_lr_ratio)
        x = data[idx]
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        recon = vae.decode(z).sample
        mse = F.mse_loss(recon, x)
        kl = 0.5 * (posterior.mean.pow(2) + posterior.var - 1.0 - posterior.logvar).mean()
        loss = mse + 0.5 * F.l1_loss(recon, x) + cfg.vae_kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), cfg.grad_clip)
        opt.step()
        stats = {"loss": loss.item(), "mse": mse.item()}
        if step % cfg.log_every == 0 or step == cfg.vae_steps:
            log(f"vae step {step}/{cfg.vae_steps} loss {stats['loss']:.4f} mse {stats['mse']:.5f} "
                f"({step / clock.elapsed:.2f} steps/s)")
        if clock.over():
            log(f"vae: time cap of {cfg.vae_minutes} min reached after {step} steps")
            break
    vae.eval().requires_grad_(False)
    return {**stats, "steps": step, "steps_per_s": step / max(clock.elapsed, 1e-9)}


# -- phase 2: latents -------------------------------------------------------------------------------------------


@torch.no_grad()
def cache_latents(vae: AutoencoderKL, images: np.ndarray, batch: int = 128) -> torch.Tensor:
    """Encode every image once (posterior mean), set ``vae.config.scaling_factor`` to 1/std, return scaled latents.

    The mean rather than a sample: the decoder was trained on noisy samples, so it decodes the mean cleanly, and
    the cache stays deterministic. The scaling factor is what the pipeline divides by before decoding.
    """
    vae.eval()
    means = [vae.encode(_to_tensor(images[i:i + batch])).latent_dist.mean for i in range(0, len(images), batch)]
    latents = torch.cat(means)
    scale = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scale)
    return latents * scale


# -- phase 3: UNet + text encoder -------------------------------------------------------------------------------


def _diffusion_loss(unet: UNet2DConditionModel, text_encoder: CLIPTextModel, latents: torch.Tensor,
                    ids: torch.Tensor, alphas_cumprod: torch.Tensor, gen: torch.Generator,
                    offset_noise: float, min_snr_gamma: float = 0.0, snr_floor: float = 0.0,
                    prediction_type: str = "epsilon", timestep_bias: float = 0.0,
                    weights: torch.Tensor | None = None) -> torch.Tensor:
    """MSE of the UNet's prediction (epsilon or v) at uniformly drawn timesteps, weighted per sample.

    Weights are chosen in clean-image (x0) terms, where "how much an x0 error costs" compares across
    objectives: epsilon-MSE weighs x0 errors by SNR, v-MSE by SNR + 1. Min-SNR-γ caps that weight at γ. For
    epsilon, ``snr_floor`` raises it at the noisiest steps. For v it is ``min(SNR + 1, γ)``, so the pure-noise
    steps of a zero-terminal-SNR schedule keep weight 1 (Min-SNR's ``min(SNR, γ)`` would drop them, and they are
    where the prompt alone decides the scene). ``weights`` (b, 1, h, w) weigh latent cells within a sample.
    """
    b = latents.shape[0]
    if timestep_bias > 0:
        u = torch.rand((b,), generator=gen)
        t = (len(alphas_cumprod) * u.pow(1.0 / (1.0 + timestep_bias))).long().clamp(max=len(alphas_cumprod) - 1)
    else:
        t = torch.randint(0, len(alphas_cumprod), (b,), generator=gen)
    noise = torch.randn(latents.shape, generator=gen)
    if offset_noise > 0:
        noise = noise + offset_noise * torch.randn((b, latents.shape[1], 1, 1), generator=gen)
    a = alphas_cumprod[t].view(b, 1, 1, 1)
    noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
    context = text_encoder(ids)[0]
    pred = unet(noisy, t, encoder_hidden_states=context).sample
    if prediction_type == "v_prediction":
        target = a.sqrt() * noise - (1 - a).sqrt() * latents
    elif prediction_type == "epsilon":
        target = noise
    else:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; expected 'epsilon' or 'v_prediction'")
    error = F.mse_loss(pred, target, reduction="none")
    per_sample = (error if weights is None else error * weights).mean(dim=(1, 2, 3))
    if min_snr_gamma > 0:
        snr = a.view(b) / (1 - a.view(b))
        if prediction_type == "v_prediction":
            per_sample = per_sample * (min_snr_gamma / (snr + 1)).clamp(max=1.0)
        else:
            per_sample = per_sample * snr.clamp(min=min(snr_floor, min_snr_gamma), max=min_snr_gamma) / snr
    return per_sample.mean()


def train_unet_and_text(parts: DemoComponents, latents: torch.Tensor, captions: Sequence[str],
                        cfg: DemoTrainConfig, log: LogFn = print, *, fixed_batch: bool = False,
                        weights: torch.Tensor | None = None) -> dict[str, Any]:
    """Train the UNet and the text encoder jointly on cached latents; returns losses and speed.

    ``fixed_batch`` trains on the first ``unet_batch`` examples with fixed noise draws each step — no new
    information, only fitting — which is how the tests check that learning happens at all. ``weights`` (n, 1, h, w),
    one map per latent, weigh the loss within each sample (see ``DemoTrainConfig.shape_weight``).
    Returns ``{"raw_weights" (the last step's weights when EMA and ``keep_raw`` are on, else None), "first_loss",
    "loss" (mean of the last 10 % of steps), "losses", "steps", "steps_per_s"}``; the models end with the EMA
    weights.
    """
    cfg = cfg.resolved()
    unet, text_encoder = parts.unet, parts.text_encoder
    ids = tokenize(parts.tokenizer, captions)
    acp = alphas_cumprod(parts.scheduler_config)
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    unet.train().requires_grad_(True)
    text_encoder.train().requires_grad_(True)
    opt = torch.optim.AdamW([
        {"params": list(unet.parameters()), "lr": cfg.unet_lr, "peak": cfg.unet_lr},
        {"params": list(text_encoder.parameters()), "lr": cfg.text_lr, "peak": cfg.text_lr},
    ], weight_decay=cfg.weight_decay)
    params = [p for group in opt.param_groups for p in group["params"]]
    average = [p.detach().clone() for p in params] if cfg.ema_decay > 0 else []
    clock = _Clock(cfg.unet_minutes)
    losses: list[float] = []
    batches = _batches(len(latents), cfg.unet_batch, cfg.unet_steps, gen)
    step = 0
    for step in range(1, cfg.unet_steps + 1):
        idx = torch.arange(min(cfg.unet_batch, len(latents))) if fixed_batch else next(batches)
        if fixed_batch:
            gen.manual_seed(cfg.seed + 2)
        factor = _lr_factor(step - 1, cfg.unet_steps, cfg.warmup_steps, cfg.min_lr_ratio)
        for group in opt.param_groups:
            group["lr"] = group["peak"] * factor
        loss = _diffusion_loss(unet, text_encoder, latents[idx], ids[idx], acp, gen, cfg.offset_noise,
                               cfg.min_snr_gamma, cfg.snr_floor, cfg.prediction_type, cfg.timestep_bias,
                               None if weights is None else weights[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        if average:
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            torch._foreach_lerp_(average, [p.detach() for p in params], 1.0 - decay)
        losses.append(loss.item())
        if step % cfg.log_every == 0 or step == cfg.unet_steps:
            recent = losses[-cfg.log_every:]
            log(f"unet step {step}/{cfg.unet_steps} loss {sum(recent) / len(recent):.4f} "
                f"lr {opt.param_groups[0]['lr']:.2e} ({step / clock.elapsed:.2f} steps/s)")
        if clock.over():
            log(f"unet: time cap of {cfg.unet_minutes} min reached after {step} steps")
            break
    unet.eval().requires_grad_(False)
    text_encoder.eval().requires_grad_(False)
    raw = None
    if average:
        raw = [p.detach().clone() for p in params] if cfg.keep_raw else None
        with torch.no_grad():
            torch._foreach_copy_([p.data for p in params], average)
    tail = losses[-max(1, len(losses) // 10):]
    return {"raw_weights": raw, "first_loss": losses[0] if losses else math.nan, "loss": sum(tail) / len(tail),
            "losses": losses, "steps": step, "steps_per_s": step / max(clock.elapsed, 1e-9)}


# -- the whole run ----------------------------------------------------------------------------------------------


def save_demo_model(parts: DemoComponents, out_dir: Path, *, fp16: bool = True) -> Path:
    """Write a diffusers-layout folder (configs, tokenizer, safetensors weights) that ``load_model`` loads.

    fp16 halves the folder (the 49408×hidden token embedding dominates it); loaders cast back to their dtype.
    """
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()  # "Writing model shards" bars would interleave with the run's log
    transformers_logging.disable_progress_bar()
    out_dir = write_skeleton(Path(out_dir), unet=parts.unet, vae=parts.vae, text_encoder=parts.text_encoder,
                             scheduler_config=parts.scheduler_config, pad_token=SD1_PAD_TOKEN)
    dtype = torch.float16 if fp16 else torch.float32
    for name in ("unet", "vae", "text_encoder"):
        # A cast copy, through torch.nn.Module.to: diffusers' own .to(dtype) logs a warning on every cast.
        model = torch.nn.Module.to(copy.deepcopy(getattr(parts, name)), dtype=dtype)
        model.save_pretrained(out_dir / name)
    return out_dir


def train_demo_model(cfg: DemoTrainConfig, out_dir: Path, log: LogFn = print) -> Path:
    """Run all phases for ``cfg`` and write the model folder; returns it. ``train_stats.json`` records the run."""
    from engine.demo.dataset import any_colour_images, make_dataset, shape_weights

    smoke, cfg = cfg.smoke, cfg.resolved()
    t0 = time.perf_counter()
    images, captions, scenes = make_dataset(cfg.n_images, cfg.seed, size=cfg.image_size,
                                            empty_caption_rate=cfg.empty_caption_rate, unnamed_rate=cfg.unnamed_rate)
    log(f"dataset: {len(images)} images in {time.perf_counter() - t0:.1f} s")
    parts = build_demo_components(cfg)
    vae_images = images
    if cfg.vae_any_colour_rate > 0:
        vae_images = any_colour_images(images, scenes, cfg.vae_any_colour_rate, cfg.seed)
    vae_stats = train_vae(parts.vae, vae_images, cfg, log)
    t1 = time.perf_counter()
    latents = cache_latents(parts.vae, images)
    log(f"latents: {tuple(latents.shape)}, scaling factor {parts.vae.config.scaling_factor:.4f} "
        f"({time.perf_counter() - t1:.1f} s)")
    weights = None
    if cfg.shape_weight > 0:
        factor = cfg.image_size // latents.shape[-1]
        weights = torch.from_numpy(shape_weights(images, scenes, factor, cfg.shape_weight))
    unet_stats = train_unet_and_text(parts, latents, captions, cfg, log, weights=weights)
    raw = unet_stats.pop("raw_weights", None)
    out_dir = save_demo_model(parts, Path(out_dir), fp16=cfg.save_fp16)
    if raw is not None:  # the un-averaged weights beside it, for comparison (keep_raw)
        raw_parts = copy.deepcopy(parts)
        raw_params = [*raw_parts.unet.parameters(), *raw_parts.text_encoder.parameters()]
        with torch.no_grad():
            torch._foreach_copy_([p.data for p in raw_params], raw)
        save_demo_model(raw_parts, Path(f"{out_dir}-raw"), fp16=cfg.save_fp16)
    stats = {
        "config": dataclasses.asdict(cfg),
        "smoke": smoke,
        "vae": vae_stats,
        "unet": {k: v for k, v in unet_stats.items() if k != "losses"},
        "scaling_factor": float(parts.vae.config.scaling_factor),
        "total_s": time.perf_counter() - t0,
    }
    (out_dir / "train_stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    log(f"wrote {out_dir} in {stats['total_s'] / 60:.1f} min")
    return out_dir
