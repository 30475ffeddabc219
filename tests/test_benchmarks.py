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


def markdown_tables(text):
    """{section title: (column names, rows as lists of cells)} of a report's tables."""
    tables, title = {}, None
    for line in text.splitlines():
        if line.startswith("### "):
            title = line[4:]
        elif line.startswith("| ") and title is not None:
            cells = [c.strip() for c in line.strip()[1:-1].split(" | ")]
            if title not in tables:
                tables[title] = (cells, [])
            else:
                tables[title][1].append(cells)
    return tables


FIGURE = r"\d+(\.\d+)?"


def test_compare_reports_every_model_and_thread_count(tmp_path):
    import re
    import shutil

    models = tmp_path / "models"
    models.mkdir()
    for name in ("a.bin", "b.bin"):
        shutil.copy(BUILTIN, models / name)
    out = tmp_path / "report.md"
    run = bench_script("compare.py", models, "--rounds", 2, "--prompt", 8, "--tokens", 2, "--threads", "1,2",
                       "--gguf-dir", tmp_path / "gguf", "--out", out, timeout=600)
    assert run.returncode == 0, run.stderr
    report = run.stdout
    assert out.read_text() == report  # --out wrote the same report
    flags = [line for line in report.splitlines() if line.startswith("- CPU flags: ")]
    assert len(flags) == 1 and flags[0] != "- CPU flags: "
    # the read bandwidth of each round, for each thread count (rwkvcpp measures it after each model)
    bandwidth = re.search(r"^- Read bandwidth measured by rwkvcpp, GB/s: (.*)$", report, re.M).group(1)
    rounds = bandwidth.split("; ")
    assert [r.split(":")[0] for r in rounds] == ["round 1", "round 2"]
    for r in rounds:
        span = rf"{FIGURE}(-{FIGURE})?"  # over the round's two models
        assert re.fullmatch(rf"round \d: {span} \(1 thread\), {span} \(2 threads\)", r), r
    assert re.search(r"^- rwkvcpp \S+, kernels \S+", report, re.M)

    tables = markdown_tables(report)
    llama = shutil.which("llama-bench") is not None
    decode = next(t for t in tables if t.startswith("Decode"))
    prompt = next(t for t in tables if t.startswith("Prompt"))
    for title in (decode, prompt):
        cols, rows = tables[title]
        assert cols[:4] == ["model", "format", "threads", "rwkvcpp"] and cols[-1] == "others' CPU %"
        assert ("llama.cpp" in cols) == llama and "rwkv.cpp" not in cols  # no peer that is not there
        assert [(r[0], r[2]) for r in rows] == [("a", "1"), ("a", "2"), ("b", "1"), ("b", "2")]
        for r in rows:
            assert r[1] == "FP16"
            # best of the two rounds and their range
            assert re.fullmatch(rf"{FIGURE} \({FIGURE}-{FIGURE}\)", r[3]), r
    cols, runs = tables["Every run"]
    ours = [r for r in runs if r[3] == "rwkvcpp"]
    assert sorted((r[0], r[1], r[2]) for r in ours) == sorted(
        (str(n), m, t) for n in (1, 2) for m in ("a", "b") for t in ("1", "2"))
    assert all(re.fullmatch(FIGURE, r[4]) and re.fullmatch(FIGURE, r[5]) for r in ours)


def test_compare_drives_rwkv_cpp_api(tmp_path):
    """--rwkv-cpp through rwkv.cpp's C API: here the package's own librwkv, which has that API."""
    import re

    from rwkvcpp.c_api import librwkv_path

    try:
        library = librwkv_path()
    except FileNotFoundError:
        pytest.skip("this rwkvcpp was built without librwkv")
    models = tmp_path / "models"
    models.mkdir()
    (models / "m.bin").write_bytes(BUILTIN.read_bytes())
    # 20 prompt tokens: chunks of 16 leave a shorter last one
    run = bench_script("compare.py", models, "--rounds", 1, "--prompt", 20, "--tokens", 2, "--threads", 1,
                       "--rwkv-cpp", library, "--gguf-dir", tmp_path / "gguf", timeout=600)
    assert run.returncode == 0, run.stderr
    assert re.search(r"^- rwkv\.cpp: `.*librwkv", run.stdout, re.M)
    for title, (cols, rows) in markdown_tables(run.stdout).items():
        if title == "Every run":
            continue
        i = cols.index("rwkv.cpp")
        assert cols[i + 1] == "rwkvcpp / rwkv.cpp per round" and len(rows) == 1
        assert re.fullmatch(FIGURE, rows[0][i]) and re.fullmatch(rf"{FIGURE}x", rows[0][i + 1]), rows


def test_compare_refuses_bad_arguments(tmp_path):
    run = bench_script("compare.py", tmp_path / "missing")
    assert run.returncode == 2 and "no such folder" in run.stderr and len(run.stderr.splitlines()) == 1
    run = bench_script("compare.py", tmp_path)
    assert run.returncode == 2 and "no .bin files" in run.stderr and len(run.stderr.splitlines()) == 1
    (tmp_path / "m.bin").write_bytes(BUILTIN.read_bytes())
    run = bench_script("compare.py", tmp_path, "--llama-bench", tmp_path / "llama-bench")
    assert run.returncode == 2 and "not an executable" in run.stderr and len(run.stderr.splitlines()) == 1
    run = bench_script("compare.py", tmp_path, "--threads", "1,0")
    assert run.returncode == 2 and "at least 1" in run.stderr and len(run.stderr.splitlines()) == 1


def test_short_evals_reports_every_length_against_decoding():
    r = bench_script("short_evals.py", BUILTIN, "--threads", "1", "--rounds", "1", "--lengths", "2,9")
    assert r.returncode == 0, r.stderr
    header, rule, row = r.stdout.splitlines()
    assert header == "| model | decode ms/token | T=2 | T=9 |"
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == BUILTIN.name and float(cells[1]) > 0
    for cell in cells[2:]:  # "ms (ratio x)", the ratio that ms over the decode figure
        ms, ratio = cell.split(" (")
        assert float(ratio.rstrip("x)")) == pytest.approx(float(ms) / float(cells[1]), abs=0.01, rel=0.02)


@pytest.mark.parametrize("args, message", [(["--lengths", "1,4"], "at least 2"),
                                           (["--lengths", "two"], "comma-separated integers"),
                                           (["--rounds", "0"], "at least 1")])
def test_short_evals_refuses_bad_arguments(args, message):
    r = bench_script("short_evals.py", BUILTIN, *args)
    assert r.returncode == 2 and message in r.stderr


def test_short_evals_names_a_missing_model(tmp_path):
    r = bench_script("short_evals.py", tmp_path / "none.bin")
    assert r.returncode == 2 and "none.bin: no such model file" in r.stderr
