"""bot/db.py: WAL, numbered migrations applied once and in order, failures that leave the previous version."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from bot.db import MigrationError, default_migrations_dir, discover_migrations, open_database

INITIAL = Path(__file__).resolve().parent.parent / "bot" / "migrations" / "0001_initial.sql"


def _migrations(tmp_path: Path, files: dict[str, str], *, with_initial: bool = True) -> Path:
    folder = tmp_path / "migrations"
    folder.mkdir(exist_ok=True)
    if with_initial:
        shutil.copy(INITIAL, folder / INITIAL.name)
    for name, sql in files.items():
        (folder / name).write_text(sql, encoding="utf-8")
    return folder


async def _tables(db) -> set[str]:
    rows = await db.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")
    return {row[0] for row in rows}


async def _columns(db, table: str) -> list[str]:
    return [row["name"] for row in await db.fetchall(f"PRAGMA table_info({table})")]


async def test_shipped_schema_wal_and_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "atelier.db"  # parent folders are created
    db = await open_database(path)
    try:
        assert path.is_file()
        assert (await db.fetchone("PRAGMA journal_mode"))[0] == "wal"
        assert (await db.fetchone("PRAGMA foreign_keys"))[0] == 1
        assert (await db.fetchone("PRAGMA synchronous"))[0] == 1  # NORMAL
        assert {"schema_migrations", "generations", "adapters", "user_settings", "jobs", "generation_images",
                "guild_settings"} <= await _tables(db)
        assert await _columns(db, "generations") == [
            "id", "guild_id", "channel_id", "user_id", "message_id", "prompt", "negative_prompt", "params", "seeds",
            "status", "created_at", "finished_at", "count", "error", "origin", "parent_id"]
        assert await _columns(db, "generation_images") == ["generation_id", "idx", "seed", "subseed", "path",
                                                           "infotext"]
        assert await _columns(db, "adapters") == [
            "id", "kind", "name", "scope", "guild_id", "owner_id", "file", "sha256", "metadata", "created_at"]
        assert await _columns(db, "user_settings") == ["user_id", "guild_id", "settings"]
        assert await _columns(db, "jobs") == [
            "id", "kind", "owner_id", "guild_id", "state", "payload", "created_at", "updated_at"]
        rows = await db.fetchall("SELECT version, name, applied_at FROM schema_migrations")
        assert [(r["version"], r["name"]) for r in rows] == [(1, "initial"), (2, "discord_front_end")]
        assert rows[0]["applied_at"]
        assert await db.schema_version() == 2
    finally:
        await db.close()


def test_shipped_migrations_are_package_data() -> None:
    shipped = discover_migrations()
    assert [m.version for m in shipped][:1] == [1]
    assert default_migrations_dir().joinpath("0001_initial.sql").is_file()


async def test_migrations_apply_in_numeric_order_and_are_recorded(tmp_path: Path) -> None:
    folder = _migrations(tmp_path, {
        # 0010 depends on 0002: applied out of order it would fail.
        "0010_add_column.sql": "ALTER TABLE things ADD COLUMN colour TEXT NOT NULL DEFAULT 'red';",
        "0002_things.sql": "CREATE TABLE things (id INTEGER PRIMARY KEY, name TEXT);",
        "README.txt": "not a migration, ignored",
    })
    db = await open_database(tmp_path / "a.db", migrations_dir=folder)
    try:
        rows = await db.fetchall("SELECT version, name FROM schema_migrations ORDER BY version")
        assert [tuple(r) for r in rows] == [(1, "initial"), (2, "things"), (10, "add_column")]
        assert await _columns(db, "things") == ["id", "name", "colour"]
        assert await db.schema_version() == 10
    finally:
        await db.close()


async def test_reopen_is_idempotent_and_keeps_data(tmp_path: Path) -> None:
    folder = _migrations(tmp_path, {"0002_things.sql": "CREATE TABLE things (id INTEGER PRIMARY KEY);"})
    db = await open_database(tmp_path / "a.db", migrations_dir=folder)
    await db.execute("INSERT INTO user_settings (user_id, settings) VALUES (?, ?)", (42, json.dumps({"steps": 30})))
    before = [tuple(r) for r in await db.fetchall("SELECT * FROM schema_migrations")]
    await db.close()
    await db.close()  # idempotent

    for _ in range(2):
        db = await open_database(tmp_path / "a.db", migrations_dir=folder)
        try:
            assert [tuple(r) for r in await db.fetchall("SELECT * FROM schema_migrations")] == before
            row = await db.fetchone("SELECT settings FROM user_settings WHERE user_id = 42 AND guild_id = 0")
            assert json.loads(row[0]) == {"steps": 30}
        finally:
            await db.close()


async def test_failed_migration_leaves_previous_version_and_names_file(tmp_path: Path) -> None:
    folder = _migrations(tmp_path, {
        "0002_ok.sql": "CREATE TABLE ok_table (id INTEGER PRIMARY KEY);",
        # The first statement succeeds, the second fails: the first must be rolled back too.
        "0003_broken.sql": "CREATE TABLE half_done (id INTEGER);\nINSERT INTO no_such_table VALUES (1);",
    })
    with pytest.raises(MigrationError) as info:
        await open_database(tmp_path / "a.db", migrations_dir=folder)
    message = str(info.value)
    assert "0003_broken.sql" in message and "no_such_table" in message and "version 2" in message

    (folder / "0003_broken.sql").unlink()
    db = await open_database(tmp_path / "a.db", migrations_dir=folder)
    try:
        assert await db.schema_version() == 2
        tables = await _tables(db)
        assert "ok_table" in tables and "half_done" not in tables
    finally:
        await db.close()

    # The file on disk is a consistent database for any other client, too.
    with sqlite3.connect(tmp_path / "a.db") as conn:
        assert conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone() == (2,)


async def test_syntax_error_in_first_migration_leaves_empty_schema(tmp_path: Path) -> None:
    folder = _migrations(tmp_path, {"0001_bad.sql": "CREATE TABLE t (id INTEGER;"}, with_initial=False)
    with pytest.raises(MigrationError, match=r"0001_bad\.sql.*version 0"):
        await open_database(tmp_path / "a.db", migrations_dir=folder)
    with sqlite3.connect(tmp_path / "a.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM schema_migrations").fetchone() == (0,)


@pytest.mark.parametrize(
    ("files", "words"),
    [
        ({"0002-dash.sql": "SELECT 1;"}, "0002-dash.sql"),
        ({"2_short.sql": "SELECT 1;"}, "2_short.sql"),
        ({"0002_a.sql": "SELECT 1;", "0002_b.sql": "SELECT 1;"}, "version 2"),
    ],
)
async def test_malformed_migration_files_are_errors(tmp_path: Path, files: dict[str, str], words: str) -> None:
    folder = _migrations(tmp_path, files)
    with pytest.raises(MigrationError, match=words):
        await open_database(tmp_path / "a.db", migrations_dir=folder)


async def test_database_newer_than_code_is_refused(tmp_path: Path) -> None:
    folder = _migrations(tmp_path, {"0002_things.sql": "CREATE TABLE things (id INTEGER PRIMARY KEY);"})
    db = await open_database(tmp_path / "a.db", migrations_dir=folder)
    await db.close()
    (folder / "0002_things.sql").unlink()
    with pytest.raises(MigrationError, match="newer"):
        await open_database(tmp_path / "a.db", migrations_dir=folder)


async def test_schema_constraints(tmp_path: Path) -> None:
    db = await open_database(tmp_path / "a.db")
    insert = "INSERT INTO adapters (kind, name, scope, guild_id, file, sha256) VALUES (?, ?, ?, ?, 'f', 'h')"
    try:
        await db.execute(insert, ("embedding", "style", "global", None))
        with pytest.raises(sqlite3.IntegrityError):  # NULL guild ids must not dodge uniqueness
            await db.execute(insert, ("embedding", "style", "global", None))
        await db.execute(insert, ("embedding", "style", "guild", 1))  # same name in a guild: allowed
        await db.execute(insert, ("hypernetwork", "style", "guild", 1))  # other kind: allowed
        with pytest.raises(sqlite3.IntegrityError):
            await db.execute(insert, ("embedding", "style", "guild", 1))
        with pytest.raises(sqlite3.IntegrityError):  # guild scope needs a guild, global must not have one
            await db.execute(insert, ("embedding", "x", "guild", None))
        with pytest.raises(sqlite3.IntegrityError):
            await db.execute(insert, ("embedding", "y", "global", 5))
        with pytest.raises(sqlite3.IntegrityError):  # JSON columns are checked
            await db.execute("INSERT INTO generations (user_id, prompt, params) VALUES (1, 'a cat', '{nope')")
        gid = await db.execute("INSERT INTO generations (user_id, prompt, seeds) VALUES (1, 'a cat', '[1, 2]')")
        row = await db.fetchone("SELECT status, params, created_at FROM generations WHERE id = ?", (gid,))
        assert row["status"] == "queued" and row["params"] == "{}" and row["created_at"].endswith("Z")
    finally:
        await db.close()


async def test_transaction_commits_or_rolls_back(tmp_path: Path) -> None:
    db = await open_database(tmp_path / "a.db")
    try:
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO jobs (kind) VALUES ('a')")
            await conn.execute("INSERT INTO jobs (kind) VALUES ('b')")
        with pytest.raises(RuntimeError, match="boom"):
            async with db.transaction() as conn:
                await conn.execute("INSERT INTO jobs (kind) VALUES ('c')")
                raise RuntimeError("boom")
        rows = await db.fetchall("SELECT kind FROM jobs ORDER BY id")
        assert [r[0] for r in rows] == ["a", "b"]
    finally:
        await db.close()
    assert db.closed
    with pytest.raises(RuntimeError, match="closed"):
        _ = db.conn
