"""diffusers components → an A1111/LDM single-file checkpoint.

Why: A1111, ComfyUI and most users' tools exchange Stable Diffusion models as one ``.safetensors``/``.ckpt`` in
the original LDM key layout. We need such files for two things: test fixtures for our single-file loader (tiny
random models, in both the SD1 and SD2 layouts), and an "export for A1111" of a diffusers model.

The layout (the reverse of what diffusers' ``from_single_file`` converts):

* UNet → ``model.diffusion_model.*``: ``input_blocks.N.{0 resnet,1 attention}``, ``middle_block.{0,1,2}``,
  ``output_blocks.N.{0 resnet,1 attention,1|2 upsampler}``, ``time_embed.{0,2}``, ``out.{0,2}``; resnets rename
  ``norm1/conv1/time_emb_proj/norm2/conv2/conv_shortcut`` to ``in_layers.0/in_layers.2/emb_layers.1/
  out_layers.0/out_layers.3/skip_connection``; transformer blocks keep their names.
* VAE → ``first_stage_model.*``: ``down.I.block.J``, ``up.(N-1-I).block.J`` (the decoder counts its blocks
  from the bottom), ``mid.block_1/attn_1/block_2``, ``norm_out``, ``nin_shortcut``; the mid-block attention is
  a 1×1 convolution in LDM (``q/k/v/proj_out`` weights shaped ``[C, C, 1, 1]``, ``norm`` not ``group_norm``).
* SD1 text encoder (Hugging Face CLIP) → ``cond_stage_model.transformer.text_model.*``. transformers ≥ 5.6
  flattened ``CLIPTextModel`` so its ``state_dict()`` has no ``text_model.`` level; we put it back when absent
  (real A1111 files have it, and diffusers detects SD1 by the full key).
* SD2 text encoder (OpenCLIP ViT-H, stored as a 23-layer Hugging Face CLIP) → ``cond_stage_model.model.*``:
  ``token_embedding``, ``positional_embedding`` (a bare tensor), ``transformer.resblocks.I.{ln_1, attn.in_proj_
  weight/bias (q, k, v concatenated), attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}``, ``ln_final`` and an
  identity ``text_projection``. SD2 uses the penultimate OpenCLIP layer, which is why diffusers' encoder has 23
  layers; the unused 24th layer of a real SD2 file is not reconstructed (loaders ignore it).

The mapping is written key by key and fails on a key it does not know, so an unsupported architecture (an
SDXL UNet, a class-conditioned UNet) is an error, not a silently incomplete file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

Family = Literal["sd1", "sd2"]
StateDict = dict[str, torch.Tensor]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
OPEN_CLIP_PREFIX = "cond_stage_model.model."

_RESNET_RENAMES = (
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("time_emb_proj.", "emb_layers.1."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("conv_shortcut.", "skip_connection."),
)


def _rename_start(rest: str, renames: tuple[tuple[str, str], ...]) -> str:
    """Rename the first component of ``rest`` by the first matching prefix in ``renames``."""
    for old, new in renames:
        if rest.startswith(old):
            return new + rest[len(old) :]
    return rest


def _unet_key(key: str, layers: int, up_blocks_with_attention: set[int]) -> str:
    """One diffusers UNet key → its LDM name (without the ``model.diffusion_model.`` prefix)."""
    fixed = {
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "conv_in.": "input_blocks.0.0.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
    }
    for old, new in fixed.items():
        if key.startswith(old):
            return new + key[len(old) :]
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = 1 + block * (layers + 1) + j
        if kind == "resnets":
            return f"input_blocks.{index}.0.{_rename_start(rest, _RESNET_RENAMES)}"
        return f"input_blocks.{index}.1.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{(int(m[1]) + 1) * (layers + 1)}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_rename_start(m[2], _RESNET_RENAMES)}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = block * (layers + 1) + j  # an up block has layers + 1 resnets: one output block each
        if kind == "resnets":
            return f"output_blocks.{index}.0.{_rename_start(rest, _RESNET_RENAMES)}"
        return f"output_blocks.{index}.1.{rest}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        block = int(m[1])
        slot = 2 if block in up_blocks_with_attention else 1
        return f"output_blocks.{block * (layers + 1) + layers}.{slot}.conv.{m[2]}"
    raise ValueError(f"UNet key {key!r} has no A1111/LDM equivalent (unsupported architecture)")


def unet_to_ldm(state_dict: Mapping[str, torch.Tensor], layers_per_block: int) -> StateDict:
    """A diffusers ``UNet2DConditionModel`` state dict → LDM keys under ``model.diffusion_model.``.

    ``layers_per_block`` is the UNet config's value (2 for every SD 1.x/2.x model).
    """
    with_attention = {int(m[1]) for key in state_dict if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", key))}
    return {UNET_PREFIX + _unet_key(key, layers_per_block, with_attention): value for key, value in state_dict.items()}


_VAE_ATTENTION_RENAMES = (
    ("group_norm.", "norm."),
    ("to_q.", "q."),
    ("to_k.", "k."),
    ("to_v.", "v."),
    ("to_out.0.", "proj_out."),
)


def _vae_key(key: str, num_blocks: int) -> str:
    """One diffusers AutoencoderKL key → its LDM name (without the ``first_stage_model.`` prefix)."""
    for side in ("encoder", "decoder"):
        if key.startswith(f"{side}.conv_norm_out."):
            return f"{side}.norm_out." + key[len(f"{side}.conv_norm_out.") :]
    if re.fullmatch(r"(encoder|decoder)\.(conv_in|conv_out)\.(weight|bias)", key) or re.fullmatch(
        r"(post_)?quant_conv\.(weight|bias)", key
    ):
        return key
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{_rename_start(m[3], (('conv_shortcut.', 'nin_shortcut.'),))}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        level = num_blocks - 1 - int(m[1])
        return f"decoder.up.{level}.block.{m[2]}.{_rename_start(m[3], (('conv_shortcut.', 'nin_shortcut.'),))}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        return f"decoder.up.{num_blocks - 1 - int(m[1])}.upsample.conv.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
        return f"{m[1]}.mid.attn_1.{_rename_start(m[2], _VAE_ATTENTION_RENAMES)}"
    raise ValueError(f"VAE key {key!r} has no A1111/LDM equivalent (unsupported architecture)")


def vae_to_ldm(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """A diffusers ``AutoencoderKL`` state dict → LDM keys under ``first_stage_model.``.

    LDM's mid-block attention uses 1×1 convolutions, so its linear weights gain two trailing unit dimensions.
    """
    num_blocks = len({m[1] for key in state_dict if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", key))})
    out: StateDict = {}
    for key, value in state_dict.items():
        name = _vae_key(key, num_blocks)
        if re.search(r"\.mid\.attn_1\.(q|k|v|proj_out)\.weight$", name) and value.ndim == 2:
            value = value.reshape(*value.shape, 1, 1)
        out[VAE_PREFIX + name] = value
    return out


def clip_text_to_ldm(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """An SD1 ``CLIPTextModel`` state dict → ``cond_stage_model.transformer.text_model.*``.

    Adds the ``text_model.`` level that transformers ≥ 5.6 no longer puts in ``CLIPTextModel.state_dict()``;
    keys that already have it (older transformers) are kept as they are.
    """
    return {
        CLIP_PREFIX + (key if key.startswith("text_model.") else "text_model." + key): value
        for key, value in state_dict.items()
        if not key.endswith("position_ids")  # a non-persistent buffer in recent versions; not a weight
    }


_OPEN_CLIP_LAYER_RENAMES = (
    ("layer_norm1.", "ln_1."),
    ("layer_norm2.", "ln_2."),
    ("self_attn.out_proj.", "attn.out_proj."),
    ("mlp.fc1.", "mlp.c_fc."),
    ("mlp.fc2.", "mlp.c_proj."),
)


def open_clip_text_to_ldm(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """An SD2 ``CLIPTextModel`` state dict → OpenCLIP keys under ``cond_stage_model.model.``.

    OpenCLIP keeps one fused ``in_proj`` per attention layer: q, k and v concatenated along the output
    dimension (in that order). An identity ``text_projection`` ``[hidden, hidden]`` is added because real files
    have one and loaders read the hidden width from its first dimension; SD2 conditioning never applies it.
    """
    sd = {key.removeprefix("text_model."): value for key, value in state_dict.items()}
    out: StateDict = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if key.endswith("position_ids"):
            continue
        if key == "embeddings.token_embedding.weight":
            out[OPEN_CLIP_PREFIX + "token_embedding.weight"] = value
        elif key == "embeddings.position_embedding.weight":
            out[OPEN_CLIP_PREFIX + "positional_embedding"] = value
        elif key.startswith("final_layer_norm."):
            out[OPEN_CLIP_PREFIX + "ln_final." + key.removeprefix("final_layer_norm.")] = value
        elif m := re.fullmatch(r"encoder\.layers\.(\d+)\.self_attn\.(q|k|v)_proj\.(weight|bias)", key):
            qkv.setdefault((int(m[1]), m[3]), {})[m[2]] = value
        elif m := re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", key):
            rest = _rename_start(m[2], _OPEN_CLIP_LAYER_RENAMES)
            if rest == m[2]:
                raise ValueError(f"text encoder key {key!r} has no OpenCLIP equivalent")
            out[f"{OPEN_CLIP_PREFIX}transformer.resblocks.{m[1]}.{rest}"] = value
        else:
            raise ValueError(f"text encoder key {key!r} has no OpenCLIP equivalent")
    for (layer, kind), parts in sorted(qkv.items()):
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"text encoder layer {layer} lacks one of q/k/v {kind}")
        fused = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
        out[f"{OPEN_CLIP_PREFIX}transformer.resblocks.{layer}.attn.in_proj_{kind}"] = fused
    width = sd["embeddings.token_embedding.weight"].shape[1]
    dtype = sd["embeddings.token_embedding.weight"].dtype
    out[OPEN_CLIP_PREFIX + "text_projection"] = torch.eye(width, dtype=dtype)
    return out


TEXT_EXPORTERS: dict[str, Callable[[Mapping[str, torch.Tensor]], StateDict]] = {
    "sd1": clip_text_to_ldm,
    "sd2": open_clip_text_to_ldm,
}


def ldm_state_dict(
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    family: Family,
    dtype: torch.dtype | None = None,
) -> StateDict:
    """The complete A1111 single-file state dict of the three networks (CPU, contiguous, optionally cast).

    ``family`` picks the text encoder layout: ``"sd1"`` (CLIP ViT-L) or ``"sd2"`` (OpenCLIP ViT-H).
    """
    if family not in TEXT_EXPORTERS:
        raise ValueError(f"unknown model family {family!r}; expected one of {sorted(TEXT_EXPORTERS)}")
    state: StateDict = {}
    state.update(unet_to_ldm(unet.state_dict(), unet.config.layers_per_block))
    state.update(vae_to_ldm(vae.state_dict()))
    state.update(TEXT_EXPORTERS[family](text_encoder.state_dict()))
    return {key: _plain(value, dtype) for key, value in state.items()}


def _plain(value: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """Detached, on the CPU, contiguous (safetensors needs that), floats cast to ``dtype`` when given."""
    cast = dtype if dtype is not None and value.is_floating_point() else None
    return value.detach().to("cpu", dtype=cast).contiguous()


def save_single_file(
    path: Path | str,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    family: Family = "sd1",
    dtype: torch.dtype | None = None,
) -> Path:
    """Write the three networks as one A1111-layout checkpoint; returns the path.

    ``.safetensors`` (the default, and the safe choice) or, for ``.ckpt``/``.pt``, a ``torch.save`` of
    ``{"state_dict": ...}`` — tensors only, so ``torch.load(weights_only=True)`` reads it.
    """
    path = Path(path)
    state = ldm_state_dict(unet, vae, text_encoder, family, dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".ckpt", ".pt", ".pth"):
        torch.save({"state_dict": state}, path)
    else:
        from safetensors.torch import save_file

        save_file(state, str(path), metadata={"format": "pt"})
    return path
