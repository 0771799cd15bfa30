"""The demo-model trainer: smoke run end to end, a learning check that can fail, and determinism.

The smoke config shrinks data, widths and steps (``DemoTrainConfig.resolved``) so the whole module runs in
seconds on two CPU cores; the real run is ``scripts/train_demo_model.py``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.demo.train import (
    DemoTrainConfig,
    build_demo_components,
    cache_latents,
    train_demo_model,
    train_unet_and_text,
    train_vae,
)

SMOKE = DemoTrainConfig(smoke=True)


def _blocks(n: int = 8, size: int = 64) -> tuple[np.ndarray, list[str]]:
    """Flat-colour squares on flat backgrounds, with captions; no dependency on the dataset module."""
    rng = np.random.default_rng(0)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    captions = []
    for i in range(n):
        images[i] = rng.integers(0, 256, 3)
        x, y = rng.integers(0, size // 2, 2)
        images[i, y:y + size // 3, x:x + size // 3] = rng.integers(0, 256, 3)
        captions.append(f"a square number {i}" if i % 4 else "")
    return images, captions


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lines: list[str] = []
    out = train_demo_model(SMOKE, tmp_path_factory.mktemp("demo") / "demo", log=lines.append)
    assert any(line.startswith("unet step") for line in lines)
    return out


def test_smoke_run_writes_a_small_loadable_model(smoke_dir: Path) -> None:
    from engine.loading import load_model
    from engine.pipeline import Pipeline
    from engine.requests import GenerationRequest

    size = sum(f.stat().st_size for f in smoke_dir.rglob("*") if f.is_file())
    assert size < 40 * 2**20
    stats = json.loads((smoke_dir / "train_stats.json").read_text())
    assert math.isfinite(stats["vae"]["loss"]) and math.isfinite(stats["unet"]["loss"])
    assert stats["scaling_factor"] > 0

    model = load_model(str(smoke_dir), device="cpu", dtype="float32")
    assert model.native_size == (64, 64)
    assert model.vae_scale == 4
    assert model.tokenizer.pad_token == "<|endoftext|>"
    [[image]] = Pipeline(model).generate([GenerationRequest("a small red circle on a blue background", steps=3,
                                                            seed=1, cfg_scale=5.0)])
    assert image.pixels.shape == (64, 64, 3)
    assert np.isfinite(image.pixels).all()


def test_full_config_is_the_designed_architecture() -> None:
    """×4 VAE (16×16×4 latents for 64×64 images), cross-attention UNet, real vocabulary; folder fits 40 MB."""
    parts = build_demo_components(DemoTrainConfig())
    assert len(parts.vae.config.block_out_channels) == 3
    assert parts.unet.config.sample_size == 16
    assert parts.unet.config.cross_attention_dim == parts.text_encoder.config.hidden_size
    assert parts.text_encoder.config.vocab_size == len(parts.tokenizer) == 49408
    params = sum(p.numel() for m in (parts.vae, parts.unet, parts.text_encoder) for p in m.parameters())
    assert params * 2 < 38 * 2**20  # saved as float16


def test_unet_loss_falls_on_a_fixed_batch() -> None:
    """Fitting one batch with fixed noise must lower the loss clearly; broken gradients or wiring fail this."""
    torch.manual_seed(0)
    images, captions = _blocks()
    cfg = dataclasses.replace(SMOKE.resolved(), vae_steps=2, unet_steps=40, warmup_steps=3,
                              unet_lr=2e-3, text_lr=2e-3, log_every=10**9)
    parts = build_demo_components(cfg)
    train_vae(parts.vae, images, cfg, log=lambda _: None)
    latents = cache_latents(parts.vae, images)
    assert latents.std().item() == pytest.approx(1.0, rel=1e-3)
    stats = train_unet_and_text(parts, latents, captions, cfg, log=lambda _: None, fixed_batch=True)
    losses = stats["losses"]
    assert all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3])


def _trained_state(seed: int) -> dict[str, torch.Tensor]:
    images, captions = _blocks()
    cfg = dataclasses.replace(SMOKE, seed=seed).resolved()
    cfg = dataclasses.replace(cfg, vae_steps=2, unet_steps=2, log_every=10**9)
    parts = build_demo_components(cfg)
    train_vae(parts.vae, images, cfg, log=lambda _: None)
    latents = cache_latents(parts.vae, images)
    train_unet_and_text(parts, latents, captions, cfg, log=lambda _: None)
    return {f"{name}.{k}": v.clone() for name in ("vae", "unet", "text_encoder")
            for k, v in getattr(parts, name).state_dict().items()}


def test_same_seed_gives_identical_weights() -> None:
    a, b, c = _trained_state(0), _trained_state(0), _trained_state(1)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_ema_writes_the_averaged_weights_and_can_keep_the_last_ones() -> None:
    """With EMA on, the models end with the average (not the last step's weights, which ``keep_raw`` returns)."""
    images, captions = _blocks()
    cfg = dataclasses.replace(SMOKE.resolved(), vae_steps=2, unet_steps=6, warmup_steps=1, log_every=10**9,
                              ema_decay=0.9, keep_raw=True)
    parts = build_demo_components(cfg)
    train_vae(parts.vae, images, cfg, log=lambda _: None)
    latents = cache_latents(parts.vae, images)
    before = [p.detach().clone() for p in parts.unet.parameters()]
    raw = train_unet_and_text(parts, latents, captions, cfg, log=lambda _: None)["raw_weights"]
    after = list(parts.unet.parameters())
    raw_unet = raw[:len(after)]
    assert all(r.shape == a.shape for r, a in zip(raw_unet, after, strict=True))
    assert not all(torch.equal(r, a) for r, a in zip(raw_unet, after, strict=True))  # averaged, not the last
    assert not all(torch.equal(b, a) for b, a in zip(before, after, strict=True))  # but it did train
    off = dataclasses.replace(cfg, ema_decay=0.0)
    assert train_unet_and_text(build_demo_components(off), latents, captions, off,
                               log=lambda _: None)["raw_weights"] is None


def test_shape_weights_reweigh_the_loss_within_a_sample() -> None:
    """Uniform weights change nothing; weight on some cells moves the loss toward those cells' error."""
    from engine.demo.train import _diffusion_loss
    from engine.training.core import alphas_cumprod

    cfg = SMOKE.resolved()
    parts = build_demo_components(cfg)
    acp = alphas_cumprod(parts.scheduler_config)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ids = torch.full((2, 77), 49407)

    def loss(weights: torch.Tensor | None) -> float:
        with torch.no_grad():
            return float(_diffusion_loss(parts.unet, parts.text_encoder, latents, ids, acp,
                                         torch.Generator().manual_seed(1), 0.0, 5.0, 0.0, "v_prediction",
                                         weights=weights))

    plain, uniform = loss(None), loss(torch.ones(2, 1, 8, 8))
    corner = torch.full((2, 1, 8, 8), 0.5)
    corner[:, :, :2, :2] = 8.5  # mean 1, as dataset.shape_weights gives
    assert math.isclose(plain, uniform, rel_tol=1e-6)
    assert not math.isclose(plain, loss(corner), rel_tol=1e-3)


def test_model_card_lists_other_runs_beside_this_one(smoke_dir: Path, tmp_path: Path) -> None:
    """The card's spread table: readers see how far another seed of the recipe lands from the shipped one."""
    import importlib.util
    import shutil

    spec = importlib.util.spec_from_file_location("train_demo_model", Path(__file__).resolve().parent.parent
                                                  / "scripts" / "train_demo_model.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    def scores(shape: float) -> dict:
        row = {"colour": 1.0, "shape": shape, "background": 1.0, "position": 0.2, "size": 1.0, "all_correct": 0.2,
               "n": 96}
        return {"in_distribution": row, "held_out": {**row, "shape": shape - 0.125}}

    shipped, other = tmp_path / "shipped", tmp_path / "other"
    shutil.copytree(smoke_dir, shipped)
    (shipped / "scores.json").write_text(json.dumps(scores(0.875)))
    other.mkdir()
    stats = json.loads((smoke_dir / "train_stats.json").read_text())
    stats["config"]["seed"] = 7
    (other / "train_stats.json").write_text(json.dumps(stats))
    (other / "scores.json").write_text(json.dumps(scores(0.5)))

    script.record_seed_runs(shipped, [other])
    card = script.write_model_card(shipped).read_text()
    rows = [line for line in card.splitlines() if line.startswith(("| 0 (shipped) |", "| 7 |"))]
    assert len(rows) == 2, card
    assert "87.5 %" in rows[0] and "75.0 %" in rows[0]  # shape, held-out shape of the shipped run
    assert "50.0 %" in rows[1] and "37.5 %" in rows[1]
