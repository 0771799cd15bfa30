"""Who may train, import and delete styles in a guild: Manage Server, or a role the guild's managers granted.

One place for the rule, because ``/styles`` (import, rename, delete) and ``/train`` ask the same question.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import discord

from bot.errors import NotAllowed

if TYPE_CHECKING:
    from bot.store.settings import SettingsStore

Action = Literal["train", "import", "delete"]
ACTION_WORDS: dict[str, str] = {"train": "training", "import": "importing or renaming styles",
                                "delete": "deleting styles"}


async def require(settings: SettingsStore, interaction: discord.Interaction, action: Action) -> None:
    """Manage Server, or one of the guild's roles for ``action``; else :class:`NotAllowed` naming them."""
    permissions = interaction.permissions
    if permissions.manage_guild or permissions.administrator:
        return
    guild = await settings.guild(interaction.guild_id)
    allowed = {"train": guild.train_roles, "import": guild.import_roles, "delete": guild.delete_roles}[action]
    mine = {role.id for role in getattr(interaction.user, "roles", ())}
    if mine & set(allowed):
        return
    if allowed:
        roles = ", ".join(f"<@&{r}>" for r in allowed)
        raise NotAllowed(f"{ACTION_WORDS[action]} needs Manage Server or one of these roles: {roles}")
    raise NotAllowed(f"{ACTION_WORDS[action]} needs Manage Server (server managers can let a role do it with "
                     f"`/styles-admin roles action:{action}`)")


def moderates(interaction: discord.Interaction) -> bool:
    """Manage Server or Manage Messages: may stop what other members started in this guild."""
    permissions = interaction.permissions
    return bool(permissions.manage_guild or permissions.manage_messages or permissions.administrator)
