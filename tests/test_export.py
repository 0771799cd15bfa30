"""diffusers → A1111 single file, and back through diffusers' own ``from_single_file``, offline.

The round trip is the real test of the key mapping: diffusers loads single files non-strictly (a key it does
not find is silently left at its initial value), so every parameter is first given a random value and then
compared exactly after loading; a dropped or misnamed key cannot pass by coinciding with a default (norm
weights of 1, biases of 0).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import load_file

from engine.export import ldm_state_dict, save_single_file, unet_to_ldm, vae_to_ldm
from engine.tiny import Family, TinyComponents, build_tiny_components, save_tiny_single_file, save_tiny_skeleton

NETWORKS = ("unet", "vae", "text_encoder")


def _randomized(family: Family) -> TinyComponents:
    parts = build_tiny_components(seed=7, family=family)
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name in NETWORKS:
            for param in getattr(parts, name).parameters():
                param.copy_(torch.randn(param.shape, generator=gen))
    return parts


def _load(path: Path, skeleton: Path) -> StableDiffusionPipeline:
    return StableDiffusionPipeline.from_single_file(
        str(path), config=str(skeleton), local_files_only=True, safety_checker=None, requires_safety_checker=False
    )


def _assert_identical(source: TinyComponents, loaded: StableDiffusionPipeline) -> None:
    for name in NETWORKS:
        want, got = getattr(source, name).state_dict(), getattr(loaded, name).state_dict()
        assert want.keys() == got.keys(), name
        assert [k for k in want if not torch.equal(want[k], got[k])] == [], name


@pytest.mark.parametrize(("family", "suffix"), [("sd1", ".safetensors"), ("sd2", ".safetensors"), ("sd1", ".ckpt")])
def test_round_trip_through_from_single_file(tmp_path: Path, family: Family, suffix: str) -> None:
    parts = _randomized(family)
    path = save_single_file(tmp_path / f"tiny{suffix}", parts.unet, parts.vae, parts.text_encoder, family)
    pipe = _load(path, save_tiny_skeleton(tmp_path / "skeleton", family))
    _assert_identical(parts, pipe)
    assert pipe.tokenizer.pad_token_id == (0 if family == "sd2" else 49407)


def test_family_layouts(tmp_path: Path) -> None:
    sd1 = load_file(save_tiny_single_file(tmp_path / "sd1.safetensors", family="sd1"))
    sd2 = load_file(save_tiny_single_file(tmp_path / "sd2.safetensors", family="sd2"))
    assert "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight" in sd1
    assert not any(k.startswith("cond_stage_model.model.") for k in sd1)
    assert "cond_stage_model.model.token_embedding.weight" in sd2
    assert not any(k.startswith("cond_stage_model.transformer.") for k in sd2)
    in_proj = sd2["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"]
    assert in_proj.shape == (3 * 32, 32)  # q, k, v fused
    assert sd1["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4  # LDM's 1×1 conv attention
    for sd in (sd1, sd2):
        assert {k.split(".")[0] for k in sd} == {"model", "first_stage_model", "cond_stage_model"}


def test_single_file_weights_equal_the_seeded_build(tmp_path: Path) -> None:
    parts = build_tiny_components(seed=3)
    written = load_file(save_tiny_single_file(tmp_path / "t.safetensors", seed=3))
    expected = ldm_state_dict(parts.unet, parts.vae, parts.text_encoder, "sd1")
    assert written.keys() == expected.keys()
    assert all(torch.equal(written[k], expected[k]) for k in expected)


def test_full_size_sd15_key_layout_on_meta() -> None:
    """The mapping reproduces the real SD1.5 file's key counts and landmark names (no weights needed)."""
    with torch.device("meta"):
        unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8)
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
        )
    unet_keys = unet_to_ldm(unet.state_dict(), layers_per_block=2)
    vae_keys = vae_to_ldm(vae.state_dict())
    assert (len(unet_keys), len(vae_keys)) == (686, 248)
    for key in (
        "model.diffusion_model.input_blocks.3.0.op.weight",
        "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight",
        "model.diffusion_model.middle_block.1.proj_in.weight",
        "model.diffusion_model.output_blocks.2.1.conv.weight",
        "model.diffusion_model.output_blocks.5.2.conv.weight",
        "model.diffusion_model.output_blocks.11.0.skip_connection.weight",
        "model.diffusion_model.out.2.bias",
    ):
        assert key in unet_keys, key
    for key in (
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight",
        "first_stage_model.decoder.up.3.upsample.conv.weight",
        "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight",
        "first_stage_model.encoder.mid.attn_1.proj_out.weight",
    ):
        assert key in vae_keys, key


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="no A1111/LDM equivalent"):
        unet_to_ldm({"add_embedding.linear_1.weight": torch.zeros(1)}, layers_per_block=2)
    with pytest.raises(ValueError, match="unknown model family"):
        parts = build_tiny_components()
        ldm_state_dict(parts.unet, parts.vae, parts.text_encoder, "sdxl")  # type: ignore[arg-type]
