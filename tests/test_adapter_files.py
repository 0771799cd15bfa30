"""Reading adapter files by content: sniffing, size limit, unsafe pickles, kind detection and model fit."""

from __future__ import annotations

import io
import json
import random
import struct
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save, save_file

import engine.adapters.files as files
from engine.adapters.compat import ModelWidths, fits, model_widths, read_adapter
from engine.adapters.embeddings import Embedding, write_embedding_pt, write_embedding_safetensors
from engine.adapters.files import AdapterFileError, UnsafeFileError, load_torch_pickle, read_bytes, sniff
from engine.adapters.hypernetwork import (
    Hypernetwork,
    create_hypernetwork,
    write_hypernetwork_pt,
    write_hypernetwork_safetensors,
)


def torch_bytes(obj, **kwargs) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, **kwargs)
    return buf.getvalue()


def image_bytes(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 20, 30)).save(buf, format=fmt)
    return buf.getvalue()


def safetensors_with_header_len(tensors: dict[str, torch.Tensor], want: int) -> bytes:
    """Safetensors bytes whose JSON header is exactly ``want`` bytes long (padded via metadata)."""
    for pad in range(200):
        data = save(tensors, metadata={"p": "x" * pad})
        if struct.unpack("<Q", data[:8])[0] == want:
            return data
    raise AssertionError(f"no padding gives a {want}-byte header")


# ----------------------------------------------------------------------------------------------- sniff


def test_sniff_safetensors_with_128_byte_header():
    """A 128-byte header starts with 0x80, the pickle protocol byte; it must still be safetensors."""
    assert sniff(struct.pack("<Q", 128) + b"{") == "safetensors"
    vectors = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    data = safetensors_with_header_len({"emb_params": vectors}, 128)
    assert data[0] == 0x80
    assert sniff(data) == "safetensors"
    assert sniff(data[:16]) == "safetensors"
    tensors, metadata = files.load_safetensors(data, "x.safetensors")
    assert torch.equal(tensors["emb_params"], vectors) and "p" in metadata
    kind, emb = read_adapter(data, label="padded.pt")
    assert kind == "embedding" and torch.equal(emb.vectors, vectors)


def test_sniff_torch_zip_and_legacy_pickle():
    obj = {"t": torch.ones(2)}
    zipped = torch_bytes(obj)
    legacy = torch_bytes(obj, _use_new_zipfile_serialization=False)
    assert zipped[:2] == b"PK" and legacy[:1] == b"\x80"
    assert sniff(zipped) == "torch"
    assert sniff(legacy) == "torch"
    assert sniff(zipped[:16]) == "torch" and sniff(legacy[:16]) == "torch"
    assert torch.equal(load_torch_pickle(legacy, "legacy.pt")["t"], torch.ones(2))


def test_sniff_images_and_unknown():
    assert sniff(image_bytes("PNG")) == "png"
    assert sniff(image_bytes("WEBP")) == "webp"
    assert sniff(b"RIFF\x00\x00\x00\x00WAVEfmt ") == "unknown"
    noise = random.Random(1).randbytes(64)
    assert noise[:1] != b"\x80" and noise[:2] != b"PK"
    assert sniff(noise) == "unknown"
    assert sniff(b"") == "unknown"
    assert sniff(b"hello, this is text") == "unknown"
    # a huge "header length" is not safetensors even when followed by "{"
    assert sniff(struct.pack("<Q", 2**40) + b"{}") == "unknown"
    assert sniff(struct.pack("<Q", 16) + b"[not json") == "unknown"


# ----------------------------------------------------------------------------------------------- reading


def test_read_bytes_size_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "MAX_ADAPTER_BYTES", 2 * 2**20)
    ok = tmp_path / "ok.pt"
    ok.write_bytes(b"a" * (2 * 2**20))
    assert read_bytes(ok) == (ok.read_bytes(), "ok.pt")
    big = tmp_path / "big.pt"
    big.write_bytes(b"a" * (3 * 2**20))
    with pytest.raises(AdapterFileError) as info:
        read_bytes(big)
    message = str(info.value)
    assert "big.pt" in message and "2 MB" in message and "3 MB" in message
    with pytest.raises(AdapterFileError, match="shown-name"):
        read_bytes(big, label="shown-name")


def test_read_bytes_missing_file_names_it(tmp_path):
    with pytest.raises(AdapterFileError, match=r"absent\.pt"):
        read_bytes(tmp_path / "absent.pt")
    assert read_bytes(b"abc") == (b"abc", "upload")
    assert read_bytes(b"abc", "up.pt") == (b"abc", "up.pt")


class Evil:
    """Unpickling this creates the marker file (a harmless stand-in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_unsafe_pickle_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    for data in (torch_bytes({"x": Evil(marker)}),
                 torch_bytes({"x": Evil(marker)}, _use_new_zipfile_serialization=False)):
        with pytest.raises(UnsafeFileError) as info:
            load_torch_pickle(data, "evil.pt")
        assert "evil.pt" in str(info.value) and "open" in str(info.value)
        assert not marker.exists()
    with pytest.raises(UnsafeFileError):
        read_adapter(torch_bytes({"x": Evil(marker)}), label="evil.pt")
    assert not marker.exists()
    # the payload is real: what an unpickler would call creates the file (called here directly, never unpickled)
    control = tmp_path / "control"
    call, args = Evil(control).__reduce__()
    call(*args).close()
    assert control.exists()


def test_torch_file_that_is_not_torch():
    with pytest.raises(AdapterFileError, match=r"trunc\.pt") as info:
        load_torch_pickle(torch_bytes({"t": torch.ones(3)})[:40], "trunc.pt")
    assert not isinstance(info.value, UnsafeFileError)


# ----------------------------------------------------------------------------------------------- read_adapter


def test_read_adapter_tells_kinds_apart(tmp_path):
    hn = create_hypernetwork("net", widths=(32, 64), seed=2)
    vectors = torch.randn(3, 32, generator=torch.Generator().manual_seed(5))
    emb = Embedding("emb", vectors)
    cases = {
        "a1111-hn.pt": ("hypernetwork", write_hypernetwork_pt(hn, tmp_path / "a1111-hn.pt")),
        "our-hn.safetensors": ("hypernetwork", write_hypernetwork_safetensors(hn, tmp_path / "our-hn.safetensors")),
        "a1111-emb.pt": ("embedding", write_embedding_pt(emb, tmp_path / "a1111-emb.pt")),
        "ours-emb.safetensors": ("embedding", write_embedding_safetensors(emb, tmp_path / "ours-emb.safetensors")),
    }
    kohya = tmp_path / "kohya-emb.safetensors"
    save_file({"emb_params": vectors}, str(kohya))
    cases["kohya-emb.safetensors"] = ("embedding", kohya)
    misnamed = tmp_path / "misnamed.safetensors"
    misnamed.write_bytes((tmp_path / "a1111-emb.pt").read_bytes())
    cases["misnamed.safetensors"] = ("embedding", misnamed)
    hn_as_pt = tmp_path / "hn-as.pt"
    hn_as_pt.write_bytes((tmp_path / "our-hn.safetensors").read_bytes())
    cases["hn-as.pt"] = ("hypernetwork", hn_as_pt)

    for label, (want, path) in cases.items():
        kind, obj = read_adapter(path)
        assert kind == want, label
        assert obj.name == Path(label).stem, label
        if want == "embedding":
            assert isinstance(obj, Embedding) and torch.equal(obj.vectors, vectors), label
        else:
            assert isinstance(obj, Hypernetwork) and obj.widths() == {32, 64}, label
            for width in (32, 64):
                for mine, theirs in zip(obj.modules[width], hn.modules[width], strict=True):
                    for a, b in zip(mine.parameters(), theirs.parameters(), strict=True):
                        assert torch.equal(a, b), label


def test_read_adapter_from_bytes_uses_label_and_name(tmp_path):
    data = write_embedding_pt(Embedding("x", torch.ones(1, 32)), tmp_path / "x.pt").read_bytes()
    kind, emb = read_adapter(data, label="upload-name.pt")
    assert (kind, emb.name) == ("embedding", "upload-name")
    kind, emb = read_adapter(data, name="trigger", label="upload-name.pt")
    assert emb.name == "trigger"


def test_read_adapter_refuses_other_files(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"foo": 1}, other)
    with pytest.raises(AdapterFileError, match=r"other\.pt"):
        read_adapter(other)
    state = tmp_path / "state.pt"
    torch.save({"weight": torch.ones(2, 2), "bias": torch.ones(2)}, state)
    with pytest.raises(AdapterFileError, match=r"state\.pt"):
        read_adapter(state)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"definitely not an adapter")
    with pytest.raises(AdapterFileError, match=r"junk\.safetensors"):
        read_adapter(junk)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(struct.pack("<Q", 20) + b'{"a": "truncated')
    with pytest.raises(AdapterFileError, match=r"broken\.safetensors"):
        read_adapter(broken)


# ----------------------------------------------------------------------------------------------- model widths, fits


def test_model_widths_of_diffusers_folder(tiny_model_dir):
    widths = model_widths(tiny_model_dir)
    text = json.loads((tiny_model_dir / "text_encoder" / "config.json").read_text())
    unet = json.loads((tiny_model_dir / "unet" / "config.json").read_text())
    assert (widths.text, widths.cross, widths.self_attention) == (32, 32, (32, 64))
    assert widths.text == text["hidden_size"] and widths.cross == unet["cross_attention_dim"]
    assert widths.name == tiny_model_dir.name
    assert widths.attention == {32, 64}


def test_model_widths_of_single_file(tmp_path, tiny_skeleton_dir):
    from engine.tiny import save_tiny_single_file

    single = save_tiny_single_file(tmp_path / "tinyckpt.safetensors", seed=0)
    widths = model_widths(single, config_dir=tiny_skeleton_dir)
    assert (widths.name, widths.text, widths.cross, widths.self_attention) == ("tinyckpt", 32, 32, (32, 64))
    # without a skeleton the family is detected from the file's keys and the stock SD1 skeleton is used
    stock = model_widths(single)
    assert (stock.name, stock.text, stock.cross, stock.self_attention) == ("tinyckpt", 768, 768, (320, 640, 1280))


def test_fits_embedding():
    tiny = ModelWidths("tiny", 32, 32, (32, 64))
    sd1 = ModelWidths("sd15", 768, 768, (320, 640, 1280))
    emb = Embedding("e", torch.zeros(2, 32))
    ok, why = fits("embedding", emb, tiny)
    assert ok and "32" in why
    ok, why = fits("embedding", emb, sd1)
    assert not ok and "32" in why and "768" in why and "sd15" in why
    sdxl = Embedding("x", torch.zeros(2, 768), extra={"clip_g": torch.zeros(2, 1280)})
    assert fits("embedding", sdxl, sd1)[0]
    assert fits("embedding", sdxl, ModelWidths("g", 1280, 2048, (640, 1280)))[0]
    assert not fits("embedding", sdxl, tiny)[0]


def test_fits_hypernetwork(tiny_model_dir):
    tiny = model_widths(tiny_model_dir)
    ok, why = fits("hypernetwork", create_hypernetwork("a", widths=(32,)), tiny)
    # the tiny model's cross-attention context and its first block are both 32 wide
    assert ok and "cross-attention" in why and "self-attention" in why
    ok, why = fits("hypernetwork", create_hypernetwork("b", widths=(64,)), tiny)
    assert ok and "self-attention" in why and "64" in why and "cross-attention" not in why
    ok, why = fits("hypernetwork", create_hypernetwork("c", widths=(768,)), tiny)
    assert not ok and "768" in why and "32" in why and "64" in why
