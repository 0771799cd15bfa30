"""The shipped CLIP tokenizer: real CLIP ids, SD1 and SD2 pad tokens, and no drift between its copies."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from transformers import CLIPTokenizer

from engine.tiny import SKELETONS_DIR, TOKENIZER_DIR, load_tokenizer

REPO_ROOT = Path(__file__).resolve().parent.parent
CAT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]  # "a photo of a cat" in OpenAI CLIP's tokenizer


@pytest.fixture(scope="module")
def sd1_tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR))


def test_known_ids_and_sd1_padding(sd1_tokenizer: CLIPTokenizer) -> None:
    assert len(sd1_tokenizer) == 49408
    assert sd1_tokenizer("a photo of a cat").input_ids == CAT_IDS
    assert sd1_tokenizer("Hello   WORLD").input_ids == [49406, 3306, 1002, 49407]  # lower-cased, spaces folded
    assert sd1_tokenizer.model_max_length == 77
    assert sd1_tokenizer.pad_token_id == 49407
    padded = sd1_tokenizer("a photo of a cat", padding="max_length", max_length=77).input_ids
    assert padded[:7] == CAT_IDS and padded[7:] == [49407] * 70


@pytest.mark.parametrize("name", ["sd2", "sd2-base"])
def test_sd2_skeleton_tokenizer_pads_with_id_0(name: str) -> None:
    tok = CLIPTokenizer.from_pretrained(str(SKELETONS_DIR / name / "tokenizer"))
    assert tok("a photo of a cat").input_ids == CAT_IDS
    assert tok.pad_token == "!" and tok.pad_token_id == 0
    assert tok("a cat", padding="max_length", max_length=77).input_ids[4:] == [0] * 73


def test_sd15_skeleton_tokenizer_and_load_tokenizer_families() -> None:
    assert CLIPTokenizer.from_pretrained(str(SKELETONS_DIR / "sd15" / "tokenizer")).pad_token_id == 49407
    assert load_tokenizer("sd1").pad_token_id == 49407
    assert load_tokenizer("sd2").pad_token_id == 0


@pytest.mark.parametrize("name", ["sd15", "sd2", "sd2-base"])
def test_skeleton_copies_match_the_shipped_vocabulary(name: str) -> None:
    """The skeletons carry byte-identical copies (git stores them once); a rebuild must keep it so."""
    for file in ("vocab.json", "merges.txt"):
        assert (SKELETONS_DIR / name / "tokenizer" / file).read_bytes() == (TOKENIZER_DIR / file).read_bytes()
    assert not (SKELETONS_DIR / name / "tokenizer" / "tokenizer.json").exists()


def test_no_bulky_tokenizer_json_is_shipped() -> None:
    assert sorted(p.name for p in TOKENIZER_DIR.iterdir()) == [
        "merges.txt",
        "special_tokens_map.json",
        "tokenizer_config.json",
        "vocab.json",
    ]


def test_build_recipe_reproduces_the_shipped_vocab() -> None:
    """The shipped merges.txt has the BPE file's format, so the script's recipe can be re-run on it offline."""
    spec = importlib.util.spec_from_file_location("build_tokenizer", REPO_ROOT / "scripts" / "build_tokenizer.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    vocab, merges = module.build_vocab_and_merges(module.read_bpe_text(TOKENIZER_DIR / "merges.txt"))
    assert len(merges) == 48894
    assert vocab == json.loads((TOKENIZER_DIR / "vocab.json").read_text(encoding="utf-8"))
    assert vocab["a</w>"] == 320 and vocab["!"] == 0 and vocab["<|endoftext|>"] == 49407
