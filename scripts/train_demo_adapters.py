"""Train the demo embedding and hypernetwork that ship with the demo model, and score them.

    .venv/bin/python scripts/train_demo_adapters.py            # both, into data/models/demo/
    .venv/bin/python scripts/train_demo_adapters.py --only pink

The recipes and scores are :mod:`engine.demo.concepts`'s; training goes through the same
:class:`~engine.training.job.TrainingJob` that ``/train`` runs (slices, checkpoints, the preview grid drawn
through the real generation path). Outputs, all under the model folder (an adapter serves only the model family
it was trained on, so it travels with the model and is seen only while that model is loaded):

* ``embeddings/pink.safetensors`` and ``hypernetworks/rgb-swap.safetensors``;
* ``previews/<name>.png``: the final preview grid (four seeds), the before/after sheet beside it;
* ``adapters.json``: the recipes, the measured scores and the baselines, which the model card quotes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _run_job(model, request, images, out: Path, preview_prompt: str) -> tuple[Path, bytes | None, float]:
    from engine.training.job import TrainingJob
    from engine.training.preview import PreviewRenderer

    renderer = PreviewRenderer(model, request.kind, request.name, preview_prompt, steps=20)
    with tempfile.TemporaryDirectory() as folder:
        job = TrainingJob(request.trainer_factory(model, images), checkpoint_dir=Path(folder),
                          result_path=out, checkpoint_every=10**9, slice_seconds=5.0, preview=renderer)
        start = time.perf_counter()
        while not job.run_slice():
            pass
        seconds = time.perf_counter() - start
        preview = job.render_preview()
    return out, preview, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="data/models/demo")
    parser.add_argument("--only", choices=("pink", "rgb-swap"), default=None)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--previews-only", action="store_true", help="redraw the preview grids of the shipped files")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from engine.adapters.library import AdapterLibrary
    from engine.demo import concepts
    from engine.loading import load_model
    from engine.pipeline import Pipeline

    folder = Path(args.model)
    model = load_model(str(folder), device="cpu", dtype="float32")
    record_path = folder / "adapters.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    (folder / "previews").mkdir(exist_ok=True)
    plain = Pipeline(model, max_batch=24, library=AdapterLibrary())
    if args.previews_only:
        from engine.training.preview import PreviewRenderer

        for recipe, sub in ((concepts.PINK_RECIPE, "embeddings"), (concepts.SWAP_RECIPE, "hypernetworks")):
            if args.only in (None, recipe.name):
                grid = PreviewRenderer(model, recipe.kind, recipe.name, recipe.preview(), steps=20)(
                    folder / sub / f"{recipe.name}.safetensors")
                grid.save(folder / "previews" / f"{recipe.name}.png")
        return

    if args.only in (None, "pink"):
        recipe, images = concepts.PINK_RECIPE, concepts.pink_images()
        target = concepts.reachable_colour(model, images)
        prompts = concepts.plain_prompts(target)
        word, best = concepts.best_plain_colour(plain, target, prompts)
        out, preview, seconds = _run_job(model, recipe, images, folder / "embeddings" / f"{recipe.name}.safetensors",
                                         recipe.preview())
        library = AdapterLibrary()
        library.register("embedding", recipe.name, out)
        learned = concepts.colour_score(Pipeline(model, max_batch=24, library=library), recipe.name, target)
        if preview is not None:
            (folder / "previews" / f"{recipe.name}.png").write_bytes(preview)
        record[recipe.name] = {
            "kind": "embedding", "recipe": dataclasses.asdict(recipe),
            "images": len(images),
            "train_seconds": round(seconds, 1), "target_rgb": [round(float(v) * 255) for v in target],
            "score": dataclasses.asdict(learned), "best_plain_word": word, "best_plain": dataclasses.asdict(best),
            "plain_prompts": prompts,
        }
        print(f"pink: {learned} vs best plain {word!r} {best} ({seconds:.0f} s)")

    if args.only in (None, "rgb-swap"):
        recipe, images = concepts.SWAP_RECIPE, concepts.swap_images()
        before = concepts.shift_score(plain)
        out, preview, seconds = _run_job(model, recipe, images,
                                         folder / "hypernetworks" / f"{recipe.name}.safetensors", recipe.preview())
        library = AdapterLibrary()
        library.register("hypernetwork", recipe.name, out)
        after = concepts.shift_score(Pipeline(model, max_batch=24, library=library), f" <hypernet:{recipe.name}:1>")
        if preview is not None:
            (folder / "previews" / f"{recipe.name}.png").write_bytes(preview)
        record[recipe.name] = {
            "kind": "hypernetwork", "recipe": dataclasses.asdict(recipe), "images": len(images),
            "train_seconds": round(seconds, 1), "with": dataclasses.asdict(after),
            "without": dataclasses.asdict(before),
        }
        print(f"rgb-swap: with {after} / without {before} ({seconds:.0f} s)")

    record_path.write_text(json.dumps(record, indent=2) + "\n")
    # Training sheets: the pictures each adapter learned from, for the model card.
    sheets = {"pink": concepts.pink_images, "rgb-swap": concepts.swap_images}
    for name, make in sheets.items():
        if args.only in (None, name):
            tiles = [np.asarray(i.image) for i in make()[:8]]
            Image.fromarray(np.concatenate(tiles, axis=1)).resize((64 * 4 * len(tiles), 64 * 4),
                                                                   Image.Resampling.NEAREST).save(
                folder / "previews" / f"{name}-training.png")


if __name__ == "__main__":
    main()
