"""``/styles``: browse this server's and the global hypernetworks and embeddings, pick personal defaults, and (for
members allowed to) import, rename, delete; ``/styles-admin``: who may import and delete, and promotion to global.

Why two groups: import, rename and delete can be granted to roles (``/styles-admin roles``), so they must be
visible to every member and are checked at run time; Discord's own ``default_permissions`` would hide them from
exactly the members a role grant is for. What only managers and the bot's owners do lives in ``/styles-admin``,
hidden from members without Manage Server (and checked again at run time).

Every answer is ephemeral: browsing and personal settings are nobody else's business, and refusals say what to
change. Rows, files and engine registrations change together through :class:`bot.store.adapters.StyleLibrary`;
personal defaults are applied to ``/imagine`` by :func:`bot.compose.apply_styles`.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import io
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.app import AtelierBot
from bot.compose import MAX_STRENGTH, MIN_STRENGTH
from bot.errors import GenerationUnavailable, NotAllowed, user_error
from bot.permissions import Action, require
from bot.previews import make_preview
from bot.render import DESCRIPTION_LIMIT, EMBED_COLOUR, FIELD_LIMIT, clip
from bot.store.adapters import (
    GLOBAL,
    NAME_RULE,
    AdapterRow,
    AdapterStore,
    StyleLibrary,
    adapters_root,
    article,
    inspect_upload,
    style_library,
)
from bot.store.settings import HypernetChoice, StyleDefaults
from cogs.imagine import AUTOCOMPLETE_LIMIT, adapter_choices
from engine.adapters.compat import EXPORT_SUFFIX, ExportFormat, write_adapter
from engine.adapters.files import MAX_ADAPTER_BYTES
from engine.adapters.library import KINDS, AdapterEntry, AdapterLibrary, Kind, UnknownAdapterError
from engine.prompts.parser import is_valid_name
from engine.requests import RequestError

log = logging.getLogger("atelier.styles")

MAX_HYPERNETS = 5  # per member and guild: each one costs attention work on every step
MAX_EMBEDDINGS = 10  # per list (positive, negative): each one takes prompt tokens
PAGE_CHARS = DESCRIPTION_LIMIT - 300  # room for "(continued)" headers
PAGE_LINES = 40
KIND_CHOICES = [app_commands.Choice(name="hypernetwork", value="hypernetwork"),
                app_commands.Choice(name="embedding", value="embedding")]


# -- pure helpers (no Discord state) ---------------------------------------------------------------------------


def add_styles(current: StyleDefaults, *, hypernet: str | None = None, strength: float | None = None,
               embedding: str | None = None, negative: str | None = None) -> StyleDefaults:
    """``current`` with the given (already resolved) names added; a hypernetwork already there gets the new
    strength. Refusals name the option to change."""
    if not (hypernet or embedding or negative):
        raise RequestError("choose a hypernet, an embedding or a negative_embedding to add")
    if strength is not None and not hypernet:
        raise RequestError("strength: it sets the hypernet option's strength; choose a hypernet too")
    hypernets, embeddings, negatives = list(current.hypernetworks), list(current.embeddings), \
        list(current.negative_embeddings)
    if hypernet:
        value = 1.0 if strength is None else float(strength)
        if not MIN_STRENGTH <= value <= MAX_STRENGTH:
            raise RequestError(f"strength: must be between {MIN_STRENGTH:g} and {MAX_STRENGTH:g}, got {value:g}")
        at = next((i for i, h in enumerate(hypernets) if h.name.lower() == hypernet.lower()), None)
        if at is not None:
            hypernets[at] = HypernetChoice(hypernet, value)
        elif len(hypernets) >= MAX_HYPERNETS:
            raise RequestError(f"hypernet: you already use {MAX_HYPERNETS} hypernetworks; remove one with "
                               "`/styles clear what:<name>` first")
        else:
            hypernets.append(HypernetChoice(hypernet, value))
    for option, name, names in (("embedding", embedding, embeddings), ("negative_embedding", negative, negatives)):
        if not name or any(n.lower() == name.lower() for n in names):
            continue
        if len(names) >= MAX_EMBEDDINGS:
            raise RequestError(f"{option}: you already use {MAX_EMBEDDINGS}; remove one with "
                               "`/styles clear what:<name>` first")
        names.append(name)
    return StyleDefaults(tuple(hypernets), tuple(embeddings), tuple(negatives))


def remove_style(current: StyleDefaults, name: str) -> StyleDefaults:
    """``current`` without ``name`` (in any of the three lists); :class:`RequestError` when it is not there."""
    key = name.lower()
    updated = StyleDefaults(tuple(h for h in current.hypernetworks if h.name.lower() != key),
                            tuple(e for e in current.embeddings if e.lower() != key),
                            tuple(e for e in current.negative_embeddings if e.lower() != key))
    if updated == current:
        mine = ", ".join(style_names(current)) or "none"
        raise RequestError(f"what: you do not use {name!r}; your styles here: {mine}")
    return updated


def style_names(styles: StyleDefaults) -> list[str]:
    return list(dict.fromkeys([*(h.name for h in styles.hypernetworks), *styles.embeddings,
                               *styles.negative_embeddings]))


def describe_styles(styles: StyleDefaults) -> str:
    """A member's personal defaults, as ``/styles mine`` shows them."""
    if styles.empty:
        return "You have no personal styles on this server. Add one with `/styles use`."
    lines = ["**Your styles on this server** (added to every `/imagine` you run here):"]
    if styles.hypernetworks:
        lines.append("Hypernetworks: " + ", ".join(f"`{h.name}` (strength {h.strength:g})"
                                                    for h in styles.hypernetworks))
    if styles.embeddings:
        lines.append("Embeddings: " + ", ".join(f"`{e}`" for e in styles.embeddings))
    if styles.negative_embeddings:
        lines.append("Negative embeddings: " + ", ".join(f"`{e}`" for e in styles.negative_embeddings))
    return clip("\n".join(lines), 2000)


def paginate(sections: list[tuple[str, list[str]]], limit: int = PAGE_CHARS,
             max_lines: int = PAGE_LINES) -> list[str]:
    """Sections of lines cut into pages of at most ``limit`` characters and ``max_lines`` lines; a section that
    continues on the next page repeats its title."""
    pages: list[str] = []
    text, lines, open_title = "", 0, None
    for title, items in sections:
        for item in items:
            item = clip(item, 200)
            header = "" if open_title == title else ("\n" if text else "") + f"**{title}**\n"
            if text and (len(text) + len(header) + len(item) + 1 > limit or lines >= max_lines):
                pages.append(text.rstrip())
                text, lines = "", 0
                header = f"**{title}**{' (continued)' if open_title == title else ''}\n"
            text += header + item + "\n"
            lines += 1
            open_title = title
    if text:
        pages.append(text.rstrip())
    return pages


def _kind_title(kind: Kind, scope: str) -> str:
    plural = "Hypernetworks" if kind == "hypernetwork" else "Embeddings"
    return f"{plural} on this server" if scope != GLOBAL else f"Global {plural.lower()}"


def _followed(count: int, what: str) -> str:
    """The tail of a rename/delete reply: how many members' saved defaults changed with it."""
    if not count:
        return ""
    return f" Saved defaults of {count} member{'s' if count != 1 else ''} {what}."


def _row_line(row: AdapterRow) -> str:
    creator = f"<@{row.owner_id}>" if row.owner_id else "—"
    return f"**{row.name}** · {creator} · {row.date}"


# -- the cog ---------------------------------------------------------------------------------------------------


async def _send(interaction: discord.Interaction, content: str | None = None, *,
                embed: discord.Embed | None = None, file: discord.File | None = None) -> None:
    """An ephemeral answer: the (deferred) reply when there is one, else the response."""
    kwargs: dict[str, Any] = {"allowed_mentions": discord.AllowedMentions.none()}
    if embed is not None:
        kwargs["embed"] = embed
    if interaction.response.is_done():
        if file is not None:
            kwargs["attachments"] = [file]
        await interaction.edit_original_response(content=content, **kwargs)
    else:
        if file is not None:
            kwargs["file"] = file
        await interaction.response.send_message(content, ephemeral=True, **kwargs)


@contextlib.asynccontextmanager
async def answering(interaction: discord.Interaction) -> AsyncIterator[None]:
    """Member-fixable failures become an ephemeral line (:func:`bot.errors.user_error`); bugs propagate."""
    try:
        yield
    except Exception as exc:
        message = user_error(exc)
        if message is None:
            raise
        await _send(interaction, message)


class Styles(commands.Cog):
    """Styles: browse, personal defaults, import and curation."""

    styles = app_commands.Group(name="styles", description="Hypernetworks and embeddings: browse them and pick your "
                                "own defaults", guild_only=True)
    admin = app_commands.Group(name="styles-admin", description="Who may import and delete styles; promote a "
                               "style to every server", guild_only=True,
                               default_permissions=discord.Permissions(manage_guild=True))

    def __init__(self, bot: AtelierBot) -> None:
        self.bot = bot
        self.previews: set[asyncio.Task[None]] = set()  # running preview renders (tests await them)

    async def cog_unload(self) -> None:
        for task in self.previews:
            task.cancel()

    def start_preview(self, row: AdapterRow) -> None:
        """Render the style's before/after preview in the background; ``/styles info`` shows it when done."""
        prompt = self.bot.settings.generation.style_preview_prompt.strip()
        if not prompt or self.bot.engine is None:
            return
        task = asyncio.create_task(self._preview(row, prompt), name=f"preview-{row.id}")
        self.previews.add(task)
        task.add_done_callback(self.previews.discard)

    async def _preview(self, row: AdapterRow, prompt: str) -> None:
        root = adapters_root(self.bot.settings)
        try:
            assert self.bot.engine is not None
            path = await make_preview(self.bot.engine, row, root, prompt=prompt,
                                      steps=self.bot.settings.generation.steps,
                                      scale=self.bot.settings.display.scale)
        except Exception:  # a preview is a nicety: never let it take an import down
            log.exception("preview of %s %r failed", row.kind, row.name)
            return
        if await self.store.update_metadata(row.id, preview=path.relative_to(root).as_posix()) is None:
            path.unlink(missing_ok=True)  # deleted while it rendered

    # -- access to the bot's parts ----------------------------------------------------------------------------

    @property
    def store(self) -> AdapterStore:
        assert self.bot.db is not None
        return AdapterStore(self.bot.db)

    @property
    def styles_library(self) -> StyleLibrary:
        assert self.bot.db is not None
        return style_library(self.bot.db, self.bot.engine, self.bot.settings)

    def engine_library(self) -> AdapterLibrary:
        if self.bot.engine is None:
            raise GenerationUnavailable(self.bot.engine_error or "the engine is not running")
        return self.bot.engine.library

    async def is_owner(self, user: discord.abc.User) -> bool:
        """One of ``discord.owner_ids``, or the application's owner."""
        if user.id in self.bot.settings.discord.owner_ids:
            return True
        try:
            return await self.bot.is_owner(user)  # type: ignore[arg-type]
        except discord.HTTPException:
            return False

    async def require(self, interaction: discord.Interaction, action: Action) -> None:
        await require(self.bot.settings_store, interaction, action)

    def find_entry(self, name: str, kind: Kind | None, guild_id: int | None) -> AdapterEntry:
        """What ``name`` means in this guild (its own style over a global one), or the closest names."""
        library = self.engine_library()
        found, errors = [], []
        for k in [kind] if kind else KINDS:
            try:
                found.append(library.find(k, name, guild_id))
            except UnknownAdapterError as exc:
                errors.append(exc)
        if len(found) > 1:
            raise RequestError(f"kind: both an embedding and a hypernetwork are named {name!r}; choose the kind")
        if found:
            return found[0]
        if len(errors) == 1:
            raise errors[0]
        names = sorted({e.name for k in KINDS for e in library.entries(k, guild_id)})
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `/styles list` shows what there is"
        raise UnknownAdapterError(f"no style named {name!r} here{hint}")

    async def managed_row(self, interaction: discord.Interaction, name: str, kind: Kind | None) -> AdapterRow:
        """The stored style ``name`` that this member may change: this guild's own, or (bot owners) a global one."""
        rows = [r for r in await self.store.for_guild(interaction.guild_id, kind) if r.name.lower() == name.lower()]
        own = [r for r in rows if r.guild_id is not None]
        candidates = own or [r for r in rows if r.guild_id is None]
        if candidates and not own and not await self.is_owner(interaction.user):
            raise NotAllowed(f"{candidates[0].kind} {candidates[0].name!r} is global; only the bot's owners can "
                             "change it")
        if len(candidates) > 1:
            raise RequestError(f"kind: both an embedding and a hypernetwork are named {name!r}; choose the kind")
        if candidates:
            return candidates[0]
        library = self.bot.engine.library if self.bot.engine is not None else None
        kinds: list[Kind] = [kind] if kind else list(KINDS)
        if library is not None and any(e.name.lower() == name.lower() for k in kinds for e in library.entries(k, None)):
            raise RequestError(f"{name!r} is a file in the global folder; the bot's operator manages it on disk")
        names = [r.name for r in await self.store.for_guild(interaction.guild_id, kind)]
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `/styles list` shows this server's styles"
        raise UnknownAdapterError(f"no imported style named {name!r} here{hint}")

    async def follow_defaults(self, row: AdapterRow, new_name: str | None) -> int:
        """Members' saved defaults follow a rename or a delete, wherever the old name no longer means anything."""
        library = self.engine_library()

        def still_known(guild_id: int) -> bool:
            try:
                library.find(row.kind, row.name, guild_id or None)
            except UnknownAdapterError:
                return False
            return True

        return await self.bot.settings_store.rename_style(row.guild_id, row.kind, row.name, new_name,
                                                          still_known=still_known)

    # -- browsing ---------------------------------------------------------------------------------------------

    @styles.command(name="list", description="The styles this server can use: its own, then the global ones")
    @app_commands.describe(kind="Only hypernetworks or only embeddings", page="Which page, when there are many")
    @app_commands.choices(kind=KIND_CHOICES)
    async def list_(self, interaction: discord.Interaction, kind: str | None = None,
                    page: app_commands.Range[int, 1, 1000] = 1) -> None:
        async with answering(interaction):
            kinds: list[Kind] = [kind] if kind else list(KINDS)  # type: ignore[list-item]
            rows = await self.store.for_guild(interaction.guild_id, kind)  # type: ignore[arg-type]
            library = self.bot.engine.library if self.bot.engine is not None else None
            sections: list[tuple[str, list[str]]] = []
            for scope in ("guild", GLOBAL):
                for k in kinds:
                    mine = [r for r in rows if r.kind == k and r.scope == scope]
                    own = {r.name.lower() for r in rows if r.kind == k and r.scope != GLOBAL}
                    lines = [_row_line(r) + (" · this server's own is used here" if scope == GLOBAL
                                             and r.name.lower() in own else "") for r in mine]
                    if scope == GLOBAL and library is not None:
                        stored = {r.name.lower() for r in mine}
                        lines += [f"**{e.name}** · global folder" + (" · this server's own is used here"
                                                                     if e.name.lower() in own else "")
                                  for e in library.entries(k, None) if e.name.lower() not in stored]
                        lines.sort(key=lambda line: line.lower())
                    if lines:
                        sections.append((_kind_title(k, scope), lines))
            pages = paginate(sections)
            if not pages:
                await _send(interaction, "No styles yet. Members allowed to can add one with `/styles import`.")
                return
            if page > len(pages):
                raise RequestError(f"page: there {'is' if len(pages) == 1 else 'are'} only {len(pages)} "
                                   f"page{'s' * (len(pages) != 1)}")
            embed = discord.Embed(title="Styles", description=pages[page - 1], colour=EMBED_COLOUR)
            footer = "/styles info <name> for details · /styles use to make one yours"
            if len(pages) > 1:
                footer = f"Page {page}/{len(pages)} · /styles list page:{page % len(pages) + 1} · " + footer
            embed.set_footer(text=footer)
            await _send(interaction, embed=embed)

    @styles.command(name="info", description="Who made a style, when, and what it holds")
    @app_commands.describe(name="The style's name", kind="When an embedding and a hypernetwork share the name")
    @app_commands.choices(kind=KIND_CHOICES)
    async def info(self, interaction: discord.Interaction, name: str, kind: str | None = None) -> None:
        async with answering(interaction):
            entry = self.find_entry(name, kind, interaction.guild_id)  # type: ignore[arg-type]
            row = await self.store.get(entry.guild_id, entry.kind, entry.name)
            embed = discord.Embed(title=entry.name, colour=EMBED_COLOUR)
            embed.add_field(name="Kind", value=entry.kind)
            scope = "this server" if entry.guild_id is not None else ("global" if row else "global (folder)")
            embed.add_field(name="Scope", value=scope)
            file = None
            if row is not None:
                embed.add_field(name="Creator", value=f"<@{row.owner_id}>" if row.owner_id else "—")
                embed.add_field(name="Added", value=row.date)
                embed.add_field(name="SHA-256", value=f"`{row.sha256[:12]}`")
                details = str(row.metadata.get("summary") or "")
                if row.metadata.get("trained"):
                    meta = row.metadata
                    line = (f"{meta.get('steps')} steps on {meta.get('images')} images "
                            f"(final loss {meta.get('loss')}; job #{meta.get('job')})")
                    source = str(meta.get("source_message") or "")
                    if source.startswith("https://"):
                        line += f"\nfrom {source}"
                    embed.add_field(name="Trained here", value=clip(line, FIELD_LIMIT), inline=False)
                elif row.metadata.get("source"):
                    embed.add_field(name="File", value=clip(str(row.metadata["source"]), FIELD_LIMIT))
                preview = row.metadata.get("preview")
                if preview:
                    path = adapters_root(self.bot.settings) / str(preview)
                    if path.is_file():
                        file = discord.File(path, filename=f"preview{path.suffix}")
                        embed.set_image(url=f"attachment://preview{path.suffix}")
            else:
                embed.add_field(name="SHA-256", value=f"`{await asyncio.to_thread(lambda: entry.hash)}`")
                details = await asyncio.to_thread(_describe_entry, entry)
            if details:
                embed.description = clip(details, DESCRIPTION_LIMIT)
            await _send(interaction, embed=embed, file=file)

    @styles.command(name="download", description="Get a style's file: A1111 .pt (for the web UI) or safetensors")
    @app_commands.describe(name="The style", format="a1111: the .pt A1111 and most guides use; safetensors: "
                           "a safe format other tools read", kind="When an embedding and a hypernetwork share the name")
    @app_commands.choices(kind=KIND_CHOICES, format=[app_commands.Choice(name="A1111 .pt", value="a1111"),
                                                     app_commands.Choice(name="safetensors", value="safetensors")])
    async def download(self, interaction: discord.Interaction, name: str, format: str = "a1111",
                       kind: str | None = None) -> None:
        async with answering(interaction):
            entry = self.find_entry(name, kind, interaction.guild_id)  # type: ignore[arg-type]
            await interaction.response.defer(ephemeral=True, thinking=True)
            data = await asyncio.to_thread(_export, entry, format)  # type: ignore[arg-type]
            limit = int(getattr(interaction, "attachment_size_limit", 0) or 25 * 2**20)
            if len(data) > limit:
                raise RequestError(f"{entry.name}: the file is {len(data) / 2**20:.0f} MB, more than Discord's "
                                   f"{limit // 2**20} MB upload limit here; the bot's operator can export it with "
                                   f"`atelier adapters export {entry.name}`")
            filename = f"{entry.name}{EXPORT_SUFFIX[format]}"
            await _send(interaction, f"📦 {entry.kind} **{entry.name}** as {filename}",
                        file=discord.File(io.BytesIO(data), filename=filename))

    # -- personal defaults ------------------------------------------------------------------------------------

    @styles.command(name="use", description="Add a style to every image you make on this server")
    @app_commands.describe(hypernet="A hypernetwork to apply to all your images",
                           strength="The hypernetwork's strength (default 1)",
                           embedding="An embedding to add to all your prompts",
                           negative_embedding="An embedding to add to all your negative prompts")
    async def use(self, interaction: discord.Interaction, hypernet: str | None = None,
                  strength: app_commands.Range[float, -2.0, 2.0] | None = None, embedding: str | None = None,
                  negative_embedding: str | None = None) -> None:
        async with answering(interaction):
            library = self.engine_library()
            gid = interaction.guild_id
            # Canonical names (the library's spelling); unknown names fail here with the closest ones.
            hypernet = library.find("hypernetwork", hypernet, gid).name if hypernet else None
            embedding = library.find("embedding", embedding, gid).name if embedding else None
            negative = library.find("embedding", negative_embedding, gid).name if negative_embedding else None
            store = self.bot.settings_store
            current = await store.styles(interaction.user.id, gid)
            updated = add_styles(current, hypernet=hypernet, strength=strength, embedding=embedding,
                                 negative=negative)
            await store.set_styles(interaction.user.id, gid, updated)
            await _send(interaction, describe_styles(updated))

    @styles.command(name="clear", description="Stop using one of your styles, or all of them")
    @app_commands.describe(what="One style to remove; empty = all your styles on this server")
    async def clear(self, interaction: discord.Interaction, what: str | None = None) -> None:
        async with answering(interaction):
            store = self.bot.settings_store
            current = await store.styles(interaction.user.id, interaction.guild_id)
            updated = StyleDefaults() if not what else remove_style(current, what)
            await store.set_styles(interaction.user.id, interaction.guild_id, updated)
            await _send(interaction, describe_styles(updated))

    @styles.command(name="mine", description="The styles added to every image you make on this server")
    async def mine(self, interaction: discord.Interaction) -> None:
        async with answering(interaction):
            styles = await self.bot.settings_store.styles(interaction.user.id, interaction.guild_id)
            await _send(interaction, describe_styles(styles))

    # -- curation (role-checked at run time) ------------------------------------------------------------------

    @styles.command(name="import", description="Add an embedding or hypernetwork file to this server")
    @app_commands.describe(file="An A1111 embedding (.pt, .safetensors, PNG) or hypernetwork (.pt, .safetensors)",
                           name="Its name in prompts (default: the file's name)",
                           kind="Refuse the file unless it is of this kind")
    @app_commands.choices(kind=KIND_CHOICES)
    async def import_(self, interaction: discord.Interaction, file: discord.Attachment,
                      name: app_commands.Range[str, 1, 64] | None = None, kind: str | None = None) -> None:
        async with answering(interaction):
            await self.require(interaction, "import")
            engine = self.bot.engine
            if engine is None or not engine.ready:
                raise GenerationUnavailable(self.bot.engine_error or "the model is needed to check the file fits")
            chosen = name or Path(file.filename).stem
            if not is_valid_name(chosen):
                source = "" if name else " (from the file's name; give one with the name option)"
                raise RequestError(f"name {chosen!r}{source}: {NAME_RULE}")
            if file.size > MAX_ADAPTER_BYTES:
                raise RequestError(f"file: {file.size / 2**20:.0f} MB is larger than the "
                                   f"{MAX_ADAPTER_BYTES // 2**20} MB limit")
            # Downloading and reading a file (torch) can take longer than Discord's 3 seconds.
            await interaction.response.defer(ephemeral=True, thinking=True)
            data = await file.read()
            upload = await asyncio.to_thread(inspect_upload, data, file.filename, name=chosen,
                                             widths=engine.info.widths, kind=kind)  # type: ignore[arg-type]
            row = await self.styles_library.add(upload, name=chosen, guild_id=interaction.guild_id,
                                                owner_id=interaction.user.id)
            shadows = any(e.name.lower() == row.name.lower() and e.guild_id is None
                          for e in engine.library.entries(row.kind, None))
            how = (f"`/imagine hypernet:{row.name}` or `<hypernet:{row.name}:0.8>` in a prompt"
                   if row.kind == "hypernetwork" else f"write `{row.name}` in a prompt or a negative prompt")
            note = f"\nOn this server it is used instead of the global {row.kind} of that name." if shadows else ""
            await _send(interaction, clip(f"✅ Imported {article(row.kind)} **{row.name}** for this server: "
                                          f"{upload.summary}.\nUse it now: {how}.{note}", 2000))
            self.start_preview(row)
            log.info("guild %s: %s imported %s %r (%s)", interaction.guild_id, interaction.user.id, row.kind,
                     row.name, upload.metadata.get("source"))

    @styles.command(name="rename", description="Rename one of this server's styles")
    @app_commands.describe(name="The style", new_name="Its new name (letters, digits, _ and -)",
                           kind="When an embedding and a hypernetwork share the name")
    @app_commands.choices(kind=KIND_CHOICES)
    async def rename(self, interaction: discord.Interaction, name: str, new_name: app_commands.Range[str, 1, 64],
                     kind: str | None = None) -> None:
        async with answering(interaction):
            await self.require(interaction, "import")
            row = await self.managed_row(interaction, name, kind)  # type: ignore[arg-type]
            updated = await self.styles_library.rename(row, new_name)
            followed = await self.follow_defaults(row, updated.name)
            await _send(interaction, f"✏️ Renamed {row.kind} **{row.name}** to **{updated.name}**; the old name no "
                                     f"longer works in prompts.{_followed(followed, 'now use the new name')}")

    @styles.command(name="delete", description="Delete one of this server's styles")
    @app_commands.describe(name="The style", kind="When an embedding and a hypernetwork share the name")
    @app_commands.choices(kind=KIND_CHOICES)
    async def delete(self, interaction: discord.Interaction, name: str, kind: str | None = None) -> None:
        async with answering(interaction):
            await self.require(interaction, "delete")
            row = await self.managed_row(interaction, name, kind)  # type: ignore[arg-type]
            await self.styles_library.delete(row)
            followed = await self.follow_defaults(row, None)
            await _send(interaction, f"🗑️ Deleted {row.kind} **{row.name}**.{_followed(followed, 'no longer use it')}")
            log.info("guild %s: %s deleted %s %r", interaction.guild_id, interaction.user.id, row.kind, row.name)

    # -- admin ------------------------------------------------------------------------------------------------

    @admin.command(name="roles", description="Let a role train, import or delete styles, or stop letting it")
    @app_commands.describe(action="What the role may do", role="The role",
                           add="True: the role may; false: not any more")
    @app_commands.choices(action=[app_commands.Choice(name=a, value=a) for a in ("train", "import", "delete")])
    async def roles(self, interaction: discord.Interaction, action: str, role: discord.Role, add: bool) -> None:
        async with answering(interaction):
            if not (interaction.permissions.manage_guild or interaction.permissions.administrator):
                raise NotAllowed("only members with Manage Server can choose who may train, import and delete")
            assert interaction.guild_id is not None
            key = f"{action}_roles"
            current = await self.bot.settings_store.guild(interaction.guild_id)
            roles = [r for r in getattr(current, key) if r != role.id] + ([role.id] if add else [])
            updated = await self.bot.settings_store.update_guild(interaction.guild_id, **{key: roles})

            def who(ids: list[int]) -> str:
                return ", ".join(f"<@&{r}>" for r in ids) or "Manage Server only"

            await _send(interaction, "\n".join([
                f"**May train:** {who(updated.train_roles)}",
                f"**May import and rename styles:** {who(updated.import_roles)}",
                f"**May delete styles:** {who(updated.delete_roles)}",
                "(Members with Manage Server always may.)"]))

    @admin.command(name="promote", description="Bot owners: make one of this server's styles usable everywhere")
    @app_commands.describe(name="The style", kind="When an embedding and a hypernetwork share the name")
    @app_commands.choices(kind=KIND_CHOICES)
    async def promote(self, interaction: discord.Interaction, name: str, kind: str | None = None) -> None:
        async with answering(interaction):
            if not await self.is_owner(interaction.user):
                raise NotAllowed("only the bot's owners can make a style global")
            row = await self.managed_row(interaction, name, kind)  # type: ignore[arg-type]
            updated = await self.styles_library.promote(row)
            await _send(interaction, f"🌍 {updated.kind} **{updated.name}** is now global: every server can use it.")
            log.info("%s promoted %s %r from guild %s to global", interaction.user.id, row.kind, row.name,
                     row.guild_id)

    # -- autocomplete -----------------------------------------------------------------------------------------

    @use.autocomplete("hypernet")
    async def _use_hypernet(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return adapter_choices(self.bot, "hypernetwork", interaction.guild_id, current)

    @use.autocomplete("embedding")
    async def _use_embedding(self, interaction: discord.Interaction,
                             current: str) -> list[app_commands.Choice[str]]:
        return adapter_choices(self.bot, "embedding", interaction.guild_id, current)

    @use.autocomplete("negative_embedding")
    async def _use_negative(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return adapter_choices(self.bot, "embedding", interaction.guild_id, current)

    @info.autocomplete("name")
    @download.autocomplete("name")
    async def _info_name(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        both = adapter_choices(self.bot, "hypernetwork", interaction.guild_id, current) + \
            adapter_choices(self.bot, "embedding", interaction.guild_id, current)
        return _choices(sorted({c.value for c in both}, key=str.lower), current)

    @clear.autocomplete("what")
    async def _clear_what(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        styles = await self.bot.settings_store.styles(interaction.user.id, interaction.guild_id)
        return _choices(style_names(styles), current)

    @rename.autocomplete("name")
    @delete.autocomplete("name")
    @promote.autocomplete("name")
    async def _stored_name(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        rows = await self.store.for_guild(interaction.guild_id)
        return _choices(list(dict.fromkeys(r.name for r in rows if r.guild_id is not None)), current)


def _choices(names: list[str], current: str) -> list[app_commands.Choice[str]]:
    needle = current.casefold().strip()
    prefix = [n for n in names if n.casefold().startswith(needle)]
    inside = [n for n in names if needle in n.casefold() and n not in prefix]
    return [app_commands.Choice(name=n, value=n) for n in (prefix + inside)[:AUTOCOMPLETE_LIMIT]]


def _export(entry: AdapterEntry, fmt: ExportFormat) -> bytes:
    """The entry written in ``fmt`` (through a temporary file: the writers are atomic file writers)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = write_adapter(entry.kind, entry.load(), fmt, Path(folder) / f"export{EXPORT_SUFFIX[fmt]}")  # type: ignore
        return path.read_bytes()


def _describe_entry(entry: AdapterEntry) -> str:
    """What a folder file holds (read on demand, off the loop); an unreadable one says why."""
    from bot.cli_adapters import describe
    from engine.adapters.files import AdapterFileError

    try:
        return describe(entry.kind, entry.load())  # type: ignore[arg-type]
    except AdapterFileError as exc:
        return f"unusable: {exc}"


async def setup(bot: AtelierBot) -> None:
    await bot.add_cog(Styles(bot))

