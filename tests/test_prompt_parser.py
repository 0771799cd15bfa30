"""Prompt parser: A1111's emphasis and tag syntax, and the errors we raise where A1111 stays silent.

Expected weights are computed here the way A1111 does (each closing bracket multiplies what it encloses, innermost
first, ``[ ]`` by ``1 / 1.1``), so the comparisons are exact, not approximate: an infotext must reproduce bit for bit.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.prompts.parser import (
    MAX_MULTIPLIER,
    MAX_PROMPT_CHARS,
    NAME_PATTERN,
    SUPPORTED_NETWORKS,
    ExtraNetwork,
    ParsedPrompt,
    PromptError,
    Segment,
    is_valid_name,
    parse_prompt,
    strip_networks,
)
from engine.requests import RequestError

UP = 1.1
DOWN = 1 / 1.1
BREAK = Segment("", 1.0, is_break=True)


def segs(text: str) -> list[tuple[str, float]]:
    return [("BREAK" if s.is_break else s.text, s.weight) for s in parse_prompt(text).segments]


def error_of(text: str) -> PromptError:
    with pytest.raises(PromptError) as info:
        parse_prompt(text)
    return info.value


# --------------------------------------------------------------------------------------------------------------
# emphasis, as A1111


def test_plain_text_is_one_segment_of_weight_one() -> None:
    assert segs("normal text") == [("normal text", 1.0)]


def test_round_brackets_multiply_by_1_1() -> None:
    assert segs("an (important) word") == [("an ", 1.0), ("important", 1.0 * UP), (" word", 1.0)]


def test_nested_round_brackets_multiply() -> None:
    assert segs("((a))") == [("a", 1.0 * UP * UP)]
    assert segs("(((sky)))") == [("sky", 1.0 * UP * UP * UP)]
    assert segs("((a))")[0][1] == 1.2100000000000002  # the float A1111 writes, not 1.21


def test_square_brackets_multiply_by_reciprocal() -> None:
    assert segs("[a]") == [("a", 1.0 * DOWN)]
    assert segs("[[a]]") == [("a", 1.0 * DOWN * DOWN)]


def test_explicit_weight() -> None:
    assert segs("(a:1.5)") == [("a", 1.5)]
    assert segs("(a : 1.3 )") == [("a ", 1.3)]  # whitespace around the number belongs to the weight syntax
    assert segs("(a:+.5)") == [("a", 0.5)]
    assert segs("(a:0)") == [("a", 0.0)]
    assert segs("(a:100)") == [("a", 100.0)]


def test_nested_explicit_weight_inside_round_brackets() -> None:
    assert segs("a (b (c:2) d) e") == [
        ("a ", 1.0),
        ("b ", 1.0 * UP),
        ("c", 1.0 * 2.0 * UP),
        (" d", 1.0 * UP),
        (" e", 1.0),
    ]


def test_innermost_first_multiplication_order() -> None:
    # (((house:1.3))) : 1.3 first, then 1.1, then 1.1 — float products depend on the order.
    text = "a (((house:1.3))) [on] a (hill:0.5), sun, (((sky)))."
    assert segs(text) == [
        ("a ", 1.0),
        ("house", 1.0 * 1.3 * UP * UP),  # 1.5730000000000004, not 1.573
        (" ", 1.0),
        ("on", 1.0 * DOWN),
        (" a ", 1.0),
        ("hill", 1.0 * 0.5),
        (", sun, ", 1.0),
        ("sky", 1.0 * UP * UP * UP),
        (".", 1.0),
    ]


def test_colon_without_number_is_literal_text() -> None:
    assert segs("(cat:dog)") == [("cat:dog", 1.0 * UP)]
    assert segs("a: b") == [("a: b", 1.0)]
    assert segs("(a:1e3)") == [("a:1e3", 1.0 * UP)]  # exponents are not weight syntax in A1111


def test_adjacent_equal_weights_merge() -> None:
    assert segs("(unnecessary)(parens)") == [("unnecessaryparens", 1.0 * UP)]
    assert segs("(a:1.1)(b)") == [("ab", 1.1)]
    assert segs("a () b") == [("a  b", 1.0)]  # an empty pair contributes nothing
    assert segs("a [b] c") == [("a ", 1.0), ("b", DOWN), (" c", 1.0)]


def test_escapes_give_literal_characters() -> None:
    assert segs(r"\(literal\]") == [("(literal]", 1.0)]
    assert segs(r"\[a\) \\ b") == [("[a) \\ b", 1.0)]
    assert segs(r"(\))") == [(")", 1.0 * UP)]


def test_other_backslashes_stay_as_written() -> None:
    assert segs(r"a\nb \q") == [(r"a\nb \q", 1.0)]
    assert segs("trailing\\") == [("trailing\\", 1.0)]


def test_whitespace_is_kept() -> None:
    assert segs("  a\tb \n c  ") == [("  a\tb \n c  ", 1.0)]


# --------------------------------------------------------------------------------------------------------------
# BREAK


def test_break_splits_and_trims_surrounding_whitespace() -> None:
    assert parse_prompt("a BREAK b").segments == (Segment("a"), BREAK, Segment("b"))
    assert parse_prompt("a\n BREAK\n\tb").segments == (Segment("a"), BREAK, Segment("b"))


def test_break_inside_brackets_keeps_weight_one_and_splits_the_text() -> None:
    assert parse_prompt("(a BREAK b)").segments == (Segment("a", UP), BREAK, Segment("b", UP))


def test_break_only_as_uppercase_whole_word() -> None:
    assert segs("aBREAK BREAKs break Break") == [("aBREAK BREAKs break Break", 1.0)]


def test_break_at_edges_and_repeated() -> None:
    assert parse_prompt("BREAK a").segments == (BREAK, Segment("a"))
    assert parse_prompt("a BREAK").segments == (Segment("a"), BREAK)
    assert parse_prompt("a BREAK BREAK b").segments == (Segment("a"), BREAK, BREAK, Segment("b"))


def test_text_property_drops_syntax_and_shows_breaks() -> None:
    assert parse_prompt("a (b:1.2) [c] \\(d\\) <hypernet:x:0.5>e").text == "a b c (d) e"
    assert parse_prompt("a BREAK b").text == "a BREAK b"
    assert parse_prompt("BREAK a").text == "BREAK a"
    assert parse_prompt("").text == ""


def test_empty_prompt_has_no_segments() -> None:
    assert parse_prompt("") == ParsedPrompt(segments=(), networks=())


# --------------------------------------------------------------------------------------------------------------
# extra-network tags


def test_tags_are_extracted_in_order_with_defaults_and_negative_multipliers() -> None:
    text = "x <hypernet:foo:-0.5> y <hypernet:bar>"
    parsed = parse_prompt(text)
    assert parsed.networks == (
        ExtraNetwork("hypernet", "foo", -0.5, position=2),
        ExtraNetwork("hypernet", "bar", 1.0, position=24),
    )
    assert parsed.segments == (Segment("x  y "),)
    for network in parsed.networks:
        assert text[network.position :].startswith("<hypernet:")


def test_multiplier_forms() -> None:
    def mult(tag: str) -> float:
        return parse_prompt(tag).networks[0].multiplier

    assert mult("<hypernet:a:0.7>") == 0.7
    assert mult("<hypernet:a:.5>") == 0.5
    assert mult("<hypernet:a:+2>") == 2.0
    assert mult("<hypernet:a:1e-1>") == 0.1
    assert mult(f"<hypernet:a:{MAX_MULTIPLIER}>") == MAX_MULTIPLIER
    assert mult(f"<hypernet:a:-{MAX_MULTIPLIER}>") == -MAX_MULTIPLIER
    assert parse_prompt("<hypernet: my-net_2 : 0.25 >").networks == (ExtraNetwork("hypernet", "my-net_2", 0.25),)


def test_tags_are_removed_before_emphasis() -> None:
    assert segs("(<hypernet:x> cat)") == [(" cat", UP)]
    assert segs("(cat<hypernet:x:2>:1.3)") == [("cat", 1.3)]


def test_angle_brackets_without_tag_shape_are_text() -> None:
    assert parse_prompt("<b> i <3 u, a<b").segments == (Segment("<b> i <3 u, a<b"),)
    assert parse_prompt("<hypernet:unclosed").networks == ()


def test_strip_networks_only_extracts_tags() -> None:
    text, networks = strip_networks("(a <hypernet:x:0.5>  [")  # brackets are not its business
    assert text == "(a   ["
    assert networks == (ExtraNetwork("hypernet", "x", 0.5, position=3),)
    assert strip_networks("no tags") == ("no tags", ())


def test_strip_networks_validates_tags() -> None:
    with pytest.raises(PromptError, match="lora"):
        strip_networks("a <lora:x:1>")


def test_name_rules() -> None:
    assert NAME_PATTERN.pattern
    for good in ("a", "anime_v2", "my-net", "A1-b_2"):
        assert is_valid_name(good)
    for bad in ("", "a b", "a.b", "../x", "né", "a/b"):
        assert not is_valid_name(bad)
    assert frozenset({"hypernet"}) == SUPPORTED_NETWORKS


# --------------------------------------------------------------------------------------------------------------
# errors: each names what, where and how to fix


def test_prompt_error_is_a_request_error() -> None:
    assert issubclass(PromptError, RequestError)


@pytest.mark.parametrize(
    ("text", "position", "fragments"),
    [
        ("a (b", 2, ["'('", "character 3", "never closed", "')'"]),
        ("a b)", 3, ["')'", "character 4", "no matching '('", r"\)"]),
        ("[a", 0, ["'['", "character 1", "never closed", "']'"]),
        ("a]", 1, ["']'", "character 2", "no matching '['", r"\]"]),
        ("(a]", 2, ["']'", "character 3", "'(' at character 1", "')'"]),
        ("[a)", 2, ["')'", "character 3", "'[' at character 1", "']'"]),
        ("[a:1.2)", 6, ["')'", "character 7", "'['"]),
        ("a:1.2)", 5, ["')'", "character 6", "no matching"]),
        ("[a:b:0.5]", 2, ["':'", "character 3", "prompt editing", "not supported"]),
        ("x [a:0.5]", 4, ["':'", "character 5", "prompt editing"]),
        ("[a|b]", 2, ["'|'", "character 3", "alternation", "not supported"]),
        ("(a:-1)", 3, ["-1", "character 4", "out of range", "0", "100"]),
        ("(a:100.5)", 3, ["100.5", "out of range"]),
        ("(a:1.2.3)", 3, ["'1.2.3'", "not a number"]),
        ("(a:.)", 3, ["'.'", "not a number"]),
    ],
)
def test_syntax_errors(text: str, position: int, fragments: list[str]) -> None:
    error = error_of(text)
    message = str(error)
    assert error.position == position
    assert "\n" not in message
    assert "near `" in message  # an excerpt of the prompt
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_error_positions_count_in_the_original_text_with_tags() -> None:
    error = error_of("<hypernet:abc> )")
    assert error.position == 15
    assert "character 16" in str(error)
    assert "abc> )" in str(error)  # the excerpt is from what the user typed


def test_excerpt_is_short_and_one_line() -> None:
    text = "x" * 100 + "\n(" + "y" * 100
    message = str(error_of(text))
    assert "\n" not in message
    assert "…" in message
    assert len(message) < 250


def test_pipe_and_colon_are_fine_outside_square_brackets() -> None:
    assert segs("a | b: (c|d) [((e:f))]") == [("a | b: ", 1.0), ("c|d", UP), (" ", 1.0), ("e:f", UP * UP * DOWN)]


@pytest.mark.parametrize(
    ("tag", "fragments"),
    [
        ("<lora:x:1>", ["<lora:x:1>", "'lora'", "not supported", "<hypernet:"]),
        ("<Hypernet:x>", ["did you mean <hypernet:"]),
        ("<hypernet:x:nan>", ["<hypernet:x:nan>", "'nan'", "not a number"]),
        ("<hypernet:x:inf>", ["'inf'", "not a number"]),
        ("<hypernet:x:abc>", ["'abc'", "not a number", "-10", "10"]),
        ("<hypernet:x:1_0>", ["not a number"]),
        ("<hypernet:x:10.5>", ["10.5", "out of range"]),
        ("<hypernet:x:-11>", ["-11", "out of range"]),
        ("<hypernet:x:1e400>", ["out of range"]),
        ("<hypernet:x:>", ["empty multiplier"]),
        ("<hypernet:x:0.5:1>", ["too many"]),
        ("<hypernet:a b>", ["'a b'", "letters, digits"]),
        ("<hypernet::0.5>", ["''", "letters, digits"]),
        ("<hypernet:../x>", ["'../x'"]),
    ],
)
def test_tag_errors(tag: str, fragments: list[str]) -> None:
    error = error_of(f"cat, {tag} dog")
    message = str(error)
    assert error.position == 5
    assert "character 6" in message
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_long_tags_are_shortened_in_messages() -> None:
    message = str(error_of("<hypernet:" + "a" * 500 + ":x>"))
    assert len(message) < 300


def test_too_long() -> None:
    parse_prompt("a" * MAX_PROMPT_CHARS)
    with pytest.raises(PromptError, match="too long"):
        parse_prompt("a" * (MAX_PROMPT_CHARS + 1))
    with pytest.raises(PromptError, match="too long"):
        strip_networks("a" * (MAX_PROMPT_CHARS + 1))


def test_results_are_frozen() -> None:
    parsed = parse_prompt("(a) <hypernet:x>")
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.segments[0].weight = 2.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.networks[0].name = "y"  # type: ignore[misc]


# --------------------------------------------------------------------------------------------------------------
# properties

SYNTAX_PIECES = ["(", ")", "[", "]", ":", "<", ">", "\\", "|", "BREAK", " ", "\n", "hypernet", "0.5", "1.2", "-1",
                 "a", "x", "<hypernet:", "<lora:", ":0.5)", "é"]
SPECIAL_CHARS = "()[]:<>\\|"

any_text = st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from(SYNTAX_PIECES), max_size=40).map("".join),
    st.lists(st.one_of(st.sampled_from(SYNTAX_PIECES), st.text(max_size=3)), max_size=30).map("".join),
)


@settings(max_examples=300, deadline=None)
@given(any_text)
def test_parse_returns_or_raises_prompt_error_only(text: str) -> None:
    try:
        parsed = parse_prompt(text)
    except PromptError as error:
        message = str(error)
        assert message
        assert "\n" not in message
        assert error.position is None or 0 <= error.position < len(text)
        return
    assert isinstance(parsed, ParsedPrompt)
    previous: Segment | None = None
    for segment in parsed.segments:
        assert math.isfinite(segment.weight) and segment.weight >= 0
        if segment.is_break:
            assert segment == BREAK
        else:
            assert segment.text
            assert previous is None or previous.is_break or previous.weight != segment.weight
        previous = segment
    for network in parsed.networks:
        assert network.kind in SUPPORTED_NETWORKS
        assert is_valid_name(network.name)
        assert abs(network.multiplier) <= MAX_MULTIPLIER
        assert text[network.position :].startswith(f"<{network.kind}:")
    assert strip_networks(text)[1] == parsed.networks


plain_text = st.text(
    alphabet=st.characters(blacklist_characters=SPECIAL_CHARS, blacklist_categories=("Cs",)), min_size=1
).filter(lambda text: "BREAK" not in text)


@settings(max_examples=300, deadline=None)
@given(plain_text)
def test_text_without_syntax_is_one_segment_unchanged(text: str) -> None:
    assert parse_prompt(text) == ParsedPrompt(segments=(Segment(text, 1.0),), networks=())


escapable_text = st.text(
    alphabet=st.one_of(st.sampled_from("()[]\\"), st.characters(blacklist_characters=SPECIAL_CHARS)), min_size=1
).filter(lambda text: "BREAK" not in text)


@settings(max_examples=300, deadline=None)
@given(escapable_text)
def test_escaping_every_bracket_gives_the_literal_text(text: str) -> None:
    escaped = "".join("\\" + ch if ch in "()[]\\" else ch for ch in text)
    assert parse_prompt(escaped).segments == (Segment(text, 1.0),)
    assert parse_prompt(f"({escaped})").segments == (Segment(text, UP),)
