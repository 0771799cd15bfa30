"""Prompt text → conditioning tensors for the UNet's cross-attention.

This is the one place prompts become tensors, so the prompt language (emphasis, chunks beyond 75 tokens,
embeddings, extra-network tags) plugs in here without touching the denoising loop.
"""

from __future__ import annotations

from typing import Any

import torch


class PromptEncoder:
    """Encodes prompts with the model's tokenizer and text encoder, each distinct prompt once."""

    def __init__(self, tokenizer: Any, text_encoder: Any, device: torch.device, dtype: torch.dtype) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.device = device
        self.dtype = dtype

    @property
    def max_length(self) -> int:
        return int(self.tokenizer.model_max_length)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> list[torch.Tensor]:
        """One (tokens, width) tensor per prompt, in order; identical prompts are encoded once."""
        unique = list(dict.fromkeys(prompts))
        ids = self.tokenizer(
            unique, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(self.device)
        hidden = self.text_encoder(ids)[0].to(self.dtype)
        by_prompt = {p: hidden[i] for i, p in enumerate(unique)}
        return [by_prompt[p] for p in prompts]
