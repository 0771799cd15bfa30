"""The engine facade the bot uses: the model loads off the loop, requests go through the queue, close is clean."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from engine.queue.jobs import JobCancelled
from engine.requests import GenerationRequest
from engine.service import Engine, EngineNotReady, EngineOptions


async def test_start_submit_generate_close(tiny_model_dir: Path, tmp_path: Path) -> None:
    from engine.adapters.hypernetwork import create_hypernetwork, write_hypernetwork_pt

    write_hypernetwork_pt(create_hypernetwork("x", [32, 64], seed=1), tmp_path / "hn" / "look.pt")
    engine = Engine(EngineOptions(model=str(tiny_model_dir), device="cpu", dtype="float32",
                                  hypernetwork_dirs=(tmp_path / "hn",), collect_window_ms=0,
                                  shutdown_timeout_s=0.2))
    with pytest.raises(EngineNotReady):
        engine.submit(GenerationRequest("a cat"))
    await engine.start()
    assert engine.ready and engine.info.native_size == (64, 64)
    assert engine.info.widths.text == engine.model.text_encoder.config.hidden_size  # plain values the bot reads
    assert engine.info.dtype == "float32" and engine.info.device == "cpu"

    seen: list[tuple[int, int]] = []
    images = await engine.generate(GenerationRequest("a cat <hypernet:look>", steps=3, seed=1),
                                   lambda done, total: seen.append((done, total)))
    assert len(images) == 1 and seen[-1] == (3, 3)
    assert 'Hypernet hashes: "look: ' in images[0].infotext

    handle = engine.submit(GenerationRequest("a dog", steps=2, count=2, seed=4), user_id=7, guild_id=99)
    assert handle.job.user_id == 7 and handle.job.guild_id == 99
    assert [img.seed for img in await handle] == [4, 5]

    long = engine.submit(GenerationRequest("a cow", steps=500, seed=1), user_id=8)
    await asyncio.sleep(0.3)
    left = await engine.close()
    assert [job.id for job in left] == [long.id]
    with pytest.raises(JobCancelled, match="shutting down"):
        await long
    assert not engine.ready and await engine.close() == []
