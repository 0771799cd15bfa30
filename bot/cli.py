"""The ``atelier`` command: ``generate`` renders images offline, ``run`` starts the Discord bot, ``adapters``
manages embeddings and hypernetworks (:mod:`bot.cli_adapters`).

Every user mistake (bad argument, bad config, missing model) ends in one line on stderr and a non-zero exit,
never a traceback: the message is the whole interface for someone at a terminal.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from bot.config import ConfigError, Settings, load_settings

EXIT_USAGE = 2
EXIT_FAILURE = 1
_SIZE = re.compile(r"^(\d+)\s*[xX×]\s*(\d+)$")


class CliError(Exception):
    """A user-facing failure: printed as one line, exit code attached."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors in one line (no usage dump) so the message is what the user sees."""

    def error(self, message: str) -> NoReturn:
        raise CliError(f"{message} (see: {self.prog} --help)", EXIT_USAGE)


def parse_size(text: str) -> tuple[int, int]:
    """``512x768`` → (512, 768); each side a positive multiple of 8."""
    match = _SIZE.match(text.strip())
    if not match:
        raise CliError(f"--size: expected WIDTHxHEIGHT such as 512x512, got {text!r}", EXIT_USAGE)
    width, height = int(match.group(1)), int(match.group(2))
    for side in (width, height):
        if side < 8 or side % 8:
            raise CliError(f"--size: both sides must be multiples of 8 (at least 8), got {text!r}", EXIT_USAGE)
    return width, height


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="atelier", description="Atelier: a shared Stable Diffusion studio for Discord.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    gen = sub.add_parser("generate", help="render images to PNG files (no Discord)")
    gen.add_argument("prompt")
    gen.add_argument("--negative", default=None, help="negative prompt")
    gen.add_argument("--steps", type=int, default=None)
    gen.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale")
    gen.add_argument("--seed", type=int, default=-1, help="-1 = random")
    gen.add_argument("--subseed", type=int, default=-1, help="variation seed (-1 = random)")
    gen.add_argument("--subseed-strength", type=float, default=0.0, help="variation strength 0..1")
    gen.add_argument("--size", default=None, help="WIDTHxHEIGHT (default: the model's native size)")
    gen.add_argument("--sampler", default=None, help='A1111 name, e.g. "Euler a", "DPM++ 2M Karras"')
    gen.add_argument("--count", type=int, default=1, help="images; seeds seed, seed+1, …")
    gen.add_argument("--model", default=None, help="diffusers folder, A1111 .safetensors/.ckpt, or hub id")
    gen.add_argument("--out", default=None, help="output folder (default: paths.outputs/txt2img/DATE)")
    gen.add_argument("--config", default=None, help="config file (default: $ATELIER_CONFIG or ./config.toml)")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")

    run = sub.add_parser("run", help="start the Discord bot")
    run.add_argument("--config", default=None, help="config file (default: $ATELIER_CONFIG or ./config.toml)")

    from bot.cli_adapters import add_parser as add_adapters_parser  # it imports this module: load it late

    add_adapters_parser(sub, _Parser)
    from bot.cli_train import add_parser as add_train_parser

    add_train_parser(sub, _Parser)
    return parser


def settings_from(path: str | None) -> Settings:
    try:
        return load_settings(path)
    except ConfigError as exc:
        raise CliError(f"config: {exc}", EXIT_USAGE) from None


def _request(args: argparse.Namespace, settings: Settings):
    from engine.requests import GenerationRequest, RequestError

    g = settings.generation
    width, height = parse_size(args.size) if args.size else (g.width, g.height)
    if width and height and width * height > g.max_pixels:
        raise CliError(f"--size: {width}x{height} exceeds generation.max_pixels ({g.max_pixels})", EXIT_USAGE)
    steps = g.steps if args.steps is None else args.steps
    if not 1 <= steps <= g.max_steps:
        raise CliError(f"--steps: must be between 1 and {g.max_steps}, got {steps}", EXIT_USAGE)
    if args.count < 1:
        raise CliError(f"--count: must be at least 1, got {args.count}", EXIT_USAGE)
    try:
        return GenerationRequest(
            prompt=args.prompt,
            negative_prompt=g.negative_prompt if args.negative is None else args.negative,
            width=width, height=height, steps=steps,
            cfg_scale=g.cfg_scale if args.cfg is None else args.cfg,
            sampler=args.sampler or g.sampler,
            seed=args.seed, subseed=args.subseed, subseed_strength=args.subseed_strength, count=args.count,
        )
    except RequestError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def load_configured_model(settings: Settings, override: str | None = None):
    """The configured model (or ``override``) loaded as the bot would; returns (model, engine options)."""
    from bot.wiring import NoModelConfigured, engine_options
    from engine.devices import DeviceError, set_threads
    from engine.loading import ModelLoadError, load_model

    try:
        options = engine_options(settings, override)
        set_threads(options.threads)
        model = load_model(options.model, config_dir=options.config_dir or None, device=options.device,
                           dtype=options.dtype, allow_download=options.allow_download,
                           cache_dir=options.cache_dir, search_dirs=options.search_dirs)
    except (NoModelConfigured, ModelLoadError, DeviceError) as exc:
        raise CliError(str(exc)) from None
    return model, options


def cmd_generate(args: argparse.Namespace) -> int:
    settings = settings_from(args.config)
    request = _request(args, settings)  # validate before the slow imports and the model load
    from engine.images import next_output_path, save_png, upscale_for_display
    from engine.pipeline import Pipeline

    model, options = load_configured_model(settings, args.model)
    from engine.adapters.library import AdapterLibrary
    from engine.requests import RequestError

    library = AdapterLibrary(options.embedding_dirs, options.hypernetwork_dirs)
    pipeline = Pipeline(model, max_batch=options.max_batch, pixel_budget=options.pixel_budget, library=library)
    out_dir = Path(args.out) if args.out else (
        settings.path(settings.paths.outputs) / "txt2img" / dt.date.today().isoformat())
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=None, unit="step", file=sys.stderr, leave=False, desc="generating")

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.n = done
            bar.refresh()

    try:
        images = pipeline.generate([request], progress=progress)[0]
    except RequestError as exc:  # unknown adapter names, embeddings of the wrong width, too-long prompts
        raise CliError(str(exc)) from None
    finally:
        if bar is not None:
            bar.close()
    for image in images:
        shown = upscale_for_display(image.image, settings.display.scale)
        path = save_png(shown, next_output_path(out_dir, image.seed), image.infotext)
        print(path)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    settings = settings_from(args.config)
    from bot.app import main_run

    return main_run(settings)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        from bot.cli_adapters import cmd_adapters
        from bot.cli_train import cmd_train

        handler = {"generate": cmd_generate, "run": cmd_run, "adapters": cmd_adapters,
                   "train": cmd_train}[args.command]
        return handler(args)
    except CliError as exc:
        print(f"atelier: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("atelier: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
