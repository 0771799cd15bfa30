"""``atelier adapters …``: list, import, export and check embeddings and hypernetworks from a terminal.

Operators arrive with folders of A1111 files. These commands answer "what is this file, will our model use it"
before a user finds out in chat, and move files in and out of the library in the formats other tools read.
Every refusal (unsafe pickle, broken file, wrong width, taken name) is one line and a non-zero exit.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from bot.cli import EXIT_FAILURE, EXIT_USAGE, CliError, settings_from

if TYPE_CHECKING:
    from bot.config import Settings
    from engine.adapters.compat import ModelWidths
    from engine.adapters.embeddings import Embedding
    from engine.adapters.hypernetwork import Hypernetwork

_SUFFIX_BY_CONTENT = {"safetensors": ".safetensors", "torch": ".pt", "png": ".png", "webp": ".webp"}


def add_parser(sub: argparse._SubParsersAction, parser_class: type[argparse.ArgumentParser]) -> None:
    adapters = sub.add_parser("adapters", help="list, import, export and check embeddings and hypernetworks")
    asub = adapters.add_subparsers(dest="adapters_command", required=True, parser_class=parser_class)
    config_help = "config file (default: $ATELIER_CONFIG or ./config.toml)"

    ls = asub.add_parser("list", help="the global library: names, kinds and files")
    ls.add_argument("--details", action="store_true", help="open every file and show its width and contents")
    ls.add_argument("--config", default=None, help=config_help)

    imp = asub.add_parser("import", help="validate a file and copy it into the library")
    imp.add_argument("file")
    imp.add_argument("--name", default=None, help="the trigger / tag name (default: the file's base name)")
    imp.add_argument("--force", action="store_true", help="replace an adapter of the same name")
    imp.add_argument("--config", default=None, help=config_help)

    exp = asub.add_parser("export", help="write a library adapter as an A1111 .pt or a .safetensors file")
    exp.add_argument("name")
    exp.add_argument("--format", choices=("a1111", "safetensors"), required=True)
    exp.add_argument("--out", required=True, help="file to write")
    exp.add_argument("--kind", choices=("embedding", "hypernetwork"), default=None,
                     help="when an embedding and a hypernetwork share the name")
    exp.add_argument("--config", default=None, help=config_help)

    chk = asub.add_parser("check", help="what a file is and whether the configured model can use it")
    chk.add_argument("file")
    chk.add_argument("--model", default=None, help="check against this model instead of the configured one")
    chk.add_argument("--config", default=None, help=config_help)


def _library(settings: Settings):
    """The configured folders plus the configured model's own (when it is a local folder that has them)."""
    from bot.wiring import NoModelConfigured, adapter_dirs, model_source
    from engine.adapters.library import AdapterLibrary

    try:
        source: str | None = model_source(settings)
    except NoModelConfigured:
        source = None
    return AdapterLibrary(*adapter_dirs(settings, source))


def describe(kind: str, adapter: Embedding | Hypernetwork) -> str:
    """One line saying what an adapter holds."""
    if kind == "embedding":
        emb: Embedding = adapter  # type: ignore[assignment]
        halves = emb.widths()
        width = " + ".join(f"{k} {w}" if k else str(w) for k, w in halves.items())
        trained = f", {emb.step} steps" if emb.step else ""
        made = f" on {emb.sd_checkpoint_name}" if emb.sd_checkpoint_name else ""
        return (f"embedding {emb.name!r}: {emb.n_vectors} vector{'s' * (emb.n_vectors != 1)} of width {width} "
                f"({emb.layout} layout{trained}{made})")
    hn: Hypernetwork = adapter  # type: ignore[assignment]
    spec = hn.spec
    extras = [f"activation {spec.activation}", f"layer structure {', '.join(f'{x:g}' for x in spec.layer_structure)}"]
    if spec.layer_norm:
        extras.append("layer norm")
    if spec.dropout_structure and any(spec.dropout_structure):
        extras.append(f"dropout {', '.join(f'{x:g}' for x in spec.dropout_structure)}")
    if not spec.activate_output:
        extras.append("linear output")
    if spec.step:
        extras.append(f"{spec.step} steps")
    return f"hypernetwork {hn.name!r}: modules for widths {', '.join(map(str, sorted(hn.widths())))}; " + "; ".join(
        extras)


def _model_widths(settings: Settings, override: str | None) -> ModelWidths | None:
    """The configured model's widths from its configs; None for a hub id (it would need a download)."""
    from bot.wiring import NoModelConfigured, model_source
    from engine.adapters.compat import model_widths
    from engine.loading import ModelLoadError, resolve_source
    from engine.single_file import CheckpointError

    try:
        source = model_source(settings, override)
        resolved = resolve_source(source, (settings.path(settings.paths.models), settings.base_dir))
        if isinstance(resolved, str):
            return None
        config_dir = settings.path(settings.model.config_dir) if settings.model.config_dir else None
        return model_widths(resolved, config_dir)
    except (NoModelConfigured, ModelLoadError, CheckpointError, OSError, KeyError, ValueError) as exc:
        raise CliError(f"cannot read the model's configuration: {exc}") from None


def _read(path: Path, name: str | None = None):
    from engine.adapters.compat import read_adapter
    from engine.adapters.files import AdapterFileError

    if not path.is_file():
        raise CliError(f"{path}: no such file", EXIT_USAGE)
    try:
        return read_adapter(path, name=name)
    except AdapterFileError as exc:
        raise CliError(str(exc)) from None


def cmd_list(args: argparse.Namespace) -> int:
    settings = settings_from(args.config)
    library = _library(settings)
    from engine.adapters.files import AdapterFileError

    total = 0
    for kind in ("embedding", "hypernetwork"):
        for entry in library.entries(kind):
            total += 1
            line = f"{kind:<12} {entry.name:<32} {entry.path}"
            if args.details:
                try:
                    line += f"  — {describe(kind, entry.load())}"
                except AdapterFileError as exc:
                    line += f"  — unusable: {exc}"
            print(line)
    for kind, invalid in library.invalid.items():
        for path, why in invalid:
            print(f"{kind:<12} {'(skipped)':<32} {path}  — {why}")
    if not total:
        print(f"no adapters in {settings.path(settings.paths.embeddings)} or "
              f"{settings.path(settings.paths.hypernetworks)}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from engine.adapters.compat import fits
    from engine.adapters.files import read_bytes, sniff
    from engine.adapters.library import UnknownAdapterError, valid_name

    settings = settings_from(args.config)
    source = Path(args.file)
    name = args.name or source.stem
    if not valid_name(name):
        raise CliError(f"name {name!r}: use 1-64 letters, digits, _ or - (choose one with --name)", EXIT_USAGE)
    kind, adapter = _read(source, name)
    library = _library(settings)
    try:
        existing = library.find(kind, name)
    except UnknownAdapterError:
        existing = None
    if existing is not None and not args.force:
        raise CliError(f"a {kind} named {existing.name!r} already exists ({existing.path}); "
                       "use --name to pick another or --force to replace it")
    folder = settings.path(settings.paths.embeddings if kind == "embedding" else settings.paths.hypernetworks)
    folder.mkdir(parents=True, exist_ok=True)
    data, _label = read_bytes(source)
    target = folder / f"{name}{_SUFFIX_BY_CONTENT[sniff(data[:16])]}"
    if existing is not None and existing.path != target:
        existing.path.unlink(missing_ok=True)
    shutil.copyfile(source, target)
    print(f"imported {describe(kind, adapter)} → {target}")
    widths = _model_widths(settings, None)
    if widths is not None:
        ok, why = fits(kind, adapter, widths)
        if not ok:
            print(f"warning: {why}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from engine.adapters.compat import write_adapter
    from engine.adapters.files import AdapterFileError
    from engine.adapters.library import UnknownAdapterError

    settings = settings_from(args.config)
    library = _library(settings)
    found = {}
    errors = []
    for kind in ([args.kind] if args.kind else ["embedding", "hypernetwork"]):
        try:
            found[kind] = library.find(kind, args.name)
        except UnknownAdapterError as exc:
            errors.append(str(exc))
    if not found:
        raise CliError("; ".join(errors))
    if len(found) > 1:
        raise CliError(f"both an embedding and a hypernetwork are named {args.name!r}; say which with --kind",
                       EXIT_USAGE)
    [(kind, entry)] = found.items()
    try:
        adapter = entry.load()
    except AdapterFileError as exc:
        raise CliError(str(exc)) from None
    path = write_adapter(kind, adapter, args.format, Path(args.out))
    print(path)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from engine.adapters.compat import fits

    settings = settings_from(args.config)
    kind, adapter = _read(Path(args.file))
    print(describe(kind, adapter))
    widths = _model_widths(settings, args.model)
    if widths is None:
        print("model: a hub id; cannot tell without downloading it")
        return 0
    ok, why = fits(kind, adapter, widths)
    print(why)
    return 0 if ok else EXIT_FAILURE


HANDLERS = {"list": cmd_list, "import": cmd_import, "export": cmd_export, "check": cmd_check}


def cmd_adapters(args: argparse.Namespace) -> int:
    return HANDLERS[args.adapters_command](args)
