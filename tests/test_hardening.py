"""Faults and hostile inputs (issue 20): destinations that are not plain files, writes that fail
or are killed, model files changed under a loaded model, NaN weights, FIFOs, sizes that overflow,
and the smaller edges of the API and the command line. Each test failed before its fix."""

from __future__ import annotations

import os
import pty
import resource
import select
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from rwkvcpp import _core, atomic_file
from rwkvcpp import format as fmt
from rwkvcpp.model import ArgumentError, Model, ModelFileError, ModelIOError, NonFiniteError, verify_file
from rwkvcpp.writer import BinWriter

Q8_0 = 9
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def source(model_files, tmp_path) -> Path:
    """An FP16 v7 model to quantize or load, in the test's own folder."""
    path = tmp_path / "model-fp16.bin"
    shutil.copy(model_files["v7"].fp16, path)
    return path


def quantize(src, dst, progress=None):
    _core.quantize_file(os.fspath(src), os.fspath(dst), Q8_0, progress=progress)


def write_small(dst):
    with BinWriter(dst, 4, 4, 1, "FP32") as writer:
        writer.write_tensor("emb.weight", np.ones((4, 4), np.float32))


def save_state(src, dst):
    model = Model(src)
    model.save_state(dst, model.init_state())


# The engine's quantizer (csrc/output.c), and Python's writers (rwkvcpp.atomic_file): models and
# saved states (safetensors; GGUF and torch files go the same way).
WRITERS = {"quantize": lambda src, dst: quantize(src, dst), "BinWriter": lambda src, dst: write_small(dst),
           "save_state": save_state}


def unnamed_files_work(folder: Path) -> bool:
    return atomic_file._open_unnamed(os.fspath(folder), os.fspath(folder / "probe")) is not None


# ---- 1. destinations -----------------------------------------------------------------------------


@pytest.mark.parametrize("writer", WRITERS)
def test_a_fifo_destination_is_refused_and_kept(writer, source, tmp_path):
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match=r"out.fifo: the destination is a FIFO, not a regular file"):
        WRITERS[writer](source, fifo)
    assert fifo.is_fifo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-fp16.bin", "out.fifo"]


@pytest.mark.parametrize("writer", WRITERS)
def test_a_directory_destination_is_refused(writer, source, tmp_path):
    with pytest.raises(OSError, match=r"the destination is a directory, not a regular file"):
        WRITERS[writer](source, tmp_path)


@pytest.mark.parametrize("writer", WRITERS)
def test_a_read_only_destination_is_refused_and_kept(writer, source, tmp_path):
    dst = tmp_path / "kept.bin"
    dst.write_bytes(b"keep me")
    dst.chmod(0o444)
    with pytest.raises(OSError, match=r"kept.bin: the destination is read-only \(mode 0444\)"):
        WRITERS[writer](source, dst)
    assert dst.read_bytes() == b"keep me"


@pytest.mark.parametrize("writer", WRITERS)
def test_a_hard_linked_destination_is_refused_and_both_names_kept(writer, source, tmp_path):
    dst, other = tmp_path / "dst.bin", tmp_path / "other.bin"
    dst.write_bytes(b"shared")
    os.link(dst, other)
    with pytest.raises(OSError, match=r"dst.bin: the destination has 2 hard links"):
        WRITERS[writer](source, dst)
    assert os.path.samefile(dst, other) and dst.read_bytes() == b"shared"


@pytest.mark.parametrize("writer", WRITERS)
def test_a_symlink_is_written_through_to_its_target(writer, source, tmp_path):
    target_dir = tmp_path / "models"
    target_dir.mkdir()
    target = target_dir / "real.bin"
    target.write_bytes(b"old")
    target.chmod(0o640)
    link = tmp_path / "link.bin"
    link.symlink_to(target)
    WRITERS[writer](source, link)
    assert link.is_symlink() and os.readlink(link) == os.fspath(target)
    assert target.read_bytes() not in (b"old", b"")
    assert (target.stat().st_mode & 0o777) == 0o640  # a replaced file keeps its permissions
    assert sorted(p.name for p in target_dir.iterdir()) == ["real.bin"]  # written beside the target, nothing left


@pytest.mark.parametrize("writer", WRITERS)
def test_a_dangling_symlink_is_refused(writer, source, tmp_path):
    link = tmp_path / "dangling.bin"
    link.symlink_to(tmp_path / "missing" / "x.bin")
    with pytest.raises(OSError, match=r"dangling.bin: a symbolic link whose target cannot be reached"):
        WRITERS[writer](source, link)
    assert link.is_symlink()


# ---- 2. nothing left behind ----------------------------------------------------------------------


def test_no_name_exists_until_the_quantized_file_is_complete(source, tmp_path):
    if not unnamed_files_work(tmp_path):
        pytest.skip("this system or file system gives no unnamed files (O_TMPFILE)")
    seen = []
    quantize(source, tmp_path / "q.bin", progress=lambda done, total, name: seen.append(sorted(os.listdir(tmp_path))))
    assert seen and all(names == ["model-fp16.bin"] for names in seen)
    assert sorted(os.listdir(tmp_path)) == ["model-fp16.bin", "q.bin"]


def test_no_name_exists_until_the_binwriter_file_is_complete(tmp_path):
    if not unnamed_files_work(tmp_path):
        pytest.skip("this system or file system gives no unnamed files (O_TMPFILE)")
    with BinWriter(tmp_path / "m.bin", 4, 4, 1, "FP32") as writer:
        writer.write_tensor("emb.weight", np.ones((4, 4), np.float32))
        assert os.listdir(tmp_path) == []
    assert os.listdir(tmp_path) == ["m.bin"]


@pytest.fixture(params=["unnamed", "named"])
def temp_kind(request, monkeypatch, tmp_path):
    """Each writer's two ways: an unnamed file, and the temporary name other systems get."""
    if request.param == "unnamed" and not unnamed_files_work(tmp_path):
        pytest.skip("this system or file system gives no unnamed files (O_TMPFILE)")
    if request.param == "named":
        monkeypatch.setattr(atomic_file, "_open_unnamed", lambda directory, target: None)
    return request.param


def test_a_cancelled_quantization_leaves_nothing(source, tmp_path):
    def cancel(done, total, name):
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        quantize(source, tmp_path / "q.bin", progress=cancel)
    assert sorted(os.listdir(tmp_path)) == ["model-fp16.bin"]


def test_an_exception_in_a_binwriter_leaves_nothing(temp_kind, tmp_path):
    with pytest.raises(ValueError, match="written twice"):
        with BinWriter(tmp_path / "m.bin", 4, 4, 1, "FP32") as writer:
            writer.write_tensor("emb.weight", np.ones((4, 4), np.float32))
            writer.write_tensor("emb.weight", np.ones((4, 4), np.float32))
    assert os.listdir(tmp_path) == []


def _limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))


@pytest.mark.parametrize("named", [False, True])
def test_a_full_disk_fails_the_binwriter_cleanly(named, tmp_path):
    """RLIMIT_FSIZE makes every write past 4 KiB fail with EFBIG, as a full disk fails with ENOSPC:
    the first error is the one raised, and abort() removes the file instead of raising again."""
    script = f"""
import numpy as np, os, sys
from rwkvcpp import atomic_file
from rwkvcpp.writer import BinWriter
if {named}:
    atomic_file._open_unnamed = lambda directory, target: None
try:
    with BinWriter(sys.argv[1], 4, 1024, 1, "FP32") as writer:
        writer.write_tensor("emb.weight", np.ones((4, 1024), np.float32))
except OSError as e:
    print(type(e).__name__, e.errno)
"""
    dst = tmp_path / "m.bin"
    r = subprocess.run([sys.executable, "-c", script, dst], capture_output=True, text=True, timeout=120,
                       preexec_fn=_limit_file_size)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["OSError", str(27)]  # EFBIG, not a second error from the cleanup
    assert os.listdir(tmp_path) == []


def test_a_full_disk_fails_quantize_cleanly(source, tmp_path):
    dst = tmp_path / "q.bin"
    script = "import sys; from rwkvcpp import _core; _core.quantize_file(sys.argv[1], sys.argv[2], 9)"
    r = subprocess.run([sys.executable, "-c", script, source, dst], capture_output=True, text=True, timeout=120,
                       preexec_fn=_limit_file_size)
    assert r.returncode == 1 and "ModelIOError: " + f"{dst}: write failed: File too large" in r.stderr
    assert sorted(os.listdir(tmp_path)) == ["model-fp16.bin"]


# `rwkvcpp quantize SRC DST Q8_0` with a progress bar that sends the process a signal after the
# third tensor: SIGTERM through the command line's handling, or SIGKILL.
_KILLED_RUN = """
import os, signal, sys
import rwkvcpp.cli.quantize as command
from rwkvcpp.cli import main
class Killing:
    def __init__(self, total, *args):
        self.total, self.n = total, 0
    def set_total(self, total):
        self.total = total
    def update(self, n, postfix=""):
        self.n += n
        if self.n == 3:
            os.kill(os.getpid(), getattr(signal, sys.argv[3]))
    def close(self):
        pass
command.Progress = Killing
sys.exit(main(["quantize", sys.argv[1], sys.argv[2], "Q8_0"]))
"""


def test_sigterm_during_quantize_leaves_nothing(source, tmp_path):
    r = subprocess.run([sys.executable, "-c", _KILLED_RUN, source, tmp_path / "q.bin", "SIGTERM"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 143 and "terminated" in r.stderr, r.stderr
    assert sorted(os.listdir(tmp_path)) == ["model-fp16.bin"]


def test_sigkill_during_quantize_leaves_nothing(source, tmp_path):
    if not unnamed_files_work(tmp_path):
        pytest.skip("only an unnamed file (O_TMPFILE) survives SIGKILL without a trace")
    r = subprocess.run([sys.executable, "-c", _KILLED_RUN, source, tmp_path / "q.bin", "SIGKILL"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL
    assert sorted(os.listdir(tmp_path)) == ["model-fp16.bin"]


# ---- 3. a model file changed under a loaded model -------------------------------------------------


def test_a_truncated_model_file_raises_instead_of_sigbus(source):
    model = Model(source)
    model.eval(1)
    os.truncate(source, 4096)
    with pytest.raises(ModelIOError, match=r"model-fp16.bin: the model file was truncated after it was loaded"):
        model.eval(1)
    with pytest.raises(ModelIOError, match="truncated"):
        model.eval_batch([[1], [2]])


def test_a_model_file_rewritten_in_place_raises(source, model_files):
    model = Model(source)
    expected, _ = model.eval(1)
    data = bytearray(source.read_bytes())
    data[-4:] = b"\xff\xff\xff\x7f"  # same size, other numbers (what `cp other.bin model.bin` does in place)
    time.sleep(0.01)
    with open(source, "r+b") as f:
        f.write(data)
    os.utime(source, ns=(time.time_ns(), time.time_ns()))
    with pytest.raises(ModelIOError, match=r"the model file was modified after it was loaded"):
        model.eval(1)


def test_mmap_false_keeps_a_private_copy(source):
    mapped, copied = Model(source), Model(source, mmap=False)
    expected, _ = mapped.eval_sequence([1, 2, 3])
    os.truncate(source, 0)
    logits, _ = copied.eval_sequence([1, 2, 3])
    np.testing.assert_array_equal(logits, expected)


def test_generate_no_mmap(source):
    r = subprocess.run([sys.executable, "-m", "rwkvcpp", "generate", source, "--no-mmap", "--tokenizer", "bytes",
                        "--prompt", "hi", "-n", "3", "--seed", "1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


# ---- 4. non-finite numbers -----------------------------------------------------------------------


def poison(path: Path, name: str, index: int = 5, value: float = float("nan")) -> None:
    """Puts `value` at element `index` of float tensor `name` in the file."""
    record = next(r for r in fmt.load_records(path) if r.name == name)
    width = 4 if record.type_id == fmt.FP32 else 2
    with open(path, "r+b") as f:
        f.seek(record.offset + index * width)
        f.write(struct.pack("<f" if width == 4 else "<e", value))


def test_nan_weights_raise_a_clear_error(source):
    poison(source, "head.weight")
    model = Model(source)
    with pytest.raises(NonFiniteError, match=r"the logits hold NaN .*check the file with `rwkvcpp info --verify`"):
        model.eval(1)
    with pytest.raises(NonFiniteError, match=r"sequence 0: the logits hold NaN"):
        model.eval_batch([[1], [2]])


def test_a_nan_state_raises_a_clear_error(source):
    model = Model(source)
    state = model.init_state()
    state[:] = np.inf
    with pytest.raises(NonFiniteError, match=r"the logits hold (NaN|an infinity)"):
        model.eval(1, state)


def test_verify_finds_nan_floats_and_non_finite_block_scales(source, tmp_path):
    assert verify_file(source) == []
    quantized = tmp_path / "q8.bin"
    quantize(source, quantized)
    poison(source, "blocks.1.ffn.key.weight", index=130, value=float("inf"))
    assert verify_file(source) == [{"name": "blocks.1.ffn.key.weight", "n_bad": 1, "first_bad": 130}]
    record = next(r for r in fmt.load_records(quantized) if r.name == "blocks.0.att.key.weight")
    with open(quantized, "r+b") as f:  # the scale of the second Q8_0 block (34 bytes: fp16 d, 32 int8)
        f.seek(record.offset + 34)
        f.write(struct.pack("<e", float("nan")))
    [problem] = verify_file(quantized)
    assert problem["name"] == "blocks.0.att.key.weight" and problem["first_bad"] >= 32
    r = subprocess.run([sys.executable, "-m", "rwkvcpp", "info", quantized, "--verify"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1
    assert "NOT FINITE:   1 tensors" in r.stdout and "blocks.0.att.key.weight: " in r.stdout


def test_quantizing_a_nan_weight_is_refused(source, tmp_path):
    poison(source, "blocks.1.att.key.weight", index=200)
    with pytest.raises(ModelFileError, match=r"tensor 'blocks.1.att.key.weight' holds a NaN or infinite value "
                                             r"\(row 1, column 72\), which cannot be quantized"):
        quantize(source, tmp_path / "q.bin")
    assert sorted(os.listdir(tmp_path)) == ["model-fp16.bin"]


# ---- 9. FIFOs and other non-regular inputs -------------------------------------------------------


def test_model_on_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "model.bin"
    os.mkfifo(fifo)
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(_error_of(lambda: Model(fifo))), daemon=True)
    thread.start()
    thread.join(30)
    assert outcome == ["ModelIOError: " + f"{fifo}: a FIFO, not a regular file; give a model file"]


def _error_of(call) -> str:
    try:
        call()
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return "no error"


@pytest.mark.parametrize("command", ["info", "generate"])
def test_cli_on_a_fifo_is_refused(command, tmp_path):
    fifo = tmp_path / "model.bin"
    os.mkfifo(fifo)
    extra = ["--prompt", "hi"] if command == "generate" else []
    r = subprocess.run([sys.executable, "-m", "rwkvcpp", command, fifo, *extra], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2
    last_line = r.stderr.strip().splitlines()[-1]
    assert last_line == f"rwkvcpp {command}: error: {fifo}: a FIFO, not a regular file; give a model file"


# ---- 10. sizes that overflow ---------------------------------------------------------------------


def test_a_record_whose_element_count_overflows_is_refused(tmp_path):
    path = tmp_path / "huge.bin"
    name = b"blocks.0.huge"
    with open(path, "wb") as f:
        f.write(struct.pack("<6i", fmt.MAGIC, 101, 4, 4, 1, 0))
        f.write(struct.pack("<3i3i", 3, len(name), 0, 1 << 24, 1 << 20, 1 << 20) + name)  # 2^64 elements, no data
    with pytest.raises(ModelFileError, match=r"huge.bin: tensor #0 is implausibly large \(more than 2\^40 elements\)"):
        Model(path)


# ---- 12. smaller edges ---------------------------------------------------------------------------


def test_a_path_with_nul_is_refused(source):
    with pytest.raises(ArgumentError, match="a file path cannot contain a NUL character"):
        Model(os.fspath(source) + "\0junk")
    with pytest.raises(ArgumentError, match="NUL"):
        quantize(source, os.fspath(source) + ".q\0junk")


def test_threads_are_capped_at_four_per_core(source):
    cores = os.cpu_count()
    with pytest.raises(ArgumentError, match=rf"100000 threads is more than 4 per core on this machine's {cores} "
                                            rf"cores \(at most {4 * cores}\)"):
        Model(source, threads=100000)
    assert Model(source, threads=4 * cores).threads == 4 * cores


def test_bools_among_tokens_are_refused(source):
    model = Model(source)
    for tokens in ([1, True], (False,), [np.bool_(True), 2]):
        with pytest.raises(ArgumentError, match="not bools"):
            model.eval_sequence(tokens)


def _run_on_a_terminal(args) -> bytes:
    leader, follower = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "rwkvcpp", *args], stdout=follower, stderr=subprocess.DEVNULL,
                               stdin=subprocess.DEVNULL)
    os.close(follower)
    output = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 60)
        try:
            chunk = os.read(leader, 4096) if ready else b""
        except OSError:  # EIO: the other end closed
            chunk = b""
        if not chunk:
            break
        output += chunk
    process.wait(60)
    os.close(leader)
    return output


def test_generate_escapes_control_characters_on_a_terminal_only(source, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_bytes(b"a\x1b]0;owned\x07b\x00c")
    args = ["generate", os.fspath(source), "--tokenizer", "bytes", "--echo", "-n", "1", "--seed", "1",
            "--prompt-file", os.fspath(prompt)]
    shown = _run_on_a_terminal(args)
    assert b"a\\x1b]0;owned\\x07b\\x00c" in shown and b"\x1b" not in shown and b"\x07" not in shown
    piped = subprocess.run([sys.executable, "-m", "rwkvcpp", *args], capture_output=True, timeout=120)
    assert b"a\x1b]0;owned\x07b\x00c" in piped.stdout


def test_chat_replaces_invalid_utf8_and_goes_on(source):
    r = subprocess.run([sys.executable, "-m", "rwkvcpp", "chat", source, "--tokenizer", "bytes", "-n", "2",
                        "--seed", "1"], input=b"caf\xe9 \xff\n+help\n", capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "caf\ufffd \ufffd".encode() in r.stdout and b"+reset" in r.stdout + r.stderr
