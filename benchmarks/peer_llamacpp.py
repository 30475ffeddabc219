"""Times llama.cpp on the same RWKV-7 models as rwkvcpp, on this machine, and prints a table.

    python benchmarks/peer_llamacpp.py /path/to/llama-bench /tmp/rwkv-bench [--threads 2] [--ours]

Every v6/v7 .bin in the folder is converted to GGUF as `rwkvcpp convert model.bin model.gguf`
does (rwkvcpp.conversion.gguf: same block formats, same bytes; kept in --gguf-dir and reused
while newer than its .bin), then timed with
`llama-bench -m FILE -t THREADS -p PROMPT -n TOKENS -r REPS`: decode is llama-bench's tg test
(tokens generated one at a time), prompt its pp test (one batch). Other architectures are
skipped with the reason. --ours adds rwkvcpp's figures for the same files (rwkvcpp.benchmark).

llama-bench is built from llama.cpp's sources (CPU only), e.g.
    cmake -S llama.cpp -B /tmp/llama-build -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release
    cmake --build /tmp/llama-build --target llama-bench
Times are only meaningful on an otherwise idle machine: the last column is the share of the CPU
time that other processes took while a row was measured (Linux); rerun rows where it is not ~0.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

try:
    import resource
except ImportError:  # not on Windows; the column then shows "-"
    resource = None

from rwkvcpp import format as F
from rwkvcpp.conversion.gguf import bin_to_gguf


def to_gguf(path: str, gguf_dir: str) -> str:
    """The GGUF twin of a .bin in gguf_dir, converted unless one newer than the .bin is there;
    ValueError for an architecture llama.cpp does not run."""
    gguf = os.path.join(gguf_dir, os.path.splitext(os.path.basename(path))[0] + ".gguf")
    if not os.path.exists(gguf) or os.path.getmtime(gguf) < os.path.getmtime(path):
        os.makedirs(gguf_dir, exist_ok=True)
        bin_to_gguf(path, gguf)  # written to a temporary name, renamed at the end
    return gguf


def llama_bench(binary: str, gguf: str, threads: int, prompt: int, tokens: int, reps: int) -> dict:
    """{'decode_ms': ..., 'prompt_tps': ..., 'build': ...} from one llama-bench run."""
    cmd = [binary, "-m", gguf, "-t", str(threads), "-p", str(prompt), "-n", str(tokens), "-r", str(reps), "-o", "json"]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({run.returncode}):\n{run.stderr[-2000:]}")
    out = {}
    for test in json.loads(run.stdout):
        out["build"] = f"{test.get('build_commit', '?')} (build {test.get('build_number', '?')})"
        if test["n_gen"] > 0:
            out["decode_ms"] = 1000.0 / test["avg_ts"]
        else:
            out["prompt_tps"] = test["avg_ts"]
    return out


class OtherCpu:
    """Share of the machine's CPU time that other processes used between start() and stop(), in %
    (Linux /proc/stat; None elsewhere). Our own runs are left out, unlike in the load average."""

    def start(self) -> None:
        self.t0, self.b0, self.o0 = time.monotonic(), self._busy(), self._own()

    def stop(self):
        b1 = self._busy()
        if b1 is None or self.b0 is None:
            return None
        wall = (time.monotonic() - self.t0) * (os.cpu_count() or 1)
        return max(0.0, 100.0 * ((b1 - self.b0) - (self._own() - self.o0)) / wall)

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
        r = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        return sum(u.ru_utime + u.ru_stime for u in r)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("llama_bench", help="path of a llama-bench binary")
    parser.add_argument("folder", help="folder of .bin models (benchmarks/make_models.py)")
    parser.add_argument("--gguf-dir", default="/tmp/rwkv-bench-gguf", help="where the converted files go")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--ours", action="store_true", help="also time rwkvcpp on the .bin files")
    args = parser.parse_args()
    if not (os.path.isfile(args.llama_bench) and os.access(args.llama_bench, os.X_OK)):
        sys.exit(f"error: {args.llama_bench} is not an executable llama-bench")
    paths = sorted(glob.glob(os.path.join(args.folder, "*.bin")))
    if not paths:
        sys.exit(f"error: no .bin files in {args.folder}; make some with benchmarks/make_models.py")

    cols = ["model", "format", "llama.cpp decode ms/token", "llama.cpp prompt tok/s"]
    if args.ours:
        cols += ["rwkvcpp decode ms/token", "rwkvcpp prompt tok/s"]
    print("| " + " | ".join(cols + ["others' CPU %"]) + " |")
    print("|" + "---|" * (len(cols) + 1), flush=True)
    build = None
    for path in paths:
        name = os.path.splitext(os.path.basename(path))[0]
        try:
            gguf = to_gguf(path, args.gguf_dir)
        except ValueError as e:
            print(f"skipped: {e}", file=sys.stderr, flush=True)
            continue
        fmt = F.type_name(F.read_header(path).data_type)
        other = OtherCpu()
        other.start()
        r = llama_bench(args.llama_bench, gguf, args.threads, args.prompt, args.tokens, args.reps)
        build = r["build"]
        row = [name.rsplit("-", 1)[0], fmt, f"{r['decode_ms']:.2f}", f"{r['prompt_tps']:.1f}"]
        if args.ours:
            from rwkvcpp.benchmark import run_benchmark

            o = run_benchmark(path, threads=args.threads, decode_tokens=args.tokens, prompt_tokens=args.prompt)
            row += [f"{o.decode_ms_per_token:.2f}", f"{o.prompt_tokens_per_second:.1f}"]
        busy = other.stop()
        print("| " + " | ".join(row + ["-" if busy is None else f"{busy:.0f}"]) + " |", flush=True)
    if build:
        print(f"\nllama.cpp {build}, {args.threads} threads, pp{args.prompt} / tg{args.tokens}, {args.reps} reps")


if __name__ == "__main__":
    main()
