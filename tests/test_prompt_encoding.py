"""Prompt encoding: A1111 chunks, emphasis and BREAK; embeddings swapped in by token match, scoped per guild.

References are computed independently in the tests: plain tokenizer + text encoder calls, and for embeddings a
copy of the text encoder whose vocabulary was grown with the vectors (the diffusers way), which must agree with
our swap-at-encoding-time.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from engine.adapters.embeddings import Embedding, write_embedding_pt, write_embedding_safetensors
from engine.adapters.library import AdapterLibrary, UnknownAdapterError
from engine.prompts.encoding import CHUNK_TOKENS, MAX_CHUNKS, PromptEncoder
from engine.prompts.parser import PromptError


@pytest.fixture(scope="module")
def encoder(tiny_model) -> PromptEncoder:
    enc = PromptEncoder(tiny_model.tokenizer, tiny_model.text_encoder, tiny_model.device, tiny_model.dtype, "tiny")
    yield enc
    enc.close()


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def _reference(tiny_model, ids: list[int]) -> torch.Tensor:
    """One chunk the plain way: BOS + ids + pad to 75 + EOS through the text encoder."""
    tok = tiny_model.tokenizer
    row = [tok.bos_token_id, *ids, *[tok.pad_token_id] * (CHUNK_TOKENS - len(ids)), tok.eos_token_id]
    with torch.no_grad():
        return tiny_model.text_encoder(torch.tensor([row]))[0][0]


def _vectors(n: int, width: int, seed: int) -> torch.Tensor:
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed))


def test_plain_prompt_matches_the_tokenizer_padding(tiny_model, encoder: PromptEncoder) -> None:
    tok = tiny_model.tokenizer
    ids = tok(["a red circle"], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = tiny_model.text_encoder(ids)[0][0]
    got = encoder.encode_one("a red circle").context
    assert got.shape == (77, 32)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_emphasis_multiplies_and_restores_the_mean(tiny_model, encoder: PromptEncoder) -> None:
    tok = tiny_model.tokenizer
    a, red, circle = _ids(tok, "a"), _ids(tok, "red"), _ids(tok, "circle")
    base = _reference(tiny_model, a + red + circle)
    weights = torch.ones(77)
    weights[1 + len(a):1 + len(a) + len(red)] = 1.5
    weighted = base * weights[:, None]
    expected = weighted * (base.mean() / weighted.mean())
    got = encoder.encode_one("a (red:1.5) circle").context
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert not torch.allclose(got, base, atol=1e-3)
    assert torch.equal(encoder.encode_one("a (red:1.0) circle").context, encoder.encode_one("a red circle").context)


def test_long_prompts_are_chunked_and_break_starts_a_chunk(tiny_model, encoder: PromptEncoder) -> None:
    tok = tiny_model.tokenizer
    words = " ".join(["cat"] * 80)
    got = encoder.encode_one(words).context
    assert got.shape[0] == 2 * 77
    cat = _ids(tok, "cat")
    torch.testing.assert_close(got[:77], _reference(tiny_model, cat * 75), rtol=0, atol=1e-6)
    torch.testing.assert_close(got[77:], _reference(tiny_model, cat * 5), rtol=0, atol=1e-6)

    split = encoder.encode_one("red circle BREAK blue background").context
    assert split.shape[0] == 2 * 77
    torch.testing.assert_close(split[:77], _reference(tiny_model, _ids(tok, "red circle")), rtol=0, atol=1e-6)
    torch.testing.assert_close(split[77:], _reference(tiny_model, _ids(tok, "blue background")), rtol=0, atol=1e-6)


def test_a_full_chunk_moves_the_words_after_its_last_comma(tiny_model, encoder: PromptEncoder) -> None:
    tok = tiny_model.tokenizer
    head = " ".join(["cat"] * 70) + ","
    tail = "red blue green yellow purple orange"
    chunks, _, _ = encoder.chunk(__import__("engine.prompts.parser", fromlist=["x"]).parse_prompt(f"{head} {tail}"))
    assert len(chunks) == 2
    first = [t for t in chunks[0].tokens if t != tok.pad_token_id]
    assert first == _ids(tok, head)  # the colour words moved to the next chunk whole
    assert [t for t in chunks[1].tokens if t != tok.pad_token_id] == _ids(tok, tail)


def test_too_long_prompt_is_a_clear_error(encoder: PromptEncoder) -> None:
    with pytest.raises(PromptError, match="too long"):
        encoder.encode_one(" ".join(["cat"] * (CHUNK_TOKENS * MAX_CHUNKS + 1)))


@pytest.fixture()
def library(tmp_path: Path) -> AdapterLibrary:
    folder = tmp_path / "embeddings"
    folder.mkdir()
    write_embedding_pt(Embedding("ignored-internal-name", _vectors(2, 32, 1)), folder / "mystyle.pt")
    write_embedding_safetensors(Embedding("x", _vectors(3, 32, 2)), folder / "big-thing.safetensors")
    write_embedding_pt(Embedding("wide", _vectors(1, 768, 3)), folder / "sd15only.pt")
    return AdapterLibrary([folder], [])


def _grown_reference(tiny_model, pieces: list[str | torch.Tensor]) -> torch.Tensor:
    """The same prompt through a copy of the text encoder whose vocabulary holds the vectors as new tokens."""
    tok = tiny_model.tokenizer
    te = copy.deepcopy(tiny_model.text_encoder)
    table = te.get_input_embeddings().weight.data
    ids: list[int] = []
    extra: list[torch.Tensor] = []
    for piece in pieces:
        if isinstance(piece, str):
            ids += _ids(tok, piece)
        else:
            ids += list(range(table.shape[0] + sum(len(v) for v in extra), table.shape[0] + sum(
                len(v) for v in extra) + len(piece)))
            extra.append(piece)
    te.resize_token_embeddings(table.shape[0] + sum(len(v) for v in extra))
    te.get_input_embeddings().weight.data[table.shape[0]:] = torch.cat(extra)
    row = [tok.bos_token_id, *ids, *[tok.pad_token_id] * (CHUNK_TOKENS - len(ids)), tok.eos_token_id]
    with torch.no_grad():
        return te(torch.tensor([row]))[0][0]


def test_embedding_swapped_in_equals_a_grown_vocabulary(tiny_model, encoder: PromptEncoder,
                                                        library: AdapterLibrary) -> None:
    view = library.view()
    got = encoder.encode_one("a MyStyle cat", view)
    expected = _grown_reference(tiny_model, ["a", _vectors(2, 32, 1), "cat"])
    torch.testing.assert_close(got.context, expected, rtol=0, atol=1e-5)
    assert [u.name for u in got.embeddings] == ["mystyle"] and got.embeddings[0].vectors == 2
    assert len(got.embeddings[0].hash) == 12
    # Whole words only, and the tokenizer never grew.
    assert encoder.encode_one("a mystyles cat", view).embeddings == ()
    assert len(tiny_model.tokenizer) == 49408
    assert tiny_model.text_encoder.get_input_embeddings().weight.shape[0] == 49408
    # The longest trigger wins over a shorter one that starts the same way, and hyphens are part of names.
    assert [u.name for u in encoder.encode_one("big-thing", view).embeddings] == ["big-thing"]


def test_an_embedding_is_never_split_across_chunks(tiny_model, encoder: PromptEncoder,
                                                   library: AdapterLibrary) -> None:
    from engine.prompts.parser import parse_prompt

    tok = tiny_model.tokenizer
    prompt = " ".join(["cat"] * 73) + " big-thing"  # 73 + 3 vectors > 75
    chunks, used, _ = encoder.chunk(parse_prompt(prompt), library.view())
    assert [u.name for u in used] == ["big-thing"]
    assert len(chunks) == 2
    assert chunks[0].fixes == [] and chunks[0].tokens[73:] == [tok.pad_token_id] * 2
    [(offset, vectors)] = chunks[1].fixes
    assert offset == 0 and torch.equal(vectors, _vectors(3, 32, 2))


def test_width_mismatch_names_file_width_and_model(encoder: PromptEncoder, library: AdapterLibrary) -> None:
    with pytest.raises(PromptError) as info:
        encoder.encode_one("a sd15only cat", library.view())
    message = str(info.value)
    assert "sd15only.pt" in message and "768" in message and "'tiny'" in message and "32" in message


def test_guilds_have_their_own_names(tmp_path: Path, encoder: PromptEncoder) -> None:
    library = AdapterLibrary([], [])
    for guild, seed in ((1, 10), (2, 20)):
        path = write_embedding_pt(Embedding("s", _vectors(1, 32, seed)), tmp_path / f"g{guild}" / "mystyle.pt")
        library.register("embedding", "mystyle", path, guild_id=guild)
    one = encoder.encode_one("mystyle", library.view(1))
    two = encoder.encode_one("mystyle", library.view(2))
    other = encoder.encode_one("mystyle", library.view(3))
    assert one.embeddings and two.embeddings and not other.embeddings
    assert not torch.allclose(one.context, two.context)
    assert not torch.allclose(one.context, other.context)


def test_unknown_hypernetwork_names_the_closest(tmp_path: Path, encoder: PromptEncoder) -> None:
    from engine.adapters.hypernetwork import create_hypernetwork, write_hypernetwork_pt

    folder = tmp_path / "hn"
    write_hypernetwork_pt(create_hypernetwork("anime", [32]), folder / "anime-style.pt")
    library = AdapterLibrary([], [folder])
    with pytest.raises(UnknownAdapterError, match="anime-style"):
        encoder.encode_one("a cat <hypernet:anime-styel:0.5>", library.view())
    ok = encoder.encode_one("a cat <hypernet:anime-style:0.5>", library.view())
    [use] = ok.hypernets
    assert (use.name, use.multiplier) == ("anime-style", 0.5)
    # The tag is removed from the text: the encoding equals the prompt without it.
    assert torch.equal(ok.context, encoder.encode_one("a cat ", library.view()).context)


def test_negative_prompts_take_embeddings_and_pad_to_the_same_chunks(encoder: PromptEncoder,
                                                                     library: AdapterLibrary) -> None:
    view = library.view()
    cond, uncond = encoder.encode_pair(" ".join(["cat"] * 80), "blurry mystyle", view)
    assert [u.name for u in uncond.embeddings] == ["mystyle"]
    assert cond.chunks == uncond.chunks == 2
    # The negative's second chunk is the empty prompt's encoding (A1111 pads the shorter half with it).
    torch.testing.assert_close(uncond.context[77:], encoder.encode_one("").context, rtol=0, atol=0)
    torch.testing.assert_close(uncond.context[:77], encoder.encode_one("blurry mystyle", view).context)
