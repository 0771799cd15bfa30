"""Per-guild settings (overrides over ``[guild]`` in config.toml) and per-user style defaults."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from bot.config import GuildSettings
from bot.db import Database, run


def guild_settings_from(defaults: GuildSettings, overrides: dict[str, Any]) -> GuildSettings:
    """The defaults with a guild's stored overrides applied (unknown keys from older versions are ignored)."""
    known = {f.name for f in dataclasses.fields(GuildSettings)}
    return dataclasses.replace(defaults, **{k: v for k, v in overrides.items() if k in known})


@dataclass(frozen=True)
class HypernetChoice:
    name: str
    strength: float = 1.0


@dataclass(frozen=True)
class StyleDefaults:
    """A member's personal defaults in one guild: applied to every generation they start there."""

    hypernetworks: tuple[HypernetChoice, ...] = ()
    embeddings: tuple[str, ...] = ()
    negative_embeddings: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.hypernetworks or self.embeddings or self.negative_embeddings)

    def to_json(self) -> str:
        return json.dumps({"hypernetworks": [dataclasses.asdict(h) for h in self.hypernetworks],
                           "embeddings": list(self.embeddings),
                           "negative_embeddings": list(self.negative_embeddings)})

    @classmethod
    def from_json(cls, text: str) -> StyleDefaults:
        data = json.loads(text or "{}")
        return cls(tuple(HypernetChoice(h["name"], float(h.get("strength", 1.0)))
                         for h in data.get("hypernetworks", [])),
                   tuple(data.get("embeddings", [])), tuple(data.get("negative_embeddings", [])))


@dataclass
class SettingsStore:
    db: Database
    defaults: GuildSettings = field(default_factory=GuildSettings)

    async def guild(self, guild_id: int | None) -> GuildSettings:
        if guild_id is None:
            return self.defaults
        row = await self.db.fetchone("SELECT settings FROM guild_settings WHERE guild_id = ?", (guild_id,))
        return guild_settings_from(self.defaults, json.loads(row["settings"]) if row else {})

    async def update_guild(self, guild_id: int, **changes: Any) -> GuildSettings:
        """Store overrides for ``guild_id`` (merged with earlier ones) and return the resulting settings."""
        async with self.db.transaction() as conn:
            async with conn.execute("SELECT settings FROM guild_settings WHERE guild_id = ?", (guild_id,)) as cur:
                row = await cur.fetchone()
            current = json.loads(row["settings"]) if row else {}
            current.update(changes)
            await run(
                conn, "INSERT INTO guild_settings (guild_id, settings) VALUES (?, ?) "
                "ON CONFLICT (guild_id) DO UPDATE SET settings = excluded.settings", (guild_id, json.dumps(current)))
        return guild_settings_from(self.defaults, current)

    async def styles(self, user_id: int, guild_id: int | None) -> StyleDefaults:
        row = await self.db.fetchone("SELECT settings FROM user_settings WHERE user_id = ? AND guild_id = ?",
                                     (user_id, guild_id or 0))
        if row is None:
            return StyleDefaults()
        return StyleDefaults.from_json(json.dumps(json.loads(row["settings"]).get("styles", {})))

    async def set_styles(self, user_id: int, guild_id: int | None, styles: StyleDefaults) -> None:
        async with self.db.transaction() as conn:
            async with conn.execute("SELECT settings FROM user_settings WHERE user_id = ? AND guild_id = ?",
                                    (user_id, guild_id or 0)) as cur:
                row = await cur.fetchone()
            current = json.loads(row["settings"]) if row else {}
            current["styles"] = json.loads(styles.to_json())
            await run(
                conn, "INSERT INTO user_settings (user_id, guild_id, settings) VALUES (?, ?, ?) "
                "ON CONFLICT (user_id, guild_id) DO UPDATE SET settings = excluded.settings",
                (user_id, guild_id or 0, json.dumps(current)))
