"""The chat session, the text commands (chat, generate, perplexity) and the python/ scripts.

In-process tests drive ChatSession with a tiny random byte-level v7 model (greedy, so replies
are repeatable) or with a scripted stand-in whose replies are known text. The command and
script tests run real subprocesses with piped stdin on the same tiny model.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from support.checkpoints import make_checkpoint
from support.fakes import Recording, ScriptedModel
from rwkvcpp.chat import HELP, ChatSession, Preset, _join, preset_names
from rwkvcpp.model import Model
from rwkvcpp.sampling import SamplingParams

REPO = Path(__file__).resolve().parent.parent
# Printable ASCII only (no newline either), so greedy replies never hit a stop string.
PRINTABLE_ONLY = tuple(t for t in range(256) if not 32 <= t < 127)
ENV = dict(os.environ, PYTHONIOENCODING="utf-8")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from rwkvcpp.writer import write_model

    d = tmp_path_factory.mktemp("chat")
    model = d / "v7.bin"
    write_model(model, make_checkpoint("v7", n_layer=2, n_embed=128, n_vocab=256, seed=0), dtype="FP32")
    text = d / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 8 + "Ünïcödé ✓\n", encoding="utf-8")
    return {"model": str(model), "text": str(text), "dir": d}


@pytest.fixture(scope="module")
def model(files):
    return Model(files["model"], threads=1)


def greedy(max_tokens=8, **kw) -> SamplingParams:
    return SamplingParams(temperature=0.0, banned_tokens=PRINTABLE_ONLY, max_tokens=max_tokens, **kw)


def session(model, preset="English-QA", max_tokens=8, **kw):
    out, err = io.StringIO(), io.StringIO()
    return ChatSession(model, preset, greedy(max_tokens, **kw), out=out, err=err), out


def replies(out: io.StringIO) -> list[str]:
    """The replies in a transcript, in order (text after "Assistant:" up to the blank line)."""
    return re.findall(r"Assistant:(.*?)\n\n", out.getvalue(), flags=re.S)


class ScriptedReplies(ScriptedModel):
    """After reading a prompt (more than one token at once) it writes ``script`` from the start,
    one byte per token, then its last byte for ever. ``reads``: the prompts it was given."""

    def advance(self, tokens, at):
        return 0 if len(tokens) > 1 else min(at + 1, len(self.script) - 1)

    @property
    def reads(self) -> list[bytes]:
        return [bytes(c) for c in self.calls if len(c) > 1]


# -- presets -----------------------------------------------------------------------------------------


def test_presets_ship_and_load(tmp_path):
    assert set(preset_names()) >= {"English-Chat", "English-QA", "Chinese-Chat", "Chinese-QA"}
    for name in preset_names():
        p = Preset.load(name)
        assert p.user and p.bot and p.separator == ":" and p.intro.strip()
        assert p.intro.endswith("\n\n") and f"\n\n{p.bot}:" in p.intro  # an example exchange
    assert Preset.load("english-qa").bot == "Assistant"
    assert Preset.load(None).name == "English-QA"

    # rwkv.cpp's prompt files use "assistant" and "prompt"
    f = tmp_path / "mine.json"
    f.write_text(json.dumps({"user": "Q", "assistant": "A", "separator": ":", "prompt": "Q: hi\n\nA: hello\n\n"}))
    p = Preset.load(str(f))
    assert (p.user, p.bot, p.intro) == ("Q", "A", "Q: hi\n\nA: hello\n\n")
    assert Preset.load('{"user": "U", "bot": "B"}').intro == ""
    with pytest.raises(ValueError, match="English-QA"):
        Preset.load("Klingon-Chat")
    with pytest.raises(ValueError, match="unknown key"):
        Preset.load('{"user": "U", "bot": "B", "intr": "typo"}')


def test_join_adds_only_what_the_conversation_lacks():
    turn = "User: hi\n\nBot:"
    assert _join("", turn) == turn
    assert _join("a reply", turn) == "\n\n" + turn
    assert _join("a reply\n", turn) == "\n" + turn
    assert _join("a reply\n\nUser:", turn) == " hi\n\nBot:"  # cut at the stop string, which was read
    assert _join("a reply\n\nUs", turn) == "er: hi\n\nBot:"


# -- the session, in process -----------------------------------------------------------------------------


def test_each_turn_reads_only_the_new_text_and_keeps_the_state(model):
    rec = Recording(model)
    chat, out = session(rec)
    intro = Preset.load("English-QA").intro
    chat.handle("hello")
    chat.handle("how are you")
    first, second = replies(out)
    turn2 = "\n\nUser: how are you\n\nAssistant:"
    # one prompt read per turn, and the second one is just the new text
    prompts = [c for c in rec.calls if len(c) > 1]
    assert bytes(prompts[-1]).decode() == turn2
    assert bytes(prompts[-2]).decode() == "User: hello\n\nAssistant:"
    # ... and the state equals reading the whole conversation at once
    whole = intro + "User: hello\n\nAssistant:" + first + turn2 + second
    np.testing.assert_allclose(chat.state, model.eval_sequence(list(whole.encode()))[1], rtol=1e-4, atol=1e-4)


def test_retry_and_continue(model):
    chat, out = session(model, max_tokens=6)
    chat.handle("hello")
    state_after_first = chat.state.copy()
    chat.handle("++")  # greedy: a retry from the state before the reply is the same reply
    first, retried = replies(out)
    assert retried == first
    np.testing.assert_allclose(chat.state, state_after_first, rtol=1e-4, atol=1e-4)

    before = len(out.getvalue())
    chat.handle("+++")  # continues: reply + continuation == one reply twice as long
    continuation = out.getvalue()[before:]
    assert continuation.endswith("\n\n")
    continuation = continuation[:-2]
    long_chat, long_out = session(model, max_tokens=12)
    long_chat.handle("hello")
    assert first + continuation == replies(long_out)[0]
    np.testing.assert_allclose(chat.state, long_chat.state, rtol=1e-4, atol=1e-4)


def test_reply_ends_at_the_next_user_turn_and_the_next_turn_joins_on():
    fake = ScriptedReplies(b" Hi there!\n\nUser: and I say")
    chat = ChatSession(fake, "English-QA", SamplingParams(temperature=0, max_tokens=50), out=io.StringIO(),
                       err=io.StringIO())
    chat.handle("hello")
    assert chat.out.getvalue() == "Assistant: Hi there!\n\n"
    assert chat.last.result.finish_reason == "stop"
    chat.handle("next")
    # the state already holds "\n\nUser:", so only the rest of the turn is read
    assert fake.reads[-1] == b" next\n\nAssistant:"
    # +++ after a stop: the reply as shown is read again from the state before it
    chat.handle("+++")
    assert fake.reads[-1] == b" next\n\nAssistant: Hi there!"


def test_free_generation_commands_leave_the_conversation_alone(model):
    rec = Recording(model)
    chat, out = session(rec)
    chat.handle("hello")
    state, tail = chat.state, chat.tail
    chat.handle("+gen Once upon a time")
    assert bytes(rec.calls[-1]) == b"Once upon a time"
    chat.handle("+i write a haiku")
    assert bytes(rec.calls[-1]) == b"Instruction: write a haiku\n\nResponse:"
    chat.handle("+qa what is RWKV?")
    assert bytes(rec.calls[-1]) == b"User: what is RWKV?\n\nAssistant:"  # from the intro, no history
    assert chat.state is state and chat.tail == tail
    chat.handle("+reset")
    assert chat.state is chat.intro_state and "Chat reset." in out.getvalue()
    chat.handle("+help")
    assert HELP in out.getvalue()
    chat.handle("+nonsense")
    assert "Unknown command +nonsense" in out.getvalue()


def test_retry_with_nothing_to_retry(model):
    chat, out = session(model)
    chat.handle("++")
    chat.handle("+++")
    chat.handle("+gen")
    assert "no reply to retry" in out.getvalue() and "no reply to continue" in out.getvalue()
    assert "+gen needs some text" in out.getvalue()


# -- commands in subprocesses ------------------------------------------------------------------------------


def rwkvcpp(*args, stdin="", timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "rwkvcpp", *map(str, args)], input=stdin.encode(), capture_output=True,
        timeout=timeout, env=ENV, cwd=REPO,
    )


def test_chat_scripted_session_through_piped_stdin(files):
    script = "\n".join([
        "hello", "+help", "+gen Once upon a time", "+i say hi", "+qa why?", "+++", "++", "+reset",
        "again\\nwith a line break", "+++", "++", "+bogus", "",
    ])
    r = rwkvcpp("chat", files["model"], "--threads", 1, "--max-tokens", 6, "--seed", 1, stdin=script)
    out, err = r.stdout.decode(), r.stderr.decode()
    assert r.returncode == 0, err
    assert "User: hello\n\nAssistant:" in out
    assert "Commands:" in out and "+reset" in out
    assert "Assistant: Chat reset." in out
    assert "Unknown command +bogus" in out
    assert "User: again\nwith a line break" in out
    assert out.count("Assistant:") == 4  # hello, +qa, Chat reset, again (+++ and ++ of a +++ have no label)


def test_chat_is_repeatable_with_a_seed_and_exits_0_at_eof(files):
    a = rwkvcpp("chat", files["model"], "--threads", 1, "-n", 8, "--seed", 3, stdin="hi\n")
    b = rwkvcpp("chat", files["model"], "--threads", 1, "-n", 8, "--seed", 3, stdin="hi\n")
    assert a.returncode == b.returncode == 0 and a.stdout == b.stdout
    empty = rwkvcpp("chat", files["model"], "--threads", 1, "--prompt", "Chinese-Chat", stdin="")
    assert empty.returncode == 0 and empty.stdout.strip() == b""


def test_chat_bad_preset_is_a_one_line_error(files):
    r = rwkvcpp("chat", files["model"], "--prompt", "No-Such-Preset")
    assert r.returncode == 2
    assert r.stderr.decode().count("\n") == 1 and "English-QA" in r.stderr.decode()


def test_ctrl_c_stops_the_reply_and_the_chat_goes_on(files):
    proc = subprocess.Popen(
        [sys.executable, "-X", "faulthandler", "-m", "rwkvcpp", "chat", files["model"], "--threads", "1", "-n",
         "10000000"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, cwd=REPO,
        # Ctrl-C as at a terminal: a test run started in the background by a shell without job
        # control inherits SIGINT ignored, and Python then leaves it ignored (the chat never stops).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        proc.stdin.write(b"tell me everything\n")
        proc.stdin.flush()
        seen = b""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait until the reply is under way
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                seen += os.read(proc.stdout.fileno(), 65536)
                if b"Assistant:" in seen and len(seen.split(b"Assistant:", 1)[1]) > 50:
                    break
        assert b"Assistant:" in seen, "the reply never started"
        proc.send_signal(signal.SIGINT)
        try:
            rest, err = proc.communicate(b"+help\n", timeout=60)
        except subprocess.TimeoutExpired:
            # Leave the stacks of every thread of the stuck chat (faulthandler prints them on
            # SIGABRT) for whoever sees it next.
            proc.send_signal(signal.SIGABRT)
            _, err = proc.communicate(timeout=30)
            pytest.fail("the chat did not go on after Ctrl-C; its threads:\n" + err.decode(errors="replace")[-6000:])
    finally:
        if proc.poll() is None:
            proc.kill()
    out = (seen + rest).decode("utf-8", errors="replace")
    assert proc.returncode == 0, err.decode()
    assert "[reply stopped]" in out
    assert "Commands:" in out.split("[reply stopped]", 1)[1]


def test_no_model_argument_uses_the_built_in_model_or_says_it_is_missing():
    r = rwkvcpp("chat", "--threads", 1, "-n", 4, stdin="hi\n")
    err = r.stderr.decode()
    if r.returncode == 0:
        assert "using the built-in model" in err and "Python's docs" in err
    else:
        assert r.returncode == 2 and "built-in model" in err and err.count("\n") == 1


def test_generate_command(files, model):
    expected = model.generate("Hello", max_tokens=20, temperature=0)
    r = rwkvcpp("generate", files["model"], "--threads", 1, "--prompt", "Hello", "-n", 20, "--temp", 0)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode() == expected

    # the prompt from stdin and from a file; --echo; --stats; a seed makes sampling repeatable
    prompt_file = files["dir"] / "prompt.txt"
    prompt_file.write_text("Hello", encoding="utf-8")
    r = rwkvcpp("generate", files["model"], "--threads", 1, "-n", 20, "--temp", 0, stdin="Hello")
    assert r.stdout.decode() == expected
    r = rwkvcpp("generate", files["model"], "--threads", 1, "--prompt-file", prompt_file, "-n", 20, "--temp", 0,
                "--echo", "--stats")
    assert r.stdout.decode() == "Hello" + expected
    assert "20 generated" in r.stderr.decode() and "finish reason: length" in r.stderr.decode()
    # sampled with a seed: the same text as the API gives with the command's default settings
    r = rwkvcpp("generate", files["model"], "--threads", 1, "--prompt", "Hi", "-n", 30, "--seed", 5)
    assert r.returncode == 0 and len(r.stdout) > 0
    assert r.stdout.decode() == model.generate("Hi", max_tokens=30, temperature=0.8, top_p=0.5, seed=5)

    bad = rwkvcpp("generate", files["model"], "--prompt", "Hi", "--top-p", 2)
    assert bad.returncode == 2 and "--top-p" in bad.stderr.decode()


def test_perplexity_command(files, model):
    r = rwkvcpp("perplexity", files["model"], files["text"], "--threads", 1, "--batch", 50)
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode()
    ppl = float(re.search(r"perplexity ([0-9.]+)", out).group(1))
    assert math.isfinite(ppl) and ppl > 1
    assert re.search(r"[0-9.]+ tokens/s", out) and "bits per token" in out

    # the same number computed here, in one call over the whole text
    tokens = list(Path(files["text"]).read_bytes())
    logits, _ = model.eval_sequence(tokens[:-1], all_logits=True)
    x = logits.astype(np.float64)
    lse = x.max(1) + np.log(np.exp(x - x.max(1)[:, None]).sum(1))
    loss = float(np.mean(lse - x[np.arange(len(tokens) - 1), tokens[1:]]))
    assert ppl == pytest.approx(math.exp(loss), rel=1e-3)

    windows = rwkvcpp("perplexity", files["model"], files["text"], "--threads", 1, "--ctx", 64, "--ignore-first", 4)
    assert windows.returncode == 0 and "contexts of 64 tokens" in windows.stdout.decode()
    assert math.isfinite(float(re.search(r"perplexity ([0-9.]+)", windows.stdout.decode()).group(1)))

    tiny = files["dir"] / "one.txt"
    tiny.write_text("a", encoding="utf-8")
    r = rwkvcpp("perplexity", files["model"], tiny)
    assert r.returncode == 2 and "at least 2" in r.stderr.decode()


@pytest.mark.parametrize("dtype", ["FP32", "Q8_0"])
def test_perplexity_windows_read_together_score_as_read_alone(files, dtype):
    from rwkvcpp.cli.perplexity import score_windows
    from rwkvcpp.quantization import quantize

    path = files["model"]
    if dtype != "FP32":
        path = str(files["dir"] / f"v7-{dtype}.bin")
        if not os.path.exists(path):
            quantize(files["model"], path, dtype)
    model = Model(path, threads=2)
    tokens = np.asarray(list(Path(files["text"]).read_bytes()), dtype=np.int64)
    # windows of 37 and a short last one: chunks of 16, 16 and 4 inputs (both kernel paths), and
    # windows joining the batch as others end
    windows = [tokens[i : i + 37] for i in range(0, len(tokens), 37)]
    assert len(windows[-1]) < 37
    alone, _ = score_windows(model, windows, batch=16, parallel=1, ignore_first=5)
    for parallel in (3, len(windows)):
        together, _ = score_windows(model, windows, batch=16, parallel=parallel, ignore_first=5)
        assert all(np.array_equal(a, b) for a, b in zip(alone, together))
    for window, losses in zip(windows, alone):  # what eval_sequence gives each window, chunk by chunk
        state, expected = None, []
        for start in range(0, len(window) - 1, 16):
            logits, state = model.eval_sequence(window[start : min(start + 16, len(window) - 1)], state,
                                                all_logits=True)
            expected.append(logits)
        logits = np.concatenate(expected)[4:].astype(np.float64)  # targets from position 5 on
        lse = logits.max(1) + np.log(np.exp(logits - logits.max(1)[:, None]).sum(1))
        np.testing.assert_array_equal(losses, lse - logits[np.arange(len(logits)), window[5:]])


def test_perplexity_command_parallel_windows(files):
    outputs = []
    for parallel in (1, 3):
        r = rwkvcpp("perplexity", files["model"], files["text"], "--threads", 1, "--ctx", 37, "--batch", 16,
                    "--parallel", parallel)
        assert r.returncode == 0, r.stderr.decode()
        outputs.append(r.stdout.decode().splitlines())
    assert "3 at a time" in outputs[1][1]
    assert outputs[0][2] == outputs[1][2] and outputs[0][2].startswith("scored ")  # the same figures
    r = rwkvcpp("perplexity", files["model"], files["text"], "--ctx", 37, "--parallel", 0)
    assert r.returncode == 2 and "--parallel must be at least 1" in r.stderr.decode()


# -- the python/ scripts ----------------------------------------------------------------------------------


def script(name, *args, stdin=""):
    return subprocess.run(
        [sys.executable, str(REPO / "python" / name), *map(str, args)], input=stdin.encode(),
        capture_output=True, timeout=120, env=ENV, cwd=REPO,
    )


def test_python_scripts_run(files):
    r = script("inference_example.py", files["model"], "--threads", 1)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().startswith("Once upon a time,")

    r = script("generate_completions.py", files["model"], "--threads", 1)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().count("--- Generation") == 3 and "ms per token" in r.stdout.decode()

    r = script("measure_perplexity.py", files["model"], files["text"], 2, 200, "--threads", 1)
    assert r.returncode == 0, r.stderr.decode()
    assert "perplexity" in r.stdout.decode() and "first 200 used" in r.stdout.decode()

    r = script("chat_with_bot.py", files["model"], "--threads", 1, stdin="hello\n+help\n")
    assert r.returncode == 0, r.stderr.decode()
    assert "User: hello" in r.stdout.decode() and "Commands:" in r.stdout.decode()
