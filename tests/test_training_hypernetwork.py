"""Hypernetwork training: only the network learns, a checkpoint resumes exactly, the result works in prompts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine.adapters.hypernetwork import read_hypernetwork, write_hypernetwork_safetensors
from engine.adapters.library import AdapterLibrary
from engine.pipeline import Pipeline
from engine.requests import GenerationRequest
from engine.training.hypernetwork import HypernetworkTrainConfig, HypernetworkTrainer
from engine.training.images import TrainingImage


def _images(n: int = 3) -> list[TrainingImage]:
    rng = np.random.default_rng(1)
    return [TrainingImage(f"{i}.png", Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)),
                          "grainy", f"{i:064x}") for i in range(n)]


def _trainer(model, **options) -> HypernetworkTrainer:
    config = HypernetworkTrainConfig(**{"name": "grain", "steps": 10, "lr": "0.001", "batch_size": 2, **options})
    return HypernetworkTrainer(model, _images(), config)


def _weights(model) -> dict[str, torch.Tensor]:
    return {f"{name}.{k}": v.clone() for name in ("unet", "text_encoder", "vae")
            for k, v in getattr(model, name).state_dict().items()}


def test_only_the_network_learns_and_it_covers_every_attention_width(tiny_model) -> None:
    before = _weights(tiny_model)
    trainer = _trainer(tiny_model)
    unet = tiny_model.unet.config
    assert trainer.network.widths() == {unet.cross_attention_dim, *unet.block_out_channels}
    start = [p.detach().clone() for p in trainer.trainable()]
    losses = [trainer.step() for _ in range(3)]
    assert all(np.isfinite(losses))
    assert any(not torch.equal(a, p) for a, p in zip(start, trainer.trainable(), strict=True))
    after = _weights(tiny_model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_checkpoint_resumes_the_same_run(tiny_model) -> None:
    straight = _trainer(tiny_model)
    for _ in range(4):
        straight.step()
    first = _trainer(tiny_model)
    for _ in range(2):
        first.step()
    resumed = _trainer(tiny_model)
    resumed.load_state(first.state())
    for _ in range(2):
        resumed.step()
    assert all(torch.equal(a, b) for a, b in zip(straight.trainable(), resumed.trainable(), strict=True))


def test_the_trained_network_works_in_prompts(tiny_model, tmp_path: Path) -> None:
    trainer = _trainer(tiny_model, lr="0.05")
    for _ in range(3):
        trainer.step()
    network = trainer.finished_network()
    assert network.spec.step == 3
    path = write_hypernetwork_safetensors(network, tmp_path / "grain.safetensors")
    assert read_hypernetwork(path).widths() == network.widths()
    library = AdapterLibrary()
    library.register("hypernetwork", "grain", path, None, {})
    pipeline = Pipeline(tiny_model, library=library)
    try:
        styled, plain = pipeline.generate([GenerationRequest("a cat <hypernet:grain:1>", seed=2, steps=4),
                                           GenerationRequest("a cat", seed=2, steps=4)])
        assert "Hypernet hashes: \"grain: " in styled[0].infotext
        assert np.abs(styled[0].pixels - plain[0].pixels).mean() > 1e-4
    finally:
        pipeline.encoder.close()
