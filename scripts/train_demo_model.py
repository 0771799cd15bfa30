"""Train the bundled demo model and score its prompt adherence.

Usage::

    .venv/bin/python scripts/train_demo_model.py --out data/models/demo --minutes 45
    .venv/bin/python scripts/train_demo_model.py --out /tmp/demo-smoke --smoke

Why ``--minutes`` calibrates instead of stopping on a clock: the learning-rate schedule needs to know its length
and a run must be reproducible, so the step counts are fixed *before* training from a few timed steps, logged,
and stored in ``train_stats.json``; ``--vae-steps``/``--unet-steps`` replay them exactly. The phases' time caps
stay as a safety net only. At the end the saved folder is loaded through :func:`engine.loading.load_model` and
scored with :func:`engine.demo.score.evaluate`; the numbers go to ``scores.json`` for the model card.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    from engine.demo.train import DemoTrainConfig

# Share of the budget per phase; the rest is the dataset, the latent cache, saving and scoring (~2-3 min).
VAE_SHARE, UNET_SHARE, OVERHEAD_MIN = 0.12, 0.80, 2.5


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def calibrate(cfg: DemoTrainConfig, minutes: float) -> DemoTrainConfig:
    """Step counts that fit ``minutes`` on this machine, from a few timed steps of each phase on random data."""
    import numpy as np
    import torch

    from engine.demo.train import build_demo_components, train_unet_and_text, train_vae

    quiet = lambda _: None  # noqa: E731
    short, long = 3, 11

    def rate(run: Callable[[DemoTrainConfig], dict[str, Any]]) -> float:
        """Steps/s from the difference of a short and a long probe: set-up costs (optimizer state, memory
        layout) cancel out. A plain 6-step probe read 25-35 % slow, which left a quarter of the budget unused."""
        run(dataclasses.replace(cfg, vae_steps=1, unet_steps=1, warmup_steps=1, log_every=10**9))  # warm-up
        timings = {}
        for n in (short, long):
            t0 = time.perf_counter()
            run(dataclasses.replace(cfg, vae_steps=n, unet_steps=n, warmup_steps=1, log_every=10**9))
            timings[n] = time.perf_counter() - t0
        return (long - short) / max(timings[long] - timings[short], 1e-9)

    parts = build_demo_components(cfg)
    images = np.random.default_rng(0).integers(0, 256, (64, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
    vae_rate = rate(lambda c: train_vae(parts.vae, images, c, log=quiet))
    side = cfg.image_size // 2 ** (len(cfg.vae_channels) - 1)
    latents, captions = torch.randn(64, 4, side, side), ["a small red circle on a blue background, top left"] * 64
    unet_rate = rate(lambda c: train_unet_and_text(parts, latents, captions, c, log=quiet))
    usable = max(1.0, minutes - OVERHEAD_MIN) * 60
    vae_steps = max(50, int(vae_rate * usable * VAE_SHARE))
    unet_steps = max(100, int(unet_rate * usable * UNET_SHARE))
    log(f"calibration: vae {vae_rate:.2f} steps/s, unet {unet_rate:.2f} steps/s -> "
        f"--vae-steps {vae_steps} --unet-steps {unet_steps}")
    return dataclasses.replace(cfg, vae_steps=vae_steps, unet_steps=unet_steps,
                               warmup_steps=min(cfg.warmup_steps, unet_steps // 10),
                               vae_minutes=minutes * VAE_SHARE * 1.5, unet_minutes=minutes * UNET_SHARE * 1.25)


def score(out_dir: Path, smoke: bool) -> dict[str, Any]:
    """Load the written folder like the bot does and score it on the fixed evaluation sets."""
    from engine.demo.score import evaluate, evaluation_scenes
    from engine.loading import load_model
    from engine.pipeline import Pipeline

    pipeline = Pipeline(load_model(str(out_dir), device="cpu", dtype="float32"), max_batch=16)
    kwargs = {"seeds": (0,), "steps": 4} if smoke else {}
    results: dict[str, Any] = {}
    for name, held_out in (("in_distribution", False), ("held_out", True)):
        scenes = evaluation_scenes(held_out=held_out, n=4) if smoke else evaluation_scenes(held_out=held_out)
        t0 = time.perf_counter()
        report = evaluate(pipeline, scenes, **kwargs)
        log(f"score {name}: {report.summary()} ({time.perf_counter() - t0:.0f} s)")
        results[name] = report.as_dict()
    return results


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def _schedule_line(cfg: dict[str, Any]) -> str:
    if cfg.get("zero_terminal_snr"):
        return ("- SD 1.x's DDPM schedule rescaled to zero terminal SNR (stored as `trained_betas`, which every "
                "sampler reads) with v-prediction, so training never lets the noise carry a trace of the image.")
    return "- SD 1.x DDPM schedule, so every A1111 sampler applies."


def _adapter_lines(out_dir: Path) -> list[str]:
    """The card's section on the embedding and hypernetwork trained on this model (``adapters.json``)."""
    path = out_dir / "adapters.json"
    if not path.is_file():
        return []
    record = json.loads(path.read_text())
    lines = ["## Adapters trained on it", "",
             "Trained with `scripts/train_demo_adapters.py` through the same trainer and job `/train` runs "
             "(recipes in `engine/demo/concepts.py`); they sit in this folder's `embeddings/` and `hypernetworks/`, "
             "so they are in the library whenever this model is loaded. Preview grids are in `previews/`.", ""]
    pink = record.get("pink")
    if pink:
        r, score, best = pink["recipe"], pink["score"], pink["best_plain"]
        n_plain = len(pink.get("plain_prompts", ()))
        lines += [f"- **`pink`** (embedding, {r['vectors']} vectors from \"{r['init_text']}\", {r['steps']} steps at "
                  f"lr {r['lr']}, batch {r['batch_size']}, {pink['images']} images): a colour no plain prompt of "
                  f"this model gives. Write `a pink circle on a green background`. {_pct(score['hits'])} of "
                  f"{score['n']} generated shapes come out nearer pink (as the model's VAE renders it, RGB "
                  f"{tuple(pink['target_rgb'])}) than any colour a plain prompt names (the palette and the "
                  f"midpoints of two palette colours); the best of {n_plain} plain prompts (palette words, words "
                  f"the model never saw, no colour word, two-word blends), \"{pink['best_plain_word']}\", "
                  f"{_pct(best['hits'])}. Mean distance to pink {score['distance']:.2f} vs {best['distance']:.2f}."]
    swap = record.get("rgb-swap")
    if swap:
        r, after, before = swap["recipe"], swap["with"], swap["without"]
        modules = f"modules for width {', '.join(map(str, r['modules']))}, " if r.get("modules") else ""
        lines += [f"- **`rgb-swap`** (hypernetwork, {modules}{r['steps']} steps at lr {r['lr']}, batch "
                  f"{r['batch_size']}, {swap['images']} images): a colour-shifted style, every colour channel "
                  f"rotated (red → green → blue → red). Add `<hypernet:rgb-swap:1>`. With it "
                  f"{_pct(after['shifted'])} of {after['n']} colour reads show the shifted colour "
                  f"({_pct(after['original'])} the asked one) and {_pct(after.get('toward', float('nan')))} are "
                  f"nearer the shifted colour than the asked one; without it {_pct(before['shifted'])} "
                  f"({_pct(before['original'])}; nearer {_pct(before.get('toward', float('nan')))})."]
    return [*lines, ""]


def _run_record(stats: dict[str, Any], scores: dict[str, Any]) -> dict[str, Any]:
    """One row of the spread table: what tells runs of the recipe apart, and their scores."""
    return {"seed": stats["config"]["seed"], "unet_steps": stats["unet"]["steps"],
            "vae_any_colour_rate": stats["config"].get("vae_any_colour_rate", 0.0), "scores": scores}


def record_seed_runs(out_dir: Path, runs: list[Path]) -> Path:
    """``seed_runs.json``: the config and scores of other runs of this recipe, for the card's spread table."""
    record = [_run_record(json.loads((run / "train_stats.json").read_text(encoding="utf-8")),
                          json.loads((run / "scores.json").read_text(encoding="utf-8"))) for run in runs]
    path = out_dir / "seed_runs.json"
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path


def _seed_run_lines(out_dir: Path, stats: dict[str, Any], scores: dict[str, Any]) -> list[str]:
    """The card's run-to-run spread: this run's shape and colour scores beside other seeds' (``seed_runs.json``)."""
    path = out_dir / "seed_runs.json"
    if not path.is_file() or not scores:
        return []
    runs = [{**_run_record(stats, scores), "this": True}, *json.loads(path.read_text(encoding="utf-8"))]
    lines = ["", "Run-to-run spread: this run beside other runs of the recipe and its variants (other seeds, fewer "
             "UNet steps, a VAE trained on the palette only), scored the same way. Shape is the attribute that "
             "varies between runs: one seed's shape score has spread by up to ~35 points, so judge a change to the "
             "recipe by several seeds.", "",
             "| seed | UNet steps | VAE any-colour share | colour | shape | background | size | held-out shape |",
             "|---|---|---|---|---|---|---|---|"]
    for run in runs:
        main, held = run["scores"]["in_distribution"], run["scores"].get("held_out", {})
        label = f"{run['seed']} (shipped)" if run.get("this") else str(run["seed"])
        lines.append(f"| {label} | {run['unet_steps']} | {_pct(run['vae_any_colour_rate'])} | {_pct(main['colour'])} "
                     f"| {_pct(main['shape'])} | {_pct(main['background'])} | {_pct(main['size'])} "
                     f"| {_pct(held.get('shape', float('nan')))} |")
    return lines


def write_model_card(out_dir: Path) -> Path:
    """``README.md`` of the model folder: how it was trained, what it draws and not, its measured scores.

    Built only from ``train_stats.json`` and ``scores.json`` of the same folder, so the card can never disagree
    with the weights beside it.
    """
    from engine.demo.dataset import COLOURS, HELD_OUT, POSITIONS, SHAPES, SIZES
    from engine.demo.score import ATTRIBUTES

    stats = json.loads((out_dir / "train_stats.json").read_text(encoding="utf-8"))
    scores_path = out_dir / "scores.json"
    scores = json.loads(scores_path.read_text(encoding="utf-8")) if scores_path.is_file() else {}
    cfg = stats["config"]
    size_mb = sum(f.stat().st_size for f in out_dir.rglob("*.safetensors")) / 2**20
    held = ", ".join(f"{c} {s}" for c, s in sorted(HELD_OUT))
    lines = [
        "# Atelier demo model",
        "",
        "A tiny Stable Diffusion 1.x-architecture model trained from scratch on synthetic pictures of one shape on a",
        "plain background. It ships with Atelier so a fresh install draws what it is asked for without a download,",
        "and so training features can be measured against a model whose prompt adherence is known.",
        "",
        "## What it draws",
        "",
        f"- one **shape**: {', '.join(SHAPES)}",
        f"- in one **colour**: {', '.join(COLOURS)}",
        "- on a plain **background** of another of those colours",
        f"- **size** {' or '.join(SIZES)}; **position** {', '.join(POSITIONS)}",
        "",
        "Prompts in the captions' plain English work best: `a small red circle on a blue background, top left`,",
        "`a yellow triangle on a black background`, `a large green square on a white background, center`. Size and",
        "position may be left out. Native size is "
        f"{cfg['image_size']}×{cfg['image_size']}; Atelier upscales it for display. Good settings: 20 steps, Euler a,",
        "CFG 5.",
        "",
        "## What it cannot draw",
        "",
        "Anything else: no objects, people, photographs, text, textures, gradients, several shapes, outlines or other",
        "colours. Prompts outside the vocabulary give one of the known scenes. Sizes other than the native one are",
        "possible but untrained.",
        f"The pairs {held} were never shown in training; the held-out score says how well it composes them.",
        "",
        "## Measured prompt adherence",
        "",
        "From generated pixels with `engine.demo.score.evaluate` (fixed prompts × seeds 0 and 1, 20 steps, Euler a,",
        "CFG 5): the fraction of images showing each asked-for attribute, read by plain image statistics.",
        "",
    ]
    if scores:
        main = scores.get("in_distribution", {})
        good = [a for a in ATTRIBUTES if main.get(a, 0) >= 0.85]
        weak = [a for a in ATTRIBUTES if a not in good]
        if weak:
            lines += [f"It follows the prompt's {', '.join(good)} words reliably; its {', '.join(weak)} words only",
                      "weakly (often drawn at random), as the table shows.", ""]
        lines += ["| set | images | " + " | ".join(ATTRIBUTES) + " | all at once |",
                  "|---|---|" + "---|" * (len(ATTRIBUTES) + 1)]
        for name, label in (("in_distribution", "training pairs"), ("held_out", "held-out pairs")):
            if name in scores:
                r = scores[name]
                lines.append(f"| {label} | {r['n']} | " + " | ".join(_pct(r[a]) for a in ATTRIBUTES)
                             + f" | {_pct(r['all_correct'])} |")
        lines += _seed_run_lines(out_dir, stats, scores)
    else:
        lines.append("Not scored yet (`--no-score`).")
    unet, vae = stats["unet"], stats["vae"]
    any_colour = cfg.get("vae_any_colour_rate", 0.0)
    vae_colours = (f" {_pct(any_colour)} of its training images are repainted in random RGB colours, so it decodes "
                   "any colour, not just the palette (the UNet trains on the palette images only)." if any_colour
                   else "")
    lines += [
        "",
        "## How it was trained",
        "",
        f"- Data: {cfg['n_images']} synthetic {cfg['image_size']}×{cfg['image_size']} images "
        f"(`engine/demo/dataset.py`, seed {cfg['seed']}), captions shortened at random, "
        f"{_pct(cfg['empty_caption_rate'])} empty for classifier-free guidance.",
        f"- VAE (AutoencoderKL, widths {tuple(cfg['vae_channels'])}, ×4 downsampling): {vae['steps']} steps at batch "
        f"{cfg['vae_batch']}, final reconstruction MSE {vae['mse']:.4f}; latent scaling factor "
        f"{stats['scaling_factor']:.4f}.{vae_colours}",
        f"- UNet (widths {tuple(cfg['unet_channels'])}, cross-attention at every level) and CLIP text encoder "
        f"(hidden {cfg['text_hidden']}, {cfg['text_layers']} layers, the real 49408-token tokenizer), trained "
        f"jointly from scratch: {unet['steps']} steps at batch {cfg['unet_batch']}, "
        f"{cfg.get('prediction_type', 'epsilon')} loss {unet['first_loss']:.3f} → {unet['loss']:.4f}, Min-SNR-γ "
        f"{cfg['min_snr_gamma']}, offset noise {cfg['offset_noise']}, AdamW {cfg['unet_lr']} with warmup and "
        "cosine decay.",
        _schedule_line(cfg) + f" Weights stored as float16 safetensors ({size_mb:.1f} MB).",
        f"- Whole run: {stats['total_s'] / 60:.1f} min wall time on a 2-core CPU (shared with other work).",
        "",
        "Reproduce (same machine kind, same weights):",
        "",
        "```sh",
        f".venv/bin/python scripts/train_demo_model.py --out data/models/demo --seed {cfg['seed']} "
        f"--vae-steps {cfg['vae_steps']} --unet-steps {cfg['unet_steps']}",
        "```",
        "",
        "`--minutes N` instead calibrates the step counts to a time budget on the machine at hand.",
        "",
    ]
    lines += _adapter_lines(out_dir)
    card = out_dir / "README.md"
    card.write_text("\n".join(lines), encoding="utf-8")
    return card


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "models" / "demo")
    parser.add_argument("--smoke", action="store_true", help="a few steps of each phase on a tiny dataset")
    parser.add_argument("--minutes", type=float, default=0.0, help="calibrate step counts to this total budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-steps", type=int)
    parser.add_argument("--unet-steps", type=int)
    parser.add_argument("--n-images", type=int)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a DemoTrainConfig field for experiments (e.g. --set timestep_bias=1)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the machine may be shared)")
    parser.add_argument("--no-score", action="store_true", help="skip the adherence evaluation")
    parser.add_argument("--card-only", action="store_true",
                        help="only (re)write the model card of an existing --out folder from its json files")
    parser.add_argument("--seed-runs", type=Path, nargs="+", default=[], metavar="DIR",
                        help="with --card-only: other runs of the recipe (model folders) whose scores the card "
                             "lists beside this one's, so readers see the run-to-run spread")
    args = parser.parse_args(argv)
    if args.card_only:
        if args.seed_runs:
            record_seed_runs(args.out, args.seed_runs)
        write_model_card(args.out)
        return 0

    import torch

    from engine.demo.train import DemoTrainConfig, train_demo_model

    torch.set_num_threads(args.threads)
    cfg = DemoTrainConfig(seed=args.seed, smoke=args.smoke)
    changes: dict[str, Any] = {}
    for item in args.set:  # before calibrating: the model's shape decides the steps per second
        key, _, value = item.partition("=")
        current = getattr(cfg, key)  # AttributeError names an unknown field
        changes[key] = type(current)(json.loads(value)) if not isinstance(current, str) else value
    cfg = dataclasses.replace(cfg, **changes)
    if args.minutes > 0 and not args.smoke:
        cfg = calibrate(cfg, args.minutes)
    overrides = {k: v for k, v in (("vae_steps", args.vae_steps), ("unet_steps", args.unet_steps),
                                   ("n_images", args.n_images)) if v is not None}
    cfg = dataclasses.replace(cfg, **overrides)
    log(f"config: {dataclasses.asdict(cfg.resolved())}")
    out_dir = train_demo_model(cfg, args.out, log=log)
    if not args.no_score:
        scores = score(out_dir, args.smoke)
        (out_dir / "scores.json").write_text(json.dumps(scores, indent=2) + "\n", encoding="utf-8")
    write_model_card(out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
