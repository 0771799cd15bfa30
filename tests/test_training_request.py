"""``TrainingRequest``: one value for /train, the context menu, the CLI and a resumed job — defaults by kind, named
errors, a JSON round trip (the job row keeps it), and the trainer it builds."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.requests import RequestError
from engine.training.embedding import EmbeddingTrainConfig, EmbeddingTrainer
from engine.training.hypernetwork import HypernetworkTrainConfig, HypernetworkTrainer
from engine.training.images import TrainingImage
from engine.training.request import TrainingRequest


def test_defaults_follow_the_kind() -> None:
    embedding = TrainingRequest("embedding", "zzcat").check()
    assert isinstance(embedding, EmbeddingTrainConfig)
    assert (embedding.template_set, embedding.lr, embedding.vectors) == ("object", "0.005", 1)
    hypernet = TrainingRequest("hypernetwork", "inky").check()
    assert isinstance(hypernet, HypernetworkTrainConfig)
    assert (hypernet.template_set, hypernet.lr) == ("style", "0.00001")


@pytest.mark.parametrize(("changes", "option"), [
    ({"name": "two words"}, "name"), ({"steps": 0}, "steps"), ({"steps": 10**6}, "steps"),
    ({"what": "poem"}, "what"), ({"lr": "fast"}, "lr"), ({"vectors": 99}, "vectors"), ({"kind": "lora"}, "kind"),
])
def test_every_bad_option_is_named(changes: dict, option: str) -> None:
    with pytest.raises(RequestError, match=rf"^{option}"):
        TrainingRequest(**{"kind": "embedding", "name": "zzcat", **changes}).check()


def test_a_schedule_with_an_end_sets_the_step_count() -> None:
    assert TrainingRequest("embedding", "zzcat", lr="5e-3:20, 1e-3:50").total_steps() == 50
    assert TrainingRequest("embedding", "zzcat", lr="5e-3:20, 1e-3", steps=70).total_steps() == 70


def test_json_round_trip_and_unknown_keys_ignored() -> None:
    request = TrainingRequest("hypernetwork", "inky", what="plain", steps=30, lr="1e-4", seed=7,
                              preview_prompt="a red circle")
    assert TrainingRequest.from_json(request.to_json()) == request
    assert TrainingRequest.from_json({**request.__dict__, "from_the_future": 1}) == request


def test_preview_prompt_uses_the_adapter_the_way_members_will() -> None:
    assert TrainingRequest("embedding", "zzcat", what="plain").preview("a cat") == "a cat, zzcat"
    assert TrainingRequest("embedding", "zzcat", preview_prompt="a red circle").preview() == "a red circle, zzcat"
    assert TrainingRequest("hypernetwork", "inky", preview_prompt="a red circle").preview() == (
        "a red circle <hypernet:inky:1>")
    caption = TrainingRequest("embedding", "zzpink", what="caption").preview("a [name] circle on blue")
    assert caption == "a zzpink circle on blue"


def test_the_factory_builds_the_kind_asked_for(tiny_model) -> None:
    rng = np.random.default_rng(0)
    images = [TrainingImage(f"{i}.png", Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), "",
                            f"{i:064x}") for i in range(3)]
    embedding = TrainingRequest("embedding", "zzcat", vectors=3, steps=5).trainer_factory(tiny_model, images)()
    assert isinstance(embedding, EmbeddingTrainer) and embedding.vectors.shape[0] == 3
    assert embedding.total_steps == 5
    hypernet = TrainingRequest("hypernetwork", "inky", steps=2).trainer_factory(tiny_model, images)()
    assert isinstance(hypernet, HypernetworkTrainer)


def test_hypernetwork_modules_pick_the_widths(tiny_model) -> None:
    from engine.training.request import parse_modules

    assert parse_modules(" 768, 320 ") == (768, 320) and parse_modules("") == ()
    with pytest.raises(RequestError, match=r"^modules"):
        parse_modules("768;320")
    request = TrainingRequest("hypernetwork", "inky", steps=2, modules=(32,))
    assert TrainingRequest.from_json(request.to_json()) == request
    rng = np.random.default_rng(0)
    images = [TrainingImage(f"{i}.png", Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), "",
                            f"{i:064x}") for i in range(3)]
    trainer = request.trainer_factory(tiny_model, images)()
    assert sorted(trainer.network.widths()) == [32]
    with pytest.raises(RequestError, match="no layer sees \\[999\\]"):
        TrainingRequest("hypernetwork", "inky", steps=2, modules=(999,)).trainer_factory(tiny_model, images)()
