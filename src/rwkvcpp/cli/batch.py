"""``rwkvcpp batch embed|perplexity|generate INPUT OUTPUT``: one task over every record of a
corpus, on this machine's cores or a Ray cluster.

INPUT is a JSONL file (the text in ``--field``), a Parquet file (needs pyarrow) or a folder of
.txt files. OUTPUT is a folder: ``job.json`` and one ``part-NNNNN.jsonl`` (or ``.parquet``) per
``--shard-size`` records, each renamed into place when whole, so rerunning the same command
after an interruption does only the shards that are missing. See docs/SCALING.md.
"""

from __future__ import annotations

import math
import os
import sys

from . import CommandError, _common
from .generate import DEFAULTS as GENERATE_DEFAULTS

TASK_HELP = {
    "embed": "the sentence embedding of each record",
    "perplexity": "the loss and perplexity of each record",
    "generate": "a continuation of each record's text",
}


def add_arguments(parser) -> None:
    tasks = parser.add_subparsers(dest="task", metavar="TASK", title="tasks")
    tasks.required = True
    for name, help_text in TASK_HELP.items():
        sub = tasks.add_parser(name, help=help_text, description=f"Compute {help_text} of a corpus.")
        _add_job_arguments(sub)
        if name == "embed":
            sub.add_argument("--no-normalize", action="store_true", help="keep the vectors' lengths (default: unit)")
        elif name == "perplexity":
            sub.add_argument("--chunk", type=int, metavar="N", default=128,
                             help="tokens of each record per pass (default 128); memory grows with "
                                  "batch size x chunk x vocabulary, results change only by float rounding")
        else:
            _common.add_sampling_arguments(parser=sub, defaults=GENERATE_DEFAULTS)


def _add_job_arguments(parser) -> None:
    parser.add_argument("input", metavar="INPUT", help="a .jsonl file, a .parquet file or a folder of .txt files")
    parser.add_argument("output", metavar="OUTPUT", help="the output folder (made if missing)")
    parser.add_argument("--model", metavar="PATH",
                        help=f"rwkv.cpp .bin model (default: the built-in model, {_common.BUILTIN_NOTE})")
    parser.add_argument("--tokenizer", metavar="NAME_OR_PATH",
                        help="world, 20b, bytes or a vocabulary file (default: chosen from the model's "
                             "vocabulary size)")
    data = parser.add_argument_group("records")
    data.add_argument("--field", default="text",
                      help="the JSON field or Parquet column holding the text (default text)")
    data.add_argument("--keep", action="append", metavar="NAME", default=[],
                      help="copy this field of each record to the output (may be repeated)")
    data.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl",
                      help="output file format (default jsonl; parquet needs pyarrow)")
    data.add_argument("--shard-size", type=int, metavar="N", default=1000,
                      help="records per output file: the unit that a rerun skips or redoes (default 1000)")
    data.add_argument("--batch-size", type=int, metavar="N", default=16,
                      help="records read together in one pass over the weights (default 16)")
    run = parser.add_argument_group("workers")
    run.add_argument("--workers", type=int, metavar="N",
                     help="worker processes, each with its own model (default: 1 here; on Ray, as many as "
                          "the cluster's CPUs allow at --threads each)")
    run.add_argument("--threads", type=int, metavar="N",
                     help="threads of each worker's model (default: this machine's cores / --workers; on Ray 1, "
                          "and each worker reserves that many CPUs)")
    run.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                     help="run on Ray Data: the cluster at ADDRESS (host:port or ray://...), or with no ADDRESS "
                          "the one RAY_ADDRESS or `ray start` on this machine names, else a new local one")


def _settings(args) -> dict:
    if args.task == "embed":
        return {"normalize": not args.no_normalize}
    if args.task == "perplexity":
        if args.chunk < 1:
            raise CommandError(f"--chunk must be at least 1, not {args.chunk}")
        return {"chunk": args.chunk}
    _common.sampling_params(args)  # checks the flags, naming them
    from ..scale.tasks import SAMPLING_SETTINGS

    settings = {name: getattr(args, name) for name in SAMPLING_SETTINGS if name != "stop"}
    settings["stop"] = [s.replace("\\n", "\n") for s in args.stop]
    settings["seed"] = args.seed
    return settings


def run(args) -> int:
    from ..scale.jobs import Job, plan_job, run_job

    for flag in ("shard_size", "batch_size", "workers", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise CommandError(f"--{flag.replace('_', '-')} must be at least 1, not {value}")
    if args.model is None:
        print(f"using the built-in model {_common.builtin_model_path()} ({_common.BUILTIN_NOTE})", file=sys.stderr)
    job = Job(task=args.task, input=args.input, output=args.output, model=args.model, text_field=args.field,
              keep=tuple(args.keep), output_format=args.format, shard_size=args.shard_size,
              batch_size=args.batch_size, settings=_settings(args), tokenizer=args.tokenizer)
    plan = plan_job(job)
    todo = sum(s.count for s in plan.pending)
    progress = _common.Progress(todo, "record", f"{args.task}")
    try:
        if args.ray is not None:
            from ..scale.ray_data import run_job_on_ray

            summary = run_job_on_ray(job, address=args.ray or None, workers=args.workers, threads=args.threads,
                                     on_records=progress.update, plan=plan)
        else:
            summary = run_job(job, workers=args.workers or 1, threads=args.threads, on_records=progress.update,
                              plan=plan)
    finally:
        progress.close()

    rate = f" ({summary.records / summary.seconds:.1f} records/s)" if summary.seconds > 0 and summary.records else ""
    errors = f"; {summary.errors} with an error (see their 'error' field)" if summary.errors else ""
    print(f"{args.task}: {len(summary.written)} shard(s) written, {len(summary.skipped)} already there "
          f"({summary.shards} in all); {summary.records} records in {summary.seconds:.1f} s{rate}{errors}")
    if args.task == "perplexity":
        _print_corpus_perplexity(plan)
    print(f"output: {plan.output.folder}{os.sep}")
    return 0


def _print_corpus_perplexity(plan) -> None:
    """The whole corpus's loss over its records' tokens, from every shard's file."""
    loss_sum, tokens = 0.0, 0
    for shard in plan.shards:
        for row in plan.output.read(shard.number):
            if row["error"] is None:
                loss_sum += row["loss"] * row["tokens"]
                tokens += row["tokens"]
    if tokens:
        loss = loss_sum / tokens
        print(f"corpus: {tokens} tokens scored, loss {loss:.4f}, perplexity {math.exp(loss):.4f}")
