"""Tokenizer tests.

The World tokenizer must give exactly the ids of the official ``rwkv``
package.  That is checked directly when ``rwkv`` is installed, and always
against tests/data/world_tokenizer_expected.json, which was produced by the
official tokenizer; regenerate it with ``python tests/test_tokenizer.py --regen``.
"""

import json
import os
import random
import sys
import time
import unicodedata

import pytest

from rwkvcpp.tokenizer import StreamDecoder, Tokenizer

DATA = os.path.join(os.path.dirname(__file__), "data", "world_tokenizer_expected.json")

CODE = '''import numpy as np

def softmax(x: np.ndarray) -> np.ndarray:
    """Numerically stable softmax."""
    e = np.exp(x - x.max())
    return e / e.sum()


class Foo:
\tdef __init__(self):
\t\tself.items = {"a": [1, 2, 3], 'b': None}  # comment
'''

CPP = '#include <stdio.h>\nint main(void) {\n    for (int i = 0; i < 10; ++i) printf("%d\\n", i);\n    return 0;\n}\n'

# (name, text or bytes).  Bytes entries hold invalid UTF-8 on purpose.
CORPUS = [
    ("empty", ""),
    (
        "english",
        "The quick brown fox jumps over the lazy dog. It's 2024; RWKV is an RNN with transformer-level performance!",
    ),
    ("english_newlines", "\nUser: Hello, how are you?\n\nAssistant: I'm fine, thanks.\n\n"),
    ("chinese", "天地玄黄，宇宙洪荒。我们今天去公园散步，天气非常好！人工智能（AI）正在改变世界。"),
    ("japanese", "こんにちは、世界。吾輩は猫である。名前はまだ無い。カタカナとひらがなと漢字。"),
    ("korean_russian_arabic", "안녕하세요 세계. Привет, мир! مرحبا بالعالم"),
    ("emoji", "I ❤️ RWKV 🎉🚀👍🏽 👨‍👩‍👧‍👦 🇯🇵🇨🇳 ©®™ ✓"),
    ("combining", "e\u0301 n\u0303 cafe\u0301 \u00e9\u00e8 \u1e9b\u0323 Zalgo: Z\u0351\u036b\u0343"),
    ("python_code", CODE),
    ("c_code", CPP),
    ("whitespace", "a  b   c    d\t\te\n\n\n    f" + " " * 200 + "g\r\n\u3000h"),
    ("long_runs", "-" * 100 + "=" * 81 + "#" * 300 + "\n" * 40 + "0123456789" * 5),
    ("mixed", "Mix: English中文日本語한국어🙂 and code `x = f(y)`.\n"),
    ("invalid_lone_bytes", b"abc\xff\xfe def \x80\x81\xbf"),
    ("invalid_truncated", b"truncated \xe4\xbd then \xf0\x9f\x98 and end \xe4"),
    ("invalid_overlong", b"overlong \xc0\xaf \xe0\x80\xaf surrogate \xed\xa0\x80 too big \xf4\x90\x80\x80"),
    ("control_bytes", b"\x00\x01\x02 nul and controls \x1b[0m\x7f"),
]


def _input(entry):
    """Decode an entry of the JSON table back to str or bytes."""
    return bytes.fromhex(entry["hex"]) if "hex" in entry else entry["text"]


@pytest.fixture(scope="module")
def world():
    return Tokenizer.from_name("world")


@pytest.fixture(scope="module")
def official():
    rwkv_tokenizer = pytest.importorskip("rwkv.rwkv_tokenizer")
    import rwkv

    vocab = os.path.join(os.path.dirname(rwkv.__file__), "rwkv_vocab_v20230424.txt")
    return rwkv_tokenizer.TRIE_TOKENIZER(vocab)


def _official_ids(official, text):
    return official.encodeBytes(text) if isinstance(text, bytes) else official.encode(text)


# -- World: exact ids -----------------------------------------------------------


def test_world_matches_committed_table(world):
    with open(DATA, encoding="utf-8") as f:
        table = json.load(f)
    assert [e["name"] for e in table] == [name for name, _ in CORPUS], "table out of date: run with --regen"
    for entry, (_, text) in zip(table, CORPUS):
        assert _input(entry) == text
        assert world.encode(text) == entry["ids"], entry["name"]


@pytest.mark.parametrize("name,text", CORPUS, ids=[name for name, _ in CORPUS])
def test_world_matches_official(world, official, name, text):
    assert world.encode(text) == _official_ids(official, text)


def test_world_matches_official_on_random_token_soup(world, official):
    # Concatenations of real tokens and random bytes, cut at random points,
    # stress the greedy longest match where tokens overlap and at the end.
    rnd = random.Random(1234)
    tokens = list(official.idx2token.values())
    for _ in range(500):
        pieces = [
            rnd.choice(tokens) if rnd.random() < 0.8 else bytes([rnd.randrange(256)])
            for _ in range(rnd.randrange(1, 60))
        ]
        data = b"".join(pieces)
        data = data[: rnd.randrange(1, len(data) + 1)]
        assert world.encode(data) == official.encodeBytes(data), data


def test_world_known_ids(world):
    assert world.encode("\n") == [11]
    assert world.encode(" ") == [33]
    assert world.encode("\x00") == [1]
    assert world.encode(b"\xff") == [256]
    assert world.n_vocab == 65536


# -- World: decoding ----------------------------------------------------------


@pytest.mark.parametrize(
    "name,text", [(n, t) for n, t in CORPUS if isinstance(t, str)], ids=[n for n, t in CORPUS if isinstance(t, str)]
)
def test_world_round_trip(world, name, text):
    ids = world.encode(text)
    assert world.decode(ids) == text
    assert world.decode_bytes(ids) == text.encode("utf-8")


def test_world_bytes_round_trip(world):
    for name, text in CORPUS:
        data = text if isinstance(text, bytes) else text.encode("utf-8")
        assert world.decode_bytes(world.encode(data)) == data, name


def test_world_decode_special_and_invalid_ids(world):
    assert world.decode_bytes([0]) == b""  # end of text
    assert world.decode([65535]) == ""  # padding beyond the vocabulary
    assert world.decode(world.encode(b"ok\xff")) == "ok\ufffd"
    for bad in ([-1], [65536]):
        with pytest.raises(ValueError, match="out of range"):
            world.decode(bad)


def test_world_encode_speed(world):
    text = (CODE + CORPUS[1][1] + CORPUS[3][1] + CORPUS[4][1] + CORPUS[6][1]) * 1000
    data = text.encode("utf-8")[:100_000]
    start = time.perf_counter()
    ids = world.encode(data)
    elapsed = time.perf_counter() - start
    assert world.decode_bytes(ids) == data
    assert elapsed < 1.0, f"100 KB took {elapsed:.2f} s"


# -- streaming decode ---------------------------------------------------------


@pytest.mark.parametrize("tok_name", ["world", "bytes"])
def test_stream_decoder_never_emits_replacement_for_valid_text(tok_name):
    tok = Tokenizer.from_name(tok_name)
    for name, text in CORPUS:
        if not isinstance(text, str):
            continue
        dec = StreamDecoder(tok)
        pieces = [dec.feed(i) for i in tok.encode(text)]
        pieces.append(dec.flush())
        assert all("\ufffd" not in p for p in pieces), name
        assert "".join(pieces) == text


def test_stream_decoder_split_at_every_byte_boundary():
    # Same text, fed as every possible (prefix, suffix) token pair via the
    # byte tokenizer plus whole-character chunks through the World tokenizer.
    world = Tokenizer.from_name("world")
    text = "a中🎉é日\u0301z"
    data = text.encode("utf-8")
    for cut in range(len(data) + 1):
        ids = world.encode(data[:cut]) + world.encode(data[cut:])
        dec = world.stream_decoder()
        out = [dec.feed(i) for i in ids] + [dec.flush()]
        assert "\ufffd" not in "".join(out), cut
        assert "".join(out) == text


def test_stream_decoder_holds_back_and_flushes():
    # Byte ids split every multi-byte character across tokens.
    dec = StreamDecoder(Tokenizer.from_name("bytes"))
    euro = "€".encode()  # 3 bytes
    assert dec.feed(euro[0]) == ""
    assert dec.pending == euro[:1]
    assert dec.feed(euro[1]) == ""
    assert dec.feed(euro[2]) == "€"
    assert dec.pending == b""
    # An unfinished character at the end is reported, not silently dropped.
    assert dec.feed(euro[0]) == ""
    assert dec.flush() == "\ufffd"
    assert dec.feed(ord("x")) == "x"
    # A byte that can never start a character is replaced at once.
    assert dec.feed(0xFF) == "\ufffd"


# -- 20B (GPT-NeoX) -----------------------------------------------------------


@pytest.fixture(scope="module")
def neox():
    pytest.importorskip("tokenizers")
    return Tokenizer.from_name("20b")


def test_neox_known_ids(neox):
    assert neox.n_vocab == 50277
    assert neox.encode("Hello world") == [12092, 1533]
    assert neox.encode("\n") == [187]
    assert neox.encode("<|endoftext|>") == [0]
    assert neox.encode("    ") == [50274]  # added whitespace-run token
    assert neox.decode([0]) == ""


@pytest.mark.parametrize(
    "name,text", [(n, t) for n, t in CORPUS if isinstance(t, str)], ids=[n for n, t in CORPUS if isinstance(t, str)]
)
def test_neox_round_trip(neox, name, text):
    # The 20B tokenizer applies NFC normalisation before encoding.
    assert neox.decode(neox.encode(text)) == unicodedata.normalize("NFC", text)


def test_neox_decode_matches_tokenizers_package(neox):
    import tokenizers

    from rwkvcpp.tokenizer.neox import TOKENIZER_FILE

    ref = tokenizers.Tokenizer.from_file(TOKENIZER_FILE)
    rnd = random.Random(7)
    for _ in range(200):
        ids = [rnd.randrange(50277) for _ in range(rnd.randrange(1, 20))]
        assert neox.decode(ids) == ref.decode(ids)


def test_neox_stream_decoder(neox):
    text = "Emoji 🎉 and 中文 split over byte-level tokens."
    dec = neox.stream_decoder()
    out = [dec.feed(i) for i in neox.encode(text)] + [dec.flush()]
    assert all("\ufffd" not in p for p in out)
    assert "".join(out) == text


def test_neox_padded_vocab(neox):
    padded = Tokenizer.for_vocab(50304)
    assert padded.name == "20b" and padded.n_vocab == 50304
    assert padded.decode([50300]) == ""


def test_neox_missing_tokenizers_package(monkeypatch):
    from rwkvcpp.tokenizer import neox as neox_module

    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(ImportError, match="pip install tokenizers"):
        neox_module.NeoXTokenizer()


# -- bytes ------------------------------------------------------------------


def test_bytes_tokenizer():
    tok = Tokenizer.from_name("bytes")
    assert tok.n_vocab == 256
    assert tok.encode("aé") == [0x61, 0xC3, 0xA9]
    assert tok.encode(b"\xff\x00") == [255, 0]
    assert tok.decode([0x61, 0xC3, 0xA9]) == "aé"
    assert tok.decode_bytes([255]) == b"\xff"
    assert tok.decode([255]) == "\ufffd"
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([256])


# -- choosing a tokenizer ---------------------------------------------------------


def test_for_vocab_choices():
    assert Tokenizer.for_vocab(65536).name == "world"
    assert Tokenizer.for_vocab(256).name == "bytes"
    with pytest.raises(ValueError, match="world.*20b.*bytes"):
        Tokenizer.for_vocab(32000)


def test_from_name():
    assert Tokenizer.from_name("World") is Tokenizer.from_name("world")  # cached
    with pytest.raises(ValueError, match="unknown tokenizer"):
        Tokenizer.from_name("no-such-tokenizer")


def test_from_path(tmp_path):
    vocab = tmp_path / "tiny_vocab.txt"
    lines = [f"{b + 1} {bytes([b])!r} 1" for b in range(256)]
    lines += ["257 'ab' 2", "258 'abc' 3", "259 '中' 3", "260 b'\\xff\\xfe' 2"]
    vocab.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tok = Tokenizer.from_name(str(vocab), n_vocab=512)
    assert tok.name == "tiny_vocab.txt" and tok.n_vocab == 512
    assert tok.encode("abcab中") == [258, 257, 259]
    assert tok.encode(b"\xff\xfe\xff") == [260, 256]


def test_vocab_file_rejects_non_literals(tmp_path):
    vocab = tmp_path / "evil.txt"
    vocab.write_text("1 __import__('os') 1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="malformed"):
        Tokenizer.from_name(str(vocab))


def _regenerate():
    """Rewrite the expected-ids table with the official tokenizer."""
    import rwkv
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

    official = TRIE_TOKENIZER(os.path.join(os.path.dirname(rwkv.__file__), "rwkv_vocab_v20230424.txt"))
    table = []
    for name, text in CORPUS:
        entry = {"name": name}
        entry.update({"hex": text.hex()} if isinstance(text, bytes) else {"text": text})
        entry["ids"] = _official_ids(official, text)
        table.append(entry)
    with open(DATA, "w", encoding="utf-8") as f:
        # One case per line keeps diffs readable.
        f.write("[\n" + ",\n".join(json.dumps(e, ensure_ascii=False) for e in table) + "\n]\n")
    print(f"wrote {len(table)} cases to {DATA}")


if __name__ == "__main__" and "--regen" in sys.argv:
    _regenerate()
