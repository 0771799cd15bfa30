"""``/styles`` and ``/styles-admin`` through SimCord with the real bot and the real engine on the tiny model:
browsing, personal defaults applied to ``/imagine``, imports (validated by content, refused when unsafe, broken,
of the wrong kind or width, or by a member without the role), scoping to one guild, rename, delete, promotion to
global by a bot owner, and registrations restored from the database after a restart.

The harness is a copy of tests/test_discord_bot.py's (kept separate on purpose: each test file stands alone),
with a second guild and a bot owner.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import discord
import numpy as np
import pytest
import simcord
import torch
from PIL import Image

from bot.app import AtelierBot, create_bot
from bot.config import Settings, parse_settings
from bot.db import open_database
from bot.store.adapters import AdapterStore, adapters_root
from bot.store.settings import HypernetChoice, StyleDefaults
from cogs.styles import add_styles, paginate, remove_style
from engine.adapters.embeddings import Embedding, write_embedding_pt
from engine.adapters.hypernetwork import create_hypernetwork, write_hypernetwork_pt
from engine.requests import RequestError

GUILD_ID = 424242424242424242
OTHER_ID = 434343434343434343
SETTLE_S = 25.0


def _settings(tmp_path: Path, model: Path, **sections: dict[str, Any]) -> Settings:
    raw: dict[str, Any] = {
        "model": {"source": str(model), "device": "cpu", "dtype": "float32", "threads": 1},
        "paths": {"data": str(tmp_path / "data"), "database": str(tmp_path / "data" / "atelier.db"),
                  "models": str(tmp_path / "models"), "embeddings": str(tmp_path / "embeddings"),
                  "hypernetworks": str(tmp_path / "hypernetworks"), "outputs": str(tmp_path / "outputs"),
                  "cache": str(tmp_path / "cache")},
        "generation": {"steps": 2},
        "queue": {"collect_window_ms": 0, "preview_every": 0},
        "discord": {"guild_ids": [GUILD_ID, OTHER_ID], "progress_interval_s": 0.5},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return parse_settings(raw, base_dir=tmp_path, environ={})


@dataclass
class World:
    env: simcord.Env
    settings: Settings
    guild: Any
    general: Any
    other: Any  # a channel of the second guild
    alice: Any  # has the "Artists" role, which grants nothing until an admin says so
    bob: Any  # a plain member
    mod: Any  # Manage Server
    boss: Any  # Manage Server and one of discord.owner_ids
    carol: Any  # a member of the second guild
    artists: Any

    @property
    def bot(self) -> AtelierBot:
        return self.env.bot  # type: ignore[return-value]

    def store(self) -> AdapterStore:
        assert self.bot.db is not None
        return AdapterStore(self.bot.db)

    async def restart(self) -> None:
        await self.bot.close()
        await self.env.restart_bot(create_bot(self.settings))


async def _prepare(settings: Settings) -> None:
    """Migrate the database and put two hypernetworks in the global folder before the bot starts."""
    await (await open_database(settings.path(settings.paths.database))).close()
    folder = settings.path(settings.paths.hypernetworks)
    folder.mkdir(parents=True, exist_ok=True)
    write_hypernetwork_pt(create_hypernetwork("inkwash", [32, 64]), folder / "inkwash.pt")
    write_hypernetwork_pt(create_hypernetwork("impasto", [32, 64]), folder / "impasto.pt")


@pytest.fixture
async def world(tmp_path: Path, tiny_model_dir: Path) -> AsyncIterator[World]:
    settings = _settings(tmp_path, tiny_model_dir)
    await _prepare(settings)
    env = simcord.Env(create_bot(settings), settle_timeout=SETTLE_S)
    guild = env.create_guild("Studio", id=GUILD_ID)
    general = guild.create_text_channel("general")
    managers = guild.create_role("Mods", permissions=discord.Permissions(manage_guild=True))
    artists = guild.create_role("Artists")
    alice = guild.add_member(env.create_user("alice"), roles=[artists])
    bob = guild.add_member(env.create_user("bob"))
    mod = guild.add_member(env.create_user("mod"), roles=[managers])
    boss = guild.add_member(env.create_user("boss"), roles=[managers])
    second = env.create_guild("Elsewhere", id=OTHER_ID)
    other = second.create_text_channel("art")
    carol = second.add_member(env.create_user("carol"))
    # SimCord assigns user ids, so the owner list is filled in once the owner exists (before the bot starts).
    settings = dataclasses.replace(settings, discord=dataclasses.replace(settings.discord, owner_ids=[boss.id]))
    env.bot.settings = settings
    await env.start()
    w = World(env, settings, guild, general, other, alice, bob, mod, boss, carol, artists)
    try:
        yield w
    finally:
        await w.bot.close()
        await w.env.shutdown()


# -- files ---------------------------------------------------------------------------------------------------


def _hypernet(tmp_path: Path, name: str, widths: tuple[int, ...] = (32, 64)) -> bytes:
    path = write_hypernetwork_pt(create_hypernetwork(name, list(widths), seed=3), tmp_path / f"{name}-upload.pt")
    return path.read_bytes()


def _embedding(tmp_path: Path, name: str, width: int = 32) -> bytes:
    path = write_embedding_pt(Embedding(name, torch.randn(2, width, generator=torch.Generator().manual_seed(1))),
                              tmp_path / f"{name}-upload.pt")
    return path.read_bytes()


class Evil:
    """Unpickling this would create the marker file (a harmless stand-in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.marker, "w"))


def _evil(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save({"string_to_param": {"*": Evil(marker)}}, buffer)  # pickling only records the call; nothing runs
    return buffer.getvalue()


async def _import(w: World, who: Any, filename: str, data: bytes, **options: Any) -> Any:
    return await who.slash(w.general, "styles import", file=(filename, data), **options)


async def _infotext(w: World, who: Any, channel: Any, **options: Any) -> str:
    r = await who.slash(channel, "imagine", **{"prompt": "a cat", "seed": 5, **options})
    assert r.response.attachments, r.response.content
    return Image.open(io.BytesIO(await r.response.attachments[0].read())).info["parameters"]


async def _rows(w: World) -> list[Any]:
    return await w.store().all()


# -- pure helpers ----------------------------------------------------------------------------------------------


def test_add_styles_updates_strength_and_keeps_limits() -> None:
    styles = add_styles(StyleDefaults(), hypernet="inkwash", strength=0.5)
    styles = add_styles(styles, hypernet="INKWASH", strength=0.8, embedding="glow", negative="blurry")
    assert styles.hypernetworks == (HypernetChoice("INKWASH", 0.8),)
    assert styles.embeddings == ("glow",) and styles.negative_embeddings == ("blurry",)
    assert add_styles(styles, embedding="GLOW").embeddings == ("glow",)  # no duplicates
    full = StyleDefaults(tuple(HypernetChoice(f"h{i}") for i in range(5)))
    with pytest.raises(RequestError, match="already use 5 hypernetworks"):
        add_styles(full, hypernet="h9")
    assert add_styles(full, hypernet="h2", strength=0.1).hypernetworks[2] == HypernetChoice("h2", 0.1)
    with pytest.raises(RequestError, match="strength: it sets the hypernet"):
        add_styles(StyleDefaults(), strength=0.5, embedding="glow")
    with pytest.raises(RequestError, match="choose a hypernet"):
        add_styles(StyleDefaults())
    assert remove_style(styles, "glow").embeddings == ()
    with pytest.raises(RequestError, match="you do not use 'nope'"):
        remove_style(styles, "nope")


def test_paginate_respects_the_limits_and_repeats_section_titles() -> None:
    lines = [f"**style{i:03d}** · <@1234567890> · 2026-11-23" for i in range(100)]
    pages = paginate([("Global hypernetworks", lines), ("Global embeddings", ["**e**"])], limit=1000,
                     max_lines=30)
    assert len(pages) > 3 and all(len(p) <= 1000 for p in pages)
    assert all(p.startswith("**Global hypernetworks**") for p in pages[:-1])
    assert "(continued)" in pages[1] and "**Global embeddings**\n**e**" in pages[-1]
    assert sum(p.count("**style") for p in pages) == 100


# -- browsing and personal defaults ----------------------------------------------------------------------------


async def test_list_info_and_personal_defaults_apply_to_imagine(world: World) -> None:
    w = world
    r = await w.bob.slash(w.general, "styles list")
    assert r.response.ephemeral
    listing = r.response.embeds[0].description
    assert "**Global hypernetworks**" in listing and "**impasto** · global folder" in listing and "inkwash" in listing
    r = await w.bob.slash(w.general, "styles info", name="inkwash")
    embed = r.response.embeds[0]
    assert r.response.ephemeral and embed.title == "inkwash"
    fields = {f.name: f.value for f in embed.fields}
    assert fields["Kind"] == "hypernetwork" and fields["Scope"] == "global (folder)"
    assert "modules for widths 32, 64" in embed.description
    assert [c["value"] for c in await w.bob.autocomplete(w.general, "styles use", "hypernet", "ink")] == ["inkwash"]

    r = await w.bob.slash(w.general, "styles use", hypernet="inkwash", strength=0.5)
    assert r.response.ephemeral and "`inkwash` (strength 0.5)" in r.response.content
    r = await w.bob.slash(w.general, "styles use", hypernet="INKWASH", strength=0.75)  # same one: new strength
    assert "`inkwash` (strength 0.75)" in r.response.content and "0.5" not in r.response.content
    r = await w.bob.slash(w.general, "styles use", hypernet="inkwsh")
    assert r.response.ephemeral and "did you mean inkwash" in r.response.content
    assert "`inkwash` (strength 0.75)" in (await w.bob.slash(w.general, "styles mine")).response.content

    assert "<hypernet:inkwash:0.75>" in await _infotext(w, w.bob, w.general)
    assert "<hypernet:inkwash" not in await _infotext(w, w.alice, w.general)  # personal: not alice's

    r = await w.bob.slash(w.general, "styles use", hypernet="impasto")
    assert [c["value"] for c in await w.bob.autocomplete(w.general, "styles clear", "what", "")] == [
        "inkwash", "impasto"]
    r = await w.bob.slash(w.general, "styles clear", what="inkwash")
    assert "`impasto` (strength 1)" in r.response.content and "inkwash" not in r.response.content
    r = await w.bob.slash(w.general, "styles clear", what="inkwash")
    assert r.response.ephemeral and "you do not use 'inkwash'" in r.response.content
    r = await w.bob.slash(w.general, "styles clear")
    assert "no personal styles" in r.response.content
    assert "<hypernet:" not in await _infotext(w, w.bob, w.general)


# -- imports -----------------------------------------------------------------------------------------------------


async def test_imported_styles_are_usable_at_once_in_that_guild_only(world: World, tmp_path: Path) -> None:
    w = world
    r = await _import(w, w.mod, "watercolor.pt", _hypernet(tmp_path, "watercolor"))
    callbacks = [e.json for e in w.env.http_requests if e.path.endswith("/callback") and e.json]
    assert callbacks[-1]["type"] == 5 and callbacks[-1]["data"]["flags"] & 64  # deferred, ephemeral, thinking
    assert r.response.ephemeral and "Imported a hypernetwork **watercolor**" in r.response.content
    r = await _import(w, w.mod, "glowy.pt", _embedding(tmp_path, "anything"), kind="embedding")
    assert "Imported an embedding **glowy**" in r.response.content
    root = adapters_root(w.settings)
    assert (root / str(GUILD_ID) / "hypernetwork" / "watercolor.pt").is_file()
    assert (root / str(GUILD_ID) / "embedding" / "glowy.pt").is_file()
    [hn, emb] = sorted(await _rows(w), key=lambda row: row.kind, reverse=True)
    assert (hn.name, hn.guild_id, hn.owner_id, hn.metadata["source"]) == ("watercolor", GUILD_ID, w.mod.id,
                                                                          "watercolor.pt")
    assert emb.metadata["vectors"] == 2 and emb.metadata["width"] == 32

    text = await _infotext(w, w.alice, w.general, prompt="a cat, glowy", hypernet="watercolor")
    assert "<hypernet:watercolor:1>" in text and "watercolor: " in text and "glowy: " in text  # hashes recorded
    text = await _infotext(w, w.alice, w.general, prompt="a dog <hypernet:watercolor:0.6>")
    assert "Hypernet hashes" in text

    listing = (await w.bob.slash(w.general, "styles list")).response.embeds[0].description
    assert f"**watercolor** · <@{w.mod.id}> · " in listing
    assert listing.index("on this server") < listing.index("Global hypernetworks")
    info = (await w.bob.slash(w.general, "styles info", name="glowy")).response.embeds[0]
    fields = {f.name: f.value for f in info.fields}
    assert fields["Scope"] == "this server" and fields["Creator"] == f"<@{w.mod.id}>"
    assert fields["SHA-256"] == f"`{emb.sha256[:12]}`" and "2 vectors of width 32" in info.description

    # The other guild does not know them.
    r = await w.carol.slash(w.other, "imagine", prompt="a cat", hypernet="watercolor")
    assert r.response.ephemeral and "unknown hypernetwork 'watercolor'" in r.response.content
    r = await w.carol.slash(w.other, "styles use", embedding="glowy")
    assert r.response.ephemeral and "unknown embedding 'glowy'" in r.response.content
    assert "watercolor" not in (await w.carol.slash(w.other, "styles list")).response.embeds[0].description


async def _await_previews(w: World) -> None:
    cog = w.bot.get_cog("Styles")
    assert cog is not None
    while cog.previews:  # type: ignore[attr-defined]
        await asyncio.gather(*cog.previews)  # type: ignore[attr-defined]


async def _png_of(attachment: Any) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(await attachment.read())).convert("RGB"), dtype=np.int16)


async def test_an_imported_style_gets_a_before_and_after_preview(world: World, tmp_path: Path) -> None:
    w = world
    await _import(w, w.mod, "pastel.pt", _hypernet(tmp_path, "pastel"))
    await _await_previews(w)
    [row] = await _rows(w)
    assert row.metadata["preview"] == f"previews/{row.id}.png"
    preview_file = adapters_root(w.settings) / row.metadata["preview"]
    r = await w.bob.slash(w.general, "styles info", name="pastel")
    assert r.response.embeds[0].image.url == "attachment://preview.png"
    sheet = await _png_of(r.response.attachments[0])

    # Left: the preview prompt as it is; right: the same seed with the style. Both as /imagine would make them.
    prompt = w.settings.generation.style_preview_prompt
    before = await _png_of((await w.bob.slash(w.general, "imagine", prompt=prompt, seed=1)).response.attachments[0])
    after = await _png_of((await w.bob.slash(w.general, "imagine", prompt=f"{prompt} <hypernet:pastel:1>",
                                             seed=1)).response.attachments[0])
    height, width = before.shape[:2]
    assert sheet.shape == (height, 2 * width + 4, 3)
    assert np.abs(sheet[:, :width] - before).mean() < 1.0
    assert np.abs(sheet[:, width + 4:] - after).mean() < 1.0

    await w.mod.slash(w.general, "styles delete", name="pastel")
    assert not preview_file.exists()


@pytest.mark.parametrize(("filename", "make", "options", "words"), [
    ("notes.pt", lambda tmp: b"just some text, not a model at all", {}, "not an embedding or hypernetwork file"),
    ("wide.pt", lambda tmp: _embedding(tmp, "wide", width=48), {},
     "not usable with tiny: width 48, the model's text encoder needs 32"),
    ("big.pt", lambda tmp: _hypernet(tmp, "big", (768,)), {}, "not usable with tiny: modules for widths [768]"),
    ("style.pt", lambda tmp: _hypernet(tmp, "style"), {"kind": "embedding"},
     "style.pt is a hypernetwork, not an embedding"),
    ("my style.pt", lambda tmp: _hypernet(tmp, "x"), {}, "from the file's name; give one with the name option"),
    ("inkwash.pt", lambda tmp: torch_bytes({"epoch": 3, "weights": [1, 2]}), {},
     "neither an embedding nor a hypernetwork"),
])
async def test_bad_uploads_are_refused_and_nothing_is_stored(world: World, tmp_path: Path, filename: str,
                                                             make: Callable[[Path], bytes], options: dict[str, Any],
                                                             words: str) -> None:
    r = await _import(world, world.mod, filename, make(tmp_path), **options)
    assert r.response.ephemeral and words in r.response.content
    assert await _rows(world) == []
    assert not adapters_root(world.settings).exists() or not any(adapters_root(world.settings).rglob("*.pt"))


def torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


async def test_a_malicious_pickle_is_refused_without_running_it(world: World, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    r = await _import(world, world.mod, "evil.pt", _evil(marker))
    assert r.response.ephemeral and "needs arbitrary code to unpickle" in r.response.content
    assert "evil.pt" in r.response.content and "nothing in it was run" in r.response.content
    assert not marker.exists() and await _rows(world) == []
    call, args = Evil(tmp_path / "control").__reduce__()  # the payload is real when called directly
    call(*args).close()
    assert (tmp_path / "control").exists()


async def test_duplicate_names_are_refused_with_what_to_do(world: World, tmp_path: Path) -> None:
    w = world
    await _import(w, w.mod, "dup.pt", _hypernet(tmp_path, "dup"))
    r = await _import(w, w.mod, "other.pt", _hypernet(tmp_path, "other"), name="DUP")
    assert r.response.ephemeral and "a hypernetwork named 'DUP' already exists on this server" in r.response.content
    assert "rename or delete the existing one" in r.response.content
    # An embedding may share a hypernetwork's name; info then asks which one.
    await _import(w, w.mod, "dup.pt", _embedding(tmp_path, "dup"))
    r = await w.bob.slash(w.general, "styles info", name="dup")
    assert "both an embedding and a hypernetwork are named 'dup'" in r.response.content
    r = await w.bob.slash(w.general, "styles info", name="dup", kind="embedding")
    assert {f.name: f.value for f in r.response.embeds[0].fields}["Kind"] == "embedding"


async def test_import_and_delete_need_manage_server_or_a_granted_role(world: World, tmp_path: Path) -> None:
    w = world
    data = _hypernet(tmp_path, "sketch")
    r = await _import(w, w.alice, "sketch.pt", data)
    assert r.response.ephemeral and "🔒 importing or renaming styles needs Manage Server" in r.response.content
    assert await _rows(w) == []
    assert "styles-admin roles" not in w.alice.available_commands(w.general)  # hidden from plain members
    with pytest.raises(simcord.SetupError):
        await w.alice.slash(w.general, "styles-admin roles", action="import", role=w.artists, add=True)

    r = await w.mod.slash(w.general, "styles-admin roles", action="import", role=w.artists, add=True)
    assert r.response.ephemeral and f"**May import and rename styles:** <@&{w.artists.id}>" in r.response.content
    assert (await w.bot.settings_store.guild(GUILD_ID)).import_roles == [w.artists.id]
    r = await _import(w, w.alice, "sketch.pt", data)
    assert "Imported a hypernetwork **sketch**" in r.response.content
    r = await _import(w, w.bob, "sketch2.pt", data)  # bob lacks the role
    assert f"needs Manage Server or one of these roles: <@&{w.artists.id}>" in r.response.content

    r = await w.alice.slash(w.general, "styles delete", name="sketch")
    assert "🔒 deleting styles needs Manage Server" in r.response.content
    await w.mod.slash(w.general, "styles-admin roles", action="delete", role=w.artists, add=True)
    r = await w.alice.slash(w.general, "styles delete", name="sketch")
    assert r.response.ephemeral and "Deleted hypernetwork **sketch**" in r.response.content
    await w.mod.slash(w.general, "styles-admin roles", action="import", role=w.artists, add=False)
    assert (await w.bot.settings_store.guild(GUILD_ID)).import_roles == []
    assert "🔒" in (await _import(w, w.alice, "sketch.pt", data)).response.content


async def test_rename_and_delete_keep_rows_files_and_prompts_in_step(world: World, tmp_path: Path) -> None:
    w = world
    await _import(w, w.mod, "pastel.pt", _hypernet(tmp_path, "pastel"))
    assert [c["value"] for c in await w.mod.autocomplete(w.general, "styles rename", "name", "pa")] == ["pastel"]
    r = await w.mod.slash(w.general, "styles rename", name="pastel", new_name="pastel_v2")
    assert r.response.ephemeral and "Renamed hypernetwork **pastel** to **pastel_v2**" in r.response.content
    folder = adapters_root(w.settings) / str(GUILD_ID) / "hypernetwork"
    assert [p.name for p in folder.iterdir()] == ["pastel_v2.pt"]
    [row] = await _rows(w)
    assert row.name == "pastel_v2" and row.file == f"{GUILD_ID}/hypernetwork/pastel_v2.pt"
    r = await w.alice.slash(w.general, "imagine", prompt="a cat", hypernet="pastel")
    assert r.response.ephemeral and "unknown hypernetwork 'pastel'; did you mean pastel_v2" in r.response.content
    assert "<hypernet:pastel_v2:1>" in await _infotext(w, w.alice, w.general, hypernet="pastel_v2")
    r = await w.mod.slash(w.general, "styles rename", name="pastel_v2", new_name="bad name!")
    assert r.response.ephemeral and "letters, digits" in r.response.content
    r = await w.mod.slash(w.general, "styles delete", name="inkwash")
    assert "a file in the global folder" in r.response.content

    r = await w.mod.slash(w.general, "styles delete", name="pastel_v2")
    assert "Deleted hypernetwork **pastel_v2**" in r.response.content
    assert await _rows(w) == [] and list(folder.iterdir()) == []
    r = await w.alice.slash(w.general, "imagine", prompt="a cat", hypernet="pastel_v2")
    assert r.response.ephemeral and "unknown hypernetwork 'pastel_v2'" in r.response.content
    r = await w.mod.slash(w.general, "styles delete", name="pastel_v2")
    assert r.response.ephemeral and "no imported style named 'pastel_v2'" in r.response.content


async def test_members_defaults_follow_a_rename_and_a_delete(world: World, tmp_path: Path) -> None:
    w = world
    await _import(w, w.mod, "pastel.pt", _hypernet(tmp_path, "pastel"))
    await w.alice.slash(w.general, "styles use", hypernet="pastel", strength=0.5)
    await w.bob.slash(w.general, "styles use", hypernet="inkwash")
    r = await w.mod.slash(w.general, "styles rename", name="pastel", new_name="pastel_v2")
    assert "Saved defaults of 1 member now use the new name" in r.response.content
    assert "`pastel_v2` (strength 0.5)" in (await w.alice.slash(w.general, "styles mine")).response.content
    assert "<hypernet:pastel_v2:0.5>" in await _infotext(w, w.alice, w.general)  # no "unknown hypernetwork"
    r = await w.mod.slash(w.general, "styles delete", name="pastel_v2")
    assert "Saved defaults of 1 member no longer use it" in r.response.content
    assert "no personal styles" in (await w.alice.slash(w.general, "styles mine")).response.content
    assert "<hypernet:" not in await _infotext(w, w.alice, w.general)
    assert "`inkwash` (strength 1)" in (await w.bob.slash(w.general, "styles mine")).response.content  # untouched


def test_renamed_defaults_follow_only_their_own_kind() -> None:
    styles = StyleDefaults((HypernetChoice("soft", 0.5),), ("soft", "cat"), ("soft",))
    assert styles.renamed("hypernetwork", "SOFT", "soft2") == StyleDefaults(
        (HypernetChoice("soft2", 0.5),), ("soft", "cat"), ("soft",))
    assert styles.renamed("embedding", "soft", None) == StyleDefaults((HypernetChoice("soft", 0.5),), ("cat",), ())
    assert styles.renamed("embedding", "soft", "cat") == StyleDefaults(  # merging into one already used: once
        (HypernetChoice("soft", 0.5),), ("cat",), ("cat",))


async def test_an_owner_promotes_a_guild_style_to_every_guild(world: World, tmp_path: Path) -> None:
    w = world
    await _import(w, w.mod, "neon.pt", _hypernet(tmp_path, "neon"))
    assert "styles-admin promote" not in w.bob.available_commands(w.general)
    r = await w.mod.slash(w.general, "styles-admin promote", name="neon")
    assert r.response.ephemeral and "only the bot's owners" in r.response.content
    r = await w.carol.slash(w.other, "imagine", prompt="a cat", hypernet="neon")
    assert "unknown hypernetwork 'neon'" in r.response.content

    r = await w.boss.slash(w.general, "styles-admin promote", name="neon")
    assert r.response.ephemeral and "is now global" in r.response.content
    [row] = await _rows(w)
    assert row.guild_id is None and row.scope == "global" and row.file == "global/hypernetwork/neon.pt"
    assert (adapters_root(w.settings) / "global" / "hypernetwork" / "neon.pt").is_file()
    assert "<hypernet:neon:1>" in await _infotext(w, w.carol, w.other, hypernet="neon")
    assert f"**neon** · <@{w.mod.id}>" in (await w.carol.slash(w.other, "styles list")).response.embeds[0].description
    # Global styles are the owners' to change.
    r = await w.mod.slash(w.general, "styles delete", name="neon")
    assert "is global; only the bot's owners" in r.response.content

    # A name a global style already has cannot be promoted over it (folder file or promoted row).
    await _import(w, w.mod, "inkwash.pt", _hypernet(tmp_path, "inkwash"))
    r = await w.boss.slash(w.general, "styles-admin promote", name="inkwash")
    assert "the global folder already has a hypernetwork named 'inkwash'" in r.response.content
    await _import(w, w.mod, "neon.pt", _hypernet(tmp_path, "neon"))
    r = await w.boss.slash(w.general, "styles-admin promote", name="neon")
    assert "a global hypernetwork named 'neon' already exists" in r.response.content
    assert {(r.name, r.guild_id) for r in await _rows(w)} == {("neon", None), ("inkwash", GUILD_ID),
                                                              ("neon", GUILD_ID)}


async def test_imported_styles_and_defaults_survive_a_restart(world: World, tmp_path: Path) -> None:
    w = world
    await _import(w, w.mod, "chalk.pt", _hypernet(tmp_path, "chalk"))
    await _import(w, w.mod, "gone.pt", _embedding(tmp_path, "gone"))
    await w.alice.slash(w.general, "styles use", hypernet="chalk", strength=0.6)
    (adapters_root(w.settings) / str(GUILD_ID) / "embedding" / "gone.pt").unlink()  # lost on disk meanwhile
    await w.restart()
    assert w.bot.engine is not None
    assert [e.name for e in w.bot.engine.library.entries("hypernetwork", GUILD_ID)] == ["chalk", "impasto",
                                                                                         "inkwash"]
    assert [e.name for e in w.bot.engine.library.entries("embedding", GUILD_ID)] == []  # skipped, not fatal
    assert "<hypernet:chalk:0.6>" in await _infotext(w, w.alice, w.general)
    r = await w.carol.slash(w.other, "imagine", prompt="a cat", hypernet="chalk")
    assert "unknown hypernetwork 'chalk'" in r.response.content
