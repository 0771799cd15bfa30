"""The real bot driven in process through SimCord (an offline Discord): /imagine, reactions, buttons, /queue,
permissions, errors, the 15-minute fallback and restart persistence.

The engine is the real one on the tiny random-weight model (64×64 images, a few steps), so every test runs the
whole flow: interaction → cog → compose → queue worker thread → pipeline → render → Discord REST.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import discord
import pytest
import simcord
from PIL import Image

from bot.app import AtelierBot, create_bot
from bot.config import Settings, parse_settings
from bot.db import open_database
from bot.store.generations import DELETED, DONE, GenerationStore
from engine.adapters.hypernetwork import create_hypernetwork, write_hypernetwork_pt

GUILD_ID = 424242424242424242
# Real seconds one step may take (tiny-model jobs take well under a second; the model loads in setup_hook, which
# SimCord does not time). Shorter than the bot's 30-second notices, so their delayed deletion stays on the
# virtual clock instead of being waited for.
SETTLE_S = 25.0


def _settings(tmp_path: Path, model: Path, **sections: dict[str, Any]) -> Settings:
    raw: dict[str, Any] = {
        "model": {"source": str(model), "device": "cpu", "dtype": "float32", "threads": 1},
        "paths": {"data": str(tmp_path / "data"), "database": str(tmp_path / "data" / "atelier.db"),
                  "models": str(tmp_path / "models"), "embeddings": str(tmp_path / "embeddings"),
                  "hypernetworks": str(tmp_path / "hypernetworks"), "outputs": str(tmp_path / "outputs"),
                  "cache": str(tmp_path / "cache")},
        "generation": {"steps": 3},
        "queue": {"collect_window_ms": 0, "preview_every": 1},
        "discord": {"guild_ids": [GUILD_ID], "progress_interval_s": 0.5},
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
    alice: Any
    bob: Any
    mod: Any

    @property
    def bot(self) -> AtelierBot:
        return self.env.bot  # type: ignore[return-value]

    def store(self) -> GenerationStore:
        assert self.bot.db is not None
        return GenerationStore(self.bot.db)

    async def restart(self) -> None:
        await self.bot.close()
        await self.env.restart_bot(create_bot(self.settings))


async def _prepare(tmp_path: Path, settings: Settings) -> None:
    """Migrate the database and put one hypernetwork in the global folder before the bot starts."""
    await (await open_database(settings.path(settings.paths.database))).close()
    folder = settings.path(settings.paths.hypernetworks)
    folder.mkdir(parents=True, exist_ok=True)
    write_hypernetwork_pt(create_hypernetwork("inkwash", [32, 64]), folder / "inkwash.pt")
    write_hypernetwork_pt(create_hypernetwork("impasto", [32, 64]), folder / "impasto.pt")


@pytest.fixture
def make_world(tmp_path: Path, tiny_model_dir: Path) -> Callable[..., Any]:
    worlds: list[simcord.Env] = []

    async def make(**sections: dict[str, Any]) -> World:
        settings = _settings(tmp_path, tiny_model_dir, **sections)
        await _prepare(tmp_path, settings)
        env = simcord.Env(create_bot(settings), settle_timeout=SETTLE_S)
        guild = env.create_guild("Studio", id=GUILD_ID)
        general = guild.create_text_channel("general")
        mods = guild.create_role("Mods", permissions=discord.Permissions(manage_messages=True, manage_guild=True))
        alice = guild.add_member(env.create_user("alice"))
        bob = guild.add_member(env.create_user("bob"))
        mod = guild.add_member(env.create_user("mod"), roles=[mods])
        await env.start()
        worlds.append(env)
        return World(env, settings, guild, general, alice, bob, mod)

    return make


@pytest.fixture
async def world(make_world: Callable[..., Any]) -> AsyncIterator[World]:
    w = await make_world()
    try:
        yield w
    finally:
        await w.bot.close()
        await w.env.shutdown()


def _posted(env: simcord.Env) -> list[str]:
    """Contents of plain channel messages the bot posted (notices included, even once deleted)."""
    return [e.json.get("content") or "" for e in env.http_requests
            if e.method == "POST" and e.path.startswith("/channels/") and e.path.endswith("/messages") and e.json]


def _callback_types(env: simcord.Env) -> list[int]:
    return [e.json["type"] for e in env.http_requests if e.path.endswith("/callback") and e.json]


async def _png(attachment: discord.Attachment) -> Image.Image:
    return Image.open(io.BytesIO(await attachment.read()))


async def _generations(w: World) -> int:
    assert w.bot.db is not None
    row = await w.bot.db.fetchone("SELECT COUNT(*) FROM generations")
    return int(row[0])


# -- /imagine --------------------------------------------------------------------------------------------------


async def test_imagine_defers_and_delivers_images_with_infotext_embed_reactions_and_buttons(world: World) -> None:
    w = world
    r = await w.alice.slash(w.general, "imagine", prompt="a red circle", seed=1234, count=2)
    assert _callback_types(w.env)[0] == 5  # deferred at once (thinking), before any work
    reply = r.response
    assert reply is not None and not reply.ephemeral
    embed = reply.embeds[0]
    assert embed.description == "a red circle"
    assert "1: 1234 · 2: 1235" in next(f.value for f in embed.fields if f.name == "Seeds")
    assert len(reply.attachments) == 2
    image = await _png(reply.attachments[0])
    assert image.size == (512, 512)  # 64-pixel native size upscaled ×8 for display
    infotext = image.info["parameters"]
    assert infotext.startswith("a red circle\n") and "Seed: 1234" in infotext and "Size: 64x64" in infotext
    # Reactions the bot added, and persistent buttons keyed by the generation row.
    message = await w.bot.get_channel(w.general.id).fetch_message(reply.id)
    assert [str(x.emoji) for x in message.reactions] == ["🔁", "🎲", "1️⃣", "2️⃣", "ℹ️", "❌"]
    gen = await w.store().by_message(reply.id)
    assert gen is not None and gen.status == DONE and gen.user_id == w.alice.id
    ids = [c["custom_id"] for row in reply.components for c in row["components"]]
    assert ids == [f"atelier:gen:{gen.id}:{a}" for a in ("rerun", "vary", "one:0", "one:1", "info", "delete")]
    # The full-size PNG with its infotext is kept on disk.
    assert [Image.open(i.path).info["parameters"] for i in gen.images] == [i.infotext for i in gen.images]
    assert Image.open(gen.images[0].path).size == (64, 64)


async def test_imagine_shows_progress_then_the_result_in_the_same_reply(world: World) -> None:
    w = world
    r = await w.alice.slash(w.general, "imagine", prompt="a blue square", steps=6)
    edits = [e.json for e in w.env.http_requests if e.method == "PATCH" and e.path.endswith("@original")]
    texts = [e.get("content") for e in edits if e]
    assert any(t and t.startswith("🎨 Generating") for t in texts)  # (queue positions: see the blocked tests)
    assert len(texts) == len([t for i, t in enumerate(texts) if i == 0 or t != texts[i - 1]])  # only on change
    assert r.response.embeds and r.response.content in ("", None)


async def test_autocomplete_lists_the_hypernetworks_this_guild_can_use(world: World) -> None:
    choices = await world.alice.autocomplete(world.general, "imagine", "hypernet", "im")
    assert [c["value"] for c in choices] == ["impasto"]
    everything = await world.alice.autocomplete(world.general, "imagine", "hypernet", "")
    assert [c["value"] for c in everything] == ["impasto", "inkwash"]


async def test_imagine_with_hypernet_option_records_the_tag(world: World) -> None:
    r = await world.alice.slash(world.general, "imagine", prompt="a cat", hypernet="inkwash", strength=0.5)
    image = await _png(r.response.attachments[0])
    assert "<hypernet:inkwash:0.5>" in image.info["parameters"]
    assert "Hypernet hashes" in image.info["parameters"]


@pytest.mark.parametrize(("options", "words"), [
    ({"hypernet": "inkwsh"}, "unknown hypernetwork 'inkwsh'; did you mean inkwash"),
    ({"size": "500x500"}, "multiples of 8"),
    ({"embedding": "nothing"}, "unknown embedding 'nothing'"),
    ({"prompt": "a cat (unclosed"}, "is never closed"),
    ({"count": 9}, "count: must be between 1 and 4"),
])
async def test_invalid_input_gets_an_ephemeral_message_and_nothing_is_queued(world: World, options: dict[str, Any],
                                                                            words: str) -> None:
    r = await world.alice.slash(world.general, "imagine", **{"prompt": "a cat", **options})
    assert r.response.ephemeral and words in r.response.content
    assert await _generations(world) == 0
    assert world.general.last_message is None  # nothing public


async def test_banned_words_and_channels_come_from_guild_settings(make_world: Callable[..., Any]) -> None:
    w = await make_world(guild={"banned_words": ["gore"]})
    try:
        r = await w.alice.slash(w.general, "imagine", prompt="some GORE")
        assert r.response.ephemeral and "'gore' is not allowed" in r.response.content
        other = w.guild.create_text_channel("art")
        await w.bot.settings_store.update_guild(GUILD_ID, channels=[other.id])
        r = await w.alice.slash(w.general, "imagine", prompt="a cat")
        assert r.response.ephemeral and f"<#{other.id}>" in r.response.content
        assert await _generations(w) == 0
    finally:
        await w.bot.close()
        await w.env.shutdown()


async def test_queue_full_is_refused_ephemerally(make_world: Callable[..., Any]) -> None:
    w = await make_world(queue={"max_jobs_per_user": 1})
    async with blocked_worker(w):
        first = await w.alice.slash(w.general, "imagine", prompt="first")
        assert first.response.content.startswith("⏳ Queued")
        r = await w.alice.slash(w.general, "imagine", prompt="second")
        assert r.response.ephemeral and "Try again" in r.response.content
        assert (await w.bob.slash(w.general, "imagine", prompt="bob's")).response.content.startswith("⏳ Queued")
    await _until(w, lambda: len([m for m in w.general.history() if m.embeds]) == 2)
    await _close(w)


async def _close(w: World) -> None:
    await w.bot.close()
    await w.env.shutdown()


async def _until(w: World, predicate: Callable[[], bool], timeout: float = SETTLE_S) -> None:
    """Wait (real time) until ``predicate`` holds, letting the bot's work settle in between."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("the bot did not get there in time")
        await w.env.settle(timeout=timeout)
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def blocked_worker(w: World) -> AsyncIterator[threading.Event]:
    """Hold the engine's worker thread (a background slice that waits) so jobs stay queued, as behind a long
    GPU job. Follow tasks declare their wait for the worker to SimCord, so actor calls still settle."""
    gate = threading.Event()
    assert w.bot.engine is not None and w.bot.engine.queue is not None and w.bot.studio is not None
    w.bot.studio.await_event = lambda awaitable: w.env.external_wait(awaitable, reason="the engine worker")

    class Blocker:
        def run_slice(self) -> bool:
            gate.wait(timeout=300)
            return True

        def failed(self, error: BaseException) -> None:  # pragma: no cover - only on a bug
            raise error

    w.bot.engine.queue.add_background(Blocker())
    try:
        yield gate
    finally:
        gate.set()


# -- reactions -------------------------------------------------------------------------------------------------


async def _result(w: World, **options: Any) -> tuple[Any, Any]:
    r = await w.alice.slash(w.general, "imagine", **{"prompt": "a green triangle", "seed": 77, **options})
    message = await w.bot.get_channel(w.general.id).fetch_message(r.response.id)
    gen = await w.store().by_message(message.id)
    return message, gen


async def test_reaction_rerun_posts_new_seeds_in_the_channel_mentioning_the_reactor(world: World) -> None:
    w = world
    message, gen = await _result(w)
    before = await _generations(w)  # the bot's own reactions started nothing
    await w.bob.react(message, "🔁")
    assert await _generations(w) == before + 1
    last = w.general.last_message
    assert w.bob.mention in last.content and last.embeds
    rerun = await w.store().by_message(last.id)
    assert rerun.parent_id == gen.id and rerun.user_id == w.bob.id and rerun.origin == "rerun"
    assert rerun.request.prompt == gen.request.prompt and rerun.request.seed != gen.request.seed


async def test_reaction_variations_keep_the_seed_and_number_reactions_pick_one_image(world: World) -> None:
    w = world
    message, _ = await _result(w, count=2)
    await w.alice.react(message, "🎲")
    vary = await w.store().by_message(w.general.last_message.id)
    assert vary.request.seed == 77 and vary.request.subseed_strength == pytest.approx(0.3)
    assert "Variation seed" in vary.images[0].infotext
    await w.alice.react(message, "2️⃣")
    one = await w.store().by_message(w.general.last_message.id)
    assert [i.seed for i in one.images] == [78, 78]  # both images are variations of image 2 (seed 78)
    assert len({i.subseed for i in one.images}) == 2


async def test_info_reaction_sends_the_parameters_by_dm(world: World) -> None:
    w = world
    message, gen = await _result(w)
    await w.bob.react(message, "ℹ️")
    [dm] = w.bob.user.dm_channel.history()
    assert gen.images[0].infotext in dm.content


async def test_delete_reaction_only_for_requester_or_moderator(world: World) -> None:
    w = world
    message, gen = await _result(w)
    await w.bob.react(message, "❌")
    assert (await w.store().get(gen.id)).status == DONE
    assert "only the member who asked" in _posted(w.env)[-1]
    await w.alice.react(message, "❌")
    assert (await w.store().get(gen.id)).status == DELETED
    assert message.id not in [m.id for m in w.general.history()]
    message2, gen2 = await _result(w)
    await w.mod.react(message2, "❌")
    assert (await w.store().get(gen2.id)).status == DELETED


async def test_reaction_spam_is_rate_limited(make_world: Callable[..., Any]) -> None:
    w = await make_world(discord={"reactions_per_minute": 1})
    try:
        message, _ = await _result(w)
        before = await _generations(w)
        await w.bob.react(message, "🔁")
        await w.bob.react(message, "🎲")
        assert await _generations(w) == before + 1
        assert "slow down" in _posted(w.env)[-1]
        await w.env.advance_time(61)
        await w.bob.react(message, "🎲")
        assert await _generations(w) == before + 2
    finally:
        await w.bot.close()
        await w.env.shutdown()


# -- buttons ---------------------------------------------------------------------------------------------------


async def test_buttons_rerun_info_and_delete(world: World) -> None:
    w = world
    message, gen = await _result(w)
    click = await w.bob.click(message, custom_id=f"atelier:gen:{gen.id}:info")
    assert click.response.ephemeral and gen.images[0].infotext in click.response.content
    click = await w.bob.click(message, custom_id=f"atelier:gen:{gen.id}:delete")
    assert click.response.ephemeral and "only the member who asked" in click.response.content
    click = await w.bob.click(message, custom_id=f"atelier:gen:{gen.id}:rerun")
    new = await w.store().by_message(click.response.id)
    assert new is not None and new.parent_id == gen.id and new.status == DONE and click.response.embeds
    click = await w.alice.click(message, custom_id=f"atelier:gen:{gen.id}:delete")
    assert (await w.store().get(gen.id)).status == DELETED


# -- /queue ----------------------------------------------------------------------------------------------------


async def test_queue_lists_own_jobs_and_cancel_button_cancels(make_world: Callable[..., Any]) -> None:
    w = await make_world()
    async with blocked_worker(w):
        first = await w.alice.slash(w.general, "imagine", prompt="wait for me")
        r = await w.alice.slash(w.general, "queue")
        assert r.response.ephemeral and "wait for me" in r.response.content and "**#1**" in r.response.content
        assert "nothing queued" in (await w.bob.slash(w.general, "queue")).response.content
        denied = await w.bob.slash(w.general, "queue", everyone=True)
        assert denied.response.ephemeral and "Only moderators" in denied.response.content
        everyone = await w.mod.slash(w.general, "queue", everyone=True)
        assert "wait for me" in everyone.response.content and w.alice.mention in everyone.response.content
        button = r.response.components[0]["components"][0]["custom_id"]
        done = await w.alice.click(r.response, custom_id=button)
        assert done.response.ephemeral and done.response.content == "Cancelled."
        await _until(w, lambda: "cancelled by its owner" in (first.response.content or ""))
        assert (await w.store().get(1)).status == "cancelled"
        # A moderator cancels someone else's job from the everyone view.
        second = await w.bob.slash(w.general, "imagine", prompt="bob waits")
        everyone = await w.mod.slash(w.general, "queue", everyone=True)
        assert "bob waits" in everyone.response.content and "wait for me" not in everyone.response.content
        button = everyone.response.components[0]["components"][0]["custom_id"]
        await w.mod.click(everyone.response, custom_id=button)
        await _until(w, lambda: "cancelled by moderator mod" in (second.response.content or ""))
    await _close(w)


# -- time and restarts -----------------------------------------------------------------------------------------


async def test_job_finishing_after_the_interaction_window_is_delivered_in_the_channel(
        make_world: Callable[..., Any]) -> None:
    w = await make_world()
    async with blocked_worker(w):
        r = await w.alice.slash(w.general, "imagine", prompt="slow one")
        assert r.response.content.startswith("⏳ Queued")
        await w.env.advance_time(16 * 60)  # the GPU was busy for 16 minutes: the reply can no longer be edited
    await _until(w, lambda: any(m.embeds for m in w.general.history() if m.id != r.response.id))
    last = w.general.last_message
    assert w.alice.mention in last.content and last.embeds and last.attachments
    assert r.response.content.startswith("⏳ Queued")  # the expired reply was left alone
    gen = await w.store().by_message(last.id)
    assert gen is not None and gen.status == DONE and gen.user_id == w.alice.id
    await _close(w)


async def test_expired_token_error_falls_back_to_the_channel(world: World) -> None:
    w = world
    w.env.inject_error("PATCH", "/webhooks/*/*/messages/@original", status=401, code=50027,
                       message="Invalid Webhook Token", times=100)
    await w.alice.slash(w.general, "imagine", prompt="a cat")
    last = w.general.last_message
    assert w.alice.mention in last.content and last.attachments
    assert (await w.store().by_message(last.id)).status == DONE


async def test_reactions_and_buttons_work_after_a_restart(world: World) -> None:
    w = world
    message, gen = await _result(w)
    await w.restart()
    await w.bob.react(message, "🔁")
    rerun = await w.store().by_message(w.general.last_message.id)
    assert rerun is not None and rerun.parent_id == gen.id
    click = await w.bob.click(message, custom_id=f"atelier:gen:{gen.id}:info")
    assert gen.images[0].infotext in click.response.content


# -- /settings -------------------------------------------------------------------------------------------------


async def test_settings_are_for_server_managers_and_apply_at_once(world: World) -> None:
    w = world
    assert "settings show" not in w.alice.available_commands(w.general)  # hidden from plain members
    assert "settings show" in w.mod.available_commands(w.general)
    r = await w.mod.slash(w.general, "settings banned", word="Gore", ban=True)
    assert r.response.ephemeral and "`gore`" in r.response.content
    refused = await w.alice.slash(w.general, "imagine", prompt="so much gore")
    assert refused.response.ephemeral and "'gore' is not allowed" in refused.response.content
    await w.mod.slash(w.general, "settings banned", word="gore", ban=False)
    art = w.guild.create_text_channel("art")
    r = await w.mod.slash(w.general, "settings channel", channel=art, allow=True)
    assert f"<#{art.id}>" in r.response.content
    refused = await w.alice.slash(w.general, "imagine", prompt="so much gore")
    assert refused.response.ephemeral and f"I only draw in <#{art.id}>" in refused.response.content
    ok = await w.alice.slash(art, "imagine", prompt="so much gore")
    assert ok.response.embeds
    shown = await w.mod.slash(w.general, "settings show")
    assert "Banned words:** none" in shown.response.content
    await w.mod.slash(w.general, "settings limits", max_count=1, max_steps=0)
    refused = await w.alice.slash(art, "imagine", prompt="two please", count=2)
    assert refused.response.ephemeral and "count: must be between 1 and 1" in refused.response.content


async def test_generation_interrupted_by_a_crash_runs_again_after_restart(world: World) -> None:
    w = world
    from engine.requests import GenerationRequest

    request = GenerationRequest(prompt="a crash survivor", width=64, height=64, steps=3, seed=9, subseed=9)
    gid = await w.store().create(request, user_id=w.alice.id, guild_id=GUILD_ID, channel_id=w.general.id)
    await w.store().set_status(gid, "running")  # as a process killed mid-job leaves it
    await w.restart()
    await _until(w, lambda: any(m.embeds for m in w.general.history()))
    last = w.general.last_message
    assert w.alice.mention in last.content and "resumed after a restart" in last.content
    resumed = await w.store().by_message(last.id)
    assert resumed.parent_id == gid and resumed.request.seed == 9 and resumed.status == DONE
    old = await w.store().get(gid)
    assert old.status == "failed" and "resumed" in old.error
