"""Sampler tests: each knob has a test that fails when the knob is ignored."""

import math

import numpy as np
import pytest

from rwkvcpp.sampling import Sampler, SamplingParams

V = 50


def _logits(seed=0, n=V):
    return np.random.default_rng(seed).normal(0.0, 2.0, n).astype(np.float32)


def _draws(params, logits, n=2000, observe=False):
    sampler = Sampler(params, logits.shape[0])
    out = []
    for _ in range(n):
        t = sampler.sample(logits)
        if observe:
            sampler.observe(t)
        out.append(t)
    return np.array(out)


def _freq(draws, n=V):
    return np.bincount(draws, minlength=n) / len(draws)


# -- greedy ---------------------------------------------------------------------


def test_temperature_zero_is_argmax():
    for seed in range(20):
        logits = _logits(seed)
        assert Sampler(SamplingParams(temperature=0), V).sample(logits) == int(np.argmax(logits))


def test_top_k_one_is_argmax_even_when_hot():
    for seed in range(20):
        logits = _logits(seed)
        params = SamplingParams(temperature=5.0, top_k=1, seed=seed)
        assert set(_draws(params, logits, 50)) == {int(np.argmax(logits))}


def test_default_sampling_is_not_greedy():
    # Guards the greedy tests: the same logits do give varied tokens otherwise.
    assert len(set(_draws(SamplingParams(seed=0), _logits(), 200))) > 5


# -- seeds ------------------------------------------------------------------------


def test_seed_repeats_and_differs():
    logits = _logits()
    a = _draws(SamplingParams(seed=42), logits, 100)
    b = _draws(SamplingParams(seed=42), logits, 100)
    c = _draws(SamplingParams(seed=43), logits, 100)
    assert (a == b).all()
    assert not (a == c).all()


# -- distribution shape -----------------------------------------------------------


def test_temperature_matches_softmax_and_sharpens():
    logits = np.array([2.0, 1.0, 0.0, -1.0])
    for t in (0.5, 1.0, 2.0):
        expected = np.exp(logits / t) / np.exp(logits / t).sum()
        got = Sampler(SamplingParams(temperature=t), 4).probabilities(logits)
        np.testing.assert_allclose(got, expected, rtol=1e-12)
    cold = _freq(_draws(SamplingParams(temperature=0.3, seed=1), logits, 3000), 4)
    hot = _freq(_draws(SamplingParams(temperature=3.0, seed=1), logits, 3000), 4)
    assert cold[0] > 0.9 > hot[0]


def test_top_k_limits_to_k_best():
    logits = _logits(3)
    best5 = set(np.argsort(logits)[-5:].tolist())
    draws = _draws(SamplingParams(top_k=5, temperature=3.0, seed=0), logits, 3000)
    assert set(draws.tolist()) == best5


def test_top_p_draws_only_from_nucleus():
    logits = np.log(np.array([0.5, 0.3, 0.1, 0.05, 0.05]))
    draws = _draws(SamplingParams(top_p=0.7, seed=0), logits, 3000)
    # 0.5 < 0.7 <= 0.5 + 0.3: the nucleus is tokens 0 and 1, renormalised.
    assert set(draws.tolist()) == {0, 1}
    assert abs(_freq(draws, 5)[0] - 0.5 / 0.8) < 0.04
    probs = Sampler(SamplingParams(top_p=0.0), 5).probabilities(logits)
    assert probs.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]


def test_top_p_on_large_vocab_matches_full_sort():
    # Exercises both the partial-sort shortcut and the full-sort fallback.
    rng = np.random.default_rng(5)
    for scale, top_p in ((8.0, 0.9), (0.01, 0.999), (0.01, 0.3)):
        logits = rng.normal(0, scale, 65536)
        probs = Sampler(SamplingParams(top_p=top_p), 65536).probabilities(logits)
        full = np.exp(logits - logits.max())
        full /= full.sum()
        order = np.argsort(-full)
        n_keep = int(np.searchsorted(np.cumsum(full[order]), top_p)) + 1
        assert set(np.flatnonzero(probs).tolist()) == set(order[:n_keep].tolist())


def test_min_p_excludes_unlikely_tokens():
    logits = np.log(np.array([0.4, 0.3, 0.15, 0.1, 0.05]))
    # min_p 0.3 -> threshold 0.12: tokens 3 and 4 go.
    draws = _draws(SamplingParams(min_p=0.3, seed=0), logits, 4000)
    assert set(draws.tolist()) == {0, 1, 2}
    assert set(_draws(SamplingParams(seed=0), logits, 4000).tolist()) == {0, 1, 2, 3, 4}


# -- bias and bans ----------------------------------------------------------------------


def test_banned_tokens_never_appear():
    logits = _logits(7)
    top3 = np.argsort(logits)[-3:].tolist()
    draws = _draws(SamplingParams(banned_tokens=top3, temperature=2.0, seed=0), logits, 5000)
    assert not set(draws.tolist()) & set(top3)
    assert Sampler(SamplingParams(temperature=0, banned_tokens=top3), V).sample(logits) not in top3


def test_all_banned_raises():
    logits = _logits()
    with pytest.raises(ValueError, match="banned"):
        Sampler(SamplingParams(banned_tokens=range(V)), V).sample(logits)
    with pytest.raises(ValueError, match="banned"):
        Sampler(SamplingParams(temperature=0), 3).sample(np.full(3, -np.inf))


def test_neg_inf_logits_are_never_drawn():
    logits = np.array([-np.inf, 0.0, -np.inf, 0.0])
    draws = _draws(SamplingParams(seed=0, top_p=0.9, min_p=0.1, top_k=3), logits, 500)
    assert set(draws.tolist()) == {1, 3}


def test_logit_bias_can_force_and_suppress():
    logits = _logits(2)
    worst = int(np.argmin(logits))
    assert set(_draws(SamplingParams(logit_bias={worst: 100.0}, seed=0), logits, 200)) == {worst}
    best = int(np.argmax(logits))
    assert Sampler(SamplingParams(temperature=0, logit_bias={best: -100}), V).sample(logits) != best
    # JSON-style string keys are accepted.
    assert SamplingParams(logit_bias={"5": 1.5}).logit_bias == {5: 1.5}


def test_caller_logits_are_not_modified():
    logits = _logits(4)
    before = logits.copy()
    sampler = Sampler(
        SamplingParams(
            temperature=0.7,
            top_k=10,
            top_p=0.8,
            min_p=0.05,
            presence_penalty=1.0,
            frequency_penalty=1.0,
            logit_bias={1: 3.0},
            banned_tokens=[2],
            seed=0,
        ),
        V,
    )
    for _ in range(20):
        sampler.observe(sampler.sample(logits))
    assert logits.dtype == np.float32
    np.testing.assert_array_equal(logits, before)


# -- repetition penalties ---------------------------------------------------------------


def test_presence_penalty_lowers_seen_tokens():
    logits = np.zeros(4)
    sampler = Sampler(SamplingParams(presence_penalty=1.0), 4)
    for t in (0, 0, 0, 1):
        sampler.observe(t)
    adjusted = sampler.adjusted_logits(logits)
    # Presence counts once however often the token appeared.
    assert adjusted.tolist() == [-1.0, -1.0, 0.0, 0.0]
    probs = sampler.probabilities(logits)
    assert probs[0] == probs[1] < probs[2] == probs[3]


def test_frequency_penalty_grows_with_count():
    logits = np.zeros(4)
    sampler = Sampler(SamplingParams(frequency_penalty=0.5), 4)
    for t in (0, 0, 0, 1):
        sampler.observe(t)
    assert sampler.adjusted_logits(logits).tolist() == [-1.5, -0.5, 0.0, 0.0]


def test_penalties_reduce_repetition_in_generation():
    # A flat distribution over 4 tokens: with a strong penalty, consecutive
    # draws of the same token become rare.
    logits = np.zeros(4)
    plain = _draws(SamplingParams(seed=0), logits, 2000, observe=True)
    penalised = _draws(SamplingParams(seed=0, frequency_penalty=2.0, penalty_decay=0.5), logits, 2000, observe=True)
    repeats = lambda d: np.mean(d[1:] == d[:-1])
    assert repeats(plain) > 0.2
    assert repeats(penalised) < 0.1


def test_penalty_decay_reduces_old_counts():
    logits = np.zeros(3)
    no_decay = Sampler(SamplingParams(frequency_penalty=1.0), 3)
    decay = Sampler(SamplingParams(frequency_penalty=1.0, penalty_decay=0.5), 3)
    for s in (no_decay, decay):
        s.observe(0)
        s.observe(1)
        s.observe(1)
    assert no_decay.adjusted_logits(logits).tolist() == [-1.0, -2.0, 0.0]
    # Token 0 was followed by two decays, the 1s by one and zero.
    assert decay.adjusted_logits(logits).tolist() == [-0.25, -1.5, 0.0]


def test_count_prompt():
    prompt = [0, 1, 1]
    off = Sampler(SamplingParams(frequency_penalty=1.0, presence_penalty=0.5), 3)
    off.observe_prompt(prompt)
    assert off.adjusted_logits(np.zeros(3)).tolist() == [0.0, 0.0, 0.0]
    on = Sampler(SamplingParams(frequency_penalty=1.0, presence_penalty=0.5, penalty_decay=0.5, count_prompt=True), 3)
    on.observe_prompt(prompt)
    # Same as observing the prompt tokens one by one.
    one_by_one = Sampler(on.params, 3)
    for t in prompt:
        one_by_one.observe(t)
    np.testing.assert_allclose(on.counts, one_by_one.counts)
    assert on.adjusted_logits(np.zeros(3)).tolist() == [-0.75, -2.0, 0.0]


# -- parameters ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": -0.1}, "top_p"),
        ({"top_p": math.nan}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"min_p": 2}, "min_p"),
        ({"presence_penalty": math.inf}, "presence_penalty"),
        ({"frequency_penalty": None}, "frequency_penalty"),
        ({"penalty_decay": 1.01}, "penalty_decay"),
        ({"count_prompt": "yes"}, "count_prompt"),
        ({"logit_bias": {-1: 1.0}}, "logit_bias"),
        ({"logit_bias": {1: math.inf}}, "logit_bias"),
        ({"logit_bias": [1, 2]}, "logit_bias"),
        ({"banned_tokens": [1, -2]}, "banned_tokens"),
        ({"stop_tokens": ["a"]}, "stop_tokens"),
        ({"stop": [""]}, "stop"),
        ({"stop": [1]}, "stop"),
        ({"seed": -1}, "seed"),
        ({"max_tokens": -1}, "max_tokens"),
    ],
)
def test_invalid_params_raise_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_range_is_named_in_error():
    with pytest.raises(ValueError, match=r"top_p must be a number in \[0, 1\]"):
        SamplingParams(top_p=2)


def test_ids_outside_vocab_raise():
    with pytest.raises(ValueError, match="banned_tokens"):
        Sampler(SamplingParams(banned_tokens=[V]), V)
    with pytest.raises(ValueError, match="logit_bias"):
        Sampler(SamplingParams(logit_bias={V + 5: 1.0}), V)
    with pytest.raises(ValueError, match="logits must be a vector of 50"):
        Sampler(SamplingParams(), V).sample(np.zeros(V + 1))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        Sampler(SamplingParams(), V).observe(-1)


def test_params_normalised():
    p = SamplingParams(stop="\n\n", banned_tokens=[3, 4], stop_tokens=0, temperature=1)
    assert p.stop == ("\n\n",)
    assert p.banned_tokens == (3, 4)
    assert p.stop_tokens == (0,)
    assert isinstance(p.temperature, float)
    assert Sampler(p, V).is_stop_token(0)


def test_tiny_temperature_does_not_overflow():
    logits = np.array([1000.0, 999.0, -1000.0])
    probs = Sampler(SamplingParams(temperature=1e-300), 3).probabilities(logits)
    assert probs.tolist() == [1.0, 0.0, 0.0]


def test_draw_follows_the_distribution_and_skips_zero_probabilities():
    """The two-level inverse-CDF draw: frequencies match the probabilities (vocabulary not a
    multiple of the block size), and a zero-probability token is never drawn, even at u -> 1."""
    from rwkvcpp.sampling import _draw

    rng = np.random.default_rng(5)
    probs = rng.random(1000) ** 4
    probs[::7] = 0.0
    probs /= probs.sum()
    counts = np.bincount([_draw(probs, rng.random()) for _ in range(100_000)], minlength=1000)
    assert counts[::7].sum() == 0
    assert np.abs(counts / 100_000 - probs).max() < 0.004
    for n in (256, 300, 50277, 65536):
        last = np.zeros(n)
        last[-1] = 1.0
        first = np.zeros(n)
        first[0] = 1.0
        for u in (0.0, 0.5, np.nextafter(1.0, 0.0)):
            assert _draw(last, u) == n - 1
            assert _draw(first, u) == 0
