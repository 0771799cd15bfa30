"""The bot's data access: generations with their images, guild settings over config defaults, personal styles."""

from __future__ import annotations

from pathlib import Path

from bot.config import GuildSettings
from bot.db import open_database
from bot.store.generations import DONE, FAILED, QUEUED, GenerationStore, ImageRow
from bot.store.settings import HypernetChoice, SettingsStore, StyleDefaults
from engine.requests import GenerationRequest


async def test_generation_round_trip_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    request = GenerationRequest(prompt="a red circle", negative_prompt="blur", width=64, height=64, steps=7,
                                cfg_scale=4.5, sampler="DDIM", seed=100, subseed=5, subseed_strength=0.25, count=2,
                                guild_id=9, same_seed=True)
    db = await open_database(path)
    store = GenerationStore(db)
    gid = await store.create(request, user_id=1, guild_id=9, channel_id=3, origin="vary", parent_id=None)
    assert (await store.get(gid)).status == QUEUED
    assert [g.id for g in await store.unfinished()] == [gid]
    await store.set_message(gid, 555)
    await store.finish(gid, [ImageRow(0, 100, 5, "/x/0.png", "info 0"), ImageRow(1, 100, 6, "/x/1.png", "info 1")])
    await db.close()

    db = await open_database(path)  # what was committed is there after a restart
    store = GenerationStore(db)
    gen = await store.by_message(555)
    assert gen is not None and gen.id == gid and gen.status == DONE and gen.origin == "vary"
    assert gen.request == request
    assert [(i.index, i.seed, i.subseed, i.infotext) for i in gen.images] == [(0, 100, 5, "info 0"),
                                                                               (1, 100, 6, "info 1")]
    assert await store.unfinished() == []
    await store.set_status(gid, FAILED, "boom")
    assert (await store.get(gid)).error == "boom"
    assert await store.by_message(1) is None
    await db.close()


async def test_guild_settings_override_defaults_and_merge(tmp_path: Path) -> None:
    db = await open_database(tmp_path / "a.db")
    store = SettingsStore(db, GuildSettings(banned_words=["gore"], channels=[1]))
    assert (await store.guild(5)).banned_words == ["gore"]
    await store.update_guild(5, channels=[2, 3])
    updated = await store.update_guild(5, banned_words=[])
    assert updated.channels == [2, 3] and updated.banned_words == []
    assert (await store.guild(5)) == updated
    assert (await store.guild(6)).channels == [1]  # another guild keeps the defaults
    assert (await store.guild(None)).channels == [1]
    await db.close()


async def test_personal_styles_are_per_user_and_guild(tmp_path: Path) -> None:
    db = await open_database(tmp_path / "a.db")
    store = SettingsStore(db)
    styles = StyleDefaults(hypernetworks=(HypernetChoice("ink", 0.5),), embeddings=("cat",),
                           negative_embeddings=("bad",))
    await store.set_styles(1, 10, styles)
    assert await store.styles(1, 10) == styles
    assert (await store.styles(1, 11)).empty
    assert (await store.styles(2, 10)).empty
    await store.set_styles(1, 10, StyleDefaults())
    assert (await store.styles(1, 10)).empty
    await db.close()
