"""Which adapters a model can use, from its configs alone (no weights loaded), and reading a file of either kind.

Why from configs: ``atelier adapters check`` and upload validation must answer "does this fit our model?" in
milliseconds, without loading a 4 GB checkpoint. An embedding fits when one of its halves has the text encoder's
width; a hypernetwork fits when it has a module for a width some attention layer sees (the cross-attention
context width, or a self-attention width, which is a UNet block's channel count).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from engine.adapters.files import AdapterFileError, load_safetensors, load_torch_pickle, read_bytes, sniff

if TYPE_CHECKING:
    from engine.adapters.embeddings import Embedding
    from engine.adapters.hypernetwork import Hypernetwork
    from engine.loading import LoadedModel


@dataclass(frozen=True)
class ModelWidths:
    """The widths adapters must match: text encoder (embeddings), cross-attention context, self-attention."""

    name: str
    text: int
    cross: int
    self_attention: tuple[int, ...]

    @property
    def attention(self) -> set[int]:
        return {self.cross, *self.self_attention}


def widths_from_configs(folder: Path, name: str | None = None) -> ModelWidths:
    """Read a diffusers-layout folder's (or skeleton's) text-encoder and UNet configs."""
    text = json.loads((folder / "text_encoder" / "config.json").read_text(encoding="utf-8"))
    unet = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
    blocks = [c for c, kind in zip(unet["block_out_channels"], unet["down_block_types"], strict=False)
              if "CrossAttn" in kind]
    return ModelWidths(name or folder.name, int(text["hidden_size"]), int(unet["cross_attention_dim"]),
                       tuple(dict.fromkeys(int(c) for c in blocks)))


def model_widths(source: Path, config_dir: Path | None = None) -> ModelWidths:
    """Widths of a local model: a diffusers folder, or an A1111 single file (via its skeleton)."""
    if source.is_dir():
        return widths_from_configs(source)
    if config_dir is not None:
        return widths_from_configs(config_dir, source.stem)
    from engine.single_file import checkpoint_keys, default_skeleton, detect_family

    family = detect_family(checkpoint_keys(source), source.name)
    return widths_from_configs(default_skeleton(family), source.stem)


AdapterKind = Literal["embedding", "hypernetwork"]


def read_adapter(source: Path | bytes, name: str | None = None,
                 label: str | None = None) -> tuple[AdapterKind, Embedding | Hypernetwork]:
    """Read a file of either kind, telling them apart by content; errors name the file and the reason."""
    from engine.adapters.embeddings import embedding_from_dict, is_embedding_dict, read_embedding
    from engine.adapters.hypernetwork import (
        hypernetwork_from_dict,
        is_hypernetwork_dict,
        is_hypernetwork_safetensors,
        read_hypernetwork,
    )

    data, label = read_bytes(source, label)
    if name is None:
        name = Path(label).stem
    kind = sniff(data[:16])
    if kind in ("png", "webp"):
        return "embedding", read_embedding(data, name=name)
    if kind == "safetensors":
        tensors, metadata = load_safetensors(data, label)
        if is_hypernetwork_safetensors(tensors, metadata):
            return "hypernetwork", read_hypernetwork(data, name=name)
        return "embedding", embedding_from_dict(tensors, name, label)
    if kind == "torch":
        obj = load_torch_pickle(data, label)
        if is_hypernetwork_dict(obj):  # loaded once: build from the dict, never unpickle twice
            return "hypernetwork", hypernetwork_from_dict(obj, label, name)
        if is_embedding_dict(obj):
            return "embedding", embedding_from_dict(obj, name, label)
        raise AdapterFileError(f"{label}: a torch file, but neither an embedding nor a hypernetwork")
    raise AdapterFileError(f"{label}: not an embedding or hypernetwork file (expected .pt, .safetensors, PNG or WEBP)")


def fits(kind: AdapterKind, adapter: Embedding | Hypernetwork, widths: ModelWidths) -> tuple[bool, str]:
    """Whether the model can use the adapter, and one line saying why or why not."""
    if kind == "embedding":
        if adapter.for_width(widths.text) is not None:  # type: ignore[union-attr]
            return True, f"usable with {widths.name} (text width {widths.text})"
        have = ", ".join(str(w) for w in adapter.widths().values())  # type: ignore[union-attr]
        return False, f"not usable with {widths.name}: width {have}, the model's text encoder needs {widths.text}"
    mine = adapter.widths()  # type: ignore[union-attr]
    used = sorted(mine & widths.attention)
    if not used:
        return False, (f"not usable with {widths.name}: modules for widths {sorted(mine)}, "
                       f"the model's attention layers see {sorted(widths.attention)}")
    where = ["cross-attention"] if widths.cross in used else []
    where += [f"self-attention at width {w}" for w in used if w in widths.self_attention]
    return True, f"usable with {widths.name}: applies to {', '.join(where)}"


def loaded_widths(model: LoadedModel) -> ModelWidths:
    """The widths adapters must match, from the loaded model's own configs (no file is read)."""
    unet = model.unet.config
    cross = unet.cross_attention_dim
    cross = int(cross[0] if isinstance(cross, list | tuple) else cross)
    blocks = [c for c, kind in zip(unet.block_out_channels, unet.down_block_types, strict=False)
              if "CrossAttn" in kind]
    return ModelWidths(model.name, int(model.text_encoder.config.hidden_size), cross,
                       tuple(dict.fromkeys(int(c) for c in blocks)))


ExportFormat = Literal["a1111", "safetensors"]
EXPORT_SUFFIX: dict[str, str] = {"a1111": ".pt", "safetensors": ".safetensors"}


def write_adapter(kind: AdapterKind, adapter: Embedding | Hypernetwork, fmt: ExportFormat, path: Path) -> Path:
    """Write ``adapter`` as A1111's ``.pt`` (what A1111 and most guides expect) or as safetensors."""
    from engine.adapters.embeddings import write_embedding_pt, write_embedding_safetensors
    from engine.adapters.hypernetwork import write_hypernetwork_pt, write_hypernetwork_safetensors

    writers = {
        ("embedding", "a1111"): write_embedding_pt, ("embedding", "safetensors"): write_embedding_safetensors,
        ("hypernetwork", "a1111"): write_hypernetwork_pt,
        ("hypernetwork", "safetensors"): write_hypernetwork_safetensors,
    }
    return writers[(kind, fmt)](adapter, Path(path))  # type: ignore[operator]
