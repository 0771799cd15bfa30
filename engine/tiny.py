"""Tiny random-weight Stable Diffusion models, and weight-less "skeletons", built offline.

Why: tests need a real Stable Diffusion *architecture* (same component classes, same key layout, same
tokenizer) without downloading gigabytes from a hub that no machine here can reach. A tiny model with random
weights is built from configs in a fraction of a second, is bit-for-bit deterministic for a seed, and runs the
whole pipeline on a CPU in well under a second. It is useless for pictures and perfect for plumbing.

What is here:

* :func:`build_tiny_components` — tokenizer, text encoder, UNet, VAE and scheduler in memory (``family="sd1"``
  or ``"sd2"``; the SD2 flavour has SD 2.x's structural traits: linear transformer projections, per-block head
  counts, GELU text encoder, pad token ``"!"``).
* :func:`save_tiny_diffusers` — the same as a diffusers-layout directory (``from_pretrained``-loadable).
* :func:`save_tiny_skeleton` — configs and tokenizer only: the ``config=`` directory that
  ``from_single_file`` needs to load a tiny single file offline.
* :func:`save_tiny_single_file` — an A1111/LDM-layout single file (``.safetensors``, or ``.ckpt`` holding
  ``{"state_dict": ...}``) via :mod:`engine.export`; SD1 files carry ``cond_stage_model.transformer.*``, SD2
  files ``cond_stage_model.model.*`` (OpenCLIP layout), so the loader's family detection can be tested.
* :func:`write_skeleton` — the generic writer, shared with ``scripts/build_skeletons.py``.
* :func:`build_random_pipeline_from_skeleton` — a *full-size* random-weight pipeline from a shipped skeleton,
  for benchmarks only (same FLOPs and memory as the real model; see its docstring for the cost).

The tiny architecture: UNet block_out (32, 64) with 2 layers per block and cross-attention in both blocks
(so attention exists at two widths, as hypernetwork tests need), cross-attention dim 32; CLIP text encoder with
hidden size 32, 2 layers and the real 49408-token vocabulary; a VAE that downsamples ×8 like real SD
(4 blocks, 64×64 image ↔ 8×8×4 latent), which keeps UNet work small, so batching behaves as on a GPU (a batch
costs little more than one image). About 3.5 M parameters, almost half of them the token embedding.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

Family = Literal["sd1", "sd2"]

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
TOKENIZER_DIR = ASSETS_DIR / "tokenizer"
SKELETONS_DIR = ASSETS_DIR / "skeletons"

BOS_ID, EOS_ID = 49406, 49407
VOCAB_SIZE = 49408
SD1_PAD_TOKEN = "<|endoftext|>"  # id 49407, as in SD 1.x's tokenizer
SD2_PAD_TOKEN = "!"  # id 0: SD 2.x (OpenCLIP) pads with zeros, which is "!" in CLIP's vocabulary
PAD_TOKENS: dict[str, str] = {"sd1": SD1_PAD_TOKEN, "sd2": SD2_PAD_TOKEN}

TINY_CROSS_ATTENTION_DIM = 32
TINY_IMAGE_SIZE = 64  # pixels; the latent is 8×8


def sd_scheduler_config(prediction_type: str = "epsilon") -> dict[str, Any]:
    """The PNDM scheduler config every Stable Diffusion 1.x/2.x release ships (only the prediction differs).

    ``clip_sample`` is not a PNDM argument; it is kept because the real configs carry it and other schedulers
    built ``from_config`` (DDIM) read it.
    """
    return {
        "_class_name": "PNDMScheduler",
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "trained_betas": None,
        "skip_prk_steps": True,
        "set_alpha_to_one": False,
        "clip_sample": False,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "prediction_type": prediction_type,
    }


def tiny_unet_config(family: Family = "sd1", cross_attention_dim: int = TINY_CROSS_ATTENTION_DIM) -> dict[str, Any]:
    """UNet2DConditionModel kwargs of the tiny model; ``sd2`` adds SD 2.x's linear projections and head list."""
    config: dict[str, Any] = {
        "sample_size": TINY_IMAGE_SIZE // 8,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (32, 64),
        "layers_per_block": 2,
        "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": cross_attention_dim,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    }
    if family == "sd2":
        # diffusers' "attention_head_dim" is really the head *count* per block (SD2: [5, 10, 20, 20]).
        config.update(attention_head_dim=(2, 4), use_linear_projection=True)
    return config


def tiny_vae_config() -> dict[str, Any]:
    """AutoencoderKL kwargs: four blocks, so ×8 spatial downsampling exactly as in real SD, but narrow."""
    return {
        "sample_size": TINY_IMAGE_SIZE,
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "block_out_channels": (16, 32, 32, 32),
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "layers_per_block": 1,
        "norm_num_groups": 8,
    }


def tiny_text_config(family: Family = "sd1", hidden_size: int = TINY_CROSS_ATTENTION_DIM) -> dict[str, Any]:
    """CLIPTextConfig kwargs: real vocabulary and 77-token context, tiny width and depth."""
    return {
        "vocab_size": VOCAB_SIZE,
        "max_position_embeddings": 77,
        "hidden_size": hidden_size,
        "intermediate_size": hidden_size * 2,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "projection_dim": hidden_size,
        "hidden_act": "quick_gelu" if family == "sd1" else "gelu",
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": EOS_ID if family == "sd1" else 0,
    }


@dataclass
class TinyComponents:
    """The five pipeline components of a tiny model (random weights, eval mode, CPU, float32)."""

    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    scheduler: PNDMScheduler
    family: Family

    def pipeline_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``StableDiffusionPipeline(**kwargs)``: no safety checker, offline, no warning."""
        return {
            "tokenizer": self.tokenizer,
            "text_encoder": self.text_encoder,
            "unet": self.unet,
            "vae": self.vae,
            "scheduler": self.scheduler,
            "safety_checker": None,
            "feature_extractor": None,
            "requires_safety_checker": False,
        }

    def pipeline(self) -> StableDiffusionPipeline:
        """A stock ``StableDiffusionPipeline`` over these components (handy for reference comparisons)."""
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline(**self.pipeline_kwargs())


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator for the block and restore the caller's RNG state afterwards.

    Module constructors draw their initial weights from the global generator; forking it keeps the tiny
    builders deterministic without disturbing whatever randomness the caller relies on.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def load_tokenizer(family: Family = "sd1", tokenizer_dir: Path | None = None) -> CLIPTokenizer:
    """The real CLIP tokenizer from ``engine/assets`` with the family's pad token (SD1 ``<|endoftext|>``, SD2 ``!``)."""
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(tokenizer_dir or TOKENIZER_DIR))
    if tok.pad_token != PAD_TOKENS[family]:
        tok.pad_token = PAD_TOKENS[family]
    return tok


def _build_models(
    family: Family, device: torch.device | str | None
) -> tuple[CLIPTextModel, UNet2DConditionModel, AutoencoderKL]:
    """Instantiate the three tiny networks (on ``device``, e.g. ``"meta"`` for configs without weights)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device(device or "cpu"):
        text_encoder = CLIPTextModel(CLIPTextConfig(**tiny_text_config(family)))
        unet = UNet2DConditionModel(**tiny_unet_config(family))
        vae = AutoencoderKL(**tiny_vae_config())
    for model in (text_encoder, unet, vae):
        model.eval().requires_grad_(False)
    return text_encoder, unet, vae


def build_tiny_components(seed: int = 0, family: Family = "sd1", prediction_type: str = "epsilon") -> TinyComponents:
    """Build a tiny random-weight SD model in memory; the same ``seed`` gives bit-identical weights.

    Takes about 0.1 s after the imports (torch/diffusers/transformers imports themselves take seconds).
    The global torch RNG state is left as it was. ``family="sd2"`` gives the SD 2.x-flavoured architecture
    (see :func:`tiny_unet_config`); ``prediction_type`` goes into the scheduler config.
    """
    from diffusers import PNDMScheduler

    with _seeded(seed):
        text_encoder, unet, vae = _build_models(family, device="cpu")
    scheduler = PNDMScheduler.from_config(sd_scheduler_config(prediction_type))
    return TinyComponents(load_tokenizer(family), text_encoder, unet, vae, scheduler, family)


def _model_index() -> dict[str, Any]:
    """model_index.json of a plain SD pipeline without safety checker (works offline, no warning)."""
    import diffusers

    return {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def copy_tokenizer(out_dir: Path, pad_token: str = SD1_PAD_TOKEN, source_dir: Path | None = None) -> None:
    """Copy the shipped tokenizer files into ``out_dir``, setting ``pad_token`` in its two small JSON files.

    This is how the SD2 variant exists without a second derivation: the vocabulary and merges are the same
    bytes, only the pad token differs.
    """
    source = source_dir or TOKENIZER_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(source / name, out_dir / name)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        data = json.loads((source / name).read_text(encoding="utf-8"))
        data["pad_token"] = pad_token
        (out_dir / name).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def write_skeleton(
    out_dir: Path,
    *,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    scheduler_config: dict[str, Any],
    pad_token: str = SD1_PAD_TOKEN,
) -> Path:
    """Write a weight-less diffusers-layout directory: model_index.json, component configs, tokenizer.

    The models may live on the meta device: only their configs are written. This is exactly what
    ``StableDiffusionPipeline.from_single_file(path, config=out_dir, local_files_only=True)`` reads, so single
    files load without a hub.
    """
    import diffusers

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / "model_index.json", _model_index())
    unet.save_config(out_dir / "unet")
    vae.save_config(out_dir / "vae")
    text_config = text_encoder.config.to_dict()
    for noise in ("dtype", "torch_dtype", "id2label", "label2id"):  # run-time or classification-only fields
        text_config.pop(noise, None)
    text_config["architectures"] = [type(text_encoder).__name__]
    _write_json(out_dir / "text_encoder" / "config.json", text_config)
    scheduler = dict(scheduler_config, _diffusers_version=diffusers.__version__)
    _write_json(out_dir / "scheduler" / "scheduler_config.json", scheduler)
    copy_tokenizer(out_dir / "tokenizer", pad_token=pad_token)
    return out_dir


def save_tiny_skeleton(out_dir: Path, family: Family = "sd1", prediction_type: str = "epsilon") -> Path:
    """Write the tiny model's skeleton (configs and tokenizer, no weights) to ``out_dir``; returns it."""
    text_encoder, unet, vae = _build_models(family, device="meta")
    return write_skeleton(
        out_dir,
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        scheduler_config=sd_scheduler_config(prediction_type),
        pad_token=PAD_TOKENS[family],
    )


def save_tiny_diffusers(out_dir: Path, seed: int = 0, family: Family = "sd1", prediction_type: str = "epsilon") -> Path:
    """Write a tiny model as a diffusers directory (safetensors weights); returns ``out_dir``.

    Load it with ``StableDiffusionPipeline.from_pretrained(out_dir, local_files_only=True,
    safety_checker=None, requires_safety_checker=False)``. About 15 MB on disk.
    """
    parts = build_tiny_components(seed, family, prediction_type)
    out_dir = write_skeleton(
        Path(out_dir),
        unet=parts.unet,
        vae=parts.vae,
        text_encoder=parts.text_encoder,
        scheduler_config=sd_scheduler_config(prediction_type),
        pad_token=PAD_TOKENS[family],
    )
    parts.unet.save_pretrained(out_dir / "unet")
    parts.vae.save_pretrained(out_dir / "vae")
    parts.text_encoder.save_pretrained(out_dir / "text_encoder")
    return out_dir


def save_tiny_single_file(path: Path, seed: int = 0, family: Family = "sd1") -> Path:
    """Write a tiny model as an A1111/LDM single file; ``.ckpt`` gives ``torch.save({"state_dict": ...})``.

    Load it offline with ``from_single_file(path, config=<save_tiny_skeleton(dir, family)>,
    local_files_only=True, ...)``. The weights equal ``build_tiny_components(seed, family)``'s.
    """
    from engine.export import save_single_file

    parts = build_tiny_components(seed, family)
    return save_single_file(path, parts.unet, parts.vae, parts.text_encoder, family=family)


def _cast(model: torch.nn.Module, dtype: torch.dtype) -> Any:
    """Cast a freshly built model's floats to ``dtype``.

    Goes through ``torch.nn.Module.to`` on purpose: diffusers 0.42's ``ModelMixin.to(dtype)`` logs a
    "should be kept in float32: []" warning on every dtype cast, even when nothing must stay in float32.
    """
    return torch.nn.Module.to(model, dtype=dtype)


def build_random_pipeline_from_skeleton(
    skeleton_dir: Path,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> StableDiffusionPipeline:
    """A full-size random-weight pipeline built from a skeleton (e.g. ``SKELETONS_DIR / "sd15"``). Benchmarks only.

    Same architecture, FLOPs and memory traffic as the real model, so timings transfer; the images are noise.
    Cost for SD1.5 (1.07 G parameters): each network is initialised in float32 on ``device`` (PyTorch's
    default init, seeded) and cast before the next is built, so the peak is the float32 UNet (3.4 GB) plus the
    rest: 4.3 GB of weights in float32, 2.1 GB in float16 once built. Measured on a 2-core CPU: 19 s and
    4.6 GB peak RSS in float32, 16 s and 3.8 GB in float16 (SD2: 21 s, 5.5 GB in float32); one float32 UNet
    evaluation of a 2×4×64×64 batch then takes about 11 s. float16 is for GPUs only (CPU half-precision
    convolutions are far slower still). Build on the device you will run on. Never used in tests.
    """
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    skeleton_dir = Path(skeleton_dir)
    with _seeded(seed), torch.device(device):
        unet = _cast(UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(skeleton_dir / "unet")), dtype)
        vae = _cast(AutoencoderKL.from_config(AutoencoderKL.load_config(skeleton_dir / "vae")), dtype)
        text_encoder = _cast(CLIPTextModel(CLIPTextConfig.from_pretrained(skeleton_dir / "text_encoder")), dtype)
    for model in (text_encoder, unet, vae):
        model.eval().requires_grad_(False)
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(str(skeleton_dir / "tokenizer")),
        unet=unet,
        scheduler=PNDMScheduler.from_pretrained(skeleton_dir / "scheduler"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
