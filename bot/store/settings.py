"""Per-guild settings (overrides over ``[guild]`` in config.toml) and per-user style defaults."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
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

    def renamed(self, kind: str, old: str, new: str | None) -> StyleDefaults:
        """These defaults with the ``kind`` style ``old`` (any case) renamed to ``new`` (dropped when it is None).

        ``kind`` is "hypernetwork" or "embedding"; an embedding's name is followed in both the positive and the
        negative list, and a hypernetwork of the same name is left alone (and vice versa).
        """
        key = old.lower()

        def names(items: tuple[str, ...]) -> tuple[str, ...]:
            if kind != "embedding":
                return items
            return tuple(dict.fromkeys(new if n.lower() == key else n for n in items
                                       if n.lower() != key or new is not None))

        hypernets = self.hypernetworks
        if kind == "hypernetwork":
            hypernets = tuple(HypernetChoice(new, h.strength) if h.name.lower() == key else h
                              for h in self.hypernetworks if h.name.lower() != key or new is not None)
        return StyleDefaults(hypernets, names(self.embeddings), names(self.negative_embeddings))

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

    async def rename_style(self, guild_id: int | None, kind: str, old: str, new: str | None, *,
                           still_known: Callable[[int], bool] = lambda guild: False) -> int:
        """Follow a renamed (``new``) or deleted (``None``) style in members' defaults; returns how many changed.

        ``guild_id`` None means a global style: defaults in every guild follow it. Guilds where ``still_known``
        says the old name still means something (their own style shadowing a global one, or a global one behind a
        deleted guild style) keep it. Without this, a member whose default was renamed or deleted would get
        "unknown style" on every ``/imagine`` until they cleared it by hand.
        """
        changed = 0
        async with self.db.transaction() as conn:
            sql = "SELECT user_id, guild_id, settings FROM user_settings"
            params: tuple[Any, ...] = ()
            if guild_id is not None:
                sql, params = sql + " WHERE guild_id = ?", (guild_id,)
            async with conn.execute(sql, params) as cur:
                rows = await cur.fetchall()
            for row in rows:
                if still_known(row["guild_id"]):
                    continue
                current = json.loads(row["settings"])
                styles = StyleDefaults.from_json(json.dumps(current.get("styles", {})))
                updated = styles.renamed(kind, old, new)
                if updated == styles:
                    continue
                current["styles"] = json.loads(updated.to_json())
                await run(conn, "UPDATE user_settings SET settings = ? WHERE user_id = ? AND guild_id = ?",
                          (json.dumps(current), row["user_id"], row["guild_id"]))
                changed += 1
        return changed
