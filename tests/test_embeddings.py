"""Embedding files: every layout users bring is read by content, validated, and written back in A1111/kohya form.

Each file is built by hand here (plain dicts through torch.save, safetensors, PNG/WEBP metadata), the way the
other tools lay them out, so the reader is checked against the formats and not against our own writer.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image, PngImagePlugin
from safetensors.torch import save, save_file

from engine.adapters.embeddings import (
    Embedding,
    embedding_from_dict,
    is_embedding_dict,
    read_embedding,
    write_embedding_pt,
    write_embedding_safetensors,
)
from engine.adapters.files import AdapterFileError, UnsafeFileError


def rows(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Distinct rows (row i starts with i), so a reordering or a mix-up of rows is visible."""
    t = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))
    t[:, 0] = torch.arange(n, dtype=torch.float32)
    return t


def a1111_dict(vectors: torch.Tensor, name: str = "stored-name") -> dict:
    return {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": vectors},
        "name": name,
        "step": 1500,
        "sd_checkpoint": "abcdef12",
        "sd_checkpoint_name": "v1-5-pruned",
    }


def b64_of(obj: dict) -> str:
    """A1111's image payload: base64 of JSON with each tensor as {"TORCHTENSOR": nested lists}."""

    def encode(o):
        if isinstance(o, torch.Tensor):
            return {"TORCHTENSOR": o.tolist()}
        raise TypeError(type(o))

    return base64.b64encode(json.dumps(obj, default=encode).encode()).decode()


def png_with_text(path: Path, text: dict[str, str]) -> Path:
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    Image.new("RGB", (16, 16), (200, 30, 30)).save(path, "PNG", pnginfo=info)
    return path


def webp_with_exif_comment(path: Path, comment: str) -> Path:
    """The most plausible WEBP carrier: EXIF UserComment ("UNICODE\\0" + UTF-16BE), where A1111 puts infotext."""
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + comment.encode("utf-16-be")
    Image.new("RGB", (16, 16), (30, 30, 200)).save(path, "WEBP", exif=exif)
    return path


def webp_with_xmp(path: Path, payload: str) -> Path:
    xmp = (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description xmlns:sd="https://atelier.invalid/ns/" sd:sd-ti-embedding="{payload}"/>'
        "</rdf:RDF></x:xmpmeta>"
    )
    Image.new("RGB", (16, 16)).save(path, "WEBP", xmp=xmp.encode())
    return path


# ------------------------------------------------------------------------------------------------ layouts


def test_a1111_pt_uses_file_name_and_keeps_metadata(tmp_path: Path) -> None:
    vectors = rows(3, 8)
    path = tmp_path / "mystyle.pt"
    torch.save(a1111_dict(vectors, name="something-else"), path)
    emb = read_embedding(path)
    assert emb.name == "mystyle"
    assert emb.layout == "a1111"
    assert torch.equal(emb.vectors, vectors)
    assert (emb.n_vectors, emb.dim) == (3, 8)
    assert (emb.step, emb.sd_checkpoint, emb.sd_checkpoint_name) == (1500, "abcdef12", "v1-5-pruned")
    assert emb.extra == {} and emb.widths() == {"": 8}


def test_old_a1111_file_with_parameter_and_legacy_pickle(tmp_path: Path) -> None:
    vectors = rows(2, 8)
    path = tmp_path / "old.bin"
    obj = a1111_dict(torch.nn.Parameter(vectors.clone()))
    torch.save(obj, path, _use_new_zipfile_serialization=False)
    assert path.read_bytes()[:1] == b"\x80"
    emb = read_embedding(path)
    assert type(emb.vectors) is torch.Tensor and not emb.vectors.requires_grad
    assert torch.equal(emb.vectors, vectors)


def test_vectors_are_float32_contiguous_owned(tmp_path: Path) -> None:
    source = rows(8, 3).t().to(torch.float16)  # non-contiguous half-precision [3, 8]
    path = tmp_path / "half.pt"
    torch.save({"emb_params": source}, path)
    emb = read_embedding(path)
    assert emb.vectors.dtype == torch.float32 and emb.vectors.is_contiguous() and emb.vectors.device.type == "cpu"
    assert torch.equal(emb.vectors, source.float())


def test_kohya_safetensors_and_pt(tmp_path: Path) -> None:
    vectors = rows(4, 8)
    save_file({"emb_params": vectors}, str(tmp_path / "kohya.safetensors"))
    torch.save({"emb_params": vectors}, tmp_path / "kohya2.pt")
    for file in ("kohya.safetensors", "kohya2.pt"):
        emb = read_embedding(tmp_path / file)
        assert emb.layout == "kohya" and emb.name == Path(file).stem
        assert torch.equal(emb.vectors, vectors)


def test_diffusers_single_key_one_dim_is_one_vector(tmp_path: Path) -> None:
    vector = rows(1, 8)[0]
    save_file({"<cat-toy>": vector}, str(tmp_path / "learned_embeds.safetensors"))
    emb = read_embedding(tmp_path / "learned_embeds.safetensors")
    assert emb.layout == "diffusers" and emb.name == "learned_embeds"
    assert emb.vectors.shape == (1, 8) and torch.equal(emb.vectors[0], vector)

    torch.save({"<tok>": rows(2, 8)}, tmp_path / "two.bin")
    assert torch.equal(read_embedding(tmp_path / "two.bin").vectors, rows(2, 8))


def test_sdxl_keeps_both_halves_and_for_width_picks(tmp_path: Path) -> None:
    clip_l, clip_g = rows(2, 768, seed=1), rows(2, 1280, seed=2)
    save_file({"clip_g": clip_g, "clip_l": clip_l}, str(tmp_path / "xl.safetensors"))
    emb = read_embedding(tmp_path / "xl.safetensors")
    assert emb.layout == "sdxl"
    assert torch.equal(emb.vectors, clip_l) and set(emb.extra) == {"clip_g"}
    assert torch.equal(emb.extra["clip_g"], clip_g)
    assert emb.widths() == {"clip_l": 768, "clip_g": 1280}
    assert torch.equal(emb.for_width(768), clip_l)
    assert torch.equal(emb.for_width(1280), clip_g)
    assert emb.for_width(1024) is None


def test_png_text_chunk(tmp_path: Path) -> None:
    vectors = rows(2, 8)
    path = png_with_text(tmp_path / "preview.png", {"sd-ti-embedding": b64_of(a1111_dict(vectors, "inner"))})
    emb = read_embedding(path)
    assert emb.layout == "png" and emb.name == "preview" and emb.step == 1500
    assert torch.equal(emb.vectors, vectors)


def test_png_compressed_itxt_chunk(tmp_path: Path) -> None:
    vectors = rows(3, 8)
    info = PngImagePlugin.PngInfo()
    info.add_itxt("sd-ti-embedding", b64_of(a1111_dict(vectors)), zip=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "z.png", "PNG", pnginfo=info)
    assert torch.equal(read_embedding(tmp_path / "z.png").vectors, vectors)


def test_webp_exif_user_comment(tmp_path: Path) -> None:
    vectors = rows(2, 8)
    path = webp_with_exif_comment(tmp_path / "prev.webp", "sd-ti-embedding: " + b64_of(a1111_dict(vectors)))
    emb = read_embedding(path)
    assert emb.layout == "webp" and emb.name == "prev"
    assert torch.equal(emb.vectors, vectors)


def test_webp_bare_payload_in_exif_and_xmp(tmp_path: Path) -> None:
    vectors = rows(2, 8)
    payload = b64_of(a1111_dict(vectors))
    assert torch.equal(read_embedding(webp_with_exif_comment(tmp_path / "bare.webp", payload)).vectors, vectors)
    assert torch.equal(read_embedding(webp_with_xmp(tmp_path / "xmp.webp", payload)).vectors, vectors)


def test_image_without_embedding(tmp_path: Path) -> None:
    path = png_with_text(tmp_path / "plain.png", {"parameters": "a cat"})
    with pytest.raises(AdapterFileError, match=r"plain\.png: no embedding data in this image"):
        read_embedding(path)
    Image.new("RGB", (4, 4)).save(tmp_path / "plain.webp", "WEBP")
    with pytest.raises(AdapterFileError, match=r"plain\.webp: no embedding data in this image"):
        read_embedding(tmp_path / "plain.webp")


def test_content_sniffing_not_extension(tmp_path: Path) -> None:
    vectors = rows(2, 8)
    torch.save(a1111_dict(vectors), tmp_path / "really_pt.safetensors")
    save_file({"emb_params": vectors}, str(tmp_path / "really_st.pt"))
    assert read_embedding(tmp_path / "really_pt.safetensors").layout == "a1111"
    assert read_embedding(tmp_path / "really_st.pt").layout == "kohya"
    png_with_text(tmp_path / "image.pt", {"sd-ti-embedding": b64_of(a1111_dict(vectors))})
    assert read_embedding(tmp_path / "image.pt").layout == "png"


def test_bytes_source_with_name() -> None:
    vectors = rows(2, 8)
    emb = read_embedding(save({"emb_params": vectors}), name="upload_style")
    assert emb.name == "upload_style" and torch.equal(emb.vectors, vectors)


_SIDE_EFFECT: list[str] = []


def _side_effect(path: str) -> None:
    Path(path).write_text("ran")
    _SIDE_EFFECT.append(path)


class _Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (_side_effect, (self.path,))


def test_unsafe_pickle_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pt"
    torch.save({"string_to_param": {"*": _Evil(str(marker))}}, path)
    with pytest.raises(UnsafeFileError, match=r"evil\.pt"):
        read_embedding(path)
    assert not marker.exists() and _SIDE_EFFECT == []


# ------------------------------------------------------------------------------------------------ writing


def test_write_pt_is_a1111_and_round_trips(tmp_path: Path) -> None:
    vectors = rows(5, 8)
    emb = Embedding("mine", vectors, layout="kohya", step=42, sd_checkpoint="0123abcd", sd_checkpoint_name="model")
    path = write_embedding_pt(emb, tmp_path / "mine.pt")
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"string_to_token", "string_to_param", "name", "step", "sd_checkpoint", "sd_checkpoint_name"}
    assert raw["string_to_token"] == {"*": 265} and list(raw["string_to_param"]) == ["*"]
    assert raw["name"] == "mine" and raw["step"] == 42
    assert torch.equal(raw["string_to_param"]["*"], vectors)
    back = read_embedding(path)
    assert back.layout == "a1111" and torch.equal(back.vectors, vectors)
    assert (back.name, back.step, back.sd_checkpoint, back.sd_checkpoint_name) == ("mine", 42, "0123abcd", "model")
    assert [p.name for p in tmp_path.iterdir()] == ["mine.pt"]  # no temporary file left behind


def test_write_safetensors_round_trips_with_metadata(tmp_path: Path) -> None:
    vectors = rows(4, 8)
    emb = Embedding("st", vectors, step=7, sd_checkpoint_name="model")
    path = write_embedding_safetensors(emb, tmp_path / "st.safetensors")
    assert path.read_bytes()[8:9] == b"{"
    back = read_embedding(path)
    assert back.layout == "kohya" and torch.equal(back.vectors, vectors)
    assert (back.step, back.sd_checkpoint, back.sd_checkpoint_name) == (7, None, "model")
    from engine.adapters.files import load_safetensors

    tensors, meta = load_safetensors(path.read_bytes(), "st")
    assert set(tensors) == {"emb_params"}
    assert meta["atelier_kind"] == "embedding" and meta["name"] == "st"


def test_write_sdxl_both_formats(tmp_path: Path) -> None:
    clip_l, clip_g = rows(3, 768, seed=3), rows(3, 1280, seed=4)
    emb = Embedding("xl", clip_l, extra={"clip_g": clip_g}, layout="sdxl", step=9)
    st = write_embedding_safetensors(emb, tmp_path / "xl.safetensors")
    pt = write_embedding_pt(emb, tmp_path / "xl.pt")
    assert set(torch.load(pt, weights_only=True)) == {"clip_l", "clip_g"}
    for path in (st, pt):
        back = read_embedding(path)
        assert back.layout == "sdxl"
        assert torch.equal(back.vectors, clip_l) and torch.equal(back.extra["clip_g"], clip_g)
    assert read_embedding(st).step == 9


def test_writers_refuse_what_the_reader_would(tmp_path: Path) -> None:
    bad = Embedding("nan", torch.full((1, 8), float("nan")))
    with pytest.raises(AdapterFileError, match="NaN"):
        write_embedding_pt(bad, tmp_path / "nan.pt")
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------ refusals


def _st(tensors: dict, metadata: dict | None = None) -> bytes:
    return save(tensors, metadata=metadata)


def _pt(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


BAD_FILES = {
    "empty": (b"", "empty"),
    "garbage": (b"hello, this is not a tensor file at all", "not an embedding file"),
    "truncated": (_st({"emb_params": rows(2, 8)})[:-10], "not a valid .safetensors"),
    "truncated_pt": (_pt(a1111_dict(rows(2, 8)))[:-40], "not a readable torch file"),
    "no_tensors": (_pt({"name": "x", "step": 3}), "no embedding vectors"),
    "two_candidates": (_st({"a": rows(1, 8), "b": rows(1, 8)}), "cannot tell which"),
    "two_params": (_pt({"string_to_param": {"*": rows(1, 8), "+": rows(1, 8)}}), "exactly one"),
    "zero_vectors": (_st({"emb_params": torch.zeros(0, 8)}), "zero vectors"),
    "three_d": (_st({"emb_params": torch.zeros(1, 2, 8)}), "expected [vectors, width]"),
    "nan": (_pt({"emb_params": torch.tensor([[0.0, float("inf")]])}), "NaN or infinite"),
    "too_many": (_st({"emb_params": torch.zeros(76, 8)}), "76 vectors"),
    "integers": (_st({"emb_params": torch.zeros(2, 8, dtype=torch.int32)}), "floating point"),
    "list": (_pt([rows(1, 8)]), "not an embedding dict"),
    "hypernetwork": (_st({"emb_params": rows(1, 8)}, {"atelier_kind": "hypernetwork"}), "not an embedding"),
    "halves_differ": (_st({"clip_l": rows(2, 768), "clip_g": rows(3, 1280)}), "halves must match"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_name_the_file_and_reason(tmp_path: Path, case: str) -> None:
    data, reason = BAD_FILES[case]
    path = tmp_path / f"{case}.pt"
    path.write_bytes(data)
    with pytest.raises(AdapterFileError) as info:
        read_embedding(path)
    assert str(info.value).startswith(f"{case}.pt: ")
    assert reason in str(info.value)
    assert not isinstance(info.value, UnsafeFileError)


def test_bad_image_payload(tmp_path: Path) -> None:
    path = png_with_text(tmp_path / "broken.png", {"sd-ti-embedding": "not*base64!!"})
    with pytest.raises(AdapterFileError, match=r"broken\.png: the sd-ti-embedding data is not valid"):
        read_embedding(path)
    bad_json = base64.b64encode(b"{not json").decode()
    png_with_text(tmp_path / "badjson.png", {"sd-ti-embedding": bad_json})
    with pytest.raises(AdapterFileError, match=r"badjson\.png: the sd-ti-embedding data is not valid"):
        read_embedding(tmp_path / "badjson.png")


def test_missing_file() -> None:
    with pytest.raises(AdapterFileError, match=r"nope\.pt: cannot read"):
        read_embedding(Path("/nonexistent/nope.pt"))


# ------------------------------------------------------------------------------------------------ dict API


def test_is_embedding_dict() -> None:
    assert is_embedding_dict(a1111_dict(rows(1, 8)))
    assert is_embedding_dict({"emb_params": rows(1, 8)})
    assert is_embedding_dict({"clip_l": rows(1, 768), "clip_g": rows(1, 1280)})
    assert is_embedding_dict({"<tok>": rows(1, 8)})
    layer = {"linear.0.weight": torch.zeros(2, 2), "linear.0.bias": torch.zeros(2)}
    assert not is_embedding_dict({768: (layer, layer), "name": "hn", "layer_structure": [1, 2, 1]})
    assert not is_embedding_dict({"a": rows(1, 8), "b": rows(1, 8)})
    assert not is_embedding_dict([rows(1, 8)])


def test_embedding_from_dict_keeps_multi_vector_order() -> None:
    vectors = rows(16, 8)
    emb = embedding_from_dict(a1111_dict(vectors), "order", "order.pt")
    assert emb.name == "order" and emb.n_vectors == 16
    assert emb.vectors[:, 0].tolist() == list(range(16))
    assert torch.equal(emb.vectors, vectors)
