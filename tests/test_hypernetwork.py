"""A1111 hypernetworks: files made by hand in A1111's layout load into the exact Sequential, compute what a plain
reference computes, round-trip through both writers, and bad or unsafe files are refused with the file's name.

The files here are built without engine code (plain dicts of tensors, ``torch.save``d), and the layer index layout
each test expects is spelled out by hand from the facts in ``shared/reference/a1111-compat.md`` section 1.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from engine.adapters.files import AdapterFileError, UnsafeFileError
from engine.adapters.hypernetwork import (
    ACTIVATIONS,
    Hypernetwork,
    HypernetworkModule,
    HypernetworkSpec,
    create_hypernetwork,
    is_hypernetwork_dict,
    read_hypernetwork,
    write_hypernetwork_pt,
    write_hypernetwork_safetensors,
)

DIM = 8

# A layer plan, as the test reads the facts: ("L", out_multiplier) a Linear, ("A",) the activation, ("N",) a
# LayerNorm, ("D",) a Dropout. The index of an entry in the plan is its Sequential index, i.e. its state-dict key.
Plan = list[tuple[Any, ...]]

PLAN_LINEAR_121: Plan = [("L", 2), ("L", 1)]
PLAN_RELU_121_NO_OUT: Plan = [("L", 2), ("A",), ("L", 1)]
PLAN_RELU_121_OUT: Plan = [("L", 2), ("A",), ("L", 1), ("A",)]
PLAN_RELU_LN_121_NO_OUT: Plan = [("L", 2), ("A",), ("N",), ("L", 1), ("N",)]
PLAN_RELU_LN_121_OUT: Plan = [("L", 2), ("A",), ("N",), ("L", 1), ("A",), ("N",)]


def param_keys(plan: Plan) -> list[str]:
    """The state-dict keys a plan has: weight and bias for every Linear and LayerNorm, at its plan index."""
    return [f"linear.{i}.{p}" for i, step in enumerate(plan) if step[0] in "LN" for p in ("weight", "bias")]


def state_dict_for(plan: Plan, dim: int, gen: torch.Generator, scale: float = 0.4) -> dict[str, torch.Tensor]:
    """Random weights (large enough that the MLP visibly changes x) for ``plan``, keyed as A1111 keys them."""
    sd: dict[str, torch.Tensor] = {}
    width = dim
    for i, step in enumerate(plan):
        if step[0] == "L":
            out = int(dim * step[1])
            sd[f"linear.{i}.weight"] = torch.randn(out, width, generator=gen) * scale
            sd[f"linear.{i}.bias"] = torch.randn(out, generator=gen) * scale
            width = out
        elif step[0] == "N":
            sd[f"linear.{i}.weight"] = 1 + torch.randn(width, generator=gen) * scale
            sd[f"linear.{i}.bias"] = torch.randn(width, generator=gen) * scale
    return sd


def reference_mlp(x: torch.Tensor, plan: Plan, sd: dict[str, torch.Tensor], act) -> torch.Tensor:
    """The MLP written out with matmuls and the textbook formulas (dropout is off at inference)."""
    h = x
    for i, step in enumerate(plan):
        if step[0] == "L":
            h = h @ sd[f"linear.{i}.weight"].T + sd[f"linear.{i}.bias"]
        elif step[0] == "A":
            h = act(h)
        elif step[0] == "N":
            mean = h.mean(-1, keepdim=True)
            var = ((h - mean) ** 2).mean(-1, keepdim=True)
            h = (h - mean) / torch.sqrt(var + 1e-5) * sd[f"linear.{i}.weight"] + sd[f"linear.{i}.bias"]
    return h


def hardswish_ref(x: torch.Tensor) -> torch.Tensor:
    return x * torch.clamp(x + 3, 0, 6) / 6


def a1111_file(path: Path, layers: dict[int, tuple[dict, dict]], legacy_format: bool = False, **fields: Any) -> Path:
    """A hypernetwork file as A1111 writes one: a plain dict of int keys and metadata, ``torch.save``d."""
    payload: dict[Any, Any] = {w: (k, v) for w, (k, v) in layers.items()}
    payload.update(fields)
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy_format)
    return path


def make_pair(plan: Plan, dim: int, seed: int) -> tuple[dict, dict]:
    gen = torch.Generator().manual_seed(seed)
    return state_dict_for(plan, dim, gen), state_dict_for(plan, dim, gen)


# ------------------------------------------------------------------------------------------------ layouts and specs


@pytest.mark.parametrize(
    ("fields", "plan"),
    [
        ({"activation_func": "linear", "activate_output": False}, PLAN_LINEAR_121),
        ({"activation_func": None}, PLAN_LINEAR_121),
        ({}, PLAN_LINEAR_121),
        ({"activation_func": "relu", "activate_output": False}, PLAN_RELU_121_NO_OUT),
        ({"activation_func": "relu", "activate_output": True}, PLAN_RELU_121_OUT),
        ({"activation_func": "relu"}, PLAN_RELU_121_OUT),  # a missing activate_output means True
        ({"activation_func": "relu", "is_layer_norm": True, "activate_output": False}, PLAN_RELU_LN_121_NO_OUT),
        ({"activation_func": "relu", "is_layer_norm": True, "activate_output": True}, PLAN_RELU_LN_121_OUT),
    ],
)
@pytest.mark.parametrize("legacy_format", [False, True])
def test_a1111_layouts_load_into_the_exact_sequential(tmp_path: Path, fields, plan, legacy_format) -> None:
    layers = {DIM: make_pair(plan, DIM, 1), 2 * DIM: make_pair(plan, 2 * DIM, 2)}
    path = a1111_file(tmp_path / "style.pt", layers, legacy_format=legacy_format, **fields)
    hn = read_hypernetwork(path)
    assert hn.widths() == {DIM, 2 * DIM}
    for width, (sd_k, sd_v) in layers.items():
        k, v = hn.modules[width]
        assert len(k.linear) == len(plan)
        assert list(k.state_dict()) == param_keys(plan)
        for module, sd in ((k, sd_k), (v, sd_v)):
            for key, tensor in sd.items():
                assert torch.equal(module.state_dict()[key], tensor)
    assert hn.spec.activate_output == fields.get("activate_output", True)


def test_fact_examples_key_names() -> None:
    """The examples in the facts, literally."""
    linear = HypernetworkModule(4, HypernetworkSpec(activation="linear"))
    relu = HypernetworkModule(4, HypernetworkSpec(activation="relu", activate_output=False))
    relu_ln = HypernetworkModule(4, HypernetworkSpec(activation="relu", layer_norm=True, activate_output=False))
    assert {k.rsplit(".", 1)[0] for k in linear.state_dict()} == {"linear.0", "linear.1"}
    assert {k.rsplit(".", 1)[0] for k in relu.state_dict()} == {"linear.0", "linear.2"}
    assert [type(m).__name__ for m in relu_ln.linear] == ["Linear", "ReLU", "LayerNorm", "Linear", "LayerNorm"]


def test_missing_fields_take_the_documented_defaults(tmp_path: Path) -> None:
    path = a1111_file(tmp_path / "bare.pt", {DIM: make_pair(PLAN_LINEAR_121, DIM, 3)})
    spec = read_hypernetwork(path).spec
    assert spec.layer_structure == (1.0, 2.0, 1.0)
    assert spec.activation == "linear"
    assert spec.layer_norm is False
    assert spec.activate_output is True
    assert spec.use_dropout is False
    assert spec.dropout_structure == (0.0, 0.0, 0.0)
    assert spec.weight_init == "Normal"
    assert spec.step is None and spec.sd_checkpoint is None and spec.optional_info is None
    assert spec == HypernetworkSpec()


def test_name_is_the_file_base_name_not_the_stored_one(tmp_path: Path) -> None:
    path = a1111_file(tmp_path / "my_style-v2.pt", {DIM: make_pair(PLAN_LINEAR_121, DIM, 4)}, name="old_name")
    assert read_hypernetwork(path).name == "my_style-v2"
    assert read_hypernetwork(path, name="chosen").name == "chosen"
    assert read_hypernetwork(path.read_bytes(), name="from_bytes").name == "from_bytes"


def test_only_int_keys_are_layers(tmp_path: Path) -> None:
    layers = {DIM: make_pair(PLAN_LINEAR_121, DIM, 5)}
    path = a1111_file(tmp_path / "x.pt", layers, **{"768": "not a layer", "step": 1200, "sd_checkpoint": "abc123"})
    hn = read_hypernetwork(path)
    assert hn.widths() == {DIM}
    assert hn.spec.step == 1200 and hn.spec.sd_checkpoint == "abc123"


@pytest.mark.parametrize(
    ("use_dropout", "last", "n", "expected"),
    [
        (False, False, 3, (0, 0, 0)),
        (False, True, 5, (0, 0, 0, 0, 0)),
        (True, False, 3, (0, 0, 0)),
        (True, True, 3, (0, 0.3, 0)),
        (True, False, 5, (0, 0.3, 0.3, 0, 0)),
        (True, True, 5, (0, 0.3, 0.3, 0.3, 0)),
    ],
)
def test_dropout_structure_derivation(use_dropout, last, n, expected) -> None:
    structure = (1.0, *([2.0] * (n - 2)), 1.0)
    spec = HypernetworkSpec(layer_structure=structure, use_dropout=use_dropout, last_layer_dropout=last)
    assert spec.dropout_structure == pytest.approx(expected)


def test_dropout_layers_take_indices_and_explicit_structure_wins(tmp_path: Path) -> None:
    # [1, 2, 2, 1] relu, use_dropout + last_layer_dropout -> dropout [0, .3, .3, 0]: L A D L A D L
    plan: Plan = [("L", 2), ("A",), ("D",), ("L", 2), ("A",), ("D",), ("L", 1)]
    fields = {"layer_structure": [1, 2, 2, 1], "activation_func": "relu", "activate_output": False,
              "use_dropout": True, "last_layer_dropout": True}
    hn = read_hypernetwork(a1111_file(tmp_path / "d.pt", {DIM: make_pair(plan, DIM, 6)}, **fields))
    k = hn.modules[DIM][0]
    assert [type(m).__name__ for m in k.linear] == ["Linear", "ReLU", "Dropout"] * 2 + ["Linear"]
    assert [m.p for m in k.linear if isinstance(m, torch.nn.Dropout)] == pytest.approx([0.3, 0.3])

    # An explicit dropout_structure wins over use_dropout.
    plan2: Plan = [("L", 2), ("A",), ("L", 2), ("A",), ("D",), ("L", 1)]
    fields2 = {**fields, "dropout_structure": [0, 0, 0.1, 0]}
    hn2 = read_hypernetwork(a1111_file(tmp_path / "d2.pt", {DIM: make_pair(plan2, DIM, 7)}, **fields2))
    dropouts = [m.p for m in hn2.modules[DIM][1].linear if isinstance(m, torch.nn.Dropout)]
    assert dropouts == pytest.approx([0.1])
    assert list(hn2.modules[DIM][1].state_dict()) == param_keys(plan2)


def test_legacy_linear1_linear2_files(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(8)

    def legacy_sd() -> dict[str, torch.Tensor]:
        return {
            "linear1.weight": torch.randn(2 * DIM, DIM, generator=gen),
            "linear1.bias": torch.randn(2 * DIM, generator=gen),
            "linear2.weight": torch.randn(DIM, 2 * DIM, generator=gen),
            "linear2.bias": torch.randn(DIM, generator=gen),
        }

    sd_k, sd_v = legacy_sd(), legacy_sd()
    path = a1111_file(tmp_path / "legacy.pt", {DIM: (sd_k, sd_v)})
    assert is_hypernetwork_dict(torch.load(path, weights_only=True))
    hn = read_hypernetwork(path)
    k = hn.modules[DIM][0]
    assert list(k.state_dict()) == ["linear.0.weight", "linear.0.bias", "linear.1.weight", "linear.1.bias"]
    x = torch.randn(2, 3, DIM, generator=gen)
    hidden = x @ sd_k["linear1.weight"].T + sd_k["linear1.bias"]
    expected = x + hidden @ sd_k["linear2.weight"].T + sd_k["linear2.bias"]
    torch.testing.assert_close(hn.apply_k(x, 1.0), expected)


# ------------------------------------------------------------------------------------------------------ activations


def test_swish_is_hardswish_not_silu() -> None:
    assert ACTIVATIONS["swish"] is torch.nn.Hardswish
    x = torch.linspace(-5, 5, 41)
    module = ACTIVATIONS["swish"]()
    torch.testing.assert_close(module(x), hardswish_ref(x))
    assert not torch.allclose(module(x), F.silu(x))


def test_named_activations() -> None:
    expected = {"relu": torch.nn.ReLU, "leakyrelu": torch.nn.LeakyReLU, "elu": torch.nn.ELU, "tanh": torch.nn.Tanh,
                "sigmoid": torch.nn.Sigmoid, "gelu": torch.nn.GELU, "silu": torch.nn.SiLU, "mish": torch.nn.Mish,
                "prelu": torch.nn.PReLU, "hardtanh": torch.nn.Hardtanh, "relu6": torch.nn.ReLU6}
    for name, cls in expected.items():
        assert ACTIVATIONS[name] is cls, name
    assert "linear" in ACTIVATIONS


def _activation_classes() -> list[type]:
    module = torch.nn.modules.activation
    return [c for _, c in inspect.getmembers(module, inspect.isclass) if c.__module__ == module.__name__]


@pytest.mark.parametrize("cls", _activation_classes(), ids=lambda c: c.__name__)
def test_every_torch_activation_by_lowercase_name(cls: type) -> None:
    name = cls.__name__.lower()
    assert ACTIVATIONS[name] is cls
    try:
        cls()
    except TypeError:
        with pytest.raises(AdapterFileError, match=name):
            HypernetworkModule(4, HypernetworkSpec(activation=name))
        return
    module = HypernetworkModule(4, HypernetworkSpec(activation=name, activate_output=False))
    assert [type(m) for m in module.linear] == [torch.nn.Linear, cls, torch.nn.Linear]
    assert "linear.0.weight" in module.state_dict() and "linear.2.weight" in module.state_dict()


def test_unknown_activation_names_it_and_the_file(tmp_path: Path) -> None:
    with pytest.raises(AdapterFileError, match="frobnicate"):
        HypernetworkSpec(activation="frobnicate")
    path = a1111_file(tmp_path / "weird.pt", {DIM: make_pair(PLAN_RELU_121_OUT, DIM, 9)}, activation_func="frobnicate")
    with pytest.raises(AdapterFileError, match=r"weird\.pt.*frobnicate"):
        read_hypernetwork(path)


# --------------------------------------------------------------------------------------------------------- numerics

NUMERIC_CASES = [
    ("linear", {"activation_func": "linear"}, PLAN_LINEAR_121, None),
    ("relu", {"activation_func": "relu", "activate_output": False}, PLAN_RELU_121_NO_OUT, torch.relu),
    ("relu-out", {"activation_func": "relu"}, PLAN_RELU_121_OUT, torch.relu),
    ("relu-ln", {"activation_func": "relu", "is_layer_norm": True, "activate_output": False},
     PLAN_RELU_LN_121_NO_OUT, torch.relu),
    ("relu-ln-out", {"activation_func": "relu", "is_layer_norm": True, "activate_output": True},
     PLAN_RELU_LN_121_OUT, torch.relu),
    ("swish", {"activation_func": "swish", "activate_output": False}, PLAN_RELU_121_NO_OUT, hardswish_ref),
    ("tanh-deep-dropout",
     {"activation_func": "tanh", "layer_structure": [1, 1.5, 0.5, 1], "use_dropout": True, "activate_output": True},
     [("L", 1.5), ("A",), ("D",), ("L", 0.5), ("A",), ("L", 1), ("A",)], torch.tanh),
    ("sigmoid-ln", {"activation_func": "sigmoid", "is_layer_norm": True, "layer_structure": [1, 3, 1],
                    "activate_output": False}, [("L", 3), ("A",), ("N",), ("L", 1), ("N",)], torch.sigmoid),
]


@pytest.mark.parametrize(("fields", "plan", "act"), [c[1:] for c in NUMERIC_CASES], ids=[c[0] for c in NUMERIC_CASES])
def test_module_matches_reference(tmp_path: Path, fields, plan, act) -> None:
    sd_k, sd_v = make_pair(plan, DIM, 10)
    hn = read_hypernetwork(a1111_file(tmp_path / "n.pt", {DIM: (sd_k, sd_v)}, **fields))
    x = torch.randn(2, 5, DIM, generator=torch.Generator().manual_seed(11))
    for multiplier in (1.0, 0.6, -1.5):
        torch.testing.assert_close(hn.apply_k(x, multiplier), x + reference_mlp(x, plan, sd_k, act) * multiplier)
        torch.testing.assert_close(hn.apply_v(x, multiplier), x + reference_mlp(x, plan, sd_v, act) * multiplier)
    assert not torch.allclose(hn.apply_k(x, 1.0), x, atol=1e-3)  # the weights really do something
    torch.testing.assert_close(hn.apply_k(x, 0.0), x)
    torch.testing.assert_close(hn.apply_v(x, 0.0), x)


def test_module_is_picked_by_width_and_other_widths_pass_through() -> None:
    hn = create_hypernetwork("w", widths=[8, 12], spec=HypernetworkSpec(activation="relu"), seed=1)
    for pair in hn.modules.values():
        for module in pair:
            for p in module.parameters():
                torch.nn.init.normal_(p, std=0.5)
    x8, x12, x5 = torch.randn(1, 3, 8), torch.randn(1, 3, 12), torch.randn(1, 3, 5)
    torch.testing.assert_close(hn.apply_k(x8, 1.0), hn.modules[8][0](x8))
    torch.testing.assert_close(hn.apply_v(x12, 0.5), hn.modules[12][1](x12, 0.5))
    assert not torch.allclose(hn.apply_k(x8), hn.apply_v(x8))
    assert hn.apply_k(x5, 1.0) is x5
    assert hn.apply_v(x5, 1.0) is x5
    x64 = x8.double()
    out = hn.apply_k(x64, 1.0)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, hn.modules[8][0](x8).double(), rtol=1e-5, atol=1e-6)


def test_to_train_eval_and_parameters() -> None:
    spec = HypernetworkSpec(activation="relu", layer_norm=True, use_dropout=True, layer_structure=(1, 2, 2, 1))
    hn = create_hypernetwork("t", widths=[4, 6], spec=spec)
    assert hn.to("cpu", torch.float64) is hn
    assert all(p.dtype == torch.float64 for p in hn.parameters())
    n_params = sum(p.numel() for p in hn.parameters())
    expected = sum(p.numel() for pair in hn.modules.values() for m in pair for p in m.parameters())
    assert n_params == expected > 0
    hn.train()
    assert all(m.training for pair in hn.modules.values() for m in pair)
    x = torch.randn(2, 16, 4, dtype=torch.float64)
    out_train = hn.apply_k(x, 1.0)
    hn.eval()
    assert not any(m.training for pair in hn.modules.values() for m in pair)
    torch.testing.assert_close(hn.apply_k(x, 1.0), hn.apply_k(x, 1.0))
    assert out_train.shape == x.shape


# ------------------------------------------------------------------------------------------------------ round trips


def _assert_same_network(a: Hypernetwork, b: Hypernetwork) -> None:
    assert a.spec == b.spec
    assert a.widths() == b.widths()
    for width in a.widths():
        for ma, mb in zip(a.modules[width], b.modules[width], strict=True):
            sa, sb = ma.state_dict(), mb.state_dict()
            assert list(sa) == list(sb)
            for key in sa:
                assert torch.equal(sa[key], sb[key]), (width, key)


ROUND_TRIP_SPECS = [
    HypernetworkSpec(),
    HypernetworkSpec(activation="relu", layer_norm=True, activate_output=False, weight_init="XavierNormal",
                     step=1500, sd_checkpoint="a1b2c3d4", sd_checkpoint_name="sd15", optional_info="test net"),
    HypernetworkSpec(layer_structure=(1, 1.5, 2, 1), activation="prelu", use_dropout=True, last_layer_dropout=True),
    HypernetworkSpec(layer_structure=(1, 2, 1), activation="swish", dropout_structure=(0, 0.2, 0)),
]


@pytest.mark.parametrize("spec", ROUND_TRIP_SPECS)
def test_pt_round_trip_and_a1111_layout(tmp_path: Path, spec: HypernetworkSpec) -> None:
    hn = create_hypernetwork("round", widths=[8, 4], spec=spec, seed=3)
    path = write_hypernetwork_pt(hn, tmp_path / "round.pt")
    raw = torch.load(path, weights_only=True)
    assert is_hypernetwork_dict(raw)
    assert [k for k in raw if type(k) is int] == [8, 4]
    for width in (8, 4):
        sd_k, sd_v = raw[width]
        assert list(sd_k) == list(hn.modules[width][0].state_dict())
        assert all(k.startswith("linear.") for k in sd_v)
        assert all(t.dtype == torch.float32 for t in sd_k.values())
    for key in ("name", "layer_structure", "activation_func", "is_layer_norm", "weight_initialization", "use_dropout",
                "dropout_structure", "last_layer_dropout", "activate_output", "step", "sd_checkpoint",
                "sd_checkpoint_name", "optional_info"):
        assert key in raw, key
    assert raw["name"] == "round"
    assert isinstance(raw["layer_structure"], list) and raw["layer_structure"] == list(spec.layer_structure)
    assert raw["activation_func"] == spec.activation and raw["activate_output"] == spec.activate_output
    back = read_hypernetwork(path)
    assert back.name == "round"
    _assert_same_network(hn, back)


@pytest.mark.parametrize("spec", ROUND_TRIP_SPECS)
def test_safetensors_round_trip(tmp_path: Path, spec: HypernetworkSpec) -> None:
    from safetensors import safe_open

    hn = create_hypernetwork("st", widths=[8, 4], spec=spec, seed=4)
    path = write_hypernetwork_safetensors(hn, tmp_path / "st.safetensors")
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
        keys = set(f.keys())
    assert metadata["atelier_kind"] == "hypernetwork"
    assert "8.k.linear.0.weight" in keys and "4.v.linear.0.bias" in keys
    assert len(keys) == 2 * sum(len(hn.modules[w][0].state_dict()) for w in (8, 4))
    back = read_hypernetwork(path)
    assert back.name == "st"
    _assert_same_network(hn, back)
    # Read by content: the same bytes under a .pt name still read.
    renamed = tmp_path / "renamed.pt"
    renamed.write_bytes(path.read_bytes())
    _assert_same_network(hn, read_hypernetwork(renamed))


def test_hand_made_file_survives_both_writers(tmp_path: Path) -> None:
    fields = {"activation_func": "relu", "is_layer_norm": True, "activate_output": False, "name": "inner",
              "step": 42, "layer_structure": [1.0, 2.0, 1.0]}
    original = read_hypernetwork(a1111_file(tmp_path / "orig.pt", {DIM: make_pair(PLAN_RELU_LN_121_NO_OUT, DIM, 12)},
                                            **fields))
    via_pt = read_hypernetwork(write_hypernetwork_pt(original, tmp_path / "orig2.pt"))
    via_st = read_hypernetwork(write_hypernetwork_safetensors(original, tmp_path / "orig3.safetensors"))
    _assert_same_network(original, via_pt)
    _assert_same_network(original, via_st)


# ----------------------------------------------------------------------------------------------------- new networks


def test_create_is_deterministic_and_k_v_differ() -> None:
    spec = HypernetworkSpec(activation="relu", layer_norm=True)
    a = create_hypernetwork("a", widths=[8, 16], spec=spec, seed=7)
    b = create_hypernetwork("b", widths=[16], spec=spec, seed=7)
    c = create_hypernetwork("c", widths=[8, 16], spec=spec, seed=8)
    assert torch.equal(a.modules[16][0].linear[0].weight, b.modules[16][0].linear[0].weight)
    assert not torch.equal(a.modules[16][0].linear[0].weight, c.modules[16][0].linear[0].weight)
    assert not torch.equal(a.modules[8][0].linear[0].weight, a.modules[8][1].linear[0].weight)
    assert list(create_hypernetwork("d", widths=[768, 320, 640, 1280], spec=HypernetworkSpec(
        layer_structure=(1, 0.01, 1))).modules) == [768, 320, 640, 1280]


def test_normal_init() -> None:
    hn = create_hypernetwork("n", widths=[64], spec=HypernetworkSpec(layer_norm=True), seed=0)
    for module in hn.modules[64]:
        linears = [m for m in module.linear if isinstance(m, torch.nn.Linear)]
        norms = [m for m in module.linear if isinstance(m, torch.nn.LayerNorm)]
        assert len(linears) == 2 and len(norms) == 2
        for layer in linears:
            assert 0.009 < layer.weight.std().item() < 0.011
            assert abs(layer.weight.mean().item()) < 0.001
            assert torch.count_nonzero(layer.bias) == 0
        for layer in norms:
            assert 0.006 < layer.weight.std().item() < 0.014  # N(0, 0.01), not the usual ones
            assert torch.count_nonzero(layer.bias) == 0


@pytest.mark.parametrize(
    ("init", "expected_std"),
    [
        ("XavierUniform", lambda fi, fo: math.sqrt(2 / (fi + fo))),
        ("XavierNormal", lambda fi, fo: math.sqrt(2 / (fi + fo))),
        ("KaimingUniform", lambda fi, fo: math.sqrt(2 / fi)),
        ("KaimingNormal", lambda fi, fo: math.sqrt(2 / fi)),
    ],
)
def test_other_inits(init: str, expected_std) -> None:
    spec = HypernetworkSpec(activation="relu", weight_init=init, layer_norm=True)
    hn = create_hypernetwork("i", widths=[64], spec=spec, seed=1)
    first = hn.modules[64][0].linear[0]
    fan_out, fan_in = first.weight.shape
    assert first.weight.std().item() == pytest.approx(expected_std(fan_in, fan_out), rel=0.1)
    assert torch.count_nonzero(first.bias) == 0
    norm = hn.modules[64][0].linear[2]
    assert isinstance(norm, torch.nn.LayerNorm) and norm.weight.abs().max().item() < 0.1


def test_bad_specs() -> None:
    with pytest.raises(AdapterFileError, match="start and end with 1"):
        HypernetworkSpec(layer_structure=(2, 1))
    with pytest.raises(AdapterFileError, match="start and end with 1"):
        HypernetworkSpec(layer_structure=(1, 2))
    with pytest.raises(AdapterFileError, match="Bogus"):
        create_hypernetwork("x", [8], HypernetworkSpec(weight_init="Bogus"))


# ----------------------------------------------------------------------------------------------------- bad files


class Payload:
    """Any custom class: unpickling it needs this module's code."""

    def __init__(self) -> None:
        self.value = 1


class OpensAFile:
    """Unpickling this calls ``open(path, "w")``, creating the file: a visible side effect."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_custom_class_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "custom.pt"
    torch.save({768: (Payload(), Payload())}, path)
    with pytest.raises(UnsafeFileError, match=r"custom\.pt"):
        read_hypernetwork(path)


@pytest.mark.parametrize("legacy_format", [False, True])
def test_code_running_pickle_is_refused_and_does_not_run(tmp_path: Path, legacy_format: bool) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"name": "evil", 768: OpensAFile(marker)}, path, _use_new_zipfile_serialization=not legacy_format)
    assert not marker.exists()
    with pytest.raises(UnsafeFileError, match=r"evil\.pt"):
        read_hypernetwork(path)
    with pytest.raises(UnsafeFileError):
        read_hypernetwork(path.read_bytes(), name="evil")
    assert not marker.exists()
    # The payload really has a side effect (so the check above means something): call what an unpickler would
    # call, directly; nothing is ever unpickled without weights_only.
    call, args = OpensAFile(tmp_path / "probe-ran").__reduce__()
    call(*args).close()
    assert (tmp_path / "probe-ran").exists()


def test_truncated_and_garbage_files(tmp_path: Path) -> None:
    good = a1111_file(tmp_path / "good.pt", {DIM: make_pair(PLAN_LINEAR_121, DIM, 13)})
    data = good.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterFileError, match=r"truncated\.pt"):
        read_hypernetwork(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a model at all" * 4)
    with pytest.raises(AdapterFileError, match=r"garbage\.pt"):
        read_hypernetwork(garbage)
    st = write_hypernetwork_safetensors(create_hypernetwork("s", [DIM]), tmp_path / "cut.safetensors")
    st.write_bytes(st.read_bytes()[:-10])
    with pytest.raises(AdapterFileError, match=r"cut\.safetensors"):
        read_hypernetwork(st)
    with pytest.raises(AdapterFileError, match=r"missing\.pt"):
        read_hypernetwork(tmp_path / "missing.pt")


def test_wrong_shapes_and_missing_tensors(tmp_path: Path) -> None:
    sd_k, sd_v = make_pair([("L", 3), ("L", 1)], DIM, 14)  # a [1, 3, 1] net stored without its layer_structure
    with pytest.raises(AdapterFileError, match=r"shapes\.pt.*linear\.0\.weight.*shape"):
        read_hypernetwork(a1111_file(tmp_path / "shapes.pt", {DIM: (sd_k, sd_v)}))
    sd_k, sd_v = make_pair(PLAN_LINEAR_121, DIM, 15)
    del sd_v["linear.1.bias"]
    with pytest.raises(AdapterFileError, match=r"holes\.pt.*linear\.1\.bias"):
        read_hypernetwork(a1111_file(tmp_path / "holes.pt", {DIM: (sd_k, sd_v)}))
    # relu with activate_output False stored as linear: keys linear.0/linear.2 where linear.0/linear.1 are expected
    sd_k, sd_v = make_pair(PLAN_RELU_121_NO_OUT, DIM, 16)
    with pytest.raises(AdapterFileError, match=r"mislabelled\.pt"):
        read_hypernetwork(a1111_file(tmp_path / "mislabelled.pt", {DIM: (sd_k, sd_v)}, activation_func="linear"))


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ([torch.zeros(3)], "list"),
        ({"name": "only metadata", "step": 3}, "no hypernetwork layers"),
        ({8: torch.zeros(3)}, "pair"),
        ({8: ({"linear.0.weight": "text"}, {})}, "not a tensor"),
        ({8: ({}, {}), "layer_structure": [2, 1]}, "start and end with 1"),
    ],
)
def test_bad_structures(tmp_path: Path, payload: Any, reason: str) -> None:
    path = tmp_path / "bad.pt"
    torch.save(payload, path)
    with pytest.raises(AdapterFileError, match=rf"bad\.pt.*{reason}"):
        read_hypernetwork(path)


def test_is_hypernetwork_dict() -> None:
    sd = make_pair(PLAN_LINEAR_121, DIM, 17)
    assert is_hypernetwork_dict({DIM: sd, "name": "x"})
    assert is_hypernetwork_dict({DIM: list(sd)})
    assert not is_hypernetwork_dict({"string_to_param": {"*": torch.zeros(2, 768)}, "name": "emb"})
    assert not is_hypernetwork_dict({"emb_params": torch.zeros(2, 768)})
    assert not is_hypernetwork_dict({768: torch.zeros(3)})
    assert not is_hypernetwork_dict({True: sd})
    assert not is_hypernetwork_dict([sd])
