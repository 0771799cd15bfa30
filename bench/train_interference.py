"""Benchmark: members' generation latency while a training runs on the same worker, against idle (issue 7).

    .venv/bin/python bench/train_interference.py                 # bundled demo model, CPU
    .venv/bin/python bench/train_interference.py --requests 30 --share 0.25 --slice 0.25 --rounds 3

What is measured: one :class:`~engine.queue.worker.GenerationQueue` over the demo model. A member submits a
generation, waits for it, pauses a random moment (so requests often arrive while a training slice is running,
the worst case), and repeats. Blocks of ``--requests`` such generations alternate between *idle* (nothing else on
the worker) and *training* (a :class:`~engine.training.job.TrainingJob` for an embedding running in slices at
background priority, as ``/train`` does), for ``--rounds`` rounds; the same seeds and pauses are used in both.

Reported: the ratio of p50 and p95 latency, training / idle (target: p95 ≤ 1.5), and how fast training went
while members generated, as a fraction of its speed alone on the worker (it must not starve either).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


async def main_async(args: argparse.Namespace) -> None:
    from engine.loading import load_model
    from engine.pipeline import Pipeline
    from engine.queue.worker import GenerationQueue, QueueOptions
    from engine.requests import GenerationRequest
    from engine.training.images import TrainingImage
    from engine.training.job import TrainingJob
    from engine.training.request import MAX_STEPS, TrainingRequest

    model = load_model(args.model, device="cpu", dtype="float32")
    pipeline = Pipeline(model, max_batch=8)
    queue = GenerationQueue(pipeline, QueueOptions(collect_window_s=0.0, preview_every=0,
                                                   background_share=args.share))
    queue.start()
    rng = np.random.default_rng(0)
    size = model.native_size[0]
    images = [TrainingImage(f"{i}.png", Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)),
                            "a picture", f"{i:064x}") for i in range(6)]
    request = TrainingRequest("embedding", "benchword", steps=MAX_STEPS, what="plain", batch_size=args.train_batch)
    folder = Path(tempfile.mkdtemp(prefix="atelier-bench-"))
    loop = asyncio.get_running_loop()

    def new_job(tag: str) -> TrainingJob:
        return TrainingJob(request.trainer_factory(model, images), checkpoint_dir=folder / tag,
                           result_path=folder / f"{tag}.safetensors", loop=loop, checkpoint_every=10**9,
                           slice_seconds=args.slice)

    pauses = random.Random(1)

    async def block(seed0: int) -> list[float]:
        latencies = []
        for i in range(args.requests):
            await asyncio.sleep(pauses.uniform(0, args.max_pause))
            t0 = time.perf_counter()
            await queue.submit(GenerationRequest("a red circle on a blue background", seed=seed0 + i, subseed=0,
                                                 steps=args.steps), user_id=1)
            latencies.append(time.perf_counter() - t0)
        return latencies

    # Training alone, for the "does it starve" figure.
    solo = new_job("solo")
    queue.add_background(solo)
    await asyncio.sleep(2.0)  # set-up slice (encoding the images) and warm-up
    start_steps, t0 = solo.trainer.steps_done if solo.trainer else 0, time.perf_counter()
    await asyncio.sleep(args.solo_seconds)
    solo_rate = ((solo.trainer.steps_done if solo.trainer else 0) - start_steps) / (time.perf_counter() - t0)
    solo.cancel()

    await block(10_000)  # warm-up of generation
    idle: list[float] = []
    busy: list[float] = []
    busy_rates = []
    for r in range(args.rounds):
        idle += await block(r * 1000)
        job = new_job(f"round{r}")
        queue.add_background(job)
        while job.trainer is None:  # its set-up slice first, so the block starts with training under way
            await asyncio.sleep(0.05)
        s0, t0 = job.trainer.steps_done, time.perf_counter()
        busy += await block(r * 1000)
        busy_rates.append((job.trainer.steps_done - s0) / (time.perf_counter() - t0))
        job.cancel()
    await queue.shutdown(timeout=10)

    print(f"model: {args.model} ({size}x{size}), CPU, {torch.get_num_threads()} threads; generation: {args.steps} "
          f"steps, one at a time with random pauses up to {args.max_pause:.2f} s; training: embedding, batch "
          f"{args.train_batch}, slices of {args.slice:.2f} s, background share {args.share:.2f}")
    print(f"{args.rounds} rounds × {args.requests} requests per condition")
    print(f"latency p50 training/idle: {statistics.median(busy) / statistics.median(idle):.3f}")
    print(f"latency p95 training/idle: {percentile(busy, 95) / percentile(idle, 95):.3f}   (target ≤ 1.5)")
    print(f"training speed while members generate / alone: {statistics.median(busy_rates) / solo_rate:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="data/models/demo")
    parser.add_argument("--requests", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--max-pause", type=float, default=0.3)
    parser.add_argument("--share", type=float, default=0.25, help="queue.background_share")
    parser.add_argument("--slice", type=float, default=0.1, help="seconds per training slice (training.slice_s)")
    parser.add_argument("--train-batch", type=int, default=1)
    parser.add_argument("--solo-seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
