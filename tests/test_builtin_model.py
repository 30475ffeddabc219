"""The built-in model ships with the package, loads, writes text like its corpus (Python's docs) and
predicts held-out text far better than chance (uniform over bytes: perplexity 256)."""

import numpy as np
import pytest

import rwkvcpp
from rwkvcpp.data import builtin_model_path


@pytest.fixture(scope="module")
def model():
    return rwkvcpp.Model(builtin_model_path(), threads=2)


def heldout_bytes(n: int) -> bytes:
    """The last 5% of the help topics, the part tools/train_builtin.py holds out."""
    from pydoc_data.topics import topics

    data = ("\n\n".join(topics[key].strip() for key in sorted(topics)) + "\n").encode("utf-8")
    return data[int(len(data) * 0.95):][:n]


def test_it_is_a_small_byte_level_v7(model):
    assert model.arch == "v7" and model.n_vocab == 256
    assert model.file_size < 8 * 2**20


def test_heldout_perplexity_is_far_below_uniform(model):
    text = heldout_bytes(4096)
    logits, _ = model.eval_sequence(list(text[:-1]), all_logits=True)
    logits = logits.astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    nll = -log_probs[np.arange(len(text) - 1), list(text[1:])].mean()
    perplexity = float(np.exp(nll))
    assert perplexity < 4.0, perplexity  # measured 2.53 when it was trained; uniform is 256


def test_generates_text_like_its_corpus(model):
    text = model.generate("The ", max_tokens=300, temperature=0.0)
    assert len(text) > 100
    words = text.split()
    # Python-docs vocabulary, and mostly real words rather than byte soup
    assert any(w.strip('".,:()') in {"the", "is", "a", "of", "to", "object", "function", "statement",
                                     "exception", "value", "class"} for w in words)
    assert sum(w.isascii() for w in words) / len(words) > 0.95
