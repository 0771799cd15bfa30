"""What every adapter trainer shares: cached latents, the noise objective, seeded steps, exact checkpoints.

A trainer says which tensors learn (:meth:`DiffusionTrainer.trainable`) and how captions become the UNet's
conditioning (:meth:`DiffusionTrainer.conditioning`); the base does the rest. The frozen model is the serving
model itself — no copy — so training costs only the trainable tensors, their optimizer state and activations.

Determinism: one ``torch.Generator`` draws the batches, timesteps and noise, one ``random.Random`` the caption
templates; both are part of :meth:`DiffusionTrainer.state`, with the trainable tensors and AdamW's moments, so a
job resumed from a checkpoint takes exactly the steps it would have taken.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from engine.requests import RequestError
from engine.training.schedule import LearningRateSchedule
from engine.training.templates import TEMPLATE_SETS, fill

if TYPE_CHECKING:
    from engine.loading import LoadedModel
    from engine.training.images import TrainingImage


@dataclass(frozen=True)
class TrainConfig:
    """The options both kinds share (A1111's defaults where it has one; ``lr`` in A1111's schedule syntax)."""

    name: str
    steps: int = 1000
    lr: str = "0.005"
    batch_size: int = 1
    grad_accumulation: int = 1
    template_set: str = "object"
    seed: int = 0

    def check(self) -> LearningRateSchedule:
        """Validate; returns the parsed schedule. :class:`RequestError` names the option and what is allowed."""
        if self.steps < 1:
            raise RequestError(f"steps: at least 1, got {self.steps}")
        if self.batch_size < 1 or self.grad_accumulation < 1:
            raise RequestError("batch_size and grad_accumulation: at least 1")
        if self.template_set not in TEMPLATE_SETS:
            raise RequestError(f"template_set {self.template_set!r}: choose one of {', '.join(TEMPLATE_SETS)}")
        return LearningRateSchedule.parse(self.lr)


def alphas_cumprod(scheduler_config: dict[str, Any]) -> torch.Tensor:
    """ᾱ_t of the model's training schedule (as diffusers computes it from the scheduler config)."""
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


class DiffusionTrainer:
    """One optimizer step per :meth:`step`; subclasses provide the trainable tensors and the conditioning."""

    #: what ``[name]`` becomes in a caption (the embedding trainer's placeholder, or the name itself)
    caption_name: str

    def __init__(self, model: LoadedModel, images: list[TrainingImage], config: TrainConfig, *,
                 latents: torch.Tensor | None = None) -> None:
        self.model, self.config = model, config
        self.schedule = config.check()
        self.total_steps = self.schedule.total_steps(config.steps)
        for module in (model.unet, model.vae, model.text_encoder):
            module.requires_grad_(False)  # gradients flow only into the trainable tensors
        self.latents = latents if latents is not None else encode_latents(model, images)
        self.filewords = [item.caption for item in images]
        self.generator = torch.Generator().manual_seed(config.seed)
        self.captions = random.Random(config.seed)
        self.acp = alphas_cumprod(model.scheduler_config).to(model.device)
        self.prediction = str(model.scheduler_config.get("prediction_type", "epsilon"))
        self.steps_done = 0
        self.last_loss = float("nan")
        self._optimizer: torch.optim.Optimizer | None = None

    # -- what subclasses say -----------------------------------------------------------------------------

    def trainable(self) -> list[torch.nn.Parameter]:
        raise NotImplementedError

    def conditioning(self, captions: list[str]) -> tuple[torch.Tensor, dict[str, Any]]:
        """(context for the UNet, extra keyword arguments for its call) for ``captions``, differentiable."""
        raise NotImplementedError

    def weight_decay(self) -> float:
        return 0.0

    def save(self, path: Path) -> Path:
        """Write the trained adapter as safetensors (what the library and A1111 load)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the trainer attached to the shared model (hooks); the job calls it when it ends."""

    # -- training ----------------------------------------------------------------------------------------

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        if self._optimizer is None:
            self._optimizer = torch.optim.AdamW(self.trainable(), lr=self.schedule.rate(1),
                                                weight_decay=self.weight_decay())
        return self._optimizer

    def _loss(self, index: torch.Tensor) -> torch.Tensor:
        templates = TEMPLATE_SETS[self.config.template_set]
        captions = [fill(self.captions.choice(templates), self.caption_name, self.filewords[int(i)])
                    for i in index]
        latents = self.latents[index.to(self.latents.device)]
        b = latents.shape[0]
        t = torch.randint(0, len(self.acp), (b,), generator=self.generator).to(self.model.device)
        noise = torch.randn(latents.shape, generator=self.generator).to(self.model.device)
        a = self.acp[t].view(b, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        dtype = self.model.unet.dtype
        # A half-precision model with float32 trainable tensors: autocast lets them meet (weights stay float32).
        mixed = (torch.autocast(self.model.device.type, dtype=dtype) if dtype != torch.float32
                 else contextlib.nullcontext())
        with mixed:
            context, extra = self.conditioning(captions)
            pred = self.model.unet(noisy.to(dtype), t, encoder_hidden_states=context.to(dtype), **extra).sample
        pred = pred.float()
        target = a.sqrt() * noise - (1 - a).sqrt() * latents if self.prediction == "v_prediction" else noise
        return F.mse_loss(pred, target)

    def step(self) -> float:
        """One optimizer step over ``grad_accumulation`` batches; returns the mean loss."""
        if self.done:
            raise RuntimeError("training is finished")
        self.steps_done += 1
        optimizer = self.optimizer
        for group in optimizer.param_groups:
            group["lr"] = self.schedule.rate(self.steps_done)
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        n = len(self.latents)
        for _ in range(self.config.grad_accumulation):
            index = torch.randint(0, n, (min(self.config.batch_size, n),), generator=self.generator)
            loss = self._loss(index) / self.config.grad_accumulation
            loss.backward()
            total += float(loss.detach())
        optimizer.step()
        self.last_loss = total
        return total

    @property
    def done(self) -> bool:
        return self.steps_done >= self.total_steps

    # -- checkpoints -------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything a resumed job needs: ``tensors`` (safetensors-ready) and JSON-ready values."""
        tensors = {"generator": self.generator.get_state().clone()}
        for i, param in enumerate(self.trainable()):
            tensors[f"param.{i}"] = param.detach().cpu().clone()
            for key, value in self.optimizer.state.get(param, {}).items():
                tensors[f"adam.{i}.{key}"] = torch.as_tensor(value).detach().cpu().clone()
        return {"tensors": tensors, "steps_done": self.steps_done, "captions": list(self.captions.getstate())}

    def load_state(self, state: dict[str, Any]) -> None:
        tensors = state["tensors"]
        params = self.trainable()
        with torch.no_grad():
            for i, param in enumerate(params):
                param.copy_(tensors[f"param.{i}"].to(param.device))
                moments = {key.rsplit(".", 1)[1]: value for key, value in tensors.items()
                           if key.startswith(f"adam.{i}.")}
                if moments:
                    self.optimizer.state[param] = {
                        k: (v.float() if k == "step" else v.to(param.device)) for k, v in moments.items()}
        self.generator.set_state(tensors["generator"])
        self.steps_done = int(state["steps_done"])
        version, internal, gauss = state["captions"]
        self.captions.setstate((version, tuple(internal), gauss))
