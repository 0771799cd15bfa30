"""Settings → engine options: the model fallback and the adapter folders a model brings with it."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import parse_settings
from bot.wiring import NoModelConfigured, engine_options


def _settings(tmp_path: Path, source: str = ""):
    return parse_settings({"model": {"source": source},
                           "paths": {"models": str(tmp_path / "models"), "embeddings": str(tmp_path / "emb"),
                                     "hypernetworks": str(tmp_path / "hn")}}, base_dir=tmp_path, environ={})


def test_a_model_folder_brings_its_own_adapters_after_the_configured_ones(tmp_path: Path) -> None:
    demo = tmp_path / "models" / "demo"
    (demo / "embeddings").mkdir(parents=True)
    (demo / "model_index.json").write_text("{}")
    options = engine_options(_settings(tmp_path))  # no source: the bundled demo model
    assert options.model == str(demo)
    assert options.embedding_dirs == (tmp_path / "emb", demo / "embeddings")
    assert options.hypernetwork_dirs == (tmp_path / "hn",)  # the folder has none


def test_a_hub_id_or_file_brings_no_folders(tmp_path: Path) -> None:
    options = engine_options(_settings(tmp_path, "runwayml/stable-diffusion-v1-5"))
    assert options.embedding_dirs == (tmp_path / "emb",) and options.hypernetwork_dirs == (tmp_path / "hn",)
    with pytest.raises(NoModelConfigured):
        engine_options(_settings(tmp_path))
