"""Imported embeddings and hypernetworks ("styles"): rows in ``adapters``, files under ``<data>/adapters``, and
their registrations in the engine's library, kept in step.

Why three places: the row says who added a style, when and for which guild (what ``/styles`` lists, and what
start-up registers again); the file is what the engine reads, lazily, the first time a prompt uses the name; the
registration is what makes the name usable in prompts at once, and only in that guild. :class:`AdapterStore` is
the SQL; :class:`StyleLibrary` changes all three together, so no file is left without a row and no name points
at a moved file. Nothing here knows Discord.

Files live at ``<data>/adapters/<guild id or "global">/<kind>/<name><suffix>``; rows store that path relative to
``<data>/adapters``, so moving the data folder keeps them valid. Names are unique per scope and kind ignoring
case, as the library matches them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.db import Database, run
from engine.adapters.library import KINDS, Kind
from engine.prompts.parser import is_valid_name
from engine.requests import RequestError

if TYPE_CHECKING:
    import aiosqlite

    from bot.config import Settings
    from engine.adapters.compat import ModelWidths
    from engine.adapters.library import AdapterLibrary

log = logging.getLogger("atelier.styles")

GLOBAL, GUILD = "global", "guild"
SUFFIX_BY_CONTENT = {"safetensors": ".safetensors", "torch": ".pt", "png": ".png", "webp": ".webp"}
NAME_RULE = "use 1-64 letters, digits, _ or -"


class UploadRefused(RequestError):
    """An uploaded file is not an adapter this bot can use (unsafe, broken, wrong kind or width)."""


def article(kind: str) -> str:
    """``an embedding`` / ``a hypernetwork``."""
    return f"an {kind}" if kind[:1] in "aeiou" else f"a {kind}"


@dataclass(frozen=True)
class AdapterRow:
    """One imported (or trained) style; ``guild_id`` is None exactly for global ones."""

    id: int
    kind: Kind
    name: str
    guild_id: int | None
    owner_id: int | None
    file: str  # relative to the adapters root (see the module docstring)
    sha256: str
    metadata: dict[str, Any]
    created_at: str

    @property
    def scope(self) -> str:
        return GLOBAL if self.guild_id is None else GUILD

    @property
    def date(self) -> str:
        """The day it was added (UTC), as ``YYYY-MM-DD``."""
        return self.created_at[:10]


def _row(r: Any) -> AdapterRow:
    return AdapterRow(id=r["id"], kind=r["kind"], name=r["name"], guild_id=r["guild_id"], owner_id=r["owner_id"],
                      file=r["file"], sha256=r["sha256"], metadata=json.loads(r["metadata"] or "{}"),
                      created_at=r["created_at"])


def _taken(kind: str, name: str, guild_id: int | None) -> RequestError:
    where = "on this server" if guild_id is not None else "globally"
    return RequestError(f"name: {article(kind)} named {name!r} already exists {where}; choose another name, or "
                        "rename or delete the existing one first")


async def _fetchone(conn: aiosqlite.Connection, sql: str, params: Iterable[Any]) -> Any:
    async with conn.execute(sql, tuple(params)) as cursor:
        return await cursor.fetchone()


# ``guild_id IS ?`` matches NULL (global) as well as a guild id; names compare without case, as the library's.
_SAME_NAME = "kind = ? AND guild_id IS ? AND name = ? COLLATE NOCASE"


class AdapterStore:
    """The ``adapters`` table: typed rows in and out, refusals as :class:`RequestError` saying what to do."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, kind: Kind, name: str, *, guild_id: int | None, owner_id: int | None, file: str,
                  sha256: str, metadata: dict[str, Any] | None = None) -> AdapterRow:
        """Record a style; a name already used by the same kind in the same scope is refused."""
        async with self.db.transaction() as conn:
            if await _fetchone(conn, f"SELECT id FROM adapters WHERE {_SAME_NAME}", (kind, guild_id, name)):
                raise _taken(kind, name, guild_id)
            row_id = await run(
                conn, "INSERT INTO adapters (kind, name, scope, guild_id, owner_id, file, sha256, metadata) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (kind, name, GLOBAL if guild_id is None else GUILD, guild_id, owner_id, file, sha256,
                 json.dumps(metadata or {})))
        row = await self.get_by_id(row_id)
        assert row is not None
        return row

    async def get_by_id(self, row_id: int) -> AdapterRow | None:
        row = await self.db.fetchone("SELECT * FROM adapters WHERE id = ?", (row_id,))
        return None if row is None else _row(row)

    async def get(self, guild_id: int | None, kind: Kind, name: str) -> AdapterRow | None:
        """The row of exactly that scope (``guild_id=None``: global), name matched without case."""
        row = await self.db.fetchone(f"SELECT * FROM adapters WHERE {_SAME_NAME}", (kind, guild_id, name))
        return None if row is None else _row(row)

    async def for_guild(self, guild_id: int | None, kind: Kind | None = None) -> list[AdapterRow]:
        """What ``guild_id`` can see: its own rows first, then the global ones; by kind, then name."""
        kinds = [kind] if kind else list(KINDS)
        rows = await self.db.fetchall(
            f"SELECT * FROM adapters WHERE (guild_id IS NULL OR guild_id = ?) AND kind IN "
            f"({', '.join('?' * len(kinds))}) ORDER BY guild_id IS NULL, kind, name COLLATE NOCASE",
            (guild_id, *kinds))
        return [_row(r) for r in rows]

    async def all(self) -> list[AdapterRow]:
        """Every row (start-up registers them all again)."""
        return [_row(r) for r in await self.db.fetchall("SELECT * FROM adapters ORDER BY id")]

    async def rename(self, row_id: int, new_name: str, file: str) -> AdapterRow:
        """Give a row a new name (and its moved file); refused when another row of its scope and kind has it."""
        async with self.db.transaction() as conn:
            current = await _fetchone(conn, "SELECT * FROM adapters WHERE id = ?", (row_id,))
            if current is None:
                raise RequestError("that style no longer exists; `/styles list` shows what there is")
            clash = await _fetchone(conn, f"SELECT id FROM adapters WHERE {_SAME_NAME} AND id != ?",
                                    (current["kind"], current["guild_id"], new_name, row_id))
            if clash:
                raise _taken(current["kind"], new_name, current["guild_id"])
            await run(conn, "UPDATE adapters SET name = ?, file = ? WHERE id = ?", (new_name, file, row_id))
        row = await self.get_by_id(row_id)
        assert row is not None
        return row

    async def promote(self, row_id: int, file: str) -> AdapterRow:
        """Make a guild row global (with its moved file); refused when a global one of that kind and name exists."""
        async with self.db.transaction() as conn:
            current = await _fetchone(conn, "SELECT * FROM adapters WHERE id = ?", (row_id,))
            if current is None:
                raise RequestError("that style no longer exists; `/styles list` shows what there is")
            if current["guild_id"] is None:
                raise RequestError(f"{current['kind']} {current['name']!r} is already global")
            if await _fetchone(conn, f"SELECT id FROM adapters WHERE {_SAME_NAME}",
                               (current["kind"], None, current["name"])):
                raise RequestError(f"name: a global {current['kind']} named {current['name']!r} already exists; "
                                   "rename this server's one first, then promote it under its new name")
            await run(conn, "UPDATE adapters SET scope = ?, guild_id = NULL, file = ? WHERE id = ?",
                      (GLOBAL, file, row_id))
        row = await self.get_by_id(row_id)
        assert row is not None
        return row

    async def set_scope(self, row_id: int, guild_id: int | None, file: str) -> None:
        """Put a row back in a scope unchecked (undoing a promotion whose file could not be moved)."""
        await self.db.execute("UPDATE adapters SET scope = ?, guild_id = ?, file = ? WHERE id = ?",
                              (GLOBAL if guild_id is None else GUILD, guild_id, file, row_id))

    async def update_metadata(self, row_id: int, **changes: Any) -> AdapterRow | None:
        """Merge ``changes`` into a row's metadata; None when the row is gone (deleted meanwhile)."""
        async with self.db.transaction() as conn:
            found = await _fetchone(conn, "SELECT metadata FROM adapters WHERE id = ?", (row_id,))
            if found is None:
                return None
            metadata = {**json.loads(found["metadata"] or "{}"), **changes}
            await run(conn, "UPDATE adapters SET metadata = ? WHERE id = ?", (json.dumps(metadata), row_id))
        return await self.get_by_id(row_id)

    async def delete(self, row_id: int) -> bool:
        async with self.db.transaction() as conn:
            found = await _fetchone(conn, "SELECT id FROM adapters WHERE id = ?", (row_id,))
            await run(conn, "DELETE FROM adapters WHERE id = ?", (row_id,))
        return found is not None


# -- uploads ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    """A validated file, ready to be stored: its kind by content, the bytes, and what ``/styles info`` shows."""

    kind: Kind
    data: bytes
    suffix: str
    sha256: str
    metadata: dict[str, Any]

    @property
    def summary(self) -> str:
        return str(self.metadata.get("summary", ""))


def inspect_upload(data: bytes, filename: str, *, name: str, widths: ModelWidths | None,
                   kind: Kind | None = None) -> Upload:
    """Read an uploaded file by content (never unpickling code), check its kind and that the model can use it.

    CPU work (torch loading): call it off the event loop. Every refusal is an :class:`UploadRefused` naming the
    file and what is wrong with it; an unsafe pickle keeps :class:`UnsafeFileError`'s message.
    """
    from bot.cli_adapters import describe
    from engine.adapters.compat import fits, read_adapter
    from engine.adapters.files import AdapterFileError, one_line, sniff

    try:
        found, adapter = read_adapter(data, name=name, label=filename)
    except AdapterFileError as exc:
        raise UploadRefused(str(exc)) from None
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:  # a malformed file the readers did not expect
        log.debug("upload %s unreadable", filename, exc_info=True)
        raise UploadRefused(f"{filename}: not a usable embedding or hypernetwork ({one_line(exc)})") from None
    if kind is not None and found != kind:
        raise UploadRefused(f"kind: {filename} is {article(found)}, not {article(kind)}; choose kind {found} or "
                            "leave kind empty")
    metadata: dict[str, Any] = {"source": filename, "bytes": len(data), "summary": describe(found, adapter)}
    if widths is not None:
        ok, why = fits(found, adapter, widths)
        if not ok:
            raise UploadRefused(f"{filename}: {why}")
        metadata["fit"] = why
    if found == "embedding":
        metadata.update(vectors=adapter.n_vectors, width=adapter.dim, layout=adapter.layout,  # type: ignore[union-attr]
                        step=adapter.step)  # type: ignore[union-attr]
    else:
        spec = adapter.spec  # type: ignore[union-attr]
        metadata.update(widths=sorted(adapter.widths()), layer_structure=list(spec.layer_structure),
                        activation=spec.activation, layer_norm=spec.layer_norm, step=spec.step)
    return Upload(found, data, SUFFIX_BY_CONTENT.get(sniff(data[:16]), ".pt"), hashlib.sha256(data).hexdigest(),
                  metadata)


# -- rows, files and registrations together --------------------------------------------------------------------


def adapters_root(settings: Settings) -> Path:
    """Where imported style files live: ``<paths.data>/adapters``."""
    return settings.path(settings.paths.data) / "adapters"


def _move(source: Path, target: Path) -> None:
    if not source.is_file():
        raise RequestError(f"its file {source} is missing; delete the style and import it again")
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, target)


class StyleLibrary:
    """Adds, renames, deletes and promotes styles in the database, on disk and in the engine's library at once.

    ``library`` is None when the bot runs without an engine: rows and files still change, and start-up registers
    them once an engine is back.
    """

    def __init__(self, store: AdapterStore, library: AdapterLibrary | None, root: Path) -> None:
        self.store = store
        self.library = library
        self.root = Path(root)

    def file_for(self, guild_id: int | None, kind: Kind, name: str, suffix: str) -> Path:
        return self.root / (GLOBAL if guild_id is None else str(guild_id)) / kind / f"{name}{suffix}"

    def path(self, row: AdapterRow) -> Path:
        return self.root / row.file  # an absolute ``file`` (written by hand) stays as it is

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def _register(self, row: AdapterRow) -> None:
        if self.library is not None:
            meta = {"sha256": row.sha256[:12], "owner_id": str(row.owner_id or ""),
                    "source": str(row.metadata.get("source", ""))}
            self.library.register(row.kind, row.name, self.path(row), row.guild_id, meta)

    def _unregister(self, row: AdapterRow) -> None:
        if self.library is not None:
            self.library.unregister(row.kind, row.name, row.guild_id)

    async def register_all(self) -> int:
        """Register every stored row (start-up); rows whose file is gone are skipped and logged, not fatal."""
        count = 0
        for row in await self.store.all():
            path = self.path(row)
            if not path.is_file():
                log.warning("%s %r (%s) skipped: its file %s is missing; delete it with /styles delete or put the "
                            "file back", row.kind, row.name, "global" if row.guild_id is None else
                            f"guild {row.guild_id}", path)
                continue
            try:
                self._register(row)
            except (RequestError, ValueError) as exc:
                log.warning("%s %r skipped: %s", row.kind, row.name, exc)
                continue
            count += 1
        return count

    async def add(self, upload: Upload, *, name: str, guild_id: int | None, owner_id: int | None) -> AdapterRow:
        """Store a validated upload under ``name``; usable in ``guild_id`` (or everywhere) as soon as this returns.

        The row goes first: its uniqueness check is what keeps two imports of one name from sharing a file.
        """
        if not is_valid_name(name):
            raise RequestError(f"name {name!r}: {NAME_RULE}")
        path = self.file_for(guild_id, upload.kind, name, upload.suffix)
        row = await self.store.add(upload.kind, name, guild_id=guild_id, owner_id=owner_id,
                                   file=self._relative(path), sha256=upload.sha256, metadata=upload.metadata)
        try:
            from engine.adapters.files import write_atomically

            await asyncio.to_thread(write_atomically, path, lambda tmp: tmp.write_bytes(upload.data))
            self._register(row)
        except BaseException:
            await self.store.delete(row.id)
            raise
        return row

    async def rename(self, row: AdapterRow, new_name: str) -> AdapterRow:
        """Rename a style and its file; the old name stops working at once (an embedding's trigger changes)."""
        if not is_valid_name(new_name):
            raise RequestError(f"new_name {new_name!r}: {NAME_RULE}")
        old_path = self.path(row)
        new_path = self.file_for(row.guild_id, row.kind, new_name, old_path.suffix)
        updated = await self.store.rename(row.id, new_name, self._relative(new_path))
        try:
            if old_path != new_path:
                await asyncio.to_thread(_move, old_path, new_path)
        except BaseException:
            await self.store.rename(row.id, row.name, row.file)
            raise
        self._unregister(row)
        self._register(updated)
        return updated

    async def delete(self, row: AdapterRow) -> None:
        """Remove the row, the registration and the file (and a preview image kept beside it)."""
        await self.store.delete(row.id)
        self._unregister(row)
        self.path(row).unlink(missing_ok=True)
        preview = row.metadata.get("preview")
        if preview:
            preview_path = self.root / str(preview)
            if preview_path.resolve().is_relative_to(self.root.resolve()):  # never delete outside our folder
                preview_path.unlink(missing_ok=True)

    async def promote(self, row: AdapterRow) -> AdapterRow:
        """Make a guild's style global: usable in every guild (a guild's own style of that name still wins there).

        Refused when a global one of that kind and name exists, in the database or in the global folders.
        """
        if row.guild_id is None:
            raise RequestError(f"{row.kind} {row.name!r} is already global")
        if await self.store.get(None, row.kind, row.name) is None and self.library is not None:
            folder = next((e for e in self.library.entries(row.kind, None) if e.name.lower() == row.name.lower()),
                          None)
            if folder is not None:
                raise RequestError(f"name: the global folder already has {article(row.kind)} named {folder.name!r}; "
                                   "rename this server's one first, then promote it under its new name")
        old_path = self.path(row)
        new_path = self.file_for(None, row.kind, row.name, old_path.suffix)
        updated = await self.store.promote(row.id, self._relative(new_path))  # refuses a global row of that name
        try:
            await asyncio.to_thread(_move, old_path, new_path)
        except BaseException:
            await self.store.set_scope(row.id, row.guild_id, row.file)
            raise
        self._unregister(row)
        self._register(updated)
        return updated


def style_library(db: Database, engine: Any, settings: Settings) -> StyleLibrary:
    """The bot's styles: its database, the running engine's library (None without an engine), its folder."""
    library = getattr(engine, "library", None) if engine is not None else None
    return StyleLibrary(AdapterStore(db), library, adapters_root(settings))


async def register_saved(db: Database, library: AdapterLibrary, settings: Settings) -> int:
    """Start-up: make every stored style usable again in its scope; returns how many were registered."""
    count = await StyleLibrary(AdapterStore(db), library, adapters_root(settings)).register_all()
    if count:
        log.info("registered %d imported style(s)", count)
    return count
