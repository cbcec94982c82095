"""Tests of explistops_jax.scoring: answer parsing, step checks, metrics, fuzzing."""

from __future__ import annotations

import math
import random
import string

import numpy as np
import pytest

from explistops_jax.errors import ListOpsError, UserError
from explistops_jax.explain import STYLES, Step, explain, read_steps
from explistops_jax.listops import SamplerConfig, format, parse, sample
from explistops_jax.scoring import (
    all_metrics,
    answer_accuracy,
    breakdowns,
    length_bucket,
    parse_answer,
    parse_answer_with_source,
    postprocess,
    same_step,
    score_example,
    score_records,
    step_is_valid,
    step_metrics,
)

EXPRESSION = "[MAX 2 [SM 15 27 1 ] [MIN [MED 4 1 3 ] 9 ] 0 ]"  # answer 13
TREE = parse(EXPRESSION)


# -------------------------------------------------------------------- final answer


@pytest.mark.parametrize("text, answer, source", [
    ("Final answer: 19", 19, "final"),           # not 9, as last-character judging said
    ("MAX, 9\nFinal answer: 9", 9, "final"),
    ("Final answer: 3 Final answer: 4", 4, "final"),  # the last one counts
    ("final ANSWER :  12 trailing", 12, "final"),
    ("Final answer 7", 7, "final"),
    ("7", 7, "bare"),
    ("  21 \n", 21, "bare"),
    ("SUM, 3 MAX, 9", 9, "step"),                # fallback: the last step's result
    ("Max, largest number of [3, 2] is 3", 3, "step"),
    ("", None, None),
    ("the answer is unclear", None, None),
    ("Final answer:", None, None),
    ("Final answer: " + "9" * 100, None, None),   # absurd number: unparseable
])
def test_parse_answer(text, answer, source):
    assert parse_answer_with_source(text) == (answer, source)
    assert parse_answer(text) == answer


def test_parse_answer_decodes_bytes_and_arrays():
    assert parse_answer(b"Final answer: 5") == 5
    assert parse_answer(np.array(b"Final answer: 6")) == 6
    assert parse_answer(None) is None


# --------------------------------------------------------------------------- steps


def test_step_validity():
    assert step_is_valid(Step("MAX", (3, 2), 3)) is True
    assert step_is_valid(Step("MAX", (3, 2), 2)) is False
    assert step_is_valid(Step("MED", (1, 5, 8, 8), 6)) is True
    assert step_is_valid(Step("SM", (15, 27, 1), 13, total=43)) is True
    assert step_is_valid(Step("SM", (15, 27, 1), 13, total=44)) is False  # wrong stated sum
    assert step_is_valid(Step("SM", (15, 27, 1), 3), modulus=10) is True
    assert step_is_valid(Step("SM", (), 3)) is None  # short style: nothing to check


def test_same_step():
    true = Step("MED", (4, 1, 3), 3)
    assert same_step(Step("MED", (1, 3, 4), 3), true)  # medium shows the sorted list
    assert same_step(Step("MED", (), 3), true)          # short shows no operands
    assert not same_step(Step("MED", (1, 3, 5), 3), true)
    assert not same_step(Step("MAX", (1, 3, 4), 3), true)
    assert not same_step(Step("MAX", (2, 1), 2), Step("MAX", (1, 2), 2))  # order matters


# --------------------------------------------------------------------- one example


@pytest.mark.parametrize("style", ["short", "medium", "long"])
def test_perfect_prediction(style):
    target = explain(TREE, style)
    result = score_example(target.replace("\n", " "), EXPRESSION, target=target)
    assert result["correct"] and result["exact_match"] and result["faithful"]
    assert result["answer_source"] == "final"
    assert result["matching_steps"] == result["true_steps"] == result["predicted_steps"] == 4
    expected_checkable = 0 if style == "short" else 4
    assert result["checkable_steps"] == result["valid_steps"] == expected_checkable
    assert (result["length"], result["depth"]) == (17, 3)


def test_wrong_step_and_right_answer():
    prediction = explain(TREE, "medium").replace("sum is 43, answer is 13",
                                                 "sum is 43, answer is 12")
    result = score_example(prediction, TREE)
    assert result["correct"]  # the final answer is still right
    assert result["exact_match"] is None  # no target given
    assert not result["faithful"]
    assert result["matching_steps"] == 3
    assert (result["valid_steps"], result["checkable_steps"]) == (3, 4)


def test_answer_only_prediction():
    result = score_example("13", EXPRESSION, target="13")
    assert result["correct"] and result["exact_match"]
    assert result["answer_source"] == "bare" and not result["fallback"]
    assert result["predicted_steps"] == 0 and result["faithful"] is None  # not applicable


def test_malformed_expression_is_a_user_error():
    with pytest.raises(ListOpsError):
        score_example("Final answer: 1", "[MAX 1")


# ------------------------------------------------------------------ SeqIO interface


def _target(expression: str, style: str, modulus: int = 30, *, as_bytes: bool = False):
    tree = parse(expression)
    text = explain(tree, style, modulus)
    example = {"expression": expression, "answer": np.int64(0), "modulus": modulus}
    if as_bytes:
        example = {"expression": np.array(expression.encode()),
                   "answer": np.array([parse_answer(text)]), "modulus": np.int32(modulus)}
    return postprocess(text.encode() if as_bytes else text, example, is_target=True)


def test_postprocess_target_is_liberal():
    target = _target(EXPRESSION, "medium", as_bytes=True)
    assert target == {"text": explain(TREE, "medium"), "expression": EXPRESSION, "answer": 13,
                      "length": 17, "depth": 3, "modulus": 30}
    bare = postprocess("13", {"expression": EXPRESSION.encode()}, is_target=True)
    assert (bare["answer"], bare["length"], bare["modulus"]) == (13, 17, 30)
    assert postprocess("13", None, is_target=True)["answer"] == 13
    assert postprocess(b"Final answer: 4") == {"text": "Final answer: 4", "answer": 4}


def test_metric_functions():
    trees = [sample(SamplerConfig(20, 50), 3, i) for i in range(40)]
    targets = [postprocess(explain(t, "medium"), {"expression": format(t)}, is_target=True)
               for t in trees]
    perfect = [postprocess(explain(t, "medium")) for t in trees]
    metrics = answer_accuracy(targets, perfect)
    assert metrics == {"accuracy": 1.0, "parse_failure_rate": 0.0, "fallback_rate": 0.0}
    assert step_metrics(targets, perfect) == {
        "exact_match": 1.0, "step_validity": 1.0, "step_faithfulness": 1.0,
        "step_faithfulness_per_step": 1.0}

    broken = [postprocess("garbage")] * 20 + perfect[20:]
    metrics = all_metrics(targets, broken)
    assert metrics["accuracy"] == 0.5 and metrics["parse_failure_rate"] == 0.5
    assert metrics["step_faithfulness"] == 0.5 and metrics["num_examples"] == 40
    split = breakdowns(targets, broken)
    assert set(split) == {k for k in metrics if k.startswith("accuracy_")}
    assert all(k.startswith(("accuracy_length_", "accuracy_depth_")) for k in split)
    assert sum(1 for k in split if k.startswith("accuracy_length_")) >= 2


def test_step_metrics_are_nan_for_answer_only_targets():
    targets = [_target(EXPRESSION, "none")]
    metrics = step_metrics(targets, [postprocess("13")])
    assert math.isnan(metrics["step_validity"])
    assert math.isnan(metrics["step_faithfulness"])  # answer-only target: not applicable
    assert metrics["exact_match"] == 1.0


def test_length_bucket():
    assert length_bucket(20) == "20_29" and length_bucket(49) == "40_49"
    assert length_bucket(150) == "150_159"


def test_score_records():
    tree = parse("[SM 7 8 ]")
    records = [
        {"expression": "[SM 7 8 ]", "prediction": "SUM, 5\nFinal answer: 5", "modulus": 10,
         "style": "short"},
        {"expression": "[SM 7 8 ]", "prediction": "Final answer: 15"},
        {"expression": "[MAX 1 2 ]", "prediction": "2", "target": "2"},
    ]
    metrics = score_records(records)
    assert metrics["accuracy"] == 1.0 and metrics["exact_match"] == 1.0
    assert metrics["num_examples"] == 3
    assert explain(tree, "short", 10) == "SUM, 5\nFinal answer: 5"
    with pytest.raises(UserError, match='line 2: missing field "prediction"'):
        score_records([records[0], {"expression": "[MAX 1 2 ]"}])
    with pytest.raises(ListOpsError, match="line 1, column 8: expression: unknown operator"):
        score_records([{"expression": "[MAX 1 [POW 2 ] ]", "prediction": "1"}])


# ----------------------------------------------------------------------------- fuzz


HUGE = [
    "9" * 1_000_000,
    "".join(random.Random(1).choices(string.printable + "é漢🙂", k=1_000_000)),
    "[" * 1_000_000,
    "Final answer: " + "9" * 1_000_000,
    "MAX, " * 20_000,
    "MAX operator so we have to " * 10_000,
    "[[[[1, 2], [3]]]] SUM, " * 20_000,
]


def test_fuzz_huge_inputs_never_raise():
    for case in HUGE:
        assert parse_answer(case) is None or isinstance(parse_answer(case), int)
        assert isinstance(read_steps(case), list)
        assert set(postprocess(case)) == {"text", "answer"}
        assert isinstance(score_example(case, TREE)["correct"], bool)


def _adversarial(rng: random.Random) -> list:
    real = [explain(sample(SamplerConfig(20, 50), 9, i), style)
            for i in range(5) for style in STYLES]
    cases: list = [
        "", " ", "\n\n", "\x00", "é漢字🙂\u202e\ud800", "]" * 10_000, "[" * 10_000,
        "Final answer: " + "9" * 5_000, "Final answer: -3", "Final answer: 99999999999",
        "SUM, add [1, 2], sum is " + "9" * 40 + ", answer is 3",
        "MED, sorted list, [], MEDIAN is 3", "Max, largest number of [] is 3",
        "SUM, add [a, b, c], sum is x, answer is y", "[MAX 1 2 ]", "[MAX " * 300,
        b"\xff\xfe\xfd", None, 42, 3.5, float("nan"),
        np.array(b"Final answer: 1"), np.array([b"x", b"y"]), ["Final answer: 2"],
    ]
    for text in real:  # every truncation of real explanations
        cases.extend(text[:cut] for cut in range(0, len(text), 3))
    alphabet = list("[](),: \n") + ["MAX", "MIN", "MED", "SUM", "Final answer", "is",
                                    "sum is", "answer is", "999", "-1", "3", "漢"]
    for _ in range(2000):
        cases.append("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))))
    return cases


def test_fuzz_scoring_never_raises():
    rng = random.Random(2024)
    cases = _adversarial(rng)
    assert len(cases) > 3000
    for case in cases:
        answer, source = parse_answer_with_source(case)
        assert answer is None or isinstance(answer, int)
        assert (answer is None) == (source is None)
        assert isinstance(read_steps(case), list)
        prediction = postprocess(case)
        assert set(prediction) == {"text", "answer"}
        result = score_example(case, TREE)
        assert isinstance(result["correct"], bool)
        target = postprocess(case, {"expression": case, "answer": case, "length": case,
                                    "depth": case, "modulus": case}, is_target=True)
        assert isinstance(target["modulus"], int)
    predictions = [postprocess(c) for c in cases]
    metrics = all_metrics([_target(EXPRESSION, "medium")] * len(cases), predictions)
    assert 0.0 <= metrics["accuracy"] <= 1.0
    # nonsense targets too
    junk_targets = [postprocess(c, {"expression": c}, is_target=True) for c in cases]
    assert all_metrics(junk_targets, predictions)["num_examples"] == len(cases)
