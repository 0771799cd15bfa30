"""Device and dtype selection.

``auto`` means what users of SD front ends expect: CUDA in half precision when a GPU is there, else the CPU
in float32 (half precision on CPU is slow and lossy). Both stay overridable for odd hardware.
"""

from __future__ import annotations

import torch

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class DeviceError(ValueError):
    """The configured device or dtype cannot be used on this machine."""


def choose_device(name: str = "auto") -> torch.device:
    """Resolve a device name; ``auto`` picks CUDA when available, else MPS, else CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} requested but this torch build sees no CUDA GPU")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"device {name!r} requested but only {torch.cuda.device_count()} GPU(s) exist")
    return device


def choose_dtype(name: str, device: torch.device) -> torch.dtype:
    """Resolve a dtype name; ``auto`` is float16 on accelerators and float32 on the CPU."""
    if name == "auto":
        return torch.float32 if device.type == "cpu" else torch.float16
    if name not in _DTYPES:
        raise DeviceError(f"unknown dtype {name!r}; use auto, {', '.join(_DTYPES)}")
    return _DTYPES[name]


def set_threads(threads: int) -> None:
    """Cap torch's CPU threads (0 = leave torch's default). The machine may be shared."""
    if threads > 0:
        torch.set_num_threads(threads)
