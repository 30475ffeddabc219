"""Coverage-guided fuzzing of everything that reads untrusted files, for a fixed time; not run in CI.

    python tools/fuzz/run.py [--target loader|readers|both] [--seconds 1800] [--jobs 1]

* ``loader``: the C engine's loader, evaluation, verify and quantize (fuzz_loader.c), built with
  clang's libFuzzer, AddressSanitizer and UndefinedBehaviorSanitizer (needs clang and its runtime:
  ``apt-get install clang libclang-rt-14-dev`` on Debian 12).
* ``readers``: the Python readers of ``.bin``, torch, safetensors and GGUF files
  (fuzz_readers.py) under atheris (``pip install atheris``).

The seed corpus is made from real files: small models of every architecture written by the
package's own writer, quantized by the engine, converted to GGUF, saved as torch and safetensors
checkpoints, and the rwkv.cpp files of tests/data (their first ``--max-len`` bytes). Everything goes
under ``build/fuzz/`` (corpus kept between runs, so a rerun goes on where the last one stopped).
At the end it prints each target's executions, coverage and findings; a crash, leak or timeout
input is copied to tests/data/fuzz/ (tests/test_fuzz_regressions.py loads every file there).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WORK = REPO / "build" / "fuzz"
FINDINGS = REPO / "tests" / "data" / "fuzz"
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
C_FLAGS = ["-g", "-O1", "-D_GNU_SOURCE", "-fno-math-errno", "-fopenmp-simd", f"-I{REPO / 'csrc'}"]
LEVEL_FLAGS = {"avx2.c": ["-mavx2", "-mfma", "-mf16c"],
               "avx512.c": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni"]}


# ---- the C target --------------------------------------------------------------------------------


def engine_sources() -> list[Path]:
    """The engine's sources as CMakeLists.txt lists them for Linux (portable part, POSIX output,
    x86 levels)."""
    cmake = (REPO / "CMakeLists.txt").read_text()
    portable = re.search(r"add_library\(rwkv_portable OBJECT\s+([^)]*)\)", cmake).group(1).split()
    extra = ["csrc/output.c", "csrc/kernels/avx2.c", "csrc/kernels/avx512.c"]
    return [REPO / s for s in portable + extra]


def build_loader(clang: str) -> Path:
    out = WORK / "objects"
    out.mkdir(parents=True, exist_ok=True)
    objects = []
    for source in engine_sources() + [REPO / "tools/fuzz/fuzz_loader.c"]:
        obj = out / (source.relative_to(REPO).as_posix().replace("/", "_") + ".o")
        if not obj.exists() or obj.stat().st_mtime < source.stat().st_mtime or _headers_newer(obj):
            flags = C_FLAGS + SANITIZE + ["-fsanitize=fuzzer-no-link"] + LEVEL_FLAGS.get(source.name, [])
            subprocess.run([clang, *flags, "-c", source, "-o", obj], check=True)
        objects.append(obj)
    binary = WORK / "fuzz_loader"
    subprocess.run([clang, *SANITIZE, "-fsanitize=fuzzer", *objects, "-lm", "-lpthread", "-o", binary], check=True)
    return binary


def _headers_newer(obj: Path) -> bool:
    return any(h.stat().st_mtime > obj.stat().st_mtime for h in (REPO / "csrc").rglob("*.h"))


# ---- seeds ---------------------------------------------------------------------------------------


def make_seeds(folder: Path, max_len: int) -> int:
    """Writes the seed files into `folder` (once); returns how many there are."""
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.iterdir()):
        return len(list(folder.iterdir()))
    sys.path.insert(0, str(REPO / "tests"))
    from support.checkpoints import ARCHES, make_checkpoint

    from rwkvcpp.conversion.gguf import bin_to_gguf
    from rwkvcpp.conversion.pth_write import save_pth, save_safetensors
    from rwkvcpp.quantization import quantize
    from rwkvcpp.writer import write_model

    for arch in ARCHES:
        checkpoint = make_checkpoint(arch, n_layer=1, n_embed=32, n_vocab=256, head_size=16, seed=7)
        name = arch.replace(".", "_")
        for dtype in ("FP32", "FP16"):
            write_model(folder / f"{name}-{dtype}.bin", checkpoint, dtype=dtype)
        for qtype in ("Q8_0", "Q5_1", "Q4_0"):
            quantize(folder / f"{name}-FP16.bin", folder / f"{name}-{qtype}.bin", qtype)
        save_safetensors(folder / f"{name}.safetensors", checkpoint)
        save_pth(folder / f"{name}.pth", checkpoint)
        if arch in ("v6", "v7"):
            bin_to_gguf(folder / f"{name}-FP16.bin", folder / f"{name}.gguf")
    for real in sorted((REPO / "tests/data/rwkv_cpp").glob("tiny-rwkv-*.bin")):
        (folder / real.name).write_bytes(real.read_bytes()[:max_len])
    return len(list(folder.iterdir()))


# ---- running -------------------------------------------------------------------------------------


def run_target(name: str, command: list, seeds: Path, seconds: int, max_len: int, jobs: int) -> dict:
    corpus = WORK / f"corpus-{name}"
    artifacts = WORK / f"artifacts-{name}"
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    log = WORK / f"{name}.log"
    flags = [f"-max_total_time={seconds}", f"-max_len={max_len}", "-timeout=30", "-rss_limit_mb=4096",
             "-print_final_stats=1", f"-artifact_prefix={artifacts}/"]
    if jobs > 1:
        flags += [f"-fork={jobs}", "-ignore_crashes=1", "-ignore_timeouts=1", "-ignore_ooms=1"]
    print(f"fuzzing {name} for {seconds} s: log in {log}", flush=True)
    start = time.time()
    with open(log, "w") as out:
        rc = subprocess.run([*command, *flags, corpus, seeds], stdout=out, stderr=subprocess.STDOUT).returncode
    return summarize(name, log.read_text(errors="replace"), artifacts, rc, start)


def summarize(name: str, log: str, artifacts: Path, rc: int, start: float) -> dict:
    """The run's figures from libFuzzer's log, and its findings (those written since `start`)."""
    stats = dict(re.findall(r"stat::(\w+):\s+(\d+)", log))
    coverage = re.findall(r"cov: (\d+) ft: (\d+)", log)
    findings = sorted(p for p in artifacts.iterdir()
                      if p.name.startswith(("crash-", "leak-", "timeout-", "oom-")) and p.stat().st_mtime >= start)
    FINDINGS.mkdir(parents=True, exist_ok=True)
    kept = []
    for finding in findings:
        target = FINDINGS / f"{name}-{finding.name}"
        if not target.exists():
            shutil.copy(finding, target)
        kept.append(target.relative_to(REPO).as_posix())
    return {
        "target": name, "seconds": round(time.time() - start), "exit": rc,
        "executions": int(stats.get("number_of_executed_units", 0)),
        "per_second": int(stats.get("average_exec_per_sec", 0)),
        "edges": int(coverage[-1][0]) if coverage else None, "features": int(coverage[-1][1]) if coverage else None,
        "corpus": len(list((WORK / f"corpus-{name}").iterdir())), "findings": kept,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", choices=("loader", "readers", "both"), default="both")
    parser.add_argument("--seconds", type=int, default=1800, help="per target (default 1800)")
    parser.add_argument("--max-len", type=int, default=256 * 1024, help="largest input in bytes (default 256 KiB)")
    parser.add_argument("--jobs", type=int, default=1, help="parallel fuzzing processes per target (libFuzzer -fork)")
    parser.add_argument("--clang", default=os.environ.get("CLANG", "clang"))
    args = parser.parse_args()
    seeds = WORK / "seeds"
    print(f"{make_seeds(seeds, args.max_len)} seed files in {seeds}", flush=True)
    results = []
    if args.target in ("loader", "both"):
        binary = build_loader(args.clang)
        results.append(run_target("loader", [binary], seeds, args.seconds, args.max_len, args.jobs))
    if args.target in ("readers", "both"):
        command = [sys.executable, REPO / "tools/fuzz/fuzz_readers.py"]
        results.append(run_target("readers", command, seeds, args.seconds, args.max_len, args.jobs))
    for r in results:
        print(f"{r['target']}: {r['executions']:,} executions in {r['seconds']} s ({r['per_second']}/s), "
              f"coverage {r['edges']} edges / {r['features']} features, corpus {r['corpus']} files, "
              f"findings: {', '.join(r['findings']) or 'none'} (exit {r['exit']})")
    return 1 if any(r["findings"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
