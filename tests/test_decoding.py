"""Decoding functions with fake tokens_to_logits callbacks (no model)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from explistops_jax import decoding

EOS = 1
VOCAB = 8


def _script_callback(script):
    """Row r emits script[r][step] (then EOS); the cache counts the calls.

    cache = {"calls": int32 scalar (shared), "step": [batch] int32}.
    """
    table = np.full((len(script), 32), EOS, np.int32)
    for r, row in enumerate(script):
        table[r, : len(row)] = row
    table = jnp.asarray(table)

    def tokens_to_logits(ids, cache):
        step = cache["step"]
        want = table[jnp.arange(ids.shape[0]), step]  # [rows]
        logits = jax.nn.one_hot(want, VOCAB) * 10.0  # [rows, vocab]
        return logits, {"calls": cache["calls"] + 1, "step": step + 1}

    cache = {"calls": jnp.zeros((), jnp.int32),
             "step": jnp.zeros((len(script),), jnp.int32)}
    return tokens_to_logits, cache


def _markov_callback(transitions):
    """Next-token probabilities depend on the previous token only:
    transitions[prev] = probabilities over the vocabulary."""
    log_table = jnp.log(jnp.asarray(transitions, jnp.float32) + 1e-12)

    def tokens_to_logits(ids, cache):
        return log_table[ids[:, 0]], {"calls": cache["calls"] + 1}

    return tokens_to_logits, {"calls": jnp.zeros((), jnp.int32)}


# Start (prev 0): A (2) 0.6, B (3) 0.4. After A: EOS 0.3, A 0.35, B 0.35 (greedy
# keeps going). After B: EOS 1.0. Best finished sequence: [B, EOS] (0.4).
_A, _B = 2, 3
_TRAP = np.zeros((VOCAB, VOCAB))
_TRAP[0, [_A, _B]] = [0.6, 0.4]
_TRAP[_A, [EOS, _A, _B]] = [0.3, 0.35, 0.35]
_TRAP[_B, EOS] = 1.0
_TRAP[EOS, EOS] = 1.0
_TRAP[[4, 5, 6, 7], EOS] = 1.0


def test_greedy_follows_script_and_stops_early():
    fn, cache = _script_callback([[5, 6, 1], [7, 1]])
    out = decoding.greedy(jnp.zeros((2, 10), jnp.int32), cache, fn, eos_id=EOS)
    np.testing.assert_array_equal(out.sequences, [[5, 6, 1, 0, 0, 0, 0, 0, 0, 0],
                                                  [7, 1, 0, 0, 0, 0, 0, 0, 0, 0]])
    assert int(out.num_steps) == 3
    assert int(out.cache["calls"]) == 3  # the callback ran 3 times, not 10
    np.testing.assert_allclose(out.scores, [0.0, 0.0], atol=1e-3)


def test_greedy_without_early_stop_runs_full_length_same_output():
    fn, cache = _script_callback([[5, 6, 1], [7, 1]])
    inputs = jnp.zeros((2, 10), jnp.int32)
    early = decoding.greedy(inputs, cache, fn, eos_id=EOS)
    full = decoding.greedy(inputs, cache, fn, eos_id=EOS, early_stop=False)
    assert int(full.cache["calls"]) == 10
    np.testing.assert_array_equal(early.sequences, full.sequences)


def test_greedy_stops_at_length_without_eos():
    fn, cache = _script_callback([[5] * 32])
    out = decoding.greedy(jnp.zeros((1, 6), jnp.int32), cache, fn, eos_id=EOS)
    np.testing.assert_array_equal(out.sequences, [[5] * 6])
    assert int(out.num_steps) == 6


def test_greedy_picks_argmax():
    rng = np.random.RandomState(0)
    table = rng.randn(12, 3, VOCAB).astype(np.float32)
    table[:, :, EOS] = -100.0  # never stop
    table_j = jnp.asarray(table)

    def fn(ids, cache):
        return table_j[cache["t"]], {"t": cache["t"] + 1}

    out = decoding.greedy(jnp.zeros((3, 12), jnp.int32), {"t": jnp.zeros((), jnp.int32)},
                          fn, eos_id=EOS)
    np.testing.assert_array_equal(out.sequences, table.argmax(-1).T)
    logp = jax.nn.log_softmax(table_j, -1).max(-1).sum(0)
    np.testing.assert_allclose(out.scores, logp, rtol=1e-5)


def test_prompt_tokens_are_forced():
    fn, cache = _script_callback([[5, 6, 1]])
    inputs = jnp.asarray([[0, 7, 7, 0, 0, 0]])  # force positions 0 and 1 to 7
    out = decoding.greedy(inputs, cache, fn, eos_id=EOS)
    np.testing.assert_array_equal(out.sequences, [[7, 7, 1, 0, 0, 0]])


def test_greedy_is_jittable():
    fn, cache = _script_callback([[5, 6, 1], [7, 1]])
    jitted = jax.jit(functools.partial(decoding.greedy, tokens_to_logits=fn, eos_id=EOS))
    out = jitted(jnp.zeros((2, 10), jnp.int32), cache)
    assert int(out.num_steps) == 3


def test_beam_search_finds_what_greedy_misses():
    fn, cache = _markov_callback(_TRAP)
    inputs = jnp.zeros((1, 12), jnp.int32)
    greedy = decoding.greedy(inputs, cache, fn, eos_id=EOS)
    assert int(greedy.sequences[0, 0]) == _A  # greedy takes the 0.6 branch
    beam = decoding.beam_search(inputs, cache, fn, beam_size=2, alpha=0.0, eos_id=EOS)
    np.testing.assert_array_equal(beam.sequences[0, 0, :3], [_B, EOS, 0])
    np.testing.assert_array_equal(beam.sequences[0, 1, :4], [_A, _B, EOS, 0])
    np.testing.assert_allclose(beam.scores[0], np.log([0.4, 0.6 * 0.35]), rtol=1e-5)
    assert beam.sequences.shape == (1, 2, 12)
    # Stops once no live beam can beat the finished ones, long before 12 steps.
    assert int(beam.num_steps) == 3
    assert int(beam.cache["calls"]) == 3


def test_beam_search_length_penalty_prefers_longer():
    # [B, EOS] (p=0.4) wins without a penalty; a large alpha rewards the
    # longer A-paths enough to change the winner.
    fn, cache = _markov_callback(_TRAP)
    inputs = jnp.zeros((1, 6), jnp.int32)
    plain = decoding.beam_search(inputs, cache, fn, beam_size=3, alpha=0.0, eos_id=EOS)
    long = decoding.beam_search(inputs, cache, fn, beam_size=3, alpha=5.0, eos_id=EOS)
    length = lambda seq: int(np.sum(np.asarray(seq) > 0))
    assert length(plain.sequences[0, 0]) == 2
    assert length(long.sequences[0, 0]) > 2
    assert np.all(np.diff(np.asarray(long.scores[0])) <= 0)  # best first


def test_beam_search_batch_rows_are_independent_and_cache_reordered():
    # Per-row script in the cache: beam search must keep each row's cache rows.
    fn, cache = _script_callback([[5, 6, 1], [7, 1]])
    out = decoding.beam_search(jnp.zeros((2, 8), jnp.int32), cache, fn, beam_size=2,
                               eos_id=EOS)
    np.testing.assert_array_equal(out.sequences[:, 0, :4], [[5, 6, 1, 0], [7, 1, 0, 0]])
    assert out.cache["step"].shape == (4,)


def test_beam_search_without_finished_returns_alive():
    probs = np.full((VOCAB, VOCAB), 0.01)
    probs[:, 5] = 0.9
    probs[:, EOS] = 0.0  # EOS impossible
    fn, cache = _markov_callback(probs)
    out = decoding.beam_search(jnp.zeros((1, 4), jnp.int32), cache, fn, beam_size=2,
                               eos_id=EOS)
    np.testing.assert_array_equal(out.sequences[0, 0], [5, 5, 5, 5])
    assert int(out.num_steps) == 4
    np.testing.assert_allclose(out.scores[0, 0],
                               4 * np.log(0.9 / 0.96) / decoding.brevity_penalty(0.6, 4),
                               rtol=1e-4)


def test_sampling_near_zero_temperature_is_greedy():
    probs = np.random.RandomState(0).dirichlet(np.ones(VOCAB), size=VOCAB)  # no ties
    fn, cache = _markov_callback(probs)
    inputs = jnp.zeros((4, 10), jnp.int32)
    greedy = decoding.greedy(inputs, cache, fn, eos_id=EOS)
    for temperature in (0.0, 1e-4):
        cold = decoding.temperature_sample(inputs, cache, fn, jax.random.key(3),
                                           temperature=temperature, eos_id=EOS)
        np.testing.assert_array_equal(cold.sequences, greedy.sequences)
    top1 = decoding.temperature_sample(inputs, cache, fn, jax.random.key(3), top_k=1,
                                       eos_id=EOS)
    np.testing.assert_array_equal(top1.sequences, greedy.sequences)


def _uniform_callback():
    probs = np.ones((VOCAB, VOCAB))
    probs[:, [0, EOS]] = 0.0
    return _markov_callback(probs / probs.sum(-1, keepdims=True))


def test_sampling_is_deterministic_per_rng_and_varies_across_rngs():
    fn, cache = _uniform_callback()
    inputs = jnp.zeros((8, 16), jnp.int32)
    a = decoding.temperature_sample(inputs, cache, fn, jax.random.key(1), eos_id=EOS)
    b = decoding.temperature_sample(inputs, cache, fn, jax.random.key(1), eos_id=EOS)
    c = decoding.temperature_sample(inputs, cache, fn, jax.random.key(2), eos_id=EOS)
    np.testing.assert_array_equal(a.sequences, b.sequences)
    assert not np.array_equal(a.sequences, c.sequences)
    assert set(np.unique(a.sequences)) <= set(range(2, VOCAB))
    # Rows differ from each other too (not one shared draw per step).
    assert len({tuple(r) for r in np.asarray(a.sequences)}) > 1


def test_sampling_top_k_restricts_support():
    probs = np.zeros((VOCAB, VOCAB))
    probs[:, 2:] = [0.3, 0.25, 0.2, 0.1, 0.1, 0.05]
    fn, cache = _markov_callback(probs)
    out = decoding.temperature_sample(jnp.zeros((16, 20), jnp.int32), cache, fn,
                                      jax.random.key(0), top_k=2, eos_id=EOS)
    assert set(np.unique(out.sequences)) == {2, 3}


def test_sampling_stops_early_when_all_rows_end():
    fn, cache = _script_callback([[5, 1], [4, 4, 1]])
    out = decoding.temperature_sample(jnp.zeros((2, 10), jnp.int32), cache, fn,
                                      jax.random.key(0), eos_id=EOS)
    np.testing.assert_array_equal(out.sequences[:, :4], [[5, 1, 0, 0], [4, 4, 1, 0]])
    assert int(out.cache["calls"]) == 3


def test_negative_temperature_is_rejected():
    fn, cache = _uniform_callback()
    with pytest.raises(ValueError, match="temperature"):
        decoding.temperature_sample(jnp.zeros((1, 3), jnp.int32), cache, fn,
                                    jax.random.key(0), temperature=-1.0)


def test_brevity_penalty():
    np.testing.assert_allclose(decoding.brevity_penalty(0.6, 1), 1.0)
    np.testing.assert_allclose(decoding.brevity_penalty(1.0, 7), 2.0)
