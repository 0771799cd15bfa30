"""The bot's lifecycle: ``atelier run`` end to end against the loopback Discord emulator, and in process.

The subprocess tests start the real entrypoint (``python -m bot run``) so discord.py's real HTTP client and
gateway code, our signal handling and our exit codes are what is tested. Waits are bounded and generous (the
machine may be a loaded 2-core box); nothing asserts on elapsed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import discord
import pytest
import yarl
from discord_emulator import DiscordEmulator  # tests/ is on sys.path (rootdir-less test dir)
from PIL import Image

from bot.app import COGS, EXIT_USAGE, AtelierBot, create_bot, main_run
from bot.config import TOKEN_ENV, Settings, parse_settings
from cogs.status import status_text

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 180.0  # torch import + model load on a busy machine
STEP_TIMEOUT = 30.0
EXIT_TIMEOUT = 60.0
INTENTS_GUILDS, INTENTS_GUILD_REACTIONS, INTENTS_MESSAGE_CONTENT = 1 << 0, 1 << 10, 1 << 15


# -- helpers -------------------------------------------------------------------------------------------------


def _toml_str(value: object) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(tmp_path: Path, *, model: Path | None, emulator: DiscordEmulator | None = None,
                 sync: bool = True) -> Path:
    """A config for a bot in ``tmp_path`` (CPU, float32, one thread), pointed at ``emulator`` if given."""
    lines = ["[model]", 'device = "cpu"', 'dtype = "float32"', "threads = 1", "allow_download = false"]
    if model is not None:
        lines.append(f"source = {_toml_str(model)}")
    data = tmp_path / "data"
    lines += ["[paths]", f"data = {_toml_str(data)}", f"database = {_toml_str(data / 'atelier.db')}",
              f"models = {_toml_str(data / 'models')}", f"cache = {_toml_str(data / 'cache')}"]
    lines += ["[discord]", f"sync_commands = {'true' if sync else 'false'}"]
    if emulator is not None:
        lines += [f"api_base = {_toml_str(emulator.api_base)}", f"gateway_url = {_toml_str(emulator.gateway_url)}",
                  f"guild_ids = [{emulator.guild.id}]"]
    lines += ["[logging]", 'level = "INFO"']
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def bot_env(token: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (TOKEN_ENV, "ATELIER_CONFIG")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if token is not None:
        env[TOKEN_ENV] = token
    return env


class BotProcess:
    """``python -m bot run`` as a child process, its combined output in a log file."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.proc = proc
        self.log = log

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    async def wait_for_log(self, text: str, timeout: float = STEP_TIMEOUT) -> None:
        """Poll the log for ``text`` (bounded); fail with the log if the process exits or time runs out."""
        async with asyncio.timeout(timeout):
            while text not in self.output():
                assert self.proc.returncode is None, f"bot exited early:\n{self.output()}"
                await asyncio.sleep(0.05)

    async def stop(self, sig: signal.Signals) -> int:
        self.proc.send_signal(sig)
        return await asyncio.wait_for(self.proc.wait(), EXIT_TIMEOUT)


@contextlib.asynccontextmanager
async def run_bot_process(config: Path, token: str | None, log: Path) -> AsyncIterator[BotProcess]:
    with log.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "run", "--config", str(config),
            cwd=ROOT, env=bot_env(token), stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT)
    bot = BotProcess(proc, log)
    try:
        yield bot
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.fixture
async def emulator() -> AsyncIterator[DiscordEmulator]:
    async with DiscordEmulator() as emu:
        yield emu


# -- (a) no token --------------------------------------------------------------------------------------------


def test_main_run_without_token_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    settings = parse_settings({}, base_dir=tmp_path, environ={})
    assert main_run(settings) == EXIT_USAGE
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and TOKEN_ENV in lines[0], captured.err
    assert captured.out == ""


def test_atelier_run_without_token_subprocess(tmp_path: Path) -> None:
    config = write_config(tmp_path, model=None)
    result = subprocess.run([sys.executable, "-m", "bot", "run", "--config", str(config)], cwd=ROOT,
                            env=bot_env(None), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and TOKEN_ENV in lines[0], result.stderr
    assert not (tmp_path / "data" / "atelier.db").exists()  # nothing was started


# -- (b) the real bot against the emulator -------------------------------------------------------------------


async def test_bot_serves_status_over_the_wire_and_stops_on_sigterm(
        emulator: DiscordEmulator, tiny_model_dir: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path, model=tiny_model_dir, emulator=emulator)
    async with run_bot_process(config, emulator.token, tmp_path / "bot.log") as bot:
        session = await emulator.wait_until_ready(timeout=START_TIMEOUT)
        intents = session.identify["intents"]
        assert intents & INTENTS_GUILDS and intents & INTENTS_GUILD_REACTIONS
        assert not intents & INTENTS_MESSAGE_CONTENT
        # Commands are synced in setup_hook, before the gateway connects.
        assert "status" in [c["name"] for c in emulator.commands[emulator.guild.id]]

        sent = await emulator.slash_command("status")
        reply = await emulator.wait_for_response(sent, timeout=STEP_TIMEOUT)
        assert reply.status == 200
        assert reply.json["type"] == 4  # answered at once, not deferred
        data = reply.json["data"]
        assert data["flags"] & 64  # ephemeral
        assert f"`{tiny_model_dir.name}`" in data["content"]
        assert "cpu" in data["content"] and "float32" in data["content"]
        assert "Generation: available" in data["content"]

        # /imagine end to end: deferred at once, then the deferred reply edited into the result, with the PNG
        # (infotext intact) uploaded as multipart, and the bot's reactions added to the result.
        sent = await emulator.slash_command("imagine", [{"name": "prompt", "type": 3, "value": "a red circle"},
                                                        {"name": "seed", "type": 4, "value": 5},
                                                        {"name": "steps", "type": 4, "value": 3}])
        reply = await emulator.wait_for_response(sent, timeout=STEP_TIMEOUT)
        assert reply.json["type"] == 5  # deferred
        result = await emulator.wait_for_request(
            lambda r: r.method == "PATCH" and r.path.endswith("/messages/@original") and bool(r.files),
            timeout=START_TIMEOUT, what="the result upload")
        [upload] = result.files
        image = Image.open(io.BytesIO(upload.data))
        assert image.format == "PNG" and "Seed: 5" in image.info["parameters"]
        assert result.json["embeds"][0]["description"] == "a red circle"
        await emulator.wait_for_request(lambda r: r.method == "PUT" and "/reactions/" in r.path,
                                        timeout=STEP_TIMEOUT, what="the result's reactions")

        await bot.wait_for_log("connected as", timeout=STEP_TIMEOUT)  # on_ready names the guilds
        assert await bot.stop(signal.SIGTERM) == 0, bot.output()

    log = bot.output()
    assert "Traceback" not in log, log
    for expected in (emulator.api_base, emulator.gateway_url, f"model loaded: {tiny_model_dir.name}",
                     f"guild {emulator.guild.id}", "SIGTERM received", "database closed", "engine closed"):
        assert expected in log, f"{expected!r} missing from:\n{log}"
    assert emulator.unhandled == []
    await emulator.wait_for(lambda: True if session.closed else None, timeout=STEP_TIMEOUT, what="gateway close")
    with sqlite3.connect(tmp_path / "data" / "atelier.db") as conn:
        assert conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone() == (2,)
        assert conn.execute("SELECT status, seeds FROM generations").fetchall() == [("done", "[5]")]


async def test_bot_without_model_stays_up_and_stops_on_sigint(emulator: DiscordEmulator, tmp_path: Path) -> None:
    config = write_config(tmp_path, model=None, emulator=emulator)  # no model.source, no demo model
    async with run_bot_process(config, emulator.token, tmp_path / "bot.log") as bot:
        await emulator.wait_until_ready(timeout=START_TIMEOUT)
        sent = await emulator.slash_command("status")
        reply = await emulator.wait_for_response(sent, timeout=STEP_TIMEOUT)
        content = reply.json["data"]["content"]
        assert "Generation: unavailable" in content and "model.source" in content, content
        assert await bot.stop(signal.SIGINT) == 0, bot.output()
    log = bot.output()
    assert "generation unavailable" in log and "SIGINT received" in log and "Traceback" not in log, log


async def test_sigterm_during_start_up_is_clean(
        emulator: DiscordEmulator, tiny_model_dir: Path, tmp_path: Path) -> None:
    """A signal while the model loads (or earlier) stops the bot with exit 0, and it never connects."""
    config = write_config(tmp_path, model=tiny_model_dir, emulator=emulator)
    async with run_bot_process(config, emulator.token, tmp_path / "bot.log") as bot:
        await bot.wait_for_log("starting:", timeout=START_TIMEOUT)  # logged once the signal handlers are in
        assert await bot.stop(signal.SIGTERM) == 0, bot.output()
    log = bot.output()
    assert "Traceback" not in log and "stopped" in log, log
    assert emulator.sessions == []


async def test_bad_token_is_one_clear_line(emulator: DiscordEmulator, tmp_path: Path) -> None:
    config = write_config(tmp_path, model=None, emulator=emulator)
    async with run_bot_process(config, "not-the-token", tmp_path / "bot.log") as bot:
        code = await asyncio.wait_for(bot.proc.wait(), START_TIMEOUT)
    log = bot.output()
    assert code not in (0, None), log
    errors = [line for line in log.splitlines() if line.startswith("atelier: ")]
    assert len(errors) == 1 and "token" in errors[0] and TOKEN_ENV in errors[0], log
    assert "Traceback" not in log, log
    assert emulator.sessions == []  # it never reached the gateway


# -- (c) in process ------------------------------------------------------------------------------------------


class FakeEngine:
    """The parts of engine.service.Engine the bot uses, with call counts."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail
        self.starts = 0
        self.closes = 0
        self.info = SimpleNamespace(name="fake-model", family="sd1", device="cpu", dtype="float32",
                                    source="fake")

    @property
    def ready(self) -> bool:
        return self.starts > 0 and self.fail is None and self.closes == 0

    async def start(self) -> None:
        self.starts += 1
        if self.fail is not None:
            raise self.fail

    async def close(self) -> None:
        self.closes += 1


def _settings(tmp_path: Path, **discord: object) -> Settings:
    raw = {"paths": {"database": str(tmp_path / "db" / "atelier.db"), "models": str(tmp_path / "models")},
           "discord": {"sync_commands": False, **discord}}
    return parse_settings(raw, base_dir=tmp_path, environ={})


async def test_setup_hook_opens_db_starts_engine_loads_cogs_and_close_is_idempotent(tmp_path: Path) -> None:
    engine = FakeEngine()
    bot = create_bot(_settings(tmp_path), engine=engine)  # type: ignore[arg-type]
    assert isinstance(bot, AtelierBot)
    assert bot.intents.guilds and bot.intents.guild_reactions and not bot.intents.message_content
    await bot.setup_hook()
    try:
        assert bot.db is not None and not bot.db.closed
        assert await bot.db.schema_version() == 2
        assert set(COGS) <= set(bot.extensions)
        assert all(bot.tree.get_command(n) is not None for n in ("status", "imagine", "queue"))
        assert engine.starts == 1 and bot.generation_available
        text = status_text(bot)
        assert "`fake-model`" in text and "cpu · float32" in text and "Generation: available" in text
    finally:
        await bot.close()
    assert bot.db.closed and engine.closes == 1 and bot.is_closed()
    assert not bot.generation_available
    await bot.close()  # twice is harmless
    assert engine.closes == 1


async def test_concurrent_close_runs_once(tmp_path: Path) -> None:
    engine = FakeEngine()
    bot = create_bot(_settings(tmp_path), engine=engine)  # type: ignore[arg-type]
    await bot.setup_hook()
    await asyncio.gather(bot.close(), bot.close(), bot.close())
    assert engine.closes == 1 and bot.db is not None and bot.db.closed


async def test_a_shutdown_during_start_up_recovery_stops_it_before_the_database_closes(tmp_path: Path) -> None:
    """SIGTERM right after connecting: on_ready's recovery is still reading the database. The shutdown cancels
    it first, so it never queries a closed database (it used to log a traceback) and nothing resumes after."""
    bot = create_bot(_settings(tmp_path), engine=FakeEngine())  # type: ignore[arg-type]
    await bot.setup_hook()
    reading, resumed, errors = asyncio.Event(), [], []

    async def slow_recovery() -> None:
        assert bot.db is not None
        reading.set()
        await asyncio.sleep(1.0)  # a slow read, still going when the shutdown starts
        try:
            await bot.db.fetchall("SELECT 1")
        except RuntimeError as exc:  # "database … is closed"
            errors.append(exc)
            raise

    async def resume_all() -> int:
        resumed.append(True)
        return 0

    bot.recover_interrupted = slow_recovery  # type: ignore[method-assign]
    assert bot.training is not None
    bot.training.resume_all = resume_all  # type: ignore[method-assign]
    ready = asyncio.create_task(bot._run_event(bot.on_ready, "on_ready"))
    await asyncio.wait_for(reading.wait(), 10)
    await asyncio.wait_for(bot.close(), 30)
    assert ready.done()  # the shutdown waited for on_ready to stop
    await asyncio.sleep(1.5)
    assert bot.db is not None and bot.db.closed and errors == [] and resumed == []


async def test_engine_failure_keeps_bot_running_without_generation(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine = FakeEngine(fail=RuntimeError("weights file is truncated"))
    bot = create_bot(_settings(tmp_path), engine=engine)  # type: ignore[arg-type]
    await bot.setup_hook()  # must not raise
    try:
        assert not bot.generation_available
        assert "weights file is truncated" in (bot.engine_error or "")
        assert bot.tree.get_command("status") is not None and bot.db is not None
        text = status_text(bot)
        assert "Generation: unavailable" in text and "weights file is truncated" in text
        assert "Model: none loaded" in text
        assert any("generation unavailable" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)
    finally:
        await bot.close()
    assert engine.closes == 1


async def test_no_model_configured_runs_without_engine(tmp_path: Path) -> None:
    bot = create_bot(_settings(tmp_path))
    assert bot.engine is None and "model.source" in (bot.engine_error or "")
    await bot.setup_hook()
    try:
        assert not bot.generation_available and "model.source" in status_text(bot)
    finally:
        await bot.close()
    assert bot.db is not None and bot.db.closed


async def test_in_process_bot_defers_edits_follows_up_with_file_and_reacts(
        emulator: DiscordEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The emulator carries the whole interaction flow the front end uses (defer → edit → followup with a file
    → reaction) for a bot run in this process; endpoint patches are undone by monkeypatch."""
    monkeypatch.setattr(discord.http.Route, "BASE", emulator.api_base)
    monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(emulator.gateway_url))
    bot = create_bot(_settings(tmp_path, sync_commands=True, guild_ids=[emulator.guild.id]),
                     engine=FakeEngine())  # type: ignore[arg-type]
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    done = asyncio.Event()

    @bot.tree.command(name="echo", description="test flow")
    async def echo(interaction: discord.Interaction, text: str) -> None:
        assert interaction.filesize_limit > 0
        await interaction.response.defer(thinking=True)
        await interaction.edit_original_response(content=f"working on {text}")
        message = await interaction.followup.send(f"done: {text}", file=discord.File(io.BytesIO(png), "result.png"),
                                                  wait=True)
        await message.add_reaction("✉️")
        done.set()

    runner = asyncio.create_task(bot.start(emulator.token))
    try:
        await emulator.wait_until_ready(timeout=STEP_TIMEOUT)
        sent = await emulator.slash_command("echo", [{"name": "text", "type": 3, "value": "a cat"}])
        await asyncio.wait_for(done.wait(), STEP_TIMEOUT)
    finally:
        await bot.close()
        await asyncio.wait_for(runner, EXIT_TIMEOUT)
    callback = await emulator.wait_for_response(sent)
    assert callback.json["type"] == 5
    original = emulator.original_message(sent)
    assert original is not None and original["content"] == "working on a cat" and not original["flags"] & 128
    followups = [m for m in emulator.messages.values() if m["content"] == "done: a cat"]
    assert len(followups) == 1 and followups[0]["attachments"][0]["filename"] == "result.png"
    assert emulator.reactions[int(followups[0]["id"])] == ["✉️"]
    async with aiohttp.ClientSession() as http, http.get(followups[0]["attachments"][0]["url"]) as response:
        assert await response.read() == png
    assert emulator.unhandled == []


def test_the_reason_generation_is_unavailable_follows_the_engine(tmp_path: Path) -> None:
    """A start-up failure wins; otherwise the engine's own reason (the Ray backend while its cluster is lost)."""
    engine = FakeEngine()
    bot = create_bot(_settings(tmp_path), engine=engine)  # type: ignore[arg-type]
    assert bot.engine_error is None
    engine.error = "the GPU cluster is unreachable"  # type: ignore[attr-defined]
    assert bot.engine_error == "the GPU cluster is unreachable"
    bot.engine_error = "the model could not be loaded: boom"
    assert bot.engine_error == "the model could not be loaded: boom"
