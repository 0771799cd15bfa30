"""Settings: the shipped config.toml, validation that names the key, environment overrides."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from bot.config import ConfigError, Settings, load_settings, parse_settings

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_config_lists_every_setting_with_its_default() -> None:
    raw = tomllib.loads((ROOT / "config.toml").read_text())
    defaults = Settings()
    for section in dataclasses.fields(Settings):
        if section.name in ("discord_token", "base_dir"):
            continue
        assert section.name in raw, f"[{section.name}] missing from config.toml"
        expected = dataclasses.asdict(getattr(defaults, section.name))
        assert raw[section.name] == expected, f"[{section.name}] in config.toml differs from the code defaults"


def test_shipped_config_comments_every_section() -> None:
    text = (ROOT / "config.toml").read_text()
    for block in text.split("\n[")[1:]:
        assert "\n#" in block, f"section [{block.split(']')[0]}] has no comment"


def test_shipped_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    settings = load_settings(ROOT / "config.toml")
    assert settings.base_dir == ROOT
    assert settings.path(settings.paths.database) == ROOT / "data" / "atelier.db"
    assert settings.discord_token == ""


@pytest.mark.parametrize(
    ("raw", "key", "words"),
    [
        ({"model": {"sorce": "x"}}, "model.sorce", "unknown setting"),
        ({"modle": {}}, "modle", "unknown section"),
        ({"queue": {"max_batch_size": "8"}}, "queue.max_batch_size", "expected an integer"),
        ({"queue": {"max_batch_size": True}}, "queue.max_batch_size", "expected an integer"),
        ({"queue": {"max_batch_size": 0}}, "queue.max_batch_size", "at least 1"),
        ({"generation": {"steps": 500}}, "generation.steps", "at most"),
        ({"generation": {"steps": 100, "max_steps": 50}}, "generation.steps", "max_steps"),
        ({"generation": {"width": 500}}, "generation.width", "multiple of 8"),
        ({"generation": {"sampler": "Eulr"}}, "generation.sampler", "unknown sampler"),
        ({"generation": {"width": 2048, "height": 2048}}, "generation.max_pixels", "exceeds"),
        ({"model": {"dtype": "float64"}}, "model.dtype", "one of"),
        ({"model": {"device": "tpu"}}, "model.device", "cuda:N"),
        ({"discord": {"guild_ids": ["123"]}}, "discord.guild_ids", "list of int"),
        ({"logging": "INFO"}, "logging", "table"),
    ],
)
def test_bad_settings_name_the_key(raw: dict, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings(raw, environ={})
    assert str(err.value).startswith(key + ":"), str(err.value)
    assert words in str(err.value)


def test_ints_are_accepted_where_numbers_are_expected() -> None:
    settings = parse_settings({"generation": {"cfg_scale": 5}}, environ={})
    assert settings.generation.cfg_scale == 5.0 and isinstance(settings.generation.cfg_scale, float)


def test_token_and_config_path_come_from_the_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "elsewhere.toml"
    cfg.write_text('[queue]\nmax_batch_size = 3\n[paths]\ndatabase = "db/x.db"\n')
    env = {"ATELIER_CONFIG": str(cfg), "DISCORD_TOKEN": " secret \n"}
    settings = load_settings(None, environ=env)
    assert settings.queue.max_batch_size == 3
    assert settings.discord_token == "secret"
    assert settings.path(settings.paths.database) == tmp_path / "db" / "x.db"
    assert "secret" not in repr(settings)


def test_explicit_path_wins_and_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[queue\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad, environ={})
