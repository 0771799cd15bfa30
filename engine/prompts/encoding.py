"""Prompt text → conditioning tensors, the A1111 way: emphasis, 75-token chunks, ``BREAK``, embeddings swapped in.

This is the one place prompts become tensors. The steps, in order:

1. :func:`engine.prompts.parser.parse_prompt` splits the text into weighted segments and ``<hypernet:…>`` tags.
2. Each segment is tokenized on its own (no BOS/EOS). Walking the tokens, a run of ids that spells an
   embedding's name (longest match first, :class:`engine.adapters.library.TriggerIndex`) is replaced by as many
   placeholder slots as the embedding has vectors; the slots never straddle a chunk boundary.
3. Tokens fill chunks of 75. ``BREAK`` pads the current chunk and starts the next; a chunk that fills up moves the
   words after its last comma (if within 20 tokens) to the next chunk, as A1111 does, so a phrase is not cut.
4. Each chunk becomes BOS + 75 + EOS, padded with the tokenizer's pad token, and goes through the text encoder in
   one batch. A forward hook on the token-embedding layer overwrites the placeholder rows with the embedding
   vectors: the tokenizer and the embedding matrix never grow.
5. Emphasis multiplies each token's hidden state by its weight, then rescales the chunk so its mean is what it
   was (A1111's "original" emphasis). A1111 takes that mean over its whole batch; we take it per prompt, which is
   A1111 at batch size 1 and keeps a prompt's encoding independent of the other prompts in the batch.
6. Chunks are concatenated along the token axis: ``[77·k, width]``.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from engine.prompts.parser import ParsedPrompt, PromptError, parse_prompt

if TYPE_CHECKING:
    from collections.abc import Iterator

    from engine.adapters.hypernetwork import Hypernetwork
    from engine.adapters.library import LibraryView

CHUNK_TOKENS = 75
# Most chunks a prompt may take (600 tokens). Each chunk adds 77 keys to every cross-attention of every step.
MAX_CHUNKS = 8
# A full chunk moves the tokens after its last comma to the next chunk when they are at most this many.
COMMA_BACKTRACK = 20
_CACHE_SIZE = 128


@dataclass(frozen=True)
class HypernetUse:
    """One ``<hypernet:name:multiplier>`` of a prompt, resolved to a network on the model's device."""

    name: str
    hash: str
    multiplier: float
    network: Hypernetwork


@dataclass(frozen=True)
class EmbeddingUse:
    """An embedding a prompt triggered (for the infotext and for users' "what did it use")."""

    name: str
    hash: str
    vectors: int


@dataclass(frozen=True)
class EncodedPrompt:
    """A prompt's conditioning ``[77·chunks, width]`` and the adapters it used."""

    context: torch.Tensor
    hypernets: tuple[HypernetUse, ...] = ()
    embeddings: tuple[EmbeddingUse, ...] = ()
    token_count: int = 0

    @property
    def chunks(self) -> int:
        return self.context.shape[0] // (CHUNK_TOKENS + 2)


@dataclass
class _Chunk:
    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    fixes: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (offset in tokens, vectors)


class PromptEncoder:
    """Encodes prompts for one model's tokenizer and text encoder; results are cached per prompt and scope."""

    def __init__(self, tokenizer: Any, text_encoder: Any, device: torch.device, dtype: torch.dtype,
                 model_name: str = "model") -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.device = device
        self.dtype = dtype
        self.model_name = model_name
        embedding_layer = text_encoder.get_input_embeddings()
        self.width = int(embedding_layer.embedding_dim)
        self.bos = int(tokenizer.bos_token_id)
        self.eos = int(tokenizer.eos_token_id)
        self.pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
        comma = tokenizer.convert_tokens_to_ids(",</w>")
        self.comma = int(comma) if comma is not None and comma != tokenizer.unk_token_id else -1
        self._fixes: list[tuple[int, int, torch.Tensor]] | None = None
        self._hook = embedding_layer.register_forward_hook(self._swap_in)
        self._cache: OrderedDict[tuple[str, int | None, int], EncodedPrompt] = OrderedDict()

    def close(self) -> None:
        """Remove the embedding hook (the text encoder outlives the encoder in tests and tools)."""
        self._hook.remove()

    # -- the hook ------------------------------------------------------------------------------------------

    def _swap_in(self, _module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        """Overwrite placeholder rows with embedding vectors while :meth:`_fixes_active` is on."""
        if not self._fixes:
            return output
        output = output.clone()
        for row, start, vectors in self._fixes:
            output[row, start:start + vectors.shape[0]] = vectors.to(output.dtype)
        return output

    @contextmanager
    def _fixes_active(self, fixes: list[tuple[int, int, torch.Tensor]]) -> Iterator[None]:
        self._fixes = fixes
        try:
            yield
        finally:
            self._fixes = None

    # -- tokens → chunks -----------------------------------------------------------------------------------

    def chunk(self, parsed: ParsedPrompt, view: LibraryView | None = None,
              ) -> tuple[list[_Chunk], list[EmbeddingUse], int]:
        """Fill 75-token chunks from the parsed prompt; returns chunks, embeddings used and the token count."""
        triggers = view.triggers(self.tokenizer) if view is not None else None
        texts = [s.text for s in parsed.segments if not s.is_break]
        ids_per_text = iter(self.tokenizer(texts, add_special_tokens=False).input_ids if texts else [])
        chunks: list[_Chunk] = []
        current = _Chunk()
        used: dict[str, EmbeddingUse] = {}
        count = 0
        last_comma = -1

        def close_chunk() -> None:
            nonlocal current, last_comma, count
            count += len(current.tokens)
            pad = CHUNK_TOKENS - len(current.tokens)
            current.tokens += [self.pad] * pad
            current.weights += [1.0] * pad
            chunks.append(current)
            current, last_comma = _Chunk(), -1
            if len(chunks) > MAX_CHUNKS:
                raise PromptError(f"prompt too long: more than {MAX_CHUNKS * CHUNK_TOKENS} tokens; shorten it")

        for segment in parsed.segments:
            if segment.is_break:
                close_chunk()
                continue
            tokens = next(ids_per_text)
            position = 0
            while position < len(tokens):
                token = tokens[position]
                if token == self.comma:
                    last_comma = len(current.tokens)
                elif (len(current.tokens) == CHUNK_TOKENS and last_comma != -1
                      and len(current.tokens) - last_comma <= COMMA_BACKTRACK):
                    cut = last_comma + 1
                    moved = (current.tokens[cut:], current.weights[cut:])
                    current.tokens, current.weights = current.tokens[:cut], current.weights[:cut]
                    close_chunk()
                    current.tokens, current.weights = list(moved[0]), list(moved[1])
                if len(current.tokens) == CHUNK_TOKENS:
                    close_chunk()
                found = triggers.match(tokens, position) if triggers is not None else None
                if found is None:
                    current.tokens.append(token)
                    current.weights.append(segment.weight)
                    position += 1
                    continue
                name, length = found
                vectors, use = self._embedding_vectors(view, name)  # type: ignore[arg-type]
                used.setdefault(use.name, use)
                if len(current.tokens) + len(vectors) > CHUNK_TOKENS:
                    close_chunk()
                current.fixes.append((len(current.tokens), vectors))
                current.tokens += [self.pad] * len(vectors)
                current.weights += [segment.weight] * len(vectors)
                position += length
        if current.tokens or not chunks:
            close_chunk()
        return chunks, list(used.values()), count

    def _embedding_vectors(self, view: LibraryView, name: str) -> tuple[torch.Tensor, EmbeddingUse]:
        entry = view.entry("embedding", name)
        embedding = entry.load()
        vectors = embedding.for_width(self.width)  # type: ignore[attr-defined]
        if vectors is None:
            widths = ", ".join(str(w) for w in embedding.widths().values())  # type: ignore[attr-defined]
            raise PromptError(
                f"embedding {entry.name!r} ({entry.path.name}) has width {widths}, but model {self.model_name!r} "
                f"needs {self.width}: it was made for another model family"
            )
        if len(vectors) > CHUNK_TOKENS:
            raise PromptError(f"embedding {entry.name!r} has {len(vectors)} vectors; at most {CHUNK_TOKENS} fit")
        return vectors, EmbeddingUse(entry.name, entry.hash, len(vectors))

    # -- chunks → tensors ----------------------------------------------------------------------------------

    @torch.no_grad()
    def _encode_chunks(self, chunks: list[_Chunk]) -> torch.Tensor:
        ids = torch.tensor([[self.bos, *c.tokens, self.eos] for c in chunks], device=self.device)
        fixes = [(row, 1 + offset, vectors.to(self.device)) for row, c in enumerate(chunks)
                 for offset, vectors in c.fixes]
        with self._fixes_active(fixes):
            hidden = self.text_encoder(ids)[0].float()
        weights = torch.tensor([[1.0, *c.weights, 1.0] for c in chunks], device=hidden.device)
        if not torch.all(weights == 1.0):
            original = hidden.mean(dim=(1, 2), keepdim=True)
            hidden = hidden * weights.unsqueeze(-1)
            hidden = hidden * (original / hidden.mean(dim=(1, 2), keepdim=True))
        return hidden.reshape(-1, hidden.shape[-1]).to(self.dtype)

    def _hypernets(self, parsed: ParsedPrompt, view: LibraryView | None) -> tuple[HypernetUse, ...]:
        uses = []
        for tag in parsed.networks:
            if view is None:
                from engine.adapters.library import UnknownAdapterError

                raise UnknownAdapterError(f"unknown hypernetwork {tag.name!r}: no adapter library is loaded")
            entry = view.entry("hypernetwork", tag.name)
            network = view.hypernetwork(tag.name, self.device, self.dtype)
            uses.append(HypernetUse(entry.name, entry.hash, tag.multiplier, network))
        return tuple(uses)

    def encode_one(self, text: str, view: LibraryView | None = None) -> EncodedPrompt:
        """Encode one prompt (cached by text, scope and library version)."""
        generation = view.library._generation if view is not None else -1
        key = (text, view.guild_id if view is not None else None, generation)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        parsed = parse_prompt(text)
        hypernets = self._hypernets(parsed, view)
        chunks, used, count = self.chunk(parsed, view)
        encoded = EncodedPrompt(self._encode_chunks(chunks), hypernets, tuple(used), count)
        self._cache[key] = encoded
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return encoded

    def encode_pair(self, prompt: str, negative: str, view: LibraryView | None = None,
                    ) -> tuple[EncodedPrompt, EncodedPrompt]:
        """(cond, uncond) with equal chunk counts: the shorter is padded with the empty prompt's chunk (A1111)."""
        cond, uncond = self.encode_one(prompt, view), self.encode_one(negative, view)
        if cond.chunks != uncond.chunks:
            empty = self.encode_one("").context
            if cond.chunks < uncond.chunks:
                cond = _padded(cond, empty, uncond.chunks)
            else:
                uncond = _padded(uncond, empty, cond.chunks)
        return cond, uncond

    def encode(self, prompts: list[str], view: LibraryView | None = None) -> list[torch.Tensor]:
        """Just the contexts of several prompts (tools and tests that need no adapters' bookkeeping)."""
        return [self.encode_one(p, view).context for p in prompts]


def _padded(encoded: EncodedPrompt, empty: torch.Tensor, chunks: int) -> EncodedPrompt:
    extra = empty.repeat(chunks - encoded.chunks, 1)
    return EncodedPrompt(torch.cat([encoded.context, extra]), encoded.hypernets, encoded.embeddings,
                         encoded.token_count)
