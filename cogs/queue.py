"""``/queue``: your jobs with their positions and cancel buttons; moderators can see and cancel everyone's.

Answered from memory (the engine's job list), ephemerally, so it is instant even while the GPU is busy.
Cancel buttons carry the engine's job id; after a restart those jobs no longer exist and the button says so.
"""

from __future__ import annotations

import re
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot import render
from bot.app import AtelierBot
from engine.queue.jobs import Job, JobState

MAX_LISTED = 20  # a message holds 25 buttons at most (5 rows of 5)


def is_moderator(interaction: discord.Interaction) -> bool:
    permissions = interaction.permissions
    return bool(permissions.manage_messages or permissions.administrator)


def job_line(job: Job, generation_id: int | None, mine: bool) -> str:
    prompt = render.clip(job.request.prompt.replace("\n", " "), 60)
    if job.state is JobState.RUNNING:
        status = f"running, {int(100 * job.steps_done / max(job.steps_total, 1))}%"
    else:
        status = "next" if job.position <= 1 else f"position {job.position}"
    owner = "" if mine else f" · <@{job.user_id}>"
    label = f"#{generation_id}" if generation_id is not None else f"job {job.id}"
    return f"**{label}** · {status} · {job.request.count} image(s){owner}\n> {prompt}"


class CancelButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"atelier:job:(?P<job>\d+):cancel"):
    def __init__(self, job_id: int, label: str) -> None:
        super().__init__(discord.ui.Button(label=f"Cancel {label}", style=discord.ButtonStyle.danger,
                                           custom_id=f"atelier:job:{job_id}:cancel"))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button[Any],
                             match: re.Match[str]) -> CancelButton:
        return cls(int(match["job"]), "")

    async def callback(self, interaction: discord.Interaction) -> None:
        bot: AtelierBot = interaction.client  # type: ignore[assignment]
        engine = bot.engine
        job = next((j for j in engine.jobs() if j.id == self.job_id), None) if engine is not None else None
        if job is None:
            await interaction.response.send_message("That job has already finished.", ephemeral=True)
            return
        if job.user_id != interaction.user.id and not is_moderator(interaction):
            await interaction.response.send_message("Only its owner or a moderator can cancel that job.",
                                                    ephemeral=True)
            return
        who = "its owner" if job.user_id == interaction.user.id else f"moderator {interaction.user.display_name}"
        assert engine is not None
        cancelled = engine.cancel(job, f"cancelled by {who}")
        await interaction.response.send_message("Cancelled." if cancelled else "That job has already finished.",
                                                ephemeral=True)


class Queue(commands.Cog):
    def __init__(self, bot: AtelierBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(CancelButton)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(CancelButton)

    @app_commands.command(name="queue", description="Your queued and running jobs (moderators: everyone's)")
    @app_commands.describe(everyone="Moderators: show every member's jobs")
    async def queue(self, interaction: discord.Interaction, everyone: bool = False) -> None:
        engine = self.bot.engine
        if engine is None or not engine.ready:
            await interaction.response.send_message("Generation is unavailable right now; see `/status`.",
                                                    ephemeral=True)
            return
        if everyone and not is_moderator(interaction):
            await interaction.response.send_message("Only moderators (Manage Messages) can see everyone's jobs.",
                                                    ephemeral=True)
            return
        jobs = engine.jobs(None if everyone else interaction.user.id)
        if everyone and interaction.guild_id is not None:
            jobs = [j for j in jobs if j.guild_id == interaction.guild_id]
        if not jobs:
            await interaction.response.send_message("Nothing queued." if everyone else
                                                    "You have nothing queued. `/imagine` something!",
                                                    ephemeral=True)
            return
        studio = self.bot.studio
        lines, view = [], discord.ui.View(timeout=None)
        for job in jobs[:MAX_LISTED]:
            running = studio.generation_of(job.id) if studio is not None else None
            gid = running.generation_id if running is not None else None
            lines.append(job_line(job, gid, mine=job.user_id == interaction.user.id))
            view.add_item(CancelButton(job.id, f"#{gid}" if gid is not None else str(job.id)))
        if len(jobs) > MAX_LISTED:
            lines.append(f"…and {len(jobs) - MAX_LISTED} more.")
        await interaction.response.send_message(render.clip("\n".join(lines), 2000), view=view, ephemeral=True)


async def setup(bot: AtelierBot) -> None:
    await bot.add_cog(Queue(bot))
