"""The compact domain vocabulary and the SentencePiece helpers (explistops_jax.vocab)."""

from __future__ import annotations

import copy
import pickle

import gin
import pytest
import sentencepiece

tf = pytest.importorskip("tensorflow")
seqio = pytest.importorskip("seqio")

from explistops_jax import explain, listops, vocab  # noqa: E402
from explistops_jax.errors import UserError  # noqa: E402
from explistops_jax.vocab import DomainVocabulary  # noqa: E402

N_TREES = 40


def _trees() -> list:
    """Trees of the main config, the long config and the larger-numbers range."""
    configs = [
        listops.SamplerConfig(min_length=20, max_length=50),
        listops.SamplerConfig(min_length=50, max_length=100),
        listops.SamplerConfig(min_length=20, max_length=50, min_value=30, max_value=99),
    ]
    return [listops.sample(c, seed=7, index=i) for c in configs for i in range(N_TREES)]


@pytest.fixture(scope="module")
def domain() -> DomainVocabulary:
    return DomainVocabulary()


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[str]]:
    """style -> target texts (modulus 30 and 10), plus "inputs" -> expressions."""
    trees = _trees()
    texts = {
        style: [explain.explain(t, style, modulus=m) for t in trees for m in (30, 10)]
        for style in explain.STYLES
    }
    texts["inputs"] = [listops.format(t) for t in trees]
    return texts


def _normalized(text: str) -> str:
    return " ".join(text.split())


# -- the id table ------------------------------------------------------------------


def test_id_table_layout(domain):
    assert (domain.pad_id, domain.eos_id, domain.unk_id) == (0, 1, 2)
    assert domain.pieces[:3] == ("<pad>", "</s>", "<unk>")
    n_fixed = 3 + len(vocab.SYMBOLS)
    assert domain.pieces[3:n_fixed] == vocab.SYMBOLS
    # Numbers follow the symbols, in order; they depend on nothing but max_value.
    assert [domain.piece_to_id(str(n)) for n in (0, 1, 29, 299)] == [
        n_fixed, n_fixed + 1, n_fixed + 29, n_fixed + 299
    ]
    # Documented ids that checkpoints rely on.
    assert domain.piece_to_id("[") == 3 and domain.piece_to_id("]") == 4
    assert domain.piece_to_id("##]") == 5 and domain.piece_to_id(",") == 6
    assert domain.piece_to_id("MAX") == 22 and domain.piece_to_id("0") == 32
    # The word block: the pieces of explain.WORDS, in order, once each.
    words = []
    for w in explain.WORDS:
        for p in vocab.split_pieces(w):
            if p not in words and p not in domain.pieces[: n_fixed + 300]:
                words.append(p)
    assert list(domain.pieces[n_fixed + 300:]) == words
    assert domain.vocab_size == len(domain.pieces) == n_fixed + 300 + len(words)
    assert len(set(domain.pieces)) == len(domain.pieces)


def test_id_table_is_deterministic(domain):
    again = DomainVocabulary()
    assert again.pieces == domain.pieces and again == domain and hash(again) == hash(domain)
    small = DomainVocabulary(max_value=99)
    assert small.pieces[: 3 + len(vocab.SYMBOLS) + 100] == domain.pieces[: 3 + len(vocab.SYMBOLS) + 100]
    assert small != domain
    assert DomainVocabulary(extra_ids=2) != domain


def test_every_explanation_word_is_one_piece(domain):
    for word in explain.WORDS:
        for piece in vocab.split_pieces(word):
            assert domain.piece_to_id(piece) != domain.unk_id, (word, piece)


# -- round trips ---------------------------------------------------------------------


@pytest.mark.parametrize("style", [*explain.STYLES, "inputs"])
def test_round_trip_of_rendered_text(domain, rendered, style):
    for text in rendered[style]:
        ids = domain.encode(text)
        assert domain.unk_id not in ids, (text, domain.tokenize(text))
        assert domain.decode(ids) == _normalized(text)


@pytest.mark.parametrize(
    "text, pieces, decoded",
    [
        ("[MAX 2 9 [MIN 4 7 ] 0 ]", "[ MAX 2 9 [ MIN 4 7 ] 0 ]", None),
        ("Max, largest of [3, 2] is 3\nFinal answer: 3", None, "Max, largest of [3, 2] is 3 Final answer: 3"),
        ("sum is 1234", "sum is 1 ##2 ##3 ##4", None),  # digit fallback above max_value
        ("[300 007", "[ 3 ##0 ##0 0 ##0 ##7", None),  # leading zeros kept
        ("  a  ,b [ 3 ]]  ", None, "a, b [3 ]]"),  # whitespace and punctuation spacing
        ("", "", ""),
    ],
)
def test_tokenization_examples(text, pieces, decoded):
    v = DomainVocabulary(words=["Max", "largest", "of", "is", "Final", "answer", "sum", "a", "b"])
    if pieces is not None:
        assert " ".join(v.tokenize(text)) == pieces
    assert v.decode(v.encode(text)) == (decoded if decoded is not None else _normalized(text))


def test_unknown_words_and_ids(domain):
    ids = domain.encode("[MAX 2 zebra ]")
    assert ids[3] == domain.unk_id
    assert domain.decode(ids) == "[MAX 2 <unk> ]"
    assert domain.encode(domain.decode(ids)) == ids  # <unk> reads back as unk
    # ids past the table decode as <unk>; pad and eos vanish; decode stops at eos.
    assert domain.decode([domain.piece_to_id("7"), 0, domain.vocab_size + 5]) == "7 <unk>"
    three = domain.piece_to_id("3")
    assert domain.decode([three, 1, three]) == "3"


def test_extra_ids():
    v = DomainVocabulary(extra_ids=3)
    assert v.vocab_size == len(v.pieces) + 3
    assert v.encode("<extra_id_0> <extra_id_2>") == [v.vocab_size - 1, v.vocab_size - 3]


def test_max_value_must_cover_digits():
    with pytest.raises(UserError):
        DomainVocabulary(max_value=5)


# -- TensorFlow == Python ---------------------------------------------------------------


def test_tf_encode_matches_python_inside_tf_data(domain, rendered):
    texts = [t for style in rendered for t in rendered[style][::4]]
    texts += ["sum is 1234, answer is 4", "  [ 3 ,  zebra ]] 007 ", "", "<extra_id_0>"]
    ds = tf.data.Dataset.from_tensor_slices(texts).map(domain.encode_tf)
    for text, ids in zip(texts, ds.as_numpy_iterator()):
        assert ids.tolist() == domain.encode(text), text
    batch = domain.encode_tf(tf.constant(texts[:5]))  # a batch gives a ragged tensor
    assert batch.to_list() == [domain.encode(t) for t in texts[:5]]


def test_tf_decode_matches_python(domain, rendered):
    texts = rendered["medium"][:6] + rendered["inputs"][:2]
    encoded = [domain.encode(t) + [domain.eos_id] for t in texts]
    width = max(map(len, encoded)) + 2
    batch = tf.constant([ids + [0] * (width - len(ids)) for ids in encoded])
    decoded = domain.decode_tf(batch).numpy()  # [batch] strings, stops at eos
    assert [d.decode() for d in decoded] == [_normalized(t) for t in texts]
    assert domain.decode_tf(tf.constant(encoded[0])).numpy().decode() == _normalized(texts[0])
    # Ids past the table and after eos, as seqio cleans them.
    odd = tf.constant([domain.piece_to_id("4"), domain.vocab_size + 3, 1, domain.piece_to_id("9")])
    assert domain.decode_tf(odd).numpy().decode() == "4 <unk>"


def test_pickle_and_deepcopy_after_tf_use(domain):
    domain.encode_tf(tf.constant("[MAX 1 2 ]"))  # builds the TF tables
    for clone in (copy.deepcopy(domain), pickle.loads(pickle.dumps(domain))):
        assert clone == domain
        assert clone.encode_tf(tf.constant("[MAX 1 2 ]")).numpy().tolist() == domain.encode("[MAX 1 2 ]")


# -- tokens per word --------------------------------------------------------------------


def test_tokens_per_target_close_to_words(domain, rendered, capsys):
    ratios = {}
    for style in explain.STYLES:
        tokens = sum(len(domain.encode(t)) for t in rendered[style])
        words = sum(len(t.split()) for t in rendered[style])
        ratios[style] = tokens / words
    with capsys.disabled():
        print("\ndomain tokens per whitespace word:", {s: round(r, 2) for s, r in ratios.items()})
    # Every piece is a word or punctuation split off a word ("[3," is three pieces).
    assert all(1.0 <= r <= 1.8 for r in ratios.values()), ratios
    # Against explain.tokenize (words with "[ ] , :" split off) it is one to one,
    # up to the glued "]" and numbers past max_value (digit pieces).
    for style in explain.STYLES:
        for text in rendered[style]:
            pieces = [p.replace("##]", "]") for p in domain.tokenize(text)]
            if not any(p.startswith("##") for p in pieces):
                assert pieces == explain.tokenize(text)


# -- SentencePiece -----------------------------------------------------------------------


def test_sentencepiece_path_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv(vocab.SPM_PATH_ENV, raising=False)
    assert vocab.sentencepiece_model_path() is None
    with pytest.raises(UserError, match="EXPLISTOPS_SPM_PATH"):
        vocab.sentencepiece_vocabulary()
    with pytest.raises(UserError, match="does not exist"):
        vocab.sentencepiece_vocabulary(str(tmp_path / "missing.model"))
    monkeypatch.setenv(vocab.SPM_PATH_ENV, "/from/env.model")
    assert vocab.sentencepiece_model_path() == "/from/env.model"
    # A gin binding wins over the environment (scoped, so no other test sees it).
    with gin.unlock_config():
        gin.bind_parameter("explistops_vocab_test/sentencepiece_model_path.path", "/from/gin.model")
    with gin.config_scope("explistops_vocab_test"):
        assert vocab.sentencepiece_model_path() == "/from/gin.model"


def test_sentencepiece_stand_in(tmp_path, rendered):
    texts = [t for style in explain.STYLES for t in rendered[style]] + rendered["inputs"]
    path = vocab.train_sentencepiece_model(texts, str(tmp_path / "spm"), vocab_size=300)
    sp = vocab.sentencepiece_vocabulary(path)
    assert isinstance(sp, seqio.SentencePieceVocabulary)
    assert (sp.pad_id, sp.eos_id, sp.unk_id) == (0, 1, 2)
    trained = sentencepiece.SentencePieceProcessor(model_file=path).GetPieceSize()
    assert sp.vocab_size == trained + vocab.T5_EXTRA_IDS  # T5's 100 sentinels on top
    assert sp == vocab.sentencepiece_vocabulary(path)  # SeqIO compares path and options
    for text in rendered["medium"][:10] + rendered["inputs"][:5]:
        assert sp.decode(sp.encode(text)) == _normalized(text)


# -- the TF-free half (explistops_jax.domain_vocab) -------------------------------------


def test_tf_free_table_gives_the_same_ids_and_text(domain, rendered):
    """The grain pipeline's DomainTable and the seqio.Vocabulary agree, id for id."""
    from explistops_jax.domain_vocab import DomainTable

    table = DomainTable()
    assert table == domain.table and table.vocab_size == domain.vocab_size
    texts = [t for style in rendered for t in rendered[style]] + [
        "SUM 1234 , [ unknownword ] <extra_id_0>", "  spaced\n text ,a:b  ",
        # the Python table encodes word by word (and remembers words); TensorFlow
        # runs the rules over the whole text: edges where the two could part
        "\x01[MAX\x02 2\x03\x04 \x05 9]", "a\xa0b \u2003 [3\x1c4] \t\r\x0b\x0c7",
        ",,[[;;..]] :: a.b.c 3, 12,34 [0099] ]]]", "\x03 \x04", "\n\n", " ] [ ",
        "sum is 1234 sum is 1234"]
    for text in texts:
        ids = table.encode(text)
        assert ids == list(domain.encode(text))
        assert table.decode(ids + [1, 5, 7]) == domain.decode(ids + [1, 5, 7])
    assert table.decode([5, 400, 0]) == domain.decode([5, 400, 0])  # past the table: unk
    with_extra = DomainTable(extra_ids=3)
    assert with_extra.encode("<extra_id_0> 7") == list(DomainVocabulary(extra_ids=3).encode(
        "<extra_id_0> 7"))
