"""rwkvcpp beside llama.cpp (and rwkv.cpp) on the same model files, in interleaved rounds, as a
markdown report anyone can reproduce on their own machine.

    python benchmarks/compare.py FOLDER [--llama-bench PATH] [--rwkv-cpp PATH/librwkv.so]
        [--rounds 3] [--threads 2 | --threads 1,2] [--prompt 512] [--tokens 32]
        [--models GLOB] [--gguf-dir DIR] [--out FILE.md]

FOLDER holds rwkv.cpp .bin models (benchmarks/make_models.py makes release-shaped ones); --models
picks some of them by file name (e.g. 'v7-0.1b-*'). Every measurement runs in a process of its own,
so the engines never share one:

* rwkvcpp: rwkvcpp.benchmark.run_benchmark (what `rwkvcpp bench` runs) in a child Python: one
  warm-up token, then TOKENS tokens decoded one at a time, then the PROMPT tokens in one
  eval_sequence call; it also measures the machine's read bandwidth (reported per round).
* llama.cpp: `llama-bench -m GGUF -t THREADS -p PROMPT -n TOKENS -r 1 -o json` (with its warm-up
  run): decode is its tg test, prompt its pp test. The GGUF is the .bin converted by
  rwkvcpp.conversion.gguf (as `rwkvcpp convert model.bin model.gguf`: the same block formats and
  bytes), kept in --gguf-dir and reused while newer than its .bin. llama.cpp runs RWKV-6 and RWKV-7
  only: other architectures get "-".
* rwkv.cpp (only with --rwkv-cpp, a librwkv built from rwkv.cpp's sources): its C API through
  ctypes in a child Python that loads nothing else: one warm-up rwkv_eval, then TOKENS timed
  rwkv_eval calls; the prompt is rwkv_eval_sequence_in_chunks over PROMPT tokens with chunks of 16
  (its Python wrapper's) and of 128, each after an untimed warm-up chunk (rwkv.cpp builds a graph
  per sequence length), the faster kept.

A round runs, for each model and thread count, each engine one after the other; the rounds repeat
that whole sequence, so a slow spell of the machine hits all the engines alike. The report gives
each engine's best figure and the range over the rounds, and rwkvcpp's speed over each peer's per
round (decode: their ms/token over ours; prompt: our tokens/s over theirs; above 1: rwkvcpp is
faster); its header has the CPU, its SIMD flags, the versions and builds, and the bandwidth of each
round. The last column is the largest share of the CPU time other processes took while the row
was measured (Linux): rerun when it is not about 0. --out also writes the report to a file (whole
or not at all).

llama-bench is built from llama.cpp's sources (CPU only), e.g. from the copy that llama-cpp-python's
sdist vendors (benchmarks/README.md):
    cmake -S llama.cpp -B /tmp/llama-build -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release
    cmake --build /tmp/llama-build --target llama-bench -j
Without --llama-bench, a llama-bench on PATH is used; without either the llama.cpp columns are left
out. Errors in the arguments exit with status 2; a peer failing on one model is reported in its
cell ("failed: <reason>") and the run goes on.
"""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import glob
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Optional

try:
    import resource
except ImportError:  # not on Windows; the others' CPU column then shows "-"
    resource = None

# Nothing of rwkvcpp is imported at the top: the rwkv.cpp child imports this module and must load no
# other engine. The report's process imports rwkvcpp only to read headers and convert to GGUF.

HERE = os.path.dirname(os.path.abspath(__file__))
ENGINES = ("rwkvcpp", "llama.cpp", "rwkv.cpp")
CHUNKS = (16, 128)
X86_FLAGS = ("avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
             "avx512_fp16")
ARM_FLAGS = ("neon", "asimd", "asimdhp", "asimddp", "i8mm", "bf16", "sve", "sve2")


class UsageError(Exception):
    """A bad argument: one line on stderr, exit status 2."""


# ---------------------------------------------------------------- shared with peer_batched.py

def to_gguf(path: str, gguf_dir: str) -> str:
    """The GGUF twin of a .bin in gguf_dir, converted unless one newer than the .bin is there;
    ValueError for an architecture llama.cpp does not run."""
    from rwkvcpp.conversion.gguf import bin_to_gguf

    gguf = os.path.join(gguf_dir, os.path.splitext(os.path.basename(path))[0] + ".gguf")
    if not os.path.exists(gguf) or os.path.getmtime(gguf) < os.path.getmtime(path):
        os.makedirs(gguf_dir, exist_ok=True)
        bin_to_gguf(path, gguf)  # written to a temporary name, renamed at the end
    return gguf


class OtherCpu:
    """Share of the machine's CPU time that other processes used between start() and stop(), in %
    (Linux /proc/stat; None elsewhere). Our own runs (this process and the children it waited for)
    are left out, unlike in the load average."""

    def start(self) -> None:
        self.t0, self.b0, self.o0 = time.monotonic(), self._busy(), self._own()

    def stop(self):
        b1 = self._busy()
        if b1 is None or self.b0 is None:
            return None
        wall = (time.monotonic() - self.t0) * (os.cpu_count() or 1)
        return max(0.0, 100.0 * ((b1 - self.b0) - (self._own() - self.o0)) / wall) if wall > 0 else None

    @staticmethod
    def _busy():  # seconds of non-idle CPU time, all CPUs
        if resource is None:
            return None
        try:
            with open("/proc/stat") as f:
                ticks = [int(v) for v in f.readline().split()[1:]]
        except OSError:
            return None
        return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait

    @staticmethod
    def _own():
        if resource is None:
            return 0.0
        r = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        return sum(u.ru_utime + u.ru_stime for u in r)


# ---------------------------------------------------------------- measurements (one process each)

class MeasureError(Exception):
    """One engine could not measure one model; the message goes in its table cell."""


RWKVCPP_CHILD = r"""
import json, sys
import rwkvcpp
from rwkvcpp.benchmark import run_benchmark
path, threads, tokens, prompt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
r = run_benchmark(path, threads=threads, decode_tokens=tokens, prompt_tokens=prompt)
print(json.dumps({"decode_ms": r.decode_ms_per_token, "prompt_tps": r.prompt_tokens_per_second,
                  "bandwidth_gbps": r.bandwidth_gbps, "kernels": r.kernels, "threads": r.threads,
                  "version": rwkvcpp.__version__}))
"""

RWKV_CPP_CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import compare
a = sys.argv[2:]
try:
    result = compare.rwkv_cpp_measure(a[0], a[1], *map(int, a[2:])) if len(a) > 1 else compare.rwkv_cpp_info(a[0])
except Exception as e:
    sys.exit(f"error: {e}")
print(json.dumps(result))
"""


def _reason(run: subprocess.CompletedProcess) -> str:
    """The last line a failed child wrote (its error), with its exit status."""
    lines = [line.strip() for line in (run.stderr or "").splitlines() + (run.stdout or "").splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    last = (errors or lines or ["no output"])[-1]
    status = f"signal {-run.returncode}" if run.returncode < 0 else f"exit {run.returncode}"
    return f"{last[:300]} ({status})"


def _child(cmd: list, timeout: float) -> subprocess.CompletedProcess:
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise MeasureError(f"timed out after {timeout:.0f} s") from None
    except OSError as e:
        raise MeasureError(str(e)) from None
    if run.returncode != 0:
        raise MeasureError(_reason(run))
    return run


def _last_json(run: subprocess.CompletedProcess):
    lines = [line for line in run.stdout.splitlines() if line.strip()]
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        raise MeasureError(f"no result in its output: {_reason(run)}") from None


def measure_rwkvcpp(path: str, threads: int, prompt: int, tokens: int, timeout: float) -> dict:
    run = _child([sys.executable, "-c", RWKVCPP_CHILD, path, str(threads), str(tokens), str(prompt)], timeout)
    return _last_json(run)


def measure_llama(binary: str, gguf: str, threads: int, prompt: int, tokens: int, timeout: float) -> dict:
    """{'decode_ms', 'prompt_tps', 'build'} from one llama-bench run of one repetition."""
    cmd = [binary, "-m", gguf, "-t", str(threads), "-p", str(prompt), "-n", str(tokens), "-r", "1", "-o", "json"]
    run = _child(cmd, timeout)
    try:
        tests = json.loads(run.stdout)
    except ValueError:
        raise MeasureError(f"llama-bench wrote no JSON: {_reason(run)}") from None
    out = {}
    for test in tests:
        out["build"] = f"{test.get('build_commit', '?')} (build {test.get('build_number', '?')})"
        if test.get("n_gen", 0) > 0:
            out["decode_ms"] = 1000.0 / test["avg_ts"]
        elif test.get("n_prompt", 0) > 0:
            out["prompt_tps"] = test["avg_ts"]
    if "decode_ms" not in out or "prompt_tps" not in out:
        raise MeasureError("llama-bench's JSON lacks the pp or tg test")
    return out


def measure_rwkv_cpp(library: str, path: str, threads: int, prompt: int, tokens: int, timeout: float) -> dict:
    run = _child([sys.executable, "-c", RWKV_CPP_CHILD, HERE, library, path, str(threads), str(prompt), str(tokens)],
                 timeout)
    return _last_json(run)


# rwkv.cpp's public C API through ctypes (rwkv.h). Runs in the child only.

def _rwkv_cpp_library(library: str):
    import ctypes

    lib = ctypes.CDLL(os.path.abspath(library))
    floats, ctx = ctypes.POINTER(ctypes.c_float), ctypes.c_void_p
    missing = [name for name in ("rwkv_init_from_file", "rwkv_eval", "rwkv_eval_sequence_in_chunks", "rwkv_free")
               if not hasattr(lib, name)]
    sizes = next(((s, l) for s, l in (("rwkv_get_state_len", "rwkv_get_logits_len"),
                                      ("rwkv_get_state_buffer_element_count", "rwkv_get_logits_buffer_element_count"))
                  if hasattr(lib, s) and hasattr(lib, l)), None)
    if sizes is None:
        missing.append("rwkv_get_state_len/rwkv_get_logits_len")
    if missing:
        raise RuntimeError(f"{library} does not export {', '.join(missing)}: not rwkv.cpp's librwkv, or too old")
    # Newer rwkv.cpp takes (path, n_threads, n_gpu_layers), older (path, n_threads): passing a third
    # argument of 0 suits both, since the caller cleans up the arguments in the C calling conventions.
    lib.rwkv_init_from_file.argtypes = [ctypes.c_char_p, ctypes.c_uint32, ctypes.c_uint32]
    lib.rwkv_init_from_file.restype = ctx
    lib.rwkv_eval.argtypes = [ctx, ctypes.c_uint32, floats, floats, floats]
    lib.rwkv_eval.restype = ctypes.c_bool
    lib.rwkv_eval_sequence_in_chunks.argtypes = [ctx, ctypes.POINTER(ctypes.c_uint32), ctypes.c_size_t,
                                                 ctypes.c_size_t, floats, floats, floats]
    lib.rwkv_eval_sequence_in_chunks.restype = ctypes.c_bool
    lib.rwkv_free.argtypes = [ctx]
    lib.rwkv_free.restype = None
    lib.state_len, lib.logits_len = getattr(lib, sizes[0]), getattr(lib, sizes[1])
    for fn in (lib.state_len, lib.logits_len):
        fn.argtypes, fn.restype = [ctx], ctypes.c_size_t
    if hasattr(lib, "rwkv_get_last_error"):
        lib.rwkv_get_last_error.argtypes, lib.rwkv_get_last_error.restype = [ctx], ctypes.c_int
    if hasattr(lib, "rwkv_get_system_info_string"):
        lib.rwkv_get_system_info_string.argtypes, lib.rwkv_get_system_info_string.restype = [], ctypes.c_char_p
    return lib


def _rwkv_cpp_failed(lib, ctx, what: str) -> RuntimeError:
    flags = lib.rwkv_get_last_error(ctx) if hasattr(lib, "rwkv_get_last_error") else None
    return RuntimeError(f"{what} failed" + (f" (rwkv_error_flags 0x{flags:x})" if flags is not None else ""))


def rwkv_cpp_info(library: str) -> dict:
    """What the report's header says about the library (checked before the rounds)."""
    lib = _rwkv_cpp_library(library)
    info = lib.rwkv_get_system_info_string() if hasattr(lib, "rwkv_get_system_info_string") else None
    return {"system_info": info.decode(errors="replace").strip() if info else None}


def rwkv_cpp_measure(library: str, path: str, threads: int, prompt: int, tokens: int, seed: int = 0) -> dict:
    """Decode ms/token and prompt tokens/s of rwkv.cpp's library on one model file."""
    import ctypes
    import random

    lib = _rwkv_cpp_library(library)
    ctx = lib.rwkv_init_from_file(os.fsencode(path), threads, 0)
    if not ctx:
        raise _rwkv_cpp_failed(lib, None, f"rwkv_init_from_file({path!r})")
    try:
        n_state, n_logits = lib.state_len(ctx), lib.logits_len(ctx)
        state, logits = (ctypes.c_float * n_state)(), (ctypes.c_float * n_logits)()
        rng = random.Random(seed)
        ids = [rng.randrange(n_logits) for _ in range(max(tokens, prompt) + 1)]  # logits: one per vocabulary entry

        if not lib.rwkv_eval(ctx, ids[0], None, state, logits):  # warm-up, from the initial state
            raise _rwkv_cpp_failed(lib, ctx, "rwkv_eval")
        start = time.perf_counter()
        for token in ids[1:tokens + 1]:
            if not lib.rwkv_eval(ctx, token, state, state, logits):
                raise _rwkv_cpp_failed(lib, ctx, "rwkv_eval")
        decode_ms = (time.perf_counter() - start) / tokens * 1000.0

        sequence = (ctypes.c_uint32 * prompt)(*ids[:prompt])
        best = None
        for chunk in CHUNKS:
            # untimed: one chunk, so that the timed pass finds the graph of that length built
            if not lib.rwkv_eval_sequence_in_chunks(ctx, sequence, min(chunk, prompt), chunk, None, state, logits):
                raise _rwkv_cpp_failed(lib, ctx, "rwkv_eval_sequence_in_chunks")
            start = time.perf_counter()
            if not lib.rwkv_eval_sequence_in_chunks(ctx, sequence, prompt, chunk, None, state, logits):
                raise _rwkv_cpp_failed(lib, ctx, "rwkv_eval_sequence_in_chunks")
            tps = prompt / (time.perf_counter() - start)
            if best is None or tps > best[0]:
                best = (tps, chunk)
        return {"decode_ms": decode_ms, "prompt_tps": best[0], "chunk": best[1]}
    finally:
        lib.rwkv_free(ctx)


# ---------------------------------------------------------------- the machine

def _cpuinfo() -> list:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read().splitlines()
    except OSError:
        return []


def _lscpu() -> dict:
    if not shutil.which("lscpu"):
        return {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, env=dict(os.environ, LC_ALL="C"))
    except (OSError, subprocess.SubprocessError):
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.stdout.splitlines()) if v}


def machine() -> dict:
    """CPU model, the SIMD flags that matter to these engines (present and absent), core counts, memory."""
    info, lscpu = _cpuinfo(), _lscpu()

    def field_(name):
        for line in info:
            key, _, value = line.partition(":")
            if key.strip().lower() == name and value.strip():
                return value.strip()
        return None

    model = field_("model name") or lscpu.get("Model name") or platform.processor() or "unknown"
    flags = set((field_("flags") or field_("features") or lscpu.get("Flags", "")).split())
    arm = platform.machine().lower() in ("aarch64", "arm64") or platform.machine().lower().startswith("arm")
    wanted = ARM_FLAGS if arm else X86_FLAGS
    present = [f for f in wanted if f in flags] + sorted(f for f in flags if f.startswith("amx"))
    absent = [f for f in wanted if f not in flags] + ([] if arm or any(f.startswith("amx") for f in flags) else ["amx"])
    cores = set(_core_ids(info))
    cpus = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
    memory = None
    try:
        with open("/proc/meminfo") as f:
            memory = int(f.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return {"model": model, "present": present, "absent": absent, "known": bool(flags), "cpus": cpus,
            "usable": usable, "cores": len(cores) or None, "memory": memory,
            "system": f"{platform.system()} {platform.release()} {platform.machine()}"}


def _core_ids(info: list):
    """(physical id, core id) of each logical CPU listed in /proc/cpuinfo (x86 lists them)."""
    pid = cid = None
    for line in info + [""]:
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "physical id":
            pid = value
        elif key == "core id":
            cid = value
        elif not line.strip():
            if cid is not None:
                yield pid, cid
            pid = cid = None


# ---------------------------------------------------------------- the run

@dataclass
class ModelFile:
    path: str
    name: str
    format: str
    arch: str
    gguf: Optional[str] = None
    no_llama: Optional[str] = None  # why llama.cpp does not run it: "-" (architecture) or "failed: ..."


@dataclass
class Measurement:
    round: int
    model: str
    threads: int
    engine: str
    result: Optional[dict] = None
    error: Optional[str] = None
    others: Optional[float] = None


@dataclass
class Run:
    args: argparse.Namespace
    models: list
    engines: list
    measurements: list = field(default_factory=list)
    llama_note: str = ""
    rwkv_cpp_info: dict = field(default_factory=dict)
    started: str = ""


def thread_list(text: str) -> list:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected thread counts such as 2 or 1,2, not {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"thread counts must be at least 1: {text!r}")
    return counts


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, status 2 (argparse's own adds the usage)
        raise UsageError(message)


def parse_args(argv=None) -> argparse.Namespace:
    p = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="folder of .bin models (benchmarks/make_models.py)")
    p.add_argument("--llama-bench", metavar="PATH", help="a llama-bench binary (default: llama-bench on PATH, if any)")
    p.add_argument("--rwkv-cpp", metavar="LIBRARY",
                   help="rwkv.cpp's shared library (librwkv.so), built from its sources")
    p.add_argument("--rounds", type=positive, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--threads", type=thread_list, default=[2], help="thread counts, e.g. 2 or 1,2 (default 2)")
    p.add_argument("--prompt", type=positive, default=512, help="prompt tokens (default 512)")
    p.add_argument("--tokens", type=positive, default=32, help="decoded tokens (default 32)")
    p.add_argument("--models", metavar="GLOB", default="*.bin", help="which files of FOLDER (default *.bin)")
    p.add_argument("--gguf-dir", default=os.path.join(tempfile.gettempdir(), "rwkv-bench-gguf"),
                   help="where the GGUF conversions for llama.cpp are kept (default: %(default)s)")
    p.add_argument("--timeout", type=positive, default=1800, help="seconds one measurement may take (default 1800)")
    p.add_argument("--out", metavar="FILE.md", help="also write the report to this file")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> Run:
    from rwkvcpp import format as F
    from rwkvcpp.arch import detect

    if not os.path.isdir(args.folder):
        raise UsageError(f"{args.folder}: no such folder")
    paths = sorted(p for p in glob.glob(os.path.join(glob.escape(args.folder), "*.bin"))
                   if fnmatch.fnmatch(os.path.basename(p), args.models) and os.path.isfile(p))
    if not paths:
        raise UsageError(f"no .bin files matching {args.models!r} in {args.folder}; make some with "
                         "benchmarks/make_models.py")
    if args.out:
        from rwkvcpp.atomic_file import check_destination

        folder = os.path.dirname(os.path.abspath(args.out))
        if not os.path.isdir(folder):
            raise UsageError(f"--out {args.out}: no folder {folder}")
        try:
            check_destination(args.out)
        except OSError as e:
            raise UsageError(f"--out {e}") from None

    engines, note = ["rwkvcpp"], ""
    if args.llama_bench:
        if not (os.path.isfile(args.llama_bench) and os.access(args.llama_bench, os.X_OK)):
            raise UsageError(f"--llama-bench {args.llama_bench}: not an executable file")
        engines.append("llama.cpp")
    elif shutil.which("llama-bench"):
        args.llama_bench = shutil.which("llama-bench")
        engines.append("llama.cpp")
    else:
        note = "not run (no --llama-bench given and none on PATH)"
    info = {}
    if args.rwkv_cpp:
        if not os.path.isfile(args.rwkv_cpp):
            raise UsageError(f"--rwkv-cpp {args.rwkv_cpp}: no such file")
        try:  # loaded in a child, as for the measurements
            info = _last_json(_child([sys.executable, "-c", RWKV_CPP_CHILD, HERE, args.rwkv_cpp], 120))
        except MeasureError as e:
            raise UsageError(f"--rwkv-cpp {args.rwkv_cpp}: cannot use it: {e}") from None
        engines.append("rwkv.cpp")

    models = []
    for path in paths:
        name = os.path.splitext(os.path.basename(path))[0]
        try:
            header = F.read_header(path)
            arch = detect(r.name for r in F.iter_records(path))
        except (OSError, ValueError) as e:
            raise UsageError(f"{path}: not a model file rwkvcpp reads: {str(e).splitlines()[0]}") from None
        m = ModelFile(path, name, F.type_name(header.data_type), arch.name if arch else "?")
        if "llama.cpp" in engines:
            if m.arch not in ("v6", "v7"):
                m.no_llama = "-"
            else:
                try:
                    print(f"converting {name} to GGUF for llama.cpp (in {args.gguf_dir})", file=sys.stderr, flush=True)
                    m.gguf = to_gguf(path, args.gguf_dir)
                except (OSError, ValueError) as e:
                    m.no_llama = f"failed: GGUF conversion: {str(e).splitlines()[0]}"
        models.append(m)
    return Run(args, models, engines, llama_note=note, rwkv_cpp_info=info)


def measure(run: Run, progress=None) -> None:
    args = run.args
    run.started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    total = args.rounds * len(run.models) * len(args.threads) * len(run.engines)
    done = 0
    for rnd in range(1, args.rounds + 1):
        for m in run.models:
            for threads in args.threads:
                for engine in run.engines:
                    done += 1
                    rec = Measurement(rnd, m.name, threads, engine)
                    if engine == "llama.cpp" and m.no_llama:
                        rec.error = m.no_llama
                    else:
                        busy = OtherCpu()
                        busy.start()
                        try:
                            if engine == "rwkvcpp":
                                rec.result = measure_rwkvcpp(m.path, threads, args.prompt, args.tokens, args.timeout)
                            elif engine == "llama.cpp":
                                rec.result = measure_llama(args.llama_bench, m.gguf, threads, args.prompt, args.tokens,
                                                           args.timeout)
                            else:
                                rec.result = measure_rwkv_cpp(args.rwkv_cpp, m.path, threads, args.prompt, args.tokens,
                                                              args.timeout)
                        except MeasureError as e:
                            rec.error = f"failed: {e}"
                        rec.others = busy.stop()
                    run.measurements.append(rec)
                    if progress:
                        progress(done, total, rec)


# ---------------------------------------------------------------- the report

def _num(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _figure(records: list, key: str, best) -> str:
    """Best (min-max) over the rounds, or why there is none."""
    values = [r.result[key] for r in records if r.result]
    if not values:
        errors = [r.error for r in records if r.error]
        return _cell(errors[-1]) if errors else "-"
    text = _num(best(values)) + (f" ({_num(min(values))}-{_num(max(values))})" if len(values) > 1 else "")
    failed = [r for r in records if r.error]
    if failed:  # the last reason; "Every run" has each
        rounds = ", ".join(str(r.round) for r in failed)
        reason = failed[-1].error[len("failed: "):] if failed[-1].error.startswith("failed: ") else failed[-1].error
        text += _cell(f"; round{'s' if len(failed) > 1 else ''} {rounds} failed: {reason}")
    return text


def _ratios(ours: list, theirs: list, key: str, invert: bool) -> str:
    """rwkvcpp's speed over the peer's in each round where both measured."""
    mine = {r.round: r.result[key] for r in ours if r.result}
    out = []
    for r in theirs:
        if r.result and r.round in mine:
            a, b = mine[r.round], r.result[key]
            out.append(b / a if invert else a / b)
    return ", ".join(f"{x:.2f}" for x in out) + "x" if out else "-"


def report(run: Run, mach: dict, command: str) -> str:
    args = run.args
    by = {}
    for rec in run.measurements:
        by.setdefault((rec.model, rec.threads, rec.engine), []).append(rec)
    ours = [r.result for r in run.measurements if r.engine == "rwkvcpp" and r.result]
    peers = [e for e in run.engines if e != "rwkvcpp"]

    lines = [f"## rwkvcpp beside {', '.join(peers) if peers else 'no peer'} on {mach['model']}", ""]
    lines.append(f"- Date: {run.started}; {args.rounds} interleaved round{'s' if args.rounds > 1 else ''}, "
                 f"prompt {args.prompt} tokens, decode {args.tokens} tokens, "
                 f"{', '.join(map(str, args.threads))} thread{'s' if args.threads != [1] else ''}")
    cores = f", {mach['cores']} cores" if mach["cores"] else ""
    usable = f" ({mach['usable']} usable here)" if mach["usable"] != mach["cpus"] else ""
    memory = f", {mach['memory'] / 2**30:.0f} GiB" if mach["memory"] else ""
    lines.append(f"- CPU: {mach['model']}, {mach['cpus']} logical CPUs{usable}{cores}{memory}; {mach['system']}")
    if mach["known"]:
        lines.append(f"- CPU flags: {' '.join(mach['present']) or 'none of those below'}"
                     f"{'; absent: ' + ' '.join(mach['absent']) if mach['absent'] else ''}")
    else:
        lines.append("- CPU flags: unknown (no /proc/cpuinfo or lscpu)")
    versions = sorted({r["version"] for r in ours}) or ["?"]
    kernels = sorted({r["kernels"] for r in ours}) or ["?"]
    lines.append(f"- rwkvcpp {', '.join(versions)}, kernels {', '.join(kernels)}")
    if "llama.cpp" in run.engines:
        builds = sorted({r.result["build"] for r in run.measurements if r.engine == "llama.cpp" and r.result})
        lines.append(f"- llama.cpp {', '.join(builds) or '(build unknown: no run succeeded)'}, "
                     f"`{args.llama_bench}`, GGUF files converted by rwkvcpp in `{args.gguf_dir}`")
    else:
        lines.append(f"- llama.cpp: {run.llama_note}")
    if "rwkv.cpp" in run.engines:
        info = run.rwkv_cpp_info.get("system_info")
        chunks = sorted({r.result["chunk"] for r in run.measurements if r.engine == "rwkv.cpp" and r.result})
        lines.append(f"- rwkv.cpp: `{args.rwkv_cpp}`" + (f" ({info})" if info else "")
                     + (f"; prompt chunk size kept: {', '.join(map(str, chunks))}" if chunks else ""))
    bw = []
    for rnd in range(1, args.rounds + 1):
        parts = []
        for threads in args.threads:
            v = [r.result["bandwidth_gbps"] for r in run.measurements
                 if r.engine == "rwkvcpp" and r.result and r.round == rnd and r.threads == threads]
            if v:
                span = _num(min(v)) if min(v) == max(v) or len(v) == 1 else f"{_num(min(v))}-{_num(max(v))}"
                parts.append(f"{span} ({threads} thread{'s' if threads > 1 else ''})")
        bw.append(f"round {rnd}: {', '.join(parts) if parts else '-'}")
    lines.append(f"- Read bandwidth measured by rwkvcpp, GB/s: {'; '.join(bw)}")
    lines.append(f"- Command: `{command}`")
    lines.append("")

    tables = (("Decode, ms/token (lower is better)", "decode_ms", min, True),
              (f"Prompt of {args.prompt} tokens, tokens/s (higher is better)", "prompt_tps", max, False))
    for title, key, best, invert in tables:
        cols = ["model", "format", "threads", "rwkvcpp"]
        for peer in peers:
            cols += [peer, f"rwkvcpp / {peer} per round"]
        cols.append("others' CPU %")
        lines += [f"### {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for m in run.models:
            for threads in args.threads:
                mine = by.get((m.name, threads, "rwkvcpp"), [])
                row = [m.name, m.format, str(threads), _figure(mine, key, best)]
                for peer in peers:
                    theirs = by.get((m.name, threads, peer), [])
                    row += [_figure(theirs, key, best), _ratios(mine, theirs, key, invert)]
                others = [r.others for e in run.engines for r in by.get((m.name, threads, e), [])
                          if r.others is not None]
                row.append(f"{max(others):.0f}" if others else "-")
                lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    lines.append("Figures: the best round's (the range over the rounds in brackets). rwkvcpp / peer: rwkvcpp's "
                 "speed over the peer's in each round (decode: the peer's ms/token over rwkvcpp's; prompt: "
                 "rwkvcpp's tokens/s over the peer's), above 1 where rwkvcpp is faster. others' CPU %: the "
                 "largest share of the machine's CPU time that other processes took during the row's runs; "
                 "rerun rows where it is not about 0.")
    lines += ["", "### Every run", "", "| round | model | threads | engine | decode ms/token | prompt tok/s | "
              "others' CPU % |", "|---|---|---|---|---|---|---|"]
    for r in run.measurements:
        figures = [_num(r.result["decode_ms"]), _num(r.result["prompt_tps"])] if r.result else [_cell(r.error or "-"),
                                                                                                  "-"]
        lines.append(f"| {r.round} | {r.model} | {r.threads} | {r.engine} | {' | '.join(figures)} | "
                     f"{'-' if r.others is None else f'{r.others:.0f}'} |")
    return "\n".join(lines) + "\n"


def _progress(done: int, total: int, rec: Measurement) -> None:
    if rec.result:
        what = f"decode {_num(rec.result['decode_ms'])} ms/token, prompt {_num(rec.result['prompt_tps'])} tok/s"
    else:
        what = rec.error
    others = "" if rec.others is None else f" (others' CPU {rec.others:.0f}%)"
    threads = f"{rec.threads} thread{'s' if rec.threads > 1 else ''}"
    print(f"[{done}/{total}] round {rec.round} {rec.model} {threads} {rec.engine}: {what}{others}",
          file=sys.stderr, flush=True)


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        run = check_args(args)
    except UsageError as e:
        print(f"compare.py: error: {e}", file=sys.stderr)
        return 2
    mach = machine()
    measure(run, _progress)
    command = "python benchmarks/compare.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None
                                                                                    else argv))
    text = report(run, mach, command)
    sys.stdout.write(text)
    sys.stdout.flush()
    if args.out:
        from rwkvcpp.atomic_file import write_atomically

        write_atomically(args.out, lambda f: f.write(text.encode()))
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
