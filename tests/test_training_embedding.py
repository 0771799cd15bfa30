"""Textual inversion: only the vectors learn, steps are reproducible, a checkpoint resumes the same run exactly,
and the result works in prompts through the same path as any embedding file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.adapters.embeddings import read_embedding, write_embedding_safetensors
from engine.adapters.library import AdapterLibrary
from engine.pipeline import Pipeline
from engine.prompts.encoding import PromptEncoder
from engine.requests import GenerationRequest, RequestError
from engine.training.embedding import EmbeddingTrainConfig, EmbeddingTrainer
from engine.training.images import TrainingImage


def _images(n: int = 4) -> list[TrainingImage]:
    rng = np.random.default_rng(0)
    return [TrainingImage(f"{i}.png", Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)),
                          "a texture" if i % 2 else "", f"{i:064x}") for i in range(n)]


@pytest.fixture
def encoder(tiny_model) -> Iterator[PromptEncoder]:
    enc = PromptEncoder(tiny_model.tokenizer, tiny_model.text_encoder, tiny_model.device, tiny_model.dtype)
    yield enc
    enc.close()


def _trainer(model, encoder: PromptEncoder, **options) -> EmbeddingTrainer:
    config = EmbeddingTrainConfig(**{"name": "zzwoof", "vectors": 2, "init_text": "cat", "steps": 20,
                                     "lr": "0.05", "batch_size": 2, **options})
    return EmbeddingTrainer(model, encoder, _images(), config)


def _weights(model) -> dict[str, torch.Tensor]:
    return {f"{name}.{k}": v.clone() for name in ("unet", "text_encoder", "vae")
            for k, v in getattr(model, name).state_dict().items()}


def test_only_the_vectors_change(tiny_model, encoder: PromptEncoder) -> None:
    before = _weights(tiny_model)
    trainer = _trainer(tiny_model, encoder)
    start = trainer.vectors.detach().clone()
    table = tiny_model.text_encoder.get_input_embeddings().weight
    cat = tiny_model.tokenizer("cat", add_special_tokens=False).input_ids[0]
    assert torch.equal(start[0], table[cat].float()) and torch.equal(start[1], table[cat].float())
    losses = [trainer.step() for _ in range(3)]
    assert all(np.isfinite(losses))
    assert not torch.equal(trainer.vectors.detach(), start)
    after = _weights(tiny_model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_same_seed_same_vectors_and_a_checkpoint_resumes_the_same_run(tiny_model,
                                                                       encoder: PromptEncoder) -> None:
    straight = _trainer(tiny_model, encoder, grad_accumulation=2)
    for _ in range(6):
        straight.step()
    twin = _trainer(tiny_model, encoder, grad_accumulation=2)
    for _ in range(6):
        twin.step()
    assert torch.equal(straight.vectors, twin.vectors)

    first = _trainer(tiny_model, encoder, grad_accumulation=2)
    for _ in range(3):
        first.step()
    state = first.state()
    state = {**state, "captions": json.loads(json.dumps(state["captions"]))}  # as stored beside the tensors
    resumed = _trainer(tiny_model, encoder, grad_accumulation=2)
    resumed.load_state(state)
    for _ in range(3):
        resumed.step()
    assert resumed.steps_done == 6
    assert torch.equal(resumed.vectors, straight.vectors)
    other = _trainer(tiny_model, encoder, grad_accumulation=2, seed=1)
    other.step()
    assert not torch.equal(other.vectors, _trainer(tiny_model, encoder, grad_accumulation=2).vectors)


def test_the_learning_rate_schedule_sets_rates_and_ends_training(tiny_model, encoder: PromptEncoder) -> None:
    trainer = _trainer(tiny_model, encoder, lr="0.01:2, 0.001:3", steps=100)
    assert trainer.total_steps == 3
    rates = []
    while not trainer.done:
        trainer.step()
        rates.append(trainer.optimizer.param_groups[0]["lr"])
    assert rates == [0.01, 0.01, 0.001]
    with pytest.raises(RuntimeError, match="finished"):
        trainer.step()
    with pytest.raises(RequestError, match="vectors: between 1 and 75"):
        _trainer(tiny_model, encoder, vectors=0)
    with pytest.raises(RequestError, match="lr part 1"):
        _trainer(tiny_model, encoder, lr="quick")


def test_the_trained_embedding_works_in_prompts(tiny_model, encoder: PromptEncoder, tmp_path: Path) -> None:
    trainer = _trainer(tiny_model, encoder)
    with torch.no_grad():
        trainer.vectors.mul_(25.0)  # far from any word, so its effect on the image is unmistakable
    path = write_embedding_safetensors(trainer.embedding(), tmp_path / "zzwoof.safetensors")
    loaded = read_embedding(path)
    assert loaded.n_vectors == 2 and torch.equal(loaded.vectors, trainer.vectors.detach())
    library = AdapterLibrary()
    library.register("embedding", "zzwoof", path, None, {})
    pipeline = Pipeline(tiny_model, library=library)
    try:
        with_it, without = pipeline.generate([GenerationRequest("a photo of zzwoof", seed=3, steps=4),
                                              GenerationRequest("a photo of", seed=3, steps=4)])
        assert "zzwoof: " in with_it[0].infotext  # recorded as an embedding, by hash
        assert np.abs(with_it[0].pixels - without[0].pixels).mean() > 1e-3
    finally:
        pipeline.encoder.close()
