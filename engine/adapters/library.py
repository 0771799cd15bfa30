"""Which embeddings and hypernetworks a request can use: the global folders plus its own guild's registrations.

Why a library object and not a dict of loaded files: servers keep thousands of embeddings, and a request uses
one or two. Start-up therefore only lists names (one directory scan, no file opened); an embedding's vectors or
a hypernetwork's modules are read the first time a prompt uses them, then cached. Folders are rescanned when
their modification time changes, so files dropped in while the bot runs appear without a restart.

Scopes: the *global* library is the configured folders (and anything registered with ``guild_id=None``); each
guild has its own registrations (the bot stores them in its database and registers them at start-up and as
members train or import). A request sees global + its guild, and the guild's entry wins a name clash, so two
guilds can each have their own ``mystyle``.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from engine.prompts.parser import is_valid_name as valid_name
from engine.requests import RequestError

if TYPE_CHECKING:
    import torch

    from engine.adapters.embeddings import Embedding
    from engine.adapters.hypernetwork import Hypernetwork

log = logging.getLogger(__name__)

Kind = Literal["embedding", "hypernetwork"]
KINDS: tuple[Kind, ...] = ("embedding", "hypernetwork")
SUFFIXES: dict[Kind, tuple[str, ...]] = {
    "embedding": (".pt", ".bin", ".safetensors", ".png", ".webp"),
    "hypernetwork": (".pt", ".safetensors"),
}
# How often (seconds) a view re-checks folder mtimes; a stat per folder, so cheap, but not per prompt.
RESCAN_INTERVAL_S = 2.0


class UnknownAdapterError(RequestError):
    """A name that this guild's library does not have; the message lists the closest names."""


def short_hash(path: Path) -> str:
    """12 hex digits of the file's sha256, the form A1111 writes in ``TI hashes``."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()[:12]


class Registration(NamedTuple):
    """A registered adapter as plain values, to send to another process (see ``AdapterLibrary.sync``).

    ``digest`` and ``content`` (the file's sha256 and a handle on its bytes, e.g. a Ray object reference) are
    set when the file travels by content to a process that cannot read ``path`` (:mod:`engine.ray.adapters`).
    """

    kind: Kind
    name: str
    path: str
    guild_id: int | None
    meta: dict[str, str]
    digest: str = ""
    content: Any = None


@dataclass
class AdapterEntry:
    """One named file in one scope; the parsed object, its hash and device copies are filled in on first use
    and dropped when the file changes on disk (size or mtime)."""

    kind: Kind
    name: str
    path: Path
    guild_id: int | None = None
    meta: dict[str, str] = field(default_factory=dict)
    _hash: str | None = None
    _loaded: object | None = None
    _placed: dict[tuple[str, str], object] = field(default_factory=dict)
    _stamp: tuple[int, int] | None = None

    def _check(self) -> None:
        try:
            st = self.path.stat()
            stamp: tuple[int, int] | None = (st.st_size, st.st_mtime_ns)
        except OSError:
            stamp = None
        if stamp != self._stamp:
            self._hash, self._loaded, self._stamp = None, None, stamp
            self._placed.clear()

    @property
    def hash(self) -> str:
        self._check()
        if self._hash is None:
            self._hash = short_hash(self.path)
        return self._hash

    def load(self) -> object:
        """The parsed file (an ``Embedding`` or a ``Hypernetwork``), read once and cached until the file changes."""
        self._check()
        if self._loaded is None:
            if self.kind == "embedding":
                from engine.adapters.embeddings import read_embedding

                self._loaded = read_embedding(self.path, name=self.name)
            else:
                from engine.adapters.hypernetwork import read_hypernetwork

                self._loaded = read_hypernetwork(self.path, name=self.name)
        return self._loaded

    def placed(self, device: torch.device | str, dtype: torch.dtype | None) -> Hypernetwork:
        """A hypernetwork's copy with its modules on ``device``/``dtype``, in inference mode; cached."""
        import copy

        base = self.load()
        key = (str(device), str(dtype))
        if key not in self._placed:
            placed = copy.deepcopy(base).to(device, dtype)  # type: ignore[attr-defined]
            placed.eval()
            for parameter in placed.parameters():  # inference copies: no autograd graphs kept on contexts
                parameter.requires_grad_(False)
            self._placed[key] = placed
        return self._placed[key]  # type: ignore[return-value]


@dataclass
class ScanReport:
    """What a folder scan found: usable entries and files skipped with the reason."""

    entries: dict[str, AdapterEntry] = field(default_factory=dict)
    invalid: list[tuple[Path, str]] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)  # every folder walked, for cheap change checks


def scan_folder(folder: Path, kind: Kind) -> ScanReport:
    """List ``folder`` (recursively) by name only: base name → file. Nothing is opened.

    A name used twice keeps the first in sorted path order and reports the other, so the result never
    depends on directory order.
    """
    report = ScanReport()
    if not folder.is_dir():
        return report
    paths: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        report.dirs.append(root)
        paths.extend(Path(root) / f for f in files if not f.startswith("."))
    for path in sorted(paths):
        if path.suffix.lower() not in SUFFIXES[kind]:
            continue
        name = path.stem
        if not valid_name(name):
            report.invalid.append((path, "names may use only letters, digits, _ and - (rename the file)"))
        elif name.lower() in report.entries:
            report.invalid.append((path, f"another file is already named {name!r}"))
        else:
            report.entries[name.lower()] = AdapterEntry(kind, name, path)
    return report


def _dir_stamp(dirs: Iterable[str | Path]) -> tuple[tuple[str, int], ...]:
    """mtimes of the given folders (-1 if gone). Adding, removing or renaming a file or a subfolder changes its
    parent's mtime, so the folders the last scan walked are enough to notice any change, without listing files."""
    stamps = []
    for folder in dirs:
        try:
            stamps.append((str(folder), os.stat(folder).st_mtime_ns))
        except OSError:
            stamps.append((str(folder), -1))
    return tuple(stamps)


class TriggerIndex:
    """Embedding triggers as token-id sequences, keyed by first token, longest first (A1111's matching).

    Matching on token ids makes triggers case-insensitive and respects word ends (CLIP's BPE marks them), so
    ``cat`` does not fire inside ``cats``. Like A1111 it can fire at the end of a longer word whose last token is
    the trigger's (``tomcat`` = ``tom`` + ``cat``); names are chosen to be distinctive, so this rarely matters.
    """

    def __init__(self, names: Iterable[str], tokenizer: object) -> None:
        names = list(names)
        # first token → [(length, {token sequence: name})], longest first: one dict probe per length at a position.
        self.by_first: dict[int, list[tuple[int, dict[tuple[int, ...], str]]]] = {}
        if not names:
            return
        ids = tokenizer(names, add_special_tokens=False).input_ids  # type: ignore[operator]
        grouped: dict[int, dict[int, dict[tuple[int, ...], str]]] = {}
        for name, seq in zip(names, ids, strict=True):
            if seq:
                grouped.setdefault(seq[0], {}).setdefault(len(seq), {}).setdefault(tuple(seq), name)
        for first, by_length in grouped.items():
            self.by_first[first] = sorted(by_length.items(), key=lambda item: -item[0])

    def match(self, tokens: list[int], position: int) -> tuple[str, int] | None:
        """The longest trigger starting at ``tokens[position]``: (name, its length in tokens), or None."""
        for length, table in self.by_first.get(tokens[position], ()):
            name = table.get(tuple(tokens[position:position + length]))
            if name is not None:
                return name, length
        return None


class AdapterLibrary:
    """Every embedding and hypernetwork Atelier knows, by scope; thread-safe (the worker thread reads it)."""

    def __init__(self, embedding_dirs: Iterable[Path] = (), hypernetwork_dirs: Iterable[Path] = ()) -> None:
        self.folders: dict[Kind, tuple[Path, ...]] = {
            "embedding": tuple(Path(p) for p in embedding_dirs),
            "hypernetwork": tuple(Path(p) for p in hypernetwork_dirs),
        }
        self._lock = threading.RLock()
        self._scanned: dict[Kind, dict[str, AdapterEntry]] = {"embedding": {}, "hypernetwork": {}}
        self._invalid: dict[Kind, list[tuple[Path, str]]] = {"embedding": [], "hypernetwork": []}
        self._stamps: dict[Kind, tuple] = {"embedding": (), "hypernetwork": ()}
        # Registrations: (kind, guild_id or None) → lower-case name → entry.
        self._registered: dict[tuple[Kind, int | None], dict[str, AdapterEntry]] = {}
        self._indexes: dict[tuple[int | None, int], TriggerIndex] = {}
        self._scopes: dict[tuple[Kind, int | None], dict[str, AdapterEntry]] = {}
        self._dirs: dict[Kind, list[str]] = {"embedding": [], "hypernetwork": []}  # folders seen by the last scan
        self._generation = 0
        self._last_check = 0.0
        self.rescan(force=True)

    # -- scanning and registering -------------------------------------------------------------------------

    def rescan(self, force: bool = False) -> bool:
        """Re-list folders whose mtimes changed (all with ``force``); returns whether anything was re-listed."""
        with self._lock:
            changed = False
            for kind in KINDS:
                watched = [*map(str, self.folders[kind]), *self._dirs[kind]]
                if not force and _dir_stamp(watched) == self._stamps[kind]:
                    continue
                merged: dict[str, AdapterEntry] = {}
                invalid: list[tuple[Path, str]] = []
                walked: list[str] = []
                for folder in self.folders[kind]:
                    report = scan_folder(folder, kind)
                    invalid.extend(report.invalid)
                    walked.extend(d for d in report.dirs if d not in map(str, self.folders[kind]))
                    for key, entry in report.entries.items():
                        old = self._scanned[kind].get(key)
                        if old is not None and old.path == entry.path:
                            entry = old  # keep its cached vectors/hash; freshness is checked on use
                        if key in merged:
                            invalid.append((entry.path, f"another folder already has {entry.name!r}"))
                        else:
                            merged[key] = entry
                self._dirs[kind] = walked
                stamp = _dir_stamp([*map(str, self.folders[kind]), *walked])
                self._scanned[kind], self._invalid[kind], self._stamps[kind] = merged, invalid, stamp
                for path, why in invalid:
                    log.warning("%s %s skipped: %s", kind, path, why)
                changed = True
            if changed:
                self._bump()
            self._last_check = time.monotonic()
            return changed

    def _bump(self) -> None:
        self._generation += 1
        self._indexes.clear()
        self._scopes.clear()

    def register(self, kind: Kind, name: str, path: Path, guild_id: int | None = None,
                 meta: dict[str, str] | None = None) -> AdapterEntry:
        """Add a file to a guild's library (or the global one with ``guild_id=None``); replaces the same name."""
        if kind not in KINDS:
            raise ValueError(f"unknown adapter kind {kind!r}")
        if not valid_name(name):
            raise RequestError(f"name {name!r}: use 1-64 letters, digits, _ or -")
        entry = AdapterEntry(kind, name, Path(path), guild_id, dict(meta or {}))
        with self._lock:
            self._registered.setdefault((kind, guild_id), {})[name.lower()] = entry
            self._bump()
        return entry

    def unregister(self, kind: Kind, name: str, guild_id: int | None = None) -> bool:
        with self._lock:
            removed = self._registered.get((kind, guild_id), {}).pop(name.lower(), None) is not None
            if removed:
                self._bump()
            return removed

    def registrations(self, guild_id: int | None) -> list[Registration]:
        """The registered (not scanned) entries ``guild_id`` sees, the global ones and the guild's own, as plain
        values: what a remote replica needs besides its own folder scan to resolve that guild's prompts exactly
        as here (:meth:`sync`)."""
        with self._lock:
            scopes = [None] if guild_id is None else [None, guild_id]
            return [Registration(e.kind, e.name, str(e.path), e.guild_id, dict(e.meta))
                    for kind in KINDS for g in scopes for e in self._registered.get((kind, g), {}).values()]

    def sync(self, guild_id: int | None, registrations: Iterable[Registration], *, named_in: str | None = None,
             ) -> bool:
        """Make the registrations ``guild_id`` sees equal ``registrations`` (another process's
        :meth:`registrations`); returns whether anything changed. Cheap when nothing did, and an entry whose path
        and metadata are unchanged keeps what it has loaded.

        With ``named_in`` (a prompt's text), ``registrations`` are only the ones that text names: entries whose
        name does not occur in it are left as they are (they cannot change how the text resolves), so a replica
        keeps the adapters earlier prompts loaded, and one deleted on the other side still disappears as soon as
        a prompt names it.
        """
        text = named_in.lower() if named_in is not None else None
        wanted: dict[tuple[Kind, int | None], dict[str, AdapterEntry]] = {}
        for r in registrations:
            wanted.setdefault((r.kind, r.guild_id), {})[r.name.lower()] = AdapterEntry(
                r.kind, r.name, Path(r.path), r.guild_id, dict(r.meta))
        scopes = [None] if guild_id is None else [None, guild_id]
        with self._lock:
            changed = False
            for kind in KINDS:
                for g in scopes:
                    old = self._registered.get((kind, g), {})
                    new = dict(wanted.get((kind, g), {}))
                    if text is not None:  # untouched: what the text does not name
                        new.update({k: v for k, v in old.items() if k not in new and k not in text})
                    for k, entry in list(new.items()):
                        kept = old.get(k)
                        if kept is not None and (kept.path, kept.meta) == (entry.path, entry.meta):
                            new[k] = kept
                    if new.keys() != old.keys() or any(new[k] is not old[k] for k in new):
                        self._registered[(kind, g)] = new
                        changed = True
            if changed:
                self._bump()
            return changed

    @property
    def invalid(self) -> dict[Kind, list[tuple[Path, str]]]:
        """Files the scan skipped, with the reason (shown by ``atelier adapters list``)."""
        return {k: list(v) for k, v in self._invalid.items()}

    # -- lookups ------------------------------------------------------------------------------------------

    def _maybe_rescan(self) -> None:
        if time.monotonic() - self._last_check >= RESCAN_INTERVAL_S:
            self.rescan()

    def _scope(self, kind: Kind, guild_id: int | None) -> dict[str, AdapterEntry]:
        """Everything ``guild_id`` sees of ``kind`` (guild over global); cached until the library changes."""
        key = (kind, guild_id)
        merged = self._scopes.get(key)
        if merged is None:
            merged = dict(self._scanned[kind])
            merged.update(self._registered.get((kind, None), {}))
            if guild_id is not None:
                merged.update(self._registered.get((kind, guild_id), {}))
            self._scopes[key] = merged
        return merged

    def entries(self, kind: Kind, guild_id: int | None = None) -> list[AdapterEntry]:
        """What ``guild_id`` can use of ``kind``, sorted by name."""
        with self._lock:
            self._maybe_rescan()
            return sorted(self._scope(kind, guild_id).values(), key=lambda e: e.name.lower())

    def view(self, guild_id: int | None = None) -> LibraryView:
        """The library as one request of ``guild_id`` sees it."""
        self._maybe_rescan()
        return LibraryView(self, guild_id)

    def trigger_index(self, guild_id: int | None, tokenizer: object) -> TriggerIndex:
        """Token-id triggers of every embedding ``guild_id`` sees; cached until the library changes."""
        with self._lock:
            key = (guild_id, id(tokenizer))
            index = self._indexes.get(key)
            if index is None:
                names = [e.name for e in self._scope("embedding", guild_id).values()]
                index = self._indexes[key] = TriggerIndex(names, tokenizer)
            return index

    def find(self, kind: Kind, name: str, guild_id: int | None = None) -> AdapterEntry:
        """The entry called ``name`` (case-insensitive), or :class:`UnknownAdapterError` with close names."""
        with self._lock:
            scope = self._scope(kind, guild_id)
        entry = scope.get(name.lower())
        if entry is not None:
            return entry
        names = sorted(e.name for e in scope.values())
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        close += [n for n in difflib.get_close_matches(name.lower(), [n.lower() for n in names], n=3, cutoff=0.5)
                  if n not in {c.lower() for c in close}]
        hint = f"; did you mean {', '.join(close[:3])}?" if close else (
            f"; none are available here (add files to {', '.join(map(str, self.folders[kind])) or 'the library'})"
            if not names else "")
        raise UnknownAdapterError(f"unknown {kind} {name!r}{hint}")


class LibraryView:
    """One scope's view: what prompt encoding and the pipeline ask of the library."""

    def __init__(self, library: AdapterLibrary, guild_id: int | None) -> None:
        self.library = library
        self.guild_id = guild_id

    def triggers(self, tokenizer: object) -> TriggerIndex:
        return self.library.trigger_index(self.guild_id, tokenizer)

    def entry(self, kind: Kind, name: str) -> AdapterEntry:
        return self.library.find(kind, name, self.guild_id)

    def embedding(self, name: str) -> Embedding:
        return self.entry("embedding", name).load()  # type: ignore[return-value]

    def hypernetwork(self, name: str, device: torch.device | str = "cpu",
                     dtype: torch.dtype | None = None) -> Hypernetwork:
        """The named hypernetwork with its modules on ``device``/``dtype``."""
        entry = self.entry("hypernetwork", name)
        with self.library._lock:
            return entry.placed(device, dtype)

    def names(self, kind: Kind) -> Iterator[str]:
        return (e.name for e in self.library.entries(kind, self.guild_id))

