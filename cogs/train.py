"""``/train`` and the message command "Train from these images": members teach the server a new embedding or
hypernetwork from pictures they post; the cancel button on the progress message.

Thin on purpose: options and attachments become a :class:`~engine.training.request.TrainingRequest` plus
``(file name, bytes, caption)`` uploads; :class:`bot.training.TrainingService` checks, records, runs and reports.
What a member can fix is answered ephemerally before anything is recorded: the permission, the options, the
quotas, then every refused image by name. The progress message itself is public in the channel, so the server
sees what is being learned, and it is a plain channel message (not the interaction's reply) because a training
outlives the 15 minutes an interaction can be edited.

Captions feed ``[filewords]``: the ``captions`` option (one for all, or one per image separated by ``|``), the
message's text for the context menu, and each attachment's alt text, which wins for its image.

More than 10 pictures: a slash command takes at most 10 attachment options and a message at most 10 files, so the
context menu gathers a *run*: the chosen message and the same member's picture messages right before it (no one
else's message, no text-only message and no gap over :data:`RUN_GAP_S` in between), up to 50 images. A member
posts the pictures in as many messages as needed and uses "Train from these images" on the last one.
"""

from __future__ import annotations

import logging
import re
import shlex
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.app import AtelierBot
from bot.errors import NotAllowed
from bot.permissions import moderates, require
from bot.studio import ChannelTarget
from bot.training import TrainingService
from cogs.styles import answering
from engine.requests import RequestError
from engine.training.embedding import MAX_VECTORS
from engine.training.images import MAX_FILE_BYTES, MAX_IMAGES, MIN_IMAGES
from engine.training.request import MAX_STEPS, TrainingRequest, parse_modules

log = logging.getLogger("atelier.train")

KIND_CHOICES = [app_commands.Choice(name="embedding (a thing, a character, a look, by name)", value="embedding"),
                app_commands.Choice(name="hypernetwork (a look applied to everything)", value="hypernetwork")]
WHAT_CHOICES = [app_commands.Choice(name="an object or character", value="object"),
                app_commands.Choice(name="a style", value="style"),
                app_commands.Choice(name="plain (the name and the caption only)", value="plain"),
                app_commands.Choice(name="captions as written (they contain [name])", value="caption")]
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif")
ADVANCED_KEYS = {"vectors", "init", "lr", "preview", "seed", "batch", "accumulation", "modules"}
RUN_GAP_S = 15 * 60  # a longer pause between two picture messages ends the run the context menu gathers


def captions_for(count: int, text: str) -> list[str]:
    """One caption per image: ``a|b|c`` gives each image its own, plain text is everyone's."""
    text = text.strip()
    if "|" not in text:
        return [text] * count
    parts = [p.strip() for p in text.split("|")]
    if len(parts) != count:
        raise RequestError(f"captions: {len(parts)} captions separated by | for {count} images; give one per image "
                           "or one for all")
    return parts


def caption_of(attachment: discord.Attachment, shared: str) -> str:
    """An attachment's alt text is its own caption and wins over the shared one (message text or option)."""
    return (attachment.description or "").strip() or shared


def parse_advanced(text: str) -> dict[str, str]:
    """``vectors=2 init="a red" lr=5e-3:200,1e-3`` → a dict; an unknown key or a missing ``=`` is named."""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise RequestError(f"advanced: {exc}") from None
    found: dict[str, str] = {}
    for word in words:
        key, sep, value = word.partition("=")
        key = key.strip().lower()
        if not sep or not key:
            raise RequestError(f"advanced: {word!r} is not key=value (keys: {', '.join(sorted(ADVANCED_KEYS))})")
        if key not in ADVANCED_KEYS:
            raise RequestError(f"advanced: unknown key {key!r} (keys: {', '.join(sorted(ADVANCED_KEYS))})")
        found[key] = value
    return found


def _int(options: dict[str, str], key: str, default: int) -> int:
    value = options.get(key)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise RequestError(f"{key}: a whole number, got {value!r}") from None


def request_from_advanced(kind: str, name: str, what: str | None, steps: int | None,
                          advanced: dict[str, str]) -> TrainingRequest:
    return TrainingRequest(kind=kind, name=name, what=what, steps=steps,  # type: ignore[arg-type]
                           modules=parse_modules(advanced.get("modules", "")),
                           lr=advanced.get("lr"), vectors=_int(advanced, "vectors", 1),
                           init_text=advanced.get("init", "*"), seed=_int(advanced, "seed", 0),
                           batch_size=_int(advanced, "batch", 1), grad_accumulation=_int(advanced, "accumulation", 1),
                           preview_prompt=advanced.get("preview", ""))


def image_attachments(message: discord.Message) -> list[discord.Attachment]:
    return [a for a in message.attachments if (a.content_type or "").split(";")[0] in IMAGE_TYPES
            or re.search(r"\.(png|jpe?g|webp|gif)$", a.filename, re.I)]


async def picture_run(message: discord.Message) -> list[discord.Message]:
    """``message`` and the same author's picture messages right before it, oldest first, up to
    :data:`MAX_IMAGES` images in all (see the module docstring). Without permission to read the channel's history
    the run is the one message."""
    run, count = [message], len(image_attachments(message))
    try:
        async for earlier in message.channel.history(limit=MAX_IMAGES, before=message):
            pictures = len(image_attachments(earlier))
            if earlier.author.id != message.author.id or not pictures or count + pictures > MAX_IMAGES:
                break
            if (run[0].created_at - earlier.created_at).total_seconds() > RUN_GAP_S:
                break
            run.insert(0, earlier)
            count += pictures
    except discord.HTTPException as exc:  # Forbidden (no Read Message History) or Discord trouble: one message
        log.info("picture run of message %s: history unavailable (%s)", message.id, exc)
    return run


def run_uploads(run: list[discord.Message]) -> tuple[list[discord.Attachment], list[str]]:
    """The run's images and their captions: each message's text captions its own images."""
    attachments: list[discord.Attachment] = []
    captions: list[str] = []
    for message in run:
        pictures = image_attachments(message)
        attachments += pictures
        captions += captions_for(len(pictures), message.content or "")
    return attachments, captions


class CancelTraining(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"atelier:train:(?P<job>\d+):cancel"):
    """The progress message's cancel button; works after a restart (the job id is in its custom id)."""

    def __init__(self, job_id: int) -> None:
        super().__init__(discord.ui.Button(label="Cancel training", emoji="🛑", style=discord.ButtonStyle.danger,
                                           custom_id=f"atelier:train:{job_id}:cancel"))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button[Any],
                             match: re.Match[str]) -> CancelTraining:
        return cls(int(match["job"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        cog = interaction.client.get_cog("Train")  # type: ignore[attr-defined]
        if cog is None:
            await interaction.response.send_message("Training is unavailable right now.", ephemeral=True)
            return
        await cog.cancel(interaction, self.job_id)


def cancel_view(job_id: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CancelTraining(job_id))
    return view


class TrainModal(discord.ui.Modal, title="Train from these images"):
    """What the context menu asks (a modal holds five inputs: the rarely changed options share one line)."""

    name: discord.ui.TextInput[Any] = discord.ui.TextInput(label="Name (how prompts will use it)", min_length=1,
                                                           max_length=64, placeholder="e.g. my-cat", custom_id="name")
    kind: discord.ui.Label[Any] = discord.ui.Label(text="Kind", component=discord.ui.Select(custom_id="kind", options=[
        discord.SelectOption(label="Embedding: a thing, a character or a look, by name", value="embedding",
                             default=True),
        discord.SelectOption(label="Hypernetwork: a look applied to every picture", value="hypernetwork")]))
    what: discord.ui.Label[Any] = discord.ui.Label(text="What the pictures show", component=discord.ui.Select(
        custom_id="what", options=[discord.SelectOption(label=c.name, value=c.value, default=c.value == "object")
                 for c in WHAT_CHOICES]))
    steps: discord.ui.TextInput[Any] = discord.ui.TextInput(label="Steps (empty: the default)", required=False,
                                                            max_length=6, placeholder="e.g. 1000", custom_id="steps")
    advanced: discord.ui.TextInput[Any] = discord.ui.TextInput(
        label="Advanced (optional)", required=False, max_length=400, custom_id="advanced",
        placeholder='vectors=2 init="a cat" lr=5e-3:200,1e-3 preview="a cat on grass"')

    def __init__(self, cog: Train, message: discord.Message, run: list[discord.Message] | None = None) -> None:
        super().__init__()
        self.cog, self.message = cog, message
        self.run = run or [message]

    async def on_submit(self, interaction: discord.Interaction) -> None:
        async with answering(interaction):
            steps_text = str(self.steps.value or "").strip()
            try:
                steps = int(steps_text) if steps_text else None
            except ValueError:
                raise RequestError(f"steps: a whole number, got {steps_text!r}") from None
            kind = self.kind.component.values[0] if self.kind.component.values else "embedding"  # type: ignore
            what = self.what.component.values[0] if self.what.component.values else None  # type: ignore
            request = request_from_advanced(kind, str(self.name.value).strip(), what, steps,
                                            parse_advanced(str(self.advanced.value or "")))
            attachments, captions = run_uploads(self.run)
            await self.cog.begin(interaction, request, attachments, captions, source=self.message.jump_url)


class Train(commands.Cog):
    """Community training: ``/train``, "Train from these images", cancel."""

    def __init__(self, bot: AtelierBot) -> None:
        self.bot = bot
        self.service = TrainingService(bot, view_factory=cancel_view)
        self.menu = app_commands.ContextMenu(name="Train from these images", callback=self.from_message)
        self.menu.guild_only = True

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(CancelTraining)
        self.bot.tree.add_command(self.menu)
        self.bot.training = self.service  # start-up resumes through it

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.menu.name, type=self.menu.type)
        self.bot.remove_dynamic_items(CancelTraining)
        await self.service.close()

    # -- the shared path --------------------------------------------------------------------------------------

    async def begin(self, interaction: discord.Interaction, request: TrainingRequest,
                    attachments: list[discord.Attachment], captions: list[str], *, source: str) -> None:
        """Check, download, validate, start; every refusal is an ephemeral line (see the module docstring)."""
        await require(self.bot.settings_store, interaction, "train")
        if interaction.guild_id is None:
            raise RequestError("training works in a server's channels, where the result can be shared")
        if len(attachments) < MIN_IMAGES:
            raise RequestError(f"{len(attachments)} image(s); training needs at least {MIN_IMAGES} (PNG, JPEG, "
                               "WEBP or GIF)")
        if len(attachments) > MAX_IMAGES:
            raise RequestError(f"{len(attachments)} images; at most {MAX_IMAGES} per training")
        too_big = [a.filename for a in attachments if a.size > MAX_FILE_BYTES]
        if too_big:
            raise RequestError(f"{', '.join(too_big)}: larger than {MAX_FILE_BYTES // 2**20} MB")
        await self.service.check(request, owner_id=interaction.user.id, guild_id=interaction.guild_id)
        await interaction.response.defer(ephemeral=True, thinking=True)
        uploads = [(a.filename, await a.read(), caption_of(a, caption))
                   for a, caption in zip(attachments, captions, strict=True)]
        images = await self.service.prepare(uploads)
        channel = interaction.channel
        if not isinstance(channel, discord.abc.Messageable):
            raise RequestError("this channel cannot show the training's progress; use a text channel")
        target = ChannelTarget(channel, interaction.user)
        row = await self.service.start(request, images, owner_id=interaction.user.id,
                                       guild_id=interaction.guild_id, channel_id=interaction.channel_id,
                                       target=target, source=source)
        skipped = f"\nSkipped:\n{images.report()}" if images.refused else ""
        where = f" Progress: {target.message.jump_url}" if target.message is not None else ""
        await interaction.edit_original_response(content=(
            f"✅ Training #{row.id} accepted: {request.kind} **{request.name}** from {len(images.images)} "
            f"images.{where}{skipped}")[:2000])
        log.info("guild %s: %s started training #%d (%s %r)", interaction.guild_id, interaction.user.id, row.id,
                 request.kind, request.name)

    # -- commands ---------------------------------------------------------------------------------------------

    @app_commands.command(name="train", description="Teach this server a new embedding or hypernetwork from "
                                                    "3-10 images")
    @app_commands.guild_only()
    @app_commands.describe(
        name="How prompts will use it (letters, digits, _ and -)", image1="A picture of it", image2="Another",
        image3="Another", kind="Embedding (by name in prompts) or hypernetwork (a look on every picture)",
        what="What the pictures show: picks the training sentences",
        captions="What the pictures show, in words (one for all, or one per image separated by |)",
        vectors=f"Embedding vectors per token (1-{MAX_VECTORS}; more learn more, take more of the prompt)",
        init="Words the embedding starts from (e.g. 'cat')", steps=f"Training steps (default 1000, max {MAX_STEPS})",
        lr="Learning rate or A1111 schedule, e.g. 5e-3:200, 1e-3", preview="The prompt of the preview grids")
    @app_commands.choices(kind=KIND_CHOICES, what=WHAT_CHOICES)
    async def train(self, interaction: discord.Interaction, name: app_commands.Range[str, 1, 64],
                    image1: discord.Attachment, image2: discord.Attachment, image3: discord.Attachment,
                    image4: discord.Attachment | None = None, image5: discord.Attachment | None = None,
                    image6: discord.Attachment | None = None, image7: discord.Attachment | None = None,
                    image8: discord.Attachment | None = None, image9: discord.Attachment | None = None,
                    image10: discord.Attachment | None = None, kind: str = "embedding", what: str | None = None,
                    captions: str = "", vectors: app_commands.Range[int, 1, MAX_VECTORS] = 1, init: str = "*",
                    steps: app_commands.Range[int, 1, MAX_STEPS] | None = None, lr: str | None = None,
                    preview: str = "") -> None:
        async with answering(interaction):
            attachments = [a for a in (image1, image2, image3, image4, image5, image6, image7, image8, image9,
                                       image10) if a is not None]
            request = TrainingRequest(kind=kind, name=name.strip(), what=what, steps=steps, lr=lr,  # type: ignore
                                      vectors=vectors, init_text=init, preview_prompt=preview)
            await self.begin(interaction, request, attachments, captions_for(len(attachments), captions),
                             source=f"/train by {interaction.user.id}")

    async def from_message(self, interaction: discord.Interaction, message: discord.Message) -> None:
        """The context menu: checks what it can at once, then asks the rest in a modal."""
        async with answering(interaction):
            await require(self.bot.settings_store, interaction, "train")
            run = await picture_run(message)
            count = len(run_uploads(run)[0])
            if count < MIN_IMAGES:
                where = "that message has" if len(run) == 1 else f"those {len(run)} messages have"
                raise RequestError(f"{where} {count} image(s); training needs at least {MIN_IMAGES}. Post them (in "
                                   "one message or several in a row), then use this on the last one")
            await interaction.response.send_modal(TrainModal(self, message, run))

    async def cancel(self, interaction: discord.Interaction, job_id: int) -> None:
        async with answering(interaction):
            row = await self.service.store.get(job_id)
            if row is None:
                raise RequestError(f"training #{job_id} is unknown")
            if interaction.user.id != row.owner_id and not moderates(interaction):
                raise NotAllowed("only the member who started this training or a moderator (Manage Messages) can "
                                 "cancel it")
            await interaction.response.defer(ephemeral=True, thinking=True)
            await self.service.cancel(job_id, interaction.user.id)
            await interaction.edit_original_response(content=f"🛑 Cancelling training #{job_id}.")


async def setup(bot: AtelierBot) -> None:
    await bot.add_cog(Train(bot))

