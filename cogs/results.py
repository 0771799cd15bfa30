"""Acting on results: reactions (🔁 🎲 1️⃣–4️⃣ ℹ️ ❌) and the same actions as persistent buttons.

Everything is keyed by the generation's database row (reactions through the message id, buttons through
``custom_id = atelier:gen:<row>:<action>[:<image>]``), so both work on messages from before a restart. The
bot ignores its own reactions, and each member gets ``discord.reactions_per_minute`` actions per minute.
"""

from __future__ import annotations

import contextlib
import logging
import re
from typing import Any, ClassVar

import discord
from discord.ext import commands

from bot import render
from bot.app import AtelierBot
from bot.compose import rerun, variations
from bot.errors import NotAllowed, user_error
from bot.ratelimit import RateLimiter
from bot.store.generations import DELETED, DONE, Generation, GenerationStore
from bot.studio import ChannelTarget, InteractionTarget
from engine.requests import GenerationRequest

log = logging.getLogger("atelier.results")

RERUN, VARY, VARY_ONE, INFO, DELETE = "rerun", "vary", "one", "info", "delete"
EMOJI_ACTIONS: dict[str, tuple[str, int | None]] = {
    render.RERUN: (RERUN, None), render.VARIATIONS: (VARY, None), render.INFO: (INFO, None),
    render.DELETE: (DELETE, None), **{e: (VARY_ONE, i) for i, e in enumerate(render.NUMBER_EMOJI)},
}
NOTICE_SECONDS = 30  # channel notices for reaction users (reactions cannot answer ephemerally) fade after this


class GenerationButton(discord.ui.DynamicItem[discord.ui.Button[Any]],
                       template=r"atelier:gen:(?P<gid>\d+):(?P<action>[a-z]+)(?::(?P<index>\d+))?"):
    """A persistent button on a result; its custom_id carries everything needed to act after a restart."""

    LOOK: ClassVar[dict[str, tuple[str, str, discord.ButtonStyle]]] = {
        RERUN: ("Rerun", render.RERUN, discord.ButtonStyle.primary),
        VARY: ("Variations", render.VARIATIONS, discord.ButtonStyle.secondary),
        INFO: ("Parameters", render.INFO, discord.ButtonStyle.secondary),
        DELETE: ("Delete", render.DELETE, discord.ButtonStyle.danger),
    }

    def __init__(self, generation_id: int, action: str, index: int | None = None) -> None:
        if action == VARY_ONE:
            label, emoji, style = f"V{(index or 0) + 1}", None, discord.ButtonStyle.secondary
        else:
            label, emoji, style = self.LOOK[action]
        suffix = f":{index}" if index is not None else ""
        super().__init__(discord.ui.Button(label=label, emoji=emoji, style=style,
                                           custom_id=f"atelier:gen:{generation_id}:{action}{suffix}"))
        self.generation_id, self.action, self.index = generation_id, action, index

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button[Any],
                             match: re.Match[str]) -> GenerationButton:
        index = match["index"]
        return cls(int(match["gid"]), match["action"], int(index) if index is not None else None)

    async def callback(self, interaction: discord.Interaction) -> None:
        cog = interaction.client.get_cog("Results")  # type: ignore[attr-defined]
        if cog is None:
            await interaction.response.send_message("Results are unavailable right now.", ephemeral=True)
            return
        await cog.on_button(interaction, self.generation_id, self.action, self.index)


def result_view(generation_id: int, count: int) -> discord.ui.View:
    """The buttons under a result: rerun, variations, one V per image of a batch, parameters, delete."""
    view = discord.ui.View(timeout=None)
    view.add_item(GenerationButton(generation_id, RERUN))
    view.add_item(GenerationButton(generation_id, VARY))
    if count > 1:
        for i in range(min(count, len(render.NUMBER_EMOJI))):
            view.add_item(GenerationButton(generation_id, VARY_ONE, i))
    view.add_item(GenerationButton(generation_id, INFO))
    view.add_item(GenerationButton(generation_id, DELETE))
    return view


def may_delete(gen: Generation, user_id: int, permissions: discord.Permissions | None) -> bool:
    """The requester, or a moderator (Manage Messages in that channel)."""
    return user_id == gen.user_id or bool(permissions and permissions.manage_messages)


class Results(commands.Cog):
    """Reactions and buttons on generated results."""

    def __init__(self, bot: AtelierBot) -> None:
        self.bot = bot
        self.limiter = RateLimiter(bot.settings.discord.reactions_per_minute)

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(GenerationButton)
        if self.bot.studio is not None:
            self.bot.studio.view_factory = result_view

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(GenerationButton)
        if self.bot.studio is not None:
            self.bot.studio.view_factory = None

    @property
    def store(self) -> GenerationStore:
        assert self.bot.db is not None
        return GenerationStore(self.bot.db)

    def request_for(self, gen: Generation, action: str, index: int | None) -> GenerationRequest:
        strength = self.bot.settings.generation.variation_strength
        if action == RERUN:
            return rerun(gen.request)
        if action == VARY:
            return variations(gen.request, strength)
        seeds = [img.seed for img in gen.images]
        if index is None or not 0 <= index < len(seeds):
            raise NotAllowed(f"generation #{gen.id} has no image {0 if index is None else index + 1}")
        return variations(gen.request, strength, seed=seeds[index])

    # -- reactions -------------------------------------------------------------------------------------------

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        me = self.bot.user
        if me is None or payload.user_id == me.id:
            return
        action = EMOJI_ACTIONS.get(str(payload.emoji))
        if action is None:
            return
        gen = await self.store.by_message(payload.message_id)
        if gen is None or gen.status != DONE:
            return
        channel = self.bot.get_channel(payload.channel_id) or await self.bot.fetch_channel(payload.channel_id)
        if not isinstance(channel, discord.abc.Messageable):
            return
        user = payload.member or self.bot.get_user(payload.user_id) or await self.bot.fetch_user(payload.user_id)
        if getattr(user, "bot", False):
            return
        await self._forget_reaction(channel, payload, user)
        if not self.limiter.allow(user.id):
            wait = self.limiter.retry_after(user.id)
            await self._notice(channel, user, f"slow down: try again in {wait:.0f} s.")
            return
        name, index = action
        try:
            await self._act_from_reaction(gen, name, index, channel, user, payload)
        except Exception as exc:
            message = user_error(exc)
            if message is None:
                log.exception("reaction %s on generation #%d failed", payload.emoji, gen.id)
                message = "something went wrong; the operator can find the details in the log."
            await self._notice(channel, user, message)

    async def _act_from_reaction(self, gen: Generation, action: str, index: int | None,
                                 channel: discord.abc.Messageable, user: discord.abc.User,
                                 payload: discord.RawReactionActionEvent) -> None:
        assert self.bot.studio is not None
        if action == INFO:
            text = render.info_text(gen.request, [i.infotext for i in gen.images], gen.id)
            try:
                await user.send(text)
            except discord.HTTPException:
                await self._notice(channel, user, "I could not DM you the parameters (are your DMs closed?); "
                                                  "use the Parameters button instead.")
            return
        if action == DELETE:
            permissions = payload.member.guild_permissions if payload.member is not None else None
            if isinstance(channel, discord.abc.GuildChannel) and payload.member is not None:
                permissions = channel.permissions_for(payload.member)
            if not may_delete(gen, user.id, permissions):
                raise NotAllowed("only the member who asked for it or a moderator can delete a result")
            await self._delete(gen, channel)
            return
        request = self.request_for(gen, action, index)
        await self.bot.studio.start(request, user=user, guild_id=payload.guild_id, channel_id=payload.channel_id,
                                    target=ChannelTarget(channel, user), origin=action, parent_id=gen.id)

    async def _forget_reaction(self, channel: discord.abc.Messageable, payload: discord.RawReactionActionEvent,
                               user: discord.abc.User) -> None:
        """Remove the member's reaction so the same emoji can be used again (needs Manage Messages; optional)."""
        if payload.guild_id is None:
            return
        try:
            message = channel.get_partial_message(payload.message_id)  # type: ignore[attr-defined]
            await message.remove_reaction(payload.emoji, user)
        except (discord.HTTPException, AttributeError):
            pass

    async def _notice(self, channel: discord.abc.Messageable, user: discord.abc.User, text: str) -> None:
        try:
            await channel.send(f"{user.mention} {text}", delete_after=NOTICE_SECONDS,
                               allowed_mentions=discord.AllowedMentions(users=[user], everyone=False, roles=False))
        except discord.HTTPException:
            log.info("could not tell %s: %s", user, text)

    async def _delete(self, gen: Generation, channel: discord.abc.Messageable) -> None:
        if gen.message_id is not None:
            with contextlib.suppress(discord.NotFound):
                await channel.get_partial_message(gen.message_id).delete()  # type: ignore[attr-defined]
        await self.store.set_status(gen.id, DELETED)

    # -- buttons ---------------------------------------------------------------------------------------------

    async def on_button(self, interaction: discord.Interaction, generation_id: int, action: str,
                        index: int | None) -> None:
        user = interaction.user
        if not self.limiter.allow(user.id):
            wait = self.limiter.retry_after(user.id)
            await interaction.response.send_message(f"Slow down: try again in {wait:.0f} s.", ephemeral=True)
            return
        try:
            gen = await self.store.get(generation_id)
            if gen is None or gen.status not in (DONE,):
                raise NotAllowed(f"generation #{generation_id} is no longer available")
            if action == INFO:
                text = render.info_text(gen.request, [i.infotext for i in gen.images], gen.id)
                await interaction.response.send_message(text, ephemeral=True)
                return
            if action == DELETE:
                if not may_delete(gen, user.id, interaction.permissions):
                    raise NotAllowed("only the member who asked for it or a moderator can delete a result")
                await interaction.response.defer(ephemeral=True, thinking=True)
                channel = interaction.channel
                if gen.message_id is not None and interaction.message is not None \
                        and interaction.message.id == gen.message_id:
                    await interaction.message.delete()
                    await self.store.set_status(gen.id, DELETED)
                elif isinstance(channel, discord.abc.Messageable):
                    await self._delete(gen, channel)
                await interaction.followup.send(f"Deleted generation #{gen.id}.", ephemeral=True)
                return
            request = self.request_for(gen, action, index)
            window = self.bot.settings.discord.interaction_window_s

            async def defer() -> InteractionTarget:
                await interaction.response.defer(thinking=True)
                return InteractionTarget(interaction, window)

            assert self.bot.studio is not None
            await self.bot.studio.start(request, user=user, guild_id=interaction.guild_id,
                                        channel_id=interaction.channel_id, target=defer, origin=action,
                                        parent_id=gen.id)
        except Exception as exc:
            message = user_error(exc)
            if message is None:
                raise
            if interaction.response.is_done():
                await interaction.followup.send(message, ephemeral=True)
            else:
                await interaction.response.send_message(message, ephemeral=True)


async def setup(bot: AtelierBot) -> None:
    await bot.add_cog(Results(bot))
