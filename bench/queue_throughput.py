"""Benchmark: the GPU queue (issue 5) on the tiny model: batching across users, its overhead, mixed adapters,
continuous vs static batching under staggered arrivals, and event-loop lag.

    .venv/bin/python bench/queue_throughput.py                      # all five sub-benchmarks (about 3 min on 2 cores)
    .venv/bin/python bench/queue_throughput.py --only arrivals,lag  # some of them
    .venv/bin/python bench/queue_throughput.py --quick              # smoke run: tiny sizes, one repeat, seconds

Why the tiny model: its latent is 8×8 (the VAE downsamples ×8 like real SD), so a UNet call on a batch costs
little more than on one image, as on a GPU that batching has not yet saturated (../shared/reference/
performance.md, "How to measure here"). What batching buys here is therefore an upper-bound-like stand-in for
a GPU; what the queue *costs* (thread hand-offs, the collection window, per-sample Python) is real.

Sub-benchmarks (``--only`` names; each prints ratio, target, PASS/FAIL; A and B interleaved, medians of
``--repeats``):

1. ``batching``: ``--n`` requests (different prompts and seeds; some with ``<hypernet:a>`` or
   ``<hypernet:b:0.5>``, some with embeddings, some plain; ``--steps`` each) submitted at once to a
   :class:`GenerationQueue` (one user each) vs the same requests one at a time (submit, await, next).
   Throughput ratio, target ≥ 3. One at a time pays the queue's collection window per request, as a lone user
   does; the ratio against ``Pipeline.generate`` one request at a time (no window) is printed too, for
   information.
2. ``direct``: the same batch through the queue vs ``Pipeline.generate`` on the list directly (same batch
   limit). Throughput ratio queue / direct, target ≥ 0.9: the queue should cost little over the bare loop.
   The product's 50 ms collection window is part of the queue's cost; a queue with a 0 ms window is timed too,
   for information, to tell the window from the rest (thread hand-offs, events, previews).
3. ``adapters``: ``Pipeline.generate`` on ``--n`` samples in one batch where every sample has a different
   (hypernetwork, multiplier): ``<hypernet:a:0.30>``, ``<hypernet:c:0.35>``, ... ("mixed"; a and c have the same
   structure, so mixed and uniform do the same hypernetwork FLOPs and differ only in grouping), vs all samples
   ``<hypernet:a>`` ("uniform"), and vs no adapters ("none"); the same base prompts and seeds in every variant.
   Time ratio mixed / uniform, target ≤ 1.15; mixed / none, uniform / none and a realistic three-way mix
   (a, b:0.5, none) / uniform are printed for information. The hypernetworks have modules of the tiny model's
   widths: 32 (cross-attention context, self-attention of the first block) and 64 (self-attention of the second
   block), so they act in every attention layer.
4. ``arrivals``: a scripted schedule of ``--arrivals`` single-image requests (steps drawn from 6/10/16/24,
   exponential gaps from a seeded RNG with mean ``--gap`` × the lone latency of a mean-step request through an
   idle queue, so the queue is busy but not overloaded), replayed once with ``QueueOptions(continuous=True)`` and once
   with ``continuous=False`` (static batching: a batch forms when the worker is idle and runs to its end).
   Mean and p95 latency (submit → images on the loop) per mode; ratio of mean latencies continuous / static,
   target ≤ 0.7; the throughput of each (requests / (last finish − first arrival)) and their ratio, which
   should be about 1 (the schedule, not the queue, sets the pace when nothing is overloaded).
5. ``lag``: an asyncio task sleeps 10 ms in a loop and records (actual − 10 ms) while the queue runs a long
   batch (``--n`` requests × ``--lag-steps``, every handle's events consumed as the bot does). p50/p99 lag in
   ms, target p99 < 50 ms. An absolute CPU number by nature: it measures whether the worker thread (GIL,
   ``call_soon_threadsafe`` traffic) starves the bot's event loop.

Threads: ``--threads`` (default 2) torch threads; the worker thread and the event loop share the process.
Absolute times are printed only for the lag (its target is absolute); everything else is a ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.adapters.embeddings import Embedding, write_embedding_pt
from engine.adapters.hypernetwork import HypernetworkSpec, create_hypernetwork, write_hypernetwork_pt
from engine.adapters.library import AdapterLibrary
from engine.loading import load_model
from engine.pipeline import Pipeline
from engine.queue.worker import GenerationQueue, QueueOptions
from engine.requests import GenerationRequest
from engine.tiny import save_tiny_diffusers

BENCHES = ("batching", "direct", "adapters", "arrivals", "lag")
TARGETS = {"batching": 3.0, "direct": 0.9, "adapters": 1.15, "arrivals": 0.7, "lag_ms": 50.0}
SUBJECTS = ("a lighthouse on a cliff", "a red fox in the snow", "a bowl of ramen", "an old sailing ship",
            "a castle at dawn", "a cat on a windowsill", "a desert canyon", "a city street in the rain")
STYLES = ("watercolor", "oil painting", "pencil sketch", "photograph")
ARRIVAL_STEPS = (6, 10, 16, 24)
LAG_PERIOD_S = 0.010


# -- setup -------------------------------------------------------------------------------------------------------


def build(tmp: Path, max_batch: int) -> Pipeline:
    """The tiny SD1 model with hypernetworks a, b, c and embeddings mystyle, inkwash in its library.

    a and c have the same structure (1, 2, 1), ReLU, and differ only in weights, so a batch mixing them does the
    same hypernetwork FLOPs as a batch of a alone; b is narrower (1, 1.5, 1), tanh.
    """
    model = load_model(str(save_tiny_diffusers(tmp / "tiny", seed=0)), device="cpu", dtype="float32",
                       allow_download=False)
    hn_dir, emb_dir = tmp / "hypernetworks", tmp / "embeddings"
    hn_dir.mkdir()
    emb_dir.mkdir()
    widths = (32, 64)  # tiny model: cross-attention context 32; self-attention 32 and 64
    write_hypernetwork_pt(create_hypernetwork("a", widths, HypernetworkSpec(activation="relu"), seed=1),
                          hn_dir / "a.pt")
    write_hypernetwork_pt(create_hypernetwork("b", widths, HypernetworkSpec(layer_structure=(1, 1.5, 1),
                                                                            activation="tanh"), seed=2),
                          hn_dir / "b.pt")
    write_hypernetwork_pt(create_hypernetwork("c", widths, HypernetworkSpec(activation="relu"), seed=3),
                          hn_dir / "c.pt")
    gen = torch.Generator().manual_seed(3)
    for name, n_vectors in (("mystyle", 2), ("inkwash", 3)):
        write_embedding_pt(Embedding(name, torch.randn(n_vectors, 32, generator=gen) * 0.02, step=100),
                           emb_dir / f"{name}.pt")
    return Pipeline(model, max_batch=max_batch, library=AdapterLibrary([emb_dir], [hn_dir]))


def base_prompt(i: int) -> str:
    return f"{STYLES[i % len(STYLES)]} of {SUBJECTS[i % len(SUBJECTS)]}, detailed, number {i}"


def mixed_requests(n: int, steps: int, seed0: int = 0) -> list[GenerationRequest]:
    """Different prompts and seeds; in turn ``<hypernet:a>``, an embedding, ``<hypernet:b:0.5>``, plain."""
    extras = (" <hypernet:a>", ", mystyle", " <hypernet:b:0.5>", "", ", inkwash", "")
    return [GenerationRequest(base_prompt(i) + extras[i % len(extras)], steps=steps, seed=seed0 + i,
                              subseed=seed0 + i, cfg_scale=6.0, width=64, height=64) for i in range(n)]


def adapter_variant(kind: str, n: int, steps: int) -> list[GenerationRequest]:
    """``n`` one-image requests with the same base prompts and seeds, differing only in hypernetwork tags."""
    def tags(i: int) -> str:
        if kind == "none":
            return ""
        if kind == "uniform":
            return " <hypernet:a>"
        if kind == "mix3":
            return (" <hypernet:a>", " <hypernet:b:0.5>", "")[i % 3]
        # mixed: every sample a different (network, multiplier); a and c cost the same, so only grouping differs
        return f" <hypernet:{'ac'[i % 2]}:{0.3 + 0.05 * i:.2f}>"

    return [GenerationRequest(base_prompt(i) + tags(i), steps=steps, seed=i, subseed=i, cfg_scale=6.0, width=64,
                              height=64) for i in range(n)]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))]


async def timed(fn: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await fn()
    return time.perf_counter() - start


@dataclass
class Ctx:
    args: argparse.Namespace
    pipeline: Pipeline
    results: dict[str, bool]


# -- 1 and 2: batching across users, and the queue's cost over the bare loop ---------------------------------------


async def bench_batching(ctx: Ctx, which: set[str]) -> None:
    args, pipe = ctx.args, ctx.pipeline
    requests = mixed_requests(args.n, args.steps)
    queue = GenerationQueue(pipe, QueueOptions(max_jobs_per_user=args.n, max_queued=4 * args.n))
    queue.start()
    no_window = GenerationQueue(pipe, QueueOptions(max_jobs_per_user=args.n, max_queued=4 * args.n,
                                                   collect_window_s=0.0))
    no_window.start()

    together_calls = [0, 0]  # UNet calls, samples in them: the "together" runs only

    async def together() -> None:
        steps0, batched0 = queue.stats["steps"], queue.stats["batched_samples"]
        await asyncio.gather(*(queue.submit(r, user_id=i) for i, r in enumerate(requests)))
        together_calls[0] += queue.stats["steps"] - steps0
        together_calls[1] += queue.stats["batched_samples"] - batched0

    async def together_no_window() -> None:
        await asyncio.gather(*(no_window.submit(r, user_id=i) for i, r in enumerate(requests)))

    async def one_by_one() -> None:
        for i, r in enumerate(requests):
            await queue.submit(r, user_id=i)

    async def direct_batch() -> None:
        pipe.generate(requests)

    async def direct_one_by_one() -> None:
        for r in requests:
            pipe.generate([r])

    modes: dict[str, Callable[[], Awaitable[None]]] = {"queue, together": together}
    if "batching" in which:
        modes["queue, one at a time"] = one_by_one
        modes["generate, one at a time"] = direct_one_by_one
    if "direct" in which:
        modes["generate, list"] = direct_batch
        modes["queue (0 ms window), together"] = together_no_window
    try:
        for fn in modes.values():  # warm-up: prompt encodings cached, first torch calls, adapters loaded
            await fn()
        times: dict[str, list[float]] = {k: [] for k in modes}
        for repeat in range(args.repeats):
            names = list(modes)
            order = names[repeat % len(names):] + names[:repeat % len(names)]  # rotate who goes first
            for name in order:
                times[name].append(await timed(modes[name]))
    finally:
        await queue.shutdown(timeout=10)
        await no_window.shutdown(timeout=10)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"  {args.n} requests x {args.steps} steps, batch limit {pipe.max_batch}, "
          f"collection window {queue.options.collect_window_s * 1e3:.0f} ms; median of {args.repeats}; "
          f"samples per UNet call when together: {together_calls[1] / max(1, together_calls[0]):.2f}")
    if "batching" in which:
        ratio = med["queue, one at a time"] / med["queue, together"]
        ctx.results["1 batching"] = ok = ratio >= TARGETS["batching"]
        print(f"  (1) throughput, queue together / queue one at a time  {ratio:7.2f}x  "
              f"target >= {TARGETS['batching']:.0f}x  {verdict(ok)}")
        print(f"      for information: queue together / generate one at a time (no window)  "
              f"{med['generate, one at a time'] / med['queue, together']:7.2f}x")
    if "direct" in which:
        ratio = med["generate, list"] / med["queue, together"]
        ctx.results["2 direct"] = ok = ratio >= TARGETS["direct"]
        print(f"  (2) throughput, queue together / Pipeline.generate(list)  {ratio:7.3f}   "
              f"target >= {TARGETS['direct']}  {verdict(ok)}")
        print(f"      for information: queue with a 0 ms collection window / Pipeline.generate(list)  "
              f"{med['generate, list'] / med['queue (0 ms window), together']:7.3f}")


# -- 3: mixed adapters in one batch ------------------------------------------------------------------------------


async def bench_adapters(ctx: Ctx) -> None:
    args, pipe = ctx.args, ctx.pipeline
    kinds = ("none", "uniform", "mix3", "mixed")
    batches = {k: adapter_variant(k, args.n, args.steps) for k in kinds}
    for k in kinds:  # warm-up
        pipe.generate(batches[k])
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for repeat in range(args.repeats):
        order = kinds[repeat % len(kinds):] + kinds[:repeat % len(kinds)]
        for k in order:
            start = time.perf_counter()
            pipe.generate(batches[k])
            times[k].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["mixed"] / med["uniform"]
    ctx.results["3 adapters"] = ok = ratio <= TARGETS["adapters"]
    print(f"  Pipeline.generate, {args.n} samples x {args.steps} steps in one batch; median of {args.repeats}")
    print(f"  (3) time, mixed ({args.n} different chains) / uniform (all <hypernet:a>)  {ratio:7.3f}   "
          f"target <= {TARGETS['adapters']}  {verdict(ok)}")
    print(f"      for information: mixed / none {med['mixed'] / med['none']:.3f}, uniform / none "
          f"{med['uniform'] / med['none']:.3f}, three-way mix (a, b:0.5, none) / uniform "
          f"{med['mix3'] / med['uniform']:.3f}")


# -- 4: continuous vs static batching under staggered arrivals ---------------------------------------------------


@dataclass
class RunStats:
    latencies: list[float]
    span: float  # first arrival → last finish

    @property
    def mean(self) -> float:
        return statistics.fmean(self.latencies)

    @property
    def p95(self) -> float:
        return percentile(self.latencies, 95)

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.span


async def replay(pipe: Pipeline, schedule: list[tuple[float, GenerationRequest]], continuous: bool) -> RunStats:
    """Submit each request at its time (relative to the start); latency = submit → result on the loop."""
    queue = GenerationQueue(pipe, QueueOptions(max_jobs_per_user=len(schedule), max_queued=4 * len(schedule),
                                               continuous=continuous))
    queue.start()
    latencies: list[float] = [0.0] * len(schedule)
    finish: list[float] = [0.0] * len(schedule)
    start = time.perf_counter()

    async def one(i: int, at: float, request: GenerationRequest) -> None:
        await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
        t0 = time.perf_counter()
        await queue.submit(request, user_id=i)
        finish[i] = time.perf_counter()
        latencies[i] = finish[i] - t0

    try:
        await asyncio.gather(*(one(i, at, r) for i, (at, r) in enumerate(schedule)))
    finally:
        await queue.shutdown(timeout=10)
    return RunStats(latencies, max(finish) - (start + schedule[0][0]))


async def bench_arrivals(ctx: Ctx) -> None:
    args, pipe = ctx.args, ctx.pipeline
    base = mixed_requests(args.arrivals, 1)
    rng = random.Random(args.seed)
    steps = [rng.choice(ARRIVAL_STEPS) for _ in base]
    requests = [replace(r, steps=s) for r, s in zip(base, steps, strict=True)]
    # Calibrate the gaps to this machine: the lone latency of a mean-step request through an idle queue
    # (collection window included), median of 3 after a warm-up.
    mean_steps = round(statistics.fmean(ARRIVAL_STEPS))
    probe = replace(base[0], steps=mean_steps)
    lone = statistics.median([(await replay(pipe, [(0.0, probe)], True)).latencies[0] for _ in range(4)][1:])
    mean_gap = args.gap * lone
    at, schedule = 0.0, []
    for r in requests:
        schedule.append((at, r))
        at += rng.expovariate(1.0 / mean_gap)
    await replay(pipe, schedule[: min(4, len(schedule))], True)  # warm-up (encodings of these prompts cached)
    for r in requests:
        pipe.encoder.encode_pair(r.prompt, r.negative_prompt, pipe.library.view(r.guild_id))  # cache all prompts
    runs: dict[str, list[RunStats]] = {"continuous": [], "static": []}
    for repeat in range(args.repeats):
        order = ("continuous", "static") if repeat % 2 == 0 else ("static", "continuous")
        for mode in order:
            runs[mode].append(await replay(pipe, schedule, mode == "continuous"))
    med = {mode: {"mean": statistics.median(s.mean for s in rs), "p95": statistics.median(s.p95 for s in rs),
                  "throughput": statistics.median(s.throughput for s in rs)} for mode, rs in runs.items()}
    ratio = med["continuous"]["mean"] / med["static"]["mean"]
    ctx.results["4 arrivals"] = ok = ratio <= TARGETS["arrivals"]
    print(f"  {args.arrivals} one-image requests, steps from {ARRIVAL_STEPS} (mean {statistics.fmean(steps):.1f}), "
          f"exponential gaps, mean {args.gap} x lone latency of a {mean_steps}-step request; "
          f"schedule spans {schedule[-1][0] / lone:.1f} lone latencies; median of {args.repeats} replays per mode")
    print(f"  {'mode':12s} {'mean latency':>14s} {'p95 latency':>14s} {'throughput':>14s}   "
          "(latencies in lone-request units)")
    for mode in ("continuous", "static"):
        m = med[mode]
        print(f"  {mode:12s} {m['mean'] / lone:14.2f} {m['p95'] / lone:14.2f} {m['throughput'] * lone:14.3f}")
    print(f"  (4) mean latency, continuous / static  {ratio:7.3f}   target <= {TARGETS['arrivals']}  {verdict(ok)}")
    print(f"      p95 latency, continuous / static  {med['continuous']['p95'] / med['static']['p95']:7.3f};  "
          f"throughput, continuous / static  {med['continuous']['throughput'] / med['static']['throughput']:7.3f}"
          "  (should be about 1)")


# -- 5: event-loop lag -------------------------------------------------------------------------------------------


async def bench_lag(ctx: Ctx) -> None:
    args, pipe = ctx.args, ctx.pipeline
    queue = GenerationQueue(pipe, QueueOptions(max_jobs_per_user=args.n, max_queued=4 * args.n))
    queue.start()
    lags: list[float] = []
    events = 0

    async def consume(handle) -> None:
        nonlocal events
        async for _ in handle.events():
            events += 1

    async def probe(stop: asyncio.Event) -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            await asyncio.sleep(LAG_PERIOD_S)
            lags.append(time.perf_counter() - t0 - LAG_PERIOD_S)

    busy = 0.0
    try:
        await asyncio.gather(*(queue.submit(r, user_id=i) for i, r in enumerate(mixed_requests(args.n, 2))))  # warm
        idle_stop = asyncio.Event()
        idle_task = asyncio.create_task(probe(idle_stop))
        await asyncio.sleep(0.5)
        idle_stop.set()
        await idle_task
        idle = list(lags)
        lags.clear()
        for repeat in range(args.repeats):
            requests = mixed_requests(args.n, args.lag_steps, seed0=100 * (repeat + 1))
            stop = asyncio.Event()
            task = asyncio.create_task(probe(stop))
            t0 = time.perf_counter()
            handles = [queue.submit(r, user_id=i) for i, r in enumerate(requests)]
            await asyncio.gather(*(consume(h) for h in handles), *handles)
            busy += time.perf_counter() - t0
            stop.set()
            await task
    finally:
        await queue.shutdown(timeout=10)
    p50, p99, worst = (percentile(lags, 50) * 1e3, percentile(lags, 99) * 1e3, max(lags) * 1e3)
    ctx.results["5 lag"] = ok = p99 < TARGETS["lag_ms"]
    print(f"  {args.repeats} x ({args.n} requests x {args.lag_steps} steps), {busy:.1f} s busy, {len(lags)} probes "
          f"of {LAG_PERIOD_S * 1e3:.0f} ms, {events} job events consumed; idle loop p99 "
          f"{percentile(idle, 99) * 1e3:.2f} ms")
    print(f"  (5) event-loop lag while batches run: p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {worst:.2f} ms   "
          f"target p99 < {TARGETS['lag_ms']:.0f} ms  {verdict(ok)}")


# -- main --------------------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, bool]:
    pipe = build(tmp, max_batch=max(args.n, 16))
    ctx = Ctx(args, pipe, {})
    print(f"model: tiny SD1.x (latent 8x8)  device: cpu  torch threads: {torch.get_num_threads()}  "
          f"sampler: Euler a  n: {args.n}  steps: {args.steps}  repeats: {args.repeats}")
    # No inference_mode here: grad mode is per thread, and the worker thread runs as in the product (no mode set);
    # tensors made under inference_mode on this thread and cached by the encoder would then break the worker.
    sections = (("batching", "direct"), "[1/2] batching across users; the queue against the bare loop",
                lambda: bench_batching(ctx, args.only)), \
        (("adapters",), "[3] mixed adapters in one batch", lambda: bench_adapters(ctx)), \
        (("arrivals",), "[4] staggered arrivals: continuous vs static batching", lambda: bench_arrivals(ctx)), \
        (("lag",), "[5] event-loop lag", lambda: bench_lag(ctx))
    for names, title, fn in sections:
        if set(names) & args.only:
            print(f"\n{title}")
            start = time.perf_counter()
            await fn()
            print(f"  (section wall time {time.perf_counter() - start:.0f} s)")
    return ctx.results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(BENCHES),
                        help=f"comma-separated sub-benchmarks (default: all): {', '.join(BENCHES)}")
    parser.add_argument("--n", type=int, default=16, help="requests in a batch (1, 2, 3, 5)")
    parser.add_argument("--steps", type=int, default=10, help="steps per request (1, 2, 3)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--arrivals", type=int, default=24, help="requests in the arrival schedule (4)")
    parser.add_argument("--gap", type=float, default=0.5,
                        help="mean arrival gap in lone-request latencies (4); below ~0.3 the queue overloads")
    parser.add_argument("--lag-steps", type=int, default=30, help="steps per request in the lag run (5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the arrival schedule (4)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="smoke run: n 4, steps 3, 1 repeat, 6 arrivals")
    args = parser.parse_args()
    args.only = {name.strip() for name in args.only.split(",") if name.strip()}
    unknown = args.only - set(BENCHES)
    if unknown:
        parser.error(f"unknown sub-benchmark(s) {', '.join(sorted(unknown))}; choose from {', '.join(BENCHES)}")
    if args.quick:
        args.n, args.steps, args.repeats, args.arrivals, args.lag_steps = 4, 3, 1, 6, 4
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="queue_throughput_"))
    try:
        results = asyncio.run(run(args, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("\nsummary: " + "  ".join(f"{name} {verdict(ok)}" for name, ok in results.items()))


if __name__ == "__main__":
    main()
