"""``/train``, "Train from these images" and the cancel button through SimCord, with the real bot, engine and
trainer on the tiny model: refusals are ephemeral and name what to fix, a training shows its progress in the
channel, finishes as a style the whole server can use at once, can be cancelled by its owner or a moderator,
waits its turn when the GPU is busy with trainings, and resumes from its checkpoint after a restart.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import discord
import numpy as np
import pytest
import simcord
from PIL import Image

from bot.app import AtelierBot, create_bot
from bot.config import Settings, parse_settings
from bot.db import open_database
from bot.store.adapters import AdapterStore
from bot.store.training import CANCELLED, DONE, TrainingStore
from bot.training import TrainingService, load_images
from cogs.train import RUN_GAP_S, caption_of, captions_for, parse_advanced, picture_run
from engine.requests import RequestError

GUILD_ID = 454545454545454545
SETTLE_S = 60.0


def _settings(tmp_path: Path, model: Path, *, backend: dict[str, Any] | None = None, **training: Any) -> Settings:
    raw: dict[str, Any] = {
        "model": {"source": str(model), "device": "cpu", "dtype": "float32", "threads": 1},
        "paths": {"data": str(tmp_path / "data"), "database": str(tmp_path / "data" / "atelier.db"),
                  "models": str(tmp_path / "models"), "embeddings": str(tmp_path / "embeddings"),
                  "hypernetworks": str(tmp_path / "hypernetworks"), "outputs": str(tmp_path / "outputs"),
                  "cache": str(tmp_path / "cache")},
        "generation": {"steps": 2},
        "queue": {"collect_window_ms": 0, "preview_every": 0},
        "discord": {"guild_ids": [GUILD_ID], "progress_interval_s": 0.5},
        "training": {"checkpoint_every": 2, "preview_every": 3, "progress_interval_s": 1.0, "preview_steps": 2,
                     "max_running": 1, **training},
        "backend": backend or {},
    }
    return parse_settings(raw, base_dir=tmp_path, environ={})


@dataclass
class World:
    env: simcord.Env
    settings: Settings
    guild: Any
    general: Any
    alice: Any  # "Trainers" role, granted training in the guild settings
    bob: Any  # a plain member
    mod: Any  # Manage Server and Manage Messages

    @property
    def bot(self) -> AtelierBot:
        return self.env.bot  # type: ignore[return-value]

    def jobs(self) -> TrainingStore:
        assert self.bot.db is not None
        return TrainingStore(self.bot.db)

    async def restart(self) -> None:
        await self.bot.close()
        await self.env.restart_bot(create_bot(self.settings))


def declare_worker_waits(monkeypatch: pytest.MonkeyPatch, env: simcord.Env) -> None:
    """Followers wait on the engine's worker thread: declare it to SimCord (for every bot this world starts,
    restarted ones too, whose followers begin during start-up), so actor calls still settle."""
    original = TrainingService.__init__

    def init(self: TrainingService, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.await_event = lambda awaitable: env.external_wait(awaitable, reason="the training worker")

    monkeypatch.setattr(TrainingService, "__init__", init)


async def build_world(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> World:
    """A started bot in a guild with a training role (alice), a plain member (bob) and a moderator (mod)."""
    await (await open_database(settings.path(settings.paths.database))).close()
    bot = create_bot(settings)
    env = simcord.Env(bot, settle_timeout=SETTLE_S)
    if hasattr(bot.engine, "await_io"):  # the Ray bridge's pipe: input from outside, like the worker thread
        bot.engine.await_io = lambda awaitable: env.external_wait(awaitable, reason="the Ray bridge")
    guild = env.create_guild("Studio", id=GUILD_ID)
    general = guild.create_text_channel("general")
    trainers = guild.create_role("Trainers")
    mods = guild.create_role("Mods", permissions=discord.Permissions(manage_guild=True, manage_messages=True))
    alice = guild.add_member(env.create_user("alice"), roles=[trainers])
    bob = guild.add_member(env.create_user("bob"))
    mod = guild.add_member(env.create_user("mod"), roles=[mods])
    declare_worker_waits(monkeypatch, env)
    await env.start()
    w = World(env, settings, guild, general, alice, bob, mod)
    await w.bot.settings_store.update_guild(GUILD_ID, train_roles=[trainers.id])
    return w


@pytest.fixture
async def make_world(tmp_path: Path, tiny_model_dir: Path,
                     monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Callable[..., Any]]:
    worlds: list[World] = []

    async def make(**training: Any) -> World:
        w = await build_world(_settings(tmp_path, tiny_model_dir, **training), monkeypatch)
        worlds.append(w)
        return w

    yield make
    for w in worlds:
        await w.bot.close()
        await w.env.shutdown()


@pytest.fixture
async def world(make_world: Callable[..., Any]) -> World:
    return await make_world()


def _png(seed: int, colour: tuple[int, int, int] | None = None) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    if colour is not None:
        pixels[12:36, 12:36] = colour
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _images(n: int = 3) -> dict[str, tuple[str, bytes]]:
    return {f"image{i + 1}": (f"pic{i}.png", _png(i)) for i in range(n)}


async def _until(w: World, predicate: Callable[[], bool], timeout: float = SETTLE_S) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            said = [m.content for m in w.general.history()]
            raise AssertionError(f"the bot did not get there in time: {said} {await w.jobs().unfinished()}")
        await w.env.settle(timeout=timeout)
        await asyncio.sleep(0.05)


def _said(w: World, text: str) -> list[Any]:
    return [m for m in w.general.history() if text in (m.content or "")]


# -- pure helpers ----------------------------------------------------------------------------------------------


def test_captions_one_for_all_or_one_each() -> None:
    assert captions_for(3, " a red cat ") == ["a red cat"] * 3
    assert captions_for(2, "a cat | a dog") == ["a cat", "a dog"]
    with pytest.raises(RequestError, match="2 captions separated by \\| for 3 images"):
        captions_for(3, "a|b")


def test_alt_text_is_an_image_own_caption() -> None:
    assert caption_of(SimpleNamespace(description=" a tabby cat "), "a cat") == "a tabby cat"  # type: ignore
    assert caption_of(SimpleNamespace(description=None), "a cat") == "a cat"  # type: ignore


def test_advanced_options_line() -> None:
    assert parse_advanced('vectors=2 init="a red cat" lr=5e-3:200,1e-3') == {
        "vectors": "2", "init": "a red cat", "lr": "5e-3:200,1e-3"}
    with pytest.raises(RequestError, match="unknown key 'colour'"):
        parse_advanced("colour=red")
    with pytest.raises(RequestError, match="is not key=value"):
        parse_advanced("vectors")


# -- the whole path --------------------------------------------------------------------------------------------


async def test_a_training_becomes_a_style_everyone_can_use(world: World) -> None:
    w = world
    r = await w.alice.slash(w.general, "train", name="zzspot", steps=6, vectors=2, what="plain",
                            captions="a spotted square", **_images(4))
    assert r.response.ephemeral and "Training #1 accepted" in r.response.content, r.response.content
    await _until(w, lambda: bool(_said(w, "trained a new embedding")))
    [announcement] = _said(w, "trained a new embedding")
    assert f"<@{w.alice.id}>" in announcement.content and "**zzspot**" in announcement.content
    grid = Image.open(io.BytesIO(await announcement.attachments[0].read()))
    assert grid.width > 4 * 64  # four preview images side by side

    [style] = [row for row in await AdapterStore(w.bot.db).for_guild(GUILD_ID) if row.name == "zzspot"]
    assert style.kind == "embedding" and style.owner_id == w.alice.id and style.guild_id == GUILD_ID
    assert style.metadata["trained"] is True and style.metadata["steps"] == 6 and style.metadata["images"] == 4
    assert style.metadata["preview"]  # /styles info shows the final grid
    job = await w.jobs().get(1)
    assert job is not None and job.state == DONE and job.payload["style_id"] == style.id
    progress = [m for m in w.general.history() if "Training an embedding **zzspot**" in (m.content or "")
                or "Trained an embedding **zzspot**" in (m.content or "")]
    assert progress and "✅ Trained an embedding **zzspot** in 6 steps" in progress[-1].content

    # Usable by name at once, by any member, and it changes the picture.
    plain = await w.bob.slash(w.general, "imagine", prompt="a square", seed=3)
    styled = await w.bob.slash(w.general, "imagine", prompt="a square, zzspot", seed=3)
    assert "zzspot" in Image.open(io.BytesIO(await styled.response.attachments[0].read())).info["parameters"]
    a = np.asarray(Image.open(io.BytesIO(await plain.response.attachments[0].read())))
    b = np.asarray(Image.open(io.BytesIO(await styled.response.attachments[0].read())))
    assert not np.array_equal(a, b)
    info = await w.bob.slash(w.general, "styles info", name="zzspot")
    assert info.response.ephemeral and info.response.attachments  # the final preview grid
    fields = {f.name: f.value for f in info.response.embeds[0].fields}
    assert fields["Trained here"].startswith("6 steps on 4 images") and fields["Creator"] == f"<@{w.alice.id}>"


@pytest.mark.parametrize(("who", "options", "words"), [
    ("bob", {}, "training needs Manage Server or one of these roles"),
    ("alice", {"name": "two words"}, "name 'two words'"),
    ("alice", {"lr": "fast"}, "lr"),
    ("alice", {"steps": 5000}, "steps: at most 3000"),
])
async def test_refusals_are_ephemeral_and_record_nothing(world: World, who: str, options: dict[str, Any],
                                                         words: str) -> None:
    member = getattr(world, who)
    r = await member.slash(world.general, "train", **{"name": "zzspot", "steps": 4, **_images(3), **options})
    assert r.response.ephemeral and words in r.response.content, r.response.content
    assert await world.jobs().unfinished() == [] and world.general.last_message is None


async def test_bad_images_are_named_and_too_few_good_ones_refused(world: World) -> None:
    w = world
    images = _images(3)
    images["image2"] = ("notes.png", b"just some text, not a picture")
    r = await w.alice.slash(w.general, "train", name="zzspot", steps=4, **images)
    assert r.response.ephemeral, r.response.content
    assert "2 usable image(s); training needs at least 3" in r.response.content
    assert "notes.png" in r.response.content
    assert await w.jobs().unfinished() == []
    images["image4"] = ("pic9.png", _png(9))
    images["image5"] = ("copy.png", _png(0))  # the same picture as pic0.png
    r = await w.alice.slash(w.general, "train", name="zzspot", steps=4, **images)
    assert "accepted" in r.response.content and "Skipped" in r.response.content, r.response.content
    assert "notes.png" in r.response.content and "the same picture as pic0.png" in r.response.content


async def test_one_training_per_member_and_names_are_not_reused(world: World) -> None:
    w = world
    first = await w.alice.slash(w.general, "train", name="zzlong", steps=3000, **_images(3))
    assert "accepted" in first.response.content
    again = await w.alice.slash(w.general, "train", name="zzother", steps=4, **_images(3))
    assert again.response.ephemeral and "you already have a training" in again.response.content
    same = await w.mod.slash(w.general, "train", name="zzlong", steps=4, **_images(3))
    assert same.response.ephemeral and "'zzlong' is being trained here already" in same.response.content


async def test_the_owner_or_a_moderator_cancels_others_cannot(world: World) -> None:
    w = world
    await w.alice.slash(w.general, "train", name="zzlong", steps=3000, **_images(3))
    await _until(w, lambda: bool(_said(w, "step ")))
    [message] = _said(w, "Training an embedding **zzlong**")
    denied = await w.bob.click(message, custom_id="atelier:train:1:cancel")
    assert denied.response.ephemeral and "only the member who started this training" in denied.response.content
    done = await w.mod.click(message, custom_id="atelier:train:1:cancel")
    assert done.response.ephemeral and "Cancelling training #1" in done.response.content
    await _until(w, lambda: bool(_said(w, "cancelled at step")))
    job = await w.jobs().get(1)
    assert job is not None and job.state == CANCELLED and job.payload["cancelled_by"] == w.mod.id
    assert not (w.settings.path(w.settings.paths.data) / "training" / "jobs" / "1").exists()
    assert not _said(w, "cancelled at step")[0].components  # the button goes with the training


async def test_trainings_beyond_the_limit_wait_their_turn(world: World) -> None:
    w = world  # training.max_running = 1
    await w.alice.slash(w.general, "train", name="zzfirst", steps=20, **_images(3))
    second = await w.mod.slash(w.general, "train", name="zzsecond", steps=4, **_images(3))
    assert "accepted" in second.response.content
    assert _said(w, "**zzsecond** is queued: 1 ahead of it")
    await _until(w, lambda: len(_said(w, "trained a new embedding")) == 2)
    order = [m.content for m in _said(w, "trained a new embedding")]
    assert "zzfirst" in order[0] and "zzsecond" in order[1]


async def test_context_menu_trains_from_a_message_with_its_text_as_captions(world: World) -> None:
    w = world
    posted = await w.alice.send(w.general, "a spotted square", attachments=[(f"p{i}.png", _png(i)) for i in range(3)])
    shown = await w.alice.context_menu(w.general, "Train from these images", posted)
    assert shown.modal is not None, shown.response
    done = await w.alice.submit_modal(shown, {"name": "zzmenu", "kind": ["embedding"], "what": ["plain"], "steps": "4",
                                          "advanced": "vectors=2 init=square"})
    assert done.response.ephemeral and "Training #1 accepted" in done.response.content, done.response.content
    await _until(w, lambda: bool(_said(w, "trained a new embedding")))
    job = await w.jobs().get(1)
    assert job is not None and job.request.vectors == 2 and job.request.init_text == "square"
    assert job.request.template_set == "plain"
    assert job.payload["source"].endswith(f"/{posted.id}")
    few = await w.alice.send(w.general, "two only", attachments=[(f"q{i}.png", _png(i)) for i in range(2)])
    refused = await w.alice.context_menu(w.general, "Train from these images", few)
    assert refused.response.ephemeral and "has 2 image(s)" in refused.response.content


async def test_context_menu_gathers_the_members_picture_messages_in_a_row(world: World) -> None:
    """More than 10 pictures: the last message of a run of the member's picture messages brings the whole run."""
    w = world
    await w.alice.send(w.general, "an older one", attachments=[("old.png", _png(90))])
    await w.bob.send(w.general, "nice!")  # someone else speaks: the run starts after this
    colours = {"red": 5, "blue": 4, "green": 3}
    posted = []
    for k, (colour, count) in enumerate(colours.items()):
        posted.append(await w.alice.send(w.general, f"a {colour} square",
                                         attachments=[(f"{colour}{i}.png", _png(10 * k + i)) for i in range(count)]))
    shown = await w.alice.context_menu(w.general, "Train from these images", posted[-1])
    assert shown.modal is not None, shown.response
    done = await w.alice.submit_modal(shown, {"name": "zzrun", "kind": ["embedding"], "what": ["plain"],
                                              "steps": "2", "advanced": ""})
    assert "from 12 images" in done.response.content, done.response.content
    images = load_images(w.bot.training.folder(1) / "images")
    assert [i.caption for i in images] == [f"a {c} square" for c, n in colours.items() for _ in range(n)]
    await _until(w, lambda: bool(_said(w, "trained a new embedding")))
    # From the middle of the run: that message and the ones before it, not the later one.
    middle = await w.alice.context_menu(w.general, "Train from these images", posted[1])
    assert middle.modal is not None


class _Message:
    """What :func:`picture_run` reads of a message."""

    def __init__(self, mid: int, author: int, pictures: int, minute: float, channel: Any) -> None:
        self.id, self.author, self.channel = mid, SimpleNamespace(id=author), channel
        self.attachments = [SimpleNamespace(filename=f"{mid}-{i}.png", content_type="image/png")
                            for i in range(pictures)]
        self.created_at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=minute)


class _Channel:
    def __init__(self, forbidden: bool = False) -> None:
        self.messages: list[_Message] = []
        self.forbidden = forbidden

    def add(self, author: int, pictures: int, minute: float) -> _Message:
        self.messages.append(_Message(len(self.messages), author, pictures, minute, self))
        return self.messages[-1]

    async def history(self, limit: int, before: _Message) -> AsyncIterator[_Message]:
        if self.forbidden:
            raise discord.Forbidden(SimpleNamespace(status=403, reason="Forbidden"), "Missing Access")
        for message in [m for m in self.messages if m.id < before.id][::-1][:limit]:
            yield message


async def test_a_picture_run_stops_at_a_gap_a_text_message_or_fifty_images() -> None:
    channel = _Channel()
    channel.add(1, 3, 0)
    gap = channel.add(1, 3, 1)
    late = channel.add(1, 2, 1 + RUN_GAP_S / 60 + 1)  # a pause longer than RUN_GAP_S before it
    last = channel.add(1, 2, RUN_GAP_S / 60 + 3)
    assert await picture_run(last) == [late, last]
    channel.add(1, 0, RUN_GAP_S / 60 + 4)  # a text-only message ends a run
    after_text = channel.add(1, 4, RUN_GAP_S / 60 + 5)
    assert await picture_run(after_text) == [after_text]
    assert await picture_run(gap) == channel.messages[:2]

    many = _Channel()
    for minute in range(8):
        many.add(7, 10, minute)
    run = await picture_run(many.messages[-1])
    assert run == many.messages[-5:]  # 50 images: the next message would pass the limit

    blind = _Channel(forbidden=True)
    blind.add(1, 3, 0)
    alone = blind.add(1, 3, 1)
    assert await picture_run(alone) == [alone]  # no Read Message History: the one message


async def test_a_training_resumes_from_its_checkpoint_after_a_restart(world: World) -> None:
    w = world
    await w.alice.slash(w.general, "train", name="zzresume", steps=400, **_images(3))
    checkpoint = w.settings.path(w.settings.paths.data) / "training" / "jobs" / "1" / "checkpoint" / "state.safetensors"
    await _until(w, checkpoint.is_file)
    await w.restart()
    await _until(w, lambda: bool(_said(w, "resumed from step")))
    assert "**zzresume**" in _said(w, "resumed from step")[0].content
    await _until(w, lambda: bool(_said(w, "trained a new embedding")), timeout=120)
    job = await w.jobs().get(1)
    assert job is not None and job.state == DONE and job.payload["step"] == 400


async def test_a_trained_style_downloads_as_a1111_pt_and_safetensors(world: World) -> None:
    import torch

    from engine.adapters.compat import read_adapter

    w = world
    await w.alice.slash(w.general, "train", name="zzspot", steps=3, vectors=2, **_images(3))
    await _until(w, lambda: bool(_said(w, "trained a new embedding")))
    pt = await w.bob.slash(w.general, "styles download", name="zzspot")
    assert pt.response.ephemeral and pt.response.attachments[0].filename == "zzspot.pt"
    data = await pt.response.attachments[0].read()
    a1111 = torch.load(io.BytesIO(data), weights_only=True)  # loads without unpickling code, as A1111 does
    assert a1111["string_to_param"]["*"].shape == (2, 32) and a1111["step"] == 3
    st = await w.bob.slash(w.general, "styles download", name="zzspot", format="safetensors")
    kind, embedding = read_adapter(await st.response.attachments[0].read(), name="zzspot")
    assert kind == "embedding" and torch.equal(embedding.vectors, a1111["string_to_param"]["*"])


async def test_the_guild_storage_cap_stops_new_trainings(world: World) -> None:
    w = world
    await w.alice.slash(w.general, "train", name="zzspot", steps=3, **_images(3))
    await _until(w, lambda: bool(_said(w, "trained a new embedding")))
    [style] = await AdapterStore(w.bot.db).for_guild(GUILD_ID)
    path = w.settings.path(w.settings.paths.data) / "adapters" / style.file
    with path.open("ab") as f:  # as if the guild had a big hypernetwork
        f.write(b"\0" * (2 * 2**20))
    await w.bot.settings_store.update_guild(GUILD_ID, storage_mb=2)
    r = await w.alice.slash(w.general, "train", name="zzmore", steps=3, **_images(3))
    assert r.response.ephemeral and "this server's styles take 2 MB of its 2 MB" in r.response.content
    await w.bot.settings_store.update_guild(GUILD_ID, storage_mb=10)
    r = await w.alice.slash(w.general, "train", name="zzmore", steps=3, **_images(3))
    assert "accepted" in r.response.content


async def test_a_name_taken_while_training_is_reported_and_the_files_kept(world: World) -> None:
    w = world
    await w.alice.slash(w.general, "train", name="zzclash", steps=40, **_images(3))
    await _until(w, lambda: bool(_said(w, "step ")))
    await AdapterStore(w.bot.db).add("embedding", "zzclash", guild_id=GUILD_ID, owner_id=w.mod.id,
                                     file="elsewhere.pt", sha256="0" * 64)  # imported meanwhile
    await _until(w, lambda: bool(_said(w, "could not be finished")))
    [message] = _said(w, "could not be finished")
    assert "'zzclash' already exists on this server" in message.content
    job = await w.jobs().get(1)
    assert job is not None and job.state == "failed"
    assert (w.settings.path(w.settings.paths.data) / "training" / "jobs" / "1" / "zzclash.safetensors").is_file()
