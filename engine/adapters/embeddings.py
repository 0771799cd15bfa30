"""Textual-inversion embeddings: read every layout users have files in, write the two we hand out.

Why one reader for many layouts: users bring embeddings from A1111 (``.pt``/``.bin`` dicts with
``string_to_param``, and PNG/WEBP previews carrying the same dict as text), kohya (``emb_params``, SDXL
``clip_l``/``clip_g`` pairs) and diffusers (one ``{token: tensor}`` entry). They should not have to know which
they have, so the layout is detected from the content: the file kind from its bytes (:mod:`.files`), then the
layout from the dict's keys. The file name's extension is never trusted.

Why the trigger is the file's base name: that is A1111's rule (any ``name`` stored inside is ignored), so a
prompt written for A1111 works here unchanged, and renaming a file is how users resolve a clash.

Why validation is strict here: a bad vector (NaN, wrong shape, more than fits a 75-token chunk) would otherwise
surface much later as a black image or a shape error deep in the text encoder. Every refusal is an
:class:`AdapterFileError` that names the file and says why, so it can be shown to the user as it is.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from engine.adapters.files import (
    AdapterFileError,
    load_safetensors,
    load_torch_pickle,
    one_line,
    read_bytes,
    save_safetensors,
    sniff,
    write_atomically,
)

# A prompt chunk holds 75 tokens and A1111 never splits an embedding across chunks, so more cannot be used.
MAX_VECTORS = 75
# The text key A1111 uses for the embedding it writes into its training-preview images.
IMAGE_KEY = "sd-ti-embedding"
# The token id of "*" in the CLIP vocabulary: the placeholder A1111 stores in ``string_to_token``.
A1111_PLACEHOLDER_TOKEN = 265
# The marker in a tensor's JSON form inside image payloads (A1111's serialisation of tensors).
JSON_TENSOR_KEY = "TORCHTENSOR"
ATELIER_KIND = "embedding"

_EXIF_IFD = 0x8769
_EXIF_USER_COMMENT = 0x9286
_EXIF_IMAGE_DESCRIPTION = 0x010E
# ``sd-ti-embedding`` followed by a separator (``:``, ``=``, ``>``, quotes, spaces) and then base64 text: matches
# "key: value" text, an XML attribute ``x:sd-ti-embedding="..."`` and an XML element ``<x:sd-ti-embedding>...``.
_KEYED_PAYLOAD = re.compile(re.escape(IMAGE_KEY) + r"""["']?\s*[:=>]\s*["']?\s*([A-Za-z0-9+/=\s]{16,})""")


@dataclass
class Embedding:
    """One embedding's vectors, ready to be swapped into a text encoder's input embeddings.

    ``vectors`` are the ones for the SD1/SD2 text encoder; an SDXL file's ``clip_l`` half goes there too (it is
    the same CLIP-L width as SD1), and the other halves stay in ``extra`` so nothing in the file is lost and an
    SDXL model can use both. ``layout`` defaults to "a1111" because an embedding built in memory (training) is
    written as A1111 writes it.
    """

    name: str
    vectors: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    layout: str = "a1111"
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None

    @property
    def dim(self) -> int:
        """The width of :attr:`vectors` (768 SD1 / SDXL clip_l, 1024 SD2)."""
        return int(self.vectors.shape[-1])

    @property
    def n_vectors(self) -> int:
        """How many token slots the embedding takes in a prompt."""
        return int(self.vectors.shape[0])

    def widths(self) -> dict[str, int]:
        """Each half's name and width; the main vectors are "clip_l" when there are other halves, else ""."""
        main = "clip_l" if self.extra else ""
        return {main: self.dim, **{key: int(t.shape[-1]) for key, t in self.extra.items()}}

    def for_width(self, width: int) -> torch.Tensor | None:
        """The vectors for a text encoder of this width, or None: lets an SDXL file serve SD1 through clip_l."""
        if self.dim == width:
            return self.vectors
        return next((t for t in self.extra.values() if int(t.shape[-1]) == width), None)


# ---------------------------------------------------------------------------------------------------- reading


def read_embedding(source: Path | bytes, name: str | None = None) -> Embedding:
    """Read an embedding file of any supported layout; the trigger is ``name`` or else the file's base name.

    ``source`` is a path or the bytes of an upload (then ``name`` should be given: it is also the label errors
    use). Raises :class:`AdapterFileError` (or its subclass ``UnsafeFileError`` for a pickle that would run code).
    """
    if isinstance(source, bytes | bytearray | memoryview):
        data, label = read_bytes(source, name)
        trigger = name if name is not None else Path(label).stem
    else:
        data, label = read_bytes(Path(source))
        trigger = name if name is not None else Path(source).stem
    if not data:
        raise AdapterFileError(f"{label}: the file is empty")
    kind = sniff(data)
    if kind == "safetensors":
        return _from_safetensors(data, trigger, label)
    if kind == "torch":
        obj = load_torch_pickle(data, label)
        if not isinstance(obj, Mapping):
            raise AdapterFileError(f"{label}: holds a {type(obj).__name__}, not an embedding dict")
        return embedding_from_dict(obj, trigger, label)
    if kind in ("png", "webp"):
        obj = _image_embedding_dict(data, label)
        return replace(embedding_from_dict(obj, trigger, label), layout=kind)
    raise AdapterFileError(f"{label}: not an embedding file (not safetensors, a torch file, PNG or WEBP)")


def embedding_from_dict(obj: Mapping[Any, Any], name: str, label: str) -> Embedding:
    """Detect the layout of an already-loaded dict and build a validated :class:`Embedding` from it.

    Shared by the pickle, safetensors and image paths so every source obeys the same rules.
    """
    layout, what, main, extra = _pick(obj, label)
    vectors = _as_vectors(main, label, what)
    halves = {str(key): _as_vectors(value, label, str(key)) for key, value in extra.items()}
    for key, half in halves.items():
        if half.shape[0] != vectors.shape[0]:
            raise AdapterFileError(
                f"{label}: {what} has {vectors.shape[0]} vectors but {key} has {half.shape[0]}; the halves must match"
            )
    return Embedding(
        name=name,
        vectors=vectors,
        extra=halves,
        layout=layout,
        step=_as_int(obj.get("step")),
        sd_checkpoint=_as_str(obj.get("sd_checkpoint")),
        sd_checkpoint_name=_as_str(obj.get("sd_checkpoint_name")),
    )


def is_embedding_dict(obj: Any) -> bool:
    """Whether a loaded object has one of the embedding layouts (its values are not validated).

    Lets a caller that loaded an unknown file tell an embedding from, say, a hypernetwork (int keys, no tensors).
    """
    if not isinstance(obj, Mapping):
        return False
    try:
        _pick(obj, "")
    except AdapterFileError:
        return False
    return True


def _pick(obj: Mapping[Any, Any], label: str) -> tuple[str, str, Any, dict[Any, Any]]:
    """(layout, what errors call the main vectors, main vectors, other halves) of a dict, unvalidated.

    The order of the checks is the layouts' priority: marked layouts first, the unmarked single tensor last.
    """
    if "string_to_param" in obj:
        return "a1111", "string_to_param", _single_param(obj["string_to_param"], label), {}
    if "clip_l" in obj and "clip_g" in obj:
        extra = {k: v for k, v in obj.items() if k != "clip_l" and isinstance(v, torch.Tensor)}
        return "sdxl", "clip_l", obj["clip_l"], extra
    if "emb_params" in obj:
        return "kohya", "emb_params", obj["emb_params"], {}
    tensors = [(key, value) for key, value in obj.items() if isinstance(value, torch.Tensor)]
    if not tensors:
        raise AdapterFileError(f"{label}: no embedding vectors found (keys: {_keys(obj)})")
    if len(tensors) > 1:
        raise AdapterFileError(
            f"{label}: {len(tensors)} tensors ({_keys(dict(tensors))}) and no known embedding layout; "
            "cannot tell which one is the embedding"
        )
    key, value = tensors[0]
    return "diffusers", f"tensor {str(key)!r}", value, {}


def _single_param(params: Any, label: str) -> Any:
    """The one tensor of A1111's ``string_to_param`` (a dict, or in very old files an ``nn.ParameterDict``)."""
    params = getattr(params, "_parameters", params)
    if not isinstance(params, Mapping):
        raise AdapterFileError(f"{label}: string_to_param is a {type(params).__name__}, not a dict")
    if len(params) != 1:
        count = "no tensors" if not params else f"{len(params)} entries ({_keys(params)})"
        raise AdapterFileError(f"{label}: string_to_param holds {count}; an embedding file holds exactly one")
    return next(iter(params.values()))


def _as_vectors(value: Any, label: str, what: str) -> torch.Tensor:
    """``value`` as validated ``[n, dim]`` float32 CPU vectors that own their memory (1-D means one vector)."""
    if not isinstance(value, torch.Tensor):
        raise AdapterFileError(f"{label}: {what} is a {type(value).__name__}, not a tensor")
    if not value.is_floating_point():
        raise AdapterFileError(f"{label}: {what} has dtype {value.dtype}; embedding vectors are floating point")
    tensor = value.detach().to("cpu")
    if tensor.ndim == 1:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 2:
        raise AdapterFileError(f"{label}: {what} has shape {list(tensor.shape)}; expected [vectors, width]")
    n, width = tensor.shape
    if n == 0 or width == 0:
        raise AdapterFileError(f"{label}: {what} holds zero vectors (shape {list(tensor.shape)})")
    if n > MAX_VECTORS:
        raise AdapterFileError(f"{label}: {what} holds {n} vectors; at most {MAX_VECTORS} fit in a prompt chunk")
    tensor = tensor.to(torch.float32)
    if not bool(torch.isfinite(tensor).all()):
        raise AdapterFileError(f"{label}: {what} contains NaN or infinite values")
    return tensor.clone(memory_format=torch.contiguous_format)


def _from_safetensors(data: bytes, name: str, label: str) -> Embedding:
    """A safetensors embedding; our metadata (step, checkpoint) lives in the header, not in the tensors."""
    tensors, metadata = load_safetensors(data, label)
    kind = metadata.get("atelier_kind")
    if kind is not None and kind != ATELIER_KIND:
        raise AdapterFileError(f"{label}: this is an Atelier {kind} file, not an embedding")
    emb = embedding_from_dict(tensors, name, label)
    return replace(
        emb,
        step=_as_int(metadata.get("step")),
        sd_checkpoint=_as_str(metadata.get("sd_checkpoint")),
        sd_checkpoint_name=_as_str(metadata.get("sd_checkpoint_name")),
    )


# ----------------------------------------------------------------------------------------------------- images


def _image_embedding_dict(data: bytes, label: str) -> dict[str, Any]:
    """The A1111 dict carried as ``sd-ti-embedding`` text in a PNG or WEBP.

    Where the text is looked for, and why:

    * PNG: the ``tEXt``/``zTXt``/``iTXt`` chunk with that key (Pillow's ``image.text``). This is what A1111's
      training previews carry.
    * WEBP: WEBP has no text chunks, and A1111 v1.10.1 itself finds no text key in a WEBP (Pillow exposes none),
      so no single convention exists. A tool that puts PNG text into a WEBP realistically uses what WEBP has: the
      EXIF UserComment (where A1111 puts its ``parameters`` infotext for WEBP/JPEG, ``UNICODE\\0`` + UTF-16) or
      XMP. We accept, in EXIF UserComment / ImageDescription, in XMP and in any text-valued entry of
      ``image.info``: ``sd-ti-embedding`` followed by ``:``/``=``/``>`` and the base64 (so "key: value" text, an
      XML attribute and an XML element all work), and, in the EXIF fields only, the bare base64 alone.

    The pixel-hidden variant (zlib data in the picture's border) is not read; such an image gets the clear
    "no embedding data in this image" error.
    """
    keyed, loose = _image_texts(data, label)
    first_error: AdapterFileError | None = None
    for payload in keyed:
        try:
            return _decode_payload(payload, label)
        except AdapterFileError as exc:
            first_error = first_error or exc
    for text in loose:
        try:
            obj = _decode_payload(text, label)
        except AdapterFileError:
            continue
        if is_embedding_dict(obj):
            return obj
    if first_error is not None:
        raise first_error
    raise AdapterFileError(f"{label}: no embedding data in this image (no {IMAGE_KEY} text in it)")


def _image_texts(data: bytes, label: str) -> tuple[list[str], list[str]]:
    """(payloads found under the key, whole EXIF texts that may be a bare payload) of an image's metadata."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            direct = [_text(m[IMAGE_KEY]) for m in (_png_text(image), image.info) if IMAGE_KEY in m]
            exif_texts = _exif_texts(image)
            other = [_text(v) for k, v in image.info.items() if k != IMAGE_KEY and isinstance(v, str | bytes)]
    except Exception as exc:
        raise AdapterFileError(f"{label}: not a readable image ({one_line(exc)})") from None
    searched = [m.group(1) for text in exif_texts + other for m in _KEYED_PAYLOAD.finditer(text)]
    return direct + searched, exif_texts


def _png_text(image: Any) -> Mapping[str, Any]:
    """A PNG's text chunks, including those after the pixels; on a damaged picture, those before it (in ``info``)."""
    try:
        return getattr(image, "text", None) or {}
    except Exception:
        return {}


def _exif_texts(image: Any) -> list[str]:
    """The EXIF UserComment and ImageDescription texts, wherever the writer put them (IFD0 or the Exif IFD)."""
    try:
        exif = image.getexif()
        ifds = [exif, exif.get_ifd(_EXIF_IFD)]
    except Exception:
        return []
    texts = []
    for ifd in ifds:
        if _EXIF_USER_COMMENT in ifd:
            texts.append(_user_comment(ifd[_EXIF_USER_COMMENT]))
        if _EXIF_IMAGE_DESCRIPTION in ifd:
            texts.append(_text(ifd[_EXIF_IMAGE_DESCRIPTION]))
    return texts


def _user_comment(value: Any) -> str:
    """An EXIF UserComment as text: 8 bytes naming the charset, then the text (UNICODE is UTF-16, usually BE)."""
    if isinstance(value, str):
        return value
    raw = bytes(value)
    prefix, body = raw[:8], raw[8:]
    if prefix.startswith(b"UNICODE"):
        if body[:2] in (b"\xff\xfe", b"\xfe\xff"):
            return body.decode("utf-16", "replace")
        text = body.decode("utf-16-be", "replace")
        return text if text.isascii() else body.decode("utf-16-le", "replace")
    if prefix.startswith((b"ASCII", b"\0\0\0\0\0\0\0\0", b"JIS")):
        return body.decode("utf-8", "replace")
    return raw.decode("utf-8", "replace")


def _text(value: Any) -> str:
    """A metadata value as text (Pillow gives str or bytes depending on the chunk)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes | bytearray) else str(value)


def _decode_payload(payload: str, label: str) -> dict[str, Any]:
    """base64 → JSON → dict, turning each ``{"TORCHTENSOR": nested lists}`` back into a tensor."""
    compact = "".join(payload.split())
    try:
        raw = base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
        obj = json.loads(raw.decode("utf-8"), object_hook=_json_tensor)
    except (binascii.Error, ValueError, TypeError, RuntimeError) as exc:
        raise AdapterFileError(f"{label}: the {IMAGE_KEY} data is not valid ({one_line(exc)})") from None
    if not isinstance(obj, dict):
        raise AdapterFileError(f"{label}: the {IMAGE_KEY} data holds a {type(obj).__name__}, not a dict")
    return obj


def _json_tensor(obj: dict[str, Any]) -> Any:
    """JSON object hook: A1111 writes each tensor as an object whose only key is ``TORCHTENSOR``."""
    if len(obj) == 1 and JSON_TENSOR_KEY in obj:
        return torch.tensor(obj[JSON_TENSOR_KEY], dtype=torch.float32)
    return obj


# ---------------------------------------------------------------------------------------------------- writing


def write_embedding_safetensors(emb: Embedding, path: str | os.PathLike[str]) -> Path:
    """Write kohya-style safetensors: ``{"emb_params": T}``, or ``{"clip_l": T, "clip_g": T}`` for SDXL halves.

    Why these keys: they are what kohya, ComfyUI and A1111 read. The SDXL pair is written without
    ``emb_params`` because A1111 treats every tensor of a clip_l/clip_g file as a half. Name, step and checkpoint
    go into the header metadata (safetensors holds only tensors), marked ``atelier_kind: embedding``.
    """
    label = Path(path).name
    tensors = _tensors_to_write(emb, label)
    metadata = {"atelier_kind": ATELIER_KIND, "name": emb.name}
    for key in ("step", "sd_checkpoint", "sd_checkpoint_name"):
        value = getattr(emb, key)
        if value is not None:
            metadata[key] = str(value)
    return write_atomically(Path(path), lambda tmp: save_safetensors(tensors, tmp, metadata))


def write_embedding_pt(emb: Embedding, path: str | os.PathLike[str]) -> Path:
    """Write the A1111 ``.pt`` dict, so the file works in A1111 and loads with ``torch.load(weights_only=True)``.

    SDXL embeddings (with other halves) are written as the plain ``{"clip_l": T, "clip_g": T}`` dict instead:
    A1111's ``string_to_param`` holds one tensor, and its SDXL reader expects every value to be a tensor, so
    name/step cannot be stored; use :func:`write_embedding_safetensors` to keep them.
    """
    label = Path(path).name
    tensors = _tensors_to_write(emb, label)
    if emb.extra:
        obj: dict[str, Any] = tensors
    else:
        obj = {
            "string_to_token": {"*": A1111_PLACEHOLDER_TOKEN},
            "string_to_param": {"*": tensors["emb_params"]},
            "name": emb.name,
            "step": emb.step,
            "sd_checkpoint": emb.sd_checkpoint,
            "sd_checkpoint_name": emb.sd_checkpoint_name,
        }
    return write_atomically(Path(path), lambda tmp: torch.save(obj, tmp))


def _tensors_to_write(emb: Embedding, label: str) -> dict[str, torch.Tensor]:
    """Validated, owned float32 copies keyed as written; refuses anything :func:`read_embedding` would refuse."""
    if not emb.extra:
        return {"emb_params": _as_vectors(emb.vectors, label, "vectors")}
    if "clip_l" in emb.extra:
        raise AdapterFileError(f"{label}: extra must not hold clip_l; the main vectors are clip_l")
    tensors = {"clip_l": _as_vectors(emb.vectors, label, "vectors")}
    tensors.update({key: _as_vectors(t, label, key) for key, t in emb.extra.items()})
    if any(t.shape[0] != emb.n_vectors for t in tensors.values()):
        raise AdapterFileError(f"{label}: every half must hold the same number of vectors")
    if "clip_g" not in tensors:
        raise AdapterFileError(f"{label}: an embedding with several halves needs a clip_g half")
    return tensors




# ---------------------------------------------------------------------------------------------------- helpers


def _as_int(value: Any) -> int | None:
    """A training step from a file (int, or a numeric string from safetensors metadata); anything else is None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _as_str(value: Any) -> str | None:
    """A text field from a file; None stays None (A1111 stores None for an unknown checkpoint)."""
    if value is None or isinstance(value, Mapping | list | tuple | torch.Tensor):
        return None
    return str(value)


def _keys(obj: Mapping[Any, Any], limit: int = 8) -> str:
    """A short, printable list of a dict's keys for error messages."""
    keys = [str(key) for key in list(obj)[: limit + 1]]
    if not keys:
        return "none"
    return ", ".join(keys[:limit]) + (", …" if len(keys) > limit else "")
