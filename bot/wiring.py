"""Turning settings into engine objects: the one place the application decides what the engine gets."""

from __future__ import annotations

from bot.config import Settings
from engine.service import EngineOptions

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


def engine_options(settings: Settings, model_override: str | None = None) -> EngineOptions:
    m = settings.model
    config_dir = str(settings.path(m.config_dir)) if m.config_dir else ""
    return EngineOptions(
        model=model_source(settings, model_override),
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
        embedding_dirs=(settings.path(settings.paths.embeddings),),
        hypernetwork_dirs=(settings.path(settings.paths.hypernetworks),),
    )
