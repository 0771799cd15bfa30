"""Turning /imagine options into engine requests: defaults, limits, sizes, banned words, personal styles."""

from __future__ import annotations

import pytest

from bot.compose import ImagineOptions, banned_word, compose_request, parse_size, rerun, variations
from bot.config import GenerationSettings, GuildSettings
from bot.store.settings import HypernetChoice, StyleDefaults
from engine.requests import RequestError

NATIVE = (512, 512)


def compose(options: ImagineOptions, *, guild: GuildSettings | None = None, styles: StyleDefaults | None = None,
            **defaults: object):
    return compose_request(options, defaults=GenerationSettings(**defaults), guild=guild or GuildSettings(),
                           styles=styles or StyleDefaults(), native=NATIVE, guild_id=7)


def test_defaults_fill_what_was_not_given() -> None:
    r = compose(ImagineOptions(prompt="a cat"), steps=25, cfg_scale=6.0, sampler="DDIM", negative_prompt="blurry")
    assert (r.prompt, r.negative_prompt, r.steps, r.cfg_scale, r.sampler) == ("a cat", "blurry", 25, 6.0, "DDIM")
    assert (r.width, r.height, r.count, r.seed, r.guild_id) == (512, 512, 1, -1, 7)


def test_options_override_defaults() -> None:
    r = compose(ImagineOptions(prompt="a cat", negative="", steps=9, cfg=3.5, seed=42, sampler="euler",
                               count=3, size="640x384"), negative_prompt="blurry")
    assert (r.negative_prompt, r.steps, r.cfg_scale, r.seed, r.sampler, r.count) == ("", 9, 3.5, 42, "Euler", 3)
    assert (r.width, r.height) == (640, 384)


@pytest.mark.parametrize(("aspect", "expected"), [("1:1", (512, 512)), ("16:9", (680, 384)), ("2:3", (416, 624))])
def test_aspect_keeps_the_native_pixel_count(aspect: str, expected: tuple[int, int]) -> None:
    width, height = parse_size(None, aspect, NATIVE, 10**7)
    assert (width, height) == expected
    assert width % 8 == 0 and height % 8 == 0
    assert abs(width * height - 512 * 512) / (512 * 512) < 0.05


@pytest.mark.parametrize(("size", "aspect", "words"), [
    ("big", None, "WIDTHxHEIGHT"), ("500x512", None, "multiples of 8"), ("512x512", "1:1", "not both"),
    (None, "5:4", "choose one of"), ("4096x4096", None, "at most"),
])
def test_bad_sizes_say_what_to_write(size: str | None, aspect: str | None, words: str) -> None:
    with pytest.raises(RequestError, match=words):
        parse_size(size, aspect, NATIVE, 1024 * 1024)


def test_limits_name_the_option() -> None:
    with pytest.raises(RequestError, match="steps: must be between 1 and 30"):
        compose(ImagineOptions(prompt="x", steps=31), max_steps=30)
    with pytest.raises(RequestError, match="count: must be between 1 and 2"):
        compose(ImagineOptions(prompt="x", count=3), max_count=2)
    with pytest.raises(RequestError, match="prompt: describe"):
        compose(ImagineOptions(prompt="   "))
    with pytest.raises(RequestError, match=r"strength: .*choose a hypernet"):
        compose(ImagineOptions(prompt="x", strength=0.5))


def test_banned_words_match_whole_words_case_insensitively() -> None:
    assert banned_word("A Gory scene", ["gory"]) == "gory"
    assert banned_word("allegory of time", ["gory"]) is None
    assert banned_word("big red truck", ["red truck"]) == "red truck"
    guild = GuildSettings(banned_words=["gory"])
    with pytest.raises(RequestError, match="'gory' is not allowed"):
        compose(ImagineOptions(prompt="a GORY mess"), guild=guild)
    with pytest.raises(RequestError, match="negative: 'gory'"):
        compose(ImagineOptions(prompt="fine", negative="gory"), guild=guild)


def test_hypernet_embedding_and_personal_styles_end_up_in_the_prompts() -> None:
    styles = StyleDefaults(hypernetworks=(HypernetChoice("ink", 0.6),), embeddings=("mystyle",),
                           negative_embeddings=("badhands",))
    r = compose(ImagineOptions(prompt="a cat", hypernet="anime", strength=0.8, embedding="fluffy"), styles=styles,
                negative_prompt="blurry")
    assert r.prompt == "a cat <hypernet:anime:0.8>, fluffy, mystyle, <hypernet:ink:0.6>"
    assert r.negative_prompt == "blurry, badhands"


def test_rerun_and_variations_change_only_seeds() -> None:
    base = compose(ImagineOptions(prompt="a cat", seed=10, count=3)).with_seeds()
    again = rerun(base)
    assert again.seed != base.seed and again.prompt == base.prompt and again.subseed_strength == 0
    vary = variations(base, 0.3)
    assert vary.seed == 10 and vary.subseed_strength == 0.3
    assert [s for s, _ in vary.sample_seeds()] == [10, 11, 12]  # each image varies its own original
    one = variations(base, 0.3, seed=12)
    seeds = one.sample_seeds()
    assert [s for s, _ in seeds] == [12, 12, 12]  # every image a variation of image 3
    assert len({sub for _, sub in seeds}) == 3


def test_guild_limits_can_only_tighten_the_global_ones() -> None:
    guild = GuildSettings(max_count=2, max_steps=10)
    with pytest.raises(RequestError, match="count: must be between 1 and 2"):
        compose(ImagineOptions(prompt="x", count=3), guild=guild)
    with pytest.raises(RequestError, match="steps: must be between 1 and 10"):
        compose(ImagineOptions(prompt="x", steps=11), guild=guild)
    assert compose(ImagineOptions(prompt="x"), guild=guild, steps=20).steps == 10  # the default is capped too
    loose = GuildSettings(max_count=16)
    with pytest.raises(RequestError, match="count: must be between 1 and 4"):
        compose(ImagineOptions(prompt="x", count=5), guild=loose)
