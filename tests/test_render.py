"""How results look in Discord: attachments (PNG with infotext, re-encoded over the upload limit), embeds, text."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from bot import render
from engine.requests import GenerationRequest


def _noisy(size: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_attachment_is_an_upscaled_png_with_infotext_when_it_fits() -> None:
    a = render.attachment_for(_noisy(64), "a cat\nSteps: 20", "x", limit=10**7)
    image = Image.open(io.BytesIO(a.data))
    assert (a.filename, a.reencoded, image.format, image.size) == ("x.png", False, "PNG", (512, 512))
    assert image.info["parameters"] == "a cat\nSteps: 20"
    assert np.array_equal(np.asarray(image)[::8, ::8], np.asarray(_noisy(64)))  # nearest-neighbour, no new detail


def test_attachment_over_the_limit_is_reencoded_to_fit() -> None:
    png = render.attachment_for(_noisy(256), "info", "x", limit=10**8, scale=1)
    limit = len(png.data) // 3
    a = render.attachment_for(_noisy(256), "info", "x", limit=limit, scale=1)
    assert a.reencoded and len(a.data) <= limit and a.filename.endswith((".webp", ".jpg", ".jpeg"))
    tiny = render.attachment_for(_noisy(256), "info", "x", limit=4000, scale=1)  # forces smaller sizes too
    assert tiny.reencoded and len(tiny.data) <= 4000


def test_reactions_number_only_batches() -> None:
    assert render.reaction_emojis(1) == ["🔁", "🎲", "ℹ️", "❌"]
    assert render.reaction_emojis(3) == ["🔁", "🎲", "1️⃣", "2️⃣", "3️⃣", "ℹ️", "❌"]


def test_embed_lists_parameters_and_each_seed() -> None:
    request = GenerationRequest(prompt="p" * 5000, negative_prompt="blur", width=64, height=96, steps=9,
                                cfg_scale=4.5, sampler="DDIM", seed=5, subseed=9, subseed_strength=0.3, count=2)
    embed = render.result_embed(request, [5, 6], user=None, generation_id=12, model_name="demo", reencoded=True)
    fields = {f.name: f.value for f in embed.fields}
    assert len(embed.description) == render.DESCRIPTION_LIMIT
    assert fields["Size"] == "64×96" and fields["Seeds"] == "1: 5 · 2: 6" and fields["Negative"] == "blur"
    assert fields["Variation"] == "seed 9, strength 0.3"
    assert "#12 · demo" in embed.footer.text and "full PNG" in embed.footer.text


def test_info_text_fits_a_message_and_keeps_code_blocks_closed() -> None:
    text = render.info_text(GenerationRequest(prompt="x"), ["a```b\nSteps: 1", "second"], 3)
    assert len(text) <= 2000 and text.count("```") % 2 == 0 and "Image 2:" in text


def test_progress_text() -> None:
    assert render.progress_text(5, 10).endswith("50%")
    assert render.queued_text(1) == "⏳ Queued — you are next." and "position 3" in render.queued_text(3)
