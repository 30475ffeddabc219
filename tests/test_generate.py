"""Generator and Model.generate: sampling loop, stop handling, streaming, state, usage.

Most tests run a tiny random byte-level v7 model (2 layers, 128 wide, 256 tokens). Those that
need exact control over the generated text use LoopingScript, a stand-in whose logits always
pick the next byte of a fixed script.
"""

from __future__ import annotations

import numpy as np
import pytest

from support.checkpoints import make_checkpoint
from support.fakes import ScriptedModel
from rwkvcpp.generate import Chunk, Completion, Generation, Generator
from rwkvcpp.model import Model
from rwkvcpp.sampling import SamplingParams
from rwkvcpp.tokenizer import Tokenizer

# Printable ASCII and newline only, so greedy text is plain and substrings are meaningful.
NOT_ASCII = tuple(t for t in range(256) if not (32 <= t < 127 or t == 10))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from rwkvcpp.writer import write_model

    path = tmp_path_factory.mktemp("generate") / "v7.bin"
    write_model(path, make_checkpoint("v7", n_layer=2, n_embed=128, n_vocab=256, seed=0), dtype="FP32")
    return Model(path, threads=1)


@pytest.fixture(scope="module")
def gen(model):
    return Generator(model)


def greedy(**kw) -> SamplingParams:
    kw.setdefault("banned_tokens", NOT_ASCII)
    return SamplingParams(temperature=0.0, **kw)


def manual_greedy(model, prompt_tokens, n, banned=NOT_ASCII):
    """The arg-max continuation, one eval call per token."""
    logits, state = model.eval_sequence(prompt_tokens)
    tokens = []
    for _ in range(n):
        masked = logits.astype(np.float64).copy()
        masked[list(banned)] = -np.inf
        t = int(np.argmax(masked))
        tokens.append(t)
        logits, state = model.eval(t, state)
    return tokens, state


class LoopingScript(ScriptedModel):
    """After reading n tokens the logits point at script[n - 1] (round and round), so a
    one-token prompt starts the script from the beginning."""

    def advance(self, tokens, at):
        return ((-1 if at is None else at) + len(tokens)) % len(self.script)


def scripted(script: str) -> Generator:
    return Generator(LoopingScript(script.encode("utf-8")), Tokenizer.from_name("bytes"))


def run_pieces(generator, prompt, params, state=None):
    """All chunks of a stream: one per sampled token, the last one carrying the result."""
    chunks = list(generator.stream(prompt, params, state))
    assert all(c.finish_reason is None and c.result is None for c in chunks[:-1])
    assert chunks[-1].finish_reason is not None and chunks[-1].result is not None
    assert all(c.token is not None for c in chunks)
    return chunks


# -- determinism and greedy -----------------------------------------------------------------------


def test_seeded_sampling_is_repeatable(gen):
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=40)
    a = gen.complete("Hello", params)
    b = gen.complete("Hello", params)
    assert a.tokens == b.tokens and a.text == b.text
    c = gen.complete("Hello", SamplingParams(temperature=1.0, top_p=0.9, seed=99, max_tokens=40))
    assert c.tokens != a.tokens


def test_temperature_zero_is_the_argmax_continuation(model, gen):
    prompt = "The answer is"
    tokens, state = manual_greedy(model, list(prompt.encode()), 24)
    out = gen.complete(prompt, greedy(max_tokens=24))
    assert out.tokens == tokens
    assert out.text == bytes(tokens).decode("ascii")
    assert out.finish_reason == "length"
    # The final state includes the last token, which the loop itself never had to evaluate.
    np.testing.assert_allclose(out.state, state, rtol=1e-4, atol=1e-4)
    # Without bans the greedy pick is the plain arg-max too.
    tokens, _ = manual_greedy(model, list(prompt.encode()), 12, banned=())
    assert gen.complete(prompt, SamplingParams(temperature=0, max_tokens=12)).tokens == tokens


def test_prompt_is_read_in_one_call_then_token_by_token():
    g = scripted("abcdef")
    g.complete([0, 1, 2, 3], greedy(max_tokens=4, banned_tokens=()))
    # the prompt, then three more evaluations: the fourth token is never fed back (the state
    # was not asked for)
    assert [len(tokens) for tokens in g.model.calls] == [4, 1, 1, 1]


# -- stop strings ---------------------------------------------------------------------------------


def test_stop_string_split_across_tokens_is_cut_and_excluded():
    g = scripted("Hello, world!\n\nUser: more text")
    chunks = run_pieces(g, [0], greedy(stop="\n\nUser:", max_tokens=100))
    final = chunks[-1]
    text = "".join(c.text for c in chunks)
    assert text == "Hello, world!"
    assert final.finish_reason == "stop"
    # every byte of the stop string was generated (and read by the state), none was shown
    assert final.completion_tokens == len("Hello, world!\n\nUser:")
    assert not any("\n" in c.text for c in chunks)


def test_text_that_only_starts_like_a_stop_string_is_released():
    g = scripted("a\n\nb\n\nUser: c")
    chunks = run_pieces(g, [0], greedy(stop="\n\nUser:", max_tokens=100))
    pieces = [c.text for c in chunks]
    assert "".join(pieces) == "a\n\nb"
    # "\n", "\n" were held back until "b" showed they were not the stop string
    assert pieces[:4] == ["a", "", "", "\n\nb"]


def test_earliest_of_several_stop_strings_wins_and_real_model_text_is_cut(gen):
    g = scripted("one two three four")
    assert g.complete([0], greedy(stop=["four", "two", "wo t"], max_tokens=50)).text == "one "

    full = gen.complete("Hello", greedy(max_tokens=40)).text
    stop = full[6:9]
    cut = gen.complete("Hello", greedy(max_tokens=40, stop=[stop]))
    assert cut.text == full[: full.index(stop)]
    assert stop not in cut.text
    assert cut.finish_reason == "stop"


def test_stop_string_with_multibyte_characters():
    g = scripted("héllo wörld")
    out = g.complete([0], greedy(stop="ö", max_tokens=50, banned_tokens=()))
    assert out.text == "héllo w" and out.finish_reason == "stop"


def test_pieces_never_split_a_utf8_character():
    g = scripted("日本")
    chunks = run_pieces(g, [0], greedy(max_tokens=6, banned_tokens=()))
    assert [c.text for c in chunks] == ["", "", "日", "", "", "本"]


def test_stop_string_at_the_very_end_of_max_tokens():
    g = scripted("abcSTOPxyz")
    out = g.complete([0], greedy(stop="STOP", max_tokens=7, banned_tokens=()))
    assert out.text == "abc" and out.finish_reason == "stop"
    # one token short: the held-back "STO" comes out at the end
    out = g.complete([0], greedy(stop="STOP", max_tokens=6, banned_tokens=()))
    assert out.text == "abcSTO" and out.finish_reason == "length"


# -- stop tokens and length -------------------------------------------------------------------------


def test_stop_token_ends_generation_and_is_not_included(model, gen):
    tokens, _ = manual_greedy(model, list(b"Hello"), 30)
    i = next(i for i in range(2, len(tokens)) if tokens[i] not in tokens[:i])
    out = gen.complete("Hello", greedy(max_tokens=30, stop_tokens=[tokens[i]]))
    assert out.tokens == tokens[:i]
    assert out.text == bytes(tokens[:i]).decode()
    assert out.finish_reason == "stop" and out.stop == tokens[i]
    # usage counts the stop token (the model produced it), tokens do not
    assert out.usage["completion_tokens"] == i + 1
    # the state is the one after the last generated token (the stop token was not read)
    _, state = model.eval_sequence(list(b"Hello") + tokens[:i])
    np.testing.assert_allclose(out.state, state, rtol=1e-4, atol=1e-4)


def test_max_tokens_gives_length(model, gen):
    out = gen.complete("Hi", SamplingParams(seed=3, max_tokens=17))
    assert out.finish_reason == "length"
    assert len(out.tokens) == 17 and out.usage["completion_tokens"] == 17

    zero = gen.complete("Hi", SamplingParams(max_tokens=0))
    assert (zero.text, zero.tokens, zero.finish_reason) == ("", [], "length")
    assert [(c.text, c.token) for c in gen.stream("Hi", SamplingParams(max_tokens=0))] == [("", None)]
    np.testing.assert_array_equal(zero.state, model.eval_sequence(list(b"Hi"))[1])


# -- streaming --------------------------------------------------------------------------------------


def test_streamed_pieces_join_to_the_complete_text(model, gen):
    params = SamplingParams(temperature=1.0, seed=7, max_tokens=60, stop=["ab", "\n\n"])
    chunks = run_pieces(gen, "Once", params)
    completion = gen.complete("Once", params)
    assert "".join(c.text for c in chunks) == completion.text
    assert [c.token for c in chunks] == completion.tokens  # (no stop tokens here)

    kw = dict(max_tokens=50, temperature=1.0, top_p=0.8, seed=11)
    pieces = list(model.generate("Once", stream=True, **kw))
    assert pieces and all(pieces)
    assert "".join(pieces) == model.generate("Once", **kw)


def test_cancelling_is_just_stopping_iteration(model, gen):
    stream = gen.stream("Hello", SamplingParams(seed=1, max_tokens=None))  # no limit at all
    for i, chunk in enumerate(stream):
        assert isinstance(chunk, Chunk)
        if i == 5:
            break
    stream.close()
    assert gen.complete("Hello", greedy(max_tokens=3)).finish_reason == "length"


# -- state ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_stop", [False, True])
def test_continuing_from_the_state_equals_one_long_prompt(model, gen, with_stop):
    stop = ()
    if with_stop:  # a stop string from the middle of the greedy text
        stop = gen.complete("Hello", greedy(max_tokens=12)).text[5:7]
    first = gen.complete("Hello", greedy(max_tokens=12, stop=stop))
    assert first.finish_reason == ("stop" if with_stop else "length")
    second = gen.complete(" there", greedy(max_tokens=12), state=first.state)

    # The state covers every generated token, including those of a stop string.
    long_prompt = list(b"Hello") + first.tokens + list(b" there")
    whole = gen.complete(long_prompt, greedy(max_tokens=12))
    assert second.tokens == whole.tokens
    np.testing.assert_allclose(second.state, whole.state, rtol=1e-4, atol=1e-4)  # sequence vs one by one


def test_continuing_with_state_and_logits_and_no_prompt(gen):
    whole = gen.complete("Hello", greedy(max_tokens=20))
    first = gen.complete("Hello", greedy(max_tokens=8))
    rest = gen.complete("", greedy(max_tokens=12), first.state, logits=first.logits)
    assert first.tokens + rest.tokens == whole.tokens
    assert rest.usage["prompt_tokens"] == 0
    with pytest.raises(ValueError, match="empty"):
        gen.stream("", greedy(), first.state)


def test_state_passed_in_is_not_modified(model, gen):
    _, state = model.eval_sequence(list(b"abc"))
    before = state.copy()
    gen.complete("def", SamplingParams(seed=0, max_tokens=5), state=state)
    np.testing.assert_array_equal(state, before)


def test_usage_counts(gen):
    out = gen.complete("Hello world", SamplingParams(seed=5, max_tokens=9))
    assert out.usage == {"prompt_tokens": 11, "completion_tokens": 9, "total_tokens": 20}
    assert isinstance(out, Completion) and Completion is Generation and out.finish_reason == "length"
    chunks = run_pieces(gen, [1, 2, 3], SamplingParams(seed=5, max_tokens=4))
    assert (chunks[-1].prompt_tokens, chunks[-1].completion_tokens) == (3, 4)
    assert chunks[-1].usage == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert len(chunks) == 4 and chunks[0].state is None and chunks[0].prompt_tokens is None


# -- arguments and the Model API ----------------------------------------------------------------------


def test_bad_arguments_fail_before_the_first_chunk(model, gen):
    with pytest.raises(ValueError, match="empty"):
        gen.stream("", SamplingParams())
    with pytest.raises(ValueError, match="vocabulary"):
        gen.stream([1, 300], SamplingParams())
    with pytest.raises(TypeError):
        gen.stream([1, "a"], SamplingParams())
    with pytest.raises(Exception, match="float32"):
        gen.stream("a", SamplingParams(), state=np.zeros(model.state_len, dtype=np.float64))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        gen.stream("a", SamplingParams(stop_tokens=[999]))
    with pytest.raises(TypeError):
        model.generate("a", no_such_setting=1)


def test_model_tokenizer_is_lazy_and_assignable(model):
    assert model.tokenizer.name == "bytes"
    model.tokenizer = "bytes"
    assert model.tokenizer is Tokenizer.from_name("bytes")
    model.tokenizer = None
    assert model.tokenizer.name == "bytes"
    with pytest.raises(ValueError):
        model.tokenizer = "world-of-nonsense"


def test_model_generate_matches_generator(model, gen):
    text = model.generate("Hello", max_tokens=20, temperature=0, banned_tokens=NOT_ASCII)
    assert text == gen.complete("Hello", greedy(max_tokens=20)).text
    tokens, state = manual_greedy(model, list(b"Hello"), 10)
    assert model.generate([72, 101, 108, 108, 111], max_tokens=10, temperature=0,
                          banned_tokens=NOT_ASCII) == bytes(tokens).decode()
    # continuing with model.generate from a state
    assert model.generate("!", max_tokens=5, temperature=0, state=state, banned_tokens=NOT_ASCII) == (
        gen.complete(list(b"Hello") + tokens + list(b"!"), greedy(max_tokens=5)).text
    )
