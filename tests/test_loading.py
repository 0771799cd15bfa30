"""Loading models: diffusers folders, A1111 single files (offline, weights-only), and clear refusals."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.devices import choose_device, choose_dtype
from engine.loading import ModelLoadError, load_model
from engine.pipeline import Pipeline
from engine.requests import GenerationRequest

REQUEST = GenerationRequest("a red circle", steps=3, seed=3, sampler="Euler")


def _render(model) -> np.ndarray:
    return Pipeline(model).generate([REQUEST])[0][0].pixels


@pytest.fixture(scope="module")
def reference_pixels(tiny_model) -> np.ndarray:
    return _render(tiny_model)


def test_auto_device_is_cpu_float32_here() -> None:
    device = choose_device("auto")
    assert device.type == ("cuda" if torch.cuda.is_available() else device.type)
    assert choose_dtype("auto", torch.device("cpu")) == torch.float32
    assert choose_dtype("auto", torch.device("cuda")) == torch.float16
    assert choose_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16


def test_diffusers_folder_loads_with_name_and_hash(tiny_model, tiny_model_dir: Path) -> None:
    assert tiny_model.name == "tiny" and tiny_model.family == "sd1"
    assert tiny_model.native_size == (64, 64)
    assert tiny_model.device.type == "cpu" and tiny_model.dtype == torch.float32
    assert not any(p.requires_grad for p in tiny_model.unet.parameters())


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_a1111_single_file_loads_offline_and_draws_the_same(
    tmp_path: Path, tiny_skeleton_dir: Path, reference_pixels: np.ndarray, suffix: str
) -> None:
    from engine.tiny import save_tiny_single_file

    path = save_tiny_single_file(tmp_path / f"tiny-a1111{suffix}", seed=0, family="sd1")
    model = load_model(str(path), config_dir=tiny_skeleton_dir, device="cpu", dtype="float32")
    assert model.name == "tiny-a1111" and model.family == "sd1"
    assert np.abs(_render(model) - reference_pixels).max() < 1e-5


def test_sd2_single_file_is_detected(tmp_path: Path) -> None:
    from engine.tiny import save_tiny_single_file, save_tiny_skeleton

    path = save_tiny_single_file(tmp_path / "tiny-v2.safetensors", seed=1, family="sd2")
    skeleton = save_tiny_skeleton(tmp_path / "sd2-skeleton", family="sd2")
    model = load_model(str(path), config_dir=skeleton, device="cpu", dtype="float32")
    assert model.family == "sd2"
    assert model.tokenizer.pad_token_id == 0  # OpenCLIP pads with "!"
    pixels = _render(model)
    assert pixels.shape == (64, 64, 3) and np.isfinite(pixels).all()


class _Payload:
    """Pickles to a call of os.system: what a malicious .ckpt does."""

    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/atelier-pwned-marker",))


def test_pickle_needing_code_is_refused_and_never_run(tmp_path: Path) -> None:
    marker = Path("/tmp/atelier-pwned-marker")
    marker.unlink(missing_ok=True)
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as fh:
        pickle.dump({"state_dict": {"model.diffusion_model.x": _Payload()}}, fh, protocol=2)  # as torch.save
    with pytest.raises(ModelLoadError) as err:
        load_model(str(path), device="cpu")
    assert "refuses" in str(err.value) and ".safetensors" in str(err.value) and "system" in str(err.value)
    assert "\n" not in str(err.value)
    assert not marker.exists()


def test_files_that_are_not_sd_checkpoints_are_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    embedding = tmp_path / "my-embedding.safetensors"
    save_file({"emb_params": torch.zeros(2, 768)}, str(embedding))
    with pytest.raises(ModelLoadError, match="not a Stable Diffusion checkpoint"):
        load_model(str(embedding), device="cpu")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not really")
    with pytest.raises(ModelLoadError, match=r"not a valid \.safetensors"):
        load_model(str(junk), device="cpu")
    text = tmp_path / "notes.txt"
    text.write_text("hi")
    with pytest.raises(ModelLoadError, match="unsupported model file type"):
        load_model(str(text), device="cpu")
    (tmp_path / "empty-folder").mkdir()
    with pytest.raises(ModelLoadError, match=r"model_index\.json"):
        load_model(str(tmp_path / "empty-folder"), device="cpu")


def test_missing_paths_and_offline_hub_ids_are_clear() -> None:
    with pytest.raises(ModelLoadError, match="model not found"):
        load_model("./no/such/model.safetensors", device="cpu")
    with pytest.raises(ModelLoadError, match="allow_download is false"):
        load_model("someone/some-model", device="cpu", allow_download=False)


def test_models_are_found_inside_the_models_folder(tiny_model_dir: Path) -> None:
    model = load_model("tiny", device="cpu", search_dirs=(tiny_model_dir.parent,))
    assert model.path == tiny_model_dir


def test_model_hash_is_cached_by_path_size_and_mtime(tmp_path: Path, tiny_model_dir: Path) -> None:
    from engine.hashing import model_hash, sha256_of

    path = tmp_path / "m.safetensors"
    path.write_bytes(b"abc" * 1000)
    cache = tmp_path / "cache" / "hashes.json"
    first = model_hash(path, cache)
    assert first == sha256_of([path])[:10] and cache.is_file()
    path.write_bytes(b"abd" * 1000)  # same size, new content and mtime
    assert model_hash(path, cache) != first


def test_without_a_config_dir_the_shipped_skeleton_is_used_and_misfits_explained(tmp_path: Path) -> None:
    """A tiny file is SD1-shaped by its keys but not SD1.5-sized: the error says what to set."""
    from engine.tiny import save_tiny_single_file

    path = save_tiny_single_file(tmp_path / "odd.safetensors", seed=0, family="sd1")
    with pytest.raises(ModelLoadError) as err:
        load_model(str(path), device="cpu")
    assert "sd15" in str(err.value) and "model.config_dir" in str(err.value)


class _ProbeUNet(torch.nn.Module):
    """Answers the probe with a fixed offset, like a v- or an epsilon-model would."""

    def __init__(self, offset: float) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.offset = offset
        self.config = type("C", (), {"in_channels": 4, "cross_attention_dim": 1024})()

    def forward(self, x, t, encoder_hidden_states):
        return type("O", (), {"sample": x + self.offset})()


def test_sd2_prediction_type_probe() -> None:
    from engine.single_file import looks_v_prediction

    assert looks_v_prediction(_ProbeUNet(-3.0))
    assert not looks_v_prediction(_ProbeUNet(0.05))


def test_a_checkpoint_missing_weights_is_refused(tmp_path: Path, tiny_skeleton_dir: Path) -> None:
    from safetensors.torch import load_file, save_file

    from engine.tiny import save_tiny_single_file

    weights = load_file(str(save_tiny_single_file(tmp_path / "full.safetensors")))
    del weights["model.diffusion_model.out.2.weight"]
    save_file(weights, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ModelLoadError, match="lacks weights"):
        load_model(str(tmp_path / "partial.safetensors"), config_dir=tiny_skeleton_dir, device="cpu")
