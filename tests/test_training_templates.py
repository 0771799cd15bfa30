"""Training captions: names and filewords filled in, no stray punctuation, seeded choice of templates."""

from __future__ import annotations

import random

import pytest

from engine.training.templates import TEMPLATE_SETS, captions, fill


def test_names_and_filewords_are_filled_and_empty_captions_leave_no_commas() -> None:
    assert fill("a photo of [name], [filewords]", "mycat", "on a sofa") == "a photo of mycat, on a sofa"
    assert fill("a photo of [name], [filewords]", "mycat") == "a photo of mycat"
    assert fill("[filewords], in the style of [name]", "inky", "  ") == "in the style of inky"
    assert fill("[filewords], [name]", "x", "a, b") == "a, b, x"


def test_every_template_names_the_concept() -> None:
    for name, templates in TEMPLATE_SETS.items():
        assert templates, name
        assert all("[name]" in t for t in templates) or templates == ("[filewords]",), name
        assert len(set(templates)) == len(templates), name


def test_captions_are_seeded_and_use_each_images_words() -> None:
    words = ["red", "", "blue"]
    a = captions("object", "zz", words, random.Random(3))
    assert a == captions("object", "zz", words, random.Random(3))
    assert all("zz" in c for c in a)
    assert not any("blue" in c for c in a[:2]) and not any("red" in c for c in a[1:])  # each image's own words
    plain = captions("plain", "zz", ["a red square"] * 20, random.Random(0))
    assert set(plain) == {"zz", "a red square, zz", "zz, a red square"}
    with pytest.raises(ValueError, match="template set 'people': choose one of object, style, plain, caption"):
        captions("people", "zz", words, random.Random(0))


def test_a_caption_may_place_the_name_itself() -> None:
    caption = "a [name] circle on a blue background"
    assert fill("[filewords]", "zzpink", caption) == "a zzpink circle on a blue background"
    assert captions("caption", "zzpink", [caption], random.Random(0)) == ["a zzpink circle on a blue background"]
