"""Turning settings into engine objects: the one place the application decides what the engine gets."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bot.config import Settings
from engine.service import EngineOptions

if TYPE_CHECKING:
    from engine.ray.backend import RayOptions

DEMO_MODEL_DIR = "demo"


class NoModelConfigured(RuntimeError):
    """No model is configured and the bundled demo model is not there."""


def model_source(settings: Settings, override: str | None = None) -> str:
    """The model to load: an explicit override, else model.source, else the bundled demo model."""
    if override:
        return override
    if settings.model.source:
        return settings.model.source
    demo = settings.path(settings.paths.models) / DEMO_MODEL_DIR
    if (demo / "model_index.json").is_file():
        return str(demo)
    raise NoModelConfigured(
        f"no model configured and no demo model at {demo}: set model.source in config.toml "
        "(a diffusers folder, an A1111 .safetensors file, or a hub id) or pass --model"
    )


def bundled_adapter_dirs(source: str) -> tuple[tuple[Path, ...], tuple[Path, ...]]:
    """A model folder's own ``embeddings/`` and ``hypernetworks/`` (the demo model ships one of each).

    Why inside the model's folder: an adapter fits only the model family it was trained on (a width-64 demo
    embedding cannot serve SD 1.5), so adapters made for one model travel with it and are seen only while it is
    the loaded model.
    """
    folder = Path(source)
    if not folder.is_dir():
        return (), ()
    return tuple(p for p in [folder / "embeddings"] if p.is_dir()), tuple(
        p for p in [folder / "hypernetworks"] if p.is_dir())


def adapter_dirs(settings: Settings, source: str | None = None) -> tuple[tuple[Path, ...], tuple[Path, ...]]:
    """The library folders: the configured ones, then those bundled with the model (a same name: configured wins)."""
    bundled_embeddings, bundled_hypernetworks = bundled_adapter_dirs(source) if source else ((), ())
    return ((settings.path(settings.paths.embeddings), *bundled_embeddings),
            (settings.path(settings.paths.hypernetworks), *bundled_hypernetworks))


def ray_options(settings: Settings) -> RayOptions:
    """The Ray backend's placement from ``[backend]`` (imports no Ray)."""
    from engine.ray.backend import RayOptions

    b = settings.backend
    return RayOptions(address=b.ray_address, replicas=b.replicas, max_replicas=b.max_replicas,
                      target_ongoing_requests=b.target_ongoing_requests, upscale_delay_s=b.upscale_delay_s,
                      downscale_delay_s=b.downscale_delay_s, num_gpus=b.gpus_per_replica,
                      num_cpus=b.cpus_per_replica, retries=b.retries)


def engine_options(settings: Settings, model_override: str | None = None) -> EngineOptions:
    m = settings.model
    config_dir = str(settings.path(m.config_dir)) if m.config_dir else ""
    source = model_source(settings, model_override)
    embedding_dirs, hypernetwork_dirs = adapter_dirs(settings, source)
    return EngineOptions(
        model=source,
        config_dir=config_dir,
        device=m.device,
        dtype=m.dtype,
        threads=m.threads,
        allow_download=m.allow_download,
        cache_dir=settings.path(settings.paths.cache),
        search_dirs=(settings.path(settings.paths.models), settings.base_dir),
        max_batch=settings.queue.max_batch_size,
        pixel_budget=settings.queue.pixel_budget,
        max_jobs_per_user=settings.queue.max_jobs_per_user,
        max_queued=settings.queue.max_queued,
        collect_window_ms=settings.queue.collect_window_ms,
        preview_every=settings.queue.preview_every,
        shutdown_timeout_s=settings.queue.shutdown_timeout_s,
        background_share=settings.queue.background_share,
        embedding_dirs=embedding_dirs,
        hypernetwork_dirs=hypernetwork_dirs,
    )
