"""``atelier adapters list|import|export|check`` and ``atelier generate`` with tags and embedding names."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from bot.cli import main
from engine.adapters.embeddings import Embedding, read_embedding, write_embedding_pt
from engine.adapters.hypernetwork import create_hypernetwork, read_hypernetwork, write_hypernetwork_pt


@pytest.fixture()
def config(tmp_path: Path, tiny_model_dir: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[model]\nsource = "{tiny_model_dir.as_posix()}"\n'
        f'[paths]\nembeddings = "{(tmp_path / "emb").as_posix()}"\n'
        f'hypernetworks = "{(tmp_path / "hn").as_posix()}"\noutputs = "{(tmp_path / "out").as_posix()}"\n'
    )
    return path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _vectors(n: int, width: int) -> torch.Tensor:
    return torch.randn(n, width, generator=torch.Generator().manual_seed(n * width))


def test_check_says_what_a_file_is_and_whether_the_model_can_use_it(tmp_path: Path, config: Path, capsys) -> None:
    hn = write_hypernetwork_pt(create_hypernetwork("x", [32, 64, 768]), tmp_path / "painted.pt")
    code, out, _ = _run(capsys, "adapters", "check", str(hn), "--config", str(config))
    assert code == 0
    assert "hypernetwork 'painted': modules for widths 32, 64, 768" in out
    assert "usable with" in out and "cross-attention" in out and "self-attention at width 64" in out

    emb = write_embedding_pt(Embedding("e", _vectors(2, 32)), tmp_path / "good.pt")
    code, out, _ = _run(capsys, "adapters", "check", str(emb), "--config", str(config))
    assert code == 0 and "2 vectors of width 32" in out

    wide = write_embedding_pt(Embedding("e", _vectors(1, 768)), tmp_path / "wide.pt")
    code, out, _ = _run(capsys, "adapters", "check", str(wide), "--config", str(config))
    assert code == 1 and "not usable" in out and "768" in out and "32" in out

    sd15_only = write_hypernetwork_pt(create_hypernetwork("y", [768, 320]), tmp_path / "sd15.pt")
    code, out, _ = _run(capsys, "adapters", "check", str(sd15_only), "--config", str(config))
    assert code == 1 and "not usable" in out


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/atelier-cli-pwned"),))


def test_check_refuses_unsafe_and_broken_files_in_one_line(tmp_path: Path, config: Path, capsys) -> None:
    marker = Path("/tmp/atelier-cli-pwned")
    marker.unlink(missing_ok=True)
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"string_to_param": {"*": _Payload()}}))
    code, out, err = _run(capsys, "adapters", "check", str(evil), "--config", str(config))
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and "arbitrary code" in err and "evil.pt" in err
    assert not marker.exists()

    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    code, _, err = _run(capsys, "adapters", "check", str(broken), "--config", str(config))
    assert code == 1 and "broken.safetensors" in err and "Traceback" not in err


def test_import_list_export_round_trip(tmp_path: Path, config: Path, capsys) -> None:
    # An embedding in safetensors form under a misleading .pt name: stored by what it is.
    source = tmp_path / "downloaded.pt"
    save_file({"emb_params": _vectors(3, 32)}, str(source))
    code, out, _ = _run(capsys, "adapters", "import", str(source), "--name", "shiny", "--config", str(config))
    assert code == 0 and "imported embedding 'shiny'" in out
    assert (tmp_path / "emb" / "shiny.safetensors").is_file()

    code, _, err = _run(capsys, "adapters", "import", str(source), "--name", "shiny", "--config", str(config))
    assert code == 1 and "already exists" in err
    code, _, err = _run(capsys, "adapters", "import", str(source), "--name", "bad name", "--config", str(config))
    assert code == 2 and "letters, digits" in err

    hn = write_hypernetwork_pt(create_hypernetwork("x", [32, 64], seed=4), tmp_path / "look.pt")
    assert _run(capsys, "adapters", "import", str(hn), "--config", str(config))[0] == 0
    (tmp_path / "emb" / "has space.pt").write_bytes(b"junk")

    code, out, _ = _run(capsys, "adapters", "list", "--details", "--config", str(config))
    assert code == 0
    assert "shiny" in out and "3 vectors of width 32" in out
    assert "look" in out and "modules for widths 32, 64" in out
    assert "has space.pt" in out and "letters, digits" in out

    pt = tmp_path / "export" / "shiny.pt"
    code, out, _ = _run(capsys, "adapters", "export", "shiny", "--format", "a1111", "--out", str(pt),
                        "--config", str(config))
    assert code == 0
    raw = torch.load(pt, weights_only=True)
    assert torch.equal(raw["string_to_param"]["*"], _vectors(3, 32))
    assert torch.equal(read_embedding(pt).vectors, _vectors(3, 32))

    st = tmp_path / "export" / "look.safetensors"
    assert _run(capsys, "adapters", "export", "look", "--format", "safetensors", "--out", str(st),
                "--config", str(config))[0] == 0
    back = read_hypernetwork(st)
    original = read_hypernetwork(hn)
    assert back.widths() == {32, 64}
    assert all(torch.equal(a, b) for a, b in zip(back.parameters(), original.parameters(), strict=True))

    code, _, err = _run(capsys, "adapters", "export", "shiny-typo", "--format", "a1111", "--out", str(pt),
                        "--config", str(config))
    assert code == 1 and "shiny" in err


def test_generate_accepts_tags_and_embedding_names(tmp_path: Path, config: Path, capsys) -> None:
    from engine.images import read_infotext

    write_hypernetwork_pt(create_hypernetwork("x", [32, 64], seed=5), tmp_path / "hn" / "look.pt")
    write_embedding_pt(Embedding("e", _vectors(2, 32)), tmp_path / "emb" / "shiny.pt")
    code, out, err = _run(capsys, "generate", "a shiny cat <hypernet:look:0.8>", "--steps", "2", "--seed", "1",
                          "--quiet", "--config", str(config))
    assert code == 0, err
    info = read_infotext(Path(out.strip()))
    assert "Hypernet hashes" in info and "TI hashes" in info and "shiny: " in info

    code, out, err = _run(capsys, "generate", "a cat <hypernet:lok>", "--steps", "2", "--quiet",
                          "--config", str(config))
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "unknown hypernetwork 'lok'" in err and "look" in err

    code, _, err = _run(capsys, "generate", "a (cat", "--steps", "2", "--quiet", "--config", str(config))
    assert code == 2 and "(" in err and err.count("\n") == 1
