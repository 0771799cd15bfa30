"""The Discord application: the ``AtelierBot`` factory and the ``atelier run`` lifecycle.

Start-up order (``setup_hook``, after login, before the gateway connects): open and migrate the database,
start the engine (load the model), load the cogs, sync slash commands. Shutdown (``close``) runs in reverse
dependency order: engine, database, then discord.py's own close. Both are written so that an operator sees
what happened in one readable log line per step, and so that a broken model never takes the bot down: the
bot stays online, ``/status`` says why generation is unavailable, and the fix is a config edit and a restart.

Nothing here imports torch at module level: ``atelier run`` without a token answers at once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import sys
import time
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version
from typing import TYPE_CHECKING, Any

import aiohttp
import discord
import yarl
from discord.ext import commands

from bot.config import TOKEN_ENV, Settings
from bot.db import Database, MigrationError, open_database
from bot.logs import configure_logging

if TYPE_CHECKING:
    from bot.store.settings import SettingsStore
    from bot.studio import Studio
    from bot.training import TrainingService
    from engine.service import Engine

log = logging.getLogger("atelier.bot")

COGS: tuple[str, ...] = ("cogs.status", "cogs.imagine", "cogs.results", "cogs.queue", "cogs.settings",
                          "cogs.styles", "cogs.train")
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
SHUTDOWN_TIMEOUT_S = 60.0  # after close(), how long start() may take to return before it is cancelled


@functools.cache
def version() -> str:
    """The installed Atelier version (``0+unknown`` when run from a tree that was never installed)."""
    try:
        return _dist_version("atelier")
    except PackageNotFoundError:
        return "0+unknown"


def default_intents() -> discord.Intents:
    """Guilds (channels, roles) and guild reactions only: slash commands and components need no more, and no
    privileged intent (message content, members) means no verification step for operators."""
    intents = discord.Intents.none()
    intents.guilds = True
    intents.guild_reactions = True
    return intents


class AtelierBot(commands.Bot):
    """The bot: owns the database and the engine for the lifetime of the process.

    Attributes the cogs use: ``settings``, ``db`` (:class:`bot.db.Database`, open after ``setup_hook``),
    ``engine`` (may be ``None``), ``engine_error`` (why generation is unavailable, or ``None``),
    ``generation_available``, ``started_at`` (``time.monotonic()`` at construction).
    """

    def __init__(self, settings: Settings, *, engine: Engine | None, engine_error: str | None = None) -> None:
        # Atelier never joins voice: skip discord.py's start-up warnings about missing voice libraries.
        discord.VoiceClient.warn_nacl = False
        discord.VoiceClient.warn_dave = False
        super().__init__(
            command_prefix=commands.when_mentioned,  # no message-content intent: prefix commands are unused
            intents=default_intents(),
            help_command=None,
            # A prompt can contain "@everyone"; never let echoed user text ping a whole server.
            allowed_mentions=discord.AllowedMentions(everyone=False, roles=False, users=True, replied_user=True),
        )
        self.settings = settings
        self.engine = engine
        self._engine_error = engine_error
        self.db: Database | None = None
        self.studio: Studio | None = None
        self.training: TrainingService | None = None  # set by cogs.train
        self.settings_store: SettingsStore = None  # type: ignore[assignment]  # set in setup_hook
        self._recovered = False
        self._recovery: asyncio.Task[Any] | None = None  # on_ready's start-up recovery, while it runs
        self.started_at = time.monotonic()
        self._closing = False
        self._close_task: asyncio.Task[None] | None = None

    @property
    def engine_error(self) -> str | None:
        """Why generation is unavailable: set at start-up, else what the engine says now (the Ray backend while
        its cluster is unreachable)."""
        return self._engine_error or getattr(self.engine, "error", None)

    @engine_error.setter
    def engine_error(self, value: str | None) -> None:
        self._engine_error = value

    @property
    def generation_available(self) -> bool:
        return self.engine is not None and self.engine.ready and not self._closing

    # -- start-up --------------------------------------------------------------------------------------------

    async def setup_hook(self) -> None:
        """Open the database, start the engine, load the cogs, sync commands (see the module docstring)."""
        self.started_at = time.monotonic()  # on the loop's clock (a test harness may run a virtual one)
        db = await open_database(self.settings.path(self.settings.paths.database))
        if self._closing:  # a shutdown began while we were opening: do not leak the connection
            await db.close()
            return
        self.db = db
        from bot.store.settings import SettingsStore
        from bot.studio import Studio

        self.settings_store = SettingsStore(db, self.settings.guild)
        self.studio = Studio(self)
        await self._start_engine()
        library = getattr(self.engine, "library", None)  # None: no engine (or a stand-in without adapters)
        if library is not None:  # imported styles become usable again in their guilds (or everywhere)
            from bot.store.adapters import register_saved

            await register_saved(db, library, self.settings)
        if self._closing:
            return
        for extension in COGS:
            await self.load_extension(extension)
        log.info("loaded cogs: %s", ", ".join(COGS))
        if self.settings.discord.sync_commands:
            await self.sync_app_commands()
        else:
            log.info("slash command sync is off (discord.sync_commands = false)")

    async def _start_engine(self) -> None:
        if self.engine is None:
            log.error("generation unavailable: %s", self.engine_error or "no engine")
            return
        try:
            await self.engine.start()
        except Exception as exc:
            self.engine_error = f"the model could not be loaded: {exc}"
            log.error("generation unavailable, the bot keeps running without it: %s "
                      "(fix the [model] settings and restart)", self.engine_error)
            log.debug("engine start failure", exc_info=True)
            return
        if self._closing:
            return
        info = self.engine.info
        log.info("model loaded: %s (%s) on %s as %s", info.name, info.source, info.device, info.dtype)

    async def sync_app_commands(self) -> None:
        """Publish the slash commands: to each configured guild (instant), else globally (slow to propagate).

        Discord limits command creations per day, so operators turn ``discord.sync_commands`` off once the
        commands are published. A failed sync is logged, not fatal: the bot still answers known commands.
        """
        guild_ids = self.settings.discord.guild_ids
        try:
            if not guild_ids:
                synced = await self.tree.sync()
                log.info("synced %d global command(s): %s (global commands can take a while to appear)",
                         len(synced), ", ".join(c.name for c in synced))
                return
            for guild_id in guild_ids:
                guild = discord.Object(id=guild_id)
                self.tree.copy_global_to(guild=guild)
                synced = await self.tree.sync(guild=guild)
                log.info("synced %d command(s) to guild %d: %s", len(synced), guild_id,
                         ", ".join(c.name for c in synced))
        except discord.HTTPException as exc:
            log.error("slash command sync failed: %s (is the bot in the guild, invited with the "
                      "applications.commands scope?)", exc)

    async def on_ready(self) -> None:
        user = self.user
        guilds = ", ".join(f"{g.name} ({g.id})" for g in self.guilds) or "none yet: invite the bot to a server"
        log.info("connected as %s (id %s) to %d guild(s): %s", user, user.id if user else "?", len(self.guilds),
                 guilds)
        missing = [g for g in self.settings.discord.guild_ids if self.get_guild(g) is None]
        if missing:
            log.warning("configured discord.guild_ids not joined by the bot: %s", ", ".join(map(str, missing)))
        if not self._recovered and not self._closing:
            self._recovered = True
            # A shutdown that begins meanwhile cancels this first (``_shutdown``), so it never meets a closed
            # database half way through.
            self._recovery = asyncio.current_task()
            try:
                await self.recover_interrupted()
                if self.training is not None and not self._closing:
                    await self.training.resume_all()
            finally:
                self._recovery = None

    async def recover_interrupted(self) -> None:
        """Generations acknowledged before a crash or restart run again (same seeds) and are delivered in their
        channel with a mention; ones that cannot (no channel, no engine) are marked failed with the reason."""
        if self.db is None or self.studio is None:
            return
        from bot.store.generations import FAILED, GenerationStore
        from bot.studio import ChannelTarget

        store = GenerationStore(self.db)
        for gen in await store.unfinished():
            reason = None
            channel = self.get_channel(gen.channel_id) if gen.channel_id else None
            if channel is None and gen.channel_id:
                try:
                    channel = await self.fetch_channel(gen.channel_id)
                except discord.HTTPException:
                    channel = None
            if channel is None or not isinstance(channel, discord.abc.Messageable):
                reason = "interrupted by a restart; its channel is gone"
            elif not self.generation_available:
                reason = "interrupted by a restart; generation is unavailable"
            if reason is None:
                user: discord.abc.Snowflake = self.get_user(gen.user_id) or discord.Object(id=gen.user_id)
                target = ChannelTarget(channel, user, note="(resumed after a restart) ")
                try:
                    await self.studio.start(gen.request, user=user, guild_id=gen.guild_id,
                                            channel_id=gen.channel_id, target=target, origin="resumed",
                                            parent_id=gen.id)
                    reason = "interrupted by a restart; resumed as a new generation"
                except Exception as exc:
                    reason = f"interrupted by a restart; could not resume: {exc}"
            await store.set_status(gen.id, FAILED, reason)
            log.info("generation #%d: %s", gen.id, reason)

    # -- shutdown --------------------------------------------------------------------------------------------

    def is_closed(self) -> bool:
        """True from the moment shutdown begins (not only once discord.py's close ran), so the gateway connect
        loop never connects or reconnects while the engine and database are being closed."""
        return self._closing or super().is_closed()

    async def login(self, token: str) -> None:
        if self._closing:  # a signal arrived before login: do not open an HTTP session that nobody closes
            return
        await super().login(token)

    async def close(self) -> None:
        """Close the engine, then the database, then the Discord connection; idempotent and safe to call
        concurrently (every caller waits for the one shutdown)."""
        if self._close_task is None:
            self._closing = True
            self._close_task = asyncio.create_task(self._shutdown())
        await asyncio.shield(self._close_task)

    async def _shutdown(self) -> None:
        recovery = self._recovery
        if recovery is not None and recovery is not asyncio.current_task() and not recovery.done():
            recovery.cancel()
            await asyncio.wait([recovery], timeout=5)
        if self.training is not None:  # first: its rows stay "running" and resume at the next start
            await self.training.close()
        if self.engine is not None:
            try:
                await self.engine.close()
            except Exception:
                log.exception("engine close failed")
        if self.studio is not None:
            await self.studio.close()
        if self.db is not None:
            try:
                await self.db.close()
            except Exception:
                log.exception("database close failed")
        await super().close()


def _build_engine(settings: Settings) -> tuple[Engine | None, str | None]:
    """The engine from settings, or ``(None, reason)`` when no model is configured."""
    from bot.wiring import NoModelConfigured, engine_options  # imports torch: only when a bot is really built
    from engine.service import Engine

    try:
        options = engine_options(settings)
    except NoModelConfigured as exc:
        return None, str(exc)
    if settings.backend.kind == "ray":
        from bot.wiring import ray_options
        from engine.ray.bridge import BridgedBackend

        # Same surface as Engine (docs/ARCHITECTURE.md, "Issue 8 design"): the cogs cannot tell them apart. The
        # Ray driver runs in a child process, so losing the cluster never ends the bot.
        return BridgedBackend(options, ray_options(settings)), None  # type: ignore[return-value]
    return Engine(options), None


def create_bot(settings: Settings, *, engine: Engine | None = None) -> AtelierBot:
    """Build the bot. ``engine`` is injected by tests; otherwise it comes from ``bot.wiring.engine_options``.

    Nothing is opened or loaded here; ``setup_hook`` (run by ``bot.start``/``login``) does that on the loop.
    """
    engine_error = None
    if engine is None:
        engine, engine_error = _build_engine(settings)
    return AtelierBot(settings, engine=engine, engine_error=engine_error)


def apply_endpoint_overrides(settings: Settings) -> tuple[str, str]:
    """Point discord.py at an emulator when ``discord.api_base`` / ``discord.gateway_url`` are set (tests only).

    Returns the REST base and gateway URL in effect. ``Route.BASE`` is read when each request is built
    (interaction callbacks and webhooks included); a plain ``Client`` connects to ``DEFAULT_GATEWAY`` without
    asking ``GET /gateway``. Unset settings leave discord.py's real endpoints alone.
    """
    d = settings.discord
    if d.api_base:
        discord.http.Route.BASE = d.api_base.rstrip("/")
    if d.gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(d.gateway_url)
    return discord.http.Route.BASE, str(discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)


def _failure_line(exc: BaseException, rest_base: str) -> str:
    """One operator-readable line for a start-up failure."""
    if isinstance(exc, discord.LoginFailure):
        return f"Discord rejected the bot token ({exc}); check {TOKEN_ENV}"
    if isinstance(exc, discord.PrivilegedIntentsRequired):
        return "Discord refused the gateway intents; enable them in the Developer Portal or remove them"
    if isinstance(exc, MigrationError):
        return f"database: {exc}"
    if isinstance(exc, aiohttp.ClientError | OSError):
        return f"cannot reach Discord at {rest_base}: {exc}"
    if isinstance(exc, discord.HTTPException):
        return f"Discord answered {exc.status}: {exc.text or exc}"
    return f"the bot stopped: {type(exc).__name__}: {exc}"


async def run_bot(settings: Settings) -> int:
    """Run the bot until SIGINT/SIGTERM (exit 0) or a start-up failure (one line on stderr, non-zero)."""
    token = settings.discord_token
    if not token:
        print(f"atelier: no Discord bot token: set the {TOKEN_ENV} environment variable "
              f"(e.g. {TOKEN_ENV}=... atelier run)", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings.logging.level)
    rest_base, gateway = apply_endpoint_overrides(settings)

    # Signal handlers first: building the bot imports torch (seconds), and a Ctrl-C then must still be clean.
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def request_stop(sig: signal.Signals) -> None:
        if not stop.is_set():
            log.info("%s received: shutting down", sig.name)
        stop.set()

    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, request_stop, sig)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # no signal support here (Windows, thread)
            pass
    log.info("Atelier %s starting: Discord REST %s, gateway %s", version(), rest_base, gateway)

    bot = create_bot(settings)
    runner = asyncio.create_task(bot.start(token), name="atelier-bot")
    stopper = asyncio.create_task(stop.wait(), name="atelier-stop")
    code = EXIT_OK
    try:
        await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            await bot.close()
            try:
                await asyncio.wait_for(runner, timeout=SHUTDOWN_TIMEOUT_S)
            except TimeoutError:
                log.warning("the Discord connection did not stop within %.0f s; cancelled", SHUTDOWN_TIMEOUT_S)
            except Exception:  # a start-up step interrupted by the shutdown: expected, not an error
                log.debug("start interrupted by shutdown", exc_info=True)
        else:
            exc = None if runner.cancelled() else runner.exception()
            if exc is not None:
                code = EXIT_FAILURE
                expected = (discord.LoginFailure, discord.PrivilegedIntentsRequired, MigrationError,
                            aiohttp.ClientError, OSError)
                if not isinstance(exc, expected):
                    log.error("unexpected failure", exc_info=exc)
                print(f"atelier: {_failure_line(exc, rest_base)}", file=sys.stderr)
    finally:
        stopper.cancel()
        if not runner.done():
            runner.cancel()
        await bot.close()
        for sig in installed:
            loop.remove_signal_handler(sig)
    log.info("stopped")
    return code


def main_run(settings: Settings) -> int:
    """Synchronous entry point for ``atelier run``: run the bot's event loop to completion, return the exit code."""
    return asyncio.run(run_bot(settings))
