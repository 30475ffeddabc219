"""Many generations at once (rwkvcpp.batch) against the same generations one at a time.

Each sequence of a pass gets the logits eval_sequence gives it alone (tests/test_batch.py), so a
batch must sample the same tokens, seed for seed, and end in the same states; what the batch adds
is bookkeeping (choices sharing a prompt, joining, leaving, stop conditions), tested here on the
built-in model (real text) and on a quantized random v6 model.
"""

from __future__ import annotations

import platform

import numpy as np
import pytest

from rwkvcpp import Model
from rwkvcpp.batch import BatchGenerator, generate_batch
from rwkvcpp.generate import Generator
from rwkvcpp.quantization import quantize
from rwkvcpp.sampling import SamplingParams

EXACT = platform.machine().lower() in ("x86_64", "amd64")

PROMPTS = [
    "The quick brown fox",
    "def main():\n",
    "A",
    "Once upon a time, in a land far away, there lived a king who",
]


def assert_same(got, want, what: str) -> None:
    if EXACT:
        assert np.array_equal(got, want), f"{what}: differs by {np.abs(np.asarray(got) - want).max():.3g}"
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=what)


def assert_same_result(got, want, what: str) -> None:
    assert (got.text, got.tokens, got.finish_reason, got.stop) == (want.text, want.tokens, want.finish_reason,
                                                                   want.stop), what
    assert (got.prompt_tokens, got.completion_tokens) == (want.prompt_tokens, want.completion_tokens), what
    assert_same(got.state, want.state, f"{what}: state")
    assert_same(got.logits, want.logits, f"{what}: logits")


class Passes:
    """Wraps a model and records each pass of the batch loop: (tokens per sequence, logits wanted)."""

    def __init__(self, model):
        self._model = model
        self.passes: list[list[tuple[int, bool]]] = []

    def __getattr__(self, name):
        return getattr(self._model, name)

    def _eval_rows(self, tokens, states, logits):
        self.passes.append([(len(t), out is not None) for t, out in zip(tokens, logits)])
        return self._model._eval_rows(tokens, states, logits)


@pytest.fixture(scope="module")
def model():
    return Model(threads=2)  # the built-in byte-level model


@pytest.fixture(scope="module")
def quantized(model_files, tmp_path_factory):
    path = tmp_path_factory.mktemp("batchgen") / "v6-Q5_1.bin"
    quantize(model_files["v6"].fp32, path, "Q5_1")
    return Model(path, threads=2)


def various_params() -> list[SamplingParams]:
    """One setting per prompt: seeded sampling, greedy, a stop string, penalties, top-k."""
    return [
        SamplingParams(max_tokens=24, seed=1, temperature=1.0),
        SamplingParams(max_tokens=12, temperature=0),
        SamplingParams(max_tokens=40, seed=7, temperature=0.8, top_p=0.9, stop=["\n", "e "]),
        SamplingParams(max_tokens=30, seed=3, presence_penalty=0.5, frequency_penalty=0.2, top_k=20),
    ]


def finished(events) -> dict:
    return {e.choice: e.chunk.result for e in events if e.chunk.result is not None}


@pytest.mark.parametrize("which", ["model", "quantized"])
def test_batch_equals_one_at_a_time(request, which):
    model = request.getfixturevalue(which)
    params = various_params()
    prompts = PROMPTS if which == "model" else [[(7 * i + j) % 256 for j in range(3 + 5 * i)] for i in range(4)]
    alone = [Generator(model).complete(p, sp) for p, sp in zip(prompts, params)]
    together = generate_batch(model, prompts, params)
    for i, (got, want) in enumerate(zip(together, alone)):
        assert_same_result(got, want, f"prompt {i}")
    if which == "model":
        assert {r.finish_reason for r in alone} == {"stop", "length"}, "the settings should end both ways"


def test_pass_bounds_join_and_leave(model):
    """max_batch and prompt_chunk cut the work into smaller passes; sequences that wait, join
    later or finish early leave the others' results alone."""
    params = various_params()
    alone = [Generator(model).complete(p, sp) for p, sp in zip(PROMPTS, params)]
    recorded = Passes(model)
    batch = BatchGenerator(recorded, max_batch=2, prompt_chunk=64)
    ids = [batch.add(p, sp)[0] for p, sp in zip(PROMPTS[:2], params[:2])]
    results = finished(batch.step())
    ids += [batch.add(p, sp)[0] for p, sp in zip(PROMPTS[2:], params[2:])]  # join after the first step
    results.update(finished(batch.run()))
    assert len(batch) == 0 and batch.choices == 0
    for i, choice in enumerate(ids):
        assert_same_result(results[choice], alone[i], f"prompt {i}")
    assert max(len(p) for p in recorded.passes) == 2
    assert any(len(p) == 2 for p in recorded.passes), "two sequences should have shared passes"


def test_prompt_read_in_pieces(model):
    """prompt_chunk bounds the prompt tokens of a pass; a prompt read in pieces gets no logits
    until its last piece, and generates the same text (states agree to float rounding)."""
    params = SamplingParams(max_tokens=16, temperature=0)
    want = Generator(model).complete(PROMPTS[3], params)
    recorded = Passes(model)
    batch = BatchGenerator(recorded, prompt_chunk=5)
    batch.add(PROMPTS[3], params)
    (got,) = finished(batch.run()).values()
    assert got.text == want.text
    np.testing.assert_allclose(got.state, want.state, rtol=1e-4, atol=1e-4)
    n = len(PROMPTS[3])
    pieces = [min(5, n - at) for at in range(0, n, 5)]
    prompt_passes = recorded.passes[:len(pieces)]
    assert prompt_passes == [[(k, i == len(pieces) - 1)] for i, k in enumerate(pieces)]
    assert all(p == [(1, True)] for p in recorded.passes[len(pieces):])


def test_prompt_pieces_do_not_depend_on_the_batch(model):
    """A prompt reads the same pieces (so ends in the same state, bit for bit) whatever else
    is being read, and prompts take turns: a short prompt added behind a long one is read
    before the long one is done."""
    params = SamplingParams(max_tokens=12, temperature=0)
    long_prompt, short_prompt = PROMPTS[3] * 2, PROMPTS[0]
    alone = {}
    for prompt in (long_prompt, short_prompt):
        batch = BatchGenerator(model, prompt_chunk=8)
        batch.add(prompt, params, checkpoint=lambda s: None)
        (alone[prompt],) = finished(batch.run()).values()
    recorded = Passes(model)
    batch = BatchGenerator(recorded, prompt_chunk=8)
    first = batch.add(long_prompt, params, checkpoint=lambda s: None)[0]
    batch.step()
    second = batch.add(short_prompt, params, checkpoint=lambda s: None)[0]
    results = finished(batch.run())
    assert_same_result(results[first], alone[long_prompt], "long prompt")
    assert_same_result(results[second], alone[short_prompt], "short prompt")
    assert all(sum(k for k, _ in p if k > 1) <= 8 for p in recorded.passes), "prompt_chunk bounds every pass"
    short_done = next(i for i, p in enumerate(recorded.passes) if (1, True) in p)
    assert short_done < len(long_prompt) // 8, "the short prompt waited for the long one to be read"


def test_choices_share_one_prompt_read(model):
    params = [SamplingParams(max_tokens=10, seed=s, temperature=1.0) for s in (11, 12, 13)]
    recorded = Passes(model)
    batch = BatchGenerator(recorded)
    ids = batch.add(PROMPTS[3], params)
    results = finished(batch.run())
    prompt_len = len(PROMPTS[3].encode())
    assert recorded.passes[0] == [(prompt_len, True)], "the prompt is read once, in one pass"
    assert all(n == 1 for p in recorded.passes[1:] for n, _ in p)
    assert max(len(p) for p in recorded.passes) == 3, "the three choices decode in shared passes"
    for choice, sp in zip(ids, params):
        assert_same_result(results[choice], Generator(model).complete(PROMPTS[3], sp), f"seed {sp.seed}")


def test_cancel_leaves_the_others(model):
    params = [SamplingParams(max_tokens=30, seed=s, temperature=1.0) for s in (1, 2, 3)]
    batch = BatchGenerator(model)
    ids = [batch.add(p, sp)[0] for p, sp in zip(PROMPTS, params)]
    seen = set()
    for _ in range(3):
        seen.update(e.choice for e in batch.step())
    assert seen == set(ids)
    batch.cancel([ids[1], 999])  # unknown ids are ignored
    rest = list(batch.run())
    assert ids[1] not in {e.choice for e in rest}
    results = finished(rest)
    for i in (0, 2):
        assert_same_result(results[ids[i]], Generator(model).complete(PROMPTS[i], params[i]), f"prompt {i}")


def test_checkpoint_and_settled_final_state(model):
    """checkpoint gets the state after the prompt but its last token; on_finished gets results
    whose last token was read within the batch's passes (no evaluation left for the caller)."""
    params = SamplingParams(max_tokens=8, seed=5, temperature=1.0)
    ids = list(PROMPTS[3].encode())
    checkpoints, settled = [], []
    recorded = Passes(model)
    batch = BatchGenerator(recorded)
    batch.add(ids, params, checkpoint=checkpoints.append, on_finished=settled.append)
    events = list(batch.run())
    prefix_state = model.eval_sequence(ids[:-1])[1]
    assert_same(checkpoints[0], prefix_state, "checkpoint state")
    (result,) = settled
    assert result is events[-1].chunk.result and result._unevaluated == []
    # Read as the batch read it: the prompt but its last token, then that token.
    want = Generator(model).complete(ids[-1:], params, prefix_state)
    assert (result.text, result.prompt_tokens) == (want.text, len(ids))
    assert_same(result.state, want.state, "settled state")
    assert_same(result.logits, want.logits, "settled logits")
    # The settling pass reads the last sampled token: one pass more than sampling needed.
    assert len(recorded.passes) == 2 + 8


def test_continue_from_state_and_logits(model):
    """An empty prompt with a result's state and logits continues exactly where it ended."""
    first = Generator(model).complete(PROMPTS[0], SamplingParams(max_tokens=6, temperature=0))
    params = SamplingParams(max_tokens=6, seed=2, temperature=1.0)
    want = Generator(model).complete("", params, first.state, logits=first.logits)
    (got,) = generate_batch(model, [""], params, first.state, logits=first.logits)
    assert_same_result(got, want, "continued")
    state_before = first.state.copy()
    generate_batch(model, [" and", " or"], params, first.state)
    assert np.array_equal(first.state, state_before), "the caller's state is not modified"


def test_model_methods_batch(model):
    params = dict(max_tokens=10, seed=4, temperature=1.0, top_p=0.9)
    texts = model.generate(PROMPTS[:3], **params)
    assert texts == [model.generate(p, **params) for p in PROMPTS[:3]]
    results = model.complete(PROMPTS[:2], **params)
    assert [r.text for r in results] == texts[:2]
    reply = model.create_completion(PROMPTS[0], n=3, max_tokens=8, seed=9)
    for i, choice in enumerate(reply["choices"]):
        single = model.create_completion(PROMPTS[0], max_tokens=8, seed=9 + i)["choices"][0]
        assert (choice["index"], choice["text"], choice["finish_reason"]) == (i, single["text"], single["finish_reason"])
    assert reply["usage"]["completion_tokens"] == sum(
        model.create_completion(PROMPTS[0], max_tokens=8, seed=9 + i)["usage"]["completion_tokens"] for i in range(3))


def test_streamed_choices_interleave_and_join(model):
    chunks = list(model.create_completion([PROMPTS[0], PROMPTS[1]], n=2, max_tokens=6, seed=1, stream=True))
    whole = model.create_completion([PROMPTS[0], PROMPTS[1]], n=2, max_tokens=6, seed=1)
    joined = {}
    for chunk in chunks:
        for c in chunk["choices"]:
            joined[c["index"]] = joined.get(c["index"], "") + c["text"]
    assert joined == {c["index"]: c["text"] for c in whole["choices"]}
    first_indexes = [c["choices"][0]["index"] for c in chunks[:4]]
    assert len(set(first_indexes)) > 1, "the four choices stream side by side"


def test_bad_arguments(model):
    with pytest.raises(ValueError, match="max_batch must be a positive integer"):
        BatchGenerator(model, max_batch=0)
    with pytest.raises(ValueError, match="prompt_chunk must be a positive integer"):
        BatchGenerator(model, prompt_chunk=True)
    batch = BatchGenerator(model)
    with pytest.raises(ValueError, match="params is an empty list"):
        batch.add("x", [])
    with pytest.raises(TypeError, match="SamplingParams or a list"):
        batch.add("x", [{"temperature": 0}])
    with pytest.raises(ValueError, match="the prompt is empty"):
        batch.add("", SamplingParams())
    with pytest.raises(ValueError, match=r"logits must have shape \(256,\)"):
        batch.add("", SamplingParams(), logits=np.zeros(3))
    with pytest.raises(ValueError, match="2 SamplingParams for 3 prompts"):
        generate_batch(model, ["a", "b", "c"], [SamplingParams()] * 2)
    assert len(batch) == 0, "nothing was added by the failed calls"


def test_embed_many_inputs_reads_them_together(model):
    texts = [f"sentence number {i}" + "!" * (i % 5) for i in range(20)]  # more than one group
    calls = []
    original = model.eval_embedding_batch

    def counting(tokens, *args, **kw):
        calls.append(len(tokens))
        return original(tokens, *args, **kw)

    model.eval_embedding_batch = counting
    try:
        vectors = model.embed(texts)
    finally:
        del model.eval_embedding_batch
    assert calls == [16, 4]
    for i, text in enumerate(texts):
        assert_same(vectors[i], model.eval_embedding(model.tokenize(text))[0], f"text {i}")
