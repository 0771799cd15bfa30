"""A1111 hypernetworks: the spec, the exact MLP, reading and writing `.pt` and safetensors, new networks.

Why this module mirrors A1111 so closely: users already own thousands of hypernetwork files made by the AUTOMATIC1111
web UI. Those files are bare state dicts whose keys are the indices of one ``nn.Sequential`` (parameter-free layers
count too), so the only way to load them is to rebuild the very same Sequential from the metadata stored beside the
weights. The facts followed here are in ``shared/reference/a1111-compat.md`` section 1; no A1111 code is used.

A network holds, for each context width (768, 320, 640, 1280, ...), two residual MLPs: one applied to the attention
context before ``to_k`` and one before ``to_v``. ``out = x + MLP(x) * multiplier``.

Files are opened only through :mod:`engine.adapters.files`, so pickles are read with ``weights_only=True`` and a
file that would need arbitrary code is refused with :class:`UnsafeFileError` before anything in it runs.

Safetensors layout (ours; A1111 has none): tensors ``"<width>.k.<state-dict key>"`` and ``"<width>.v.<key>"``, for
example ``"768.k.linear.0.weight"``; on reading, ``"<width>.0."``/``"<width>.1."`` are accepted as well. The spec is in
``__metadata__`` under the A1111 key names, with ``"atelier_kind": "hypernetwork"`` as the marker. String fields are
stored as they are (left out when None); numbers, booleans and lists are stored as JSON.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

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

__all__ = [
    "ACTIVATIONS",
    "WEIGHT_INITS",
    "Hypernetwork",
    "HypernetworkModule",
    "HypernetworkSpec",
    "create_hypernetwork",
    "is_hypernetwork_dict",
    "is_hypernetwork_safetensors",
    "read_hypernetwork",
    "write_hypernetwork_pt",
    "write_hypernetwork_safetensors",
]

SAFETENSORS_KIND_KEY = "atelier_kind"
SAFETENSORS_KIND = "hypernetwork"

# The width multipliers A1111's UI offers by default, and the widths of its default SD1 network.
DEFAULT_LAYER_STRUCTURE: tuple[float, ...] = (1.0, 2.0, 1.0)
DEFAULT_SD1_WIDTHS: tuple[int, ...] = (768, 320, 640, 1280)

# A1111's dropout probability for hidden layers when a file says only ``use_dropout``.
_LEGACY_DROPOUT = 0.3


def _activation_table() -> dict[str, Callable[[], nn.Module]]:
    """Activation name -> no-argument constructor, as A1111 names them.

    Why the whole ``torch.nn.modules.activation`` module: A1111 accepts any class there by its lower-cased name, and
    files made with e.g. ``gelu`` or ``mish`` exist. ``swish`` is A1111's own alias and means Hardswish (not SiLU);
    getting that wrong silently changes every output of such a network.
    """
    table: dict[str, Callable[[], nn.Module]] = {"linear": nn.Identity}
    module = torch.nn.modules.activation
    for cls_name, cls in inspect.getmembers(module, inspect.isclass):
        if cls.__module__ == module.__name__:
            table[cls_name.lower()] = cls
    table.update(
        {
            "relu": nn.ReLU,
            "leakyrelu": nn.LeakyReLU,
            "elu": nn.ELU,
            "swish": nn.Hardswish,
            "tanh": nn.Tanh,
            "sigmoid": nn.Sigmoid,
        }
    )
    return table


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = _activation_table()

WEIGHT_INITS: tuple[str, ...] = ("Normal", "XavierUniform", "XavierNormal", "KaimingUniform", "KaimingNormal")


def _normalize_activation(name: Any) -> str:
    """``None`` (old files) means no activation, spelled ``"linear"``; names are matched case-insensitively."""
    if name is None:
        return "linear"
    key = str(name).strip().lower()
    if key not in ACTIVATIONS:
        raise AdapterFileError(f"unknown activation function {name!r} (known: {', '.join(sorted(ACTIVATIONS))})")
    return key


def _derive_dropout(
    layer_structure: tuple[float, ...], use_dropout: bool, last_layer_dropout: bool
) -> tuple[float, ...]:
    """A1111's dropout structure for files that store only ``use_dropout``/``last_layer_dropout``."""
    n = len(layer_structure)
    if not use_dropout:
        return (0.0,) * n
    last = _LEGACY_DROPOUT if last_layer_dropout else 0.0
    return (0.0, *([_LEGACY_DROPOUT] * (n - 3)), last, 0.0)


def _float_tuple(values: Any, field: str) -> tuple[float, ...]:
    """A list/tuple of numbers as floats; anything else is a structure error naming the field."""
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise AdapterFileError(f"{field} must be a list of numbers, not {values!r}")
    try:
        return tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise AdapterFileError(f"{field} must be a list of numbers, not {values!r}") from None


@dataclass(frozen=True)
class HypernetworkSpec:
    """Everything besides the weights that decides how a hypernetwork is built, plus its training metadata.

    Defaults are the ones A1111 assumes when a key is missing from a file (not the ones its UI writes): in
    particular ``activate_output`` is True for files that do not say. ``dropout_structure`` is derived from
    ``use_dropout``/``last_layer_dropout`` when not given, so after construction it is always a tuple.
    """

    layer_structure: tuple[float, ...] = DEFAULT_LAYER_STRUCTURE
    activation: str = "linear"
    layer_norm: bool = False
    activate_output: bool = True
    dropout_structure: tuple[float, ...] | None = None
    use_dropout: bool = False
    last_layer_dropout: bool = False
    weight_init: str = "Normal"
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    optional_info: str | None = None

    def __post_init__(self) -> None:
        structure = _float_tuple(self.layer_structure, "layer_structure")
        if len(structure) < 2 or structure[0] != 1 or structure[-1] != 1:
            raise AdapterFileError(f"layer_structure must start and end with 1, got {list(structure)}")
        if any(v <= 0 for v in structure):
            raise AdapterFileError(f"layer_structure multipliers must be positive, got {list(structure)}")
        object.__setattr__(self, "layer_structure", structure)
        object.__setattr__(self, "activation", _normalize_activation(self.activation))
        object.__setattr__(self, "dropout_structure", self._checked_dropout(structure))

    def _checked_dropout(self, structure: tuple[float, ...]) -> tuple[float, ...]:
        if self.dropout_structure is None:
            return _derive_dropout(structure, self.use_dropout, self.last_layer_dropout)
        dropout = _float_tuple(self.dropout_structure, "dropout_structure")
        if len(dropout) < len(structure):
            raise AdapterFileError(
                f"dropout_structure {list(dropout)} is shorter than layer_structure {list(structure)}"
            )
        if any(not 0 <= p < 1 for p in dropout):
            raise AdapterFileError(f"dropout probabilities must be in [0, 1), got {list(dropout)}")
        return dropout


class HypernetworkModule(nn.Module):
    """One residual MLP for contexts of width ``dim``.

    Why the attribute is called ``linear`` and the layers are appended in this order: the state-dict keys of
    A1111 files are ``linear.<index in the Sequential>.weight``, and activation, LayerNorm and Dropout layers take
    indices too. Per layer i: Linear, the activation (unless linear, or the last Linear without
    ``activate_output``), LayerNorm (if ``layer_norm``), Dropout (if ``dropout_structure[i + 1] > 0``).
    """

    def __init__(self, dim: int, spec: HypernetworkSpec) -> None:
        super().__init__()
        self.dim = dim
        self.spec = spec
        self.linear = nn.Sequential(*_build_layers(dim, spec))

    def forward(self, x: torch.Tensor, multiplier: float = 1.0) -> torch.Tensor:
        return x + self.linear(x) * multiplier


def _widths(dim: int, spec: HypernetworkSpec) -> list[int]:
    widths = [int(dim * m) for m in spec.layer_structure]
    if any(w < 1 for w in widths):
        raise AdapterFileError(f"layer_structure {list(spec.layer_structure)} gives an empty layer for width {dim}")
    return widths


def _make_activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except Exception as exc:
        raise AdapterFileError(f"activation {name!r} cannot be built without arguments ({one_line(exc)})") from None


def _build_layers(dim: int, spec: HypernetworkSpec) -> list[nn.Module]:
    widths = _widths(dim, spec)
    dropout = spec.dropout_structure or ()
    layers: list[nn.Module] = []
    last = len(widths) - 2
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if spec.activation != "linear" and (i < last or spec.activate_output):
            layers.append(_make_activation(spec.activation))
        if spec.layer_norm:
            layers.append(nn.LayerNorm(widths[i + 1]))
        if dropout[i + 1] > 0:
            layers.append(nn.Dropout(p=dropout[i + 1]))
    return layers


class Hypernetwork:
    """A named set of (k, v) module pairs keyed by context width.

    Why keyed by width: A1111 picks the module by the context's last dimension, so one network changes
    cross-attention (768 for SD1) and self-attention (320/640/1280) alike, and a width it lacks passes through.
    """

    def __init__(
        self, name: str, spec: HypernetworkSpec, modules: Mapping[int, tuple[HypernetworkModule, HypernetworkModule]]
    ) -> None:
        self.name = name
        self.spec = spec
        self.modules: dict[int, tuple[HypernetworkModule, HypernetworkModule]] = dict(modules)

    def __repr__(self) -> str:
        return f"Hypernetwork({self.name!r}, widths={sorted(self.modules)}, spec={self.spec!r})"

    def widths(self) -> set[int]:
        return set(self.modules)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Hypernetwork:
        """Move every module in place (like ``nn.Module.to``); returns self for chaining."""
        for pair in self.modules.values():
            for module in pair:
                module.to(device=device, dtype=dtype)
        return self

    def _apply(self, index: int, context: torch.Tensor, multiplier: float) -> torch.Tensor:
        pair = self.modules.get(int(context.shape[-1]))
        if pair is None:
            return context
        module = pair[index]
        # Why the cast: an fp32 network (e.g. while training) may run inside an fp16 UNet.
        dtype = module.linear[0].weight.dtype
        out = module(context.to(dtype), multiplier)
        return out.to(context.dtype)

    def apply_k(self, context: torch.Tensor, multiplier: float = 1.0) -> torch.Tensor:
        """The context that ``to_k`` should see; the same tensor when this network has no module for its width."""
        return self._apply(0, context, multiplier)

    def apply_v(self, context: torch.Tensor, multiplier: float = 1.0) -> torch.Tensor:
        """The context that ``to_v`` should see; the same tensor when this network has no module for its width."""
        return self._apply(1, context, multiplier)

    def parameters(self) -> Iterator[nn.Parameter]:
        """All trainable tensors, k then v module per width in ascending width order (stable for optimizers)."""
        for width in sorted(self.modules):
            for module in self.modules[width]:
                yield from module.parameters()

    def train(self, mode: bool = True) -> Hypernetwork:
        """Training mode turns the Dropout layers on, as in A1111."""
        for pair in self.modules.values():
            for module in pair:
                module.train(mode)
        return self

    def eval(self) -> Hypernetwork:
        return self.train(False)


# ----------------------------------------------------------------------------------------------------------- reading

_LEGACY_KEYS = {
    "linear1.weight": "linear.0.weight",
    "linear1.bias": "linear.0.bias",
    "linear2.weight": "linear.1.weight",
    "linear2.bias": "linear.1.bias",
}


def _layer_keys(obj: Mapping[Any, Any]) -> list[int]:
    """The width keys: only real ``int`` keys (not bools, not strings) are layers, as in A1111."""
    return [k for k in obj if type(k) is int]


def is_hypernetwork_dict(obj: Any) -> bool:
    """Whether a loaded pickle looks like an A1111 hypernetwork (so callers can tell it from an embedding).

    True when some int key maps to a pair of state dicts; legacy files (``linear1``/``linear2`` keys) have the same
    top-level shape.
    """
    if not isinstance(obj, Mapping):
        return False
    for key in _layer_keys(obj):
        value = obj[key]
        if isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, Mapping) for v in value):
            return True
    return False


_ST_KEY = re.compile(r"^(\d+)\.(k|v|0|1)\.(.+)$")


def is_hypernetwork_safetensors(tensors: Mapping[str, Any], metadata: Mapping[str, str]) -> bool:
    """Whether a safetensors file is one of ours: the metadata marker, or every tensor named ``<width>.k|v.<key>``."""
    if metadata.get(SAFETENSORS_KIND_KEY) == SAFETENSORS_KIND:
        return True
    return bool(tensors) and all(_ST_KEY.match(k) for k in tensors)


def _spec_from_fields(fields: Mapping[str, Any]) -> HypernetworkSpec:
    """A spec from A1111's key names; a missing key takes A1111's default for missing keys."""
    ls = fields.get("layer_structure")
    step = fields.get("step")
    return HypernetworkSpec(
        layer_structure=DEFAULT_LAYER_STRUCTURE if ls is None else ls,
        activation=fields.get("activation_func"),
        layer_norm=bool(fields.get("is_layer_norm", False)),
        activate_output=bool(fields.get("activate_output", True)),
        dropout_structure=fields.get("dropout_structure"),
        use_dropout=bool(fields.get("use_dropout", False)),
        last_layer_dropout=bool(fields.get("last_layer_dropout", False)),
        weight_init=str(fields.get("weight_initialization") or "Normal"),
        step=None if step is None else int(step),
        sd_checkpoint=_opt_str(fields.get("sd_checkpoint")),
        sd_checkpoint_name=_opt_str(fields.get("sd_checkpoint_name")),
        optional_info=_opt_str(fields.get("optional_info")),
    )


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _as_state_dict(raw: Any, where: str) -> dict[str, torch.Tensor]:
    """A plain float32 state dict, with legacy ``linear1``/``linear2`` names renamed."""
    if not isinstance(raw, Mapping):
        raise AdapterFileError(f"{where} is a {type(raw).__name__}, not a state dict")
    out: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        if not isinstance(value, torch.Tensor):
            raise AdapterFileError(f"{where}: {key!r} is a {type(value).__name__}, not a tensor")
        if not value.is_floating_point():
            raise AdapterFileError(f"{where}: {key!r} has dtype {value.dtype}, not a floating-point type")
        out[_LEGACY_KEYS.get(str(key), str(key))] = value.detach().to(torch.float32)
    return out


def _is_legacy(state_dicts: Iterable[Mapping[str, Any]]) -> bool:
    return any(key in _LEGACY_KEYS for sd in state_dicts for key in sd)


def _load_module(dim: int, spec: HypernetworkSpec, state: dict[str, torch.Tensor], where: str) -> HypernetworkModule:
    """Build the exact Sequential and load the weights, checking every key and shape first for a clear error."""
    module = HypernetworkModule(dim, spec)
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        parts = [f"missing {', '.join(missing)}"] if missing else []
        parts += [f"unexpected {', '.join(extra)}"] if extra else []
        raise AdapterFileError(f"{where}: {'; '.join(parts)} for {_describe(spec)}")
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            found, wanted = list(state[key].shape), list(tensor.shape)
            raise AdapterFileError(f"{where}: {key} has shape {found}, expected {wanted} for {_describe(spec)}")
    module.load_state_dict(state)
    return module


def _describe(spec: HypernetworkSpec) -> str:
    numbers = ", ".join(f"{v:g}" for v in spec.layer_structure)
    extras = [spec.activation] + (["layer norm"] if spec.layer_norm else [])
    extras.append("activated output" if spec.activate_output else "linear output")
    return f"layer structure [{numbers}] ({', '.join(extras)})"


def _build(
    name: str, label: str, spec: HypernetworkSpec, pairs: Mapping[int, tuple[dict[str, torch.Tensor], ...]]
) -> Hypernetwork:
    if not pairs:
        raise AdapterFileError(f"{label}: no hypernetwork layers (no width keys such as 768 or 320)")
    modules: dict[int, tuple[HypernetworkModule, HypernetworkModule]] = {}
    for width, (sd_k, sd_v) in pairs.items():
        if width < 1:
            raise AdapterFileError(f"{label}: width {width} is not a positive number")
        modules[width] = (
            _load_module(width, spec, sd_k, f"{label}: width {width} k"),
            _load_module(width, spec, sd_v, f"{label}: width {width} v"),
        )
    return Hypernetwork(name, spec, modules).eval()


def _pairs_from_pickle(obj: Mapping[Any, Any], label: str) -> dict[int, tuple[dict[str, torch.Tensor], ...]]:
    pairs: dict[int, tuple[dict[str, torch.Tensor], ...]] = {}
    for width in _layer_keys(obj):
        value = obj[width]
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise AdapterFileError(f"{label}: width {width} should hold a (k, v) pair, found {type(value).__name__}")
        pairs[width] = (
            _as_state_dict(value[0], f"{label}: width {width} k"),
            _as_state_dict(value[1], f"{label}: width {width} v"),
        )
    return pairs


def hypernetwork_from_dict(obj: Any, label: str, name: str | None = None) -> Hypernetwork:
    """Build a hypernetwork from an already-unpickled A1111 dict (shared by :func:`read_hypernetwork` and callers
    that loaded the file once to tell its kind)."""
    if not isinstance(obj, Mapping):
        raise AdapterFileError(f"{label}: holds a {type(obj).__name__}, not a hypernetwork dict")
    pairs = _pairs_from_pickle(obj, label)
    fields = dict(obj)
    if _is_legacy(sd for pair in pairs.values() for sd in pair):
        # The oldest files are a fixed [1, 2, 1] net without activation, whatever else they say.
        fields.update(layer_structure=[1, 2, 1], activation_func=None, is_layer_norm=False)
    spec = _spec_or_error(fields, label)
    return _build(name or _opt_str(obj.get("name")) or "hypernetwork", label, spec, pairs)


def _spec_or_error(fields: Mapping[str, Any], label: str) -> HypernetworkSpec:
    try:
        return _spec_from_fields(fields)
    except AdapterFileError as exc:
        raise AdapterFileError(f"{label}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise AdapterFileError(f"{label}: bad metadata ({one_line(exc)})") from None


def _metadata_fields(metadata: Mapping[str, str], label: str) -> dict[str, Any]:
    """Our safetensors metadata back to A1111-named values (JSON for everything that is not a plain string)."""
    fields: dict[str, Any] = {}
    for key, text in metadata.items():
        if key in _ST_STRING_FIELDS:
            fields[key] = text
        elif key in _ST_JSON_FIELDS:
            try:
                fields[key] = json.loads(text)
            except json.JSONDecodeError:
                raise AdapterFileError(f"{label}: metadata {key}={text!r} is not valid JSON") from None
    return fields


def _from_safetensors(data: bytes, label: str, name: str | None) -> Hypernetwork:
    tensors, metadata = load_safetensors(data, label)
    if not is_hypernetwork_safetensors(tensors, metadata):
        raise AdapterFileError(f"{label}: a .safetensors file without hypernetwork tensors ('768.k.linear.0.weight')")
    grouped: dict[int, tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = {}
    for key, tensor in tensors.items():
        match = _ST_KEY.match(key)
        if match is None:
            raise AdapterFileError(f"{label}: unexpected tensor {key!r}")
        pair = grouped.setdefault(int(match.group(1)), ({}, {}))
        pair[0 if match.group(2) in ("k", "0") else 1][match.group(3)] = tensor
    pairs = {w: (_as_state_dict(k, f"{label}: width {w} k"), _as_state_dict(v, f"{label}: width {w} v"))
             for w, (k, v) in grouped.items()}
    fields = _metadata_fields(metadata, label)
    spec = _spec_or_error(fields, label)
    return _build(name or fields.get("name") or "hypernetwork", label, spec, pairs)


def read_hypernetwork(source: Path | bytes, name: str | None = None) -> Hypernetwork:
    """Read an A1111 `.pt` or our safetensors hypernetwork, by content; weights come back float32 on the CPU.

    The network's name is ``name``, else the file's base name (the name users see in A1111), never the ``name``
    stored inside, which is often stale after a rename. Any problem is an :class:`AdapterFileError` naming the file.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        data, label = read_bytes(source, name)
    else:
        path = Path(source)
        data, label = read_bytes(path)
        name = name or path.stem
    kind = sniff(data)
    if kind == "torch":
        return hypernetwork_from_dict(load_torch_pickle(data, label), label, name)
    if kind == "safetensors":
        return _from_safetensors(data, label, name)
    raise AdapterFileError(f"{label}: not a hypernetwork file (neither a torch .pt nor a .safetensors file)")


# ----------------------------------------------------------------------------------------------------------- writing

_ST_STRING_FIELDS = ("name", "activation_func", "weight_initialization", "sd_checkpoint", "sd_checkpoint_name",
                     "optional_info")
_ST_JSON_FIELDS = ("layer_structure", "is_layer_norm", "use_dropout", "dropout_structure", "last_layer_dropout",
                   "activate_output", "step")


def _a1111_fields(hn: Hypernetwork) -> dict[str, Any]:
    """The spec under A1111's key names, with lists where A1111 writes lists."""
    spec = hn.spec
    return {
        "name": hn.name,
        "layer_structure": list(spec.layer_structure),
        "activation_func": spec.activation,
        "is_layer_norm": spec.layer_norm,
        "weight_initialization": spec.weight_init,
        "use_dropout": spec.use_dropout,
        "dropout_structure": list(spec.dropout_structure or ()),
        "last_layer_dropout": spec.last_layer_dropout,
        "activate_output": spec.activate_output,
        "step": spec.step,
        "sd_checkpoint": spec.sd_checkpoint,
        "sd_checkpoint_name": spec.sd_checkpoint_name,
        "optional_info": spec.optional_info,
    }


def _plain_state(module: HypernetworkModule) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in module.state_dict().items()}




def write_hypernetwork_pt(hn: Hypernetwork, path: Path) -> Path:
    """Write a plain dict that A1111 itself loads: int width -> (k state dict, v state dict), plus the metadata.

    Only ints, floats, strings, lists, tuples, dicts and float32 tensors go in, so ``torch.load(weights_only=True)``
    reads it back.
    """
    payload: dict[Any, Any] = {w: (_plain_state(k), _plain_state(v)) for w, (k, v) in hn.modules.items()}
    payload.update(_a1111_fields(hn))
    return write_atomically(Path(path), lambda tmp: torch.save(payload, tmp))


def write_hypernetwork_safetensors(hn: Hypernetwork, path: Path) -> Path:
    """Write ``"<width>.k.<key>"``/``"<width>.v.<key>"`` tensors with the spec in the header (see module docstring)."""
    tensors: dict[str, torch.Tensor] = {}
    for width, (k, v) in hn.modules.items():
        tensors.update({f"{width}.k.{key}": t for key, t in _plain_state(k).items()})
        tensors.update({f"{width}.v.{key}": t for key, t in _plain_state(v).items()})
    metadata = {SAFETENSORS_KIND_KEY: SAFETENSORS_KIND}
    for key, value in _a1111_fields(hn).items():
        if key in _ST_STRING_FIELDS:
            if value is not None:
                metadata[key] = str(value)
        else:
            metadata[key] = json.dumps(value)
    return write_atomically(Path(path), lambda tmp: save_safetensors(tensors, tmp, metadata))


# ------------------------------------------------------------------------------------------------------ new networks


def _seed_for(seed: int, width: int, index: int) -> int:
    """A generator seed per (width, k/v), so a module's initial weights do not depend on the other widths."""
    return (seed * 0x9E3779B97F4A7C15 + width * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) % 2**63


def _initialize(module: HypernetworkModule, spec: HypernetworkSpec, generator: torch.Generator) -> None:
    """A1111's initializations: LayerNorm always N(0, 0.01); Linear per ``weight_init``; biases zero."""
    nonlinearity = "leaky_relu" if spec.activation == "leakyrelu" else "relu"
    init = nn.init
    for layer in module.linear:
        if not isinstance(layer, nn.Linear | nn.LayerNorm):
            continue
        weight, bias = layer.weight.data, layer.bias.data
        if spec.weight_init == "Normal" or isinstance(layer, nn.LayerNorm):
            init.normal_(weight, mean=0.0, std=0.01, generator=generator)
        elif spec.weight_init == "XavierUniform":
            init.xavier_uniform_(weight, generator=generator)
        elif spec.weight_init == "XavierNormal":
            init.xavier_normal_(weight, generator=generator)
        elif spec.weight_init == "KaimingUniform":
            init.kaiming_uniform_(weight, nonlinearity=nonlinearity, generator=generator)
        else:
            init.kaiming_normal_(weight, nonlinearity=nonlinearity, generator=generator)
        init.zeros_(bias)


def create_hypernetwork(
    name: str,
    widths: Iterable[int] = DEFAULT_SD1_WIDTHS,
    spec: HypernetworkSpec | None = None,
    seed: int = 0,
) -> Hypernetwork:
    """A new network, initialized as A1111 does, deterministic for ``seed``; widths keep the order given."""
    spec = spec or HypernetworkSpec()
    if spec.weight_init not in WEIGHT_INITS:
        raise AdapterFileError(f"unknown weight initialization {spec.weight_init!r} (known: {', '.join(WEIGHT_INITS)})")
    modules: dict[int, tuple[HypernetworkModule, HypernetworkModule]] = {}
    for width in dict.fromkeys(int(w) for w in widths):
        pair = []
        for index in (0, 1):
            module = HypernetworkModule(width, spec)
            _initialize(module, spec, torch.Generator().manual_seed(_seed_for(seed, width, index)))
            pair.append(module)
        modules[width] = (pair[0], pair[1])
    return Hypernetwork(name, spec, modules).eval()

