"""Corpus jobs on this machine (rwkvcpp.scale, `rwkvcpp batch`): each task's rows against the
model read one record at a time, shards and their resumption, the process pool against one
worker, inputs (JSONL, Parquet, a folder) and their errors. Ray's runs are in test_scale_ray.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import rwkvcpp
from rwkvcpp.data import builtin_model_path
from rwkvcpp.scale import Job, run_job
from rwkvcpp.scale.records import Output
from rwkvcpp.scale.tasks import token_losses

MODEL = os.fspath(builtin_model_path())

TEXTS = [
    "def f(x):\n    return x + 1",
    "The for statement",
    "",
    "class A:\n    pass",
    "import os",
    "x",
    "while True:\n    break",
    "A list is a sequence of items in square brackets, separated by commas.",
    "try:\n    pass\nexcept ValueError:\n    raise",
    "print('hello')",
]


@pytest.fixture(scope="module")
def model():
    with rwkvcpp.Model(MODEL, threads=1) as m:
        yield m


def write_jsonl(path, texts=TEXTS, **extra):
    with open(path, "w", encoding="utf-8") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"id": f"r{i}", "text": text, **extra}) + "\n")
            if i == 3:
                f.write("\n")  # blank lines are not records
    return path


def rows_of(folder, fmt="jsonl"):
    output = Output(folder, fmt)
    names = sorted(n for n in os.listdir(folder) if n.startswith("part-"))
    return [row for n in range(len(names)) for row in output.read(n)]


def shard_bytes(folder):
    return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder)) if n.startswith("part-")}


def job(tmp_path, task, name="out", **kw):
    kw.setdefault("shard_size", 3)
    kw.setdefault("batch_size", 4)
    return Job(task=task, input=os.fspath(tmp_path / "in.jsonl"), output=os.fspath(tmp_path / name), model=MODEL, **kw)


def test_embed_rows_are_each_record_read_alone(tmp_path, model):
    write_jsonl(tmp_path / "in.jsonl")
    summary = run_job(job(tmp_path, "embed", keep=("id",)), threads=1)
    assert (summary.shards, summary.written, summary.skipped) == (4, [0, 1, 2, 3], [])
    assert (summary.records, summary.errors) == (len(TEXTS), 1)
    assert sorted(os.listdir(tmp_path / "out")) == ["job.json"] + [f"part-0000{n}.jsonl" for n in range(4)]
    rows = rows_of(tmp_path / "out")
    assert [r["index"] for r in rows] == list(range(len(TEXTS)))
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(len(TEXTS))]
    for text, row in zip(TEXTS, rows):
        assert set(row) == {"index", "id", "embedding", "error"}
        if not text:
            assert row["embedding"] is None and "empty" in row["error"]
            continue
        alone, _ = model.eval_embedding(model.tokenize(text))
        assert row["error"] is None
        assert np.array_equal(np.asarray(row["embedding"], np.float32), alone)


def test_perplexity_rows_match_the_record_scored_alone(tmp_path, model):
    write_jsonl(tmp_path / "in.jsonl")
    run_job(job(tmp_path, "perplexity", settings={"chunk": 5}), threads=1)
    rows = rows_of(tmp_path / "out")
    for text, row in zip(TEXTS, rows):
        tokens = np.asarray(model.tokenize(text))
        if len(tokens) < 2:
            assert row["loss"] is None and "at least 2" in row["error"]
            continue
        logits, _ = model.eval_sequence(tokens[:-1], all_logits=True)
        loss = token_losses(logits, tokens[1:]).mean()
        assert row["tokens"] == len(tokens) - 1
        assert row["loss"] == pytest.approx(loss, rel=1e-5)  # read whole here, in chunks of 5 there
        assert row["perplexity"] == pytest.approx(np.exp(row["loss"]), rel=1e-12)


def test_batch_size_does_not_change_the_rows(tmp_path):
    write_jsonl(tmp_path / "in.jsonl")
    run_job(job(tmp_path, "perplexity", "one", batch_size=1, settings={"chunk": 5}), threads=1)
    run_job(job(tmp_path, "perplexity", "many", batch_size=8, settings={"chunk": 5}), threads=1)
    assert shard_bytes(tmp_path / "one") == shard_bytes(tmp_path / "many")


def test_generate_matches_rwkvcpp_generate_with_the_records_seed(tmp_path):
    texts = ["def ", "The for statement", "import "]
    write_jsonl(tmp_path / "in.jsonl", texts)
    r = subprocess.run([sys.executable, "-m", "rwkvcpp", "batch", "generate", os.fspath(tmp_path / "in.jsonl"),
                        os.fspath(tmp_path / "out"), "--seed", "7", "-n", "12", "--shard-size", "2"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "generate: 2 shard(s) written, 0 already there (2 in all); 3 records" in r.stdout
    rows = rows_of(tmp_path / "out")
    for i, text in enumerate(texts):
        alone = subprocess.run([sys.executable, "-m", "rwkvcpp", "generate", "--prompt", text, "--seed", str(7 + i),
                                "-n", "12"], capture_output=True, text=True, timeout=120)
        assert rows[i]["completion"] == alone.stdout
        assert (rows[i]["completion_tokens"], rows[i]["finish_reason"]) == (12, "length")


class Interrupt(Exception):
    pass


def stop_after(n):
    done = []

    def on_shard(result):
        done.append(result.number)
        if len(done) == n:
            raise Interrupt

    return on_shard


def test_a_rerun_does_only_the_missing_shards(tmp_path):
    write_jsonl(tmp_path / "in.jsonl")
    run_job(job(tmp_path, "embed", "whole"), threads=1)
    with pytest.raises(Interrupt):
        run_job(job(tmp_path, "embed"), threads=1, on_shard=stop_after(2))
    out = tmp_path / "out"
    assert sorted(n for n in os.listdir(out) if n.startswith("part-")) == ["part-00000.jsonl", "part-00001.jsonl"]
    # what a writer killed where files cannot be written unnamed leaves (rwkvcpp.atomic_file)
    (out / "part-00002.jsonl.tmp-0123abcd").write_text("half a shard")
    before = {n: os.stat(out / n).st_mtime_ns for n in ("part-00000.jsonl", "part-00001.jsonl")}

    summary = run_job(job(tmp_path, "embed"), threads=1)
    assert (summary.written, summary.skipped, summary.records) == ([2, 3], [0, 1], 4)
    assert {n: os.stat(out / n).st_mtime_ns for n in before} == before
    assert not [n for n in os.listdir(out) if ".tmp-" in n]
    assert shard_bytes(out) == shard_bytes(tmp_path / "whole")

    os.remove(out / "part-00001.jsonl")
    summary = run_job(job(tmp_path, "embed"), threads=1)
    assert (summary.written, summary.skipped) == ([1], [0, 2, 3])
    assert shard_bytes(out) == shard_bytes(tmp_path / "whole")


def test_an_output_folder_of_another_job_is_refused(tmp_path):
    write_jsonl(tmp_path / "in.jsonl")
    run_job(job(tmp_path, "perplexity", settings={"chunk": 5}), threads=1)
    with pytest.raises(ValueError, match=r"holds the output of another job \(settings differ: settings was "
                                         r"\{'chunk': 5\}, now \{'chunk': 6\}\)"):
        run_job(job(tmp_path, "perplexity", settings={"chunk": 6}), threads=1)
    with pytest.raises(ValueError, match=r"task, settings differ"):
        run_job(job(tmp_path, "embed"), threads=1)
    with pytest.raises(ValueError, match=r"shard_size, shards differ"):
        run_job(job(tmp_path, "perplexity", shard_size=4, settings={"chunk": 5}), threads=1)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "part-00000.jsonl").write_text("{}\n")
    with pytest.raises(ValueError, match=r"holds part-\* files but no job.json"):
        run_job(job(tmp_path, "embed", "other"), threads=1)


def test_a_process_pool_writes_the_same_shards(tmp_path):
    write_jsonl(tmp_path / "in.jsonl")
    run_job(job(tmp_path, "embed", "one"), threads=1)
    records = []
    summary = run_job(job(tmp_path, "embed", "pool"), workers=2, threads=1, on_records=records.append)
    assert sorted(summary.written) == [0, 1, 2, 3] and sum(records) == len(TEXTS)
    assert shard_bytes(tmp_path / "pool") == shard_bytes(tmp_path / "one")


def test_a_worker_that_cannot_load_the_model_fails_the_run(tmp_path):
    write_jsonl(tmp_path / "in.jsonl")
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"not a model" * 10)
    with pytest.raises(Exception, match="bad.bin"):
        run_job(Job(task="embed", input=os.fspath(tmp_path / "in.jsonl"), output=os.fspath(tmp_path / "out"),
                    model=os.fspath(bad)), workers=2, threads=1)


def test_folder_input(tmp_path, model):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text("The for statement")
    (folder / "sub" / "a.txt").write_text("import os")
    (folder / "a.txt").write_text("def f():")
    (folder / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (folder / "notes.md").write_text("not a .txt file")
    run_job(Job(task="embed", input=os.fspath(folder), output=os.fspath(tmp_path / "out"), model=MODEL, shard_size=2),
            threads=1)
    rows = rows_of(tmp_path / "out")
    assert [r["file"] for r in rows] == ["a.txt", "b.txt", "latin1.txt", "sub/a.txt"]
    alone, _ = model.eval_embedding(model.tokenize("import os"))
    assert np.array_equal(np.asarray(rows[3]["embedding"], np.float32), alone)
    assert rows[2]["embedding"] is None and rows[2]["error"].startswith("not UTF-8 text")


def test_parquet_input_and_output_give_the_jsonl_rows(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    write_jsonl(tmp_path / "in.jsonl")
    run_job(job(tmp_path, "embed", "from-jsonl", keep=("id",)), threads=1)
    table = pa.table({"id": [f"r{i}" for i in range(len(TEXTS))], "text": TEXTS})
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=4)  # shards cut across row groups
    run_job(Job(task="embed", input=os.fspath(tmp_path / "in.parquet"), output=os.fspath(tmp_path / "from-parquet"),
                model=MODEL, keep=("id",), shard_size=3, output_format="parquet"), threads=1)
    assert sorted(os.listdir(tmp_path / "from-parquet"))[1] == "part-00000.parquet"
    expected, got = rows_of(tmp_path / "from-jsonl"), rows_of(tmp_path / "from-parquet", "parquet")
    assert [r["id"] for r in got] == [r["id"] for r in expected]
    for e, g in zip(expected, got):
        assert e["error"] == g["error"]
        if e["embedding"] is not None:
            assert np.array_equal(np.asarray(e["embedding"], np.float32), np.asarray(g["embedding"], np.float32))
    schema = pq.read_schema(tmp_path / "from-parquet" / "part-00000.parquet")
    assert str(schema.field("embedding").type) == "list<element: float>"


@pytest.mark.parametrize("lines, message", [
    (['{"text": "a"}', "not json"], r"in.jsonl line 2: not valid JSON \(Expecting value at column 1\)"),
    (['{"text": "a"}', "", '["a"]'], r"in.jsonl line 3: a JSON object is needed, not list"),
    (['{"body": "a", "id": 1}'], r"in.jsonl line 1: no field 'text' \(its fields: body, id; choose one with --field\)"),
    (['{"text": 3}'], r"in.jsonl line 1: 'text' must be a string, not int"),
    (["", "  "], r"in.jsonl holds no records"),
])
def test_bad_jsonl_is_refused_naming_the_line(tmp_path, lines, message):
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=message):
        run_job(job(tmp_path, "embed"))
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_a_null_text_is_an_error_row_not_a_failed_job(tmp_path):
    (tmp_path / "in.jsonl").write_text('{"text": null}\n{"text": "def f():"}\n')
    run_job(job(tmp_path, "embed"), threads=1)
    rows = rows_of(tmp_path / "out")
    assert rows[0]["error"] == "'text' is null" and rows[1]["error"] is None


def rwkvcpp_cli(*args):
    return subprocess.run([sys.executable, "-m", "rwkvcpp", *args], capture_output=True, text=True, timeout=120)


def test_cli_runs_reruns_and_reports(tmp_path):
    write_jsonl(tmp_path / "in.jsonl")
    args = ["batch", "perplexity", os.fspath(tmp_path / "in.jsonl"), os.fspath(tmp_path / "out"), "--model", MODEL,
            "--shard-size", "4", "--keep", "id"]
    first = rwkvcpp_cli(*args)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert lines[0].startswith("perplexity: 3 shard(s) written, 0 already there (3 in all); 10 records in ")
    assert lines[0].endswith("; 2 with an error (see their 'error' field)")
    assert lines[1].startswith("corpus: ") and lines[2] == f"output: {tmp_path / 'out'}{os.sep}"
    again = rwkvcpp_cli(*args)
    assert again.stdout.splitlines()[0].startswith(
        "perplexity: 0 shard(s) written, 3 already there (3 in all); 0 records")
    assert again.stdout.splitlines()[1] == lines[1]  # the corpus figure, from the shards on disk


@pytest.mark.parametrize("extra, message", [
    (["--shard-size", "0"], "rwkvcpp batch: error: --shard-size must be at least 1, not 0"),
    (["--keep", "index"], "rwkvcpp batch: error: --keep index: the output has a field of that name already"),
    (["--top-p", "2"], "rwkvcpp batch: error: --top-p must be a number in [0, 1]"),
])
def test_cli_bad_flags_are_one_line(tmp_path, extra, message):
    write_jsonl(tmp_path / "in.jsonl")
    r = rwkvcpp_cli("batch", "generate", os.fspath(tmp_path / "in.jsonl"), os.fspath(tmp_path / "out"), "--model",
                    MODEL, *extra)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith(message)


def test_cli_ray_without_ray_names_the_install(tmp_path):
    try:
        import ray  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("ray is installed")
    write_jsonl(tmp_path / "in.jsonl")
    r = rwkvcpp_cli("batch", "embed", os.fspath(tmp_path / "in.jsonl"), os.fspath(tmp_path / "out"), "--model", MODEL,
                    "--ray")
    assert (r.returncode, r.stderr.strip().splitlines()[-1]) == (
        2, 'rwkvcpp batch: error: --ray needs Ray: pip install "rwkvcpp[ray]" (or "ray[serve,data]")')


def test_serve_ray_replica_bounds_are_checked_before_ray_starts():
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    r = rwkvcpp_cli("serve", MODEL, "--ray", "--replicas", "2", "--max-replicas", "1")
    assert (r.returncode, r.stderr.strip()) == (
        2, "rwkvcpp serve: error: --replicas must be at least 1 and --max-replicas at least --replicas, not 2 and 1")
