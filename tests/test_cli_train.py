"""``atelier train``: images from disk (captions from .txt beside them), the result in the library, refusals as
one line and a usage exit, and a finished name not silently overwritten."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.cli import EXIT_USAGE, main
from engine.adapters.embeddings import read_embedding
from engine.adapters.hypernetwork import read_hypernetwork


@pytest.fixture()
def config(tmp_path: Path, tiny_model_dir: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[model]\nsource = "{tiny_model_dir.as_posix()}"\n'
        f'[paths]\ndata = "{(tmp_path / "data").as_posix()}"\n'
        f'embeddings = "{(tmp_path / "emb").as_posix()}"\n'
        f'hypernetworks = "{(tmp_path / "hn").as_posix()}"\n'
    )
    return path


def _pictures(folder: Path, n: int = 3) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(4)
    paths = []
    for i in range(n):
        path = folder / f"pic{i}.png"
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    (folder / "pic0.txt").write_text("a noisy square\n")
    return paths


def test_train_an_embedding_into_the_library(tmp_path: Path, config: Path, capsys) -> None:
    images = _pictures(tmp_path / "pics")
    argv = ["train", "embedding", "zzgrain", *images, "--steps", "3", "--vectors", "2", "--template", "plain",
            "--checkpoint-every", "2", "--quiet", "--config", str(config)]
    assert main(argv) == 0
    out = tmp_path / "emb" / "zzgrain.safetensors"
    assert capsys.readouterr().out.strip() == str(out)
    embedding = read_embedding(out)
    assert embedding.n_vectors == 2 and embedding.step == 3
    assert (tmp_path / "data" / "training" / "embedding" / "zzgrain" / "state.safetensors").is_file()
    assert main(argv) == EXIT_USAGE  # the name is taken
    assert "exists; choose another name or pass --force" in capsys.readouterr().err


def test_train_a_hypernetwork(tmp_path: Path, config: Path, capsys) -> None:
    images = _pictures(tmp_path / "pics")
    assert main(["train", "hypernetwork", "grainy", *images, "--steps", "2", "--lr", "1e-4", "--quiet",
                 "--config", str(config)]) == 0
    assert read_hypernetwork(tmp_path / "hn" / "grainy.safetensors").spec.step == 2


def test_bad_images_are_named(tmp_path: Path, config: Path, capsys) -> None:
    images = _pictures(tmp_path / "pics", n=3)
    fake = tmp_path / "pics" / "fake.png"
    fake.write_text("not a picture")
    code = main(["train", "embedding", "zz", *images[:2], str(fake), "--quiet", "--config", str(config)])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert "2 usable image(s); training needs at least 3" in err and "fake.png: not a PNG" in err
    assert main(["train", "embedding", "bad name", *images, "--config", str(config)]) == EXIT_USAGE
    assert main(["train", "embedding", "zz", *images, "--vectors", "99", "--steps", "1", "--config",
                 str(config)]) == EXIT_USAGE
    assert "vectors: between 1 and 75" in capsys.readouterr().err
