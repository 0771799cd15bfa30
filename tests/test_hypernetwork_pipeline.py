"""Hypernetworks in the pipeline: A1111's maths (against a plain reference), per sample inside one batch, both
guidance halves or the negative half only, cross-attention contexts computed once per request, and the infotext.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.adapters.attention import BatchAdapters, chain_contexts
from engine.adapters.hypernetwork import (
    Hypernetwork,
    HypernetworkModule,
    HypernetworkSpec,
    create_hypernetwork,
    write_hypernetwork_pt,
)
from engine.adapters.library import AdapterLibrary
from engine.infotext import parse_infotext
from engine.pipeline import Pipeline
from engine.requests import GenerationRequest

STEPS = 4


def _strong(name: str, widths: list[int], spec: HypernetworkSpec, seed: int, scale: float) -> Hypernetwork:
    """A network whose effect is large enough to see (A1111's init is N(0, 0.01): nearly the identity)."""
    hn = create_hypernetwork(name, widths, spec, seed=seed)
    with torch.no_grad():
        for p in hn.parameters():
            p.mul_(scale)
    return hn


@pytest.fixture(scope="module")
def networks() -> dict[str, Hypernetwork]:
    return {
        "hna": _strong("hna", [32, 64], HypernetworkSpec(activation="relu", layer_norm=True), seed=1, scale=40.0),
        "hnb": _strong("hnb", [32], HypernetworkSpec(layer_structure=(1, 1.5, 1), activation="tanh",
                                                      activate_output=False), seed=2, scale=60.0),
    }


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, networks) -> AdapterLibrary:
    folder = tmp_path_factory.mktemp("hypernetworks")
    for name, hn in networks.items():
        write_hypernetwork_pt(hn, folder / f"{name}.pt")
    return AdapterLibrary([], [folder])


@pytest.fixture(scope="module")
def pipeline(tiny_model, library) -> Pipeline:
    return Pipeline(tiny_model, max_batch=8, library=library)


class _ReferenceProcessor:
    """A1111's hypernetwork attention written plainly: the whole batch through one chain, softmax by hand."""

    def __init__(self, chain: list[tuple[Hypernetwork, float]]) -> None:
        self.chain = chain

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **_):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        k_ctx = v_ctx = context
        for network, multiplier in self.chain:
            pair = network.modules.get(context.shape[-1])
            if pair is not None:
                k_ctx = k_ctx + pair[0].linear(k_ctx) * multiplier
                v_ctx = v_ctx + pair[1].linear(v_ctx) * multiplier
        q, k, v = attn.to_q(hidden_states), attn.to_k(k_ctx), attn.to_v(v_ctx)
        b, n, inner = q.shape
        heads, d = attn.heads, inner // attn.heads
        q, k, v = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
        weights = ((q @ k.transpose(-1, -2)) * d**-0.5).softmax(dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(b, n, inner)
        return attn.to_out[0](out)


def test_unet_output_matches_a_plain_reference(tiny_model, networks) -> None:
    from engine.adapters.attention import install

    chain = [(networks["hna"], 0.7), (networks["hnb"], -0.4)]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    t = torch.tensor([500.0, 500.0])
    context = torch.randn(2, 77, 32, generator=gen)

    reference_unet = copy.deepcopy(tiny_model.unet)
    reference_unet.set_attn_processor(_ReferenceProcessor(chain))
    ours = copy.deepcopy(tiny_model.unet)
    install(ours)
    k, v = chain_contexts(tuple(chain), context)
    adapters = BatchAdapters(cross_k=k, cross_v=v, self_chains=[tuple(chain)] * 2)
    with torch.no_grad():
        expected = reference_unet(x, t, encoder_hidden_states=context).sample
        got = ours(x, t, encoder_hidden_states=context, cross_attention_kwargs={"adapters": adapters}).sample
        plain = ours(x, t, encoder_hidden_states=context).sample
    assert (got - expected).abs().max() < 1e-5
    assert (got - plain).abs().max() > 1e-2  # the networks really change the output


def _request(prompt: str, negative: str = "", seed: int = 7, cfg: float = 6.0) -> GenerationRequest:
    return GenerationRequest(prompt, negative_prompt=negative, steps=STEPS, seed=seed, subseed=seed, cfg_scale=cfg)


def _pixels(pipeline: Pipeline, requests: list[GenerationRequest]) -> list[np.ndarray]:
    return [img.pixels for images in pipeline.generate(requests) for img in images]


def test_every_sample_its_own_networks_batched_equals_alone(pipeline: Pipeline) -> None:
    long_prompt = " ".join(["red circle"] * 45) + " <hypernet:hna:0.8>"  # two chunks: unequal context lengths
    requests = [
        _request("a red circle"),
        _request("a red circle <hypernet:hna>"),
        _request("a blue square <hypernet:hna:0.5> <hypernet:hnb:-1.2>", seed=8),
        _request("a cat", negative="blurry <hypernet:hnb>", seed=9),
        _request(long_prompt, seed=10),
    ]
    batched = _pixels(pipeline, requests)
    alone = [_pixels(pipeline, [r])[0] for r in requests]
    for got, expected in zip(batched, alone, strict=True):
        assert np.abs(got - expected).max() < 1e-4
    assert np.abs(batched[0] - batched[1]).max() > 1e-2  # the same prompt and seed, with and without a network


def test_multiplier_zero_is_the_identity(pipeline: Pipeline) -> None:
    [none, zero] = _pixels(pipeline, [_request("a red circle"), _request("a red circle <hypernet:hna:0>")])
    assert np.abs(none - zero).max() < 1e-6


def test_negative_prompt_tags_act_on_the_unconditional_half_only(pipeline: Pipeline) -> None:
    """At CFG 1 the result is the conditional prediction alone: a negative-prompt network cannot show, a positive
    one does. At CFG 6 the negative one shows too."""
    plain, negative, positive = _pixels(pipeline, [
        _request("a red circle", cfg=1.0),
        _request("a red circle", negative="<hypernet:hna>", cfg=1.0),
        _request("a red circle <hypernet:hna>", cfg=1.0),
    ])
    assert np.abs(plain - negative).max() < 1e-5
    assert np.abs(plain - positive).max() > 1e-2
    plain6, negative6 = _pixels(pipeline, [_request("a red circle"),
                                           _request("a red circle", negative="<hypernet:hna>")])
    assert np.abs(plain6 - negative6).max() > 1e-2


def test_cross_attention_contexts_are_computed_once_per_request(pipeline: Pipeline, monkeypatch) -> None:
    calls = {"context": 0}
    original = HypernetworkModule.forward

    def counting(self, x, multiplier=1.0):
        if x.shape[-2] == 77:  # a prompt context, not a self-attention hidden state (64 or 16 tokens here)
            calls["context"] += 1
        return original(self, x, multiplier)

    monkeypatch.setattr(HypernetworkModule, "forward", counting)
    counts = []
    for steps in (2, 6):
        calls["context"] = 0
        pipeline.generate([GenerationRequest("a red circle <hypernet:hna>", steps=steps, seed=1)])
        counts.append(calls["context"])
    assert counts[0] == counts[1] > 0


def test_infotext_records_hypernetworks_and_embeddings(pipeline: Pipeline, library: AdapterLibrary,
                                                       tmp_path: Path) -> None:
    from engine.adapters.embeddings import Embedding, write_embedding_pt

    path = write_embedding_pt(Embedding("e", torch.randn(2, 32, generator=torch.Generator().manual_seed(3))),
                              tmp_path / "shiny.pt")
    library.register("embedding", "shiny", path)
    try:
        [[image]] = pipeline.generate([_request("a shiny circle <hypernet:hna:0.5>", negative="<hypernet:hnb>")])
    finally:
        library.unregister("embedding", "shiny")
    info = parse_infotext(image.infotext)
    assert info.prompt == "a shiny circle <hypernet:hna:0.5>"
    hypernets = dict(pair.split(": ") for pair in info.params["Hypernet hashes"].split(", "))
    assert set(hypernets) == {"hna", "hnb"} and all(len(h) == 12 for h in hypernets.values())
    assert info.params["TI hashes"].startswith("shiny: ")
