"""Loading a model into the components our own denoising loop runs on.

Three sources, one result (:class:`LoadedModel`): a local diffusers directory, an A1111 single file (offline,
through a shipped skeleton), or a hub id (online only, and only when allowed). Every failure is a
:class:`ModelLoadError` with one sentence an operator can act on.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.devices import choose_device, choose_dtype
from engine.hashing import model_hash
from engine.single_file import SINGLE_FILE_SUFFIXES, CheckpointError, load_single_file, looks_v_prediction

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


class ModelLoadError(RuntimeError):
    """The model cannot be loaded; the message says which source and why."""


@dataclass
class LoadedModel:
    """A model's components on their device, plus what infotext needs to name it."""

    tokenizer: Any
    text_encoder: Any
    unet: Any
    vae: Any
    scheduler_config: dict[str, Any]
    device: torch.device
    dtype: torch.dtype
    name: str
    source: str
    path: Path | None = None
    family: str = "sd1"
    cache_dir: Path | None = None
    _hash: str | None = field(default=None, repr=False)

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def native_size(self) -> tuple[int, int]:
        """(width, height) the model was trained at: the UNet's sample size in pixels."""
        side = int(self.unet.config.sample_size) * self.vae_scale
        return side, side

    @property
    def hash(self) -> str:
        """A1111 short model hash, computed on first use (cached on disk by path/size/mtime)."""
        if self._hash is None:
            if self.path is None:
                self._hash = "0" * 10
            else:
                cache = self.cache_dir / "hashes.json" if self.cache_dir else None
                self._hash = model_hash(self.path, cache)
        return self._hash


def _finish(pipe: Any, *, device: torch.device, dtype: torch.dtype, name: str, source: str,
            path: Path | None, family: str, cache_dir: Path | None) -> LoadedModel:
    for module in (pipe.text_encoder, pipe.unet, pipe.vae):
        module.to(device=device)  # already in ``dtype``: loaded with it
        module.eval()
        module.requires_grad_(False)
    return LoadedModel(
        tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, unet=pipe.unet, vae=pipe.vae,
        scheduler_config=dict(pipe.scheduler.config), device=device, dtype=dtype, name=name, source=source,
        path=path, family=family, cache_dir=cache_dir,
    )


def _load_directory(path: Path, dtype: torch.dtype) -> Any:
    from diffusers import StableDiffusionPipeline

    if not (path / "model_index.json").is_file():
        raise ModelLoadError(f"{path}: not a diffusers model folder (no model_index.json)")
    try:
        return StableDiffusionPipeline.from_pretrained(
            str(path), dtype=dtype, local_files_only=True,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelLoadError(f"{path}: cannot load diffusers model: {str(exc)[:300]}") from None


def _load_hub(model_id: str, dtype: torch.dtype, cache_dir: Path | None) -> Any:
    from diffusers import StableDiffusionPipeline

    try:
        return StableDiffusionPipeline.from_pretrained(
            model_id, dtype=dtype, cache_dir=str(cache_dir / "hub") if cache_dir else None,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    except Exception as exc:  # hub errors come in many types (HTTP, offline, missing files)
        raise ModelLoadError(f"hub model {model_id!r}: download or load failed: {str(exc)[:300]}") from None


def resolve_source(source: str, search_dirs: tuple[Path, ...] = ()) -> Path | str:
    """A local path if ``source`` names one (as given, or inside a models folder), else the hub id."""
    candidates = [Path(source).expanduser()] + [d / source for d in search_dirs]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    if _HUB_ID.match(source) and not source.startswith((".", "/", "~")):
        return source
    raise ModelLoadError(f"model not found: {source!r} is neither an existing path nor a hub id (owner/name)")


def load_model(
    source: str,
    *,
    config_dir: str | Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
    allow_download: bool = True,
    cache_dir: Path | None = None,
    search_dirs: tuple[Path, ...] = (),
) -> LoadedModel:
    """Load ``source`` (diffusers dir, A1111 file, or hub id) onto the chosen device and dtype."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    # transformers announces optional image-processor backends (torchvision) on import; operators need none.
    transformers_logging.set_verbosity_error()
    torch_device = choose_device(device)
    torch_dtype = choose_dtype(dtype, torch_device)
    resolved = resolve_source(source, search_dirs)
    family = "sd1"
    if isinstance(resolved, str):
        if not allow_download:
            raise ModelLoadError(f"model {resolved!r} is a hub id, but model.allow_download is false")
        pipe = _load_hub(resolved, torch_dtype, cache_dir)
        path, name = None, resolved.split("/")[-1]
    elif resolved.is_dir():
        pipe = _load_directory(resolved, torch_dtype)
        path, name = resolved, resolved.name
    elif resolved.suffix.lower() in SINGLE_FILE_SUFFIXES:
        skeleton = Path(config_dir) if config_dir else None
        try:
            pipe, family = load_single_file(resolved, skeleton, torch_dtype)
        except CheckpointError as exc:
            raise ModelLoadError(str(exc)) from None
        path, name = resolved, resolved.stem
        if family == "sd2" and skeleton is None and not looks_v_prediction(pipe.unet):
            pipe.scheduler.register_to_config(prediction_type="epsilon")
    else:
        raise ModelLoadError(
            f"{resolved}: unsupported model file type {resolved.suffix!r}; "
            f"use a diffusers folder or one of {', '.join(SINGLE_FILE_SUFFIXES)}"
        )
    model = _finish(pipe, device=torch_device, dtype=torch_dtype, name=name, source=source, path=path,
                    family=family, cache_dir=cache_dir)
    log.info("loaded model %s (%s) on %s as %s", name, family, torch_device, str(torch_dtype).split(".")[-1])
    return model
