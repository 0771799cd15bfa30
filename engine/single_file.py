"""A1111 single-file checkpoints (``.safetensors``, ``.ckpt``) loaded offline and safely.

diffusers' ``from_single_file`` would fetch configs from the hub; we hand it a shipped weight-less skeleton
instead, chosen from the checkpoint's own keys. ``.ckpt`` files are pickles: they are only ever read with
``torch.load(weights_only=True)``, and one that needs arbitrary code is refused with a message saying how to
convert it, never loaded another way.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

SKELETONS = Path(__file__).parent / "assets" / "skeletons"
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")

_SD1_TEXT = "cond_stage_model.transformer."
_SD2_TEXT = "cond_stage_model.model."
_UNET = "model.diffusion_model."


class CheckpointError(ValueError):
    """The file is not a usable SD checkpoint; the message says why and what to do."""


def _refusal(name: str, exc: Exception) -> CheckpointError:
    """The one-line refusal of a pickle that wants code run; names what it wanted when torch says."""
    from engine.adapters.files import wanted_global

    wanted = wanted_global(exc)
    return CheckpointError(
        f"{name}: this checkpoint needs arbitrary code to unpickle{wanted}, which Atelier refuses for safety; "
        "convert it to .safetensors with a tool you trust and load that"
    )


def _one_line(exc: Exception, limit: int = 240) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a single-file checkpoint, read without running any code from the file."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"{path.name}: not a valid .safetensors file ({_one_line(exc)})") from None
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _refusal(path.name, exc) from None
    except Exception as exc:
        raise CheckpointError(f"{path.name}: cannot read checkpoint ({_one_line(exc)})") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise CheckpointError(f"{path.name}: holds no state dict")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


def checkpoint_keys(path: Path) -> list[str]:
    """The tensor names of a checkpoint; cheap for safetensors (header only)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                return list(fh.keys())
        except Exception as exc:
            raise CheckpointError(f"{path.name}: not a valid .safetensors file ({_one_line(exc)})") from None
    return list(read_state_dict(path))


def detect_family(keys: list[str], name: str = "checkpoint") -> str:
    """``sd1`` (CLIP ViT-L text encoder) or ``sd2`` (OpenCLIP ViT-H); anything else is refused."""
    if not any(k.startswith(_UNET) for k in keys):
        raise CheckpointError(
            f"{name}: no UNet weights (model.diffusion_model.*) — not a Stable Diffusion checkpoint"
            " (a LoRA, VAE or embedding file belongs elsewhere)"
        )
    if any(k.startswith(_SD2_TEXT) for k in keys):
        return "sd2"
    if any(k.startswith(_SD1_TEXT) for k in keys):
        return "sd1"
    if any(k.startswith("conditioner.embedders.") for k in keys):
        raise CheckpointError(f"{name}: an SDXL checkpoint; only SD 1.x and 2.x single files are supported yet")
    raise CheckpointError(f"{name}: unknown text encoder layout; only SD 1.x and 2.x checkpoints are supported")


def default_skeleton(family: str) -> Path:
    return SKELETONS / ("sd15" if family == "sd1" else "sd2")


def load_single_file(path: Path, config_dir: Path | None, dtype: torch.dtype) -> tuple[Any, str]:
    """Build a StableDiffusionPipeline from an A1111 file and its skeleton; returns (pipeline, family)."""
    from diffusers import StableDiffusionPipeline

    family = detect_family(checkpoint_keys(path), path.name)
    skeleton = config_dir or default_skeleton(family)
    if not (skeleton / "model_index.json").is_file():
        raise CheckpointError(f"model config folder {skeleton} has no model_index.json")
    try:
        pipe = StableDiffusionPipeline.from_single_file(
            str(path), config=str(skeleton), local_files_only=True, dtype=dtype,
            safety_checker=None, requires_safety_checker=False,
        )
    except pickle.UnpicklingError as exc:
        raise _refusal(path.name, exc) from None
    except (ValueError, RuntimeError, KeyError) as exc:
        if "meta tensor" in str(exc):  # accelerate leaves weights the file lacks on the meta device
            raise CheckpointError(
                f"{path.name}: the file lacks weights the {skeleton.name} architecture needs "
                "(a truncated or partial checkpoint?)"
            ) from None
        hint = "" if config_dir else " (set model.config_dir to a matching diffusers config folder)"
        raise CheckpointError(
            f"{path.name}: weights do not fit the {skeleton.name} architecture{hint}: {_one_line(exc)}"
        ) from None
    return pipe, family


def looks_v_prediction(unet: torch.nn.Module) -> bool:
    """Whether an SD2 UNet predicts v rather than noise, from its answer on a fixed probe.

    The files carry no flag. A v-model at the last timestep answers a flat grey latent with a strongly
    negative mean offset; an epsilon model stays near it (the probe A1111 uses too).
    """
    param = next(unet.parameters())
    x = torch.full((1, unet.config.in_channels, 8, 8), 0.5, device=param.device, dtype=param.dtype)
    t = torch.tensor([999], device=param.device)
    ctx = torch.zeros((1, 77, unet.config.cross_attention_dim), device=param.device, dtype=param.dtype)
    with torch.no_grad():
        out = unet(x, t, encoder_hidden_states=ctx).sample
    return bool((out.float() - x.float()).mean() < -1)
