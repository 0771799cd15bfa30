"""Textual inversion on the serving model: only the new vectors learn; everything else stays frozen.

The vectors enter the text encoder through :class:`~engine.prompts.encoding.PromptEncoder`'s own placeholder
hook — the path generation uses — so what is trained is exactly what a prompt with the name will see. They are
kept in float32 whatever the model's dtype (fp16 vectors lose small updates and are where A1111 users report
NaN losses).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from engine.adapters.embeddings import Embedding, write_embedding_safetensors
from engine.requests import RequestError
from engine.training.core import DiffusionTrainer, TrainConfig

if TYPE_CHECKING:
    from engine.loading import LoadedModel
    from engine.prompts.encoding import PromptEncoder
    from engine.training.images import TrainingImage
    from engine.training.schedule import LearningRateSchedule

MAX_VECTORS = 75
PLACEHOLDER = "\x00name\x00"  # never typed by anyone; captions are split on it to place the vectors


@dataclass(frozen=True)
class EmbeddingTrainConfig(TrainConfig):
    """Textual-inversion options; A1111's defaults (one vector from ``*``, lr 0.005)."""

    vectors: int = 1
    init_text: str = "*"

    def check(self) -> LearningRateSchedule:
        if not 1 <= self.vectors <= MAX_VECTORS:
            raise RequestError(f"vectors: between 1 and {MAX_VECTORS}, got {self.vectors}")
        return super().check()


class EmbeddingTrainer(DiffusionTrainer):
    """Trains one embedding's vectors."""

    caption_name = PLACEHOLDER

    def __init__(self, model: LoadedModel, encoder: PromptEncoder, images: list[TrainingImage],
                 config: EmbeddingTrainConfig, *, latents: torch.Tensor | None = None,
                 owns_encoder: bool = False) -> None:
        self.encoder = encoder
        self.owns_encoder = owns_encoder  # made for this trainer: its hook on the text encoder goes with it
        super().__init__(model, images, config, latents=latents)
        self.config: EmbeddingTrainConfig = config
        self.vectors = torch.nn.Parameter(self._initial_vectors())

    def trainable(self) -> list[torch.nn.Parameter]:
        return [self.vectors]

    def close(self) -> None:
        if self.owns_encoder:
            self.encoder.close()
            self.owns_encoder = False

    @torch.no_grad()
    def _initial_vectors(self) -> torch.Tensor:
        """The init text's token embeddings spread over the vectors (repeated when shorter), as A1111 does."""
        table = self.model.text_encoder.get_input_embeddings().weight
        tokenizer = self.encoder.tokenizer
        ids = tokenizer(self.config.init_text or "*", add_special_tokens=False).input_ids or [
            tokenizer.convert_tokens_to_ids("*</w>")]
        rows = [table[ids[i % len(ids)]] for i in range(self.config.vectors)]
        return torch.stack(rows).float().clone()

    def _ids(self, caption: str) -> tuple[list[int], list[int]]:
        """Token ids for a caption with the placeholder, and where each placeholder's vectors start."""
        tokenizer, n = self.encoder.tokenizer, self.config.vectors
        ids, starts = [self.encoder.bos], []
        for index, part in enumerate(caption.split(PLACEHOLDER)):
            if index:
                starts.append(len(ids))
                ids += [self.encoder.pad] * n
            if part.strip():
                ids += tokenizer(part, add_special_tokens=False).input_ids
        length = int(tokenizer.model_max_length)
        ids = [*ids[:length - 1], self.encoder.eos]
        starts = [s for s in starts if s + n < length]
        return ids + [self.encoder.pad] * (length - len(ids)), starts

    def conditioning(self, captions: list[str]) -> tuple[torch.Tensor, dict[str, Any]]:
        rows = [self._ids(caption) for caption in captions]
        ids = torch.tensor([r[0] for r in rows], device=self.model.device)
        fixes = [(row, start, self.vectors) for row, (_, starts) in enumerate(rows) for start in starts]
        with self.encoder._fixes_active(fixes):
            return self.model.text_encoder(ids)[0], {}

    def embedding(self) -> Embedding:
        """The vectors so far as an :class:`Embedding` (float32, on the CPU), ready to save or register."""
        return Embedding(self.config.name, self.vectors.detach().float().cpu().clone(), step=self.steps_done,
                         sd_checkpoint_name=self.model.name)

    def save(self, path: Path) -> Path:
        return write_embedding_safetensors(self.embedding(), path)
