"""Community training for the bot: quotas, the job row, the engine job, progress in Discord, the finished style.

The one path from an accepted ``/train`` (or "Train from these images") to a style every member of the guild can
use, and back again after a restart:

1. :meth:`TrainingService.start` checks what a member can fix *before* anything is recorded — the name, the
   options, one training per member, the guild's storage cap, the images (by content) — so refusals are
   ephemeral and lose nothing. It saves the prepared images under ``<data>/training/jobs/<id>/`` and records
   the ``jobs`` row; then the job runs, or waits its turn when ``training.max_running`` are running.
2. The engine runs it (``engine.train(TrainingSpec)``): in slices on the local worker thread at background
   priority, or on a Ray replica whose checkpoints and result come back to this machine (issue 8). Its events
   arrive here on the loop and become throttled edits of one progress message (step, loss, time left, the
   latest preview grid, a cancel button).
3. When it finishes, the adapter becomes a style through :class:`~bot.store.adapters.StyleLibrary` (creator,
   source message, steps and the final grid as its preview), usable by name at once, and the channel is told.
4. On start-up, :meth:`TrainingService.resume_all` rebuilds every unfinished row from its saved images and its
   last checkpoint, and says "resumed from step N" in its channel.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import shutil
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import discord
from PIL import Image

from bot.errors import GenerationUnavailable, NotAllowed
from bot.render import EMBED_COLOUR, clip
from bot.store.adapters import StyleLibrary, Upload, article, inspect_upload, style_library
from bot.store.training import CANCELLED, DONE, FAILED, QUEUED, RUNNING, TrainingRow, TrainingStore
from bot.studio import ChannelTarget, Target
from engine.requests import RequestError
from engine.training.images import TrainingImage, TrainingSet, prepare_training_set
from engine.training.job import (
    TrainCancelled,
    TrainEvent,
    TrainFailed,
    TrainFinished,
    TrainPaused,
    TrainPreview,
    TrainProgress,
)

if TYPE_CHECKING:
    from bot.app import AtelierBot
    from engine.training.request import TrainingRequest
    from engine.training.spec import TrainingHandle

log = logging.getLogger("atelier.training")

PREVIEW_NAME = "training.png"


@dataclass
class Active:
    """A training this process is running or following."""

    row: TrainingRow
    job: TrainingHandle | None = None  # None while queued
    target: Target | None = None
    cancelled_by: int | None = None
    task: asyncio.Task[None] | None = None
    shows_preview: bool = False  # the progress message carries a grid (a new message after a restart does not)


def _bar(step: int, total: int, width: int = 16) -> str:
    filled = round(width * step / max(total, 1))
    return "▰" * filled + "▱" * (width - filled)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def progress_text(request: TrainingRequest, step: int, total: int, loss: float | None, eta_s: float | None,
                  images: int, note: str = "") -> str:
    """The progress message (its target mentions the owner): what is trained, the step, the loss, the time left."""
    head = f"🧠 Training {article(request.kind)} **{request.name}** from {images} images"
    line = f"{_bar(step, total)} step {step}/{total}"
    if loss is not None and loss == loss:  # not NaN
        line += f" · loss {loss:.4f}"
    if eta_s is not None:
        line += f" · about {_duration(eta_s)} left"
    return clip(f"{head}{note}\n{line}", 2000)


def save_images(images: Sequence[TrainingImage], folder: Path) -> None:
    """The prepared images (already checked and resized) as PNGs plus their captions: what a resume trains on."""
    folder.mkdir(parents=True, exist_ok=True)
    index = []
    for i, item in enumerate(images):
        file = f"{i:03d}.png"
        item.image.save(folder / file, format="PNG")
        index.append({"file": file, "name": item.name, "caption": item.caption, "digest": item.pixels_sha256})
    (folder / "images.json").write_text(json.dumps(index), encoding="utf-8")


def load_images(folder: Path) -> list[TrainingImage]:
    index = json.loads((folder / "images.json").read_text(encoding="utf-8"))
    images = []
    for entry in index:
        with Image.open(folder / entry["file"]) as image:
            images.append(TrainingImage(entry["name"], image.convert("RGB"), entry["caption"], entry["digest"]))
    return images


def guild_storage_bytes(library: StyleLibrary, rows: Sequence[Any]) -> int:
    total = 0
    for row in rows:
        try:
            total += library.path(row).stat().st_size
        except OSError:
            continue
    return total


class TrainingService:
    """Starts, follows, cancels and resumes trainings for the cogs (``bot.training``)."""

    def __init__(self, bot: AtelierBot, view_factory: Callable[[int], discord.ui.View] | None = None) -> None:
        self.bot = bot
        self.view_factory = view_factory
        self.active: dict[int, Active] = {}  # job row id → training
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()  # quota checks and starts happen one at a time
        # How a follower awaits the job's next event (the worker thread sends it); a test harness that must tell
        # "waiting for the GPU" from "stuck" wraps it to declare the wait (as ``Studio.await_event``).
        self.await_event: Callable[[Awaitable[TrainEvent]], Awaitable[TrainEvent]] = lambda awaitable: awaitable

    # -- parts ------------------------------------------------------------------------------------------------

    @property
    def store(self) -> TrainingStore:
        assert self.bot.db is not None
        return TrainingStore(self.bot.db)

    @property
    def root(self) -> Path:
        return self.bot.settings.path(self.bot.settings.paths.data) / "training" / "jobs"

    def folder(self, job_id: int) -> Path:
        return self.root / str(job_id)

    def styles(self) -> StyleLibrary:
        assert self.bot.db is not None
        return style_library(self.bot.db, self.bot.engine, self.bot.settings)

    def _engine(self) -> Any:
        engine = self.bot.engine
        if engine is None or not self.bot.generation_available:
            raise GenerationUnavailable(self.bot.engine_error or "the model is not loaded")
        return engine

    # -- starting ---------------------------------------------------------------------------------------------

    async def check(self, request: TrainingRequest, *, owner_id: int, guild_id: int | None) -> None:
        """Everything about a request that needs no images: options, the name, the member's and guild's quotas."""
        self._engine()  # generation (and so training) unavailable: refused here, plainly
        settings = self.bot.settings
        request.check()
        if request.total_steps() > settings.training.max_steps:
            raise RequestError(f"steps: at most {settings.training.max_steps} on this bot, asked for "
                               f"{request.total_steps()}")
        mine = await self.store.active_for(owner_id)
        if mine:
            other = mine[0].request
            raise NotAllowed(f"you already have a training ({other.kind} **{other.name}**, job #{mine[0].id}); one "
                             "at a time per member: wait for it or cancel it with its button")
        styles = self.styles()
        if await styles.store.get(guild_id, request.kind, request.name) is not None:
            raise RequestError(f"name: this server already has {article(request.kind)} named {request.name!r}; "
                               "choose another name (or delete that one with `/styles delete`)")
        for row in await self.store.unfinished():
            r = row.request
            if row.guild_id == guild_id and r.kind == request.kind and r.name.lower() == request.name.lower():
                raise RequestError(f"name: {request.name!r} is being trained here already (job #{row.id})")
        cap = (await self.bot.settings_store.guild(guild_id)).storage_mb
        if cap and guild_id is not None:
            used = await asyncio.to_thread(guild_storage_bytes, styles, await styles.store.for_guild(guild_id))
            if used >= cap * 2**20:
                raise NotAllowed(f"this server's styles take {used / 2**20:.0f} MB of its {cap} MB; delete some "
                                 "with `/styles delete` (or ask the bot's operator for more) before training")

    async def prepare(self, uploads: Sequence[tuple[str, bytes, str]]) -> TrainingSet:
        """The uploads checked by content and resized to the model's size (off the loop); refusals name files."""
        size = self._engine().info.native_size
        return await asyncio.to_thread(prepare_training_set, uploads, size)

    async def start(self, request: TrainingRequest, images: TrainingSet, *, owner_id: int, guild_id: int | None,
                    channel_id: int | None, target: Target, source: str = "") -> TrainingRow:
        """Record and start (or queue) a checked request; returns its row. Call :meth:`check` first."""
        async with self._lock:
            await self.check(request, owner_id=owner_id, guild_id=guild_id)  # again: another start may have won
            row = await self.store.add(request, owner_id=owner_id, guild_id=guild_id, channel_id=channel_id,
                                       source=source, images=len(images.images), refused=images.refused)
            await asyncio.to_thread(save_images, images.images, self.folder(row.id) / "images")
            active = Active(row, target=target)
            self.active[row.id] = active
            await self._launch_or_queue(active)
        return row

    def _running_count(self) -> int:
        return sum(1 for a in self.active.values() if a.job is not None)

    async def _launch_or_queue(self, active: Active, *, resumed: bool = False) -> None:
        if self._running_count() >= self.bot.settings.training.max_running:
            ahead = sum(1 for a in self.active.values() if a.job is None and a.row.id < active.row.id)
            await self._show(active, f"⏳ Training {article(active.row.request.kind)} **{active.row.request.name}** "
                                     f"is queued: {ahead + self._running_count()} ahead of it.", view=True)
            return
        await self._launch(active, resumed=resumed)

    async def _launch(self, active: Active, *, resumed: bool = False) -> None:
        from engine.training.spec import TrainingSpec

        engine = self._engine()
        row, settings = active.row, self.bot.settings
        folder = self.folder(row.id)
        images = await asyncio.to_thread(load_images, folder / "images")
        spec = TrainingSpec(row.request, images, checkpoint_dir=folder / "checkpoint",
                            result_path=folder / f"{row.request.name}.safetensors",
                            checkpoint_every=settings.training.checkpoint_every, slice_s=settings.training.slice_s,
                            preview_every=settings.training.preview_every,
                            preview_steps=settings.training.preview_steps, preview_scale=settings.display.scale)
        job = engine.train(spec)
        active.job = job
        active.row = await self.store.update(row.id, RUNNING) or row
        task = asyncio.create_task(self._follow(active, resumed=resumed), name=f"atelier-training-{row.id}")
        active.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- following --------------------------------------------------------------------------------------------

    async def _show(self, active: Active, text: str, *, png: bytes | None = None, keep_image: bool = True,
                    view: bool = False, final: bool = False) -> None:
        if active.target is None:
            return
        embed, files = None, None if keep_image else []
        if png is not None:
            files = [discord.File(io.BytesIO(png), filename=PREVIEW_NAME)]
        if png is not None or (keep_image and active.shows_preview):
            embed = discord.Embed(colour=EMBED_COLOUR).set_image(url=f"attachment://{PREVIEW_NAME}")
        kwargs: dict[str, Any] = {"embed": embed, "files": files, "final": final}
        if view and self.view_factory is not None:
            kwargs["view"] = self.view_factory(active.row.id)
        elif not view:
            kwargs["view"] = discord.ui.View()  # no buttons once it is over
        try:
            message = await active.target.show(text, **kwargs)
        except discord.HTTPException as exc:
            log.warning("training #%d: progress message not updated: %s", active.row.id, exc)
            return
        active.shows_preview = png is not None or (keep_image and active.shows_preview)
        if message is not None and message.id != active.row.message_id:
            active.row = await self.store.update(active.row.id, message_id=message.id,
                                                 channel_id=message.channel.id) or active.row

    async def _follow(self, active: Active, *, resumed: bool) -> None:
        assert active.job is not None
        row, request = active.row, active.row.request
        images = int(row.payload.get("images", 0))
        interval = self.bot.settings.training.progress_interval_s
        loop = asyncio.get_running_loop()
        last_at = -1e9
        note = ""
        paused = False
        events = active.job.events()
        try:
            while True:
                try:
                    event = await self.await_event(anext(events))
                except StopAsyncIteration:
                    break
                if isinstance(event, TrainPaused):
                    paused = True
                    await self._show(active, f"⏸️ Training **{request.name}** paused at step {event.step}: "
                                             f"{event.reason}. It goes on from its last checkpoint when the "
                                             "cluster is back.", view=True)
                elif isinstance(event, TrainProgress):
                    if event.resumed_from is not None and (paused or (resumed and not note)):
                        why = "the GPU cluster came back" if paused else "a restart"
                        note = f" (resumed from step {event.resumed_from} after {why})"
                        paused, last_at = False, -1e9
                    if loop.time() - last_at >= interval:  # throttled: Discord edits and database writes
                        await self._show(active, progress_text(request, event.step, event.total,
                                                               event.loss, event.eta_s, images, note), view=True)
                        await self.store.update(row.id, step=event.step)
                        last_at = loop.time()
                elif isinstance(event, TrainPreview):
                    await self._show(active, progress_text(request, event.step, event.total or event.step,
                                                           event.loss, None, images, note), png=event.png,
                                     view=True)
                    last_at = loop.time()
                elif isinstance(event, TrainFinished):
                    await self._finished(active, event)
                elif isinstance(event, TrainFailed):
                    await self.store.update(row.id, FAILED, error=str(event.error))
                    await self._show(active, f"⚠️ Training **{request.name}** failed: {clip(str(event.error), 500)}")
                elif isinstance(event, TrainCancelled):  # only a member's cancel emits it (close() does not)
                    await self.store.update(row.id, CANCELLED, cancelled_by=active.cancelled_by, step=event.step)
                    await self._show(active, f"🚫 Training **{request.name}** cancelled at step {event.step} by "
                                             f"<@{active.cancelled_by}>.", keep_image=False)
                    await asyncio.to_thread(shutil.rmtree, self.folder(row.id), True)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("training #%d: following failed", row.id)
            await self.store.update(row.id, FAILED, error=f"the bot could not finish it: {exc}")
            reason = str(exc) if isinstance(exc, RequestError) else "an internal error (the operator's log says more)"
            await self._show(active, f"⚠️ Training **{request.name}** could not be finished: {clip(reason, 500)}. "
                                     f"Its files stay in the bot's `training/jobs/{row.id}` folder.")
        finally:
            await events.aclose()
            if not self.bot.is_closed() and self.active.get(row.id) is active:
                self.active.pop(row.id, None)
                await self._start_next()

    async def _finished(self, active: Active, event: TrainFinished) -> None:
        row, request = active.row, active.row.request
        engine = self._engine()
        data = await asyncio.to_thread(event.path.read_bytes)
        upload: Upload = await asyncio.to_thread(inspect_upload, data, event.path.name, name=request.name,
                                                 widths=engine.info.widths, kind=request.kind)
        upload.metadata.update(source="training", trained=True, job=row.id, steps=event.steps,
                               loss=round(event.loss, 5), images=row.payload.get("images"),
                               source_message=row.payload.get("source", ""), template=request.template_set)
        styles = self.styles()
        style = await styles.add(upload, name=request.name, guild_id=row.guild_id, owner_id=row.owner_id)
        if event.preview is not None:
            from bot.previews import preview_path
            from engine.adapters.files import write_atomically

            path = preview_path(styles.root, style.id)
            path.parent.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(write_atomically, path, lambda tmp: tmp.write_bytes(event.preview or b""))
            await styles.store.update_metadata(style.id, preview=path.relative_to(styles.root).as_posix())
        await self.store.update(row.id, DONE, style_id=style.id, step=event.steps)
        how = (f"`/imagine hypernet:{style.name}` or `<hypernet:{style.name}:0.8>` in a prompt"
               if style.kind == "hypernetwork" else f"write `{style.name}` in a prompt")
        await self._show(active, f"✅ Trained {article(style.kind)} **{style.name}** in {event.steps} steps "
                                 f"(final loss {event.loss:.4f}).", png=event.preview)
        channel_id = active.row.channel_id
        channel = self.bot.get_channel(channel_id) if channel_id else None
        if isinstance(channel, discord.abc.Messageable):
            files = [discord.File(io.BytesIO(event.preview), filename=PREVIEW_NAME)] if event.preview else []
            mentions = discord.AllowedMentions(users=[discord.Object(id=row.owner_id)], everyone=False, roles=False)
            try:
                await channel.send(f"🎉 <@{row.owner_id}> trained a new {style.kind} for this server: "
                                   f"**{style.name}**. Everyone can use it now: {how}.", files=files,
                                   allowed_mentions=mentions)
            except discord.HTTPException as exc:
                log.warning("training #%d: announcement failed: %s", row.id, exc)
        await asyncio.to_thread(shutil.rmtree, self.folder(row.id), True)
        log.info("training #%d: %s %r ready in guild %s", row.id, style.kind, style.name, row.guild_id)

    async def _start_next(self) -> None:
        if self.bot.is_closed():
            return
        waiting = sorted((a for a in self.active.values() if a.job is None), key=lambda a: a.row.id)
        for active in waiting:
            if self._running_count() >= self.bot.settings.training.max_running:
                return
            try:
                await self._launch(active, resumed=active.row.payload.get("step") is not None)
            except Exception as exc:
                log.exception("training #%d could not start", active.row.id)
                self.active.pop(active.row.id, None)
                await self.store.update(active.row.id, FAILED, error=str(exc))

    # -- cancelling -------------------------------------------------------------------------------------------

    async def cancel(self, job_id: int, by: int) -> TrainingRow:
        """Stop a training (the caller checked who may); a queued one never starts. Its files are removed."""
        active = self.active.get(job_id)
        row = await self.store.get(job_id)
        if row is None or row.state not in (QUEUED, RUNNING) or active is None:
            raise RequestError(f"training #{job_id} is not running any more")
        active.cancelled_by = by
        if active.job is not None:
            active.job.cancel()  # the follower records it when the event arrives
            return row
        self.active.pop(job_id, None)
        await self.store.update(job_id, CANCELLED, cancelled_by=by)
        await self._show(active, f"🚫 Training **{row.request.name}** cancelled before it started, by <@{by}>.")
        await asyncio.to_thread(shutil.rmtree, self.folder(job_id), True)
        return row

    # -- restarts ---------------------------------------------------------------------------------------------

    async def resume_all(self) -> int:
        """Start-up: every unfinished training continues from its last checkpoint (or waits its turn again)."""
        count = 0
        for row in await self.store.unfinished():
            if row.id in self.active:
                continue
            reason = None
            channel = self.bot.get_channel(row.channel_id) if row.channel_id else None
            if channel is None and row.channel_id:
                try:
                    channel = await self.bot.fetch_channel(row.channel_id)
                except discord.HTTPException:
                    channel = None
            if not (self.folder(row.id) / "images" / "images.json").is_file():
                reason = "its images are gone"
            elif not self.bot.generation_available:
                reason = "generation is unavailable"
            if reason is not None:
                await self.store.update(row.id, FAILED, error=f"interrupted by a restart; {reason}")
                log.info("training #%d not resumed: %s", row.id, reason)
                continue
            target = ChannelTarget(channel, discord.Object(id=row.owner_id)) if isinstance(
                channel, discord.abc.Messageable) else None
            active = Active(row, target=target)
            self.active[row.id] = active
            try:
                await self._launch_or_queue(active, resumed=True)
            except Exception as exc:
                self.active.pop(row.id, None)
                await self.store.update(row.id, FAILED, error=f"interrupted by a restart; could not resume: {exc}")
                log.exception("training #%d could not resume", row.id)
                continue
            count += 1
        if count:
            log.info("resumed %d training(s)", count)
        return count

    async def close(self) -> None:
        """Shutdown: followers stop; rows stay ``running`` so the next start resumes them from their checkpoints."""
        for active in list(self.active.values()):
            if active.job is not None and active.cancelled_by is None:
                active.job.stop()  # no more slices; not a member's cancel
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
        self.active.clear()

