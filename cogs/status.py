"""``/status``: what the bot is running, answered at once and only to the caller.

Why it exists: when generation fails, the first question is "which model, on what device, is it even
loaded?". The answer is read from memory (no I/O, no engine call), so it always meets Discord's 3-second
deadline, even while the engine is busy rendering.
"""

from __future__ import annotations

import time

import discord
from discord import app_commands
from discord.ext import commands

from bot.app import AtelierBot, version

MAX_REASON = 400  # keep the reply far below Discord's 2000-character limit


def _uptime(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s"


def status_text(bot: AtelierBot, now: float | None = None) -> str:
    """The ``/status`` reply: version, model, device and dtype, generation availability, uptime."""
    lines = [f"**Atelier** {version()}"]
    engine = bot.engine
    if engine is not None and engine.ready:
        info = engine.info
        lines.append(f"Model: `{info.name}` ({info.family})")
        lines.append(f"Device: {info.device} · {info.dtype}")
    else:
        configured = bot.settings.model
        lines.append("Model: none loaded")
        lines.append(f"Device: {configured.device} · {configured.dtype} (configured)")
    if bot.generation_available:
        lines.append("Generation: available")
    else:
        reason = (bot.engine_error or "the engine is not running")[:MAX_REASON]
        lines.append(f"Generation: unavailable — {reason}")
    elapsed = (time.monotonic() if now is None else now) - bot.started_at
    lines.append(f"Uptime: {_uptime(elapsed)}")
    return "\n".join(lines)


class Status(commands.Cog):
    """Bot health for anyone who asks."""

    def __init__(self, bot: AtelierBot) -> None:
        self.bot = bot

    @app_commands.command(name="status", description="Show the loaded model, device and whether generation works")
    async def status(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(status_text(self.bot), ephemeral=True)


async def setup(bot: AtelierBot) -> None:
    await bot.add_cog(Status(bot))
