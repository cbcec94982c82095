"""Tests of explistops_jax.explain: the four styles, reading steps back, the word list."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from explistops_jax.errors import UserError
from explistops_jax.explain import (
    STYLES,
    WORDS,
    Step,
    explain,
    read_steps,
    render_step,
    steps,
    tokenize,
)
from explistops_jax.listops import SamplerConfig, parse, sample

TESTDATA = Path(__file__).parent / "testdata"


# --------------------------------------------------------- the authors' medium format


@pytest.mark.parametrize("expression, modulus, line", [
    ("[MAX 3 2 ]", 30, "Max, largest number of [3, 2] is 3"),
    ("[MIN 3 0 0 3 ]", 30, "Min, smallest number of [3, 0, 0, 3] is 0"),
    ("[MED 4 1 3 ]", 30, "MED, sorted list, [1, 3, 4], MEDIAN is 3"),
    ("[SM 0 8 4 0 3 9 ]", 10, "SUM, add [0, 8, 4, 0, 3, 9], sum is 24, answer is 4"),
])
def test_medium_reproduces_the_released_lines(expression, modulus, line):
    answer = line.rsplit(" ", 1)[1]
    assert explain(parse(expression), "medium", modulus) == f"{line}\nFinal answer: {answer}"


def test_steps_are_post_order_with_children_replaced_by_values():
    tree = parse("[MAX 2 [SM 15 27 1 ] [MIN [MED 1 5 8 8 ] 9 ] 0 ]")
    assert steps(tree) == [
        Step("SM", (15, 27, 1), 13, total=43),
        Step("MED", (1, 5, 8, 8), 6),
        Step("MIN", (6, 9), 6),
        Step("MAX", (2, 13, 6, 0), 13),
    ]
    assert steps(7) == []


def test_all_styles_of_one_tree():
    tree = parse("[MAX 2 [SM 15 27 1 ] [MIN [MED 4 1 3 ] 9 ] 0 ]")
    assert explain(tree, "none") == "13"
    assert explain(tree, "short") == "SUM, 13\nMED, 3\nMIN, 3\nMAX, 13\nFinal answer: 13"
    assert explain(tree, "medium") == (
        "SUM, add [15, 27, 1], sum is 43, answer is 13\n"
        "MED, sorted list, [1, 3, 4], MEDIAN is 3\n"
        "Min, smallest number of [3, 9] is 3\n"
        "Max, largest number of [2, 13, 3, 0] is 13\n"
        "Final answer: 13")
    assert explain(tree, "long") == (
        "SUM operator so we have to add the numbers [15, 27, 1], sum is 43, "
        "43 modulo 30 is 13, so the answer is 13\n"
        "MEDIAN operator so we have to find the median of the numbers [4, 1, 3], "
        "sorted they are [1, 3, 4], the median is 3, so the answer is 3\n"
        "MIN operator so we have to find the smallest of the numbers [3, 9], "
        "the smallest number is 3, so the answer is 3\n"
        "MAX operator so we have to find the largest of the numbers [2, 13, 3, 0], "
        "the largest number is 13, so the answer is 13\n"
        "Final answer: 13")


def test_golden_file_matches():
    golden = json.loads((TESTDATA / "explanations_golden.json").read_text())
    for case in golden:
        for style in STYLES:
            assert explain(parse(case["expression"]), style, case["modulus"]) == case[style]


def test_bare_value_and_unknown_style():
    assert explain(5, "medium") == "Final answer: 5"
    assert explain(5, "none") == "5"
    with pytest.raises(UserError, match="style"):
        explain(parse("[MAX 1 2 ]"), "verbose")
    with pytest.raises(UserError, match="no steps"):
        render_step(Step("MAX", (1, 2), 2), "none")


# --------------------------------------------------------------------- reading back

RANDOM = SamplerConfig(min_length=10, max_length=60, max_depth=6)


def _expected_read(true: list[Step], style: str) -> list[Step]:
    """What read_steps can recover of the true steps from a style."""
    if style == "short":
        return [Step(s.op, (), s.result) for s in true]
    if style == "medium":
        return [Step(s.op, tuple(sorted(s.operands)) if s.op == "MED" else s.operands,
                     s.result, s.total) for s in true]
    return true


@pytest.mark.parametrize("style", ["short", "medium", "long"])
def test_read_steps_recovers_every_style(style):
    for index in range(150):
        tree = sample(RANDOM, 5, index)
        text = explain(tree, style)
        expected = _expected_read(steps(tree), style)
        assert read_steps(text) == expected
        # T5 SentencePiece turns newlines into spaces; extra whitespace is harmless too
        assert read_steps(text.replace("\n", " ")) == expected
        assert read_steps("  " + re.sub(r" ", "   ", text).replace("\n", " \n\t ")) == expected


def test_read_steps_is_case_insensitive_and_tolerant():
    assert read_steps("sum, 3 max, 9 final answer: 9") == [Step("SM", (), 3), Step("MAX", (), 9)]
    assert read_steps(b"Max, largest number of [3, 2] is 3") == [Step("MAX", (3, 2), 3)]
    assert read_steps("MAX,") == []  # a head without a result is dropped
    assert read_steps("Max, largest number of [3, 2") == [Step("MAX", (), 2)]  # truncated


@pytest.mark.parametrize("garbage", [
    None, "", "7", "Final answer: 3", "]]]][[[[", "MAX MIN SUM", "\x00\ud800é漢字",
    "[" * 10_000, "MAX, " + "9" * 5_000, 12345, b"\xff\xfe",
])
def test_read_steps_never_raises(garbage):
    found = read_steps(garbage)
    assert isinstance(found, list)


# ------------------------------------------------------------------------ vocabulary


def test_tokenize_splits_punctuation():
    assert tokenize("SUM, add [0, 8], sum is 8\nFinal answer: 8") == [
        "SUM", ",", "add", "[", "0", ",", "8", "]", ",", "sum", "is", "8",
        "Final", "answer", ":", "8"]


def test_every_rendered_token_is_a_word_or_a_number():
    words = set(WORDS)
    for modulus in (10, 30):
        for index in range(200):
            tree = sample(RANDOM, modulus, index)
            for style in STYLES:
                for token in tokenize(explain(tree, style, modulus)):
                    assert token in words or token.isdigit(), (style, token)


def test_words_are_sorted_unique_and_numberless():
    # two sorted blocks: the study's operators' words, then the family's new ones
    # (tests/test_listops_family.py pins the first block)
    assert len(WORDS) == len(set(WORDS))
    split = WORDS.index("FIRST")
    assert list(WORDS[:split]) == sorted(WORDS[:split])
    assert list(WORDS[split:]) == sorted(WORDS[split:])
    assert not any(word.isdigit() for word in WORDS)
    assert {"Final", "answer", ":", "MEDIAN", "Max", "modulo"} <= set(WORDS)
