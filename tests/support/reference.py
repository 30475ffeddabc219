"""A slow, readable numpy reference of RWKV v4, v5.1, v5.2, v6 and v7 inference, in float64.

It works on the raw checkpoint (BlinkDL's PyTorch names and shapes, before any of the ``.bin``
transforms), so comparing it with an engine that reads ``.bin`` files also checks the writer's
transforms. The math follows the official ``rwkv`` package (rwkv/model.py), one token at a time.

Linear weights are PyTorch (out, in) matrices, so a projection is ``W @ x``. Low-rank v6/v7
matrices are used as the checkpoint stores them: ``x @ w1`` then ``@ w2``.

The state is one flat vector laid out as FORMAT.md "State" (and rwkv.cpp): per layer, the ffn's
previous x (C), the attention's previous x (C), then for v4 the three vectors aa, bb, pp and for
v5/v6/v7 the wkv matrices H x S x S (S the head size, 64 in every released model). Inside a v5/v6
matrix the index is [head][key][value]; inside a v7 matrix it is [head][value][key], as in the
official code. The head count is the first dimension of the checkpoint's v5 time_decay, v6
time_faaaa or v7 r_k.
"""

from __future__ import annotations

import numpy as np

LAYER_NORM_EPS = 1e-5
GROUP_NORM_EPS = 64e-5  # the official ln_x eps for v5/v6/v7 (1e-5 * head_size_divisor 8 squared)
# rwkv.cpp's v5 ln_x eps, which its tiny models (heads of 8) were recorded with. The engine uses it
# for v5 models whose heads are not 64 wide (csrc/arch/v5.c ln_x_eps), and so does this reference.
V5_OTHER_HEADS_GROUP_NORM_EPS = 1e-5
RELEASED_HEAD_SIZE = 64
# The checkpoint tensor whose first dimension is the head count: v5.1 (H), v5.2 (H, S), v6 (H, S),
# v7 (H, S).
HEAD_TENSOR = {"v5.1": "time_decay", "v5.2": "time_decay", "v6": "time_faaaa", "v7": "r_k"}
V7_DECAY_SCALE = 0.606531  # the official package's rounding of exp(-0.5)


def detect_arch(names) -> str:
    """The architecture from checkpoint key names (kept separate from rwkvcpp on purpose)."""
    names = set(names)
    if "blocks.0.att.r_k" in names:
        return "v7"
    if "blocks.0.att.time_maa_x" in names:
        return "v6"
    if "blocks.0.att.ln_x.weight" in names:
        return "v5.2" if "blocks.0.att.gate.weight" in names else "v5.1"
    return "v4"


def layer_norm(x, weight, bias, eps=LAYER_NORM_EPS):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def group_norm(x, n_groups, weight, bias, eps=GROUP_NORM_EPS):
    """Layer norm of each group of consecutive channels, then a per-channel affine map."""
    groups = x.reshape(n_groups, -1)
    mean = groups.mean(axis=1, keepdims=True)
    var = ((groups - mean) ** 2).mean(axis=1, keepdims=True)
    return ((groups - mean) / np.sqrt(var + eps)).reshape(-1) * weight + bias


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def silu(x):
    return x * sigmoid(x)


def round_to_bf16(x):
    """Rounds to the nearest bfloat16 value (ties to even), returned as float64."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32).astype(np.float64).reshape(np.shape(x))


class Reference:
    """Float64 RWKV inference on a raw checkpoint.

    ``bf16_embedding=True`` rounds the layer-normed embedding to bfloat16, which is what the
    official package does for v4/v5/v6 checkpoints stored as bf16 (it layer-norms the embedding
    in the checkpoint's dtype). It exists only to compare with the official package tightly.
    """

    def __init__(self, checkpoint, bf16_embedding: bool = False):
        self.w = {name: np.asarray(value, dtype=np.float64) for name, value in checkpoint.items()}
        self.arch = detect_arch(self.w)
        self.n_vocab, self.n_embed = self.w["emb.weight"].shape
        self.n_layer = sum(1 for name in self.w if name.startswith("blocks.") and name.endswith(".ln1.weight"))
        if self.arch == "v4":
            self.n_head = self.head_size = 0
        else:
            self.n_head = self.w[f"blocks.0.att.{HEAD_TENSOR[self.arch]}"].shape[0]
            self.head_size = self.n_embed // self.n_head
        v5_other_heads = self.arch.startswith("v5") and self.head_size != RELEASED_HEAD_SIZE
        self.group_norm_eps = V5_OTHER_HEADS_GROUP_NORM_EPS if v5_other_heads else GROUP_NORM_EPS
        # The embedding is layer-normed with blocks.0.ln0 before the first layer.
        self.emb = layer_norm(self.w["emb.weight"], self.w["blocks.0.ln0.weight"], self.w["blocks.0.ln0.bias"])
        if bf16_embedding:
            self.emb = round_to_bf16(self.emb)

    # ----------------------------------------------------------------------------------- state

    @property
    def _wkv_size(self) -> int:
        return 3 * self.n_embed if self.arch == "v4" else self.n_head * self.head_size * self.head_size

    @property
    def layer_state_size(self) -> int:
        return 2 * self.n_embed + self._wkv_size

    @property
    def state_size(self) -> int:
        return self.n_layer * self.layer_state_size

    def init_state(self) -> np.ndarray:
        state = np.zeros(self.state_size, dtype=np.float64)
        if self.arch == "v4":
            for i in range(self.n_layer):
                _, _, wkv = self._layer_views(state, i)
                wkv[2] = -1e30  # pp: the running maximum exponent starts at "minus infinity"
        return state

    def _layer_views(self, state, i):
        """Views of one layer's (ffn previous x, att previous x, wkv state) inside the flat state."""
        C = self.n_embed
        layer = state[i * self.layer_state_size : (i + 1) * self.layer_state_size]
        ffn_x, att_x, wkv = layer[:C], layer[C : 2 * C], layer[2 * C :]
        if self.arch == "v4":
            wkv = wkv.reshape(3, C)  # aa, bb, pp
        else:
            wkv = wkv.reshape(self.n_head, self.head_size, self.head_size)
        return ffn_x, att_x, wkv

    # ------------------------------------------------------------------------------ evaluation

    def eval(self, token: int, state=None):
        """Logits (V,) after feeding one token, and the new state (the input is not modified)."""
        state = self.init_state() if state is None else np.array(state, dtype=np.float64)
        w = self.w
        x = self.emb[token].copy()
        v_first = None  # v7: the value of layer 0, mixed into later layers' values
        for i in range(self.n_layer):
            ffn_x, att_x, wkv = self._layer_views(state, i)
            p = f"blocks.{i}."

            xx = layer_norm(x, w[p + "ln1.weight"], w[p + "ln1.bias"])
            if self.arch == "v7":
                out, v_first = self._att_v7(i, xx, att_x, wkv, v_first)
            else:
                out = getattr(self, "_att_" + self.arch.replace(".", "_"))(i, xx, att_x, wkv)
            att_x[:] = xx
            x = x + out

            xx = layer_norm(x, w[p + "ln2.weight"], w[p + "ln2.bias"])
            x = x + self._ffn(i, xx, ffn_x)
            ffn_x[:] = xx

        x = layer_norm(x, w["ln_out.weight"], w["ln_out.bias"])
        return w["head.weight"] @ x, state

    def eval_sequence(self, tokens, state=None):
        """Logits of every token (T, V) and the state after the last one."""
        state = self.init_state() if state is None else np.array(state, dtype=np.float64)
        all_logits = []
        for token in tokens:
            logits, state = self.eval(int(token), state)
            all_logits.append(logits)
        return np.stack(all_logits), state

    # ----------------------------------------------------------------------------- time mixing

    def _att_v4(self, i, x, x_prev, wkv):
        w, p = self.w, f"blocks.{i}.att."
        aa, bb, pp = wkv  # numerator, denominator, and the exponent they are scaled by

        def mix(name):  # v4/v5 mixes weight the current token
            m = w[p + name].reshape(-1)
            return x * m + x_prev * (1 - m)

        r = sigmoid(w[p + "receptance.weight"] @ mix("time_mix_r"))
        k = w[p + "key.weight"] @ mix("time_mix_k")
        v = w[p + "value.weight"] @ mix("time_mix_v")
        decay = -np.exp(w[p + "time_decay"].reshape(-1))
        first = w[p + "time_first"].reshape(-1)

        # Output: the current token gets the bonus `first`; all exponents are shifted by their max.
        ww = first + k
        q = np.maximum(pp, ww)
        e1, e2 = np.exp(pp - q), np.exp(ww - q)
        out = (e1 * aa + e2 * v) / (e1 * bb + e2)

        # State update: decay the past, add the current token.
        ww = decay + pp
        q = np.maximum(ww, k)
        e1, e2 = np.exp(ww - q), np.exp(k - q)
        aa[:], bb[:], pp[:] = e1 * aa + e2 * v, e1 * bb + e2, q
        return w[p + "output.weight"] @ (r * out)

    def _wkv_v5_v6(self, r, k, v, decay, bonus, s):
        """out_h = r_h (bonus_h * k_h v_h^T + S_h); S_h <- k_h v_h^T + decay_h * S_h.

        `decay` and `bonus` are (H, N) (one value per key channel) and scale the key rows of S.
        """
        H, N = self.n_head, self.head_size
        r, k, v = r.reshape(H, N), k.reshape(H, N), v.reshape(H, N)
        kv = k[:, :, None] * v[:, None, :]  # [head][key][value]
        out = np.einsum("hi,hij->hj", r, bonus[:, :, None] * kv + s)
        s[:] = kv + decay[:, :, None] * s
        return out.reshape(-1)

    def _att_v5(self, i, x, x_prev, wkv, gated):
        w, p = self.w, f"blocks.{i}.att."
        H, N = self.n_head, self.head_size

        def mix(name):
            m = w[p + name].reshape(-1)
            return x * m + x_prev * (1 - m)

        r = w[p + "receptance.weight"] @ mix("time_mix_r")
        k = w[p + "key.weight"] @ mix("time_mix_k")
        v = w[p + "value.weight"] @ mix("time_mix_v")
        # time_decay has one value per head (v5.1) or per channel (v5.2); broadcast to (H, N).
        decay = np.broadcast_to(np.exp(-np.exp(w[p + "time_decay"])).reshape(H, -1), (H, N))
        if gated:
            bonus = w[p + "time_faaaa"].reshape(H, N)
        else:
            bonus = np.broadcast_to(np.exp(w[p + "time_first"]).reshape(H, -1), (H, N))

        out = self._wkv_v5_v6(r, k, v, decay, bonus, wkv)
        out = group_norm(out, H, w[p + "ln_x.weight"], w[p + "ln_x.bias"], self.group_norm_eps)
        if gated:
            out = out * silu(w[p + "gate.weight"] @ mix("time_mix_g"))
        return w[p + "output.weight"] @ out

    def _att_v5_1(self, i, x, x_prev, wkv):
        return self._att_v5(i, x, x_prev, wkv, gated=False)

    def _att_v5_2(self, i, x, x_prev, wkv):
        return self._att_v5(i, x, x_prev, wkv, gated=True)

    def _att_v6(self, i, x, x_prev, wkv):
        w, p = self.w, f"blocks.{i}.att."
        H, N = self.n_head, self.head_size
        delta = x_prev - x  # v6/v7 mixes weight the previous token: x + (x_prev - x) * mix

        # Data-dependent mixes: a low-rank function of the shifted input adjusts each mix.
        base = x + delta * w[p + "time_maa_x"].reshape(-1)
        lora_w2 = w[p + "time_maa_w2"]  # (5, D, C)
        hidden = np.tanh(base @ w[p + "time_maa_w1"]).reshape(5, lora_w2.shape[1])
        adjust = np.einsum("fd,fdc->fc", hidden, lora_w2)  # for w, k, v, r, g
        mixed = {
            target: x + delta * (w[p + "time_maa_" + target].reshape(-1) + adjust[n])
            for n, target in enumerate("wkvrg")
        }

        r = w[p + "receptance.weight"] @ mixed["r"]
        k = w[p + "key.weight"] @ mixed["k"]
        v = w[p + "value.weight"] @ mixed["v"]
        g = silu(w[p + "gate.weight"] @ mixed["g"])
        # Data-dependent decay per channel.
        log_log_decay = w[p + "time_decay"].reshape(-1) + np.tanh(mixed["w"] @ w[p + "time_decay_w1"]) @ w[
            p + "time_decay_w2"
        ]
        decay = np.exp(-np.exp(log_log_decay)).reshape(H, N)
        bonus = w[p + "time_faaaa"].reshape(H, N)

        out = self._wkv_v5_v6(r, k, v, decay, bonus, wkv)
        out = group_norm(out, H, w[p + "ln_x.weight"], w[p + "ln_x.bias"], self.group_norm_eps)
        return w[p + "output.weight"] @ (out * g)

    def _att_v7(self, i, x, x_prev, s, v_first):
        w, p = self.w, f"blocks.{i}.att."
        H, N = self.n_head, self.head_size
        delta = x_prev - x

        def mix(name):
            return x + delta * w[p + name].reshape(-1)

        xr, xw, xk, xv, xa, xg = (mix(n) for n in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"))
        r = w[p + "receptance.weight"] @ xr
        k = w[p + "key.weight"] @ xk
        v = w[p + "value.weight"] @ xv
        decay_lora = np.tanh(xw @ w[p + "w1"]) @ w[p + "w2"]
        a = sigmoid(w[p + "a0"].reshape(-1) + (xa @ w[p + "a1"]) @ w[p + "a2"])  # in-context learning rate
        g = sigmoid(xg @ w[p + "g1"]) @ w[p + "g2"]

        # kk: the normalized key per head, the direction the state forgets before writing.
        kk = (k * w[p + "k_k"].reshape(-1)).reshape(H, N)
        kk = kk / np.maximum(np.linalg.norm(kk, axis=1, keepdims=True), 1e-12)
        k = k * (1 + (a - 1) * w[p + "k_a"].reshape(-1))
        if i == 0:
            v_first = v
        else:  # value residual: pull v towards layer 0's value
            v = v + (v_first - v) * sigmoid(w[p + "v0"].reshape(-1) + (xv @ w[p + "v1"]) @ w[p + "v2"])
        decay = np.exp(-V7_DECAY_SCALE * sigmoid(w[p + "w0"].reshape(-1) + decay_lora))

        # S_h <- S_h diag(decay) - (S_h kk) (kk * a)^T + v k^T, with S indexed [value][key].
        rh, kh, vh = r.reshape(H, N), k.reshape(H, N), v.reshape(H, N)
        decay, a = decay.reshape(H, N), a.reshape(H, N)
        removed = np.einsum("hij,hj->hi", s, kk)  # S kk
        s[:] = (
            s * decay[:, None, :]
            - removed[:, :, None] * (kk * a)[:, None, :]
            + vh[:, :, None] * kh[:, None, :]
        )
        out = np.einsum("hij,hj->hi", s, rh).reshape(-1)

        out = group_norm(out, H, w[p + "ln_x.weight"], w[p + "ln_x.bias"], self.group_norm_eps)
        # Bonus: the current token's own value, weighted by r . (k * r_k) per head.
        out = out + ((rh * kh * w[p + "r_k"].reshape(H, N)).sum(axis=1, keepdims=True) * vh).reshape(-1)
        return w[p + "output.weight"] @ (out * g), v_first

    # ---------------------------------------------------------------------------- channel mixing

    def _ffn(self, i, x, x_prev):
        w, p = self.w, f"blocks.{i}.ffn."
        if self.arch == "v7":
            k = x + (x_prev - x) * w[p + "x_k"].reshape(-1)
            return w[p + "value.weight"] @ np.maximum(w[p + "key.weight"] @ k, 0) ** 2
        if self.arch == "v6":
            delta = x_prev - x
            k = x + delta * w[p + "time_maa_k"].reshape(-1)
            r = x + delta * w[p + "time_maa_r"].reshape(-1)
        else:
            mk, mr = w[p + "time_mix_k"].reshape(-1), w[p + "time_mix_r"].reshape(-1)
            k = x * mk + x_prev * (1 - mk)
            r = x * mr + x_prev * (1 - mr)
        gate = sigmoid(w[p + "receptance.weight"] @ r)
        return gate * (w[p + "value.weight"] @ np.maximum(w[p + "key.weight"] @ k, 0) ** 2)
