"""Stand-ins for :class:`rwkvcpp.Model` in tests of what drives a model (the generator, the chat
session): a scripted model whose text is known, and a wrapper that records what a real one reads.

Both record every token list given to ``eval_sequence`` in ``calls``.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from rwkvcpp.tokenizer import Tokenizer

__all__ = ["ScriptedModel", "Recording"]


class ScriptedModel:
    """A byte-vocabulary model whose logits always pick one byte of ``script`` (10 against 0 for
    the others), so greedy sampling writes the script.

    Its state is one number: where in the script the model is. Each test file gives its own
    script's course by defining ``advance``. ``eval`` and ``ingest`` go through
    ``eval_sequence``, which fills the caller's output arrays as the real one does.
    """

    n_vocab = 256
    tokenizer = Tokenizer.from_name("bytes")

    def __init__(self, script: bytes):
        self.script = script
        self.calls: list[list[int]] = []

    def advance(self, tokens: list[int], at: Optional[int]) -> int:
        """The index in the script after reading ``tokens`` from index ``at`` (None: the start)."""
        raise NotImplementedError

    def init_state(self):
        return np.zeros(1, dtype=np.float32)

    def _check_state(self, state, name):
        return state

    def eval_sequence(self, tokens, state=None, all_logits=False, *, state_out=None, logits_out=None):
        tokens = [int(t) for t in tokens]
        self.calls.append(tokens)
        at = self.advance(tokens, None if state is None else int(state[0]))
        new = state_out if state_out is not None else self.init_state()
        new[0] = at
        logits = np.zeros(self.n_vocab, dtype=np.float32)
        logits[self.script[at]] = 10.0
        if logits_out is not None:
            logits_out[:] = logits
            logits = logits_out
        return logits, new

    def eval(self, token, state=None, *, state_out=None, logits_out=None):
        return self.eval_sequence([token], state, state_out=state_out, logits_out=logits_out)

    def ingest(self, tokens, state=None):
        return self.eval_sequence(tokens, state)[1]


class Recording:
    """Wraps a model and records the token lists sent to its ``eval_sequence`` (prompts; the
    token-by-token ``eval`` and ``ingest`` go straight to the model)."""

    def __init__(self, model):
        self._model = model
        self.calls: list[list[int]] = []

    def __getattr__(self, name):
        return getattr(self._model, name)

    def eval_sequence(self, tokens, *args, **kw):
        self.calls.append([int(t) for t in tokens])
        return self._model.eval_sequence(tokens, *args, **kw)
