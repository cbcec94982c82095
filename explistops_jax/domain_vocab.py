"""The compact domain vocabulary without TensorFlow: its id table, encode and decode.

The pure-Python half of :class:`explistops_jax.vocab.DomainVocabulary` (whose
module doc describes the id table, the tokenization and the decoding rules):
:class:`DomainTable` owns the pieces and the Python encode/decode, so the grain
input pipeline tokenizes without importing seqio or TensorFlow, and the
``seqio.Vocabulary`` subclass wraps one table, so both give the same ids. The
regular expressions here are also what the TensorFlow path of ``vocab.py`` runs
(their replacement syntax is the same for Python's re and RE2).
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

from explistops_jax.errors import UserError

__all__ = [
    "DEFAULT_MAX_VALUE",
    "DIGITS_MAX_VALUE",
    "DomainTable",
    "EOS_ID",
    "PAD_ID",
    "SYMBOLS",
    "UNK_ID",
    "split_pieces",
]

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
SPECIAL_PIECES = ("<pad>", "</s>", "<unk>")

# Every number up to this value is one token. 299 covers every value and every
# sum before the modulus of the 0-29 configs (at most 10 arguments of at most 29),
# and every value of a larger-numbers test up to 299; larger numbers (the sums
# of such tests) fall back to digits.
DEFAULT_MAX_VALUE = 299
# The `_digits` tasks' table: only 0-9 are numbers of their own, so every larger
# number is spelled from pieces a model trained on 0-9 has seen (the positive
# control of the larger-numbers finding needs a test that can be passed).
DIGITS_MAX_VALUE = 9

OPERATOR_SPELLINGS = ("MAX", "MIN", "MED", "SM", "MEDIAN", "SUM")
STYLE_NAMES = ("none", "short", "medium", "long")
DIGIT_CONTINUATIONS = tuple(f"##{d}" for d in range(10))
SYMBOLS = (
    ("[", "]", "##]", ",", ":", ".", ";", "(", ")")
    + DIGIT_CONTINUATIONS
    + OPERATOR_SPELLINGS
    + STYLE_NAMES
)

_GLUE_RIGHT = frozenset({"["})  # no space after
_GLUE_LEFT = frozenset({",", ":", ".", ";", "##]"} | set(DIGIT_CONTINUATIONS))  # no space before

# Internal marker characters; stripped from input text first.
_GLUED = "\x01"  # prefix of a piece written right after the previous one
_WRAP = "\x02"  # transient: wraps punctuation while splitting words
_CONT = "\x03"  # prefix of a digit continuation (encode) / "drop the space before" (decode)
_NOSPACE_AFTER = "\x04"  # decode: drop the space after
_VANISH = "\x05"  # decode: pad/eos, drops itself and the space before

_PUNCT_CLASS = r"[\[\],:.;]"
_WS = r"[ \t\n\r\f\v]+"

# (pattern, replacement) pairs, in order; the replacement syntax (\1) is the same
# for Python's re and TensorFlow's RE2.
_PRETOKENIZE = (
    (r"[\x01-\x05]", ""),
    (_WS, " "),
    (r"^ | $", ""),
    (f"({_PUNCT_CLASS})", _WRAP + r"\1" + _WRAP),
    (f"(^| ){_WRAP}+", r"\1"),
    (f"{_WRAP}+( |$)", r"\1"),
    (f"{_WRAP}+", " " + _GLUED),
)
_DIGITS = f"^{_GLUED}?[0-9]+$"
_DIGITS_RE = re.compile(_DIGITS)
_SPELL_DIGITS = (
    ("([0-9])", " " + _CONT + r"\1"),
    (f"^({_GLUED}?) {_CONT}", r"\1"),
)
_POSTDECODE = (
    (f" ?{_VANISH}", ""),
    (f"{_NOSPACE_AFTER} ?", ""),
    (f" ?{_CONT}", ""),
    (r"^ +| +$", ""),
)


def split_pieces(text: str) -> list[str]:
    """The pieces of ``text`` as the vocabulary sees them (no lookup, no markers)."""
    return [t.lstrip(_GLUED) for t in _pretokenize(text)]


_PRETOKENIZE_RES = tuple((re.compile(pattern), repl) for pattern, repl in _PRETOKENIZE)
_WS_RE = re.compile(_WS)
# Distinct words whose ids an encoder remembers (a task's texts use a few hundred).
_WORD_CACHE_SIZE = 1 << 16


def _pretokenize(text: str) -> list[str]:
    for pattern, repl in _PRETOKENIZE_RES:
        text = pattern.sub(repl, text)
    return [t for t in text.split(" ") if t]


def _display(piece: str) -> str:
    """How a piece is written by the decoder, with its spacing markers."""
    if piece in (SPECIAL_PIECES[PAD_ID], SPECIAL_PIECES[EOS_ID]):
        return _VANISH
    text = piece[2:] if piece.startswith("##") else piece
    if piece in _GLUE_LEFT:
        text = _CONT + text
    if piece in _GLUE_RIGHT:
        text = text + _NOSPACE_AFTER
    return text


class DomainTable:
    """The domain vocabulary's id table with Python encode/decode (no TensorFlow).

    The same constructor arguments as ``vocab.DomainVocabulary`` give the same
    ids; ``encode``/``decode`` behave as that ``seqio.Vocabulary``'s (decode maps
    ids beyond the vocabulary to ``<unk>`` and stops after the first EOS).
    """

    pad_id, eos_id, unk_id = PAD_ID, EOS_ID, UNK_ID

    def __init__(self, max_value: int = DEFAULT_MAX_VALUE, extra_ids: int = 0,
                 words: Sequence[str] | None = None):
        """Args:
        max_value: numbers 0..max_value are single tokens; larger ones are spelled
          with digit pieces.
        extra_ids: sentinel ids appended at the top (T5's ``<extra_id_N>``).
        words: the explanation words; default ``explain.WORDS``. Pass a fixed list
          to freeze the id table against later changes of wording.
        """
        if max_value < 9:
            raise UserError(
                f"DomainVocabulary max_value={max_value} is too small",
                expected="at least 9, so that every digit is a piece",
            )
        if words is None:
            from explistops_jax import explain

            words = explain.WORDS
        self.max_value = int(max_value)
        self.extra_ids = int(extra_ids or 0)
        pieces = list(SPECIAL_PIECES) + list(SYMBOLS) + [str(n) for n in range(max_value + 1)]
        seen = set(pieces)
        for word in words:
            for piece in split_pieces(word):
                if piece not in seen:
                    seen.add(piece)
                    pieces.append(piece)
        self.pieces: tuple[str, ...] = tuple(pieces)
        self._ids = {p: i for i, p in enumerate(self.pieces)}
        self.keys: dict[str, int] = self._lookup_keys()
        self.displays: tuple[str, ...] = tuple(_display(p) for p in self.pieces)
        self._word_ids: dict[str, tuple[int, ...]] = {}

    @property
    def base_vocab_size(self) -> int:
        """Ids without the extra ids (PAD, EOS and UNK included)."""
        return len(self.pieces)

    @property
    def vocab_size(self) -> int:
        return self.base_vocab_size + self.extra_ids

    def _lookup_keys(self) -> dict[str, int]:
        """Pre-tokenized strings (with markers) -> ids."""
        keys: dict[str, int] = {}
        for i, piece in enumerate(self.pieces):
            if piece in (SPECIAL_PIECES[PAD_ID], SPECIAL_PIECES[EOS_ID]):
                continue
            if piece.startswith("##"):
                # "##]" is a "]" glued to the previous word; "##d" a digit continuation.
                keys[(_GLUED if piece == "##]" else _CONT) + piece[2:]] = i
                continue
            keys[piece] = i
            keys.setdefault(_GLUED + piece, i)
        base = self.base_vocab_size
        for k in range(self.extra_ids):
            keys[f"<extra_id_{k}>"] = base + self.extra_ids - 1 - k
        return keys

    def piece_to_id(self, piece: str) -> int:
        return self._ids.get(piece, UNK_ID)

    def id_to_piece(self, i: int) -> str:
        if 0 <= i < len(self.pieces):
            return self.pieces[i]
        if i < self.vocab_size:
            return f"<extra_id_{self.vocab_size - 1 - i}>"
        return SPECIAL_PIECES[UNK_ID]

    def tokenize(self, text: str) -> list[str]:
        """The pieces ``text`` encodes to (for inspection and counting)."""
        return [self.id_to_piece(i) for i in self.encode(text)]

    def encode(self, s: str | bytes) -> list[int]:
        """Text -> ids (no EOS).

        Every pre-tokenization rule acts within a whitespace-separated word (the
        whitespace rules only collapse and strip), so a text's ids are its words'
        ids in order; each distinct word is encoded once and remembered. The
        TensorFlow vocabulary runs the same rules over whole texts; tests compare
        the two, id for id."""
        if isinstance(s, bytes):
            s = s.decode("utf-8")
        ids: list[int] = []
        cache = self._word_ids
        for word in _WS_RE.split(s):
            if not word:
                continue
            word_ids = cache.get(word)
            if word_ids is None:
                word_ids = self._encode_word(word)
                if len(cache) < _WORD_CACHE_SIZE:
                    cache[word] = word_ids
            ids.extend(word_ids)
        return ids

    def _encode_word(self, word: str) -> tuple[int, ...]:
        ids = []
        keys = self.keys
        for token in _pretokenize(word):
            i = keys.get(token)
            if i is not None:
                ids.append(i)
            elif _DIGITS_RE.match(token):
                for pattern, repl in _SPELL_DIGITS:
                    token = re.sub(pattern, repl, token)
                ids.extend(keys.get(t, UNK_ID) for t in token.split(" "))
            else:
                ids.append(UNK_ID)
        return tuple(ids)

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text, as ``seqio.Vocabulary.decode``: ids past the vocabulary
        are ``<unk>``, and nothing after the first EOS is read."""
        clean = [UNK_ID if i >= self.base_vocab_size else i for i in map(int, ids)]
        if EOS_ID in clean:
            clean = clean[:clean.index(EOS_ID) + 1]
        return self.decode_pieces(clean)

    def decode_pieces(self, ids: Iterable[int]) -> str:
        """Ids -> text, every id read (``seqio.Vocabulary._decode``)."""
        n = len(self.displays)
        unk = SPECIAL_PIECES[UNK_ID]
        text = " ".join(self.displays[i] if 0 <= i < n else unk for i in map(int, ids))
        for pattern, repl in _POSTDECODE:
            text = re.sub(pattern, repl, text)
        return text

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_word_ids"] = {}  # remembered words are rebuilt on use
        return state

    def __eq__(self, other) -> bool:
        return (isinstance(other, DomainTable) and self.pieces == other.pieces
                and self.extra_ids == other.extra_ids)

    def __hash__(self) -> int:
        return hash((self.pieces, self.extra_ids))

    def __repr__(self) -> str:
        return (f"DomainTable(max_value={self.max_value}, extra_ids={self.extra_ids}, "
                f"vocab_size={self.vocab_size})")
