"""What a member (or an operator) asks to train, in one serialisable value, and how it becomes a trainer.

Why one place: ``/train``, the "Train from these images" context menu, ``atelier train`` and a job resumed after a
restart all start from a :class:`TrainingRequest`; each turns into the same trainer configuration, so defaults
and validation cannot drift between them. The request is plain data (``to_json``/``from_json``) because the bot
keeps it in the ``jobs`` row to rebuild the job after a restart.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, Literal

from engine.prompts.parser import is_valid_name
from engine.requests import RequestError
from engine.training.templates import TEMPLATE_SETS, fill

if TYPE_CHECKING:
    from engine.loading import LoadedModel
    from engine.training.core import DiffusionTrainer, TrainConfig
    from engine.training.images import TrainingImage

TrainKind = Literal["embedding", "hypernetwork"]
TRAIN_KINDS: tuple[TrainKind, ...] = ("embedding", "hypernetwork")
MAX_STEPS = 20_000


def parse_modules(text: str) -> tuple[int, ...]:
    """``"768, 320"`` → (768, 320): the attention widths a hypernetwork gets modules for (A1111's "Modules")."""
    try:
        return tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise RequestError(f"modules: widths separated by commas, e.g. 768,320; got {text!r}") from None


@dataclass(frozen=True)
class TrainingRequest:
    """One training run's options; ``None`` means the kind's default (A1111's, see the trainer configs).

    ``what`` picks the caption template set: ``object`` (a thing), ``style`` (how pictures look), ``plain``
    (the name and caption alone: small models that know no photography words) or ``caption`` (each image's
    caption as written, placing ``[name]`` itself).
    """

    kind: TrainKind
    name: str
    what: str | None = None
    steps: int | None = None
    lr: str | None = None
    vectors: int = 1
    init_text: str = "*"
    batch_size: int = 1
    grad_accumulation: int = 1
    seed: int = 0
    preview_prompt: str = ""  # empty: the first template with the first image's caption
    modules: tuple[int, ...] = ()  # hypernetworks: attention widths to train modules for (empty: all)

    @property
    def template_set(self) -> str:
        return self.what or ("object" if self.kind == "embedding" else "style")

    def check(self) -> TrainConfig:
        """The trainer configuration, validated; :class:`RequestError` names the option that is wrong."""
        if self.kind not in TRAIN_KINDS:
            raise RequestError(f"kind {self.kind!r}: choose embedding or hypernetwork")
        if not is_valid_name(self.name):
            raise RequestError(f"name {self.name!r}: use 1-64 letters, digits, _ or -")
        if self.steps is not None and not 1 <= self.steps <= MAX_STEPS:
            raise RequestError(f"steps: between 1 and {MAX_STEPS}, got {self.steps}")
        if self.template_set not in TEMPLATE_SETS:
            raise RequestError(f"what {self.template_set!r}: choose one of {', '.join(TEMPLATE_SETS)}")
        common: dict[str, Any] = {"name": self.name, "batch_size": self.batch_size, "seed": self.seed,
                                  "grad_accumulation": self.grad_accumulation, "template_set": self.template_set}
        if self.steps is not None:
            common["steps"] = self.steps
        if self.lr is not None and self.lr.strip():
            common["lr"] = self.lr.strip()
        config: TrainConfig
        if self.kind == "embedding":
            from engine.training.embedding import EmbeddingTrainConfig

            config = EmbeddingTrainConfig(vectors=self.vectors, init_text=self.init_text or "*", **common)
        else:
            from engine.training.hypernetwork import HypernetworkTrainConfig

            config = HypernetworkTrainConfig(widths=tuple(int(w) for w in self.modules), **common)
        config.check()
        return config

    def total_steps(self) -> int:
        """Steps this request will take (a schedule whose every rate has an end stops at its last step)."""
        config = self.check()
        return config.check().total_steps(config.steps)

    def trainer_factory(self, model: LoadedModel, images: list[TrainingImage]) -> Callable[[], DiffusionTrainer]:
        """A zero-argument builder (the job calls it on the worker thread: encoding images is GPU work)."""
        config = self.check()
        if self.kind == "embedding":
            from engine.prompts.encoding import PromptEncoder
            from engine.training.embedding import EmbeddingTrainer

            def embedding() -> DiffusionTrainer:
                encoder = PromptEncoder(model.tokenizer, model.text_encoder, model.device, model.dtype, model.name)
                return EmbeddingTrainer(model, encoder, images, config, owns_encoder=True)  # type: ignore[arg-type]

            return embedding
        from engine.training.hypernetwork import HypernetworkTrainer

        return lambda: HypernetworkTrainer(model, images, config)  # type: ignore[arg-type]

    def preview(self, first_caption: str = "") -> str:
        """The prompt preview grids use: the request's own, else the first template (taking a caption when there
        is one) filled with the first image's caption.

        An embedding is used by writing its name; a hypernetwork by ``<hypernet:name:1>`` after the prompt.
        """
        if self.preview_prompt.strip():
            prompt = self.preview_prompt.strip()
            if self.kind == "embedding" and self.name.lower() not in prompt.lower():
                prompt = f"{prompt}, {self.name}"
        else:
            templates = TEMPLATE_SETS[self.template_set]
            with_caption = [t for t in templates if "[filewords]" in t] if first_caption.strip() else []
            prompt = fill((with_caption or list(templates))[0], self.name, first_caption)
        if self.kind == "hypernetwork":
            prompt = f"{prompt} <hypernet:{self.name}:1>"
        return prompt

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | dict[str, Any]) -> TrainingRequest:
        raw = json.loads(text) if isinstance(text, str) else dict(text)
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in raw.items() if k in known}
        if "modules" in values:
            values["modules"] = tuple(values["modules"])  # JSON has lists
        return cls(**values)
