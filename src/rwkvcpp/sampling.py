"""Choosing the next token from a model's logits.

``SamplingParams`` holds the user's settings; a ``Sampler`` applies them to
one generation: it owns the random generator and the repetition-penalty
counts, and turns each logits vector into a token id.

Order of operations in :meth:`Sampler.sample`:

1. logit bias, banned tokens (-inf), presence and frequency penalties;
2. temperature (0 means greedy: the arg-max is returned);
3. top-k, then top-p (nucleus), then min-p, on the tempered distribution;
4. a draw from what is left.

With ``logprobs`` set, :meth:`Sampler.sample_scored` also gives the sampled token's log
probability and the most likely alternatives, under the distribution of step 2: after bias,
bans, penalties and temperature, before top-k / top-p / min-p cut it (at temperature 0, the
softmax of the step-1 logits). That is what OpenAI and llama.cpp's server report.

Penalties follow ChatRWKV: a token that has appeared loses
``presence_penalty + frequency_penalty * count``, and after each generated
token every count is multiplied by ``penalty_decay`` before the new token is
added, so old repetitions weigh less.  The presence part does not decay.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, Optional

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .constrain import Grammar

if TYPE_CHECKING:
    from typing_extensions import TypeIs

#: Log probabilities, adjusted logits, distributions: float64 vectors of n_vocab.
F64Array = NDArray[np.float64]
#: A grammar's mask of the tokens allowed next.
Mask = NDArray[np.bool_]

__all__ = ["CHAT_DEFAULTS", "Sampler", "SamplingParams", "TokenLogprob", "log_softmax", "token_logprob"]

# The most alternatives a token's logprobs list (OpenAI's limit for top_logprobs).
MAX_TOP_LOGPROBS = 20

# Sampling for conversation (rwkv.cpp's chat_with_bot.py settings, with ChatRWKV's penalty decay):
# plain temperature 1 / top_p 1 makes small RWKV models ramble and repeat. Used by `rwkvcpp chat`
# and by the server for fields a request leaves out.
CHAT_DEFAULTS = {
    "temperature": 0.8,
    "top_p": 0.5,
    "top_k": 0,
    "min_p": 0.0,
    "presence_penalty": 0.2,
    "frequency_penalty": 0.2,
    "penalty_decay": 0.996,
}

# Top-p first looks at this many of the most likely tokens and sorts only
# those; a full sort of a 65536-entry vocabulary is needed only when they do
# not reach the requested mass.
_TOP_P_PREFIX = 1024


# numpy's scalars pass too: to the type checker they stand for the float / int they act as.
def _is_real(x: object) -> TypeIs[float]:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _is_int(x: object) -> TypeIs[int]:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _check_real(name: str, value: object, lo: float, hi: float, allowed: str) -> float:
    if not _is_real(value) or math.isnan(value) or not lo <= value <= hi:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return float(value)


def _check_token_ids(name: str, ids: int | Iterable[int]) -> tuple[int, ...]:
    if _is_int(ids):
        ids = (ids,)
    try:
        ids = tuple(ids)
    except TypeError:
        raise ValueError(f"{name} must be a list of token ids (integers >= 0), got {ids!r}") from None
    for i in ids:
        if not _is_int(i) or i < 0:
            raise ValueError(f"{name} must contain token ids (integers >= 0), got {i!r}")
    return tuple(int(i) for i in ids)


@dataclass
class SamplingParams:
    """Settings for choosing tokens.  All fields are checked on creation.

    temperature:       >= 0; 0 picks the most likely token (greedy).
    top_p:             in [0, 1]; keep the smallest set of most likely tokens
                       whose probability reaches top_p (1 = off).
    top_k:             >= 0; keep only the k most likely tokens (0 = off).
    min_p:             in [0, 1]; drop tokens less likely than min_p times the
                       most likely one (0 = off).
    presence_penalty:  subtracted from the logit of every token seen before.
    frequency_penalty: subtracted once per (decayed) occurrence.
    penalty_decay:     in [0, 1]; occurrence counts are multiplied by it after
                       every generated token (ChatRWKV uses 0.996; 1 = off).
    count_prompt:      also count the prompt's tokens toward the penalties.
    logit_bias:        {token id: value added to its logit}; -inf bans.
    banned_tokens:     token ids that are never produced.
    stop_tokens:       token ids that end generation (not part of the output).
    stop:              strings that end generation (not part of the output).
    seed:              seed of the random generator (None = unpredictable).
    max_tokens:        most tokens to generate (None = no limit).
    logprobs:          None (off), or 0..20: report each sampled token's log probability
                       and that many most likely alternatives (see the module's notes).
    grammar:           a :class:`~rwkvcpp.constrain.Grammar` the output must follow (JSON
                       schema, GBNF, regex); None = free text.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_decay: float = 1.0
    count_prompt: bool = False
    logit_bias: dict[int, float] = field(default_factory=dict)
    banned_tokens: Sequence[int] = ()
    stop_tokens: Sequence[int] = ()
    stop: str | Sequence[str] = ()
    seed: int | None = None
    max_tokens: int | None = 256
    logprobs: int | None = None
    grammar: Grammar | None = None

    def __post_init__(self) -> None:
        inf = math.inf
        self.temperature = _check_real("temperature", self.temperature, 0.0, inf, "a number >= 0 (0 = greedy)")
        if math.isinf(self.temperature):
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature!r}")
        self.top_p = _check_real("top_p", self.top_p, 0.0, 1.0, "a number in [0, 1] (1 = off)")
        self.min_p = _check_real("min_p", self.min_p, 0.0, 1.0, "a number in [0, 1] (0 = off)")
        self.penalty_decay = _check_real(
            "penalty_decay", self.penalty_decay, 0.0, 1.0, "a number in [0, 1] (1 = no decay)"
        )
        for name in ("presence_penalty", "frequency_penalty"):
            setattr(self, name, _check_real(name, getattr(self, name), -inf, inf, "a finite number"))
            if math.isinf(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)!r}")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        self.top_k = int(self.top_k)
        if not isinstance(self.count_prompt, (bool, np.bool_)):
            raise ValueError(f"count_prompt must be True or False, got {self.count_prompt!r}")
        self.count_prompt = bool(self.count_prompt)

        if not isinstance(self.logit_bias, dict):
            raise ValueError(f"logit_bias must be a dict of token id -> bias, got {self.logit_bias!r}")
        bias = {}
        for token, value in self.logit_bias.items():
            # JSON objects (e.g. from an HTTP API) have string keys.
            if isinstance(token, str) and token.strip().isdigit():
                token = int(token)
            if not _is_int(token) or token < 0:
                raise ValueError(f"logit_bias keys must be token ids (integers >= 0), got {token!r}")
            if not _is_real(value) or math.isnan(value) or value == inf:
                raise ValueError(f"logit_bias values must be finite numbers or -inf, got {value!r} for token {token}")
            bias[int(token)] = float(value)
        self.logit_bias = bias

        self.banned_tokens = _check_token_ids("banned_tokens", self.banned_tokens)
        self.stop_tokens = _check_token_ids("stop_tokens", self.stop_tokens)

        stop = (self.stop,) if isinstance(self.stop, str) else self.stop
        try:
            stop = tuple(stop)
        except TypeError:
            raise ValueError(f"stop must be a string or a list of strings, got {self.stop!r}") from None
        for s in stop:
            if not isinstance(s, str) or not s:
                raise ValueError(f"stop must contain non-empty strings, got {s!r}")
        self.stop = stop

        if self.seed is not None and (not _is_int(self.seed) or self.seed < 0):
            raise ValueError(f"seed must be None or an integer >= 0, got {self.seed!r}")
        if self.max_tokens is not None and (not _is_int(self.max_tokens) or self.max_tokens < 0):
            raise ValueError(f"max_tokens must be None or an integer >= 0, got {self.max_tokens!r}")
        if self.grammar is not None and not isinstance(self.grammar, Grammar):
            raise ValueError(f"grammar must be a rwkvcpp.constrain.Grammar or None, got {type(self.grammar).__name__}")
        if self.logprobs is not None and (not _is_int(self.logprobs) or not 0 <= self.logprobs <= MAX_TOP_LOGPROBS):
            raise ValueError(f"logprobs must be None or an integer in 0..{MAX_TOP_LOGPROBS}, got {self.logprobs!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


class Sampler:
    """Picks tokens for one generation under ``params``.

    Call :meth:`observe_prompt` with the prompt, then for each step
    ``token = sample(logits)`` and ``observe(token)``.
    """

    def __init__(self, params: SamplingParams, n_vocab: int):
        if not _is_int(n_vocab) or n_vocab <= 0:
            raise ValueError(f"n_vocab must be an integer > 0, got {n_vocab!r}")
        self.params = params
        self.n_vocab = int(n_vocab)
        self.rng = np.random.default_rng(params.seed)

        for name, ids in (
            ("logit_bias", params.logit_bias),
            ("banned_tokens", params.banned_tokens),
            ("stop_tokens", params.stop_tokens),
        ):
            too_big = [i for i in ids if i >= n_vocab]
            if too_big:
                raise ValueError(f"{name} has token id(s) {too_big[:5]} outside the vocabulary 0..{n_vocab - 1}")

        # Bias and bans never change during a generation: fold them into one
        # vector (None when there is nothing to add).
        bias = np.zeros(n_vocab, dtype=np.float64)
        for token, value in params.logit_bias.items():
            bias[token] += value
        bias[list(params.banned_tokens)] = -np.inf
        self._bias = bias if (params.logit_bias or params.banned_tokens) else None

        self._penalised = params.presence_penalty != 0.0 or params.frequency_penalty != 0.0
        self.counts = np.zeros(n_vocab, dtype=np.float64)  # decayed occurrences
        self.seen = np.zeros(n_vocab, dtype=bool)  # appeared at least once

    # -- penalty bookkeeping --------------------------------------------------

    def observe(self, token: int) -> None:
        """Record a generated token for the repetition penalties."""
        token = operator.index(token)
        if not 0 <= token < self.n_vocab:
            raise ValueError(f"token id {token} outside the vocabulary 0..{self.n_vocab - 1}")
        if self.params.penalty_decay != 1.0:  # only seen tokens have counts to decay
            seen = np.flatnonzero(self.seen)
            self.counts[seen] *= self.params.penalty_decay
        self.counts[token] += 1.0
        self.seen[token] = True

    def observe_prompt(self, tokens: Iterable[int]) -> None:
        """Record prompt tokens; a no-op unless ``params.count_prompt``.

        Counted as if they had been generated one by one (with decay), in a
        single vectorised update.
        """
        if not self.params.count_prompt:
            return
        ids = np.fromiter(tokens, dtype=np.int64)
        if ids.size == 0:
            return
        if ids.min() < 0 or ids.max() >= self.n_vocab:
            raise ValueError(f"prompt token ids must be in 0..{self.n_vocab - 1}")
        decay = self.params.penalty_decay
        # The token at position j is followed by n-1-j decays.
        weights = decay ** np.arange(ids.size - 1, -1, -1, dtype=np.float64)
        self.counts *= decay**ids.size
        self.counts += np.bincount(ids, weights=weights, minlength=self.n_vocab)
        self.seen[ids] = True

    def is_stop_token(self, token: int) -> bool:
        return token in self.params.stop_tokens

    # -- sampling -------------------------------------------------------------

    def adjusted_logits(self, logits: ArrayLike, allowed: Optional[Mask] = None) -> F64Array:
        """A new float64 array: ``logits`` after bias, bans and penalties; with ``allowed`` (a
        boolean mask, a grammar's), the other tokens at -inf."""
        x = np.array(logits, dtype=np.float64)  # always a copy
        if x.ndim != 1 or x.shape[0] != self.n_vocab:
            raise ValueError(f"logits must be a vector of {self.n_vocab} values, got shape {x.shape}")
        if not x.max() < np.inf:  # NaN makes the max NaN
            raise ValueError("logits contain NaN or +inf")
        if allowed is not None:
            x[~allowed] = -np.inf
        if self._bias is not None:
            x += self._bias
        if self._penalised:  # only tokens seen so far are penalised: touch just those
            p = self.params
            seen = np.flatnonzero(self.seen)
            x[seen] -= p.presence_penalty + p.frequency_penalty * self.counts[seen]
        # Bias and penalties are finite or -inf, so only -inf can appear here.
        if x.max() == -np.inf:
            raise ValueError("every token is banned or has a -inf logit: nothing can be sampled")
        return x

    def probabilities(self, logits: ArrayLike) -> F64Array:
        """The distribution :meth:`sample` draws from (all filters applied)."""
        return self._filtered(self.adjusted_logits(logits))

    def _filtered(self, x: F64Array) -> F64Array:
        p = self.params
        if p.greedy:
            probs = np.zeros_like(x)
            probs[int(np.argmax(x))] = 1.0
            return probs

        # Shift before dividing so a tiny temperature cannot overflow.
        x = (x - x.max()) / p.temperature
        if 0 < p.top_k < x.size:
            # Keep exactly k tokens (argpartition breaks ties arbitrarily).
            keep = np.argpartition(x, -p.top_k)[-p.top_k :]
            masked = np.full_like(x, -np.inf)
            masked[keep] = x[keep]
            x = masked

        probs = np.exp(x)  # -inf -> 0; the best token has exp(0) = 1
        probs /= probs.sum()
        if p.top_p < 1.0:
            probs = _top_p(probs, p.top_p)
        if p.min_p > 0.0:
            probs[probs < p.min_p * probs.max()] = 0.0
        normalised: F64Array = probs / probs.sum()
        return normalised

    def sample(self, logits: ArrayLike, allowed: Optional[Mask] = None) -> int:
        """Choose a token from ``logits`` (which are never modified), among the ``allowed`` ones
        if a mask is given."""
        return self._pick(self.adjusted_logits(logits, allowed))

    def _pick(self, x: F64Array) -> int:
        if self.params.greedy:
            return int(np.argmax(x))
        return _draw(self._filtered(x), self.rng.random())

    def sample_scored(self, logits: ArrayLike, top: int = 0,
                      allowed: Optional[Mask] = None) -> tuple[int, TokenLogprob]:
        """:meth:`sample`, and the token's :class:`TokenLogprob` with the ``top`` most likely
        tokens. Draws exactly as :meth:`sample` does, so the same seed picks the same tokens."""
        x = self.adjusted_logits(logits, allowed)
        token = self._pick(x)
        temperature = 1.0 if self.params.greedy else self.params.temperature
        return token, token_logprob(log_softmax(x, temperature), token, top)


class TokenLogprob(NamedTuple):
    """A token's log probability (natural log) and the ``top`` most likely tokens with theirs,
    most likely first."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def log_softmax(logits: ArrayLike, temperature: float = 1.0) -> F64Array:
    """Log probabilities (float64) of ``logits`` divided by ``temperature``."""
    z: F64Array = (np.asarray(logits, dtype=np.float64) - np.max(logits)) / temperature
    return z - math.log(float(np.exp(z).sum()))


def token_logprob(logp: F64Array, token: int, top: int = 0) -> TokenLogprob:
    """``token``'s entry of the log distribution ``logp``, with the ``top`` most likely tokens."""
    best: tuple[tuple[int, float], ...] = ()
    if top:
        ids = np.argpartition(-logp, top - 1)[:top] if top < logp.size else np.arange(logp.size)
        ids = ids[np.lexsort((ids, -logp[ids]))]  # most likely first, ties by id
        best = tuple((int(i), float(logp[i])) for i in ids)
    return TokenLogprob(int(token), float(logp[token]), best)


_DRAW_BLOCK = 256


def _draw(probs: F64Array, u: float) -> int:
    """Inverse-CDF draw of one index, with u uniform in [0, 1).

    Two levels: the running sum over blocks of 256 picks a block, then the running sum inside it
    picks the token, so a 65536-token vocabulary costs two short cumsums instead of one long one.
    A zero-probability token is never returned, whatever the rounding.
    """
    n = probs.size
    padded = probs if n % _DRAW_BLOCK == 0 else np.concatenate([probs, np.zeros(-n % _DRAW_BLOCK)])
    block_cdf = np.cumsum(padded.reshape(-1, _DRAW_BLOCK).sum(axis=1))
    target = u * block_cdf[-1]
    block = min(int(np.searchsorted(block_cdf, target, side="right")), block_cdf.size - 1)
    start = block * _DRAW_BLOCK
    inner = np.cumsum(padded[start:start + _DRAW_BLOCK])
    offset = target - (block_cdf[block - 1] if block else 0.0)
    index = start + min(int(np.searchsorted(inner, offset, side="right")), _DRAW_BLOCK - 1)
    if index >= n or probs[index] == 0.0:  # rounding at a block edge: take the nearest live token
        live = np.flatnonzero(probs)
        index = int(live[min(int(np.searchsorted(live, index)), live.size - 1)])
    return index


def _top_p(probs: F64Array, top_p: float) -> F64Array:
    """Zero all but the smallest most-likely set with mass >= top_p.

    Works on sorted values rather than an argsort (several times faster on a
    large vocabulary); tokens tied with the last one kept are kept too.
    """
    n = probs.size
    head = probs
    if n > _TOP_P_PREFIX:
        head = probs[np.argpartition(probs, n - _TOP_P_PREFIX)[n - _TOP_P_PREFIX :]]
        if head.sum() < top_p:
            head = probs
    ranked = np.sort(head)[::-1]
    cumulative = np.cumsum(ranked)
    # First position where the running mass reaches top_p, inclusive; top_p=0
    # keeps the single most likely token.
    last = min(int(np.searchsorted(cumulative, top_p, side="left")), ranked.size - 1)
    return np.where(probs >= ranked[last], probs, 0.0)
