"""Textual inversion on the serving model: only the new vectors learn; everything else stays frozen.

The vectors enter the text encoder through :class:`~engine.prompts.encoding.PromptEncoder`'s own placeholder
hook — the path generation uses — so what is trained is exactly what a prompt with the name will see. They are
kept in float32 whatever the model's dtype (fp16 vectors lose small updates and are where A1111 users report
NaN losses). Latents are encoded once (posterior mean) and cached; the VAE is never run again.

Steps are deterministic for a seed: one generator draws the data order, timesteps and noise, and it is part of
:meth:`EmbeddingTrainer.state`, so a job resumed from a checkpoint continues the same sequence.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from engine.adapters.embeddings import Embedding
from engine.requests import RequestError
from engine.training.schedule import LearningRateSchedule
from engine.training.templates import TEMPLATE_SETS, fill

if TYPE_CHECKING:
    from engine.loading import LoadedModel
    from engine.prompts.encoding import PromptEncoder
    from engine.training.images import TrainingImage

MAX_VECTORS = 75
PLACEHOLDER = "\x00name\x00"  # never typed by anyone; split on to place the vectors


@dataclass(frozen=True)
class EmbeddingTrainConfig:
    """What a member chooses (A1111's defaults where A1111 has one)."""

    name: str
    vectors: int = 1
    init_text: str = "*"
    steps: int = 1000
    lr: str = "0.005"
    batch_size: int = 1
    grad_accumulation: int = 1
    template_set: str = "object"
    seed: int = 0

    def check(self) -> LearningRateSchedule:
        """Validate; returns the parsed schedule. :class:`RequestError` names the option and what is allowed."""
        if not 1 <= self.vectors <= MAX_VECTORS:
            raise RequestError(f"vectors: between 1 and {MAX_VECTORS}, got {self.vectors}")
        if self.steps < 1:
            raise RequestError(f"steps: at least 1, got {self.steps}")
        if self.batch_size < 1 or self.grad_accumulation < 1:
            raise RequestError("batch_size and grad_accumulation: at least 1")
        if self.template_set not in TEMPLATE_SETS:
            raise RequestError(f"template_set {self.template_set!r}: choose one of {', '.join(TEMPLATE_SETS)}")
        return LearningRateSchedule.parse(self.lr)


def _alphas_cumprod(scheduler_config: dict[str, Any]) -> torch.Tensor:
    from diffusers import DDPMScheduler

    config = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
    return DDPMScheduler.from_config(config).alphas_cumprod.float()


@torch.no_grad()
def encode_latents(model: LoadedModel, images: list[TrainingImage]) -> torch.Tensor:
    """Every image's latent (posterior mean × scaling factor), float32 on the model's device, encoded once."""
    pixels = np.stack([np.asarray(item.image, dtype=np.float32) / 127.5 - 1.0 for item in images])
    batch = torch.from_numpy(pixels).permute(0, 3, 1, 2).to(model.device, model.vae.dtype)
    latents = [model.vae.encode(chunk).latent_dist.mean for chunk in batch.split(8)]
    return torch.cat(latents).float() * float(model.vae.config.scaling_factor)


class EmbeddingTrainer:
    """Trains one embedding's vectors; :meth:`step` does one optimizer step (with accumulation)."""

    def __init__(self, model: LoadedModel, encoder: PromptEncoder, images: list[TrainingImage],
                 config: EmbeddingTrainConfig, *, latents: torch.Tensor | None = None) -> None:
        self.model, self.encoder, self.config = model, encoder, config
        self.schedule = config.check()
        self.total_steps = self.schedule.total_steps(config.steps)
        for module in (model.unet, model.vae, model.text_encoder):
            module.requires_grad_(False)  # gradients flow only into the vectors
        self.latents = latents if latents is not None else encode_latents(model, images)
        self.filewords = [item.caption for item in images]
        self.vectors = torch.nn.Parameter(self._initial_vectors())
        self.optimizer = torch.optim.AdamW([self.vectors], lr=self.schedule.rate(1), weight_decay=0.0)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.captions = random.Random(config.seed)
        self.acp = _alphas_cumprod(model.scheduler_config).to(model.device)
        self.prediction = str(model.scheduler_config.get("prediction_type", "epsilon"))
        self.steps_done = 0
        self.last_loss = float("nan")

    # -- set-up ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def _initial_vectors(self) -> torch.Tensor:
        """The init text's token embeddings spread over the vectors (repeated when shorter), as A1111 does."""
        table = self.model.text_encoder.get_input_embeddings().weight
        ids = self.encoder.tokenizer(self.config.init_text or "*", add_special_tokens=False).input_ids or [
            self.encoder.tokenizer.convert_tokens_to_ids("*</w>")]
        rows = [table[ids[i % len(ids)]] for i in range(self.config.vectors)]
        return torch.stack(rows).float().clone().cpu().to(self.model.device)

    def _ids(self, caption: str) -> tuple[list[int], list[int]]:
        """Token ids for a caption with the placeholder, and where each placeholder's vectors start."""
        tokenizer, n = self.encoder.tokenizer, self.config.vectors
        ids, starts = [self.encoder.bos], []
        for index, part in enumerate(caption.split(PLACEHOLDER)):
            if index:
                starts.append(len(ids))
                ids += [self.encoder.pad] * n
            if part.strip():
                ids += tokenizer(part, add_special_tokens=False).input_ids
        length = int(tokenizer.model_max_length)
        ids = [*ids[:length - 1], self.encoder.eos]
        starts = [s for s in starts if s + n < length]
        return ids + [self.encoder.pad] * (length - len(ids)), starts

    def context(self, captions: list[str]) -> torch.Tensor:
        """Text-encoder states for captions containing :data:`PLACEHOLDER`, differentiable in the vectors."""
        rows = [self._ids(caption) for caption in captions]
        ids = torch.tensor([r[0] for r in rows], device=self.model.device)
        fixes = [(row, start, self.vectors) for row, (_, starts) in enumerate(rows) for start in starts]
        with self.encoder._fixes_active(fixes):
            return self.model.text_encoder(ids)[0]

    # -- training ----------------------------------------------------------------------------------------

    def _loss(self, index: torch.Tensor) -> torch.Tensor:
        templates = TEMPLATE_SETS[self.config.template_set]
        captions = [fill(self.captions.choice(templates), PLACEHOLDER, self.filewords[int(i)]) for i in index]
        latents = self.latents[index.to(self.latents.device)]
        b = latents.shape[0]
        t = torch.randint(0, len(self.acp), (b,), generator=self.generator).to(self.model.device)
        noise = torch.randn(latents.shape, generator=self.generator).to(self.model.device)
        a = self.acp[t].view(b, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        context = self.context(captions)
        dtype = self.model.unet.dtype
        pred = self.model.unet(noisy.to(dtype), t, encoder_hidden_states=context.to(dtype)).sample.float()
        target = a.sqrt() * noise - (1 - a).sqrt() * latents if self.prediction == "v_prediction" else noise
        return F.mse_loss(pred, target)

    def step(self) -> float:
        """One optimizer step over ``grad_accumulation`` batches; returns the mean loss."""
        if self.done:
            raise RuntimeError("training is finished")
        self.steps_done += 1
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule.rate(self.steps_done)
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        n = len(self.latents)
        for _ in range(self.config.grad_accumulation):
            index = torch.randint(0, n, (min(self.config.batch_size, n),), generator=self.generator)
            loss = self._loss(index) / self.config.grad_accumulation
            loss.backward()
            total += float(loss.detach())
        self.optimizer.step()
        self.last_loss = total
        return total

    @property
    def done(self) -> bool:
        return self.steps_done >= self.total_steps

    def embedding(self) -> Embedding:
        """The vectors so far as an :class:`Embedding` (float32, on the CPU), ready to save or register."""
        return Embedding(self.config.name, self.vectors.detach().float().cpu().clone(), step=self.steps_done,
                         sd_checkpoint=None, sd_checkpoint_name=self.model.name)

    # -- checkpoints -------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything a resumed job needs to continue exactly: tensors (for safetensors) and plain values."""
        opt = self.optimizer.state.get(self.vectors, {})
        tensors = {"vectors": self.vectors.detach().cpu().clone(),
                   "generator": self.generator.get_state().clone()}
        for key in ("exp_avg", "exp_avg_sq", "step"):
            if key in opt:
                tensors[f"adam.{key}"] = torch.as_tensor(opt[key]).detach().cpu().clone()
        return {"tensors": tensors, "steps_done": self.steps_done, "captions": self.captions.getstate()}

    def load_state(self, state: dict[str, Any]) -> None:
        tensors = state["tensors"]
        with torch.no_grad():
            self.vectors.copy_(tensors["vectors"].to(self.vectors.device))
        self.generator.set_state(tensors["generator"])
        if "adam.exp_avg" in tensors:
            self.optimizer.state[self.vectors] = {
                "exp_avg": tensors["adam.exp_avg"].to(self.vectors.device),
                "exp_avg_sq": tensors["adam.exp_avg_sq"].to(self.vectors.device),
                "step": tensors["adam.step"].float(),
            }
        self.steps_done = int(state["steps_done"])
        captions_state = state["captions"]
        self.captions.setstate(_as_random_state(captions_state))


def _as_random_state(value: Any) -> tuple[Any, ...]:
    """``random.Random`` state back from JSON (lists) or as kept in memory (tuples)."""
    version, internal, gauss = value
    return (version, tuple(internal), gauss)
