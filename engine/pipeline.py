"""The batched denoising loop, run by us over diffusers' components.

Every sample owns its scheduler, its generator, its conditioning and its guidance scale (see
docs/ARCHITECTURE.md). One UNet call serves all active samples of one size: ``[uncond(B); cond(B)]`` with
per-sample timesteps. A sample whose schedule is done leaves the batch and is decoded at once, and a waiting
sample takes its place, so the same machinery serves one request, a list of requests, and (later) the
queue's step-level batching.
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.adapters.attention import BatchAdapters, Chain, chain_contexts, chain_has_width, install
from engine.adapters.library import AdapterLibrary
from engine.infotext import build_infotext
from engine.loading import LoadedModel
from engine.noise import initial_noise
from engine.prompts.encoding import EmbeddingUse, HypernetUse, PromptEncoder
from engine.requests import GeneratedImage, GenerationRequest, RequestError
from engine.samplers import make_scheduler, resolve_sampler

ProgressFn = Callable[[int, int], None]

# torchsde warns when float rounding puts a query a hair before its interval start; harmless for sampling.
warnings.filterwarnings("ignore", message="Should have ta>=t0", category=UserWarning)


@dataclass
class Sample:
    """One image being denoised: everything that makes it independent of its batch."""

    request_index: int
    index: int
    request: GenerationRequest
    seed: int
    subseed: int
    scheduler: Any
    generator: torch.Generator
    latents: torch.Tensor  # (1, C, h, w), float32
    cond: torch.Tensor  # (tokens, width)
    uncond: torch.Tensor
    step: int = 0
    step_takes_generator: bool = False
    timesteps: list[Any] = field(default_factory=list)
    # Hypernetworks of each guidance half, and the cross-attention k/v contexts they give (None: unchanged).
    cond_chain: Chain = ()
    uncond_chain: Chain = ()
    cond_kv: tuple[torch.Tensor, torch.Tensor] | None = None
    uncond_kv: tuple[torch.Tensor, torch.Tensor] | None = None
    hypernets: tuple[HypernetUse, ...] = ()
    embeddings: tuple[EmbeddingUse, ...] = ()
    denoised: torch.Tensor | None = None  # the scheduler's clean-image estimate, where it gives one (previews)

    @property
    def done(self) -> bool:
        return self.step >= len(self.timesteps)


def _takes_generator(scheduler: Any) -> bool:
    return "generator" in inspect.signature(scheduler.step).parameters


def _hashes(uses: Iterable[HypernetUse | EmbeddingUse]) -> str | None:
    """A1111's ``name: hash, name: hash`` list (None when empty, so the field is left out)."""
    pairs = dict.fromkeys(f"{u.name}: {u.hash}" for u in uses)
    return ", ".join(pairs) or None


def _pad_rows(rows: list[torch.Tensor], length: int) -> torch.Tensor:
    return torch.stack([torch.cat([r, r.new_zeros(length - r.shape[0], r.shape[1])]) if r.shape[0] < length else r
                        for r in rows])


def batch_context(active: list[Sample]) -> tuple[torch.Tensor, BatchAdapters | None]:
    """The ``[uncond(B); cond(B)]`` context of one UNet call and the adapter state its rows need (or None).

    Contexts of unequal length (prompts of more chunks) are zero-padded to the longest and masked out of
    cross-attention, so a sample's result does not depend on its neighbours' prompt lengths.
    """
    rows = [s.uncond for s in active] + [s.cond for s in active]
    kv = [s.uncond_kv for s in active] + [s.cond_kv for s in active]
    chains = [s.uncond_chain for s in active] + [s.cond_chain for s in active]
    length = max(r.shape[0] for r in rows)
    context = _pad_rows(rows, length)
    mask = None
    if any(r.shape[0] != length for r in rows):
        positions = torch.arange(length, device=context.device)
        mask = torch.stack([positions < r.shape[0] for r in rows]).view(len(rows), 1, 1, length)
    cross_k = cross_v = None
    if any(pair is not None for pair in kv):
        cross_k = _pad_rows([pair[0] if pair is not None else r for pair, r in zip(kv, rows, strict=True)], length)
        cross_v = _pad_rows([pair[1] if pair is not None else r for pair, r in zip(kv, rows, strict=True)], length)
    if mask is None and cross_k is None and not any(chains):
        return context, None
    return context, BatchAdapters(cross_k=cross_k, cross_v=cross_v, cross_mask=mask,
                                  self_chains=chains if any(chains) else ())


class Pipeline:
    """Generates images for lists of requests on one loaded model."""

    def __init__(self, model: LoadedModel, *, max_batch: int = 8, pixel_budget: int | None = None,
                 library: AdapterLibrary | None = None) -> None:
        self.model = model
        self.max_batch = max_batch
        self.pixel_budget = pixel_budget
        self.library = library if library is not None else AdapterLibrary()
        self.encoder = PromptEncoder(model.tokenizer, model.text_encoder, model.device, model.dtype, model.name)
        install(model.unet)

    # -- preparing samples -------------------------------------------------------------------------

    def resolve(self, request: GenerationRequest) -> GenerationRequest:
        """Fill the model's native size and random seeds; the result is what the infotext reports."""
        width, height = self.model.native_size
        changes = {}
        if request.width == 0:
            changes["width"] = width
        if request.height == 0:
            changes["height"] = height
        if changes:
            request = dataclasses.replace(request, **changes)
        return request.with_seeds()

    @torch.no_grad()
    def make_samples(self, request: GenerationRequest, request_index: int = 0) -> list[Sample]:
        """Expand one resolved request into its samples: conditioning, scheduler and starting noise for each."""
        r = request
        if r.seed == -1 or r.subseed == -1 or not r.width or not r.height:
            raise RequestError("requests must be resolved (Pipeline.resolve) before sampling")
        cond_enc, uncond_enc = self.encoder.encode_pair(r.prompt, r.negative_prompt,
                                                        self.library.view(r.guild_id))
        cond, uncond = cond_enc.context, uncond_enc.context
        # Positive-prompt hypernetworks act on both halves (A1111); negative-prompt ones on the uncond half only.
        cond_chain: Chain = tuple((h.network, h.multiplier) for h in cond_enc.hypernets)
        uncond_chain: Chain = cond_chain + tuple((h.network, h.multiplier) for h in uncond_enc.hypernets)
        width = cond.shape[-1]
        cond_kv = chain_contexts(cond_chain, cond) if chain_has_width(cond_chain, width) else None
        uncond_kv = chain_contexts(uncond_chain, uncond) if chain_has_width(uncond_chain, width) else None
        hypernets = tuple(dict.fromkeys(cond_enc.hypernets + uncond_enc.hypernets))
        embeddings = tuple(dict.fromkeys(cond_enc.embeddings + uncond_enc.embeddings))
        spec = resolve_sampler(r.sampler)
        scale = self.model.vae_scale
        shape = (self.model.latent_channels, r.height // scale, r.width // scale)
        samples = []
        for index, (seed, subseed) in enumerate(r.sample_seeds()):
            scheduler = make_scheduler(spec, self.model.scheduler_config, seed=seed)
            scheduler.set_timesteps(r.steps, device=self.model.device)
            noise, generator = initial_noise(shape, seed, subseed, r.subseed_strength)
            latents = (noise * scheduler.init_noise_sigma).unsqueeze(0).to(self.model.device)
            samples.append(Sample(
                request_index=request_index, index=index, request=r, seed=seed, subseed=subseed,
                scheduler=scheduler, generator=generator, latents=latents, cond=cond, uncond=uncond,
                step_takes_generator=_takes_generator(scheduler), timesteps=list(scheduler.timesteps),
                cond_chain=cond_chain, uncond_chain=uncond_chain, cond_kv=cond_kv, uncond_kv=uncond_kv,
                hypernets=hypernets, embeddings=embeddings,
            ))
        return samples

    # -- one step of a batch -----------------------------------------------------------------------

    @torch.no_grad()
    def denoise_step(self, active: list[Sample]) -> list[Sample]:
        """Advance every active sample (all of one size) by one model evaluation; return those now done."""
        model = self.model
        inputs, timesteps = [], []
        for s in active:
            t = s.timesteps[s.step]
            inputs.append(s.scheduler.scale_model_input(s.latents, t))
            timesteps.append(torch.as_tensor(t, dtype=torch.float32).reshape(()))
        x = torch.cat(inputs).to(model.dtype)
        t_batch = torch.stack(timesteps).to(model.device)
        context, adapters = batch_context(active)
        kwargs = {"cross_attention_kwargs": {"adapters": adapters}} if adapters is not None else {}
        out = model.unet(torch.cat([x, x]), torch.cat([t_batch, t_batch]), encoder_hidden_states=context,
                         **kwargs).sample
        out_uncond, out_cond = out.float().chunk(2)
        finished = []
        for i, s in enumerate(active):
            guided = out_uncond[i:i + 1] + s.request.cfg_scale * (out_cond[i:i + 1] - out_uncond[i:i + 1])
            kwargs = {"generator": s.generator} if s.step_takes_generator else {}
            result = s.scheduler.step(guided, s.timesteps[s.step], s.latents, **kwargs)
            s.latents = result.prev_sample
            s.denoised = getattr(result, "pred_original_sample", None)
            s.step += 1
            if s.done:
                finished.append(s)
        return finished

    @torch.no_grad()
    def decode(self, samples: list[Sample]) -> list[GeneratedImage]:
        """Decode finished samples to pixels in [0, 1] and attach their infotext."""
        vae = self.model.vae
        latents = torch.cat([s.latents for s in samples]).to(self.model.dtype) / vae.config.scaling_factor
        images = (vae.decode(latents).sample.float() / 2 + 0.5).clamp(0, 1)
        pixels = images.permute(0, 2, 3, 1).cpu().numpy()
        return [
            GeneratedImage(pixels=pixels[i], seed=s.seed, subseed=s.subseed,
                           subseed_strength=s.request.subseed_strength, infotext=self.infotext(s),
                           request=s.request, index=s.index)
            for i, s in enumerate(samples)
        ]

    def infotext(self, s: Sample) -> str:
        r = s.request
        variation = r.subseed_strength > 0
        params: dict[str, object] = {
            "Steps": r.steps,
            "Sampler": r.sampler,
            "CFG scale": float(r.cfg_scale),
            "Seed": s.seed,
            "Size": f"{r.width}x{r.height}",
            "Model hash": self.model.hash,
            "Model": self.model.name,
            "Variation seed": s.subseed if variation else None,
            "Variation seed strength": float(r.subseed_strength) if variation else None,
            "RNG": "CPU",
            "Hypernet hashes": _hashes(s.hypernets),
            "TI hashes": _hashes(s.embeddings),
        }
        return build_infotext(r.prompt, r.negative_prompt, params)

    # -- the entry point ---------------------------------------------------------------------------

    def generate(self, requests: Iterable[GenerationRequest], *, progress: ProgressFn | None = None,
                 ) -> list[list[GeneratedImage]]:
        """Render every request; returns each request's images in seed order.

        Samples of one size share UNet calls, up to ``batch_limit(size)`` at once; finished samples are decoded
        immediately and waiting ones take their place.
        """
        resolved = [self.resolve(r) for r in requests]
        results: list[list[GeneratedImage | None]] = [[None] * r.count for r in resolved]
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, r in enumerate(resolved):
            by_size.setdefault((r.width, r.height), []).append(i)
        total = sum(r.count * self.evaluations(r) for r in resolved)
        done = 0
        for (width, height), indices in by_size.items():
            pending = deque(s for i in indices for s in self.make_samples(resolved[i], i))
            limit = self.batch_limit(width, height)
            active: list[Sample] = []
            while pending or active:
                while pending and len(active) < limit:
                    active.append(pending.popleft())
                finished = self.denoise_step(active)
                done += len(active)
                if progress is not None:
                    progress(done, total)
                if finished:
                    active = [s for s in active if not s.done]
                    for s, image in zip(finished, self.decode(finished), strict=True):
                        results[s.request_index][s.index] = image
        return [[img for img in imgs if img is not None] for imgs in results]

    def batch_limit(self, width: int, height: int) -> int:
        """Most samples of this size per UNet call: ``max_batch``, lowered by the pixel budget (never below 1)."""
        if self.pixel_budget is None:
            return self.max_batch
        return max(1, min(self.max_batch, self.pixel_budget // (width * height)))

    def evaluations(self, request: GenerationRequest) -> int:
        """Model evaluations one sample of ``request`` takes (second-order samplers take more)."""
        scheduler = make_scheduler(resolve_sampler(request.sampler), self.model.scheduler_config, seed=0)
        scheduler.set_timesteps(request.steps, device="cpu")
        return len(scheduler.timesteps)
