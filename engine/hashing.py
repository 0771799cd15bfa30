"""A1111's model hash: the first 10 hex digits of the file's sha256, cached by path, size and mtime.

Hashing a 4 GB checkpoint takes seconds, so results are remembered in a small JSON file. A diffusers
directory has no single file; its hash covers its weight files in a fixed order.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt")
_CHUNK = 1 << 20


def _weight_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)


def _stamp(files: list[Path]) -> str:
    return ";".join(f"{p}:{(s := p.stat()).st_size}:{s.st_mtime_ns}" for p in files)


def sha256_of(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for p in files:
        with open(p, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def model_hash(path: Path, cache_file: Path | None = None) -> str:
    """A1111 short hash (10 hex) of a model file or diffusers directory."""
    path = path.resolve()
    files = _weight_files(path)
    if not files:
        return "0" * 10
    stamp = _stamp(files)
    cache: dict[str, dict[str, str]] = {}
    if cache_file is not None and cache_file.is_file():
        try:
            cache = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            cache = {}
    entry = cache.get(str(path))
    if entry and entry.get("stamp") == stamp:
        return entry["sha256"][:10]
    full = sha256_of(files)
    if cache_file is not None:
        cache[str(path)] = {"stamp": stamp, "sha256": full}
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache, indent=1))
        os.replace(tmp, cache_file)
    return full[:10]
