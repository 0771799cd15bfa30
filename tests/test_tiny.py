"""The tiny random-weight model builders: deterministic, ×8 VAE like real SD, diffusers directory round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline

from engine.tiny import TinyComponents, build_tiny_components, save_tiny_diffusers, save_tiny_skeleton


def _weights(parts: TinyComponents) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{key}": value
        for name in ("unet", "vae", "text_encoder")
        for key, value in getattr(parts, name).state_dict().items()
    }


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


@pytest.fixture(scope="module")
def tiny() -> TinyComponents:
    return build_tiny_components(seed=0)


def test_same_seed_same_weights_other_seed_differs(tiny: TinyComponents) -> None:
    _assert_same(_weights(tiny), _weights(build_tiny_components(seed=0)))
    other = _weights(build_tiny_components(seed=1))
    assert not torch.equal(other["unet.conv_in.weight"], tiny.unet.conv_in.weight)


def test_builder_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_components(seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_shapes_match_real_sd_ratios(tiny: TinyComponents) -> None:
    assert list(tiny.unet.config.block_out_channels) == [32, 64]
    assert tiny.unet.config.cross_attention_dim == tiny.text_encoder.config.hidden_size == 32
    assert tiny.text_encoder.config.vocab_size == len(tiny.tokenizer) == 49408
    with torch.no_grad():
        latent = tiny.vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean
    assert latent.shape == (1, 4, 8, 8)  # ×8 downsampling, 4 latent channels
    assert tiny.tokenizer.pad_token_id == 49407
    assert build_tiny_components(family="sd2").tokenizer.pad_token_id == 0


def test_sd2_flavour() -> None:
    parts = build_tiny_components(family="sd2", prediction_type="v_prediction")
    assert parts.unet.config.use_linear_projection is True
    assert parts.text_encoder.config.hidden_act == "gelu"
    assert parts.scheduler.config.prediction_type == "v_prediction"


def test_pipeline_runs(tiny: TinyComponents) -> None:
    pipe = tiny.pipeline()
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        ["a cat", "a dog"],
        num_inference_steps=2,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    assert out.images.shape == (2, 64, 64, 3)


def test_diffusers_directory_round_trip(tmp_path: Path, tiny: TinyComponents) -> None:
    out = save_tiny_diffusers(tmp_path / "tiny", seed=0)
    pipe = StableDiffusionPipeline.from_pretrained(
        out, local_files_only=True, safety_checker=None, requires_safety_checker=False
    )
    loaded = TinyComponents(pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae, pipe.scheduler, "sd1")
    _assert_same(_weights(tiny), _weights(loaded))
    assert pipe.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert not (out / "tokenizer" / "tokenizer.json").exists()


def test_skeleton_has_configs_and_tokenizer_only(tmp_path: Path) -> None:
    out = save_tiny_skeleton(tmp_path / "skel", family="sd2")
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "unet/config.json",
        "vae/config.json",
    ]
    assert json.loads((out / "tokenizer" / "tokenizer_config.json").read_text())["pad_token"] == "!"
    assert json.loads((out / "unet" / "config.json").read_text())["use_linear_projection"] is True
