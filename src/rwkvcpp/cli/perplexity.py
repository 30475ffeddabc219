"""``rwkvcpp perplexity [MODEL] TEXTFILE [--ctx N]``: how well a model predicts a text, and how
fast it reads it.

The text is tokenized and read in sequence mode, ``--batch`` tokens per call, with the logits of
every position. Each token after the first is scored by the probability the model gave it.
Without ``--ctx`` the whole file is one context (the state runs on from start to end, as in
rwkv.cpp's measure_pexplexity.py); with ``--ctx N`` it is cut into windows of N tokens, each
read from a fresh state. Reports the mean loss (nats per token), perplexity (exp of the loss),
bits per token and bits per UTF-8 byte, and the reading speed.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np

from . import CommandError, _common


def add_arguments(parser) -> None:
    _common.add_model_arguments(parser)
    parser.add_argument("text", metavar="TEXTFILE", help="UTF-8 text file")
    parser.add_argument("--ctx", type=int, metavar="N", default=0,
                        help="context length: read the text in windows of N tokens, each from a fresh state "
                             "(default: the whole text as one context)")
    parser.add_argument("--batch", type=int, metavar="N", default=128,
                        help="tokens per evaluation call (default 128); changes speed and memory, not results")
    parser.add_argument("--ignore-first", type=int, metavar="N", default=0,
                        help="do not score the first N tokens of each context (default 0)")
    parser.add_argument("--limit", type=int, metavar="N", default=0,
                        help="use only the first N tokens of the text (default: all)")


def _losses(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log p(target) for each row of logits, in float64."""
    x = logits.astype(np.float64)
    top = x.max(axis=1)
    lse = top + np.log(np.exp(x - top[:, None]).sum(axis=1))
    return lse - x[np.arange(len(targets)), targets]


def run(args) -> int:
    for name in ("ctx", "ignore_first", "limit"):
        if getattr(args, name) < 0:
            raise CommandError(f"--{name.replace('_', '-')} must be 0 or more")
    if args.batch < 1:
        raise CommandError("--batch must be at least 1")
    if args.ctx == 1:
        raise CommandError("--ctx must be at least 2: a context of one token predicts nothing")

    with open(args.text, encoding="utf-8") as f:
        text = f.read()
    model = _common.load_model(args)
    tokenizer = model.tokenizer
    tokens = np.asarray(tokenizer.encode(text), dtype=np.int64)
    n_text_tokens = len(tokens)
    if args.limit:
        tokens = tokens[: args.limit]

    ctx = args.ctx or len(tokens)
    windows = [tokens[i : i + ctx] for i in range(0, len(tokens), ctx)] if len(tokens) else []
    windows = [w for w in windows if len(w) - 1 > 0 and len(w) > args.ignore_first]
    n_scored = sum(len(w) - max(1, args.ignore_first) for w in windows)
    if n_scored < 1:
        raise CommandError(
            f"nothing to score: the text has {len(tokens)} token(s) to use"
            + (f" and --ignore-first is {args.ignore_first}" if args.ignore_first else "")
            + "; perplexity needs at least 2"
        )

    n_inputs = sum(len(w) - 1 for w in windows)
    progress = _common.Progress(n_inputs, "token", "perplexity")
    loss_sum = 0.0
    scored = 0
    scored_bytes = 0
    eval_seconds = 0.0
    try:
        for window in windows:
            state = None
            inputs = window[:-1]  # the last token is only a target
            for start in range(0, len(inputs), args.batch):
                batch = inputs[start : start + args.batch]
                t0 = time.perf_counter()
                logits, state = model.eval_sequence(batch, state, all_logits=True)
                eval_seconds += time.perf_counter() - t0
                targets = window[start + 1 : start + 1 + len(batch)]
                first = max(0, args.ignore_first - (start + 1))  # targets at positions >= ignore_first count
                if first < len(batch):
                    losses = _losses(logits[first:], targets[first:])
                    loss_sum += float(losses.sum())
                    scored += len(losses)
                    scored_bytes += len(tokenizer.decode_bytes(targets[first:].tolist()))
                progress.update(len(batch), f"ppl {math.exp(loss_sum / scored):.3f}" if scored else "")
    finally:
        progress.close()

    loss = loss_sum / scored
    speed = n_inputs / eval_seconds if eval_seconds > 0 else float("inf")
    ctx_note = f"contexts of {args.ctx} tokens" if args.ctx else "one context"
    print(
        f"model: {os.path.basename(model.path)} ({model.arch}, {model.dtype}), "
        f"text: {os.path.basename(args.text)}, {n_text_tokens} tokens"
        + (f" (first {len(tokens)} used)" if len(tokens) < n_text_tokens else "")
    )
    print(f"read {n_inputs} tokens in {eval_seconds:.2f} s: {speed:.1f} tokens/s ({ctx_note}, batch {args.batch})")
    bpb = loss_sum / math.log(2) / scored_bytes if scored_bytes else float("nan")
    print(
        f"scored {scored} tokens: loss {loss:.4f}, perplexity {math.exp(loss):.4f}, "
        f"{loss / math.log(2):.4f} bits per token, {bpb:.4f} bits per byte"
    )
    return 0
