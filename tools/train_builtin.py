#!/usr/bin/env python3
"""Trains rwkvcpp's built-in toy model: a byte-level RWKV v7 on CPython's own help topics.

The corpus is ``pydoc_data.topics.topics``, which every CPython install carries, so the model can
be rebuilt anywhere with nothing downloaded. The model is plain torch (CPU, float32) with the
parameter names and shapes of BlinkDL's v7 checkpoints, so rwkvcpp.writer converts it as it would
a released model. After training, the script exports ``src/rwkvcpp/data/builtin-v7-byte.bin`` and
checks it with the rwkvcpp engine: held-out loss must match torch's, and a sample is printed.

    nice -n 19 python tools/train_builtin.py --seed 1234

The defaults are the shipped model (see src/rwkvcpp/data/MODEL_CARD.md): about 27 minutes on one
shared core. The run is deterministic for a given seed, thread count, torch build and CPython
minor version (the help topics differ between Python versions). --gradcheck tests the chunked
WKV kernel against the step-by-step recurrence and exits.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HEAD = 64  # v7 head size, as in the released models
REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "src" / "rwkvcpp" / "data" / "builtin-v7-byte.bin"


# ---- data ----------------------------------------------------------------------------------------

def load_corpus(heldout_frac: float = 0.05):
    """All help topics in sorted-key order as UTF-8 bytes; the last 5% is held out.

    A contiguous tail (not every 20th topic) gives a held-out set of predictable size: topic
    lengths vary from 0.5 KB to 60 KB, so a topic-based split would be lumpy.
    """
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[key].strip() for key in sorted(topics)) + "\n"
    data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    split = int(len(data) * (1 - heldout_frac))
    return torch.from_numpy(data[:split].astype(np.int64)), torch.from_numpy(data[split:].astype(np.int64))


# ---- the v7 recurrence -------------------------------------------------------------------------

def wkv7(r, lw, k, v, a, b, s0, chunk: int = 32):
    """Per head: S_t = S_{t-1} (diag(w_t) + a_t b_t^T) + v_t k_t^T and y_t = S_t r_t.

    S is (value index, key index) as in the official inference code, where a = -kk and
    b = kk * a_gate. Inputs are (B*H, T, N) with lw = log(w) (the log decay, in (-0.61, 0)), and
    s0 is (B*H, N, N). Returns y (B*H, T, N) and the final state.

    A step-by-step loop spends nearly all its time on memory traffic and per-op overhead, so this
    evaluates the same recurrence a chunk of L steps at a time, in plain torch ops that autograd
    differentiates. Within a chunk, with G_t = log(w_1 ... w_t) (cumulative, per key channel):

        S_t = (S_0 + sum_{s<=t} u_s (b_s e^{-G_s})^T + v_s (k_s e^{-G_s})^T) diag(e^{G_t}),
        u_t = S_{t-1} a_t,

    so the u_t solve one unit lower-triangular L x L system per chunk, and the outputs and the
    next chunk's state are matrix products. Only the short loop over chunks is sequential.
    The decay factors reach e^{0.61 L} at most (about 3e8 for L = 32): fine in float32, where
    every term is a product (no cancellation); the --gradcheck test compares with the plain loop.
    """
    BH, T, N = r.shape
    pad = (-T) % chunk
    if pad:  # padded steps have w = 1 and zero inputs: they leave the state as it is
        r, lw, k, v, a, b = (F.pad(z, (0, 0, 0, pad)) for z in (r, lw, k, v, a, b))
    nc, L = (T + pad) // chunk, chunk
    r, lw, k, v, a, b = (z.reshape(BH, nc, L, N) for z in (r, lw, k, v, a, b))
    G = lw.cumsum(2)
    a_t = a * (G - lw).exp()  # a_t scaled by the decay before step t
    r_t = r * G.exp()
    inv = (-G).exp()
    b_hat, k_hat = b * inv, k * inv
    to_end = (G[:, :, -1:] - G).exp()  # decay from each step to the chunk's end (<= 1)
    b_end, k_end = b * to_end, k * to_end
    strict = torch.ones(L, L, dtype=torch.bool, device=r.device).tril(-1)
    incl = torch.ones(L, L, dtype=torch.bool, device=r.device).tril()
    A_ab = (a_t @ b_hat.transpose(-1, -2)).masked_fill(~strict, 0.0)
    A_ak = (a_t @ k_hat.transpose(-1, -2)).masked_fill(~strict, 0.0)
    P = (r_t @ b_hat.transpose(-1, -2)).masked_fill(~incl, 0.0)
    Q = (r_t @ k_hat.transpose(-1, -2)).masked_fill(~incl, 0.0)
    eye = torch.eye(L, dtype=r.dtype, device=r.device)
    # u = W1 S0^T + W2 for each chunk: (I - A_ab) u = a_t S0^T + A_ak v
    W = torch.linalg.solve_triangular(eye - A_ab, torch.cat((a_t, A_ak @ v), -1), upper=False, unitriangular=True)
    W1, W2 = W[..., :N], W[..., N:]
    QV = Q @ v
    VK = v.transpose(-1, -2) @ k_end
    decay = G[:, :, -1].exp().unsqueeze(2)  # (BH, nc, 1, N): the whole chunk's decay
    S, ys = s0, []
    for c in range(nc):
        RS = torch.cat((r_t[:, c], W1[:, c]), 1) @ S.transpose(-1, -2)  # (BH, 2L, N)
        U = RS[:, L:] + W2[:, c]
        ys.append(RS[:, :L] + P[:, c] @ U + QV[:, c])
        S = S * decay[:, c] + U.transpose(-1, -2) @ b_end[:, c] + VK[:, c]
    y = torch.stack(ys, 1).reshape(BH, nc * L, N)[:, :T]
    return y, S


def wkv7_reference(r, w, k, v, a, b, s0):
    """The same recurrence one step at a time (w the decay itself, not its log): the plain
    definition, which --gradcheck compares wkv7 with."""
    s, ys = s0, []
    for t in range(r.shape[1]):
        s = s * w[:, t].unsqueeze(1) + (s @ a[:, t].unsqueeze(2)) @ b[:, t].unsqueeze(1) + v[:, t].unsqueeze(2) @ k[:, t].unsqueeze(1)
        ys.append((s @ r[:, t].unsqueeze(2)).squeeze(2))
    return torch.stack(ys, 1), s


# ---- the model -----------------------------------------------------------------------------------

def lora_dim(C: int, factor: float) -> int:
    return max(32, int(round(factor * C**0.5 / 32) * 32))  # RWKV-LM's low-rank sizes


class TimeMix(nn.Module):
    def __init__(self, C: int, layer: int, n_layer: int):
        super().__init__()
        self.layer, H = layer, C // HEAD
        r01 = layer / max(1, n_layer - 1)  # 0 at the first layer, 1 at the last
        r10 = 1.0 - layer / n_layer  # 1 at the first layer, towards 0 at the last
        ddd = (torch.arange(C) / C).view(1, 1, C)
        n = torch.arange(C, dtype=torch.float32)
        linear = n / (C - 1) - 0.5
        zigzag = ((n % HEAD) - (HEAD - 1) / 2) / ((HEAD - 1) / 2)
        zigzag = zigzag * zigzag.abs()
        # Token-shift mixes: deeper layers and later channels look more at the previous token.
        for name, p in (("x_r", 0.2), ("x_w", 0.9), ("x_k", 0.7), ("x_v", 0.7), ("x_a", 0.9), ("x_g", 0.2)):
            setattr(self, name, nn.Parameter(1.0 - ddd ** (p * r10)))
        # Decay bias spread over channels (fast to slow) with a zigzag inside each head, so every
        # head starts with a range of memory lengths. The LoRA's second factor is small and the
        # first zero, as in RWKV-LM, so each term starts near its bias and learns from there.
        www = -6 + 6 * (n / (C - 1)) ** (1 + r01**0.3)
        dw, da, dv, dg = lora_dim(C, 2.5), lora_dim(C, 2.5), lora_dim(C, 1.7), lora_dim(C, 5)
        self.w0 = nn.Parameter((www + 0.5 + zigzag * 2.5).view(1, 1, C))
        self.w1 = nn.Parameter(torch.zeros(C, dw))
        self.w2 = nn.Parameter(ortho(dw, C, 0.1))
        self.a0 = nn.Parameter((-0.19 + zigzag * 0.3 + linear * 0.4).view(1, 1, C))
        self.a1 = nn.Parameter(torch.zeros(C, da))
        self.a2 = nn.Parameter(ortho(da, C, 0.1))
        if layer > 0:  # value residual towards layer 0's v; layer 0 has none (as in the checkpoints)
            self.v0 = nn.Parameter((0.73 - linear * 0.4).view(1, 1, C))
            self.v1 = nn.Parameter(torch.zeros(C, dv))
            self.v2 = nn.Parameter(ortho(dv, C, 0.1))
        self.g1 = nn.Parameter(torch.zeros(C, dg))
        self.g2 = nn.Parameter(ortho(dg, C, 0.1))
        self.k_k = nn.Parameter((0.71 - linear * 0.1).view(1, 1, C))
        self.k_a = nn.Parameter(torch.full((1, 1, C), 1.02))
        self.r_k = nn.Parameter(torch.full((H, HEAD), -0.04))
        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(H, C, eps=64e-5)
        s = 0.5 / C**0.5
        nn.init.uniform_(self.receptance.weight, -s, s)
        nn.init.uniform_(self.key.weight, -0.1 * s, 0.1 * s)
        nn.init.uniform_(self.value.weight, -s, s)
        nn.init.zeros_(self.output.weight)  # each block starts as (nearly) the identity
        nn.init.constant_(self.ln_x.weight, ((1 + layer) / n_layer) ** 0.7)

    def forward(self, x, x_prev, s, v_first):
        B, T, C = x.shape
        H = C // HEAD
        xx = torch.cat((x_prev.unsqueeze(1), x[:, :-1]), 1) - x
        xr, xw, xk, xv, xa, xg = (x + xx * m for m in (self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g))
        r, k, v = self.receptance(xr), self.key(xk), self.value(xv)
        lw = -0.606531 * torch.sigmoid(self.w0 + torch.tanh(xw @ self.w1) @ self.w2)  # log of w
        a = torch.sigmoid(self.a0 + (xa @ self.a1) @ self.a2)
        g = torch.sigmoid(xg @ self.g1) @ self.g2
        kk = F.normalize((k * self.k_k).view(B, T, H, HEAD), dim=-1).view(B, T, C)
        k = k * (1 + (a - 1) * self.k_a)
        if self.layer == 0:
            v_first = v
        else:
            v = v + (v_first - v) * torch.sigmoid(self.v0 + (xv @ self.v1) @ self.v2)

        def heads(z):  # (B, T, C) -> (B*H, T, N)
            return z.view(B, T, H, HEAD).transpose(1, 2).reshape(B * H, T, HEAD)

        y, s = wkv7(heads(r), heads(lw), heads(k), heads(v), heads(-kk), heads(kk * a), s.reshape(B * H, HEAD, HEAD))
        y = y.view(B, H, T, HEAD).transpose(1, 2).reshape(B * T, C)
        y = self.ln_x(y).view(B, T, C)
        bonus = (r * k * self.r_k.view(1, 1, C)).view(B, T, H, HEAD).sum(-1, keepdim=True)
        y = y + (bonus * v.view(B, T, H, HEAD)).view(B, T, C)
        return self.output(y * g), x[:, -1], s.view(B, H, HEAD, HEAD), v_first


class ChannelMix(nn.Module):
    def __init__(self, C: int, layer: int, n_layer: int):
        super().__init__()
        ddd = (torch.arange(C) / C).view(1, 1, C)
        self.x_k = nn.Parameter(1.0 - ddd ** ((1.0 - layer / n_layer) ** 4))
        self.key = nn.Linear(C, 4 * C, bias=False)
        self.value = nn.Linear(4 * C, C, bias=False)
        nn.init.uniform_(self.key.weight, -0.5 / C**0.5, 0.5 / C**0.5)
        nn.init.zeros_(self.value.weight)

    def forward(self, x, x_prev):
        xx = torch.cat((x_prev.unsqueeze(1), x[:, :-1]), 1) - x
        return self.value(torch.relu(self.key(x + xx * self.x_k)) ** 2), x[:, -1]


class Block(nn.Module):
    def __init__(self, C: int, layer: int, n_layer: int):
        super().__init__()
        if layer == 0:
            self.ln0 = nn.LayerNorm(C)  # registered first: checkpoint order is ln0, ln1, ln2, att, ffn
        self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.att = TimeMix(C, layer, n_layer)
        self.ffn = ChannelMix(C, layer, n_layer)


class RWKV7(nn.Module):
    def __init__(self, n_layer: int, C: int, vocab: int = 256):
        super().__init__()
        self.n_layer, self.C = n_layer, C
        self.emb = nn.Embedding(vocab, C)
        self.blocks = nn.ModuleList(Block(C, i, n_layer) for i in range(n_layer))
        self.ln_out = nn.LayerNorm(C)
        self.head = nn.Linear(C, vocab, bias=False)
        nn.init.uniform_(self.emb.weight, -1e-4, 1e-4)  # tiny, ln0 rescales it (RWKV-LM's trick)
        nn.init.orthogonal_(self.head.weight, gain=0.5 * max(1.0, (vocab / C) ** 0.5))

    def zero_state(self, B: int):
        """Per layer: (att x_prev (B, C), wkv state (B, H, N, N), ffn x_prev (B, C))."""
        C = self.C
        return [(torch.zeros(B, C), torch.zeros(B, C // HEAD, HEAD, HEAD), torch.zeros(B, C)) for _ in self.blocks]

    def forward(self, idx, state=None):
        state = state if state is not None else self.zero_state(idx.shape[0])
        x = self.blocks[0].ln0(self.emb(idx))
        v_first, new_state = None, []
        for block, (att_prev, s, ffn_prev) in zip(self.blocks, state):
            dx, att_prev, s, v_first = block.att(block.ln1(x), att_prev, s, v_first)
            x = x + dx
            dx, ffn_prev = block.ffn(block.ln2(x), ffn_prev)
            x = x + dx
            new_state.append((att_prev, s, ffn_prev))
        return self.head(self.ln_out(x)), new_state


def ortho(rows: int, cols: int, scale: float):
    w = torch.empty(rows, cols)
    nn.init.orthogonal_(w, gain=scale * max(1.0, (rows / cols) ** 0.5))
    return w


# ---- training and evaluation ---------------------------------------------------------------------

def lr_at(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr_final + (args.lr - args.lr_final) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model, args):
    # Weight decay only on the big matrices (as RWKV-LM does): decaying the per-channel biases
    # (w0, a0, ...) or the norms would pull them away from their carefully spread init.
    decay = [p for n, p in model.named_parameters() if n.endswith(".weight") and p.dim() == 2]
    other = [p for n, p in model.named_parameters() if not (n.endswith(".weight") and p.dim() == 2)]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.99), eps=1e-8)


@torch.no_grad()
def torch_nll(model, data, window: int, chunk: int):
    """Mean cross-entropy (nats/byte) over `data` read in windows that each start from the zero
    state, fed `chunk` bytes at a time with the state carried: the engine check reads the same way."""
    total, count = 0.0, 0
    for start in range(0, len(data) - 1, window):
        piece = data[start:start + window + 1]
        state = None
        for c in range(0, len(piece) - 1, chunk):
            x = piece[c:c + chunk + 1]
            logits, state = model(x[:-1].unsqueeze(0), state)
            total += F.cross_entropy(logits[0], x[1:], reduction="sum").item()
            count += len(x) - 1
    return total / count


def engine_nll(engine, data, window: int):
    total, count = 0.0, 0
    for start in range(0, len(data) - 1, window):
        piece = data[start:start + window + 1].numpy()
        logits, _ = engine.eval_sequence(piece[:-1].tolist(), all_logits=True)
        logits = logits.astype(np.float64)
        m = logits.max(1, keepdims=True)
        logp = logits - m - np.log(np.exp(logits - m).sum(1, keepdims=True))
        total -= logp[np.arange(len(piece) - 1), piece[1:]].sum()
        count += len(piece) - 1
    return total / count


def engine_generate(engine, prompt: str, n: int, temperature: float, rng) -> str:
    out = list(prompt.encode("utf-8"))
    logits, state = engine.eval_sequence(out)
    for _ in range(n):
        if temperature == 0:
            tok = int(np.argmax(logits))
        else:
            z = logits.astype(np.float64)
            p = np.exp((z - z.max()) / temperature)
            tok = int(rng.choice(256, p=p / p.sum()))
        out.append(tok)
        logits, state = engine.eval(tok, state)
    return bytes(out).decode("utf-8", errors="replace")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def describe(nll: float) -> str:
    return f"{nll:.4f} nats/byte = {nll / math.log(2):.4f} bits/byte, perplexity {math.exp(nll):.3f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=192)
    ap.add_argument("--ctx", type=int, default=128, help="bytes per training chunk (BPTT length)")
    ap.add_argument("--carry", type=int, default=4, help="chunks read in a row with the state carried")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--lr-final", type=float, default=1e-4)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; on a shared 2-core machine 2 threads run slower than 1, "
                         "since each op waits for the other thread to be scheduled")
    ap.add_argument("--eval-window", type=int, default=2048, help="held-out bytes per zero-state window")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--pth", type=Path, default=Path("/tmp/builtin-v7-byte.pth"))
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--eval-every", type=int, default=250, help="held-out loss every N steps (0: only at the end)")
    ap.add_argument("--gradcheck", action="store_true", help="check WKV7's backward and exit")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.gradcheck:
        # wkv7 against the step-by-step definition: gradients (float64, small) and forward
        # accuracy in float32 at training size, including the fastest decay everywhere.
        def inputs(BH, T, N, dtype, bias=0.0):
            r, k, v, z = (torch.randn(BH, T, N, dtype=dtype) for _ in range(4))
            lw = -0.606531 * torch.sigmoid(3 * z + bias)
            kk = F.normalize(torch.randn(BH, T, N, dtype=dtype), dim=-1)
            return r, lw, k, v, -kk, kk * torch.rand_like(kk), torch.randn(BH, N, N, dtype=dtype)

        ins = [x.requires_grad_() for x in inputs(2, 11, 8, torch.float64)]
        print("gradcheck (chunk 4, T 11):", torch.autograd.gradcheck(lambda *x: wkv7(*x, chunk=4), ins))
        for bias in (0.0, 20.0):
            r, lw, k, v, a, b, s0 = inputs(8, 2 * args.ctx + 5, HEAD, torch.float32, bias)
            y1, s1 = wkv7(r, lw, k, v, a, b, s0)
            y2, s2 = wkv7_reference(*(x.double() for x in (r, lw.exp(), k, v, a, b, s0)))
            print(f"float32 vs float64 step loop (decay bias {bias}): relative error y "
                  f"{float((y1 - y2).abs().max() / y2.abs().max()):.2e}, state {float((s1 - s2).abs().max() / s2.abs().max()):.2e}")
        return

    print(f"torch {torch.__version__}, {args.threads} thread(s), {cpu_name()}, Python {sys.version.split()[0]}")
    train, heldout = load_corpus()
    print(f"corpus: pydoc_data.topics of Python {sys.version_info[0]}.{sys.version_info[1]}: "
          f"{len(train) + len(heldout)} bytes, train {len(train)}, held out {len(heldout)}")
    model = RWKV7(args.n_layer, args.n_embd)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {args.n_layer} layers, n_embd {args.n_embd}, {n_params} parameters")
    opt = make_optimizer(model, args)
    gen = torch.Generator().manual_seed(args.seed)  # batch positions: the run is reproducible
    span = args.ctx * args.carry
    offsets = torch.arange(args.ctx + 1)
    t0, state, smooth, eval_seconds = time.time(), None, None, 0.0
    for step in range(args.steps):
        # Each row reads `carry` consecutive chunks with the state carried (detached) between
        # them, then jumps to a new random place with a zero state. So the model learns both to
        # start from nothing and to use state built up over ctx*carry bytes, as the engine does.
        if step % args.carry == 0:
            pos = torch.randint(0, len(train) - span - 1, (args.batch,), generator=gen)
            state = None
        batch = train[(pos + (step % args.carry) * args.ctx).unsqueeze(1) + offsets]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        logits, state = model(batch[:, :-1], state)
        state = [tuple(t.detach() for t in layer) for layer in state]
        loss = F.cross_entropy(logits.reshape(-1, 256), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        smooth = loss.item() if smooth is None else 0.95 * smooth + 0.05 * loss.item()
        if step % args.log_every == 0 or step == args.steps - 1:
            el = time.time() - t0
            print(f"step {step:5d}  loss {loss.item():.4f}  smooth {smooth:.4f} ({smooth / math.log(2):.3f} bpb)  "
                  f"lr {lr_at(step, args):.2e}  gnorm {gnorm:.2f}  {el / 60:.1f} min  "
                  f"{(step + 1) * args.batch * args.ctx / el:.0f} bytes/s", flush=True)
        if args.eval_every and step > 0 and step % args.eval_every == 0:
            te = time.time()
            model.eval()  # no dropout or random draws: evaluating does not change the run
            print(f"step {step:5d}  held-out {describe(torch_nll(model, heldout, args.eval_window, 256))}", flush=True)
            model.train()
            eval_seconds += time.time() - te
    train_minutes = (time.time() - t0 - eval_seconds) / 60
    print(f"training: {args.steps} steps in {train_minutes:.1f} min (+{eval_seconds / 60:.1f} min of held-out "
          f"evaluation), final smoothed loss {smooth:.4f} nats/byte = {smooth / math.log(2):.4f} bits/byte")

    model.eval()
    nll_torch = torch_nll(model, heldout, args.eval_window, 256)
    print(f"held-out (torch):  {describe(nll_torch)}")

    # Export: numpy float32 arrays with BlinkDL's names and shapes; the writer does the rest.
    checkpoint = {name: t.detach().float().numpy().copy() for name, t in model.state_dict().items()}
    args.pth.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: torch.from_numpy(v) for k, v in checkpoint.items()}, args.pth)
    sys.path.insert(0, str(REPO / "src"))
    from rwkvcpp.writer import write_model

    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_model(args.out, checkpoint, dtype="FP16")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB); checkpoint {args.pth}")

    # Verify with the engine: same held-out windows, same loss within FP16 rounding.
    import rwkvcpp

    engine = rwkvcpp.Model(args.out, threads=args.threads)
    first = heldout[:args.eval_window + 1]
    nll_t0 = torch_nll(model, first, args.eval_window, 256)
    nll_e0 = engine_nll(engine, first, args.eval_window)
    print(f"first {args.eval_window} held-out bytes: torch {describe(nll_t0)}\n"
          f"{'':>{len(str(args.eval_window)) + 25}}engine {describe(nll_e0)}")
    nll_engine = engine_nll(engine, heldout, args.eval_window)
    print(f"held-out (engine): {describe(nll_engine)}")
    ratio = math.exp(nll_engine) / math.exp(nll_torch)
    print(f"engine/torch perplexity ratio: {ratio:.4f}")
    if not 0.97 < ratio < 1.03:
        sys.exit("engine and torch disagree by more than 3%: the export or the engine is wrong")
    rng = np.random.default_rng(args.seed)
    print("greedy:  ", repr(engine_generate(engine, "The ", 200, 0.0, rng)))
    print("T=0.7:   ", repr(engine_generate(engine, "The ", 300, 0.7, rng)))


if __name__ == "__main__":
    main()
