"""Decoding functions with fake tokens_to_logits callbacks (no model)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from explistops_jax import decoding
from explistops_jax.errors import UserError

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


# --------------------------------------------------------------- top-p (nucleus) sampling


def _fixed_logits():
    """[5, 24] logits without ties whose cumulative masses keep away from every
    top_p tested (checked: > 1e-5, a hundred times float32's rounding of a sum of
    24 probabilities), so no cut depends on how either side rounds."""
    return np.random.RandomState(7).normal(0.0, 2.0, size=(5, 24)).astype(np.float32)


_WARPER_CASES = [  # (temperature, top_k, top_p)
    (1.0, 0, 0.9), (1.0, 0, 0.5), (1.0, 0, 0.05), (0.5, 0, 0.8), (2.0, 0, 0.8),
    (1.0, 5, 0.7), (0.7, 10, 0.95), (1.3, 3, 0.99), (1.0, 8, 1.0), (0.8, 0, 1.0),
]


def _reference_filter(logits, temperature, top_k, top_p):
    """transformers' warpers, in generate's order, with torch."""
    torch = pytest.importorskip("torch", reason="torch is needed for the reference")
    lp = pytest.importorskip("transformers.generation.logits_process",
                             reason="transformers is needed for the reference")
    scores = torch.tensor(logits)
    ids = torch.zeros((logits.shape[0], 1), dtype=torch.long)
    warpers = [lp.TemperatureLogitsWarper(temperature)]
    if top_k:
        warpers.append(lp.TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(lp.TopPLogitsWarper(top_p))
    for warper in warpers:
        scores = warper(ids, scores)
    return scores.numpy()


def _margin(logits, temperature, top_k, top_p):
    """Distance (float64) of every row's cumulative masses from top_p."""
    scaled = logits.astype(np.float64) / temperature
    if top_k:
        kth = np.sort(scaled, axis=-1)[:, -top_k][:, None]
        scaled = np.where(scaled < kth, -np.inf, scaled)
    probs = np.exp(scaled - scaled.max(-1, keepdims=True))
    probs = -np.sort(-probs / probs.sum(-1, keepdims=True), axis=-1)
    return np.abs(np.cumsum(probs, axis=-1) - top_p).min()


@pytest.mark.parametrize("temperature, top_k, top_p", _WARPER_CASES)
def test_filter_logits_matches_transformers_warpers(temperature, top_k, top_p):
    logits = _fixed_logits()  # no ties: the reference breaks them by sort order
    if top_p < 1.0:
        assert _margin(logits, temperature, top_k, top_p) > 1e-5  # the fixture is fair
    want = _reference_filter(logits, temperature, top_k, top_p)
    got = np.asarray(decoding.filter_logits(jnp.asarray(logits), temperature=temperature,
                                            top_k=top_k, top_p=top_p))
    removed = got <= decoding.NEG_INF / 2
    np.testing.assert_array_equal(removed, np.isneginf(want))
    np.testing.assert_allclose(got[~removed], want[~removed], rtol=1e-6)
    assert (~removed).sum(-1).min() >= 1


def test_top_p_keeps_the_token_that_crosses_the_threshold():
    probs = np.array([[0.3, 0.25, 0.2, 0.12, 0.08, 0.05]])  # masses before: 0 .3 .55 .75 .87 .95
    logits = jnp.asarray(np.log(probs), jnp.float32)
    kept = lambda p: (np.asarray(decoding.filter_logits(logits, top_p=p))
                      > decoding.NEG_INF / 2).sum()
    assert [kept(p) for p in (0.01, 0.29, 0.31, 0.54, 0.56, 0.74, 0.76, 0.9, 0.96, 1.0)] == \
        [1, 1, 2, 2, 3, 3, 4, 5, 6, 6]
    flat = jnp.zeros((1, 5))  # ties at the cut are all kept, as top_k keeps them
    assert (np.asarray(decoding.filter_logits(flat, top_p=0.5)) == 0.0).all()


def test_filter_logits_is_the_identity_without_filters():
    logits = jnp.asarray(_fixed_logits())
    for temperature in (1.0, 0.7):
        np.testing.assert_array_equal(
            decoding.filter_logits(logits, temperature=temperature, top_p=1.0),
            logits / temperature)


_NUCLEUS = [0.3, 0.25, 0.2, 0.1, 0.1, 0.05]  # tokens 2..7; top_p 0.6 keeps 2, 3, 4


def _nucleus_callback():
    probs = np.zeros((VOCAB, VOCAB))
    probs[:, 2:] = _NUCLEUS
    return _markov_callback(probs)


def test_sampling_with_top_p_draws_only_from_the_nucleus():
    fn, cache = _nucleus_callback()
    out = decoding.temperature_sample(jnp.zeros((32, 20), jnp.int32), cache, fn,
                                      jax.random.key(0), top_p=0.6, eos_id=EOS)
    tokens = np.asarray(out.sequences).ravel()
    assert set(np.unique(tokens)) == {2, 3, 4}
    # renormalised nucleus 0.4, 0.333, 0.267; 640 draws: a std of about 0.02
    freq = np.bincount(tokens, minlength=VOCAB)[2:5] / tokens.size
    np.testing.assert_allclose(freq, np.array(_NUCLEUS[:3]) / 0.75, atol=0.08)
    # composed with top_k (applied first): top_k=4 leaves 0.3 .25 .2 .1 -> 0.35 .29 .24 .12;
    # top_p 0.5 then keeps the first two
    both = decoding.temperature_sample(jnp.zeros((32, 20), jnp.int32), cache, fn,
                                       jax.random.key(0), top_k=4, top_p=0.5, eos_id=EOS)
    assert set(np.unique(both.sequences)) == {2, 3}


def test_top_p_one_is_plain_sampling_bit_for_bit():
    fn, cache = _nucleus_callback()
    inputs = jnp.zeros((8, 12), jnp.int32)
    for kwargs in ({}, {"temperature": 0.7}, {"temperature": 1.5, "top_k": 3}):
        plain = decoding.temperature_sample(inputs, cache, fn, jax.random.key(5),
                                            eos_id=EOS, **kwargs)
        nucleus = decoding.temperature_sample(inputs, cache, fn, jax.random.key(5),
                                              top_p=1.0, eos_id=EOS, **kwargs)
        np.testing.assert_array_equal(nucleus.sequences, plain.sequences)
        assert np.asarray(nucleus.scores).tobytes() == np.asarray(plain.scores).tobytes()


def test_top_p_sampling_is_deterministic_per_rng():
    fn, cache = _nucleus_callback()
    inputs = jnp.zeros((8, 12), jnp.int32)
    run = lambda seed: np.asarray(decoding.temperature_sample(
        inputs, cache, fn, jax.random.key(seed), top_p=0.9, temperature=0.8,
        eos_id=EOS).sequences)
    np.testing.assert_array_equal(run(3), run(3))
    assert not np.array_equal(run(3), run(4))


@pytest.mark.parametrize("kwargs, name", [({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"),
                                          ({"top_k": -1}, "top_k")])
def test_bad_sampling_arguments_are_rejected(kwargs, name):
    fn, cache = _uniform_callback()
    with pytest.raises(ValueError, match=name):
        decoding.temperature_sample(jnp.zeros((1, 3), jnp.int32), cache, fn,
                                    jax.random.key(0), **kwargs)


# --------------------------------------------------------------- options


def test_generate_config_defaults_and_methods():
    config = decoding.GenerateConfig.from_options(None)
    assert config == decoding.GenerateConfig() and config.method == "greedy"
    assert decoding.GenerateConfig.from_options({"num_beams": 3}).method == "beam"
    sample = decoding.GenerateConfig.from_options(
        {"do_sample": True, "temperature": 0.7, "top_k": 5, "top_p": 0.9, "seed": 2})
    assert sample.method == "sample" and sample.top_p == 0.9 and sample.temperature == 0.7
    assert isinstance(decoding.GenerateConfig.from_options({"do_sample": True,
                                                            "top_p": 1}).top_p, float)
    assert decoding.GenerateConfig.from_options(sample) is sample


def test_generate_config_reads_the_older_method_name():
    read = decoding.GenerateConfig.from_options
    assert read({"method": "greedy"}) == decoding.GenerateConfig()
    assert read({"method": "sample"}) == read({"do_sample": True})
    assert read({"method": "beam"}) == read({"num_beams": 4})
    assert read({"method": "beam", "num_beams": 2}) == read({"num_beams": 2})
    assert read({"method": "sample", "top_p": 0.8}).top_p == 0.8
    for contradiction in ({"method": "sample", "num_beams": 2},
                          {"method": "greedy", "do_sample": True},
                          {"method": "beam", "num_beams": 1}):
        with pytest.raises(UserError, match="contradicts"):
            read(contradiction)


@pytest.mark.parametrize("options, what, expected", [
    ({"nucleus": 0.9}, "unknown decoding option --nucleus", "--top_p"),
    ({"top_P": 0.9}, "did you mean --top_p", "--max_new_tokens"),
    ({"do_sample": True, "top_p": 0.0}, "--top_p=0.0", "(0, 1]"),
    ({"do_sample": True, "top_p": 1.01}, "--top_p=1.01", "(0, 1]"),
    ({"do_sample": True, "temperature": 0.0}, "--temperature=0.0", "> 0"),
    ({"do_sample": True, "temperature": -1}, "--temperature=-1", "> 0"),
    ({"num_beams": 0}, "--num_beams=0", ">= 1"),
    ({"num_beams": 2.5}, "--num_beams=2.5", "integer"),
    ({"top_k": True, "do_sample": True}, "--top_k=True", "integer"),
    ({"do_sample": "yes"}, "--do_sample='yes'", "True or False"),
    ({"max_new_tokens": 0}, "--max_new_tokens=0", "positive"),
    ({"top_p": 0.9}, "only applies when sampling", "--do_sample"),
    ({"num_beams": 2, "temperature": 0.5}, "only applies when sampling", "--do_sample"),
    ({"do_sample": True, "num_beams": 2}, "beam sampling", "not both"),
    ({"method": "nucleus"}, "--method='nucleus'", "'greedy', 'sample' or 'beam'"),
])
def test_generate_config_mistakes_say_what_where_and_expected(options, what, expected):
    with pytest.raises(UserError) as error:
        decoding.GenerateConfig.from_options(options, where="command line", prefix="--")
    assert what in error.value.what and error.value.where == "command line"
    assert expected in error.value.expected
    assert "\n" not in error.value.message
