"""Tests of explistops_jax.listops: notation, arithmetic, readers and the sampler."""

from __future__ import annotations

import collections
import functools
import random
import time
from pathlib import Path

import pytest
from scipy import stats

from explistops_jax import listops
from explistops_jax.errors import ListOpsError, UserError
from explistops_jax.listops import (
    Node,
    SamplerConfig,
    depth,
    evaluate,
    length,
    median,
    parse,
    read_listops_tsv,
    read_lra_tsv,
    sample,
    sample_naive,
    sample_with_attempts,
)

TESTDATA = Path(__file__).parent / "testdata"
BRACKET = "[MAX 2 9 [MIN 4 7 ] 0 ]"
TREE = Node("MAX", (2, 9, Node("MIN", (4, 7)), 0))


# ------------------------------------------------------------------------- package


def test_package_exports_each_name_from_the_module_that_owns_it():
    from explistops_jax.listops import readers, sampler, tree

    owners = {tree: ["parse", "format", "evaluate", "apply", "median", "length", "depth",
                     "Node", "canonical_operator", "OPERATORS", "SPELLINGS", "MAX_NESTING",
                     "ALL_OPERATORS", "MODULAR_OPERATORS", "MIN_ARGS", "unreduced"],
              sampler: ["SamplerConfig", "sample", "sample_with_attempts", "sample_naive",
                        "example_rng", "MAX_ATTEMPTS"],
              readers: ["read_listops_tsv", "read_lra_tsv"]}
    for module, names in owners.items():
        for name in names:
            assert getattr(listops, name) is getattr(module, name), name
    exported = [name for names in owners.values() for name in names] + ["Tree", "ListOpsError"]
    assert sorted(listops.__all__) == sorted(exported)
    assert listops.ListOpsError is ListOpsError


# ------------------------------------------------------------------------ notation


def test_parse_bracket_notation():
    assert parse(BRACKET) == TREE


def test_paren_example_from_reference_parses_to_the_bracket_tree():
    # reference.md section 2, verbatim (its parentheses are not even balanced: the
    # parser skips them, since the brackets alone determine the tree).
    assert parse("( ( ( [MAX 2 ) 9 ) ( ( ( [MIN 4 ) 7 ) ] ) ) 0 ) ] )") == TREE


def test_format_paren_is_lra_binarization_and_round_trips():
    text = listops.format(TREE, "paren")
    assert text == "( ( ( ( ( [MAX 2 ) 9 ) ( ( ( [MIN 4 ) 7 ) ] ) ) 0 ) ] )"
    assert text.count("(") == text.count(")")
    assert parse(text) == TREE


def test_format_bracket_round_trips():
    assert listops.format(TREE) == BRACKET
    assert listops.format(7) == "7"
    assert parse("7") == 7


@pytest.mark.parametrize("text", [
    "[MEDIAN 1 5 [SUM 3 4 ] ]", "[med 1 5 [sm 3 4 ] ]", "[ MED 1 5 [ SM 3 4 ] ]",
    "  [MED\t1 5\n[SM 3 4 ]  ]  ",
])
def test_operator_spellings_and_spacing(text):
    assert parse(text) == Node("MED", (1, 5, Node("SM", (3, 4))))


@pytest.mark.parametrize("text, column, fragment", [
    ("[MAX 2 9 [FOO 4 ] ]", 10, "unknown operator '[FOO'"),
    ("[MAX 2 9 [MIN 4 7 ] 0", 22, "operator MAX opened at column 1 is not closed"),
    ("[MAX 2 ] 3", 10, "extra input"),
    ("[MAX 2 ] [MIN 3 ]", 10, "extra input"),
    ("", 1, "empty expression"),
    ("   ", 1, "empty expression"),
    ("[MAX 1 ] ]", 10, "without a matching"),
    ("[MAX 1 [MIN ] ]", 13, "has no arguments"),
    ("[MAX 1 x2 ]", 8, "unexpected 'x2'"),
    ("[MAX 1 -2 ]", 8, "unexpected '-2'"),
    # digits of other scripts: int() reads some ('\u0663' is 3), not others ('\u00b2')
    ("[MAX 1 \u00b2 ]", 8, "unexpected '\u00b2'"),
    ("[MAX 1 4\u00b2 ]", 9, "unexpected '\u00b2'"),
    ("[MAX 1 \u0663 ]", 8, "unexpected '\u0663'"),
    ("[ 1 2 ]", 1, "without an operator"),
])
def test_parse_errors_name_problem_and_column(text, column, fragment):
    with pytest.raises(ListOpsError) as info:
        parse(text, line=3)
    err = info.value
    assert (err.line, err.column) == (3, column)
    assert fragment in err.message
    assert err.message.startswith(f"line 3, column {column}: ")
    assert isinstance(err, ValueError) and isinstance(err, UserError)


def test_parse_rejects_absurd_nesting_and_numbers():
    with pytest.raises(ListOpsError, match="nested deeper"):
        parse("[MAX " * 1000 + "1" + " ]" * 1000)
    with pytest.raises(ListOpsError, match="digits"):
        parse("[MAX 1 " + "9" * 500 + " ]")


def test_format_rejects_unknown_notation():
    with pytest.raises(UserError, match="notation"):
        listops.format(TREE, "polish")


# ---------------------------------------------------------------------- arithmetic


@pytest.mark.parametrize("values, expected", [
    ([4, 9], 6), ([0, 9], 4), ([1, 5, 8, 8], 6), ([3], 3), ([4, 1, 3], 3), ([2, 2], 2),
])
def test_median_is_numpy_median_truncated(values, expected):
    assert median(values) == expected


def test_evaluate_length_depth():
    assert evaluate(TREE) == 9
    assert length(TREE) == 9  # 5 values, 2 operators of 2 tokens
    assert depth(TREE) == 2
    assert (length(5), depth(5), evaluate(5)) == (1, 0, 5)
    assert depth(parse("[MAX 1 2 ]")) == 1


def test_sum_uses_modulus():
    tree = parse("[SM 15 27 1 ]")
    assert evaluate(tree) == 13
    assert evaluate(tree, modulus=10) == 3
    assert evaluate(parse("[SM 0 8 4 0 3 9 ]"), modulus=10) == 4


# ------------------------------------------------------------------------- readers


def test_read_original_listops_tsv():
    rows = list(read_listops_tsv(TESTDATA / "listops_original.tsv"))
    assert len(rows) == 5
    assert rows[0] == (TREE, 9)
    for tree, label in rows:
        assert evaluate(tree, modulus=10) == label


def test_read_lra_tsv_skips_header():
    rows = list(read_lra_tsv(TESTDATA / "lra_listops.tsv"))
    assert [label for _, label in rows] == [9, 8, 2, 6, 2]
    assert rows == list(read_listops_tsv(TESTDATA / "listops_original.tsv"))


def test_read_released_spellings_median_sum():
    rows = list(read_lra_tsv(TESTDATA / "released_explained_listops.tsv"))
    assert rows[0][0] == Node("SM", (15, 27, 1))
    assert rows[1][0] == Node("MED", (1, 3, 4))
    for tree, label in rows:
        assert evaluate(tree, modulus=30) == label


def test_reader_errors_give_file_line_and_column(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("Source\tTarget\n[MAX 1 2 ]\t2\n[MAX 1 [FOO 2 ] ]\t3\n")
    with pytest.raises(ListOpsError) as info:
        list(read_lra_tsv(bad))
    assert (info.value.line, info.value.column) == (3, 8)
    assert str(bad) in info.value.message

    bad.write_text("7\t[MAX 1 [FOO 2 ] ]\n")
    with pytest.raises(ListOpsError) as info:
        list(read_listops_tsv(bad))
    assert (info.value.line, info.value.column) == (1, 10)  # label and tab counted

    for label in ("x", "\u00b2", "\u0663"):
        bad.write_text(f"{label}\t[MAX 1 2 ]\n")
        with pytest.raises(ListOpsError, match="not a number"):
            list(read_listops_tsv(bad))
    bad.write_text("[MAX 1 2 ]\n")
    with pytest.raises(ListOpsError, match="1 tab-separated fields"):
        list(read_lra_tsv(bad))


# ------------------------------------------------------------------------- sampler

MAIN = SamplerConfig(min_length=20, max_length=50)


def test_sampler_is_deterministic_per_seed_and_index():
    first = [sample(MAIN, 7, i) for i in range(20)]
    assert first == [sample(MAIN, 7, i) for i in range(20)]
    assert sample(MAIN, 7, 13) == first[13]  # any index alone
    assert len(set(map(listops.format, first))) == 20
    assert [sample(MAIN, 8, i) for i in range(20)] != first


def test_sampler_golden_example():
    # Pins the stream: changing the sampler changes every dataset, deliberately.
    assert listops.format(sample(MAIN, 0, 0)) == GOLDEN_MAIN_0_0


GOLDEN_MAIN_0_0 = ("[MAX 16 16 [SM 23 [MED [MIN 28 [MED [MED 17 29 27 [SM 22 17 8 8 19 ] 26 ] "
                   "[SM 0 19 ] 8 ] 20 20 4 1 11 ] 8 27 19 11 ] ] 27 ]")


def test_samples_respect_the_config():
    config = SamplerConfig(min_length=30, max_length=45, max_depth=5, max_args=6,
                           min_value=10, max_value=19, operators=("MAX", "SUM"))
    for index in range(300):
        tree = sample(config, 1, index)
        assert isinstance(tree, Node)
        assert 30 < length(tree) < 45
        assert depth(tree) <= config.max_depth - 1
        for node in _nodes(tree):
            assert node.op in ("MAX", "SM")
            assert 2 <= len(node.args) <= 6
            assert all(10 <= v <= 19 for v in node.args if isinstance(v, int))


def test_sample_with_attempts_counts_attempts():
    attempts = [sample_with_attempts(MAIN, 3, i)[1] for i in range(200)]
    assert min(attempts) >= 1 and max(attempts) > 1
    assert sample_with_attempts(MAIN, 3, 5)[0] == sample(MAIN, 3, 5)


def test_sample_naive_deadline():
    huge = SamplerConfig(min_length=20, max_length=50, value_p=0.9)  # trees explode
    with pytest.raises(TimeoutError):
        sample_naive(huge, random.Random(0), deadline=time.monotonic() - 1)


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(min_length=20, max_length=21), "window"),
    (dict(min_length=20, max_length=50, max_depth=1), "max_depth"),
    (dict(min_length=20, max_length=50, min_args=3, max_args=2), "min_args"),
    (dict(min_length=20, max_length=50, value_p=1.5), "probability"),
    (dict(min_length=20, max_length=50, min_value=5, max_value=4), "min_value"),
    (dict(min_length=20, max_length=50, operators=("MAX", "POW")), "operators"),
    (dict(min_length=20, max_length=50, value_p=0.0), "largest tree"),
    (dict(min_length=0, max_length=4), "smallest tree"),
])
def test_bad_sampler_configs_are_user_errors(kwargs, fragment):
    with pytest.raises(UserError, match=fragment):
        SamplerConfig(**kwargs)


def test_operator_spellings_in_config_are_canonical():
    assert SamplerConfig(20, 50, operators=("median", "SUM")).operators == ("MED", "SM")


def _nodes(tree):
    if isinstance(tree, Node):
        yield tree
        for arg in tree.args:
            yield from _nodes(arg)


def _features(trees):
    """Histogram features compared between the samplers."""
    features = collections.defaultdict(collections.Counter)
    for tree in trees:
        nodes = list(_nodes(tree))
        features["length"][length(tree)] += 1
        features["depth"][depth(tree)] += 1
        features["operators"][len(nodes)] += 1
        features["root_op"][tree.op] += 1
        features["root_args"][len(tree.args)] += 1
        for node in nodes:
            features["op"][node.op] += 1
            features["args"][len(node.args)] += 1
            features["operator_args"][sum(isinstance(a, Node) for a in node.args)] += 1
            for position, arg in enumerate(node.args):
                if isinstance(arg, Node):
                    features["operator_position"][position] += 1
                else:
                    features["value"][arg] += 1
    return features


def _chi_square_p(left: collections.Counter, right: collections.Counter) -> float:
    """p-value of a chi-square test of two histograms, merging sparse bins."""
    keys = sorted(set(left) | set(right), key=str)
    rows, pending = [], [0, 0]
    for key in keys:  # merge neighbouring bins until each merged bin has >= 10 counts
        pending = [pending[0] + left[key], pending[1] + right[key]]
        if sum(pending) >= 10:
            rows.append(pending)
            pending = [0, 0]
    if sum(pending) and rows:
        rows[-1] = [rows[-1][0] + pending[0], rows[-1][1] + pending[1]]
    if len(rows) < 2:
        return 1.0
    return stats.chi2_contingency(list(zip(*rows)))[1]


# Configs where early abort, rejection and the max_depth cut all matter, and the
# naive procedure is still fast: LRA's main settings at a smaller depth, and an
# unusual one (single-argument operators, two operators, value_p 0.5).
SMALL = SamplerConfig(min_length=20, max_length=50, max_depth=6, max_args=10)
ODD = SamplerConfig(min_length=10, max_length=30, max_depth=4, max_args=5, min_args=1,
                    value_p=0.5, min_value=3, max_value=7, operators=("MAX", "SM"))
N_STAT = 3000
FEATURES = ["length", "depth", "operators", "root_op", "root_args", "op", "args",
            "operator_args", "operator_position", "value"]


@functools.lru_cache(maxsize=None)
def _sampled(name: str) -> dict:
    config = {"SMALL": SMALL, "ODD": ODD}[name]
    rng = random.Random(12345)
    return {
        "sample": _features(sample(config, 99, i) for i in range(N_STAT)),
        "naive": _features(sample_naive(config, rng) for _ in range(N_STAT)),
    }


@pytest.fixture(params=["SMALL", "ODD"])
def sampled(request):
    return _sampled(request.param)


def test_early_abort_sampler_has_the_naive_distribution(sampled):
    p_values = {f: _chi_square_p(sampled["sample"][f], sampled["naive"][f]) for f in FEATURES}
    # ten tests per config: a threshold of 1e-3 keeps chance failures negligible, while
    # a real difference gives p far below it (see the power check below)
    assert min(p_values.values()) > 1e-3, p_values


def test_length_distributions_agree_by_ks(sampled):
    def expand(counter):
        return [value for value, count in counter.items() for _ in range(count)]

    result = stats.ks_2samp(expand(sampled["sample"]["length"]),
                            expand(sampled["naive"]["length"]))
    assert result.pvalue > 1e-3


def test_the_statistical_test_detects_a_different_distribution():
    # Power check: a slightly different value_p must be rejected.
    naive = _sampled("SMALL")["naive"]
    other = SamplerConfig(min_length=20, max_length=50, max_depth=6, max_args=10, value_p=0.3)
    features = _features(sample(other, 99, i) for i in range(N_STAT))
    p_values = [_chi_square_p(features[f], naive[f])
                for f in ("length", "depth", "operators", "operator_args")]
    assert min(p_values) < 1e-6
