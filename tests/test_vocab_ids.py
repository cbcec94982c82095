"""Pinned ids of the compact domain vocabulary: no existing token id may ever move.

``testdata/domain_vocab_ids_golden.json`` lists every piece of ``DomainVocabulary()``
in id order as it was before the ListOps family (FIRST, LAST, PM, FLSUM) was added.
Checkpoints and cached tasks rely on these ids; new words may only be appended.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("seqio")

from explistops_jax import explain  # noqa: E402
from explistops_jax.listops import ALL_OPERATORS, Node, format  # noqa: E402
from explistops_jax.vocab import DomainVocabulary  # noqa: E402

GOLDEN = json.loads((Path(__file__).parent / "testdata" / "domain_vocab_ids_golden.json")
                    .read_text())


@pytest.fixture(scope="module")
def domain() -> DomainVocabulary:
    return DomainVocabulary(max_value=GOLDEN["max_value"])


def test_existing_ids_are_unchanged(domain):
    pinned = GOLDEN["pieces"]
    assert len(pinned) == 357
    assert list(domain.pieces[:len(pinned)]) == pinned
    for i, piece in enumerate(pinned):
        assert domain.piece_to_id(piece) == i


def test_family_words_get_new_ids_after_all_existing_ones(domain):
    first_new = len(GOLDEN["pieces"])
    for name in ("FIRST", "LAST", "PM", "FLSUM", "First", "Last", "product", "multiply"):
        assert domain.piece_to_id(name) >= first_new, name
    assert set(domain.pieces[first_new:]).isdisjoint(GOLDEN["pieces"])


def test_family_inputs_and_targets_encode_without_unknowns(domain):
    tree = Node("MAX", tuple(Node(op, (3, 5, 7)) for op in ALL_OPERATORS))
    for text in [format(tree), format(tree, "paren"),
                 *(explain.explain(tree, style, 10) for style in explain.STYLES)]:
        ids = domain.encode(text)
        assert domain.unk_id not in ids, text
        assert domain.decode(ids) == " ".join(text.split())
    assert domain.encode("[PM 2 3 ]")[:2] == [domain.piece_to_id("["), domain.piece_to_id("PM")]


def test_lra_parentheses_are_pinned_pieces(domain):
    """``(`` and ``)`` (the ``_paren`` tasks' inputs) are pieces of the pinned table,
    so LRA's notation needs no new id; each is one token."""
    assert (GOLDEN["pieces"].index("("), GOLDEN["pieces"].index(")")) == (10, 11)
    text = format(Node("MAX", (2, 9, Node("MIN", (4, 7)), 0)), "paren")
    ids = domain.encode(text)
    assert ids.count(10) == text.count("(") > 0 and ids.count(11) == text.count(")") > 0
    assert domain.unk_id not in ids and domain.decode(ids) == text
