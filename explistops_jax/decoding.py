"""Autoregressive decoding as pure functions over a cache pytree.

Every function takes

- ``inputs``: int [batch, length] decoder input tokens, i.e. the shifted-right
  prompt: position 0 is the start token (0 for T5); a non-zero token at position
  i + 1 forces the token generated at position i (a prompt); zeros are generated.
  Its length is the maximum decode length.
- ``cache``: any pytree. Leaves with ndim 0 are shared by all rows (e.g. a step
  index); every other leaf has the batch as its leading axis (beam search
  repeats and reorders those rows).
- ``tokens_to_logits(ids, cache) -> (logits, new_cache)``: ids int [rows, 1]
  (the previous token of each row), logits [rows, vocab] or [rows, 1, vocab].

They run a ``lax.while_loop`` that stops as soon as every row has produced EOS
(beam search: as soon as no live beam can beat the finished ones), or after
``length`` steps, and are jit-compatible (pass the callback as a static
argument or close over it). Generated sequences are the target tokens:
EOS-terminated and padded with 0 after EOS.

The options a user gives (``explistops eval --top_p 0.9``, gin
``evaluate.decode``, the ``decode`` dict of the Python API) are named as
Hugging Face ``generate`` names them and checked once by
:meth:`GenerateConfig.from_options`.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from explistops_jax.errors import UserError

Array = jax.Array
Cache = Any
TokensToLogits = Callable[[Array, Cache], tuple[Array, Cache]]

# Log-probability of "impossible"; finite so that sums stay ordered.
NEG_INF = -1.0e7

__all__ = ["DecodeOutput", "GenerateConfig", "greedy", "temperature_sample", "filter_logits",
           "beam_search", "brevity_penalty", "NEG_INF"]


class DecodeOutput(NamedTuple):
    """sequences: [batch, length] (beam search: [batch, beams, length], best
    first); scores: log-likelihood of each sequence under the model (beam search:
    length-normalised, as ranked); num_steps: calls made to tokens_to_logits;
    cache: the cache after the last step (beam search: [batch * beams] rows)."""

    sequences: Array
    scores: Array
    num_steps: Array
    cache: Cache


def brevity_penalty(alpha: float, length) -> Array:
    """T5 / GNMT length penalty ((5 + length) / 6) ** alpha."""
    return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


# --------------------------------------------------------------- helpers


def _log_probs(logits: Array) -> Array:
    """[rows, vocab] or [rows, 1, vocab] logits -> float32 log-probabilities [rows, vocab]."""
    logits = logits.reshape(logits.shape[0], logits.shape[-1])
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


def _forced(inputs: Array, step: Array) -> Array:
    """The prompt token forced at output position `step` (0: none). [batch]"""
    padded = jnp.pad(inputs, ((0, 0), (0, 1)))  # [batch, length + 1]
    return lax.dynamic_index_in_dim(padded, step + 1, axis=1, keepdims=False)


def _apply_prompt(log_probs: Array, forced: Array) -> Array:
    """Rows with a forced token put all their mass on it. [rows, vocab]"""
    onehot = jax.nn.one_hot(forced, log_probs.shape[-1], dtype=jnp.bool_)
    pinned = jnp.where(onehot, 0.0, NEG_INF)
    return jnp.where((forced > 0)[:, None], pinned, log_probs)


def _check_inputs(inputs: Array) -> tuple[int, int]:
    if inputs.ndim != 2:
        raise ValueError(f"inputs must be [batch, length] token ids, got shape {inputs.shape}")
    return inputs.shape


class _State(NamedTuple):
    step: Array        # scalar int32: output position being generated
    token: Array       # [batch] previous token (fed to tokens_to_logits)
    sequences: Array   # [batch, length]
    scores: Array      # [batch] sum of log-probs of the generated tokens
    done: Array        # [batch] bool: EOS produced
    rng: Array
    cache: Cache


def _sample_loop(inputs, cache, tokens_to_logits, choose, rng, eos_id, early_stop):
    """Shared loop of greedy and sampling; `choose(log_probs, rng) -> tokens`."""
    batch, length = _check_inputs(inputs)
    inputs = jnp.asarray(inputs, jnp.int32)

    def cond(s: _State):
        running = s.step < length
        return running & ~jnp.all(s.done) if early_stop else running

    def body(s: _State):
        logits, cache = tokens_to_logits(s.token[:, None], s.cache)
        log_probs = _apply_prompt(_log_probs(logits), _forced(inputs, s.step))
        token = choose(log_probs, jax.random.fold_in(s.rng, s.step)).astype(jnp.int32)
        token = jnp.where(s.done, 0, token)
        gained = jnp.take_along_axis(log_probs, token[:, None], axis=-1)[:, 0]
        sequences = lax.dynamic_update_slice(s.sequences, token[:, None], (0, s.step))
        return _State(s.step + 1, token, sequences,
                      s.scores + jnp.where(s.done, 0.0, gained),
                      s.done | (token == eos_id), s.rng, cache)

    init = _State(jnp.zeros((), jnp.int32), inputs[:, 0], jnp.zeros_like(inputs),
                  jnp.zeros((batch,), jnp.float32), jnp.zeros((batch,), jnp.bool_),
                  rng, cache)
    final = lax.while_loop(cond, body, init)
    return DecodeOutput(final.sequences, final.scores, final.step, final.cache)


# --------------------------------------------------------------- greedy / sampling


def greedy(inputs: Array, cache: Cache, tokens_to_logits: TokensToLogits, *,
           eos_id: int = 1, early_stop: bool = True) -> DecodeOutput:
    """Most likely token at each step. ``early_stop=False`` runs all `length`
    steps (same output; for benchmarks)."""
    choose = lambda log_probs, rng: jnp.argmax(log_probs, axis=-1)
    return _sample_loop(inputs, cache, tokens_to_logits, choose, jax.random.key(0),
                        eos_id, early_stop)


def filter_logits(logits: Array, *, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0) -> Array:
    """Logits to sample from, in the order transformers applies its warpers:
    divided by `temperature`, then only the `top_k` largest (0: all), then only
    the smallest set of the most likely tokens whose probability reaches
    `top_p` (the token that crosses it included, so at least one). Removed
    tokens get NEG_INF. Ties at a cut are all kept. [rows, vocab] float32.

    top_k=0 and top_p=1.0 leave the scaled logits untouched (the same bits)."""
    scaled = logits.astype(jnp.float32) / temperature
    if top_k:
        kth = lax.top_k(scaled, min(top_k, scaled.shape[-1]))[0][:, -1:]  # [rows, 1]
        scaled = jnp.where(scaled < kth, NEG_INF, scaled)
    if top_p < 1.0:
        ranked = -jnp.sort(-scaled, axis=-1)  # [rows, vocab] most likely first
        probs = jax.nn.softmax(ranked, axis=-1)
        # mass of the tokens ranked before each one: keep it while that is < top_p
        before = jnp.pad(jnp.cumsum(probs, axis=-1)[:, :-1], ((0, 0), (1, 0)))
        cut = jnp.min(jnp.where(before < top_p, ranked, jnp.inf), axis=-1, keepdims=True)
        scaled = jnp.where(scaled < cut, NEG_INF, scaled)
    return scaled


def temperature_sample(inputs: Array, cache: Cache, tokens_to_logits: TokensToLogits,
                       rng: Array, *, temperature: float = 1.0, top_k: int = 0,
                       top_p: float = 1.0, eos_id: int = 1,
                       early_stop: bool = True) -> DecodeOutput:
    """Sample each token from softmax(logits / temperature), optionally from the
    `top_k` most likely only and from the nucleus of mass `top_p` only (see
    `filter_logits`). temperature 0 is greedy. The same `rng` gives the same
    sequences. Scores are log-likelihoods under the unfiltered model."""

    def choose(log_probs, key):
        if temperature == 0.0:
            return jnp.argmax(log_probs, axis=-1)
        scaled = filter_logits(log_probs, temperature=temperature, top_k=top_k, top_p=top_p)
        return jax.random.categorical(key, scaled, axis=-1)

    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    return _sample_loop(inputs, cache, tokens_to_logits, choose, rng, eos_id, early_stop)


# --------------------------------------------------------------- beam search


def _expand_rows(cache: Cache, beams: int) -> Cache:
    """Repeat each row `beams` times: [batch, ...] -> [batch * beams, ...]."""
    return jax.tree_util.tree_map(
        lambda x: x if jnp.ndim(x) == 0 else jnp.repeat(x, beams, axis=0), cache)


def _gather_beams(x: Array, indices: Array) -> Array:
    """x [batch, beams, ...], indices [batch, n] -> [batch, n, ...]."""
    idx = indices.reshape(indices.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


def _gather_cache(cache: Cache, indices: Array) -> Cache:
    """Reorder the flattened [batch * beams, ...] cache rows by beam `indices`."""
    batch, beams = indices.shape

    def gather(x):
        if jnp.ndim(x) == 0:
            return x
        x = x.reshape((batch, beams) + x.shape[1:])
        return _gather_beams(x, indices).reshape((batch * beams,) + x.shape[2:])

    return jax.tree_util.tree_map(gather, cache)


class _BeamState(NamedTuple):
    step: Array           # scalar int32
    alive_seqs: Array     # [batch, beams, length]
    alive_log_probs: Array  # [batch, beams]
    finished_seqs: Array  # [batch, beams, length]
    finished_scores: Array  # [batch, beams] length-normalised, NEG_INF = empty
    cache: Cache          # rows [batch * beams, ...]


def beam_search(inputs: Array, cache: Cache, tokens_to_logits: TokensToLogits, *,
                beam_size: int = 4, alpha: float = 0.6, eos_id: int = 1,
                early_stop: bool = True) -> DecodeOutput:
    """Beam search ranking finished sequences by log_prob / ((5 + len) / 6)**alpha.

    `cache` has `batch` rows; it is repeated per beam here. Returns all beams,
    best first: sequences [batch, beam_size, length], scores [batch, beam_size]
    (length-normalised log-likelihoods). Rows where no beam finished within
    `length` steps return their live beams, scored at full length.
    """
    batch, length = _check_inputs(inputs)
    inputs = jnp.asarray(inputs, jnp.int32)
    k = beam_size
    max_penalty = jnp.maximum(brevity_penalty(alpha, 1), brevity_penalty(alpha, length))

    def cond(s: _BeamState):
        running = s.step < length
        if not early_stop:
            return running
        # A live beam's score can only fall: its log-prob drops, its penalty is bounded.
        best_possible = s.alive_log_probs[:, 0] / max_penalty
        done = s.finished_scores[:, -1] >= best_possible  # the worst finished one
        return running & ~jnp.all(done)

    def body(s: _BeamState):
        prev = lax.dynamic_index_in_dim(s.alive_seqs, s.step - 1, axis=2, keepdims=False)
        prev = jnp.where(s.step == 0, inputs[:, :1], prev)  # [batch, beams]
        logits, cache = tokens_to_logits(prev.reshape(batch * k, 1), s.cache)
        log_probs = _apply_prompt(_log_probs(logits),
                                  jnp.repeat(_forced(inputs, s.step), k))
        vocab = log_probs.shape[-1]
        candidates = s.alive_log_probs[:, :, None] + log_probs.reshape(batch, k, vocab)
        # 2k candidates: enough that k of them do not end with EOS.
        top_log_probs, flat = lax.top_k(candidates.reshape(batch, k * vocab), 2 * k)
        origin, token = flat // vocab, (flat % vocab).astype(jnp.int32)  # [batch, 2k]
        seqs = _gather_beams(s.alive_seqs, origin)  # [batch, 2k, length]
        seqs = lax.dynamic_update_slice(seqs, token[:, :, None], (0, 0, s.step))
        is_eos = token == eos_id

        ended = jnp.where(is_eos, top_log_probs / brevity_penalty(alpha, s.step + 1), NEG_INF)
        pool_scores = jnp.concatenate([s.finished_scores, ended], axis=1)
        finished_scores, pick = lax.top_k(pool_scores, k)
        pool_seqs = jnp.concatenate([s.finished_seqs, seqs], axis=1)
        finished_seqs = _gather_beams(pool_seqs, pick)

        alive_log_probs, keep = lax.top_k(jnp.where(is_eos, NEG_INF, top_log_probs), k)
        alive_seqs = _gather_beams(seqs, keep)
        cache = _gather_cache(cache, _gather_beams(origin, keep))
        return _BeamState(s.step + 1, alive_seqs, alive_log_probs, finished_seqs,
                          finished_scores, cache)

    # Only beam 0 is live at first, so the first step does not pick k copies.
    first = jnp.where(jnp.arange(k) == 0, 0.0, NEG_INF)
    init = _BeamState(
        jnp.zeros((), jnp.int32), jnp.zeros((batch, k, length), jnp.int32),
        jnp.broadcast_to(first, (batch, k)), jnp.zeros((batch, k, length), jnp.int32),
        jnp.full((batch, k), NEG_INF, jnp.float32), _expand_rows(cache, k))
    s = lax.while_loop(cond, body, init)

    none_finished = s.finished_scores[:, 0] <= NEG_INF / 2  # [batch]
    alive_scores = s.alive_log_probs / brevity_penalty(alpha, length)
    sequences = jnp.where(none_finished[:, None, None], s.alive_seqs, s.finished_seqs)
    scores = jnp.where(none_finished[:, None], alive_scores, s.finished_scores)
    return DecodeOutput(sequences, scores, s.step, s.cache)


# --------------------------------------------------------------- options


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
    """Decoding options, named as Hugging Face ``generate`` names them.

    - ``max_new_tokens``: tokens to generate, EOS included (None: the targets
      length of the task).
    - ``do_sample``: sample (True) or take the most likely token / beams (False).
    - ``num_beams``: 1 greedy (or sampling), more: beam search with that many beams.
    - ``temperature``, ``top_k``, ``top_p``: sampling only, applied in that
      order (``filter_logits``); ``top_k=0`` keeps every token (transformers'
      default is 50), ``top_p=1.0`` the whole distribution.

    Two options of this project have no ``generate`` counterpart: ``alpha``,
    beam search's T5 brevity penalty ((5 + length) / 6) ** alpha (not
    transformers' ``length_penalty``, which divides by length ** penalty), and
    ``seed``, the sampling seed (the same seed and batch size give the same
    sequences).

    ``method`` ('greedy' | 'sample' | 'beam', the model's own name for the
    decoding kind, ``EncoderDecoderModel.predict_batch``) is accepted as an alias
    of ``do_sample`` and ``num_beams`` ('beam' alone: 4 beams).
    """

    max_new_tokens: int | None = None
    do_sample: bool = False
    num_beams: int = 1
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    alpha: float = 0.6
    seed: int = 0

    @property
    def method(self) -> str:
        """'greedy', 'sample' or 'beam'."""
        return "sample" if self.do_sample else "beam" if self.num_beams > 1 else "greedy"

    @classmethod
    def from_options(cls, options: "Mapping[str, Any] | GenerateConfig | None" = None, *,
                     where: str = "decode options", prefix: str = "") -> "GenerateConfig":
        """Checked options; a ``UserError`` naming the option (``prefix`` + name,
        e.g. ``--top_p`` for flags), ``where`` it was given, and what is
        accepted, for an unknown option, a value of the wrong type or out of range."""
        if isinstance(options, GenerateConfig):
            return options
        options = dict(options or {})
        known = [f.name for f in dataclasses.fields(cls)]
        for key in options:
            if key not in known and key != "method":
                close = difflib.get_close_matches(str(key), known + ["method"], n=1)
                raise UserError(f"unknown decoding option {prefix}{key}"
                                + (f" (did you mean {prefix}{close[0]}?)" if close else ""),
                                where=where, expected="one of " + ", ".join(
                                    prefix + k for k in known))
        _apply_method_alias(options, where, prefix)
        values = {k: _checked(k, v, where, prefix) for k, v in options.items()}
        config = cls(**values)
        config._check_combination(set(values), where, prefix)
        return config

    def _check_combination(self, given: set[str], where: str, prefix: str) -> None:
        if self.do_sample and self.num_beams > 1:
            raise UserError(f"{prefix}do_sample with {prefix}num_beams={self.num_beams} "
                            "(beam sampling) is not supported", where=where,
                            expected=f"{prefix}do_sample or {prefix}num_beams > 1, not both")
        if not self.do_sample:
            changed = [k for k in ("temperature", "top_k", "top_p")
                       if k in given and getattr(self, k) != _DEFAULTS[k]]
            if changed:
                raise UserError(f"{prefix}{changed[0]}={getattr(self, changed[0])} only "
                                "applies when sampling", where=where,
                                expected=f"{prefix}do_sample as well, or no {prefix}{changed[0]}")


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(GenerateConfig)}

# option: (types accepted, check, what is expected)
_RULES: dict[str, tuple[tuple[type, ...], Callable[[Any], bool], str]] = {
    "max_new_tokens": ((int, type(None)), lambda v: v is None or v >= 1,
                       "a positive integer (or None: the targets length)"),
    "do_sample": ((bool,), lambda v: True, "True or False"),
    "num_beams": ((int,), lambda v: v >= 1, "an integer >= 1"),
    "temperature": ((int, float), lambda v: v > 0, "a number > 0"),
    "top_k": ((int,), lambda v: v >= 0, "an integer >= 0 (0: no top-k filtering)"),
    "top_p": ((int, float), lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "alpha": ((int, float), lambda v: v >= 0, "a number >= 0"),
    "seed": ((int,), lambda v: True, "an integer"),
}


def _checked(key: str, value: Any, where: str, prefix: str) -> Any:
    types, ok, expected = _RULES[key]
    is_bool = isinstance(value, bool)
    if (is_bool and bool not in types) or not isinstance(value, types) or not ok(value):
        raise UserError(f"{prefix}{key}={value!r}", where=where, expected=expected)
    return float(value) if float in types and not is_bool else value


_METHODS = {"greedy": (False, 1), "sample": (True, 1), "beam": (False, 4)}


def _apply_method_alias(options: dict, where: str, prefix: str) -> None:
    """Replaces ``method`` by the ``do_sample`` / ``num_beams`` it means, in place."""
    if "method" not in options:
        return
    method = options.pop("method")
    if method not in _METHODS:
        raise UserError(f"{prefix}method={method!r}", where=where,
                        expected="'greedy', 'sample' or 'beam' (or do_sample / num_beams)")
    do_sample, beams = _METHODS[method]
    options.setdefault("do_sample", do_sample)
    if method == "beam":
        options.setdefault("num_beams", beams)
    given_beams = options.get("num_beams", 1)
    if options["do_sample"] != do_sample or (method == "beam") != (
            isinstance(given_beams, int) and given_beams > 1):
        raise UserError(f"{prefix}method={method!r} contradicts "
                        f"{prefix}do_sample={options['do_sample']!r}, "
                        f"{prefix}num_beams={given_beams!r}", where=where,
                        expected=f"{prefix}method alone, or {prefix}do_sample / {prefix}num_beams "
                        "alone")
