"""AdapterLibrary: name-only scans, lazy loading, rescans, guild scopes, lookups, triggers, hashes, placed copies."""

from __future__ import annotations

import builtins
import hashlib
import io
import os
from pathlib import Path

import pytest
import torch

import engine.adapters.library as library_module
from engine.adapters.embeddings import Embedding, write_embedding_pt, write_embedding_safetensors
from engine.adapters.files import AdapterFileError
from engine.adapters.hypernetwork import create_hypernetwork, write_hypernetwork_pt, write_hypernetwork_safetensors
from engine.adapters.library import AdapterLibrary, TriggerIndex, UnknownAdapterError
from engine.requests import RequestError

DIM = 32


def vecs(seed: int, n: int = 2) -> torch.Tensor:
    return torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed))


def emb_file(path: Path, seed: int = 0, n: int = 2) -> Path:
    """An A1111 embedding .pt (or kohya .safetensors by suffix) with vectors from ``seed``."""
    emb = Embedding(path.stem, vecs(seed, n))
    if path.suffix == ".safetensors":
        return write_embedding_safetensors(emb, path)
    return write_embedding_pt(emb, path)


def bump_mtime(path: Path, seconds: int = 5) -> None:
    """Move a file's or folder's mtime forward, so a change is seen even on coarse timestamps."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 10**9))


def names(lib: AdapterLibrary, kind: str = "embedding", guild_id: int | None = None) -> list[str]:
    return [e.name for e in lib.entries(kind, guild_id)]


@pytest.fixture(scope="module")
def tok():
    from engine.tiny import load_tokenizer

    return load_tokenizer("sd1")


# ----------------------------------------------------------------------------------------------- scanning


def test_scan_lists_names_without_opening_files(tmp_path, monkeypatch):
    """Junk files scan fine and nothing is opened; the error names the file only when the entry is loaded."""
    folder = tmp_path / "emb"
    (folder / "sub").mkdir(parents=True)
    (folder / "broken.pt").write_bytes(b"this is not a torch file at all" * 4)
    (folder / "sub" / "alsobroken.pt").write_bytes(b"\x00junk" * 20)
    hn_folder = tmp_path / "hn"
    hn_folder.mkdir()
    (hn_folder / "badnet.pt").write_bytes(b"junk junk junk junk")

    opened: list[str] = []
    real_open, real_read_bytes = builtins.open, Path.read_bytes

    def spy_open(file, *args, **kwargs):
        if str(tmp_path) in str(file):
            opened.append(str(file))
        return real_open(file, *args, **kwargs)

    def spy_read_bytes(self):
        opened.append(str(self))
        return real_read_bytes(self)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(io, "open", spy_open)
    monkeypatch.setattr(Path, "read_bytes", spy_read_bytes)
    library_module.short_hash(folder / "broken.pt")
    (folder / "sub" / "alsobroken.pt").open("rb").close()
    assert len(opened) == 2  # the spies work
    opened.clear()
    lib = AdapterLibrary([folder], [hn_folder])
    listed = names(lib)
    hn_listed = names(lib, "hypernetwork")
    monkeypatch.undo()

    assert opened == []
    assert listed == ["alsobroken", "broken"]
    assert hn_listed == ["badnet"]
    entry = lib.find("embedding", "broken")
    assert entry._loaded is None and entry._hash is None
    with pytest.raises(AdapterFileError, match=r"broken\.pt"):
        entry.load()
    with pytest.raises(AdapterFileError, match=r"alsobroken\.pt"):
        lib.view().embedding("alsobroken")
    with pytest.raises(AdapterFileError, match=r"badnet\.pt"):
        lib.view().hypernetwork("badnet")


def test_load_is_lazy_and_cached(tmp_path):
    emb_file(tmp_path / "style.pt", seed=3)
    lib = AdapterLibrary([tmp_path])
    entry = lib.find("embedding", "style")
    assert entry._loaded is None
    first = entry.load()
    assert torch.equal(first.vectors, vecs(3))
    assert entry.load() is first
    assert lib.view().embedding("style") is first


def test_recursive_scan_case_insensitive_lookup_keeps_spelling(tmp_path):
    emb_file(tmp_path / "MyStyle.pt", seed=1)
    emb_file(tmp_path / "a" / "b" / "deep_one.safetensors", seed=2)
    emb_file(tmp_path / "a" / "Upper.PT", seed=4)
    lib = AdapterLibrary([tmp_path])
    assert names(lib) == ["deep_one", "MyStyle", "Upper"]
    for asked in ("mystyle", "MYSTYLE", "MyStyle"):
        entry = lib.find("embedding", asked)
        assert entry.name == "MyStyle" and entry.path == tmp_path / "MyStyle.pt"
    assert torch.equal(lib.view().embedding("DEEP_ONE").vectors, vecs(2))
    assert list(lib.view().names("embedding")) == ["deep_one", "MyStyle", "Upper"]


def test_lowercase_file_found_by_mixed_case_name(tmp_path):
    emb_file(tmp_path / "mystyle.pt")
    lib = AdapterLibrary([tmp_path])
    assert lib.find("embedding", "MyStyle").name == "mystyle"


def test_invalid_names_are_reported_and_unusable(tmp_path):
    for stem in ("my style", "my.style", "ok-name_1", "x" * 65):
        emb_file(tmp_path / f"{stem}.pt")
    lib = AdapterLibrary([tmp_path])
    assert names(lib) == ["ok-name_1"]
    invalid = {p.name: why for p, why in lib.invalid["embedding"]}
    assert set(invalid) == {"my style.pt", "my.style.pt", "x" * 65 + ".pt"}
    assert all("letters, digits" in why for why in invalid.values())
    for stem in ("my style", "my.style", "my", "x" * 65):
        with pytest.raises(UnknownAdapterError):
            lib.find("embedding", stem)


def test_duplicate_names_keep_first_in_sorted_path_order(tmp_path):
    emb_file(tmp_path / "b" / "dup.pt", seed=2)
    emb_file(tmp_path / "a" / "DUP.safetensors", seed=1)
    lib = AdapterLibrary([tmp_path])
    entry = lib.find("embedding", "dup")
    assert entry.path == tmp_path / "a" / "DUP.safetensors" and entry.name == "DUP"
    assert torch.equal(entry.load().vectors, vecs(1))
    reported = lib.invalid["embedding"]
    assert [p for p, _ in reported] == [tmp_path / "b" / "dup.pt"]
    assert "dup" in reported[0][1].lower()


def test_duplicate_across_folders_keeps_first_folder(tmp_path):
    first, second = tmp_path / "one", tmp_path / "two"
    emb_file(second / "same.pt", seed=2)
    emb_file(first / "same.pt", seed=1)
    lib = AdapterLibrary([first, second])
    assert lib.find("embedding", "same").path == first / "same.pt"
    assert [p for p, _ in lib.invalid["embedding"]] == [second / "same.pt"]
    lib_reversed = AdapterLibrary([second, first])
    assert lib_reversed.find("embedding", "same").path == second / "same.pt"


def test_other_suffixes_and_hidden_files_are_ignored(tmp_path):
    emb_dir, hn_dir = tmp_path / "emb", tmp_path / "hn"
    emb_file(emb_dir / "real.pt")
    (emb_dir / "notes.txt").write_text("hello")
    (emb_dir / "model.ckpt").write_bytes(b"junk")
    (emb_dir / "bad name.txt").write_text("not an adapter, not reported")
    emb_file(emb_dir / ".hidden.pt")
    emb_file(emb_dir / ".cache" / "cached.pt")
    emb_file(emb_dir / "picture.png.txt")
    write_hypernetwork_pt(create_hypernetwork("net", widths=(DIM,)), hn_dir / "net.pt")
    (hn_dir / "picture.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (hn_dir / "emb.bin").write_bytes(b"junk")
    lib = AdapterLibrary([emb_dir], [hn_dir])
    assert names(lib) == ["real"]
    assert names(lib, "hypernetwork") == ["net"]
    assert lib.invalid == {"embedding": [], "hypernetwork": []}


def test_missing_folder_is_empty(tmp_path):
    lib = AdapterLibrary([tmp_path / "nope"], [tmp_path / "nope2"])
    assert names(lib) == [] and names(lib, "hypernetwork") == []


# ----------------------------------------------------------------------------------------------- rescans


def test_rescan_finds_added_file(tmp_path):
    emb_file(tmp_path / "old.pt")
    lib = AdapterLibrary([tmp_path])
    emb_file(tmp_path / "new.pt", seed=5)
    bump_mtime(tmp_path)
    with pytest.raises(UnknownAdapterError):
        lib.find("embedding", "new")
    assert lib.rescan() is True
    assert torch.equal(lib.find("embedding", "new").load().vectors, vecs(5))
    assert lib.rescan() is False


def test_rescan_keeps_loaded_entries(tmp_path):
    emb_file(tmp_path / "keep.pt", seed=1)
    lib = AdapterLibrary([tmp_path])
    loaded = lib.view().embedding("keep")
    emb_file(tmp_path / "other.pt")
    bump_mtime(tmp_path)
    assert lib.rescan()
    assert lib.view().embedding("keep") is loaded


def test_automatic_rescan_on_entries_and_view(tmp_path, monkeypatch):
    monkeypatch.setattr(library_module, "RESCAN_INTERVAL_S", 0)
    (tmp_path / "sub").mkdir()
    emb_file(tmp_path / "gone.pt")
    lib = AdapterLibrary([tmp_path])
    assert names(lib) == ["gone"]

    emb_file(tmp_path / "sub" / "added.pt", seed=7)
    bump_mtime(tmp_path / "sub")
    assert names(lib) == ["added", "gone"]

    emb_file(tmp_path / "viewed.pt", seed=8)
    bump_mtime(tmp_path, 10)
    assert torch.equal(lib.view().embedding("viewed").vectors, vecs(8))

    (tmp_path / "gone.pt").unlink()
    bump_mtime(tmp_path, 20)
    assert names(lib) == ["added", "viewed"]
    with pytest.raises(UnknownAdapterError):
        lib.view().embedding("gone")


def test_no_automatic_rescan_within_interval(tmp_path, monkeypatch):
    monkeypatch.setattr(library_module, "RESCAN_INTERVAL_S", 3600)
    lib = AdapterLibrary([tmp_path])
    emb_file(tmp_path / "late.pt")
    bump_mtime(tmp_path)
    assert names(lib) == []
    lib.rescan()
    assert names(lib) == ["late"]


def test_changed_file_is_reloaded_and_rehashed(tmp_path, monkeypatch):
    monkeypatch.setattr(library_module, "RESCAN_INTERVAL_S", 0)
    path = emb_file(tmp_path / "changing.pt", seed=1)
    lib = AdapterLibrary([tmp_path])
    entry = lib.find("embedding", "changing")
    old_hash = entry.hash
    assert torch.equal(lib.view().embedding("changing").vectors, vecs(1))

    emb_file(path, seed=2)
    bump_mtime(path)
    bump_mtime(tmp_path)
    assert torch.equal(lib.view().embedding("changing").vectors, vecs(2))
    new_hash = lib.find("embedding", "changing").hash
    assert new_hash != old_hash
    assert new_hash == hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def test_changed_file_reloaded_without_folder_change(tmp_path):
    """An in-place rewrite (same folder mtime) is still seen, through the entry's size/mtime check."""
    path = emb_file(tmp_path / "inplace.pt", seed=1)
    lib = AdapterLibrary([tmp_path])
    assert torch.equal(lib.view().embedding("inplace").vectors, vecs(1))
    folder_stat = tmp_path.stat()
    emb_file(path, seed=2)
    os.utime(tmp_path, ns=(folder_stat.st_atime_ns, folder_stat.st_mtime_ns))
    bump_mtime(path)
    assert torch.equal(lib.view().embedding("inplace").vectors, vecs(2))


# ----------------------------------------------------------------------------------------------- scopes

G, OTHER = 111, 222


def test_guild_scopes(tmp_path):
    glob = tmp_path / "global"
    emb_file(glob / "shared.pt", seed=1)
    emb_file(glob / "everyone.pt", seed=2)
    mine = emb_file(tmp_path / "guild" / "whatever-file.pt", seed=3)
    only = emb_file(tmp_path / "guild" / "only.pt", seed=4)
    lib = AdapterLibrary([glob])

    entry = lib.register("embedding", "Shared", mine, guild_id=G)
    assert entry.guild_id == G
    lib.register("embedding", "guildonly", only, guild_id=G)

    assert torch.equal(lib.view(G).embedding("shared").vectors, vecs(3))
    assert lib.view(G).entry("embedding", "SHARED").name == "Shared"
    assert torch.equal(lib.view(G).embedding("everyone").vectors, vecs(2))
    assert torch.equal(lib.view(G).embedding("guildonly").vectors, vecs(4))
    assert list(lib.view(G).names("embedding")) == ["everyone", "guildonly", "Shared"]

    for other in (OTHER, None):
        assert torch.equal(lib.view(other).embedding("shared").vectors, vecs(1))
        with pytest.raises(UnknownAdapterError):
            lib.view(other).embedding("guildonly")
        assert names(lib, guild_id=other) == ["everyone", "shared"]

    assert lib.unregister("embedding", "SHARED", guild_id=G) is True
    assert torch.equal(lib.view(G).embedding("shared").vectors, vecs(1))
    assert lib.unregister("embedding", "shared", guild_id=G) is False
    assert lib.unregister("embedding", "guildonly", guild_id=OTHER) is False
    assert lib.unregister("embedding", "guildonly", guild_id=G) is True
    with pytest.raises(UnknownAdapterError):
        lib.view(G).embedding("guildonly")


def test_global_registration_is_seen_by_every_guild(tmp_path):
    path = emb_file(tmp_path / "file.pt", seed=9)
    lib = AdapterLibrary()
    lib.register("embedding", "everywhere", path)
    for guild in (None, G, OTHER):
        assert torch.equal(lib.view(guild).embedding("everywhere").vectors, vecs(9))
    with pytest.raises(UnknownAdapterError):
        lib.find("hypernetwork", "everywhere")


def test_register_hypernetwork_in_guild(tmp_path):
    path = write_hypernetwork_safetensors(create_hypernetwork("x", widths=(DIM,), seed=1), tmp_path / "x.safetensors")
    lib = AdapterLibrary()
    lib.register("hypernetwork", "guildnet", path, guild_id=G)
    assert lib.view(G).hypernetwork("guildnet").widths() == {DIM}
    with pytest.raises(UnknownAdapterError):
        lib.view(OTHER).hypernetwork("guildnet")


@pytest.mark.parametrize("bad", ["my style", "my.style", "", "x" * 65, "naïve"])
def test_register_invalid_name(tmp_path, bad):
    path = emb_file(tmp_path / "file.pt")
    lib = AdapterLibrary()
    with pytest.raises(RequestError):
        lib.register("embedding", bad, path, guild_id=G)
    assert names(lib, guild_id=G) == []


# ----------------------------------------------------------------------------------------------- lookups


def test_unknown_name_suggests_close_names(tmp_path):
    for stem in ("anime-style", "portrait", "landscape"):
        emb_file(tmp_path / f"{stem}.pt")
    lib = AdapterLibrary([tmp_path])
    with pytest.raises(UnknownAdapterError) as info:
        lib.find("embedding", "anime-styel")
    message = str(info.value)
    assert "anime-styel" in message and "anime-style" in message
    assert "landscape" not in message
    assert isinstance(info.value, RequestError)
    with pytest.raises(UnknownAdapterError, match=r"portrait"):
        lib.view().embedding("PORTRAT")


def test_unknown_name_in_empty_library(tmp_path):
    lib = AdapterLibrary([tmp_path], [tmp_path / "hn"])
    with pytest.raises(UnknownAdapterError, match="none are available") as info:
        lib.find("hypernetwork", "anything")
    assert str(tmp_path / "hn") in str(info.value)
    with pytest.raises(UnknownAdapterError, match="none are available"):
        AdapterLibrary().view(G).embedding("anything")


# ----------------------------------------------------------------------------------------------- triggers


def test_trigger_index_longest_first(tok):
    index = TriggerIndex(["cat", "cat-girl"], tok)
    assert tok("cat", add_special_tokens=False).input_ids == tok("cat-girl", add_special_tokens=False).input_ids[:1]
    tokens = tok("a cat-girl and a cat", add_special_tokens=False).input_ids
    assert index.match(tokens, 1) == ("cat-girl", 3)
    assert index.match(tokens, len(tokens) - 1) == ("cat", 1)
    assert index.match(tokens, 0) is None
    # the order the names are given in does not matter
    assert TriggerIndex(["cat-girl", "cat"], tok).match(tokens, 1) == ("cat-girl", 3)


def test_trigger_index_case_insensitive_and_word_end(tok):
    index = TriggerIndex(["MyStyle", "cat"], tok)
    for text in ("mystyle", "MYSTYLE", "MyStyle"):
        tokens = tok(text, add_special_tokens=False).input_ids
        assert index.match(tokens, 0) == ("MyStyle", len(tokens))
    for text in ("cats", "catgirls", "a mystyles photo", "mystyleish"):
        tokens = tok(text, add_special_tokens=False).input_ids
        assert all(index.match(tokens, i) is None for i in range(len(tokens))), text


def test_trigger_index_of_library_view(tmp_path, tok):
    emb_file(tmp_path / "cat.pt")
    lib = AdapterLibrary([tmp_path])
    index = lib.view(G).triggers(tok)
    assert lib.view(G).triggers(tok) is index
    tokens = tok("cat-girl", add_special_tokens=False).input_ids
    assert index.match(tokens, 0) == ("cat", 1)
    lib.register("embedding", "cat-girl", emb_file(tmp_path / "guild" / "cg.pt"), guild_id=G)
    assert lib.view(G).triggers(tok).match(tokens, 0) == ("cat-girl", 3)
    assert lib.view(OTHER).triggers(tok).match(tokens, 0) == ("cat", 1)


# ----------------------------------------------------------------------------------------------- hash, placed


def test_hash_is_short_sha256_of_file(tmp_path):
    emb_path = emb_file(tmp_path / "emb" / "one.pt", seed=1)
    hn_path = write_hypernetwork_pt(create_hypernetwork("net", widths=(DIM,)), tmp_path / "hn" / "net.pt")
    lib = AdapterLibrary([tmp_path / "emb"], [tmp_path / "hn"])
    for kind, name, path in (("embedding", "one", emb_path), ("hypernetwork", "net", hn_path)):
        value = lib.find(kind, name).hash
        assert len(value) == 12 and all(c in "0123456789abcdef" for c in value)
        assert value == hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert lib.find("embedding", "one")._loaded is None


def test_placed_copy_is_cast_and_cached(tmp_path):
    write_hypernetwork_pt(create_hypernetwork("net", widths=(DIM,), seed=3), tmp_path / "net.pt")
    lib = AdapterLibrary([], [tmp_path])
    view = lib.view()
    placed = view.hypernetwork("net", "cpu", torch.float64)
    base = lib.find("hypernetwork", "net").load()
    assert placed is not base
    params, base_params = list(placed.parameters()), list(base.parameters())
    assert params and all(p.dtype == torch.float64 for p in params)
    assert all(p.dtype == torch.float32 for p in base_params)
    assert all(torch.equal(p, b.double()) for p, b in zip(params, base_params, strict=True))
    assert view.hypernetwork("net", "cpu", torch.float64) is placed
    assert lib.view(G).hypernetwork("NET", "cpu", torch.float64) is placed
    other = view.hypernetwork("net", "cpu", torch.float32)
    assert other is not placed and other is not base
    assert all(p.dtype == torch.float32 for p in other.parameters())
    assert not any(m.training for pair in placed.modules.values() for m in pair)


def test_sync_mirrors_another_librarys_registrations_and_keeps_what_is_loaded(tmp_path: Path) -> None:
    bot, replica = AdapterLibrary(), AdapterLibrary()
    bot.register("embedding", "spot", emb_file(tmp_path / "spot.pt", seed=1), guild_id=7)
    bot.register("embedding", "stripe", emb_file(tmp_path / "stripe.pt", seed=2), guild_id=7)
    assert replica.sync(7, bot.registrations(7))
    spot = replica.find("embedding", "spot", 7)
    assert torch.equal(replica.view(7).embedding("spot").vectors, vecs(1))
    assert not replica.sync(7, bot.registrations(7))  # nothing changed: cheap, and spot stays loaded
    assert replica.find("embedding", "spot", 7) is spot
    bot.unregister("embedding", "stripe", 7)
    assert replica.sync(7, bot.registrations(7))
    assert replica.find("embedding", "spot", 7) is spot  # untouched by the other's removal
    with pytest.raises(UnknownAdapterError):
        replica.find("embedding", "stripe", 7)


def test_sync_named_in_a_prompt_leaves_the_others_alone(tmp_path: Path) -> None:
    """A replica gets only the registrations a prompt names: the others stay (and stay loaded); a named one the
    other side no longer has is removed."""
    bot, replica = AdapterLibrary(), AdapterLibrary()
    bot.register("embedding", "spot", emb_file(tmp_path / "spot.pt", seed=1), guild_id=7)
    bot.register("embedding", "stripe", emb_file(tmp_path / "stripe.pt", seed=2), guild_id=7)
    replica.sync(7, bot.registrations(7))
    stripe = replica.find("embedding", "stripe", 7)
    only_spot = [r for r in bot.registrations(7) if r.name == "spot"]
    assert not replica.sync(7, only_spot, named_in="a cat, spot")
    assert replica.find("embedding", "stripe", 7) is stripe
    bot.unregister("embedding", "spot", 7)
    assert replica.sync(7, [], named_in="a Spot cat")
    with pytest.raises(UnknownAdapterError):
        replica.find("embedding", "spot", 7)
    assert replica.find("embedding", "stripe", 7) is stripe
