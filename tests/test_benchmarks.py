"""The scripts of benchmarks/ run end to end on the built-in model and report what they say they
report. Their figures are speed, never asserted here: only that every request was measured."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BUILTIN = REPO / "src" / "rwkvcpp" / "data" / "builtin-v7-byte.bin"


def bench_script(name, *args, timeout=180):
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / name), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_server_load_measures_every_request():
    for module in ("openai", "fastapi", "uvicorn"):
        pytest.importorskip(module)
    run = bench_script("server_load.py", BUILTIN, "--clients", "1,2", "--tokens", 4,
                       "--server-args", "--threads 1", "--json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["tokens_per_request"] == 4 and report["api"] == "completions"
    assert [r["clients"] for r in report["rounds"]] == [1, 2]
    for r in report["rounds"]:
        # every request generated exactly its 4 tokens: nothing ended it early
        assert r["tokens"] == 4 * r["clients"] and r["short_requests"] == 0
        assert r["tokens_per_second"] == pytest.approx(r["tokens"] / r["wall_seconds"])
        for figure in ("ttft_ms", "ms_per_token", "gap_ms"):
            assert 0 < r[figure]["p50"] <= r[figure]["p95"]
    assert report["rounds"][0]["throughput_vs_first"] == 1.0


def test_server_load_refuses_bad_arguments():
    run = bench_script("server_load.py", BUILTIN, "--clients", "0,2")
    assert run.returncode == 2 and "at least 1" in run.stderr
    run = bench_script("server_load.py", BUILTIN, "--url", "http://127.0.0.1:9")
    assert run.returncode == 2 and "not both" in run.stderr
    run = bench_script("server_load.py", BUILTIN, "--server-args", "--max-queue -1")
    assert run.returncode == 1 and "--max-queue" in run.stderr  # the server's own message comes back
