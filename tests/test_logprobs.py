"""Log probabilities of sampled and prompt tokens (SamplingParams.logprobs, the OpenAI-shaped
``logprobs`` of completions and chat), checked against log-softmax computed here from the
model's own logits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rwkvcpp import Model
from rwkvcpp.generate import Generator
from rwkvcpp.sampling import Sampler, SamplingParams


def log_softmax(x, temperature=1.0):
    z = np.asarray(x, np.float64) / temperature
    z = z - z.max()
    return z - np.log(np.exp(z).sum())


@pytest.fixture(scope="module")
def model():
    return Model(threads=2)


def test_sampler_scores_what_it_draws():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(300).astype(np.float32) * 3
    for params in (SamplingParams(temperature=0.7, top_p=0.8, seed=5, logprobs=4),
                   SamplingParams(temperature=0, logprobs=0),
                   SamplingParams(temperature=1.3, presence_penalty=1.0, logit_bias={7: 2.0}, seed=2, logprobs=20)):
        plain, scored = Sampler(params, 300), Sampler(params, 300)
        for step in range(20):
            token = plain.sample(logits)
            got, entry = scored.sample_scored(logits, params.logprobs)
            assert got == token == entry.token, "the same draws as sample()"
            adjusted = plain.adjusted_logits(logits)  # bias and penalties, as the sampler sees them
            want = log_softmax(adjusted, params.temperature or 1.0)
            assert entry.logprob == pytest.approx(want[token], abs=1e-9)
            assert [t for t, _ in entry.top] == list(np.argsort(-want, kind="stable")[:params.logprobs])
            assert all(lp == pytest.approx(want[t], abs=1e-9) for t, lp in entry.top)
            for s in (plain, scored):
                s.observe(token)
    with pytest.raises(ValueError, match=r"logprobs must be None or an integer in 0..20"):
        SamplingParams(logprobs=21)


def test_generation_logprobs_follow_the_model(model):
    params = SamplingParams(max_tokens=12, temperature=0.6, seed=3, logprobs=2)
    result = Generator(model).complete("The quick brown", params)
    assert len(result.logprobs) == len(result.tokens)
    ids = model.tokenize("The quick brown")
    for k, (token, entry) in enumerate(zip(result.tokens, result.logprobs)):
        logits, _ = model.eval_sequence(ids + result.tokens[:k])
        want = log_softmax(logits, 0.6)
        assert entry.token == token and entry.logprob == pytest.approx(want[token], abs=1e-5)
        assert [t for t, _ in entry.top] == list(np.argsort(-want, kind="stable")[:2])
    assert Generator(model).complete("The quick brown", SamplingParams(max_tokens=3)).logprobs is None


def test_completion_logprobs_shape_and_stream(model):
    reply = model.create_completion("def ", max_tokens=10, temperature=0.8, seed=1, logprobs=3)
    (choice,) = reply["choices"]
    lp = choice["logprobs"]
    assert set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    assert "".join(lp["tokens"]) == choice["text"]
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:k]) for k in range(len(lp["tokens"]))]
    assert len(lp["token_logprobs"]) == reply["usage"]["completion_tokens"] - (choice["finish_reason"] == "stop")
    for token, value, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        assert len(top) == 3 and value <= 0 and max(top.values()) >= value - 1e-12
    streamed = list(model.create_completion("def ", max_tokens=10, temperature=0.8, seed=1, logprobs=3, stream=True))
    joined = [t for chunk in streamed for c in chunk["choices"] if c["logprobs"] for t in c["logprobs"]["token_logprobs"]]
    assert joined == lp["token_logprobs"]
    assert model.create_completion("def ", max_tokens=3)["choices"][0]["logprobs"] is None


def test_chat_logprobs_shape(model):
    reply = model.create_chat_completion([{"role": "user", "content": "Hi"}], max_tokens=8, seed=2,
                                         logprobs=True, top_logprobs=2)
    (choice,) = reply["choices"]
    content = choice["logprobs"]["content"]
    assert choice["logprobs"]["refusal"] is None and content
    for entry in content:
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        assert bytes(entry["bytes"]).decode("utf-8", errors="replace") == entry["token"]
        assert len(entry["top_logprobs"]) == 2 and set(entry["top_logprobs"][0]) == {"token", "logprob", "bytes"}
    text = b"".join(bytes(e["bytes"]) for e in content).decode()
    assert text.strip() == choice["message"]["content"].strip()
    streamed = model.create_chat_completion([{"role": "user", "content": "Hi"}], max_tokens=8, seed=2,
                                            logprobs=True, top_logprobs=2, stream=True)
    entries = [e for chunk in streamed for c in chunk["choices"] if c["logprobs"] for e in c["logprobs"]["content"]]
    assert entries == content
    with pytest.raises(ValueError, match="top_logprobs needs logprobs=True"):
        model.create_chat_completion([{"role": "user", "content": "Hi"}], top_logprobs=2)


def test_echo_scores_the_prompt(model):
    """echo + logprobs with max_tokens=0 scores a text, as evaluation harnesses ask servers to."""
    text = "The cat sat on the mat." * 6  # longer than one scoring chunk of 64 tokens
    reply = model.create_completion(text, max_tokens=0, echo=True, logprobs=1)
    (choice,) = reply["choices"]
    lp = choice["logprobs"]
    ids = model.tokenize(text)
    assert choice["text"] == text and "".join(lp["tokens"]) == text
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    logits, _ = model.eval_sequence(ids, all_logits=True)
    want = [log_softmax(row)[t] for row, t in zip(logits[:-1], ids[1:])]
    np.testing.assert_allclose(lp["token_logprobs"][1:], want, atol=1e-4)
    total = -sum(lp["token_logprobs"][1:])
    assert math.isfinite(total) and total > 0


def test_batched_choices_have_their_own_logprobs(model):
    reply = model.create_completion("x = ", n=3, max_tokens=6, temperature=1.0, seed=4, logprobs=1)
    for i, choice in enumerate(reply["choices"]):
        alone = model.create_completion("x = ", max_tokens=6, temperature=1.0, seed=4 + i, logprobs=1)["choices"][0]
        assert choice["logprobs"] == alone["logprobs"] and choice["text"] == alone["text"]
