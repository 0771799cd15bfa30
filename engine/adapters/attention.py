"""The attention processor that applies hypernetworks per sample and masks padded contexts.

Why a processor (diffusers' extension point) and not patched modules: one UNet serves a batch whose rows each
want a different set of hypernetworks, or none, so the choice has to travel with the batch. The pipeline passes a
:class:`BatchAdapters` through ``cross_attention_kwargs``; without one the processor is plain scaled-dot-product
attention (diffusers' ``AttnProcessor2_0`` maths), so a batch without adapters pays nothing.

A1111's hypernetwork maths (``../shared/reference/a1111-compat.md``): in every attention layer the context goes
through the network's k-MLP before ``to_k`` and its v-MLP before ``to_v``; the module is picked by the context's
width; several networks compose in prompt order. For **cross-attention** the context is the prompt encoding, the
same at every step and every layer, so the pipeline computes the k- and v-contexts once per sample
(:func:`chain_contexts`) and hands them in here. For **self-attention** the context is the hidden state itself,
so rows are grouped by their chain and each group goes through its networks here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from engine.adapters.hypernetwork import Hypernetwork

# A chain: the hypernetworks of one guidance half of one sample, in prompt order, with their multipliers.
Chain = tuple[tuple["Hypernetwork", float], ...]


def chain_has_width(chain: Chain, width: int) -> bool:
    return any(width in hn.widths() for hn, _ in chain)


def chain_contexts(chain: Chain, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(k-context, v-context): ``context`` through each network's k- and v-module in order (A1111 composition)."""
    k = v = context
    for network, multiplier in chain:
        k = network.apply_k(k, multiplier)
        v = network.apply_v(v, multiplier)
    return k, v


@dataclass
class BatchAdapters:
    """Per-row adapter state of one UNet call over rows ``[uncond(B); cond(B)]``.

    ``cross_k``/``cross_v`` replace the context fed to ``to_k``/``to_v`` in cross-attention (None: use the
    context). ``cross_mask`` (bool ``[rows, 1, 1, tokens]``, True = attend) hides the zero padding of contexts
    shorter than the batch's longest. ``self_chains`` holds each row's chain for self-attention.
    """

    cross_k: torch.Tensor | None = None
    cross_v: torch.Tensor | None = None
    cross_mask: torch.Tensor | None = None
    self_chains: Sequence[Chain] = ()
    _groups: dict[int, list[tuple[torch.Tensor, list[Hypernetwork], torch.Tensor]]] = field(default_factory=dict)

    def self_groups(self, width: int, device: torch.device,
                    dtype: torch.dtype) -> list[tuple[torch.Tensor, list[Hypernetwork], torch.Tensor]]:
        """Rows grouped by the networks of their chain (not the multipliers, which go per row as a tensor), for
        chains with a module for ``width``: (row indices, networks, multipliers ``[rows, networks, 1, 1]``).
        Cached per width: every layer of a width asks the same."""
        if width not in self._groups:
            by_networks: dict[tuple[int, ...], tuple[list[int], list[Hypernetwork], list[list[float]]]] = {}
            for row, chain in enumerate(self.self_chains):
                if chain and chain_has_width(chain, width):
                    key = tuple(id(hn) for hn, _ in chain)
                    rows, _, multipliers = by_networks.setdefault(key, ([], [hn for hn, _ in chain], []))
                    rows.append(row)
                    multipliers.append([m for _, m in chain])
            self._groups[width] = [
                (torch.tensor(rows, device=device), networks,
                 torch.tensor(multipliers, device=device, dtype=dtype)[:, :, None, None])
                for rows, networks, multipliers in by_networks.values()
            ]
        return self._groups[width]

    def self_contexts(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Self-attention's k- and v-inputs: the hidden states, changed on the rows whose chain applies.

        One pass per distinct *set of networks*, whatever the multipliers: a batch where every user picked another
        strength costs what a batch with one shared setting costs.
        """
        groups = self.self_groups(hidden.shape[-1], hidden.device, hidden.dtype)
        if not groups:
            return hidden, hidden
        if len(groups) == 1 and len(groups[0][0]) == hidden.shape[0]:
            _, networks, multipliers = groups[0]
            return _apply_networks(networks, multipliers, hidden)
        k, v = hidden.clone(), hidden.clone()
        for rows, networks, multipliers in groups:
            gk, gv = _apply_networks(networks, multipliers, hidden.index_select(0, rows))
            k.index_copy_(0, rows, gk)
            v.index_copy_(0, rows, gv)
        return k, v


def _apply_networks(networks: list[Hypernetwork], multipliers: torch.Tensor,
                    hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``chain_contexts`` with one multiplier per row: ``multipliers[:, j]`` scales network ``j`` row by row."""
    k = v = hidden
    for j, network in enumerate(networks):
        k = network.apply_k(k, multipliers[:, j])
        v = network.apply_v(v, multipliers[:, j])
    return k, v


class AdapterAttnProcessor:
    """Scaled-dot-product attention with per-row hypernetworks and context masks (see the module docstring)."""

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 adapters: BatchAdapters | None = None, **_: Any) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch = hidden_states.shape[0]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        mask = None
        if encoder_hidden_states is None:  # self-attention
            if adapters is not None and adapters.self_chains:
                k_in, v_in = adapters.self_contexts(hidden_states)
            else:
                k_in = v_in = hidden_states
        else:  # cross-attention
            context = encoder_hidden_states
            if attn.norm_cross:
                context = attn.norm_encoder_hidden_states(context)
            k_in = v_in = context
            if adapters is not None:
                if adapters.cross_k is not None:
                    k_in, v_in = adapters.cross_k, adapters.cross_v
                    if attn.norm_cross:
                        k_in, v_in = attn.norm_encoder_hidden_states(k_in), attn.norm_encoder_hidden_states(v_in)
                mask = adapters.cross_mask
        if attention_mask is not None:  # a caller's own mask (not used by our pipeline), diffusers' convention
            prepared = attn.prepare_attention_mask(attention_mask, k_in.shape[1], batch)
            mask = prepared.view(batch, attn.heads, -1, prepared.shape[-1])

        key, value = attn.to_k(k_in), attn.to_v(v_in)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def install(unet: torch.nn.Module) -> None:
    """Put :class:`AdapterAttnProcessor` on every attention module of ``unet`` (idempotent)."""
    unet.set_attn_processor(AdapterAttnProcessor())  # type: ignore[operator]
