"""``/settings``: a server's own rules over the ``[guild]`` defaults of config.toml — the channels the bot draws
in and the words it refuses. Hidden from members without Manage Server (and checked again at run time)."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.app import AtelierBot
from bot.config import GuildSettings
from bot.render import clip

MAX_BANNED = 200
MAX_WORD = 64


def describe(settings: GuildSettings) -> str:
    channels = ", ".join(f"<#{c}>" for c in settings.channels) or "every channel"
    banned = ", ".join(f"`{w}`" for w in settings.banned_words) or "none"

    def roles(ids: list[int]) -> str:
        return ", ".join(f"<@&{r}>" for r in ids) or "Manage Server only"

    return clip("\n".join([
        f"**Channels:** {channels}",
        f"**Banned words:** {banned}",
        f"**May train:** {roles(settings.train_roles)}",
        f"**May import styles:** {roles(settings.import_roles)}",
        f"**May delete styles:** {roles(settings.delete_roles)}",
        f"**Limits:** {settings.max_count or 'the global limit'} image(s) per request, "
        f"{settings.max_steps or 'the global limit'} steps",
    ]), 2000)


@app_commands.guild_only()
@app_commands.default_permissions(manage_guild=True)
class Settings(commands.GroupCog, group_name="settings", group_description="This server's Atelier rules"):
    def __init__(self, bot: AtelierBot) -> None:
        self.bot = bot
        super().__init__()

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if not interaction.permissions.manage_guild:
            await interaction.response.send_message("🔒 Only members with Manage Server can change settings.",
                                                    ephemeral=True)
            return False
        return True

    @app_commands.command(name="show", description="Show this server's Atelier settings")
    async def show(self, interaction: discord.Interaction) -> None:
        current = await self.bot.settings_store.guild(interaction.guild_id)
        await interaction.response.send_message(describe(current), ephemeral=True,
                                                allowed_mentions=discord.AllowedMentions.none())

    @app_commands.command(name="channel", description="Allow or stop generation in a channel")
    @app_commands.describe(channel="The channel", allow="True: the bot draws there; false: not any more")
    async def channel(self, interaction: discord.Interaction, channel: discord.TextChannel, allow: bool) -> None:
        assert interaction.guild_id is not None
        current = await self.bot.settings_store.guild(interaction.guild_id)
        channels = [c for c in current.channels if c != channel.id] + ([channel.id] if allow else [])
        updated = await self.bot.settings_store.update_guild(interaction.guild_id, channels=channels)
        note = "" if updated.channels else "\n(No channel listed: the bot draws in every channel.)"
        await interaction.response.send_message(describe(updated) + note, ephemeral=True,
                                                allowed_mentions=discord.AllowedMentions.none())

    @app_commands.command(name="banned", description="Refuse prompts containing a word or phrase, or stop refusing")
    @app_commands.describe(word="A word or phrase (whole words, any case)", ban="True: refuse it; false: allow it")
    async def banned(self, interaction: discord.Interaction, word: app_commands.Range[str, 1, MAX_WORD],
                     ban: bool) -> None:
        assert interaction.guild_id is not None
        word = word.strip().casefold()
        current = await self.bot.settings_store.guild(interaction.guild_id)
        words = [w for w in current.banned_words if w.casefold() != word] + ([word] if ban else [])
        if len(words) > MAX_BANNED:
            await interaction.response.send_message(f"At most {MAX_BANNED} banned words; remove some first.",
                                                    ephemeral=True)
            return
        updated = await self.bot.settings_store.update_guild(interaction.guild_id, banned_words=words)
        await interaction.response.send_message(describe(updated), ephemeral=True,
                                                allowed_mentions=discord.AllowedMentions.none())


    @app_commands.command(name="limits", description="Tighter limits for this server (0 = the global limit)")
    @app_commands.describe(max_count="Images per request", max_steps="Steps per image")
    async def limits(self, interaction: discord.Interaction, max_count: app_commands.Range[int, 0, 16],
                     max_steps: app_commands.Range[int, 0, 1000]) -> None:
        assert interaction.guild_id is not None
        updated = await self.bot.settings_store.update_guild(interaction.guild_id, max_count=max_count,
                                                             max_steps=max_steps)
        await interaction.response.send_message(describe(updated), ephemeral=True,
                                                allowed_mentions=discord.AllowedMentions.none())


async def setup(bot: AtelierBot) -> None:
    await bot.add_cog(Settings(bot))
