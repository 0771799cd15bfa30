"""Benchmark: start-up and prompt-encoding cost with 10,000 embeddings registered (issue 4's scale requirement).

    .venv/bin/python bench/adapters_scale.py                          # tiny SD1 model (width 32), 10,000 files
    .venv/bin/python bench/adapters_scale.py --n 2000 --repeats 15    # smaller/longer run
    .venv/bin/python bench/adapters_scale.py --model data/models/demo # another model folder (its text width)

The requirement: "with 10,000 embeddings registered, start-up stays under 5 s (vectors loaded lazily) and
encoding a prompt costs under 5 ms more than with none". Unlike our other benchmarks it states absolute CPU
limits, so absolute times are printed (and compared with the limits) on any device; the CPU machines here are
shared and noisy, so treat a result near a limit as "near", not as a verdict.

Setup (not measured): the model is loaded, and --n small embedding files (1-4 vectors of the model's text width)
are written to a temporary folder in the layouts users have: mostly A1111 ``.pt``, some kohya safetensors, some
diffusers single-key ``.bin``, some in a subfolder; named ``style-00042`` etc. plus a few realistic words.
All ``style-NNNNN`` names start with the same token (``style``), the worst case for the trigger index, whose
``match`` walks every trigger that shares the prompt word's first token: a realistic ``in the style of`` prompt
then costs time in proportion to --n (see "where B's time goes").

Measured:
  * start-up: ``AdapterLibrary([folder], [])`` (folder scan, no file opened) and the trigger index for the
    model's tokenizer (``view().triggers(tokenizer)``, which the first prompt pays); the folder is rescanned
    only when its mtime changes, so the no-change rescan check (every 2 s, inside ``view()``) is shown too.
  * encoding: ``encoder.encode_one(prompt, library.view())`` as the pipeline calls it, with the encoder's
    prompt cache cleared before each call, interleaved between (A) a library with no embeddings and (B) the
    --n library (and (C) a library holding only the few files the prompts use, to tell "having 10k" from
    "using one"). Prompts: plain text; plain text containing the word "style" (the first token of 10k
    ``style-NNNNN`` triggers); 1-2 embeddings already loaded (warm); 1-2 embeddings never used before (first
    use reads the file). Medians and B - A in ms; the limit is B - A < 5 ms.

Threads: the text-encoder forward is the same work in A and B, so the difference does not depend on it; the
default of one torch thread keeps OpenMP from fighting a neighbour's job for the cores (on this shared 2-core
machine a 1.5 ms tiny-model encoding took 150 ms with 2 threads while another job ran).
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.adapters.embeddings import Embedding, write_embedding_pt, write_embedding_safetensors
from engine.adapters.library import AdapterLibrary
from engine.loading import load_model
from engine.prompts.encoding import PromptEncoder
from engine.tiny import save_tiny_diffusers

STARTUP_LIMIT_S = 5.0
ENCODE_LIMIT_MS = 5.0
# Realistic trigger words (single names users give embeddings); the prompts below use two of them.
WORDS = ("mystyle", "easynegative", "badhands", "charturner", "ghibliesque", "neonpunk", "inkwash", "retrofilm")
PLAIN = "a watercolor painting of a lighthouse on a cliff at sunset, dramatic clouds, highly detailed"
PLAIN_STYLE = "portrait of a knight in the style of an old master, baroque style, oil painting, dramatic light"
WARM = "a castle on a hill at dawn, mystyle, detailed, easynegative"


def write_library(folder: Path, n: int, width: int, seed: int = 0) -> list[str]:
    """Write ``n`` embedding files (the WORDS first, then ``style-NNNNN``); returns the names in order."""
    gen = torch.Generator().manual_seed(seed)
    names = [*WORDS[:n], *(f"style-{i:05d}" for i in range(max(0, n - len(WORDS))))]
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        vectors = torch.randn(1 + i % 4, width, generator=gen) * 0.02
        emb = Embedding(name=name, vectors=vectors, step=100)
        if i % 10 == 3:  # kohya safetensors
            write_embedding_safetensors(emb, folder / f"{name}.safetensors")
        elif i % 10 == 7:  # diffusers single key, .bin
            torch.save({f"<{name}>": vectors}, folder / f"{name}.bin")
        elif i % 10 == 9:  # A1111 .pt in a subfolder (the scan is recursive)
            write_embedding_pt(emb, folder / "sub" / f"{name}.pt")
        else:  # A1111 .pt
            write_embedding_pt(emb, folder / f"{name}.pt")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000, help="embedding files in the big library")
    parser.add_argument("--repeats", type=int, default=41, help="encodings per prompt kind and library")
    parser.add_argument("--startup-repeats", type=int, default=3, help="fresh libraries built for start-up")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (0: torch's default); see the docstring")
    parser.add_argument("--model", default=None, help="model folder (default: the tiny SD1 model, width 32)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.n < len(WORDS) + 3 * args.repeats:
        parser.error(f"--n must be at least {len(WORDS) + 3 * args.repeats} (three unused files per repeat)")

    tmp = Path(tempfile.mkdtemp(prefix="adapters_scale_"))
    try:
        run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, tmp: Path) -> None:
    model_dir = args.model or str(save_tiny_diffusers(tmp / "tiny", seed=0))
    model = load_model(model_dir, device="cpu", dtype="float32", allow_download=False)
    tokenizer = model.tokenizer
    width = int(model.text_encoder.get_input_embeddings().embedding_dim)

    start = time.perf_counter()
    big_dir, empty_dir, few_dir = tmp / "emb_big", tmp / "emb_empty", tmp / "emb_few"
    names = write_library(big_dir, args.n, width)
    empty_dir.mkdir()
    write_library(few_dir, 2, width)  # mystyle, easynegative: what WARM uses
    write_s = time.perf_counter() - start
    used_first = [n for n in names if n.startswith("style-")]
    random.Random(0).shuffle(used_first)

    # -- start-up ------------------------------------------------------------------------------------------
    scan, index = [], []
    for _ in range(args.startup_repeats):
        t0 = time.perf_counter()
        library = AdapterLibrary([big_dir], [])
        t1 = time.perf_counter()
        triggers = library.view().triggers(tokenizer)
        t2 = time.perf_counter()
        scan.append(t1 - t0)
        index.append(t2 - t1)
    found = len(library.entries("embedding"))
    first_tokens = len(triggers.by_first)
    widest = max((len(c) for c in triggers.by_first.values()), default=0)
    rescan = []
    for _ in range(5):
        t0 = time.perf_counter()
        library.rescan()
        rescan.append(time.perf_counter() - t0)

    # -- encoding ------------------------------------------------------------------------------------------
    libs = {"A": AdapterLibrary([empty_dir], []), "B": library, "C": AdapterLibrary([few_dir], [])}
    encoder = PromptEncoder(tokenizer, model.text_encoder, model.device, model.dtype, "bench")
    for lib in libs.values():
        lib.view().triggers(tokenizer)  # start-up is measured above; here only the per-prompt cost
    first_iter = iter(used_first)

    def first_prompt() -> str:
        a, b = next(first_iter), next(first_iter)
        return f"a castle on a hill at dawn, {a}, detailed, {b}"

    def timed(lib: AdapterLibrary, prompt: str) -> float:
        encoder._cache.clear()
        t0 = time.perf_counter()
        encoder.encode_one(prompt, lib.view())
        return time.perf_counter() - t0

    kinds = {"plain": PLAIN, "plain, 'style' x2": PLAIN_STYLE, "2 embeddings, warm": WARM}
    samples: dict[tuple[str, str], list[float]] = {}
    with torch.inference_mode():
        for lib in libs.values():  # warm-up: load WARM's two files, first torch calls
            for prompt in kinds.values():
                timed(lib, prompt)
        for repeat in range(args.repeats):
            order = list(libs)[repeat % 3:] + list(libs)[:repeat % 3]  # rotate who goes first
            for kind, prompt in kinds.items():
                for key in order:  # in A the trigger names are plain words
                    samples.setdefault((kind, key), []).append(timed(libs[key], prompt))
            # first use: two never-used files in B; A gets the same text (plain words there)
            prompt = first_prompt()
            for key in ("AB" if repeat % 2 else "BA"):
                samples.setdefault(("2 embeddings, first use", key), []).append(timed(libs[key], prompt))
    encoder.close()
    med = {k: statistics.median(v) * 1e3 for k, v in samples.items()}

    # -- where B's extra time goes (same library B, parts of what encode_one does) -------------------------
    view = library.view()
    style = tokenizer(["style"], add_special_tokens=False).input_ids[0]
    on_style = len(triggers.by_first.get(style[0], ()))
    parts: dict[str, list[float]] = {"match": [], "entry": [], "load": []}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        triggers.match(style, 0)  # "style" alone: the first token of many triggers, spelling none
        t1 = time.perf_counter()
        entry = view.entry("embedding", next(first_iter))
        t2 = time.perf_counter()
        entry.load()
        _ = entry.hash
        t3 = time.perf_counter()
        parts["match"].append(t1 - t0)
        parts["entry"].append(t2 - t1)
        parts["load"].append(t3 - t2)
    part = {k: statistics.median(v) * 1e3 for k, v in parts.items()}

    # -- report --------------------------------------------------------------------------------------------
    total = statistics.median(scan) + statistics.median(index)
    label = args.model or "tiny SD1 (width 32)"
    print(f"model: {label}  text width: {width}  tokenizer: {type(tokenizer).__name__}  "
          f"torch threads: {torch.get_num_threads()}")
    print(f"library: {found} embeddings found of {args.n} written ({write_s:.1f} s to write, not measured); "
          f"trigger index: {first_tokens} first tokens, up to {widest} triggers on one")
    print()
    print(f"start-up (median of {args.startup_repeats}, first in brackets)")
    print(f"  {'AdapterLibrary([folder]) (scan)':44s} {statistics.median(scan):8.3f} s  [{scan[0]:.3f}]")
    print(f"  {'view().triggers(tokenizer) (index)':44s} {statistics.median(index):8.3f} s  [{index[0]:.3f}]")
    print(f"  {'total':44s} {total:8.3f} s   limit {STARTUP_LIMIT_S:.0f} s: "
          f"{'PASS' if total < STARTUP_LIMIT_S else 'FAIL'}")
    print(f"  {'rescan() with no change (each view, every 2 s)':44s} {statistics.median(rescan) * 1e3:8.2f} ms")
    print()
    print(f"encode_one(prompt, library.view()), cache cleared, median of {args.repeats} (ms); "
          f"A: 0 embeddings, B: {found}, C: only the 2 used")
    print(f"  {'prompt':28s} {'A':>8s} {'B':>8s} {'C':>8s} {'B - A':>8s}  limit {ENCODE_LIMIT_MS:.0f} ms")
    verdicts = []
    for kind in [*kinds, "2 embeddings, first use"]:
        a, b, c = med[(kind, "A")], med[(kind, "B")], med.get((kind, "C"))
        ok = b - a < ENCODE_LIMIT_MS
        verdicts.append(ok)
        c_text = f"{c:8.2f}" if c is not None else f"{'-':>8s}"
        print(f"  {kind:28s} {a:8.2f} {b:8.2f} {c_text} {b - a:8.2f}  {'PASS' if ok else 'FAIL'}")
    print()
    print("where B's time goes (median, ms)")
    print(f"  {'TriggerIndex.match on the word style (' + str(on_style) + ' triggers start with it)':64s} "
          f"{part['match']:8.2f}")
    print(f"  {'view.entry(name) lookup':64s} {part['entry']:8.2f}")
    print(f"  {'first use of a file: entry.load() + entry.hash':64s} {part['load']:8.2f}")
    print()
    print(f"start-up: {'PASS' if total < STARTUP_LIMIT_S else 'FAIL'} ({total:.2f} s)   "
          f"encoding: {'PASS' if all(verdicts) else 'FAIL'} "
          f"(worst B - A {max(med[(k, 'B')] - med[(k, 'A')] for k in [*kinds, '2 embeddings, first use']):.2f} ms)")


if __name__ == "__main__":
    main()
