"""Hypernetwork training on the serving model: only the network's modules learn.

The network is applied by the same attention processor generation uses (:mod:`engine.adapters.attention`): the
prompt context through its k/v modules for cross-attention, the hidden states for self-attention. So a trained
network behaves in ``<hypernet:name:1>`` exactly as it did in training. A1111's defaults: layer structure
1, 2, 1, linear activation, normal initialisation, learning rate 1e-5 (users report divergence above that).
The modules stay float32; on a half-precision GPU model the UNet call runs under autocast.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from engine.adapters.attention import BatchAdapters, chain_contexts, install
from engine.adapters.compat import loaded_widths
from engine.adapters.hypernetwork import (
    Hypernetwork,
    HypernetworkSpec,
    create_hypernetwork,
    write_hypernetwork_safetensors,
)
from engine.requests import RequestError
from engine.training.core import DiffusionTrainer, TrainConfig

if TYPE_CHECKING:
    from engine.loading import LoadedModel
    from engine.training.images import TrainingImage
    from engine.training.schedule import LearningRateSchedule


@dataclass(frozen=True)
class HypernetworkTrainConfig(TrainConfig):
    """Hypernetwork options; A1111's defaults."""

    lr: str = "0.00001"
    template_set: str = "style"
    spec: HypernetworkSpec = field(default_factory=HypernetworkSpec)
    # Attention widths to make modules for (A1111's "Modules" choice, e.g. 768 only for the text context);
    # empty = every width an attention layer of the model sees.
    widths: tuple[int, ...] = ()

    def check(self) -> LearningRateSchedule:
        if any(w < 1 for w in self.widths):
            raise RequestError(f"modules: widths are positive numbers, got {list(self.widths)}")
        return super().check()


class HypernetworkTrainer(DiffusionTrainer):
    """Trains one new hypernetwork with a module pair for every attention width of the model."""

    def __init__(self, model: LoadedModel, images: list[TrainingImage], config: HypernetworkTrainConfig, *,
                 latents: torch.Tensor | None = None, network: Hypernetwork | None = None) -> None:
        super().__init__(model, images, config, latents=latents)
        self.config: HypernetworkTrainConfig = config
        self.caption_name = config.name
        install(model.unet)  # idempotent: the processor that applies hypernetworks per row
        available = sorted(loaded_widths(model).attention)
        unknown = [w for w in config.widths if w not in available]
        if unknown:
            raise RequestError(f"modules: this model's attention layers see widths {available}; no layer sees "
                               f"{unknown}")
        widths = sorted(config.widths) or available
        self.network = network or create_hypernetwork(config.name, widths, config.spec, seed=config.seed)
        self.network.to(model.device, torch.float32).train()
        for param in self.network.parameters():
            param.requires_grad_(True)
        self._params = list(self.network.parameters())

    def trainable(self) -> list[torch.nn.Parameter]:
        return self._params

    def conditioning(self, captions: list[str]) -> tuple[torch.Tensor, dict[str, Any]]:
        tokenizer = self.model.tokenizer
        ids = tokenizer(captions, padding="max_length", max_length=int(tokenizer.model_max_length),
                        truncation=True, return_tensors="pt").input_ids.to(self.model.device)
        with torch.no_grad():
            context = self.model.text_encoder(ids)[0].float()
        chain = ((self.network, 1.0),)
        k, v = chain_contexts(chain, context)
        dtype = self.model.unet.dtype
        adapters = BatchAdapters(cross_k=k.to(dtype), cross_v=v.to(dtype), self_chains=[chain] * len(captions))
        return context, {"cross_attention_kwargs": {"adapters": adapters}}

    def finished_network(self) -> Hypernetwork:
        """The network in evaluation mode (dropout off), with its step count recorded as A1111 does."""
        self.network.eval()
        self.network.spec = replace(self.network.spec, step=self.steps_done, sd_checkpoint_name=self.model.name)
        return self.network

    def save(self, path: Path) -> Path:
        """Write the network so far; a save mid-run (checkpoint preview) leaves it in training mode."""
        written = write_hypernetwork_safetensors(self.finished_network(), path)
        if not self.done:
            self.network.train()
        return written
