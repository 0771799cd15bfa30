"""Reading adapter files safely, by content: the one place user-supplied tensor files are opened.

Why by content and not by name: users upload files from chat and from other tools, and a `.pt` may be a
safetensors file (or the reverse). The kind is read from the first bytes: safetensors (a little-endian header
length then ``{``), a torch zip archive (``PK``), a legacy torch pickle (``0x80`` protocol byte), PNG, WEBP.
Pickles are read only with ``torch.load(weights_only=True)``; a file that needs arbitrary code is refused with
:class:`UnsafeFileError` and nothing in it runs.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import struct
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch

FileKind = Literal["safetensors", "torch", "png", "webp", "unknown"]

# A user file larger than this is refused before reading (the largest real hypernetworks are ~200 MB).
MAX_ADAPTER_BYTES = 512 * 2**20


class AdapterFileError(ValueError):
    """The file is not a usable adapter; the message names the file and says what is wrong."""


class UnsafeFileError(AdapterFileError):
    """A pickle that would need arbitrary code to load; refused, never loaded another way."""


def one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's message folded to one line of at most ``limit`` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def sniff(data: bytes) -> FileKind:
    """What kind of file ``data`` starts like (at least 16 bytes give a sure answer)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    # safetensors before pickles: a header of 128 bytes starts with 0x80, a pickle's protocol byte.
    if len(data) >= 9:
        (header_len,) = struct.unpack("<Q", data[:8])
        if 2 <= header_len <= 100 * 2**20 and data[8:9] == b"{":
            return "safetensors"
    if data[:2] == b"PK" or data[:1] == b"\x80":
        return "torch"
    return "unknown"


def read_bytes(source: Path | bytes, label: str | None = None) -> tuple[bytes, str]:
    """The file's bytes and the label errors use (its name); refuses files over :data:`MAX_ADAPTER_BYTES`."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        _check_size(len(data), label or "upload")
        return data, label or "upload"
    path = Path(source)
    name = label or path.name
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise AdapterFileError(f"{name}: cannot read ({one_line(exc)})") from None
    _check_size(size, name)
    return path.read_bytes(), name


def _check_size(size: int, name: str) -> None:
    if size > MAX_ADAPTER_BYTES:
        limit = MAX_ADAPTER_BYTES // 2**20
        raise AdapterFileError(f"{name}: {size / 2**20:.0f} MB is larger than the {limit} MB limit")


def wanted_global(exc: BaseException) -> str:
    """`` (it asks to run os.system)`` from torch's weights-only refusal, or "" when torch does not say."""
    match = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", str(exc))
    return f" (it asks to run {match.group(1)})" if match else ""


def write_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """Write through a sibling temporary file, then rename: a folder scan never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _refusal(name: str, exc: BaseException) -> UnsafeFileError:
    wanted = wanted_global(exc)
    return UnsafeFileError(
        f"{name}: this file needs arbitrary code to unpickle{wanted}, which Atelier refuses for safety; "
        "nothing in it was run. Convert it to .safetensors with a tool you trust"
    )


def load_torch_pickle(data: bytes, name: str) -> Any:
    """``torch.load(weights_only=True)`` of the bytes; unsafe pickles become :class:`UnsafeFileError`."""
    try:
        with warnings.catch_warnings():  # "pickle protocol N" notices: A1111 files use 2-4, all read fine
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _refusal(name, exc) from None
    except Exception as exc:
        raise AdapterFileError(f"{name}: not a readable torch file ({one_line(exc)})") from None


def load_safetensors(data: bytes, name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and the ``__metadata__`` strings of a safetensors file held in memory."""
    from safetensors.torch import load

    try:
        tensors = load(data)
        (header_len,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + header_len])
    except Exception as exc:
        raise AdapterFileError(f"{name}: not a valid .safetensors file ({one_line(exc)})") from None
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        metadata = {}
    return tensors, {str(k): str(v) for k, v in metadata.items()}


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> Path:
    """Write contiguous CPU copies of ``tensors`` with string ``metadata``; returns ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path), metadata=metadata or {})
    return path
