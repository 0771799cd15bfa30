"""``/imagine``: options → validated request → the studio (queue position, progress, delivery).

Thin on purpose: parsing rules live in :mod:`bot.compose`, the flow in :mod:`bot.studio`. The only Discord
decisions here: refusals are ephemeral and arrive before anything is public; an accepted request is deferred
at once (well inside Discord's 3-second deadline), and the deferred reply becomes the progress and the result.
"""

from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.app import AtelierBot
from bot.compose import ASPECTS, ImagineOptions, compose_request
from bot.errors import GenerationUnavailable, user_error
from bot.studio import InteractionTarget
from engine.adapters.library import Kind
from engine.samplers import SAMPLERS

log = logging.getLogger("atelier.imagine")
AUTOCOMPLETE_LIMIT = 25  # Discord shows at most 25 choices


def adapter_choices(bot: AtelierBot, kind: Kind, guild_id: int | None, current: str) -> list[app_commands.Choice[str]]:
    """Names ``guild_id`` can use, best matches first: prefix matches, then substring matches."""
    if bot.engine is None:
        return []
    needle = current.casefold().strip()
    names = [e.name for e in bot.engine.library.entries(kind, guild_id)]
    prefix = [n for n in names if n.casefold().startswith(needle)]
    inside = [n for n in names if needle in n.casefold() and n not in prefix]
    return [app_commands.Choice(name=n, value=n) for n in (prefix + inside)[:AUTOCOMPLETE_LIMIT]]


class Imagine(commands.Cog):
    """Generate images from a prompt."""

    def __init__(self, bot: AtelierBot) -> None:
        self.bot = bot

    @app_commands.command(name="imagine", description="Generate images from a prompt")
    @app_commands.describe(
        prompt="What to draw; A1111 syntax works: (emphasis:1.2), BREAK, <hypernet:name:0.8>, embedding names",
        negative="What to avoid",
        steps="Denoising steps",
        cfg="Guidance scale: how strictly to follow the prompt",
        seed="Seed for reproducible results; empty = random",
        size="WIDTHxHEIGHT, for example 512x768",
        aspect="Aspect ratio at the model's native pixel count",
        sampler="Sampler (A1111 names)",
        count="How many images",
        hypernet="A hypernetwork (style) to apply",
        strength="The hypernetwork's strength (default 1)",
        embedding="A textual-inversion embedding to add to the prompt",
    )
    @app_commands.choices(
        sampler=[app_commands.Choice(name=name, value=name) for name in list(SAMPLERS)[:25]],
        aspect=[app_commands.Choice(name=a, value=a) for a in ASPECTS],
    )
    async def imagine(self, interaction: discord.Interaction, prompt: app_commands.Range[str, 1, 2000],
                      negative: app_commands.Range[str, 0, 2000] | None = None,
                      steps: app_commands.Range[int, 1, 1000] | None = None,
                      cfg: app_commands.Range[float, 0.0, 30.0] | None = None,
                      seed: app_commands.Range[int, 0, 2**32 - 1] | None = None,
                      size: str | None = None, aspect: str | None = None, sampler: str | None = None,
                      count: app_commands.Range[int, 1, 16] | None = None, hypernet: str | None = None,
                      strength: app_commands.Range[float, -2.0, 2.0] | None = None,
                      embedding: str | None = None) -> None:
        options = ImagineOptions(prompt=prompt, negative=negative, steps=steps, cfg=cfg, seed=seed, size=size,
                                 aspect=aspect, sampler=sampler, count=count, hypernet=hypernet,
                                 strength=strength, embedding=embedding)
        await run_imagine(self.bot, interaction, options)

    @imagine.autocomplete("hypernet")
    async def _hypernet_names(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return adapter_choices(self.bot, "hypernetwork", interaction.guild_id, current)

    @imagine.autocomplete("embedding")
    async def _embedding_names(self, interaction: discord.Interaction,
                               current: str) -> list[app_commands.Choice[str]]:
        return adapter_choices(self.bot, "embedding", interaction.guild_id, current)


async def run_imagine(bot: AtelierBot, interaction: discord.Interaction, options: ImagineOptions) -> int | None:
    """Validate, submit, defer, follow. Returns the generation id, or None when refused (ephemerally)."""
    assert bot.studio is not None and bot.db is not None
    guild_id = interaction.guild_id
    try:
        guild = await bot.settings_store.guild(guild_id)
        if guild.channels and interaction.channel_id not in guild.channels:
            allowed = ", ".join(f"<#{c}>" for c in guild.channels)
            await interaction.response.send_message(f"I only draw in {allowed} on this server.", ephemeral=True)
            return None
        engine = bot.engine
        if engine is None or not bot.generation_available:
            raise GenerationUnavailable(bot.engine_error or "the engine is not running")
        if options.embedding:
            engine.library.find("embedding", options.embedding, guild_id)
        styles = await bot.settings_store.styles(interaction.user.id, guild_id)
        request = compose_request(options, defaults=bot.settings.generation, guild=guild, styles=styles,
                                  native=engine.info.native_size, guild_id=guild_id)

        async def defer() -> InteractionTarget:
            await interaction.response.defer(thinking=True)
            return InteractionTarget(interaction, bot.settings.discord.interaction_window_s)

        return await bot.studio.start(request, user=interaction.user, guild_id=guild_id,
                                      channel_id=interaction.channel_id, target=defer)
    except Exception as exc:
        message = user_error(exc)
        if message is None:
            raise
        if interaction.response.is_done():
            await interaction.followup.send(message, ephemeral=True)
        else:
            await interaction.response.send_message(message, ephemeral=True)
        return None


async def setup(bot: AtelierBot) -> None:
    await bot.add_cog(Imagine(bot))
