"""Benchmark: training steps/s at batch 1, 4 and 16 — the demo model on the CPU (ratios), full-size SD 1.5 on a GPU.

    .venv/bin/python bench/train_speed.py                      # demo model, CPU: embedding and hypernetwork
    .venv/bin/python bench/train_speed.py --full               # SD 1.5 architecture, random weights, CUDA fp16
    .venv/bin/python bench/train_speed.py --full --cpu-smoke   # the --full path end to end on a CPU (64x64)

What is measured: ``DiffusionTrainer.step`` — the exact step ``/train`` runs (latents cached, frozen model,
trainable tensors in float32, AdamW) — for a textual-inversion embedding and an A1111 hypernetwork. Batch sizes
are measured interleaved (one round of each per repeat, medians), so on a shared CPU the ratios hold even when the
absolute times do not; the CPU report is samples/s at batch N relative to batch 1 (how much batching buys).

On CUDA (``--full``) absolute figures are printed against the FLOP ceiling of ../shared/reference/performance.md:
textual inversion costs about 1.67 TFLOP per sample at 512x512 (forward and backward through the frozen UNet and
the text encoder), so at 790 TFLOP/s an H100 could do at most ~473 samples/s. The hypernetwork's own modules add
little (its self-attention modules are ~13 % of a UNet evaluation); the same ceiling is printed for reference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TI_TFLOP_PER_SAMPLE_512 = 1.67
H100_DENSE_TFLOPS = 790.0


def _images(n: int, size: int) -> list:
    from engine.training.images import TrainingImage

    rng = np.random.default_rng(0)
    return [TrainingImage(f"{i}.png", Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)),
                          "a picture", f"{i:064x}") for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,4,16")
    parser.add_argument("--steps", type=int, default=0, help="timed steps per round (default: 6 CPU, 20 GPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kinds", default="embedding,hypernetwork")
    parser.add_argument("--full", action="store_true", help="SD 1.5 architecture with random weights (CUDA)")
    parser.add_argument("--cpu-smoke", action="store_true", help="with --full: 64x64 on the CPU, to check it runs")
    parser.add_argument("--size", type=int, default=512, help="--full: image side in pixels")
    parser.add_argument("--peak-tflops", type=float, default=H100_DENSE_TFLOPS)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]

    from engine.loading import LoadedModel, load_model
    from engine.training.request import MAX_STEPS, TrainingRequest

    cuda = False
    if args.full:
        from engine.tiny import SKELETONS_DIR, build_random_pipeline_from_skeleton

        if args.cpu_smoke:
            device, dtype, size = torch.device("cpu"), torch.float32, 64
            batches, args.repeats = [1], 1
        else:
            if not torch.cuda.is_available():
                print("train_speed.py --full: no CUDA device; use --cpu-smoke to check the script on a CPU",
                      file=sys.stderr)
                sys.exit(2)
            device, dtype, size, cuda = torch.device("cuda"), torch.float16, args.size, True
        stock = build_random_pipeline_from_skeleton(SKELETONS_DIR / "sd15", dtype=dtype, device=device)
        model = LoadedModel(tokenizer=stock.tokenizer, text_encoder=stock.text_encoder, unet=stock.unet,
                            vae=stock.vae, scheduler_config=dict(stock.scheduler.config), device=device, dtype=dtype,
                            name="sd15-random", source="bench", _hash="0" * 10)
        label = f"SD 1.5 architecture, random weights, {size}x{size}, {str(dtype).removeprefix('torch.')}"
    else:
        model = load_model("data/models/demo", device="cpu", dtype="float32")
        size = model.native_size[0]
        label = f"bundled demo model, {size}x{size}, float32, CPU ({torch.get_num_threads()} threads)"
    steps = args.steps or (20 if cuda else 6)
    images = _images(16, size)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    trainers = {}
    for kind in kinds:
        for batch in batches:
            request = TrainingRequest(kind=kind, name="benchword", steps=MAX_STEPS, batch_size=batch, what="plain")  # type: ignore[arg-type]
            trainer = request.trainer_factory(model, images)()
            trainer.step()  # warm-up: optimizer state, kernels for these shapes
            trainers[(kind, batch)] = trainer
    times: dict[tuple[str, int], list[float]] = {key: [] for key in trainers}
    for _ in range(args.repeats):
        for key, trainer in trainers.items():  # interleaved: every configuration once per round
            sync()
            t0 = time.perf_counter()
            for _ in range(steps):
                trainer.step()
            sync()
            times[key].append((time.perf_counter() - t0) / steps)

    device_name = torch.cuda.get_device_name(model.device) if cuda else "CPU"
    print(f"model: {label}  device: {device_name}  torch {torch.__version__}")
    print(f"{steps} steps per round, median of {args.repeats} interleaved rounds")
    ceiling = None
    if cuda:
        per_sample = TI_TFLOP_PER_SAMPLE_512 * size * size / (512 * 512)
        ceiling = args.peak_tflops / per_sample
        print(f"ceiling: {per_sample:.2f} TFLOP per sample at {args.peak_tflops:.0f} TFLOP/s = {ceiling:.0f} samples/s")
        print(f"{'kind':>12s} {'batch':>5s} {'steps/s':>8s} {'samples/s':>10s} {'of ceiling':>10s} {'peak GiB':>8s}")
    else:
        print(f"{'kind':>12s} {'batch':>5s} {'samples/s vs batch 1':>21s} {'step time vs batch 1':>21s}")
    for kind in kinds:
        base = statistics.median(times[(kind, batches[0])])
        for batch in batches:
            t = statistics.median(times[(kind, batch)])
            if cuda:
                rate = batch / t
                peak = torch.cuda.max_memory_allocated(model.device) / 2**30
                print(f"{kind:>12s} {batch:5d} {1 / t:8.2f} {rate:10.1f} {rate / ceiling:10.1%} {peak:8.1f}")
            else:
                print(f"{kind:>12s} {batch:5d} {(batch / t) / (batches[0] / base):21.2f} {t / base:21.2f}")
    if args.cpu_smoke:
        print("cpu smoke: OK (the full-size model trained end to end; CPU timings say nothing about a GPU)")


if __name__ == "__main__":
    main()
