"""Several sequences in one pass (Model.eval_batch, rwkv_eval_batch) against each sequence alone.

A sequence's rows take the same kernels whatever else is in the pass (the row kernels when it has
at most RWKV_ROW_KERNEL_TOKENS new tokens, sequence mode otherwise; the head's row of a last token
the row kernels), every kernel gives a row the same result wherever it sits, and the row kernels
give each activation row exactly the single-row dot's result (tests/test_kernels.py). So on x86-64
batched results equal unbatched ones to the last bit, for every architecture and block format,
for decoding and prompts, across pass boundaries. Elsewhere (NEON's micro-GEMM handles a chunk's
edge rows apart) a long sequence split into other passes may differ by float rounding: there the
comparison has a tolerance.
"""

from __future__ import annotations

import platform

import numpy as np
import pytest

from rwkvcpp import _core
from rwkvcpp.model import ArgumentError, Model
from rwkvcpp.quantization import quantize

from support.checkpoints import ARCHES

FORMATS = ["FP32", "FP16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]
EXACT = platform.machine().lower() in ("x86_64", "amd64")
CHUNK = 256  # rows of a pass (eval.c RWKV_CHUNK)


def assert_same(got, want, what: str) -> None:
    got, want = np.asarray(got), np.asarray(want)
    if EXACT:
        assert np.array_equal(got, want), f"{what}: differs by {np.abs(got - want).max():.3g}"
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=what)


@pytest.fixture(scope="module")
def batch_files(model_files, tmp_path_factory):
    """{(arch, format): file} for every architecture's test model in every block format."""
    directory = tmp_path_factory.mktemp("batch")
    files = {}
    for arch in ARCHES:
        files[arch, "FP32"] = model_files[arch].fp32
        files[arch, "FP16"] = model_files[arch].fp16
        for name in FORMATS[2:]:
            files[arch, name] = directory / f"{arch.replace('.', '_')}-{name}.bin"
            quantize(model_files[arch].fp32, files[arch, name], name)
    return files


def random_tokens(seed: int, n: int, n_vocab: int = 256) -> list[int]:
    return np.random.default_rng(seed).integers(0, n_vocab, n).tolist()


def started_states(model: Model, n: int) -> list:
    """n different states to start from: the initial one (None) and states after short prompts."""
    return [None] + [model.eval_sequence(random_tokens(100 + i, 3 + i))[1] for i in range(n - 1)]


# Decoding (1), short prompts (2, 5), prompts on both sides of the row kernels' limit (8, 9) and
# of the 32 rows the issue names (32, 33), and one longer than a pass (300).
LENGTHS = [1, 5, 300, 1, 2, 8, 9, 16, 32, 33]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("arch", ARCHES)
def test_batch_equals_one_by_one(batch_files, arch, fmt):
    model = Model(batch_files[arch, fmt], threads=2)
    tokens = [random_tokens(i, n) for i, n in enumerate(LENGTHS)]
    starts = started_states(model, len(tokens))
    logits, states = model.eval_batch(tokens, starts)
    all_logits, all_states = model.eval_batch(tokens, starts, all_logits=True)
    for i, (toks, start) in enumerate(zip(tokens, starts)):
        want_all, want_state = model.eval_sequence(toks, start, all_logits=True)
        want_last, _ = model.eval_sequence(toks, start)
        assert_same(logits[i], want_last, f"{arch} {fmt} sequence {i} ({len(toks)} tokens): last logits")
        assert_same(states[i], want_state, f"{arch} {fmt} sequence {i}: state")
        assert_same(all_logits[i], want_all, f"{arch} {fmt} sequence {i}: all logits")
        assert_same(all_states[i], want_state, f"{arch} {fmt} sequence {i}: state (all logits)")


@pytest.mark.parametrize("fmt", ["FP16", "Q5_1", "Q8_0"])
@pytest.mark.parametrize("arch", ARCHES)
def test_decoding_batches_equal_decoding_alone(batch_files, arch, fmt):
    """Eight sequences decoded together step after step: each follows its own decoding exactly."""
    model = Model(batch_files[arch, fmt], threads=2)
    B, steps = 8, 6
    prompts = [random_tokens(200 + i, 1 + i) for i in range(B)]
    _, states = model.eval_batch(prompts)
    alone = [model.eval_sequence(p)[1] for p in prompts]
    for step in range(steps):
        next_tokens = random_tokens(300 + step, B)
        logits, states = model.eval_batch(next_tokens, states, states_out=states)
        for i in range(B):
            want, alone[i] = model.eval(next_tokens[i], alone[i])
            assert_same(logits[i], want, f"{arch} {fmt} step {step} sequence {i}: logits")
            assert_same(states[i], alone[i], f"{arch} {fmt} step {step} sequence {i}: state")


@pytest.mark.parametrize("arch", ARCHES)
def test_sequences_join_and_leave(batch_files, arch):
    """A server's steps: prompts join while others decode, finished sequences leave, a long prompt
    crosses a pass; each sequence's logits and state follow its own evaluation in the same pieces."""
    model = Model(batch_files[arch, "Q8_0"], threads=2)
    steps = [  # {name: new tokens} per step
        {"a": random_tokens(1, 20), "b": random_tokens(2, 3)},
        {"a": [7], "b": [8], "c": random_tokens(3, 7)},
        {"a": [9], "c": [10], "d": random_tokens(4, 300)},
        {"c": [11], "d": [12], "e": random_tokens(5, 1)},
        {"a": [13], "d": [14], "e": [15], "b": [16]},
    ]
    batched, alone = {}, {}
    for n, step in enumerate(steps):
        names = list(step)
        logits, states = model.eval_batch([step[k] for k in names], [batched.get(k) for k in names])
        for i, k in enumerate(names):
            batched[k] = states[i]
            want, alone[k] = model.eval_sequence(step[k], alone.get(k))
            assert_same(logits[i], want, f"{arch} step {n} sequence {k}: logits")
            assert_same(batched[k], alone[k], f"{arch} step {n} sequence {k}: state")


@pytest.mark.parametrize("fmt", ["FP32", "Q4_0"])
@pytest.mark.parametrize("arch", ARCHES)
def test_one_sequence_equals_eval_sequence(batch_files, arch, fmt):
    model = Model(batch_files[arch, fmt], threads=2)
    start = model.eval_sequence(random_tokens(9, 4))[1]
    for n in (1, 2, 8, 9, 17, 300, 2 * CHUNK + 3):
        toks = random_tokens(n, n)
        logits, states = model.eval_batch([toks], [start])
        want, want_state = model.eval_sequence(toks, start)
        assert_same(logits[0], want, f"{arch} {fmt} {n} tokens: logits")
        assert_same(states[0], want_state, f"{arch} {fmt} {n} tokens: state")
    logits, _ = model.eval_batch([5], [start])
    assert_same(logits[0], model.eval(5, start)[0], f"{arch} {fmt} one token: logits")


@pytest.mark.parametrize("arch", ["v5.2", "v7"])
def test_many_sequences_fill_several_passes(batch_files, arch):
    """More sequences than a pass has rows: 300 decoding sequences and some prompts."""
    model = Model(batch_files[arch, "Q5_0"], threads=2)
    tokens = random_tokens(7, 300) + [random_tokens(8, 40), random_tokens(9, 3)]
    logits, states = model.eval_batch(tokens)
    for i in (0, 1, 255, 256, 299, 300, 301):
        want, want_state = model.eval_sequence(tokens[i])
        assert_same(logits[i], want, f"{arch} sequence {i}: logits")
        assert_same(states[i], want_state, f"{arch} sequence {i}: state")


@pytest.mark.parametrize("arch", ["v4", "v7"])
def test_states_in_place_and_inputs_untouched(batch_files, arch):
    model = Model(batch_files[arch, "FP16"], threads=2)
    tokens = [[1, 2, 3], [4], random_tokens(5, 40)]
    starts = np.stack([model.eval_sequence(random_tokens(i, 5))[1] for i in range(3)])
    before = starts.copy()
    logits, new = model.eval_batch(tokens, starts)
    assert np.array_equal(starts, before), "the input states changed"
    assert new is not starts and new.shape == starts.shape

    # the same array in and out: updated in place, the same results
    in_place = starts.copy()
    logits2, out = model.eval_batch(tokens, in_place, states_out=in_place)
    assert out is in_place
    assert np.array_equal(in_place, new) and np.array_equal(logits2, logits)

    # a list of each sequence's own state, updated in place
    own = [s.copy() for s in before]
    logits3, out = model.eval_batch(tokens, own, states_out=own)
    assert out is own
    for i in range(3):
        assert np.array_equal(own[i], new[i])
    assert np.array_equal(logits3, logits)

    # into other buffers, the inputs left alone
    inputs = [s.copy() for s in before]
    outs = [np.empty(model.state_len, np.float32) for _ in range(3)]
    model.eval_batch(tokens, inputs, states_out=outs)
    for i in range(3):
        assert np.array_equal(outs[i], new[i]) and np.array_equal(inputs[i], before[i])


@pytest.mark.parametrize("arch", ["v5.1"])
def test_one_state_forks_into_several_sequences(batch_files, arch):
    """n choices of one prompt: the prompt's state given for every sequence, read, not copied first."""
    model = Model(batch_files[arch, "Q4_1"], threads=2)
    _, prompt_state = model.eval_sequence(random_tokens(1, 12))
    kept = prompt_state.copy()
    logits, states = model.eval_batch([3, 4, 5], [prompt_state] * 3)
    assert np.array_equal(prompt_state, kept)
    for i, token in enumerate((3, 4, 5)):
        want, want_state = model.eval(token, prompt_state)
        assert_same(logits[i], want, f"fork {i}: logits")
        assert_same(states[i], want_state, f"fork {i}: state")


@pytest.mark.parametrize("arch", ["v6"])
def test_embeddings_of_many_sequences(batch_files, arch):
    model = Model(batch_files[arch, "Q8_0"], threads=2)
    tokens = [random_tokens(i, n) for i, n in enumerate((1, 9, 60))]
    for normalize in (True, False):
        vectors, states = model.eval_embedding_batch(tokens, normalize=normalize)
        assert vectors.shape == (3, model.n_embed)
        for i, toks in enumerate(tokens):
            want, want_state = model.eval_embedding(toks, normalize=normalize)
            assert_same(vectors[i], want, f"embedding {i}")
            assert_same(states[i], want_state, f"state {i}")


@pytest.mark.parametrize("arch", ["v7"])
def test_errors_name_the_sequence(batch_files, arch):
    model = Model(batch_files[arch, "FP32"], threads=1)
    V, S = model.n_vocab, model.state_len
    with pytest.raises(ArgumentError, match=r"sequence 3: token 999 at position 1 is out of range"):
        model.eval_batch([[1], [2], [3], [4, 999, 5]])
    with pytest.raises(ArgumentError, match=r"sequence 1: tokens is empty"):
        model.eval_batch([[1], []])
    with pytest.raises(ArgumentError, match=r"no sequences"):
        model.eval_batch([])
    with pytest.raises(TypeError, match=r"tokens_per_sequence"):
        model.eval_batch("abc")
    with pytest.raises(ArgumentError, match=r"states\[1\] has shape \(5,\)"):
        model.eval_batch([[1], [2]], [None, np.zeros(5, np.float32)])
    with pytest.raises(ArgumentError, match=r"states has 1 entries for 2 sequences"):
        model.eval_batch([[1], [2]], [None])
    with pytest.raises(ArgumentError, match=rf"\(2, {S}\)"):
        model.eval_batch([[1], [2]], np.zeros((3, S), np.float32))
    with pytest.raises(ArgumentError, match=r"states_out\[0\] must be a writable"):
        frozen = np.zeros(S, np.float32)
        frozen.flags.writeable = False
        model.eval_batch([[1], [2]], states_out=[frozen, np.zeros(S, np.float32)])
    shared = np.zeros(S, np.float32)
    with pytest.raises(ArgumentError, match=r"sequence 0: its state_out overlaps the state out of sequence 1"):
        model.eval_batch([[1], [2]], states_out=[shared, shared])
    before = model.init_state()
    states = [model.init_state(), before.copy()]
    with pytest.raises(ArgumentError, match=r"sequence 0: its state_out overlaps the state in of sequence 1"):
        model.eval_batch([[1], [2]], states, states_out=[states[1], states[0]])
    assert np.array_equal(states[0], before) and np.array_equal(states[1], before), "a refused call wrote"

    # the engine's own check, for callers that bypass Model's
    tokens = [np.array(t, np.int32) for t in ([1], [2], [3], [4, V + 3])]
    outs = [np.zeros(S, np.float32) for _ in tokens]
    with pytest.raises(_core.ArgumentError, match=rf"sequence 3: token {V + 3} at position 1 is out of range \[0, {V}\)"):
        model._engine.eval_batch(tokens, [None] * 4, outs, [None] * 4, [None] * 4, False)
    with pytest.raises(_core.ArgumentError, match=r"sequence 2: logits buffer has 3 floats"):
        model._engine.eval_batch(tokens[:3], [None] * 3, outs[:3], [None, None, np.zeros(3, np.float32)], [None] * 3,
                                 False)


def test_bench_batches(capsys):
    """`rwkvcpp bench --batch`: a line per batch size with aggregate tokens/s and ms/token."""
    from rwkvcpp.benchmark import run_batch_benchmark
    from rwkvcpp.cli import main

    results = run_batch_benchmark(Model(None, threads=1), [1, 3], steps=2)
    assert [(r.batch, r.steps) for r in results] == [(1, 2), (3, 2)]
    assert all(r.ms_per_token > 0 and r.tokens_per_second == pytest.approx(r.batch * 1000 / r.ms_per_step)
               for r in results)
    with pytest.raises(SystemExit):
        main(["bench", "model.bin", "--batch", "1,0"])
    assert "batch sizes must be at least 1" in capsys.readouterr().err
