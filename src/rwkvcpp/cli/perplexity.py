"""``rwkvcpp perplexity [MODEL] TEXTFILE [--ctx N]``: how well a model predicts a text, and how
fast it reads it.

The text is tokenized and read in sequence mode, ``--batch`` tokens per call, with the logits of
every position. Each token after the first is scored by the probability the model gave it.
Without ``--ctx`` the whole file is one context (the state runs on from start to end, as in
rwkv.cpp's measure_pexplexity.py); with ``--ctx N`` it is cut into windows of N tokens, each
read from a fresh state, ``--parallel`` windows together in each pass over the weights
(:meth:`Model.eval_batch`; every window gets the logits it gets alone, so the figures do not
depend on ``--parallel``). Reports the mean loss (nats per token), perplexity (exp of the loss),
bits per token and bits per UTF-8 byte, and the reading speed.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque

import numpy as np

from ..scale.tasks import token_losses
from . import CommandError, _common

DEFAULT_PARALLEL = 4


def add_arguments(parser) -> None:
    _common.add_model_arguments(parser)
    parser.add_argument("text", metavar="TEXTFILE", help="UTF-8 text file")
    parser.add_argument("--ctx", type=int, metavar="N", default=0,
                        help="context length: read the text in windows of N tokens, each from a fresh state "
                             "(default: the whole text as one context)")
    parser.add_argument("--batch", type=int, metavar="N", default=128,
                        help="tokens per evaluation call (default 128); changes speed and memory, not results")
    parser.add_argument("--parallel", type=int, metavar="N", default=DEFAULT_PARALLEL,
                        help=f"with --ctx: windows read together, --batch tokens of each per pass (default "
                             f"{DEFAULT_PARALLEL}); changes speed and memory, not results")
    parser.add_argument("--ignore-first", type=int, metavar="N", default=0,
                        help="do not score the first N tokens of each context (default 0)")
    parser.add_argument("--limit", type=int, metavar="N", default=0,
                        help="use only the first N tokens of the text (default: all)")


def score_windows(model, windows, batch: int, parallel: int = 1, ignore_first: int = 0, on_pass=None):
    """-log p of the scored targets of each window (float64 arrays, in window order) and the
    seconds spent evaluating. Each window is read from a fresh state, ``batch`` tokens per pass,
    up to ``parallel`` windows in one :meth:`Model.eval_batch` pass, a waiting window joining as
    another ends. A window's logits are those :meth:`Model.eval_sequence` gives it alone in the
    same chunks, so the losses do not depend on ``parallel``. Targets at positions below
    ``ignore_first`` are not scored. ``on_pass(tokens_read, new_losses)`` follows each pass."""
    losses = [[] for _ in windows]
    waiting = deque(k for k, w in enumerate(windows) if len(w) > 1)
    active = []  # [window index, tokens read, state]
    seconds = 0.0
    while waiting or active:
        while waiting and len(active) < parallel:
            active.append([waiting.popleft(), 0, model.init_state()])
        # The next chunk of each window's inputs: its last token is only a target.
        chunks = [windows[k][read : min(read + batch, len(windows[k]) - 1)] for k, read, _ in active]
        states = [state for _, _, state in active]
        t0 = time.perf_counter()
        logits, _ = model.eval_batch(chunks, states, all_logits=True, states_out=states)
        seconds += time.perf_counter() - t0
        new_losses = []
        for entry, chunk, chunk_logits in zip(active, chunks, logits):
            k, read, _ = entry
            targets = windows[k][read + 1 : read + 1 + len(chunk)]
            skip = max(0, ignore_first - (read + 1))
            if skip < len(chunk):
                losses[k].append(token_losses(chunk_logits[skip:], targets[skip:]))
                new_losses.append(losses[k][-1])
            entry[1] += len(chunk)
        active = [entry for entry in active if entry[1] < len(windows[entry[0]]) - 1]
        if on_pass:
            on_pass(sum(len(c) for c in chunks), new_losses)
    return [np.concatenate(parts) if parts else np.zeros(0) for parts in losses], seconds


def run(args) -> int:
    for name in ("ctx", "ignore_first", "limit"):
        if getattr(args, name) < 0:
            raise CommandError(f"--{name.replace('_', '-')} must be 0 or more")
    for name in ("batch", "parallel"):
        if getattr(args, name) < 1:
            raise CommandError(f"--{name} must be at least 1")
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
    so_far = [0.0, 0]  # loss and tokens scored, for the progress line

    def on_pass(tokens_read: int, new_losses) -> None:
        for part in new_losses:
            so_far[0] += float(part.sum())
            so_far[1] += len(part)
        progress.update(tokens_read, f"ppl {math.exp(so_far[0] / so_far[1]):.3f}" if so_far[1] else "")

    try:
        losses, eval_seconds = score_windows(model, windows, args.batch, args.parallel, args.ignore_first, on_pass)
    finally:
        progress.close()
    loss_sum = float(np.concatenate(losses).sum())
    scored = sum(len(part) for part in losses)
    scored_bytes = sum(len(tokenizer.decode_bytes(w[len(w) - len(part):].tolist())) for w, part in zip(windows, losses))

    loss = loss_sum / scored
    speed = n_inputs / eval_seconds if eval_seconds > 0 else float("inf")
    ctx_note = f"contexts of {args.ctx} tokens" if args.ctx else "one context"
    print(
        f"model: {os.path.basename(model.path)} ({model.arch}, {model.dtype}), "
        f"text: {os.path.basename(args.text)}, {n_text_tokens} tokens"
        + (f" (first {len(tokens)} used)" if len(tokens) < n_text_tokens else "")
    )
    print(f"read {n_inputs} tokens in {eval_seconds:.2f} s: {speed:.1f} tokens/s ({ctx_note}, batch {args.batch}"
          + (f", {min(args.parallel, len(windows))} at a time" if args.ctx else "") + ")")
    bpb = loss_sum / math.log(2) / scored_bytes if scored_bytes else float("nan")
    print(
        f"scored {scored} tokens: loss {loss:.4f}, perplexity {math.exp(loss):.4f}, "
        f"{loss / math.log(2):.4f} bits per token, {bpb:.4f} bits per byte"
    )
    return 0
