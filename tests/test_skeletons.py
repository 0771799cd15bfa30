"""The shipped weight-less skeletons describe the real SD1.5 / SD2.x architectures.

Each network is instantiated from the shipped configs on the meta device (shapes only, no memory) and its
parameter count compared with the real model's published count, so a wrong number anywhere in a config fails.
"""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from engine.tiny import SKELETONS_DIR

# millions of parameters, two decimals, as usually quoted
EXPECTED_M = {
    "sd15": {"unet": 859.52, "vae": 83.65, "text_encoder": 123.06},
    "sd2": {"unet": 865.91, "vae": 83.65, "text_encoder": 340.39},
    "sd2-base": {"unet": 865.91, "vae": 83.65, "text_encoder": 340.39},
}
PREDICTION = {"sd15": "epsilon", "sd2": "v_prediction", "sd2-base": "epsilon"}
SAMPLE_SIZE = {"sd15": 64, "sd2": 96, "sd2-base": 64}


def _millions(model: torch.nn.Module) -> float:
    return round(sum(p.numel() for p in model.parameters()) / 1e6, 2)


@pytest.mark.parametrize("name", sorted(EXPECTED_M))
def test_parameter_counts_on_meta_device(name: str) -> None:
    root = SKELETONS_DIR / name
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(root / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder"))
    counts = {"unet": _millions(unet), "vae": _millions(vae), "text_encoder": _millions(text_encoder)}
    assert counts == EXPECTED_M[name]
    assert unet.config.sample_size == SAMPLE_SIZE[name]
    assert unet.config.cross_attention_dim == text_encoder.config.hidden_size


@pytest.mark.parametrize("name", sorted(EXPECTED_M))
def test_skeleton_files_and_scheduler(name: str) -> None:
    root = SKELETONS_DIR / name
    index = json.loads((root / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None] and index["feature_extractor"] == [None, None]
    assert index["requires_safety_checker"] is False
    scheduler = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "PNDMScheduler"
    assert scheduler["prediction_type"] == PREDICTION[name]
    expected = {
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "steps_offset": 1,
        "skip_prk_steps": True,
        "set_alpha_to_one": False,
        "clip_sample": False,
        "num_train_timesteps": 1000,
    }
    assert {k: scheduler[k] for k in expected} == expected
    weights = [p for p in root.rglob("*") if p.suffix in (".safetensors", ".bin", ".ckpt", ".pt")]
    assert weights == []


def test_sd2_traits() -> None:
    for name in ("sd2", "sd2-base"):
        unet = UNet2DConditionModel.load_config(SKELETONS_DIR / name / "unet")
        assert unet["use_linear_projection"] is True
        assert list(unet["attention_head_dim"]) == [5, 10, 20, 20]
        text = json.loads((SKELETONS_DIR / name / "text_encoder" / "config.json").read_text())
        assert (text["hidden_act"], text["num_hidden_layers"], text["projection_dim"]) == ("gelu", 23, 512)
    sd15 = json.loads((SKELETONS_DIR / "sd15" / "text_encoder" / "config.json").read_text())
    assert sd15["hidden_act"] == "quick_gelu"
