"""Settings: typed dataclasses loaded from TOML, validated, with secrets from the environment.

Every setting lives in one dataclass field with its default, its type and its limits, so the TOML file,
the validation and the code that reads settings cannot drift apart. Errors name the dotted key
(``queue.max_batch_size``) and say what is wrong, because an operator editing ``config.toml`` needs nothing
else to fix it.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_ENV = "ATELIER_CONFIG"
TOKEN_ENV = "DISCORD_TOKEN"
DEFAULT_CONFIG = Path("config.toml")


class ConfigError(ValueError):
    """A setting is missing, unknown, of the wrong type, or impossible. The message names the key."""


def _setting(default: Any, *, min: float | None = None, max: float | None = None,
             choices: tuple[str, ...] | None = None, help: str = "") -> Any:
    """A dataclass field carrying its validation limits in metadata."""
    meta = {"min": min, "max": max, "choices": choices, "help": help}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ModelSettings:
    source: str = _setting("", help="diffusers dir, A1111 .safetensors/.ckpt, or hub id; '' = demo model")
    config_dir: str = _setting("", help="weight-less skeleton for single files; '' = detect SD1.x/SD2.x")
    device: str = _setting("auto")
    dtype: str = _setting("auto", choices=("auto", "float32", "float16", "bfloat16"))
    threads: int = _setting(0, min=0, max=1024)
    allow_download: bool = _setting(True)


@dataclass(frozen=True)
class PathSettings:
    data: str = _setting("data")
    database: str = _setting("data/atelier.db")
    models: str = _setting("data/models")
    embeddings: str = _setting("data/embeddings")
    hypernetworks: str = _setting("data/hypernetworks")
    outputs: str = _setting("data/outputs")
    cache: str = _setting("data/cache")


@dataclass(frozen=True)
class GenerationSettings:
    sampler: str = _setting("Euler a")
    steps: int = _setting(20, min=1, max=150)
    max_steps: int = _setting(150, min=1, max=1000)
    cfg_scale: float = _setting(7.0, min=0.0, max=30.0)
    width: int = _setting(0, min=0, max=8192)
    height: int = _setting(0, min=0, max=8192)
    max_pixels: int = _setting(1024 * 1024, min=64, max=64 * 1024 * 1024)
    max_count: int = _setting(4, min=1, max=16)
    negative_prompt: str = _setting("")
    variation_strength: float = _setting(0.3, min=0.0, max=1.0, help="🎲 variations: how far from the original")
    style_preview_prompt: str = _setting("a red circle on a blue background",
                                         help="imported styles' previews: this prompt without and with the style")


@dataclass(frozen=True)
class DisplaySettings:
    scale: int = _setting(0, min=0, max=16, help="nearest-neighbour upscale of results; 0 = auto")


@dataclass(frozen=True)
class QueueSettings:
    max_batch_size: int = _setting(8, min=1, max=256)
    pixel_budget: int = _setting(8 * 512 * 512, min=64, max=1 << 34)
    collect_window_ms: int = _setting(50, min=0, max=10_000)
    max_jobs_per_user: int = _setting(3, min=1, max=1000)
    max_queued: int = _setting(100, min=1, max=100_000)
    preview_every: int = _setting(5, min=0, max=1000)
    shutdown_timeout_s: float = _setting(30.0, min=0.0, max=3600.0)
    background_share: float = _setting(0.25, min=0.0, max=0.95)


@dataclass(frozen=True)
class DiscordSettings:
    guild_ids: list[int] = _setting([])
    owner_ids: list[int] = _setting([])
    sync_commands: bool = _setting(True)
    progress_interval_s: float = _setting(2.0, min=0.5, max=60.0)
    # An interaction token lives 15 minutes; past this age results go to the channel with a mention instead.
    interaction_window_s: float = _setting(870.0, min=1.0, max=900.0)
    reactions_per_minute: int = _setting(10, min=1, max=600)
    api_base: str = _setting("", help="test-only: REST base URL of a Discord emulator")
    gateway_url: str = _setting("", help="test-only: gateway URL of a Discord emulator")


@dataclass(frozen=True)
class GuildSettings:
    """Defaults of the per-guild settings; admins override them per guild (stored in the database)."""

    channels: list[int] = _setting([], help="channel ids the bot answers in; empty = every channel")
    banned_words: list[str] = _setting([], help="prompts containing any of these words are refused")
    train_roles: list[int] = _setting([], help="roles that may train; empty = members with Manage Server")
    import_roles: list[int] = _setting([], help="roles that may import styles; empty = Manage Server")
    delete_roles: list[int] = _setting([], help="roles that may delete styles; empty = Manage Server")
    max_count: int = _setting(0, min=0, max=16, help="images per request in this guild; 0 = generation.max_count")
    max_steps: int = _setting(0, min=0, max=1000, help="steps per image in this guild; 0 = generation.max_steps")
    storage_mb: int = _setting(500, min=0, max=1_000_000,
                               help="space this guild's imported and trained styles may take; 0 = no limit")


@dataclass(frozen=True)
class TrainingSettings:
    """Community training (``/train``): limits and how often it reports."""

    max_steps: int = _setting(3000, min=1, max=20_000, help="most steps a member may ask for")
    max_running: int = _setting(2, min=1, max=64, help="trainings at once (this GPU or the Ray cluster); more wait")
    checkpoint_every: int = _setting(100, min=1, max=100_000, help="steps between checkpoints (resume points)")
    preview_every: int = _setting(200, min=0, max=100_000, help="steps between preview grids; 0 = only at the end")
    progress_interval_s: float = _setting(10.0, min=1.0, max=600.0, help="seconds between progress edits")
    preview_steps: int = _setting(20, min=1, max=150, help="sampling steps of each preview image")
    slice_s: float = _setting(0.1, min=0.01, max=5.0, help="longest a training holds the GPU between generation "
                              "steps; a generation arriving meanwhile waits at most this long")


@dataclass(frozen=True)
class BackendSettings:
    """Where generation runs: this process (``local``) or a Ray Serve cluster (``ray``, issue 8)."""

    kind: str = _setting("local", choices=("local", "ray"), help="local: the in-process queue; ray: Ray Serve")
    ray_address: str = _setting("", help="ray: empty starts a local cluster here; 'auto' or 'host:port' joins one")
    replicas: int = _setting(1, min=1, max=1024, help="ray: model replicas (the minimum when autoscaling)")
    max_replicas: int = _setting(0, min=0, max=1024, help="ray: autoscale up to this many; 0 = fixed count")
    target_ongoing_requests: float = _setting(2.0, min=0.1, max=1000.0,
                                              help="ray: requests per replica before autoscaling adds one")
    upscale_delay_s: float = _setting(30.0, min=0.0, max=3600.0,
                                      help="ray: how long demand must stay high before a replica is added")
    downscale_delay_s: float = _setting(600.0, min=0.0, max=86400.0,
                                        help="ray: how long demand must stay low before a replica is removed")
    gpus_per_replica: float = _setting(1.0, min=0.0, max=64.0, help="ray: GPUs per replica; 0 on CPU-only nodes")
    cpus_per_replica: float = _setting(1.0, min=0.0, max=1024.0, help="ray: CPUs reserved per replica")
    retries: int = _setting(1, min=0, max=5, help="ray: tries on another replica when one dies mid-job")


@dataclass(frozen=True)
class LoggingSettings:
    level: str = _setting("INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))


@dataclass(frozen=True)
class Settings:
    model: ModelSettings = field(default_factory=ModelSettings)
    paths: PathSettings = field(default_factory=PathSettings)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    display: DisplaySettings = field(default_factory=DisplaySettings)
    queue: QueueSettings = field(default_factory=QueueSettings)
    discord: DiscordSettings = field(default_factory=DiscordSettings)
    guild: GuildSettings = field(default_factory=GuildSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    backend: BackendSettings = field(default_factory=BackendSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    # Not from the TOML file: filled from the environment, never written anywhere.
    discord_token: str = field(default="", repr=False, compare=False)
    # Directory relative paths in the file are resolved against (the config file's folder).
    base_dir: Path = field(default=Path("."), compare=False)

    def path(self, value: str) -> Path:
        """Resolve a configured path against the config file's directory."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)


_SECTIONS: dict[str, type] = {
    name: tp for name, tp in typing.get_type_hints(Settings).items() if name not in ("discord_token", "base_dir")
}


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is list:
        return f"a list of {typing.get_args(tp)[0].__name__}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[tp]


def _check_value(key: str, tp: Any, value: Any, meta: dict[str, Any]) -> Any:
    """Return ``value`` converted to ``tp`` or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list) or not all(
            isinstance(v, item) and not isinstance(v, bool) for v in value
        ):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        return list(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if (tp is not bool and isinstance(value, bool)) or not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if meta.get("min") is not None and value < meta["min"]:
        raise ConfigError(f"{key}: must be at least {meta['min']}, got {value!r}")
    if meta.get("max") is not None and value > meta["max"]:
        raise ConfigError(f"{key}: must be at most {meta['max']}, got {value!r}")
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"{key}: must be one of {', '.join(meta['choices'])}; got {value!r}")
    return value


def _build_section(cls: type, section: str, raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{section}: expected a table ([{section}]), got {raw!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            raise ConfigError(f"{section}.{key}: unknown setting (known: {', '.join(known)})")
    hints = typing.get_type_hints(cls)
    values = {
        name: _check_value(f"{section}.{name}", hints[name], raw[name], dict(f.metadata))
        for name, f in known.items() if name in raw
    }
    return cls(**values)


def _cross_checks(s: Settings) -> None:
    """Constraints between settings, each reported under the key to change."""
    g = s.generation
    if g.steps > g.max_steps:
        raise ConfigError(f"generation.steps: {g.steps} is above generation.max_steps ({g.max_steps})")
    for key in ("width", "height"):
        v = getattr(g, key)
        if v % 8:
            raise ConfigError(f"generation.{key}: must be a multiple of 8 (0 = the model's native size), got {v}")
    if g.width and g.height and g.width * g.height > g.max_pixels:
        raise ConfigError(f"generation.max_pixels: the default size {g.width}x{g.height} exceeds it")
    device = s.model.device
    if not (device in ("auto", "cpu", "cuda", "mps") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise ConfigError(f"model.device: must be auto, cpu, cuda, cuda:N or mps; got {device!r}")
    from engine.samplers import SAMPLERS  # local import: engine is heavy only when torch is touched

    if g.sampler not in SAMPLERS:
        raise ConfigError(f"generation.sampler: unknown sampler {g.sampler!r}; known: {', '.join(SAMPLERS)}")


def parse_settings(raw: dict[str, Any], *, base_dir: Path = Path("."),
                   environ: typing.Mapping[str, str] | None = None) -> Settings:
    """Validate a parsed TOML document into Settings (environment applied)."""
    env = os.environ if environ is None else environ
    for key in raw:
        if key not in _SECTIONS:
            raise ConfigError(f"{key}: unknown section (known: {', '.join(_SECTIONS)})")
    sections = {name: _build_section(cls, name, raw[name]) for name, cls in _SECTIONS.items() if name in raw}
    settings = Settings(**sections, discord_token=env.get(TOKEN_ENV, "").strip(), base_dir=base_dir)
    _cross_checks(settings)
    return settings


def config_path(explicit: str | os.PathLike[str] | None = None,
                environ: typing.Mapping[str, str] | None = None) -> Path | None:
    """The config file to read: --config, else $ATELIER_CONFIG, else ./config.toml if it exists."""
    env = os.environ if environ is None else environ
    if explicit:
        return Path(explicit)
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None


def load_settings(path: str | os.PathLike[str] | None = None,
                  environ: typing.Mapping[str, str] | None = None) -> Settings:
    """Load and validate settings; with no file at all, the embedded defaults apply."""
    chosen = config_path(path, environ)
    if chosen is None:
        return parse_settings({}, environ=environ)
    if not chosen.is_file():
        raise ConfigError(f"config file not found: {chosen}")
    try:
        raw = tomllib.loads(chosen.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{chosen}: not valid TOML: {exc}") from None
    return parse_settings(raw, base_dir=chosen.resolve().parent, environ=environ)
