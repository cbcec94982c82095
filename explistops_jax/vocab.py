"""Vocabularies for the SeqIO tasks: the compact domain vocabulary and T5's SentencePiece.

Explained-ListOps text is made of a few dozen words, brackets, punctuation and
numbers. :class:`DomainVocabulary` gives each of them one id, so a target costs
about one token per word and a tiny model spends no capacity on sub-word
spelling. The public T5 checkpoints need T5's own SentencePiece model instead;
:func:`sentencepiece_vocabulary` builds it from a configurable path (the public
``cc_all.32000`` file is not bundled: set ``EXPLISTOPS_SPM_PATH`` or the gin
parameter ``sentencepiece_model_path.path``).

The id table of :class:`DomainVocabulary` (deterministic, documented):

* ``0 <pad>``, ``1 </s>`` (EOS), ``2 <unk>``;
* the fixed symbols :data:`SYMBOLS`: brackets (``"]"`` twice: spaced, as in the
  input notation ``[MAX 2 9 ]``, and ``"##]"`` glued to the word before it, as in
  the lists ``[3, 2]`` of the explanations), punctuation, the ten digit
  continuations ``"##0"`` .. ``"##9"``, every operator spelling and the style names;
* the numbers ``"0"`` .. ``str(max_value)``;
* the explanation words (``explain.WORDS``, split into pieces the same way text is,
  in their order, each once, leaving out pieces already in the table).

Ids of the first three blocks depend on ``max_value`` only; the word block is
appended last so a change of wording never moves a number. Extra ids (T5
sentinels ``<extra_id_N>``) follow, numbered down from the top as in SeqIO.

Tokenization. Whitespace separates words; inside a word the punctuation
characters ``[ ] , : . ;`` are split off as pieces of their own, and the rest of
the word stays one piece. A piece that is not in the table is ``<unk>``, except a
run of digits, which falls back to digit pieces (``"1234"`` -> ``"1" "##2" "##3"
"##4"`` when 1234 > max_value), so no number is ever lost.

Decoding joins pieces with single spaces, except that no space is written after
``[`` nor before ``, : . ;``, a glued ``"##]"`` or a digit continuation. Hence
``decode(encode(text)) == text`` for text in this canonical spacing, which is how
every renderer writes; any other text comes back normalized: runs of whitespace
(newlines included) become one space, leading and trailing whitespace goes, and
spaces around punctuation follow the rule above (``"a , b"`` -> ``"a, b"``,
``"[ 3"`` -> ``"[3"``). ``<pad>`` and ``</s>`` decode to nothing, ``<unk>`` to
``"<unk>"``.

The Python (``_encode``/``_decode``) and TensorFlow (``_encode_tf``/
``_decode_tf``) paths run the same regular expressions and give the same ids; the
TensorFlow path is pure graph ops (regex, split, hash-table lookup), so it runs
inside ``tf.data`` pipelines without Python callbacks.
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

import gin

from explistops_jax import rundir, tf_loader

tf_loader.confine()  # TensorFlow off the GPUs before SeqIO loads it

import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402

from explistops_jax.errors import UserError  # noqa: E402

__all__ = [
    "DEFAULT_MAX_VALUE",
    "DomainVocabulary",
    "SPM_PATH_ENV",
    "SYMBOLS",
    "T5_EXTRA_IDS",
    "T5_PUBLIC_SPM_PATH",
    "sentencepiece_model_path",
    "sentencepiece_vocabulary",
    "train_sentencepiece_model",
]

from explistops_jax.domain_vocab import (  # noqa: E402  (the TF-free half)
    _DIGITS,
    _POSTDECODE,
    _PRETOKENIZE,
    _SPELL_DIGITS,
    DEFAULT_MAX_VALUE,
    DIGIT_CONTINUATIONS,
    EOS_ID,
    OPERATOR_SPELLINGS,
    PAD_ID,
    SPECIAL_PIECES,
    STYLE_NAMES,
    SYMBOLS,
    UNK_ID,
    DomainTable,
    split_pieces,
)


class DomainVocabulary(seqio.Vocabulary):
    """One id per ListOps symbol, number and explanation word (see the module doc).

    A ``seqio.Vocabulary`` over a :class:`~explistops_jax.domain_vocab.DomainTable`
    (``.table``), the TF-free half the grain pipeline uses: the same ids.
    """

    def __init__(
        self,
        max_value: int = DEFAULT_MAX_VALUE,
        extra_ids: int = 0,
        words: Sequence[str] | None = None,
    ):
        """Args:
        max_value: numbers 0..max_value are single tokens; larger ones are spelled
          with digit pieces.
        extra_ids: sentinel ids appended at the top (T5's ``<extra_id_N>``).
        words: the explanation words; default ``explain.WORDS``. Pass a fixed list
          to freeze the id table against later changes of wording.
        """
        self._table = DomainTable(max_value, extra_ids, words)
        super().__init__(extra_ids=extra_ids)
        self._tf_tables = None

    # -- the table -----------------------------------------------------------

    @property
    def table(self) -> DomainTable:
        """The TF-free id table (encode/decode without TensorFlow)."""
        return self._table

    @property
    def max_value(self) -> int:
        return self._table.max_value

    @property
    def pieces(self) -> tuple[str, ...]:
        """The id table: ``pieces[i]`` is the piece with id ``i`` (extra ids excluded)."""
        return self._table.pieces

    def piece_to_id(self, piece: str) -> int:
        return self._table.piece_to_id(piece)

    def id_to_piece(self, i: int) -> str:
        return self._table.id_to_piece(i)

    def tokenize(self, text: str) -> list[str]:
        """The pieces ``text`` encodes to (for inspection and counting)."""
        return self._table.tokenize(text)

    # -- seqio.Vocabulary ------------------------------------------------------

    @property
    def eos_id(self) -> int:
        return EOS_ID

    @property
    def unk_id(self) -> int:
        return UNK_ID

    @property
    def _base_vocab_size(self) -> int:
        return self._table.base_vocab_size

    def _encode(self, s: str | bytes) -> list[int]:
        return self._table.encode(s)

    def _decode(self, ids: Iterable[int]) -> str:
        return self._table.decode_pieces(ids)

    def _tables(self):
        """The TF lookup tables, built once, eagerly, and captured by graphs."""
        if self._tf_tables is None:
            with tf.init_scope():
                keys = tf.constant(list(self._table.keys), dtype=tf.string)
                values = tf.constant(list(self._table.keys.values()), dtype=tf.int32)
                table = tf.lookup.StaticHashTable(
                    tf.lookup.KeyValueTensorInitializer(keys, values), default_value=-1
                )
                displays = tf.constant(list(self._table.displays), dtype=tf.string)
                # Traced once per process: each pipeline that tokenizes then adds one
                # call op instead of re-tracing the whole graph (tasks build faster).
                encode = tf.function(
                    self._encode_graph,
                    input_signature=[tf.TensorSpec([], tf.string)],
                    autograph=False,
                )
            self._tf_tables = (table, displays, encode)
        return self._tf_tables

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        """String -> int32 ids (same ids as :meth:`_encode`).

        A scalar gives a 1-D tensor; a 1-D batch of strings a ``[batch, None]``
        ragged tensor.
        """
        encode = self._tables()[2]
        s = tf.convert_to_tensor(s, dtype=tf.string)
        if s.shape.rank == 0:
            return encode(s)
        return tf.map_fn(encode, s, fn_output_signature=tf.RaggedTensorSpec([None], tf.int32))

    def _encode_graph(self, s: tf.Tensor) -> tf.Tensor:
        table = self._tables()[0]
        for pattern, repl in _PRETOKENIZE:
            s = tf.strings.regex_replace(s, pattern, repl)
        tokens = _split_spaces(s)
        ids = table.lookup(tokens)
        spell = tf.logical_and(ids < 0, tf.strings.regex_full_match(tokens, _DIGITS))
        spelled = tokens
        for pattern, repl in _SPELL_DIGITS:
            spelled = tf.strings.regex_replace(spelled, pattern, repl)
        tokens = _split_spaces(
            tf.strings.reduce_join(tf.where(spell, spelled, tokens), separator=" ")
        )
        ids = table.lookup(tokens)
        return tf.where(ids < 0, tf.constant(UNK_ID, tf.int32), ids)

    @tf.autograph.experimental.do_not_convert
    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        """int ids [..., length] -> strings [...] (same text as :meth:`_decode`)."""
        displays = self._tables()[1]
        ids = tf.cast(ids, tf.int32)
        n = len(self._table.displays)
        ids = tf.where((ids >= 0) & (ids < n), ids, tf.constant(UNK_ID, tf.int32))
        text = tf.strings.reduce_join(tf.gather(displays, ids), axis=-1, separator=" ")
        for pattern, repl in _POSTDECODE:
            text = tf.strings.regex_replace(text, pattern, repl)
        return text

    # -- identity --------------------------------------------------------------

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, DomainVocabulary)
            and self._table == other._table
        )

    def __hash__(self) -> int:
        return hash(self._table)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_tf_tables"] = None  # TF resources are rebuilt on demand
        return state

    def __repr__(self) -> str:
        return (
            f"DomainVocabulary(max_value={self.max_value}, extra_ids={self.extra_ids}, "
            f"vocab_size={self.vocab_size})"
        )


def _split_spaces(s: tf.Tensor) -> tf.Tensor:
    tokens = tf.strings.split(s, sep=" ")
    return tf.boolean_mask(tokens, tf.strings.length(tokens) > 0)


# -- T5's SentencePiece vocabulary -------------------------------------------

SPM_PATH_ENV = "EXPLISTOPS_SPM_PATH"
# Where T5's public vocabulary lives (needs network access to Google Cloud Storage).
T5_PUBLIC_SPM_PATH = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"
# The public checkpoints use 100 sentinels: 32,000 pieces + 100 = 32,100 ids.
T5_EXTRA_IDS = 100


@gin.configurable
def sentencepiece_model_path(path: str | None = None) -> str | None:
    """The configured SentencePiece model: the gin parameter, else $EXPLISTOPS_SPM_PATH.

    None when neither is set. ``T5_PUBLIC_SPM_PATH`` is never assumed: machines
    here are offline, and reaching for Cloud Storage would hang rather than fail.
    """
    return path or os.environ.get(SPM_PATH_ENV) or None


@gin.configurable
def sentencepiece_vocabulary(
    path: str | None = None, extra_ids: int = T5_EXTRA_IDS
) -> seqio.SentencePieceVocabulary:
    """T5's vocabulary (or a stand-in) as a ``seqio.SentencePieceVocabulary``.

    Compares equal to the vocabulary of a T5X model gin file that names the same
    file and ``extra_ids`` (SeqIO compares the two by path and options).
    """
    path = path or sentencepiece_model_path()
    if not path:
        raise UserError(
            "no SentencePiece model configured",
            expected=(
                f"${SPM_PATH_ENV} or the gin parameter sentencepiece_model_path.path set to "
                f"T5's sentencepiece.model (public copy: {T5_PUBLIC_SPM_PATH})"
            ),
        )
    if rundir.is_local(path) and not os.path.isfile(path):
        raise UserError(f"SentencePiece model {path!r} does not exist", expected="a .model file")
    return seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)


def train_sentencepiece_model(
    texts: Iterable[str], model_prefix: str, vocab_size: int = 1000, **options
) -> str:
    """Train a SentencePiece model with T5's special ids; returns the .model path.

    A stand-in for T5's ``cc_all.32000`` model where that file is out of reach
    (tests, offline benchmarks): unigram, pad 0, eos 1, unk 2, no bos, as T5.
    ``vocab_size`` is an upper bound when the text is too small for it.
    """
    import io

    import sentencepiece as spm

    settings = dict(
        model_type="unigram",
        vocab_size=vocab_size,
        pad_id=PAD_ID,
        eos_id=EOS_ID,
        unk_id=UNK_ID,
        bos_id=-1,
        hard_vocab_limit=False,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    settings.update(options)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts)), model_writer=(model := io.BytesIO()), **settings
    )
    path = f"{model_prefix}.model"
    with open(path, "wb") as f:
        f.write(model.getvalue())
    return path
