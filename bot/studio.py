"""The one path from an accepted request to a delivered result, shared by ``/imagine``, reactions, buttons and
the restart recovery: submit to the engine, record the row, follow the job, render progress, deliver.

Why one place: every entry point must behave the same — the queue position, throttled progress with a
preview, the 15-minute interaction window (after which results go to the channel with a mention), the PNGs
kept on disk with their infotext, the row that lets reactions work after a restart.

Where a result is shown is a :class:`Target`: the reply to an interaction (edited in place) or a message in a
channel. An interaction target that is too old, or whose token Discord no longer accepts, hands over to a
channel target mid-flight, so a long queue never loses a result.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import discord

from bot import render
from bot.store.generations import CANCELLED, FAILED, QUEUED, RUNNING, GenerationStore, ImageRow
from engine.images import next_output_path, save_png
from engine.queue.jobs import Cancelled, Event, Failed, Finished, JobHandle, Progress, Queued, Started

if TYPE_CHECKING:
    from bot.app import AtelierBot
    from engine.requests import GeneratedImage, GenerationRequest

log = logging.getLogger("atelier.studio")

# Discord error codes meaning "this interaction's token can no longer be used".
EXPIRED_TOKEN_CODES = {10015, 50027}


class Target:
    """Where a generation is shown; ``show`` edits the same message each time (sending it the first time)."""

    user: discord.abc.Snowflake  # a User/Member, or a bare Object for a member not in the cache

    async def show(self, content: str, *, embed: discord.Embed | None = None,
                   files: Sequence[discord.File] | None = (), view: discord.ui.View | None = None,
                   final: bool = False) -> discord.Message | None:
        """Show ``content``; ``files=None`` keeps the attachments the message has (an edit without new files)."""
        raise NotImplementedError


class ChannelTarget(Target):
    """A message in a channel, mentioning the member (so a late result still reaches them)."""

    def __init__(self, channel: discord.abc.Messageable, user: discord.abc.Snowflake, note: str = "") -> None:
        self.channel = channel
        self.user = user
        self.note = note
        self.message: discord.Message | None = None

    async def show(self, content: str, *, embed: discord.Embed | None = None,
                   files: Sequence[discord.File] | None = (), view: discord.ui.View | None = None,
                   final: bool = False) -> discord.Message | None:
        text = f"<@{self.user.id}> {self.note}{content}".strip()
        mentions = discord.AllowedMentions(users=[discord.Object(id=self.user.id)], everyone=False, roles=False)
        if self.message is not None and final:
            # The result as a new message: an edit does not notify, and a finished result should.
            old, self.message = self.message, None
            with contextlib.suppress(discord.HTTPException):
                await old.delete()
        if self.message is None:
            kwargs: dict[str, Any] = {"embed": embed, "files": list(files or ()), "allowed_mentions": mentions}
            if view is not None:
                kwargs["view"] = view
            self.message = await self.channel.send(text, **kwargs)
        else:
            kwargs = {"content": text, "embed": embed}
            if files is not None:
                kwargs["attachments"] = list(files)
            if view is not None:
                kwargs["view"] = view
            self.message = await self.message.edit(**kwargs)
        return self.message


class InteractionTarget(Target):
    """The (deferred) reply of an interaction; falls back to a :class:`ChannelTarget` when it expires."""

    def __init__(self, interaction: discord.Interaction, window_s: float,
                 clock: Callable[[], float] | None = None) -> None:
        self.interaction = interaction
        self.user = interaction.user
        self.window_s = window_s
        # The age is measured on our own monotonic clock from when we started answering (within a second of
        # Discord creating the interaction), not from the snowflake's timestamp: a host clock that is off by
        # minutes must not make us give up on (or keep editing) a reply too early or too late.
        self.clock = clock or (lambda: time.monotonic())
        self.started = self.clock()
        self.fallback: ChannelTarget | None = None

    def _expired(self) -> bool:
        return self.clock() - self.started > self.window_s

    async def show(self, content: str, *, embed: discord.Embed | None = None,
                   files: Sequence[discord.File] | None = (), view: discord.ui.View | None = None,
                   final: bool = False) -> discord.Message | None:
        if self.fallback is None and not self._expired():
            kwargs: dict[str, Any] = {"content": content, "embed": embed}
            if files is not None:
                kwargs["attachments"] = list(files)
            if view is not None:
                kwargs["view"] = view
            try:
                return await self.interaction.edit_original_response(**kwargs)
            except discord.HTTPException as exc:
                if exc.code not in EXPIRED_TOKEN_CODES and not isinstance(exc, discord.NotFound):
                    raise
                log.info("interaction %s expired (%s); continuing in its channel", self.interaction.id, exc.code)
            for f in files or ():  # the failed upload consumed the streams
                f.reset()
        if self.fallback is None:
            channel = self.interaction.channel
            if channel is None or not isinstance(channel, discord.abc.Messageable):
                raise RuntimeError("the interaction expired and its channel is unknown")
            self.fallback = ChannelTarget(channel, self.user, note="")
        return await self.fallback.show(content, embed=embed, files=files, view=view, final=final)


@dataclass
class Running:
    """A generation being followed: its row, its job handle, who asked."""

    generation_id: int
    handle: JobHandle
    user_id: int
    guild_id: int | None
    task: asyncio.Task[None] | None = None


class Studio:
    """Submits, records and delivers generations for the cogs (``bot.studio``)."""

    def __init__(self, bot: AtelierBot, view_factory: Callable[[int, int], discord.ui.View] | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.bot = bot
        self.view_factory = view_factory
        # Progress edits are throttled on this clock (the loop's by default; tests pass their own).
        self.clock = clock or (lambda: asyncio.get_running_loop().time())
        # How a follow task awaits the engine's next event (the worker thread resolves it). The identity here;
        # a test harness that must tell "waiting for the GPU" from "stuck" wraps it to declare the wait.
        self.await_event: Callable[[Awaitable[Event]], Awaitable[Event]] = lambda awaitable: awaitable
        self.running: dict[int, Running] = {}  # job id → running generation
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def generations(self) -> GenerationStore:
        assert self.bot.db is not None
        return GenerationStore(self.bot.db)

    async def start(self, request: GenerationRequest, *, user: discord.abc.Snowflake, guild_id: int | None,
                    channel_id: int | None, target: Target | Callable[[], Target], origin: str = "imagine",
                    parent_id: int | None = None) -> int:
        """Queue ``request`` and follow it; returns the generation row id.

        Raises the engine's refusals (``RequestError``, ``QueueFullError``, ``EngineNotReady``) *before*
        anything is recorded or shown, so the caller can answer ephemerally. ``target`` may be a factory,
        called only once the job is accepted (so a deferral happens only for accepted requests).
        """
        engine = self.bot.engine
        if engine is None or not self.bot.generation_available:
            from engine.service import EngineNotReady

            raise EngineNotReady(self.bot.engine_error or "generation is unavailable right now")
        handle = engine.submit(request, user_id=user.id, guild_id=guild_id)
        resolved = handle.job.request
        generation_id = await self.generations.create(resolved, user_id=user.id, guild_id=guild_id,
                                                      channel_id=channel_id, origin=origin, parent_id=parent_id)
        running = Running(generation_id, handle, user.id, guild_id)
        self.running[handle.id] = running
        try:
            chosen = target() if callable(target) and not isinstance(target, Target) else target
            if asyncio.iscoroutine(chosen):
                chosen = await chosen
        except BaseException:
            handle.cancel("the reply could not be started")
            self.running.pop(handle.id, None)
            await self.generations.set_status(generation_id, CANCELLED, "the reply could not be started")
            raise
        task = asyncio.create_task(self._follow(running, chosen), name=f"atelier-generation-{generation_id}")
        running.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return generation_id

    def _shutting_down(self) -> bool:
        is_closed = getattr(self.bot, "is_closed", None)
        return bool(is_closed and is_closed())

    def generation_of(self, job_id: int) -> Running | None:
        return self.running.get(job_id)

    async def _follow(self, running: Running, target: Target) -> None:
        handle, gid = running.handle, running.generation_id
        interval = self.bot.settings.discord.progress_interval_s
        last_text, last_at = "", -1e9
        events = handle.events()
        try:
            while True:
                try:
                    event = await self.await_event(anext(events))
                except StopAsyncIteration:
                    break
                if isinstance(event, Queued):
                    text = render.queued_text(event.position)
                    if text != last_text:
                        await target.show(text)
                        last_text, last_at = text, self.clock()
                elif isinstance(event, Started):
                    await self.generations.set_status(gid, RUNNING)
                    text = render.progress_text(0, 1)  # a state change: shown at once, not throttled
                    await target.show(text)
                    last_text, last_at = text, self.clock()
                elif isinstance(event, Progress):
                    text = render.progress_text(event.step, event.total)
                    if text != last_text and self.clock() - last_at >= interval and event.step < event.total:
                        files = [] if event.preview is None else [
                            render.preview_file(event.preview, self.bot.settings.display.scale)]
                        await target.show(text, files=files)
                        last_text, last_at = text, self.clock()
                elif isinstance(event, Finished):
                    await self._deliver(running, target, event.images)
                elif isinstance(event, Failed):
                    await self.generations.set_status(gid, FAILED, event.error)
                    await target.show(render.error_text(f"Generation #{gid} failed: {event.error}"), final=True)
                elif isinstance(event, Cancelled) and self._shutting_down():
                    # Not the member's doing: keep the row queued so the next start runs it again
                    # (``AtelierBot.recover_interrupted``), and say so.
                    await self.generations.set_status(gid, QUEUED, "interrupted by a shutdown")
                    await target.show(f"⏸️ The bot is restarting: generation #{gid} will run again when it is "
                                      "back.", final=True)
                elif isinstance(event, Cancelled):
                    await self.generations.set_status(gid, CANCELLED, event.reason)
                    await target.show(f"🚫 Generation #{gid} cancelled: {event.reason}", final=True)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("delivering generation #%d failed", gid)
            await self.generations.set_status(gid, FAILED, "the result could not be delivered")
        finally:
            await events.aclose()
            self.running.pop(handle.id, None)

    async def _deliver(self, running: Running, target: Target, images: list[GeneratedImage]) -> None:
        gid = running.generation_id
        settings = self.bot.settings
        limit = render.DEFAULT_UPLOAD_LIMIT
        interaction = getattr(target, "interaction", None)
        if interaction is not None and getattr(interaction, "attachment_size_limit", None):
            limit = int(interaction.attachment_size_limit)
        elif running.guild_id is not None and (guild := self.bot.get_guild(running.guild_id)) is not None:
            limit = int(guild.filesize_limit)
        outputs = settings.path(settings.paths.outputs) / "discord" / dt.date.today().isoformat()
        rows, attachments = await asyncio.to_thread(_save_and_encode, images, outputs, gid, limit,
                                                    settings.display.scale)
        await self.generations.finish(gid, rows)
        request = images[0].request
        model_name = self.bot.engine.info.name if self.bot.engine is not None and self.bot.engine.ready else "?"
        embed = render.result_embed(request, [r.seed for r in rows], user=target.user, generation_id=gid,
                                    model_name=model_name, reencoded=any(a.reencoded for a in attachments))
        view = self.view_factory(gid, len(rows)) if self.view_factory else None
        message = await target.show("", embed=embed, files=[a.file() for a in attachments], view=view, final=True)
        if message is not None:
            await self.generations.set_message(gid, message.id, message.channel.id)
            for emoji in render.reaction_emojis(len(rows)):
                try:
                    await message.add_reaction(emoji)
                except discord.HTTPException as exc:  # no Add Reactions permission: the buttons still work
                    log.info("could not add reactions to generation #%d: %s", gid, exc)
                    break

    async def close(self) -> None:
        """Wait briefly for deliveries in flight (the engine has already finished or cancelled their jobs)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=10)


def _save_and_encode(images: list[GeneratedImage], folder: Path, generation_id: int, limit: int,
                     scale: int) -> tuple[list[ImageRow], list[render.Attachment]]:
    """Off the loop: the full PNGs (with infotext) to disk, and the display attachments."""
    rows, attachments = [], []
    for image in images:
        path = save_png(image.image, next_output_path(folder, image.seed), image.infotext)
        rows.append(ImageRow(image.index, image.seed, image.subseed, str(path), image.infotext))
        attachments.append(render.attachment_for(image.image, image.infotext, f"atelier-{generation_id}-"
                                                 f"{image.index + 1}", limit, scale))
    return rows, attachments
