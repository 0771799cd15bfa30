"""The bot's SQLite database: one aiosqlite connection, WAL, and versioned SQL migrations.

Why SQLite in WAL mode: one self-hosted process owns the data; WAL lets readers (an operator's ``sqlite3``
shell, a backup) run while the bot writes, and with ``synchronous=NORMAL`` a committed transaction survives a
crash of the bot (only a power loss can take back the last commits), at a fraction of FULL's fsync cost.

Migrations are plain SQL files ``NNNN_name.sql`` shipped as package data in ``bot/migrations``. Each one is
applied in its own transaction together with its row in ``schema_migrations``, so a failing file leaves the
database exactly at the previous version and the error names the file. SQLite's DDL is transactional, so this
holds for ``CREATE``/``ALTER`` too. Files must not contain ``BEGIN``/``COMMIT`` themselves.

The connection runs in autocommit mode (``isolation_level=None``): a single statement commits on its own; use
:meth:`Database.transaction` to group statements.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import aiosqlite

log = logging.getLogger(__name__)

MIGRATION_FILE = re.compile(r"^(\d{4})_([A-Za-z0-9_]+)\.sql$")
BUSY_TIMEOUT_MS = 5000  # wait this long for another connection's lock (e.g. a backup) before failing
PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}",
)
SCHEMA_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
)
"""


class MigrationError(RuntimeError):
    """A migration file is malformed or failed to apply; the message names the file."""


@dataclass(frozen=True)
class Migration:
    """One numbered SQL file."""

    version: int
    name: str
    filename: str
    sql: str


def default_migrations_dir() -> Traversable:
    """``bot/migrations`` as package data (works from a checkout, a wheel, or a zip)."""
    return files("bot").joinpath("migrations")


def discover_migrations(directory: Traversable | Path | None = None) -> list[Migration]:
    """The migrations in ``directory``, sorted by version.

    A ``.sql`` file whose name does not match ``NNNN_name.sql``, or two files with one version, is an error:
    silently skipping a misnamed migration would leave the schema behind without anyone noticing.
    """
    folder: Traversable = default_migrations_dir() if directory is None else directory
    found: dict[int, Migration] = {}
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = MIGRATION_FILE.match(entry.name)
        if match is None:
            raise MigrationError(f"migration {entry.name}: file name must look like 0002_add_things.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(
                f"migration {entry.name}: version {version} is also used by {found[version].filename}")
        found[version] = Migration(version, match.group(2), entry.name, entry.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


async def run(conn: aiosqlite.Connection, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> int:
    """Execute one statement and close its cursor at once; returns the last row id.

    Why not a bare ``await conn.execute(...)``: that leaves the cursor to the garbage collector, and SQLite refuses
    ``COMMIT`` while a statement is still open ("SQL statements in progress") — which happens whenever something
    keeps the cursor alive a little longer (a debugger, a test harness, a traceback).
    """
    async with conn.execute(sql, params) as cursor:
        return int(cursor.lastrowid or 0)


async def _applied_versions(conn: aiosqlite.Connection) -> dict[int, str]:
    async with conn.execute("SELECT version, name FROM schema_migrations ORDER BY version") as cursor:
        return {int(row[0]): str(row[1]) async for row in cursor}


async def apply_migrations(conn: aiosqlite.Connection, migrations: Sequence[Migration]) -> list[Migration]:
    """Apply the migrations not yet recorded, in order; return the ones applied (empty when up to date).

    ``conn`` must be in autocommit mode (``isolation_level=None``) so the explicit transactions here are the
    only ones.
    """
    await run(conn, SCHEMA_MIGRATIONS)
    applied = await _applied_versions(conn)
    known = {m.version for m in migrations}
    newer = sorted(v for v in applied if v not in known)
    if newer and newer[-1] > max(known, default=0):
        raise MigrationError(
            f"the database is at schema version {max(applied)}, newer than this Atelier knows "
            f"(latest migration {max(known, default=0)}); upgrade Atelier or restore a backup")
    done: list[Migration] = []
    for migration in migrations:
        if migration.version in applied:
            continue
        previous = max(applied, default=0)
        try:
            # executescript runs the whole file; BEGIN first makes it one transaction with the record below.
            await (await conn.executescript("BEGIN IMMEDIATE;\n" + migration.sql)).close()
            await run(conn, "INSERT INTO schema_migrations (version, name) VALUES (?, ?)",
                      (migration.version, migration.name))
            await run(conn, "COMMIT")
        except Exception as exc:
            if conn.in_transaction:
                await run(conn, "ROLLBACK")
            raise MigrationError(
                f"migration {migration.filename} failed: {exc}; the database stays at schema version {previous}"
            ) from exc
        applied[migration.version] = migration.name
        done.append(migration)
        log.info("database: applied migration %s", migration.filename)
    return done


class Database:
    """An open, migrated database. ``conn`` is the raw aiosqlite connection (rows are ``aiosqlite.Row``)."""

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self._conn: aiosqlite.Connection | None = conn
        self.path = path
        self._tx_lock = asyncio.Lock()

    @property
    def closed(self) -> bool:
        return self._conn is None

    @property
    def conn(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise RuntimeError(f"database {self.path} is closed")
        return self._conn

    async def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> int:
        """Run one statement (autocommitted unless inside :meth:`transaction`); return the last row id."""
        async with self.conn.execute(sql, params) as cursor:
            return int(cursor.lastrowid or 0)

    async def fetchone(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> aiosqlite.Row | None:
        async with self.conn.execute(sql, params) as cursor:
            return await cursor.fetchone()

    async def fetchall(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Iterable[aiosqlite.Row]:
        async with self.conn.execute(sql, params) as cursor:
            return await cursor.fetchall()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """``async with db.transaction() as conn:`` — commit on success, roll back on any exception.

        Transactions are serialized with a lock because all coroutines share one connection: two interleaved
        ``BEGIN``s would fail. (Plain :meth:`execute` calls from other coroutines are not held back; keep
        multi-statement writes inside a transaction.)
        """
        async with self._tx_lock:
            conn = self.conn
            await run(conn, "BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    await run(conn, "ROLLBACK")
                raise
            else:
                await run(conn, "COMMIT")

    async def schema_version(self) -> int:
        row = await self.fetchone("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        return int(row[0]) if row else 0

    async def close(self) -> None:
        """Close the connection; idempotent."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()
            log.info("database closed")


async def open_database(path: str | Path, *, migrations_dir: Traversable | Path | None = None) -> Database:
    """Open (creating folders and file as needed), configure and migrate the database at ``path``.

    ``migrations_dir`` replaces the shipped migrations (tests). On a migration error the connection is closed
    and :class:`MigrationError` propagates.
    """
    db_path = Path(path).expanduser()
    if str(db_path) != ":memory:":
        db_path.parent.mkdir(parents=True, exist_ok=True)
    migrations = discover_migrations(migrations_dir)
    conn = await aiosqlite.connect(db_path, isolation_level=None)
    try:
        conn.row_factory = aiosqlite.Row
        for pragma in PRAGMAS:
            await run(conn, pragma)
        applied = await apply_migrations(conn, migrations)
    except BaseException:
        await conn.close()
        raise
    db = Database(conn, db_path)
    version = await db.schema_version()
    log.info("database %s at schema version %d%s", db_path, version,
             f" ({len(applied)} migration(s) applied)" if applied else "")
    return db
