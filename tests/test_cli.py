"""The atelier command: generate writes A1111-compatible PNGs; mistakes are one line and a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from bot.cli import main
from engine.images import read_infotext
from engine.infotext import parse_infotext

ROOT = Path(__file__).resolve().parent.parent


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], code: int = 2) -> str:
    assert main(argv) == code
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    return lines[0]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--sampler", "Eulr"], "unknown sampler"),
        (["--size", "500x512"], "multiples of 8"),
        (["--size", "big"], "WIDTHxHEIGHT"),
        (["--steps", "0"], "--steps"),
        (["--steps", "abc"], "invalid int"),
        (["--count", "0"], "--count"),
        (["--subseed-strength", "2"], "variation strength"),
        (["--size", "4096x4096"], "max_pixels"),
    ],
)
def test_bad_arguments_are_one_line(capsys: pytest.CaptureFixture[str], args: list[str], words: str) -> None:
    line = _one_line_error(capsys, ["generate", "a cat", *args])
    assert line.startswith("atelier: ") and words in line


def test_missing_model_and_bad_config_are_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    line = _one_line_error(capsys, ["generate", "x", "--model", str(tmp_path / "nope")], code=1)
    assert "model not found" in line
    bad = tmp_path / "bad.toml"
    bad.write_text("[queue]\nmax_batch_size = -1\n")
    line = _one_line_error(capsys, ["generate", "x", "--config", str(bad)])
    assert "queue.max_batch_size" in line
    empty_models = tmp_path / "c.toml"
    empty_models.write_text(f'[paths]\nmodels = "{tmp_path / "models"}"\n')
    line = _one_line_error(capsys, ["generate", "x", "--config", str(empty_models)], code=1)
    assert "model.source" in line
    assert "required" in _one_line_error(capsys, ["generate"])


def test_generate_writes_pngs_with_infotext(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                            tiny_model_dir: Path) -> None:
    code = main(["generate", "a red circle", "--negative", "blue", "--model", str(tiny_model_dir), "--seed", "5",
                 "--count", "2", "--steps", "3", "--cfg", "6.5", "--sampler", "dpm++ 2m karras",
                 "--subseed", "9", "--subseed-strength", "0.2", "--out", str(tmp_path / "out"), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    paths = [Path(p) for p in captured.out.splitlines()]
    assert [p.name for p in paths] == ["00000-5.png", "00001-6.png"]
    infos = [parse_infotext(read_infotext(p) or "") for p in paths]
    assert [i.params["Seed"] for i in infos] == ["5", "6"]
    assert [i.params["Variation seed"] for i in infos] == ["9", "10"]
    assert infos[0].prompt == "a red circle" and infos[0].negative_prompt == "blue"
    assert infos[0].params["Sampler"] == "DPM++ 2M Karras" and infos[0].params["CFG scale"] == "6.5"
    with Image.open(paths[0]) as shown:  # upscaled 8× for display; the infotext keeps the native size
        assert shown.size == (512, 512) and infos[0].params["Size"] == "64x64"


def test_generate_as_a_process_uses_the_config_and_shows_progress(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = tmp_path / "atelier.toml"
    config.write_text(f'[model]\nsource = "{tiny_model_dir}"\ndevice = "cpu"\nthreads = 1\n'
                      f'[paths]\noutputs = "outs"\ncache = "cache"\n'
                      '[generation]\nsteps = 2\nsampler = "DDIM"\n')
    env = {**os.environ, "ATELIER_CONFIG": str(config)}
    proc = subprocess.run([sys.executable, "-m", "bot", "generate", "a cat", "--seed", "1"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    path = Path(line)
    assert path.is_file() and path.is_relative_to(tmp_path / "outs" / "txt2img")
    params = parse_infotext(read_infotext(path) or "").params
    assert (params["Steps"], params["Sampler"], params["Model"]) == ("2", "DDIM", "tiny")
    assert "generating" in proc.stderr  # the progress bar
    assert (tmp_path / "cache" / "hashes.json").is_file()
