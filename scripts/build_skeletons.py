"""Write the weight-less diffusers "skeletons" in ``engine/assets/skeletons/`` (sd15, sd2, sd2-base).

Why: diffusers' ``from_single_file`` needs a diffusers-layout config directory to turn an A1111 checkpoint into
pipeline components, and without one it downloads the configs from a model hub (even with
``local_files_only=True``). A skeleton is that directory without weights: ``model_index.json``, the configs of
UNet, VAE and text encoder, the scheduler config and the tokenizer. We generate them from the published
architecture numbers of Stable Diffusion 1.5 and 2.1 rather than copy anyone's files; each model is
instantiated on the meta device (no memory, no weights) and its parameter count checked against the known
figure before anything is written.

Run from the repository root after ``scripts/build_tokenizer.py``::

    .venv/bin/python scripts/build_skeletons.py
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.tiny import (  # importable because of the path insert above (run as a script)
    SD1_PAD_TOKEN,
    SD2_PAD_TOKEN,
    SKELETONS_DIR,
    sd_scheduler_config,
    write_skeleton,
)

SD_BLOCKS = (320, 640, 1280, 1280)
SD_DOWN = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
SD_UP = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")


def sd_unet_config(sd2: bool, sample_size: int, upcast_attention: bool = False) -> dict[str, Any]:
    """UNet2DConditionModel kwargs of SD 1.5 (``sd2=False``) or SD 2.x (``sd2=True``)."""
    config: dict[str, Any] = {
        "sample_size": sample_size,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": SD_BLOCKS,
        "layers_per_block": 2,
        "down_block_types": SD_DOWN,
        "up_block_types": SD_UP,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,  # diffusers' legacy name: SD1 has 8 heads in every block
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "act_fn": "silu",
    }
    if sd2:
        # SD2 fixes the head *size* at 64, so the head count grows with the width: 5, 10, 20, 20.
        config.update(
            cross_attention_dim=1024,
            attention_head_dim=[5, 10, 20, 20],
            use_linear_projection=True,
            upcast_attention=upcast_attention,
        )
    return config


def sd_vae_config(sample_size: int) -> dict[str, Any]:
    """AutoencoderKL kwargs shared by SD 1.x and 2.x (the same f=8, 4-channel KL autoencoder)."""
    return {
        "sample_size": sample_size,
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "block_out_channels": (128, 256, 512, 512),
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "act_fn": "silu",
        "scaling_factor": 0.18215,
    }


def sd_text_config(sd2: bool) -> dict[str, Any]:
    """CLIPTextConfig kwargs: SD1 = OpenAI CLIP ViT-L/14 text tower; SD2 = OpenCLIP ViT-H/14 minus its last layer."""
    common = {
        "vocab_size": 49408,
        "max_position_embeddings": 77,
        "layer_norm_eps": 1e-5,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
    }
    if sd2:
        return {
            **common,
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 23,  # SD2 conditions on the penultimate of OpenCLIP's 24 layers
            "num_attention_heads": 16,
            "hidden_act": "gelu",
            "projection_dim": 512,
            "pad_token_id": 0,
        }
    return {
        **common,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "hidden_act": "quick_gelu",
        "projection_dim": 768,
        "pad_token_id": 49407,
    }


# name → SD2 or not, image size, prediction type, whether attention is upcast to float32 (SD 2.1 768-v)
SKELETONS: dict[str, dict[str, Any]] = {
    "sd15": {"sd2": False, "size": 512, "prediction": "epsilon", "upcast": False},
    "sd2": {"sd2": True, "size": 768, "prediction": "v_prediction", "upcast": True},  # SD 2.x 768-v
    "sd2-base": {"sd2": True, "size": 512, "prediction": "epsilon", "upcast": False},  # SD 2.x 512 base
}

EXPECTED_PARAMS = {  # published parameter counts (exact) of the real models
    False: {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    True: {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840},
}


def build_meta_models(name: str) -> dict[str, torch.nn.Module]:
    """Instantiate one skeleton's three networks on the meta device (shapes only, no memory)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    spec = SKELETONS[name]
    with torch.device("meta"):
        return {
            "unet": UNet2DConditionModel(**sd_unet_config(spec["sd2"], spec["size"] // 8, spec["upcast"])),
            "vae": AutoencoderKL(**sd_vae_config(spec["size"])),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**sd_text_config(spec["sd2"]))),
        }


def check_params(name: str, models: dict[str, torch.nn.Module]) -> None:
    """Raise unless every network has exactly the real model's parameter count."""
    expected = EXPECTED_PARAMS[SKELETONS[name]["sd2"]]
    for part, model in models.items():
        count = sum(p.numel() for p in model.parameters())
        if count != expected[part]:
            raise RuntimeError(f"{name}/{part}: {count} parameters, expected {expected[part]}")


def build(name: str, out_root: Path) -> Path:
    """Write one skeleton folder under ``out_root`` (replacing an old one) and return its path."""
    spec = SKELETONS[name]
    models = build_meta_models(name)
    check_params(name, models)
    out_dir = out_root / name
    if out_dir.exists():
        shutil.rmtree(out_dir)
    return write_skeleton(
        out_dir,
        unet=models["unet"],
        vae=models["vae"],
        text_encoder=models["text_encoder"],
        scheduler_config=sd_scheduler_config(spec["prediction"]),
        pad_token=SD2_PAD_TOKEN if spec["sd2"] else SD1_PAD_TOKEN,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=SKELETONS_DIR, help=f"output root (default {SKELETONS_DIR})")
    parser.add_argument("names", nargs="*", default=list(SKELETONS), help="skeletons to build (default: all)")
    args = parser.parse_args(argv)
    for name in args.names:
        print(f"wrote {build(name, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
