"""The C engine (rwkvcpp.Model) against the float64 numpy reference, and its Python API contract.

Every architecture's random FP32 model (tests/conftest.py) must follow the reference to 1e-4 in
max abs logit difference, token by token and as a sequence; FP16 files must stay within 1e-2 of
FP32 ones. The rest checks what the API promises: chunked sequences, state continuation, the
caller's state left alone, output buffers, thread counts and concurrent use, sizes and state
layout (FORMAT.md "State"), embeddings, and clear errors for bad arguments.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import rwkvcpp
from rwkvcpp.model import ArgumentError, Model, RWKVError

from support.checkpoints import ARCHES, ffn_width

LOGIT_TOLERANCE = 1e-4  # engine (float32) vs reference (float64), FP32 file
STATE_TOLERANCE = 1e-4  # relative to max(1, largest |state value|)
FP16_TOLERANCE = 1e-2  # FP16 file vs FP32 file
THREADS_TOLERANCE = 1e-5  # threads=1 vs threads=2
CHUNK = 256  # tokens per chunk inside the engine (eval.c RWKV_CHUNK)

pytestmark = pytest.mark.parametrize("arch", ARCHES)

# The measured maximum differences, printed at the end with -v / -s (they go in reports).
MEASURED: dict[tuple[str, str], float] = {}


@pytest.fixture(scope="module", autouse=True)
def _print_measured():
    yield
    if MEASURED:
        print("\nengine max abs differences:")
        for (arch, what), value in sorted(MEASURED.items()):
            print(f"  {arch:5s} {what:28s} {value:.3g}")


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def state_diff(state, expected) -> float:
    """Max abs state difference relative to the state's scale (v4 aa/bb grow large)."""
    scale = max(1.0, float(np.max(np.abs(expected[np.abs(expected) < 1e29]))))
    return max_diff(state, expected) / scale


def serial(model: Model, tokens, state=None):
    """Logits (T, V) and final state from evaluating one token per call."""
    rows = []
    for token in tokens:
        logits, state = model.eval(token, state)
        rows.append(logits)
    return np.stack(rows), state


_MODELS: dict = {}


def load(path, threads=1) -> Model:
    """A cached Model: loading is cheap, but tests run many times over the same files.

    threads=1 by default: the machine's cores are shared, and results must not depend on it
    (test_threads_give_the_same_logits checks that).
    """
    key = (str(path), threads)
    if key not in _MODELS:
        _MODELS[key] = Model(path, threads=threads)
    return _MODELS[key]


# ------------------------------------------------------------------------ against the reference


def test_serial_matches_reference(arch, model_set, fixed_tokens, reference_runs):
    expected_logits, expected_state = reference_runs[arch]
    logits, state = serial(load(model_set.fp32), fixed_tokens)
    assert logits.shape == expected_logits.shape
    assert np.all(np.isfinite(logits))
    diff = max_diff(logits, expected_logits)
    MEASURED[(arch, "serial vs reference")] = diff
    assert diff <= LOGIT_TOLERANCE, f"{arch}: serial logits differ from the reference by {diff:.3g}"
    sdiff = state_diff(state, expected_state)
    assert sdiff <= STATE_TOLERANCE, f"{arch}: serial final state differs by {sdiff:.3g} (relative)"


def test_sequence_matches_reference(arch, model_set, fixed_tokens, reference_runs):
    expected_logits, expected_state = reference_runs[arch]
    model = load(model_set.fp32)
    logits, state = model.eval_sequence(fixed_tokens, all_logits=True)
    assert logits.shape == (len(fixed_tokens), model.n_vocab) and logits.dtype == np.float32
    diff = max_diff(logits, expected_logits)
    MEASURED[(arch, "sequence vs reference")] = diff
    assert diff <= LOGIT_TOLERANCE, f"{arch}: sequence logits differ from the reference by {diff:.3g}"
    sdiff = state_diff(state, expected_state)
    assert sdiff <= STATE_TOLERANCE, f"{arch}: sequence final state differs by {sdiff:.3g} (relative)"

    # Without all_logits: the last token's logits, and the same state.
    last, state2 = model.eval_sequence(fixed_tokens)
    assert last.shape == (model.n_vocab,)
    np.testing.assert_allclose(last, logits[-1], rtol=0, atol=1e-5)  # head by matvec vs by tiles: summation order differs
    np.testing.assert_allclose(state2, state, rtol=0, atol=1e-6)
    # ingest: the state only.
    np.testing.assert_allclose(model.ingest(fixed_tokens), state, rtol=0, atol=1e-6)


def test_long_sequence_crosses_chunks(arch, model_set):
    """~550 tokens: more than two of the engine's 256-token chunks, against serial evaluation."""
    n = 2 * CHUNK + 44
    tokens = [int(t) for t in np.random.default_rng(77).integers(0, model_set.n_vocab, n)]
    model = load(model_set.fp32)
    logits, state = model.eval_sequence(tokens, all_logits=True)
    expected_logits, expected_state = serial(model, tokens)
    assert logits.shape == (n, model.n_vocab)
    assert np.all(np.isfinite(logits))
    diff = max_diff(logits, expected_logits)
    MEASURED[(arch, f"{n} tokens seq vs serial")] = diff
    assert diff <= 1e-4, f"{arch}: {n}-token sequence differs from serial evaluation by {diff:.3g}"
    assert state_diff(state, expected_state) <= 1e-4
    # Exactly one chunk and one chunk plus one token, too.
    for m in (CHUNK, CHUNK + 1):
        chunk_logits, _ = model.eval_sequence(tokens[:m], all_logits=True)
        assert max_diff(chunk_logits, expected_logits[:m]) <= 1e-4, f"{arch}: {m} tokens"


def test_state_continuation(arch, model_set, fixed_tokens):
    model = load(model_set.fp32)
    a, b = fixed_tokens[:23], fixed_tokens[23:]
    whole, whole_state = model.eval_sequence(a + b, all_logits=True)
    _, after_a = model.eval_sequence(a)
    rest, rest_state = model.eval_sequence(b, after_a, all_logits=True)
    diff = max_diff(rest, whole[len(a):])
    MEASURED[(arch, "continuation")] = diff
    assert diff <= 1e-5, f"{arch}: continuing from a saved state differs by {diff:.3g}"
    assert state_diff(rest_state, whole_state) <= 1e-5
    # The same continuing token by token from the saved state.
    rest_serial, _ = serial(model, b, after_a)
    assert max_diff(rest_serial, whole[len(a):]) <= 1e-4


def test_fp16_file_close_to_fp32(arch, model_set, fixed_tokens):
    m32, m16 = load(model_set.fp32), load(model_set.fp16)
    assert m32.dtype == "FP32" and m16.dtype == "FP16"
    l32, s32 = m32.eval_sequence(fixed_tokens, all_logits=True)
    l16, s16 = m16.eval_sequence(fixed_tokens, all_logits=True)
    diff = max_diff(l16, l32)
    MEASURED[(arch, "FP16 vs FP32 file")] = diff
    assert diff <= FP16_TOLERANCE, f"{arch}: FP16 logits differ from FP32 by {diff:.3g}"
    assert state_diff(s16, s32) <= FP16_TOLERANCE
    # serial FP16 as well
    l16s, _ = serial(m16, fixed_tokens[:8])
    assert max_diff(l16s, l32[:8]) <= FP16_TOLERANCE


def test_fp16_file_matches_reference_with_fp16_weights(arch, tmp_path, fixed_tokens):
    """Weights that are not bf16-exact (so FP16 really rounds them): the FP16 file must follow the
    reference run on the checkpoint with those matrices rounded to FP16, as the file stores them."""
    from support.reference import Reference
    from rwkvcpp.writer import write_model

    from support.checkpoints import make_checkpoint

    # FORMAT.md: 2-D tensors are FP16 in an FP16 file except names containing these.
    fp32_fragments = (".time_", ".k_k", ".k_a", ".r_k", ".x_rwkvag", ".x_k", ".w0", ".a0", ".v0")
    rng = np.random.default_rng(3)
    checkpoint = {
        name: (value * (1 + 1e-2 * rng.standard_normal(value.shape))).astype(np.float32)
        for name, value in make_checkpoint(arch, seed=7).items()
    }
    as_stored = {
        name: value.astype(np.float16).astype(np.float32)
        if value.ndim == 2 and not any(f in name for f in fp32_fragments)
        else value
        for name, value in checkpoint.items()
    }
    path = tmp_path / "fp16.bin"
    write_model(path, checkpoint, dtype="FP16")
    tokens = fixed_tokens[:24]
    logits, _ = Model(path, threads=1).eval_sequence(tokens, all_logits=True)
    expected, _ = Reference(as_stored).eval_sequence(tokens)
    diff = max_diff(logits, expected)
    MEASURED[(arch, "FP16 vs fp16-rounded ref")] = diff
    assert diff <= LOGIT_TOLERANCE, f"{arch}: FP16 file differs from the fp16-rounded reference by {diff:.3g}"


# ------------------------------------------------------------------------------- API contract


def test_input_state_is_not_modified(arch, model_set, fixed_tokens):
    model = load(model_set.fp32)
    _, state = model.eval_sequence(fixed_tokens[:5])
    saved = state.copy()
    logits1, new1 = model.eval(fixed_tokens[5], state)
    np.testing.assert_array_equal(state, saved)
    assert new1 is not state
    logits2, new2 = model.eval_sequence(fixed_tokens[5:9], state, all_logits=True)
    np.testing.assert_array_equal(state, saved)
    model.ingest(fixed_tokens[5:9], state)
    model.eval_embedding(fixed_tokens[5:9], state)
    np.testing.assert_array_equal(state, saved)
    np.testing.assert_allclose(logits2[0], logits1, rtol=0, atol=1e-5)  # tiles vs matvec: summation order
    # A read-only state is fine as input.
    frozen = saved.copy()
    frozen.flags.writeable = False
    logits3, _ = model.eval(fixed_tokens[5], frozen)
    np.testing.assert_array_equal(logits3, logits1)


def test_state_out_and_logits_out(arch, model_set, fixed_tokens):
    model = load(model_set.fp32)
    token = fixed_tokens[0]
    expected_logits, expected_state = model.eval(token)

    # Into fresh buffers, from the default initial state.
    state_out = np.full(model.state_len, np.nan, dtype=np.float32)
    logits_out = np.full(model.n_vocab, np.nan, dtype=np.float32)
    logits, state = model.eval(token, state_out=state_out, logits_out=logits_out)
    assert logits is logits_out and state is state_out
    np.testing.assert_array_equal(logits_out, expected_logits)
    np.testing.assert_array_equal(state_out, expected_state)

    # In place: the state is both input and output, and is then updated.
    inplace = model.init_state()
    _, st = model.eval(token, inplace, state_out=inplace)
    assert st is inplace
    np.testing.assert_array_equal(inplace, expected_state)
    _, continued = model.eval(fixed_tokens[1], expected_state)
    model.eval(fixed_tokens[1], inplace, state_out=inplace)
    np.testing.assert_array_equal(inplace, continued)

    # From one state into another buffer: the input stays as it was.
    source = expected_state.copy()
    target = np.zeros(model.state_len, dtype=np.float32)
    model.eval(fixed_tokens[1], source, state_out=target)
    np.testing.assert_array_equal(source, expected_state)
    np.testing.assert_array_equal(target, continued)

    # all_logits into a (T, V) buffer.
    T = 6
    buf = np.empty((T, model.n_vocab), dtype=np.float32)
    out, _ = model.eval_sequence(fixed_tokens[:T], all_logits=True, logits_out=buf)
    assert out is buf
    ref, _ = model.eval_sequence(fixed_tokens[:T], all_logits=True)
    np.testing.assert_array_equal(buf, ref)

    # Wrong buffers are refused with a message naming them.
    with pytest.raises(ArgumentError, match="logits_out"):
        model.eval(token, logits_out=np.empty(model.n_vocab + 1, np.float32))
    with pytest.raises(ArgumentError, match="logits_out"):
        model.eval(token, logits_out=np.empty(model.n_vocab, np.float64))
    with pytest.raises(ArgumentError, match="logits_out"):
        model.eval_sequence(fixed_tokens[:T], all_logits=True, logits_out=np.empty(model.n_vocab, np.float32))
    with pytest.raises(ArgumentError, match="state_out"):
        model.eval(token, state_out=np.empty(model.state_len, np.float64))
    with pytest.raises(ArgumentError, match="state_out"):
        model.eval(token, state_out=np.empty(model.state_len + 1, np.float32))
    with pytest.raises(ArgumentError, match="state_out"):
        model.eval(token, state_out=np.empty(2 * model.state_len, np.float32)[::2])
    read_only = np.zeros(model.state_len, np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ArgumentError, match="state_out"):
        model.eval(token, state_out=read_only)


def test_threads_give_the_same_logits(arch, model_set, fixed_tokens):
    one, two = load(model_set.fp32, threads=1), load(model_set.fp32, threads=2)
    assert one.threads == 1 and two.threads == 2
    l1, s1 = one.eval_sequence(fixed_tokens, all_logits=True)
    l2, s2 = two.eval_sequence(fixed_tokens, all_logits=True)
    assert max_diff(l1, l2) <= THREADS_TOLERANCE
    assert state_diff(s1, s2) <= THREADS_TOLERANCE
    # The single-token path too.
    t1, _ = serial(one, fixed_tokens[:6])
    t2, _ = serial(two, fixed_tokens[:6])
    assert max_diff(t1, t2) <= THREADS_TOLERANCE


def test_one_model_many_python_threads(arch, model_set):
    """Several Python threads share one Model, each with its own state and tokens."""
    # threads=1: calls on one model are serialised anyway, and a 2-thread pool spinning on the
    # machine's 2 shared cores made this test 10x slower under load without testing more.
    model = load(model_set.fp16, threads=1)
    rng = np.random.default_rng(5)
    jobs = [[int(t) for t in rng.integers(0, model.n_vocab, 20 + 3 * j)] for j in range(4)]
    alone = []
    for tokens in jobs:
        seq, st = model.eval_sequence(tokens[:10], all_logits=True)
        ser, st = serial(model, tokens[10:], st)
        alone.append((seq, ser, st))

    results: dict[int, tuple] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(jobs))

    def work(j):
        try:
            barrier.wait(timeout=30)
            for _ in range(2):  # twice, to interleave more
                seq, st = model.eval_sequence(jobs[j][:10], all_logits=True)
                ser, st = serial(model, jobs[j][10:], st)
            results[j] = (seq, ser, st)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(j,)) for j in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a thread is stuck"
    assert not errors, errors
    for j, (seq, ser, st) in enumerate(alone):
        got_seq, got_ser, got_st = results[j]
        np.testing.assert_array_equal(got_seq, seq)
        np.testing.assert_array_equal(got_ser, ser)
        np.testing.assert_array_equal(got_st, st)


def test_sizes_and_dtype(arch, model_set):
    C, L, V = model_set.n_embed, model_set.n_layer, model_set.n_vocab
    for path, dtype in ((model_set.fp32, "FP32"), (model_set.fp16, "FP16")):
        model = load(path)
        assert model.arch == arch
        assert (model.n_vocab, model.n_embed, model.n_layer) == (V, C, L)
        assert model.dtype == dtype
        assert model.file_version == 101
        assert model.n_ffn == ffn_width(arch, C)
        # FORMAT.md "State": per layer ffn x (C), att x (C), then aa/bb/pp (v4) or H x 64 x 64.
        per_layer = 5 * C if arch == "v4" else 2 * C + (C // 64) * 64 * 64
        assert model.state_len == L * per_layer
        if arch == "v4":
            assert model.n_head == 0
        else:
            assert (model.n_head, model.head_size) == (C // 64, 64)
        assert model.threads == 1
        assert arch in repr(model) and dtype in repr(model)


def test_init_state_layout(arch, model_set):
    from support.reference import Reference

    model = load(model_set.fp32)
    C = model.n_embed
    state = model.init_state()
    assert state.dtype == np.float32 and state.shape == (model.state_len,)
    assert state.flags.c_contiguous and state.flags.writeable
    per_layer = model.state_len // model.n_layer
    for i in range(model.n_layer):
        layer = state[i * per_layer : (i + 1) * per_layer]
        assert np.all(layer[: 2 * C] == 0), "ffn x and att x start at zero"
        if arch == "v4":
            assert np.all(layer[2 * C : 4 * C] == 0), "aa, bb start at zero"
            assert np.all(layer[4 * C :] == np.float32(-1e30)), "pp starts at -1e30"
        else:
            assert np.all(layer[2 * C :] == 0), "the wkv matrices start at zero"
    np.testing.assert_array_equal(state, Reference(model_set.checkpoint).init_state().astype(np.float32))
    # A fresh array every time, and `state=None` means the initial state.
    assert model.init_state() is not state
    token = 3
    np.testing.assert_array_equal(model.eval(token)[0], model.eval(token, state)[0])


def test_embed_is_a_unit_vector(arch, model_set, fixed_tokens):
    model = load(model_set.fp32)
    tokens = fixed_tokens[:12]
    vec, state = model.eval_embedding(tokens)
    assert vec.shape == (model.n_embed,) and vec.dtype == np.float32
    assert abs(float(np.linalg.norm(vec)) - 1.0) < 1e-5
    logits, expected_state = model.eval_sequence(tokens)
    np.testing.assert_allclose(state, expected_state, rtol=0, atol=1e-6)
    # The unnormalized vector is the hidden state after ln_out: the head maps it to the logits.
    raw, _ = model.eval_embedding(tokens, normalize=False)
    np.testing.assert_allclose(raw / np.linalg.norm(raw), vec, rtol=0, atol=1e-6)
    head = model_set.checkpoint["head.weight"].astype(np.float64)
    assert max_diff(head @ raw, logits) <= 1e-4
    # From a state: continues like eval_sequence.
    _, mid = model.eval_sequence(tokens[:5])
    vec2, _ = model.eval_embedding(tokens[5:], mid)
    np.testing.assert_allclose(vec2, vec, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------ errors


def test_bad_token_ids(arch, model_set):
    model = load(model_set.fp32)
    V = model.n_vocab
    state = model.init_state()
    for bad in (V, V + 1000, -1, -(2**31)):
        with pytest.raises(ArgumentError, match=rf"{bad}.*(out of range|n_vocab)"):
            model.eval(bad)
        with pytest.raises(ArgumentError, match=rf"{bad}.*(out of range|n_vocab)"):
            model.eval_sequence([0, 1, bad, 2])
        with pytest.raises(ArgumentError, match="out of range"):
            model.ingest([bad])
        with pytest.raises(ArgumentError, match="out of range"):
            model.eval_embedding([bad])
    with pytest.raises(ArgumentError, match="position 2"):
        model.eval_sequence([0, 1, V, 2])
    with pytest.raises(ArgumentError, match="out of range"):
        model.eval_sequence(np.array([2**40], dtype=np.int64))  # must not wrap to a valid int32
    with pytest.raises(ArgumentError, match="out of range"):
        model.eval_sequence(np.array([2**32 + 1], dtype=np.uint64))
    with pytest.raises(ArgumentError, match="out of range"):
        model.eval(np.int64(V))
    # The edges are fine, and a failed call leaves the state alone.
    model.eval_sequence([0, V - 1], state)
    assert np.array_equal(state, model.init_state())


def test_empty_token_list(arch, model_set):
    model = load(model_set.fp32)
    for empty in ([], (), np.array([], dtype=np.int32)):
        with pytest.raises(ArgumentError, match="empty"):
            model.eval_sequence(empty)
        with pytest.raises(ArgumentError, match="empty"):
            model.ingest(empty)
        with pytest.raises(ArgumentError, match="empty"):
            model.eval_embedding(empty)


def test_non_int_tokens(arch, model_set):
    model = load(model_set.fp32)
    for bad in (1.5, 1.0, "3", None, True, [1]):
        with pytest.raises((TypeError, ArgumentError), match="int"):
            model.eval(bad)
    for bad in ([1.5, 2], [float("nan")], [True, False], [[1, 2]], np.zeros((2, 2), np.int32)):
        with pytest.raises((TypeError, ArgumentError), match="int"):
            model.eval_sequence(bad)
    # Integral floats and numpy ints are accepted as token ids.
    expected, _ = model.eval_sequence([1, 2])
    np.testing.assert_array_equal(model.eval_sequence([1.0, 2.0])[0], expected)
    np.testing.assert_array_equal(model.eval_sequence(np.array([1, 2], np.uint16))[0], expected)
    np.testing.assert_array_equal(model.eval(np.int32(2), model.eval(1)[1])[0], expected)


def test_non_numeric_token_lists_give_a_clear_message(arch, model_set):
    model = load(model_set.fp32)
    for bad in (["a", "b"], "abc", [1, None]):
        with pytest.raises((TypeError, ArgumentError), match="token"):
            model.eval_sequence(bad)


def test_bad_state_length_or_type(arch, model_set):
    model = load(model_set.fp32)
    state = model.init_state()
    for bad in (state[:-1], np.concatenate([state, state[:1]]), state.reshape(1, -1), np.zeros(0, np.float32)):
        with pytest.raises(ArgumentError, match=rf"state.*{model.state_len}"):
            model.eval(1, bad)
        with pytest.raises(ArgumentError, match="state"):
            model.eval_sequence([1, 2], bad)
        with pytest.raises(ArgumentError, match="state"):
            model.ingest([1, 2], bad)
        with pytest.raises(ArgumentError, match="state"):
            model.eval_embedding([1, 2], bad)
    for bad in (list(state), tuple(state), 0.0, "state"):
        with pytest.raises((TypeError, ArgumentError), match="numpy array"):
            model.eval(1, bad)
    # A state of another architecture (another length) is refused too.
    with pytest.raises(ArgumentError, match="state"):
        model.eval(1, np.zeros(model.state_len + 64 * 64, np.float32))


def test_state_of_wrong_dtype_is_refused(arch, model_set):
    model = load(model_set.fp32)
    state = model.init_state()
    for dtype in (np.int32, np.complex64, np.float16):
        with np.errstate(all="ignore"), pytest.raises((TypeError, ArgumentError), match="float32"):
            model.eval(1, state.astype(dtype))


def test_errors_are_rwkv_errors(arch, model_set):
    """ArgumentError is both an RWKVError and a ValueError, as documented."""
    model = load(model_set.fp32)
    with pytest.raises(RWKVError):
        model.eval(model.n_vocab)
    with pytest.raises(ValueError):
        model.eval(model.n_vocab)
    assert rwkvcpp.RWKVError is RWKVError
    with pytest.raises(ValueError, match="threads"):
        Model(model_set.fp32, threads=0)
