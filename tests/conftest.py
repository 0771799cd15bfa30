"""Shared fixtures: tiny random-weight SD models built offline (engine/tiny.py), once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# The machine may be shared and has 2 cores; keep torch from oversubscribing them.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD 1.x model in diffusers layout (seed 0)."""
    from engine.tiny import save_tiny_diffusers

    return save_tiny_diffusers(tmp_path_factory.mktemp("tiny-diffusers") / "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_skeleton_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The weight-less skeleton matching the tiny SD 1.x model (what model.config_dir points at)."""
    from engine.tiny import save_tiny_skeleton

    return save_tiny_skeleton(tmp_path_factory.mktemp("tiny-skeleton") / "sd1", family="sd1")


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path):
    """The tiny model loaded on the CPU in float32."""
    from engine.loading import load_model

    return load_model(str(tiny_model_dir), device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_model):
    from engine.pipeline import Pipeline

    return Pipeline(tiny_model, max_batch=8)
