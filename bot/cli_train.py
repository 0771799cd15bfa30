"""``atelier train embedding|hypernetwork NAME IMAGE…``: train an adapter from a terminal, no Discord.

The same trainer and job the bot runs, on the configured model. Images are checked by content like uploads in
chat; a caption in a ``.txt`` beside an image (A1111's convention) feeds ``[filewords]``. Checkpoints go to
``<data>/training/<kind>/<name>/``, so an interrupted run (Ctrl-C, a crash) continues from its last checkpoint
when the same command is run again. The result lands in the library folder, usable at once by name.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bot.cli import EXIT_USAGE, CliError, load_configured_model, settings_from

if TYPE_CHECKING:
    from collections.abc import Callable

    from engine.training.core import DiffusionTrainer
    from engine.training.images import TrainingSet
    from engine.training.request import TrainingRequest


def add_parser(sub: argparse._SubParsersAction, parser_class: type[argparse.ArgumentParser]) -> None:
    train = sub.add_parser("train", help="train an embedding or a hypernetwork from images")
    tsub = train.add_subparsers(dest="train_kind", required=True, parser_class=parser_class)
    for kind, help_text in (("embedding", "textual inversion: new token vectors for a concept"),
                            ("hypernetwork", "a hypernetwork: a look applied in every attention layer")):
        p = tsub.add_parser(kind, help=help_text)
        p.add_argument("name", help="the name used in prompts")
        p.add_argument("images", nargs="+", help="3-50 images (PNG, JPEG, WEBP, GIF); a .txt beside one is its "
                                                  "caption")
        p.add_argument("--steps", type=int, default=None)
        p.add_argument("--lr", default=None, help='rate or A1111 schedule, e.g. "5e-3:200, 1e-3"')
        p.add_argument("--batch-size", type=int, default=1)
        p.add_argument("--grad-accumulation", type=int, default=1)
        p.add_argument("--template", choices=("object", "style", "plain", "caption"), default=None,
                       help="caption templates (default: object for embeddings, style for hypernetworks)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--checkpoint-every", type=int, default=100)
        p.add_argument("--model", default=None, help="train on this model instead of the configured one")
        p.add_argument("--out", default=None, help="file to write (default: the library folder)")
        p.add_argument("--force", action="store_true", help="replace an existing file of that name")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.add_argument("--config", default=None, help="config file (default: $ATELIER_CONFIG or ./config.toml)")
        if kind == "hypernetwork":
            p.add_argument("--modules", default="", help="attention widths to train modules for, e.g. 768,320 "
                                                         "(default: every width the model's attention sees)")
        if kind == "embedding":
            p.add_argument("--vectors", type=int, default=1, help="vectors per token (1-75)")
            p.add_argument("--init", default="*", help="text whose token embeddings start the vectors")


def _uploads(paths: list[str]) -> list[tuple[str, bytes, str]]:
    uploads = []
    for text in paths:
        path = Path(text)
        if not path.is_file():
            raise CliError(f"{text}: no such file", EXIT_USAGE)
        caption_file = path.with_suffix(".txt")
        caption = caption_file.read_text(encoding="utf-8").strip() if caption_file.is_file() else ""
        uploads.append((path.name, path.read_bytes(), caption))
    return uploads


def cmd_train(args: argparse.Namespace) -> int:
    from engine.prompts.parser import is_valid_name
    from engine.requests import RequestError
    from engine.training.images import TrainingInputError, prepare_training_set

    settings = settings_from(args.config)
    if not is_valid_name(args.name):
        raise CliError(f"name {args.name!r}: letters, digits, _ and - only", EXIT_USAGE)
    kind = args.train_kind
    folder = settings.path(settings.paths.embeddings if kind == "embedding" else settings.paths.hypernetworks)
    out = Path(args.out) if args.out else folder / f"{args.name}.safetensors"
    if out.exists() and not args.force:
        raise CliError(f"{out} exists; choose another name or pass --force", EXIT_USAGE)
    uploads = _uploads(args.images)
    model, _options = load_configured_model(settings, args.model)
    try:
        request = training_request(args)
        request.check()
        images: TrainingSet = prepare_training_set(uploads, model.native_size)
        make = request.trainer_factory(model, images.images)
    except (TrainingInputError, RequestError) as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    for name, reason in images.refused:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    checkpoints = settings.path(settings.paths.data) / "training" / kind / args.name
    if args.force and out.exists():
        shutil.rmtree(checkpoints, ignore_errors=True)
    return _run(make, checkpoints, out, args)


def training_request(args: argparse.Namespace) -> TrainingRequest:
    """The CLI's options as the request the bot would build from ``/train``."""
    from engine.training.request import TrainingRequest, parse_modules

    embedding = args.train_kind == "embedding"
    return TrainingRequest(kind=args.train_kind, name=args.name, what=args.template, steps=args.steps, lr=args.lr,
                           vectors=args.vectors if embedding else 1, init_text=args.init if embedding else "*",
                           batch_size=args.batch_size, grad_accumulation=args.grad_accumulation, seed=args.seed,
                           modules=parse_modules(getattr(args, "modules", "") or ""))


def _run(make: Callable[[], DiffusionTrainer], checkpoints: Path, out: Path, args: argparse.Namespace) -> int:
    from engine.training.job import TrainingJob

    job = TrainingJob(make, checkpoint_dir=checkpoints, result_path=out, checkpoint_every=args.checkpoint_every,
                      slice_seconds=0.5)
    bar = None
    try:
        done = job.run_slice()  # set-up: encode the images, resume from a checkpoint (or just write the result)
        trainer: DiffusionTrainer = job.trainer  # type: ignore[assignment]
        if job.resumed_from:
            print(f"resuming from step {job.resumed_from} ({checkpoints})", file=sys.stderr)
        if not args.quiet:
            from tqdm import tqdm

            bar = tqdm(total=trainer.total_steps, initial=trainer.steps_done, unit="step", file=sys.stderr,
                       desc=f"training {args.name}")
        while not done:
            done = job.run_slice()
            if bar is not None:
                bar.n = trainer.steps_done
                bar.set_postfix(loss=f"{trainer.last_loss:.4f}")
                bar.refresh()
    except KeyboardInterrupt:
        print(f"\nstopped; run the same command again to continue from the last checkpoint ({checkpoints})",
              file=sys.stderr)
        return 130
    finally:
        if bar is not None:
            bar.close()
    print(out)
    return 0
