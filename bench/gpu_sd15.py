"""Benchmark (GPU): full-size SD 1.5 throughput through our Pipeline, against the FLOP ceiling.

    .venv/bin/python bench/gpu_sd15.py                  # CUDA, fp16, 512x512, 25 steps, batch 1/4/8/16
    .venv/bin/python bench/gpu_sd15.py --batches 1,8 --steps 20 --repeats 5
    .venv/bin/python bench/gpu_sd15.py --cpu-smoke      # CPU: batch 1, 1 step, 64x64, to check it runs end to end

What is measured: ``Pipeline.generate`` (our per-sample loop: one scheduler and guidance per sample, one UNet
call per step for the whole batch, VAE decode as samples finish) on the full SD 1.5 architecture with random
weights, built from the shipped weight-less skeleton ``engine/assets/skeletons/sd15`` (no download; the same
FLOPs and memory traffic as the real model, so timings transfer, the images are noise). For each batch size:
the median wall time of ``--repeats`` runs (after one warm-up run per batch size), images/s, sample
evaluations/s (UNet rows per second, the figure "it/s" quotes at batch 1), peak GPU memory, and the fraction
of the FLOP ceiling.

The ceiling (../shared/reference/performance.md): one 512x512 image costs 2 x 0.803 TFLOP per step (UNet, both
guidance halves) + 2.51 TFLOP (VAE decode) + 2 x 13.3 GFLOP (text encoder, prompt and negative) = 42.7 TFLOP
at 25 steps; an H100 does about 790 TFLOP/s of dense bf16/fp16 matrix work, so at most 18.5 images/s. Other
sizes scale the UNet and VAE terms by the pixel count (approximate: attention grows faster). The fraction is
printed only on CUDA; with another GPU, pass its dense fp16 peak as ``--peak-tflops``.

Prompts differ per run, so every run pays its text encoding (negligible) like a real request. Absolute times
are printed: this benchmark is for a GPU machine. Without CUDA it refuses to run (exit 2) unless --cpu-smoke.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

UNET_TFLOP_512 = 0.803  # one UNet evaluation of one sample at 512x512 (one guidance half)
VAE_TFLOP_512 = 2.51  # one VAE decode at 512x512
TEXT_TFLOP = 0.0133  # one prompt through the text encoder
H100_DENSE_TFLOPS = 790.0


def image_tflop(evaluations: int, width: int, height: int) -> float:
    """Counted FLOPs of one image: both guidance halves per evaluation, the decode, two prompt encodings."""
    scale = width * height / (512 * 512)
    return 2 * UNET_TFLOP_512 * evaluations * scale + VAE_TFLOP_512 * scale + 2 * TEXT_TFLOP


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,4,8,16", help="comma-separated batch sizes")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--size", type=int, default=512, help="width and height in pixels")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sampler", default="Euler a")
    parser.add_argument("--peak-tflops", type=float, default=H100_DENSE_TFLOPS,
                        help="the GPU's dense fp16/bf16 peak (default: H100, as measured here)")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="run batch 1, 1 step, 64x64 on the CPU in float32 (checks the script, not speed)")
    args = parser.parse_args()

    if args.cpu_smoke:
        device, dtype = torch.device("cpu"), torch.float32
        batches, args.steps, args.size, args.repeats = [1], 1, 64, 1
    else:
        if not torch.cuda.is_available():
            print("gpu_sd15.py: no CUDA device (torch.cuda.is_available() is False); this benchmark needs a GPU "
                  "(use --cpu-smoke to check the script on a CPU)", file=sys.stderr)
            sys.exit(2)
        device, dtype = torch.device("cuda"), torch.float16
        batches = [int(b) for b in args.batches.split(",") if b.strip()]

    from engine.loading import LoadedModel
    from engine.pipeline import Pipeline
    from engine.requests import GenerationRequest
    from engine.tiny import SKELETONS_DIR, build_random_pipeline_from_skeleton

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    start = time.perf_counter()
    stock = build_random_pipeline_from_skeleton(SKELETONS_DIR / "sd15", dtype=dtype, device=device)
    model = LoadedModel(tokenizer=stock.tokenizer, text_encoder=stock.text_encoder, unet=stock.unet, vae=stock.vae,
                        scheduler_config=dict(stock.scheduler.config), device=device, dtype=dtype,
                        name="sd15-random", source="bench", _hash="0" * 10)
    pipe = Pipeline(model, max_batch=max(batches))
    sync()
    build_s = time.perf_counter() - start
    counter = iter(range(10**9))

    def requests(batch: int, steps: int) -> list[GenerationRequest]:
        run = next(counter)  # a new prompt per run: no encoder cache hits, as for real requests
        return [GenerationRequest(f"a photo of object {i}, run {run}, highly detailed", steps=steps,
                                  sampler=args.sampler, seed=run * 1000 + i, subseed=run * 1000 + i, cfg_scale=7.0,
                                  width=args.size, height=args.size) for i in range(batch)]

    def timed(batch: int, steps: int) -> float:
        reqs = requests(batch, steps)
        sync()
        t0 = time.perf_counter()
        images = pipe.generate(reqs)
        sync()
        elapsed = time.perf_counter() - t0
        assert sum(len(imgs) for imgs in images) == batch
        return elapsed

    evaluations = pipe.evaluations(requests(1, args.steps)[0])
    per_image = image_tflop(evaluations, args.size, args.size)
    ceiling = args.peak_tflops / per_image
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"model: SD 1.5 architecture, random weights (skeleton sd15; built in {build_s:.1f} s)  device: {name}  "
          f"dtype: {str(dtype).removeprefix('torch.')}  torch {torch.__version__}")
    print(f"{args.size}x{args.size}, {args.steps} steps ({evaluations} evaluations), sampler {args.sampler}, "
          f"guidance on; median of {args.repeats} after 1 warm-up per batch size")
    if device.type == "cuda":
        print(f"ceiling: {per_image:.1f} TFLOP per image at {args.peak_tflops:.0f} TFLOP/s = {ceiling:.1f} images/s")
    print(f"{'batch':>5s} {'s / batch':>10s} {'images/s':>9s} {'evals/s':>8s} {'of ceiling':>10s} {'peak GiB':>9s}")
    for batch in batches:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        timed(batch, args.steps)  # warm-up: allocator, kernels chosen for these shapes
        times = [timed(batch, args.steps) for _ in range(args.repeats)]
        t = statistics.median(times)
        rate = batch / t
        fraction = f"{rate / ceiling:10.1%}" if device.type == "cuda" else f"{'-':>10s}"
        peak = f"{torch.cuda.max_memory_allocated(device) / 2**30:9.1f}" if device.type == "cuda" else f"{'-':>9s}"
        print(f"{batch:5d} {t:10.3f} {rate:9.2f} {batch * evaluations / t:8.1f} {fraction} {peak}")
    if args.cpu_smoke:
        print("cpu smoke: OK (the full-size model ran end to end; CPU timings say nothing about a GPU)")


if __name__ == "__main__":
    main()
