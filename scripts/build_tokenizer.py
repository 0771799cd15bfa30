"""Build the CLIP tokenizer files in ``engine/assets/tokenizer/`` from open-clip's BPE file.

Why this exists: neither transformers, tokenizers nor diffusers ship CLIP's vocabulary, and no machine we run
on may fetch it from a model hub. The ``open-clip-torch`` wheel (MIT licensed, on PyPI) contains the original
CLIP byte-pair-encoding file ``open_clip/bpe_simple_vocab_16e6.txt.gz``; CLIP's vocabulary is derived from it
by a fixed recipe, so we derive it ourselves and commit the result (about 1.6 MB).

The recipe (the one CLIP's own simple tokenizer uses):

* merges = lines 1..48894 of the file (line 0 is a header);
* vocab = the 256 byte-level characters, the same 256 with ``</w>`` appended, ``"".join(merge)`` for every merge,
  then ``<|startoftext|>`` and ``<|endoftext|>`` → 49408 entries.

Output: ``vocab.json``, ``merges.txt`` (``#version: 0.2`` header), ``tokenizer_config.json`` and
``special_tokens_map.json``, loadable with ``CLIPTokenizer.from_pretrained(dir)``. We deliberately do not write
the 3.6 MB ``tokenizer.json`` that ``save_pretrained`` would produce. The same vocabulary serves SD 2.x, whose
tokenizer differs only in its pad token (``"!"``, id 0); ``write_tokenizer(..., pad_token="!")`` writes that
variant (``scripts/build_skeletons.py`` uses it for the SD2 skeletons).

Usage::

    python scripts/build_tokenizer.py /path/to/bpe_simple_vocab_16e6.txt.gz
    python scripts/build_tokenizer.py /path/to/open_clip_torch-3.3.0-py3-none-any.whl
    pip download open-clip-torch --no-deps -d /tmp/oc && python scripts/build_tokenizer.py /tmp/oc/*.whl
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "engine" / "assets" / "tokenizer"

BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
MERGE_COUNT = 49152 - 256 - 2  # CLIP's vocab size minus byte symbols and the two special tokens = 48894
VOCAB_SIZE = 49408
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MODEL_MAX_LENGTH = 77  # CLIP's context length; Stable Diffusion conditions on exactly 77 tokens


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins for bytes used by byte-level BPE, in CLIP's vocabulary order.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes (controls, space, a few others) are
    mapped, in byte order, to the code points from 256 upward. This is the standard GPT-2/CLIP byte-level
    convention. The order matters, because CLIP's vocabulary starts with these symbols: first the printable
    ones in byte order, then the remapped ones (so "a" is id 64 and "a</w>" id 320).
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in set(printable)]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def read_bpe_text(source: Path) -> str:
    """Return the decompressed BPE text from the ``.txt.gz`` itself, a ``.txt``, or an open-clip wheel."""
    if source.suffix == ".whl" or zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as wheel:
            data = wheel.read(BPE_MEMBER)
        return gzip.decompress(data).decode("utf-8")
    if source.suffix == ".gz":
        return gzip.decompress(source.read_bytes()).decode("utf-8")
    return source.read_text(encoding="utf-8")


def build_vocab_and_merges(bpe_text: str) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Apply CLIP's recipe: the merges and the 49408-entry token → id vocabulary."""
    lines = bpe_text.split("\n")
    merges = [tuple(line.split()) for line in lines[1 : MERGE_COUNT + 1]]
    if len(merges) != MERGE_COUNT or any(len(m) != 2 for m in merges):
        raise ValueError("not CLIP's BPE file: expected 48894 two-symbol merges after the header line")
    symbols = byte_symbols()
    tokens = [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges), BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"vocabulary has {len(vocab)} distinct entries, expected {VOCAB_SIZE}")
    return vocab, merges  # type: ignore[return-value]


def tokenizer_config(pad_token: str) -> dict[str, object]:
    """tokenizer_config.json: the fields CLIPTokenizer reads, with SD's 77-token context."""
    return {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MODEL_MAX_LENGTH,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": pad_token,
        "do_lower_case": True,
        "add_prefix_space": False,
        "errors": "replace",
    }


def write_tokenizer(out_dir: Path, vocab: dict[str, int], merges: list[tuple[str, str]], pad_token: str = EOS) -> None:
    """Write the four tokenizer files into ``out_dir`` (created if needed).

    ``pad_token`` is ``<|endoftext|>`` for SD 1.x and ``"!"`` for SD 2.x; nothing else differs.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config(pad_token), indent=2) + "\n", encoding="utf-8"
    )
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")


def check_tokenizer(out_dir: Path, expected_pad_id: int = VOCAB_SIZE - 1) -> None:
    """Load the written files with transformers and check CLIP's known ids; raises on a mismatch."""
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(out_dir))
    ids = tok("a photo of a cat").input_ids
    expected = [49406, 320, 1125, 539, 320, 2368, 49407]
    if ids != expected or len(tok) != VOCAB_SIZE or tok.pad_token_id != expected_pad_id:
        raise RuntimeError(f"tokenizer check failed: ids={ids}, size={len(tok)}, pad={tok.pad_token_id}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="bpe_simple_vocab_16e6.txt.gz, or an open-clip-torch wheel")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--pad-token", default=EOS, help='pad token: "<|endoftext|>" (SD1, default) or "!" (SD2)')
    parser.add_argument("--no-check", action="store_true", help="skip loading the result with transformers")
    args = parser.parse_args(argv)

    vocab, merges = build_vocab_and_merges(read_bpe_text(args.source))
    write_tokenizer(args.out, vocab, merges, pad_token=args.pad_token)
    if not args.no_check:
        check_tokenizer(args.out, expected_pad_id=vocab[args.pad_token])
    print(f"wrote {len(vocab)} tokens and {len(merges)} merges to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
