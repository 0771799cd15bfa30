"""Benchmark: our per-sample denoising loop against diffusers' stock pipeline, and batch scaling.

    .venv/bin/python bench/pipeline_overhead.py                 # tiny model on this machine (CPU)
    .venv/bin/python bench/pipeline_overhead.py --full --batch 8  # full-size SD1.5, random weights (GPU)

Reports ratios measured side by side in one run (A and B interleaved, medians of --repeats):
  * ours / diffusers: the same N images through our loop (one scheduler per sample, per-sample guidance)
    and through ``StableDiffusionPipeline.__call__`` (one scheduler, one guidance for the batch). Target ≈ 1.0:
    per-sample independence should cost nothing measurable next to the UNet.
  * per-image time at batch N / batch 1 for our loop: what batching buys on this device.
Absolute times are printed only on a GPU (CPU machines here are shared and noisy).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.loading import LoadedModel
from engine.pipeline import Pipeline
from engine.requests import GenerationRequest
from engine.tiny import SKELETONS_DIR, build_random_pipeline_from_skeleton, save_tiny_diffusers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _loaded(pipe, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    pipe.to(device=device, dtype=dtype)
    return LoadedModel(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, unet=pipe.unet, vae=pipe.vae,
                       scheduler_config=dict(pipe.scheduler.config), device=device, dtype=dtype, name="bench",
                       source="bench", _hash="0" * 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="full-size SD1.5 architecture, random weights")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sampler", default="Euler a")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline

    if args.full:
        stock = build_random_pipeline_from_skeleton(SKELETONS_DIR / "sd15", dtype=dtype, device=device)
    else:
        folder = save_tiny_diffusers(Path(tempfile.mkdtemp()) / "tiny")
        stock = StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True, safety_checker=None,
                                                        requires_safety_checker=False)
    stock.set_progress_bar_config(disable=True)
    stock.scheduler = EulerAncestralDiscreteScheduler.from_config(stock.scheduler.config,
                                                                  timestep_spacing="linspace")
    model = _loaded(stock, device, dtype)
    ours = Pipeline(model, max_batch=args.batch)
    width, height = model.native_size
    prompts = [f"a photo of object number {i}" for i in range(args.batch)]

    def run_ours(n: int) -> None:
        ours.generate([GenerationRequest(p, steps=args.steps, sampler=args.sampler, seed=i, width=width,
                                         height=height) for i, p in enumerate(prompts[:n])])

    def run_stock(n: int) -> None:
        gens = [torch.Generator("cpu").manual_seed(i) for i in range(n)]
        stock(prompts[:n], num_inference_steps=args.steps, guidance_scale=7.0, generator=gens, height=height,
              width=width, output_type="pt")

    def timed(fn, n: int) -> float:
        _sync(device)
        start = time.perf_counter()
        with torch.inference_mode():
            fn(n)
        _sync(device)
        return time.perf_counter() - start

    for fn in (run_ours, run_stock):  # warm-up
        timed(fn, 1)
        timed(fn, args.batch)
    samples: dict[str, list[float]] = {"ours_n": [], "stock_n": [], "ours_1": []}
    for _ in range(args.repeats):
        samples["ours_n"].append(timed(run_ours, args.batch))
        samples["stock_n"].append(timed(run_stock, args.batch))
        samples["ours_1"].append(timed(run_ours, 1))
    med = {k: statistics.median(v) for k, v in samples.items()}
    label = "SD1.5 full-size (random weights)" if args.full else "tiny SD1.x"
    print(f"model: {label}  device: {device}  dtype: {dtype}  batch: {args.batch}  steps: {args.steps}  "
          f"sampler: {args.sampler}  repeats: {args.repeats}")
    print(f"{'measure':44s} {'ratio':>8s}")
    print(f"{'ours / diffusers pipeline, batch ' + str(args.batch):44s} {med['ours_n'] / med['stock_n']:8.3f}")
    print(f"{'per-image time, batch ' + str(args.batch) + ' / batch 1 (ours)':44s} "
          f"{med['ours_n'] / args.batch / med['ours_1']:8.3f}")
    if device.type == "cuda":
        print(f"absolute: ours batch {args.batch} {med['ours_n']:.3f} s, diffusers {med['stock_n']:.3f} s, "
              f"ours batch 1 {med['ours_1']:.3f} s, {args.batch * args.steps / med['ours_n']:.1f} image-steps/s")


if __name__ == "__main__":
    main()
