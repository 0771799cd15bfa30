"""Caption templates for training: ``[name]`` is what is being learned, ``[filewords]`` an image's own caption.

Varied sentences around the new name keep an embedding or hypernetwork from latching onto one phrasing (the
textual-inversion paper's practice, which A1111 and diffusers follow). "object" sentences talk about a thing in
the picture, "style" sentences about how the picture is made; "plain" is the name (and the caption) alone, for
small models that know no photography words — the bundled demo model is one; "caption" uses each image's caption
as written, which places ``[name]`` itself.
"""

from __future__ import annotations

import random
import re

OBJECT_TEMPLATES: tuple[str, ...] = (
    "a photo of [name], [filewords]",
    "a picture of [name]",
    "[name], [filewords]",
    "a close-up photo of [name]",
    "a bright photo of [name]",
    "a dim photo of [name]",
    "a cropped photo of [name]",
    "a good photo of [name], [filewords]",
    "a photo of the small [name]",
    "a photo of the large [name]",
    "an image showing [name], [filewords]",
    "a snapshot of [name]",
    "a clean photo of [name]",
    "a blurry photo of [name]",
    "a photo of one [name], [filewords]",
    "a rendition of [name]",
)

STYLE_TEMPLATES: tuple[str, ...] = (
    "a painting in the style of [name]",
    "[filewords], in the style of [name]",
    "an artwork by [name]",
    "a picture in the style of [name], [filewords]",
    "a drawing in the manner of [name]",
    "[filewords], art by [name]",
    "a small picture in the style of [name]",
    "a large picture in the style of [name]",
    "an illustration, style of [name], [filewords]",
    "a rendering in the style of [name]",
    "[name] style, [filewords]",
    "a detailed image in the style of [name]",
)

PLAIN_TEMPLATES: tuple[str, ...] = ("[name]", "[filewords], [name]", "[name], [filewords]")

# Each image's caption as written; the captions place ``[name]`` themselves ("a [name] circle on grey").
CAPTION_TEMPLATES: tuple[str, ...] = ("[filewords]",)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {"object": OBJECT_TEMPLATES, "style": STYLE_TEMPLATES,
                                             "plain": PLAIN_TEMPLATES, "caption": CAPTION_TEMPLATES}


def fill(template: str, name: str, filewords: str = "") -> str:
    """``template`` with ``[name]`` and ``[filewords]`` filled; an empty caption leaves no stray commas."""
    # Filewords first, so a caption may place the name itself ("a [name] circle on a blue background").
    text = template.replace("[filewords]", filewords.strip()).replace("[name]", name)
    text = re.sub(r"\s*,\s*(,\s*)*", ", ", text)  # collapse empty slots: "a, , b" → "a, b"
    return text.strip(" ,")


def captions(template_set: str, name: str, filewords: list[str], rng: random.Random) -> list[str]:
    """One caption per image: a template drawn from ``template_set`` with that image's filewords."""
    try:
        templates = TEMPLATE_SETS[template_set]
    except KeyError:
        raise ValueError(f"template set {template_set!r}: choose one of {', '.join(TEMPLATE_SETS)}") from None
    return [fill(rng.choice(templates), name, words) for words in filewords]
