"""The whole ListOps family: FIRST, LAST, PM and FLSUM besides MAX, MIN, MED and SM.

Semantics of the original generator (nyu-mll/spinn, python/spinn/data/listops/
make_data.py, every revision): FIRST and LAST pick the first and the last argument,
PM is the product modulo 10, FLSUM the first plus the *second* argument modulo 10.
Here the modulus is the ``modulus`` argument, as for SM (10 in the original files).

The rows generated below are labelled by an independent model of that generator
(its binarized tuples, reduced left to right the way its ``to_value`` does) and
written in its file format, then read and evaluated by the project. The released
files themselves are checked only when a path is given in the environment variable
``EXPLISTOPS_RELEASED_LISTOPS`` (files or folders of ``*.tsv``, separated by
``os.pathsep``); nothing fetched is part of the repository.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import statistics
from pathlib import Path

import pytest
from test_explain import _expected_read  # what read_steps recovers of a style

from explistops_jax import data, explain, scoring
from explistops_jax.errors import UserError
from explistops_jax.explain import Step, read_steps, render_step, steps
from explistops_jax.listops import (
    ALL_OPERATORS,
    OPERATORS,
    ListOpsError,
    Node,
    SamplerConfig,
    apply,
    canonical_operator,
    evaluate,
    format,
    parse,
    read_listops_tsv,
    read_lra_tsv,
    sample,
    unreduced,
)

FAMILY = ("FIRST", "LAST", "PM", "FLSUM")
RELEASED_ENV = "EXPLISTOPS_RELEASED_LISTOPS"

# The original generator's distribution for its d5 files (max depth 5, up to 6
# arguments, values 0-9), with all eight operators.
ORIGINAL = SamplerConfig(min_length=5, max_length=60, max_depth=5, max_args=6,
                         max_value=9, operators=ALL_OPERATORS)


# ---------------------------------------------------------------- operators


def test_operator_sets():
    assert OPERATORS == ("MAX", "MIN", "MED", "SM")
    assert ALL_OPERATORS == OPERATORS + FAMILY
    for name in ALL_OPERATORS:
        assert canonical_operator(name) == name
        assert canonical_operator(name.lower()) == name


@pytest.mark.parametrize("op, values, modulus, result, total", [
    ("FIRST", (3, 1, 2), 10, 3, None),
    ("LAST", (3, 1, 2), 10, 2, None),
    ("FIRST", (7,), 10, 7, None),
    ("PM", (2, 3, 4), 10, 4, 24),
    ("PM", (2, 3, 4), 30, 24, 24),
    ("PM", (9, 0, 9), 10, 0, 0),
    ("PM", (29, 29, 29), 30, 29 ** 3 % 30, 29 ** 3),
    # FLSUM: first plus second, not first plus last (3 + 7 would give 0)
    ("FLSUM", (3, 5, 7), 10, 8, 8),
    ("FLSUM", (9, 9, 1), 10, 8, 18),
    ("FLSUM", (9, 9, 1), 30, 18, 18),
    ("SM", (15, 27, 1), 30, 13, 43),
    ("MAX", (1, 2), 10, 2, None),
])
def test_apply_and_unreduced(op, values, modulus, result, total):
    assert apply(op, values, modulus) == result
    assert unreduced(op, values) == total


@pytest.mark.parametrize("op, values", [("FLSUM", (3,)), ("FLSUM", ()), ("PM", ()),
                                        ("FIRST", ()), ("LAST", ()), ("XX", (1, 2))])
def test_apply_rejects_what_the_generator_cannot_compute(op, values):
    with pytest.raises(ValueError):
        apply(op, values, 10)


def test_parse_format_evaluate_every_operator():
    text = "[MAX [FLSUM 9 9 0 ] [PM 5 5 ] [FIRST 1 [LAST 2 3 ] ] [MED 4 9 ] [SM 8 8 ] [MIN 7 6 ] ]"
    tree = parse(text)
    assert {node.op for node in _nodes(tree)} == set(ALL_OPERATORS)
    assert format(tree) == text
    assert parse(format(tree, "paren")) == tree
    assert parse(text.lower().replace("[", "[ ")) == tree
    # FLSUM 8, PM 5, FIRST 1, MED 6, SM 6, MIN 6
    assert evaluate(tree, 10) == 8
    # modulus 30: FLSUM 18, PM 25
    assert evaluate(tree, 30) == 25


def test_parse_rejects_flsum_with_one_argument():
    with pytest.raises(ListOpsError, match=r"column 15: operator FLSUM \(column 6\) has 1 "
                                           r"argument \(expected at least 2 arguments"):
        parse("[MAX [FLSUM 3 ] 2 ]")
    assert parse("[FIRST 3 ]") == Node("FIRST", (3,))


# --------------------------------------------------------- files, as the generator wrote them


# Hand-checked rows in the original file format (label<TAB>expression), written here.
HAND_ROWS = [
    (8, "( ( ( ( [FLSUM 3 ) 5 ) 7 ) ] )"),  # 3 + 5; first + last would be 0
    (4, "( ( ( ( [PM 2 ) 3 ) 4 ) ] )"),  # 24 mod 10
    (2, "( ( ( [FIRST ( ( ( [LAST 1 ) 2 ) ] ) ) 9 ) ] )"),
    (8, "( ( ( ( [MAX ( ( ( ( [FLSUM 9 ) 9 ) 0 ) ] ) ) ( ( ( [PM 5 ) 5 ) ] ) ) 2 ) ] )"),
    (1, "( ( ( ( [SM ( ( ( [FIRST 7 ) 1 ) ] ) ) ( ( ( [MED 4 ) 9 ) ] ) ) "
        "( ( ( [LAST 3 ) 8 ) ] ) ) ] )"),
]


def test_hand_rows_read_and_evaluate(tmp_path):
    path = tmp_path / "hand.tsv"
    path.write_text("".join(f"{label}\t{expression}\n" for label, expression in HAND_ROWS))
    rows = list(read_listops_tsv(path))
    assert [label for _, label in rows] == [label for label, _ in HAND_ROWS]
    assert [evaluate(tree, 10) for tree, _ in rows] == [label for label, _ in HAND_ROWS]
    assert [format(tree, "paren") for tree, _ in rows] == [e for _, e in HAND_ROWS]


def _generator_tuples(tree):
    """The tree as the original generator builds it: ((("[OP", a0), a1), ...), "]")."""
    if not isinstance(tree, Node):
        return tree
    built = ("[" + tree.op, _generator_tuples(tree.args[0]))
    for arg in tree.args[1:]:
        built = (built, _generator_tuples(arg))
    return (built, "]")


def _generator_string(t) -> str:
    if isinstance(t, tuple):
        return f"( {_generator_string(t[0])} {_generator_string(t[1])} )"
    return str(t)


_GENERATOR_OPS = {
    "[MIN": min,
    "[MAX": max,
    "[MED": lambda v: int(statistics.median(v)),
    "[SM": lambda v: sum(v) % 10,
    "[FIRST": lambda v: v[0],
    "[LAST": lambda v: v[-1],
    "[PM": lambda v: math.prod(v) % 10,
    "[FLSUM": lambda v: (v[0] + v[1]) % 10,
}


def _generator_value(t):
    """The generator's reduction: an operator token opens an unsaturated function,
    each further argument is appended, the closing bracket applies it."""
    if not isinstance(t, tuple):
        return t
    left, right = _generator_value(t[0]), _generator_value(t[1])
    if isinstance(left, str):
        return (left, [right])
    if right == "]":
        return _GENERATOR_OPS[left[0]](left[1])
    return (left[0], left[1] + [right])


def _generated_rows(n: int = 400) -> list[tuple[int, str]]:
    rows = []
    for index in range(n):
        tuples = _generator_tuples(sample(ORIGINAL, 12, index))
        rows.append((_generator_value(tuples), _generator_string(tuples)))
    return rows


def test_generated_rows_read_and_evaluate_in_both_file_formats(tmp_path):
    rows = _generated_rows()
    operators = {m.group(1) for _, e in rows for m in re.finditer(r"\[([A-Z]+)", e)}
    assert operators == set(ALL_OPERATORS)
    original = tmp_path / "test_family.tsv"
    original.write_text("".join(f"{label}\t{expression}\n" for label, expression in rows))
    lra = tmp_path / "lra_family.tsv"
    lra.write_text("Source\tTarget\n"
                   + "".join(f"{expression}\t{label}\n" for label, expression in rows))
    for read in (list(read_listops_tsv(original)), list(read_lra_tsv(lra))):
        assert len(read) == len(rows)
        assert [label for _, label in read] == [label for label, _ in rows]
        assert [evaluate(tree, 10) for tree, _ in read] == [label for label, _ in rows]
        # the project writes the generator's notation byte for byte
        assert [format(tree, "paren") for tree, _ in read] == [e for _, e in rows]


def _released_paths() -> list[Path]:
    paths: list[Path] = []
    for part in os.environ.get(RELEASED_ENV, "").split(os.pathsep):
        if part:
            path = Path(part)
            paths.extend(sorted(path.glob("*.tsv")) if path.is_dir() else [path])
    return paths


@pytest.mark.skipif(not os.environ.get(RELEASED_ENV),
                    reason=f"set {RELEASED_ENV} to released ListOps TSV files or folders")
def test_released_files_evaluate_exactly():
    paths = _released_paths()
    assert paths, f"{RELEASED_ENV} names no .tsv file"
    for path in paths:
        rows = list(read_listops_tsv(path))
        assert rows, path
        wrong = [(n, label) for n, (tree, label) in enumerate(rows, 1)
                 if evaluate(tree, 10) != label]
        assert not wrong, f"{path}: {len(wrong)} of {len(rows)} rows disagree, first {wrong[:5]}"


# ------------------------------------------------------------------------ sampler


def test_sampler_takes_any_family_operators():
    config = SamplerConfig(min_length=5, max_length=40, max_depth=4, max_value=9,
                           operators=("pm", "FLSUM", "first"))
    assert config.operators == ("PM", "FLSUM", "FIRST")
    seen = set()
    for index in range(60):
        tree = sample(config, 3, index)
        ops = {node.op for node in _nodes(tree)}
        assert ops <= set(config.operators)
        seen |= ops
    assert seen == set(config.operators)


def test_sampler_checks_flsum_arguments_and_names():
    with pytest.raises(UserError, match="min_args must be at least 2"):
        SamplerConfig(min_length=2, max_length=40, operators=("FLSUM",), min_args=1)
    assert SamplerConfig(min_length=2, max_length=40, operators=("FIRST",), min_args=1)
    with pytest.raises(UserError, match="FLSUM"):  # the message lists all eight
        SamplerConfig(min_length=2, max_length=40, operators=("PROD",))


# The study's own modular-sum task at CPU scale: SM only, on purpose.
SM_ONLY = ("explistops10_cpu_sm",)


def test_builtin_datasets_keep_the_study_operators():
    for name in data.DATASETS:
        for split in data.get_config(name).splits.values():
            assert split.sampler.operators == (("SM",) if name in SM_ONLY else OPERATORS)


# Hash of the first 40 examples of every split of the built-in datasets, written
# before the family was added: their bytes must never change.
BUILTIN_EXAMPLES_SHA256 = "5445d60be2fd6b247ec3121b65a5a80824f6116d7e1ecde82319eb1aa524f43c"
BUILTIN_DATASETS = ("explistops10_cpu", "explistops30", "explistops30_larger_numbers",
                    "explistops30_len50_100", "listops10")
# Splits added later (they have their own seeds, so the hash above stays theirs).
LATER_SPLITS = {"explistops10_cpu": ("len20_40", "larger_numbers")}


def test_builtin_examples_are_unchanged():
    digest = hashlib.sha256()
    for name in BUILTIN_DATASETS:
        for split in data.get_config(name).splits:
            if split in LATER_SPLITS.get(name, ()):
                continue
            for example in data.examples(name, split, 0, 40):
                digest.update(json.dumps(example, sort_keys=True).encode())
    assert digest.hexdigest() == BUILTIN_EXAMPLES_SHA256


# The CPU study's splits and dataset (2026-12-01): their first 40 examples, pinned.
CPU_STUDY_EXAMPLES_SHA256 = "81f7b322fec9f0d80bbd3a438dd8f9c19d831a232fd5b97aa6af94707b070307"


def test_cpu_study_examples_are_unchanged():
    digest = hashlib.sha256()
    for name, splits in ((("explistops10_cpu", LATER_SPLITS["explistops10_cpu"]),
                          ("explistops10_cpu_sm", ("train", "validation", "test")))):
        for split in splits:
            for example in data.examples(name, split, 0, 40):
                digest.update(json.dumps(example, sort_keys=True).encode())
    assert digest.hexdigest() == CPU_STUDY_EXAMPLES_SHA256


# ------------------------------------------------------------------- explanations


@pytest.mark.parametrize("style", ["short", "medium", "long"])
@pytest.mark.parametrize("op", ALL_OPERATORS)
def test_every_operator_reads_back_in_every_style(op, style):
    for modulus in (10, 30):
        for tree in (Node(op, (3, 5, 7)), Node(op, (29, 28)),
                     Node("MAX", (Node(op, (9, 4, 6, 2)), Node(op, (1, Node(op, (5, 8))))))):
            text = explain.explain(tree, style, modulus)
            expected = _expected_read(steps(tree, modulus), style)
            assert [s.op for s in expected].count(op) >= 1
            assert read_steps(text) == expected
            assert read_steps(text.replace("\n", " ")) == expected
            assert explain.explain(tree, "none", modulus) == str(evaluate(tree, modulus))


@pytest.mark.parametrize("op, short, medium, long", [
    ("FIRST", "FIRST, 3", "First, first number of [3, 5, 7] is 3",
     "FIRST operator so we have to take the first of the numbers [3, 5, 7], "
     "the first number is 3, so the answer is 3"),
    ("LAST", "LAST, 7", "Last, last number of [3, 5, 7] is 7",
     "LAST operator so we have to take the last of the numbers [3, 5, 7], "
     "the last number is 7, so the answer is 7"),
    ("PM", "PM, 5", "PM, multiply [3, 5, 7], product is 105, answer is 5",
     "PM operator so we have to multiply the numbers [3, 5, 7], product is 105, "
     "105 modulo 10 is 5, so the answer is 5"),
    ("FLSUM", "FLSUM, 8", "FLSUM, add first two of [3, 5, 7], sum is 8, answer is 8",
     "FLSUM operator so we have to add the first two of the numbers [3, 5, 7], sum is 8, "
     "8 modulo 10 is 8, so the answer is 8"),
])
def test_family_renderings(op, short, medium, long):
    step = steps(Node(op, (3, 5, 7)), 10)[0]
    assert [render_step(step, s, 10) for s in ("short", "medium", "long")] == [short, medium, long]


@pytest.mark.parametrize("style", explain.STYLES)
def test_sampled_family_trees_read_back_and_use_only_words(style):
    words = set(explain.WORDS)
    for modulus in (10, 30):
        config = ORIGINAL if modulus == 10 else SamplerConfig(
            min_length=5, max_length=60, max_depth=5, max_args=6, operators=ALL_OPERATORS)
        for index in range(80):
            tree = sample(config, modulus, index)
            text = explain.explain(tree, style, modulus)
            for token in explain.tokenize(text):
                assert token in words or token.isdigit(), (style, token)
            if style != "none":
                assert read_steps(text) == _expected_read(steps(tree, modulus), style)


def test_words_keep_the_study_block_first():
    golden = json.loads((Path(__file__).parent / "testdata"
                         / "domain_vocab_ids_golden.json").read_text())
    study = tuple(golden["words"])
    assert explain.WORDS[:len(study)] == study
    family = explain.WORDS[len(study):]
    assert list(family) == sorted(family) and not set(family) & set(study)
    assert {"FIRST", "LAST", "PM", "FLSUM", "product", "multiply"} <= set(family)


# ------------------------------------------------------------------------- scoring


def test_step_validity_of_family_steps():
    valid = [Step("PM", (3, 5, 7), 5, 105), Step("FLSUM", (3, 5, 7), 8, 8),
             Step("FIRST", (3, 5), 3), Step("LAST", (3, 5), 5), Step("PM", (3, 5, 7), 5)]
    assert [scoring.step_is_valid(s, 10) for s in valid] == [True] * len(valid)
    invalid = [Step("PM", (3, 5, 7), 5, 15),  # stated product wrong
               Step("PM", (3, 5, 7), 1, 105),  # result wrong
               Step("FLSUM", (3, 5, 7), 0, 10),  # first + last: not the generator's FLSUM
               Step("FLSUM", (3,), 3),  # FLSUM of one value
               Step("FIRST", (3, 5), 5), Step("LAST", (3, 5), 3)]
    assert [scoring.step_is_valid(s, 10) for s in invalid] == [False] * len(invalid)
    assert scoring.step_is_valid(Step("PM", (), 5), 10) is None


@pytest.mark.parametrize("style", ["short", "medium", "long"])
def test_perfect_family_predictions_score_perfectly(style):
    for index in range(30):
        tree = sample(ORIGINAL, 4, index)
        target = explain.explain(tree, style, 10)
        scored = scoring.score_example(target, format(tree), 10, target)
        assert scored["correct"] and scored["exact_match"] and scored["faithful"]
        assert scored["valid_steps"] == scored["checkable_steps"]


def test_a_wrong_family_step_is_caught():
    tree = parse("[MAX [PM 3 5 7 ] [FLSUM 3 5 7 ] ]")
    target = explain.explain(tree, "medium", 10)
    wrong = target.replace("product is 105, answer is 5", "product is 105, answer is 6")
    scored = scoring.score_example(wrong, tree, 10, target)
    assert scored["valid_steps"] == scored["checkable_steps"] - 1
    assert not scored["faithful"]


def _nodes(tree):
    if isinstance(tree, Node):
        yield tree
        for arg in tree.args:
            yield from _nodes(arg)
