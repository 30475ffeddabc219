"""GGUF both ways (rwkvcpp.conversion.gguf): .bin -> GGUF -> .bin byte-identical for v6 and v7 in
every block format, GGUFs written by llama.cpp's own converter read back with the source's
logits, llama.cpp's rescaling and BF16 undone exactly, malformed files refused by name, and the
command line.

The llama.cpp tests need its ``convert_hf_to_gguf.py`` (RWKVCPP_LLAMA_CPP_DIR, see
tests/support/llama_cpp.py), torch and transformers; they skip otherwise.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from support import llama_cpp
from support.checkpoints import make_checkpoint
from support.reference import Reference

from rwkvcpp import Model
from rwkvcpp import format as fmt
from rwkvcpp.cli import main as cli_main
from rwkvcpp.conversion.gguf import bin_to_gguf, gguf_to_bin
from rwkvcpp.conversion.gguf_file import ARRAY, INT32, STRING, UINT32, GGUFError, GGUFFile, OutTensor, write_gguf
from rwkvcpp.conversion.pipeline import convert
from rwkvcpp.quantization import quantize
from rwkvcpp.tokenizer.world import WorldTokenizer
from rwkvcpp.writer import BinWriter, write_model

GGUF_ARCHES = ("v6", "v7")
FORMATS = ("FP32", "FP16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
TOKENS = [int(t) for t in np.random.default_rng(11).integers(0, 256, 24)]


@pytest.fixture(scope="module")
def bins(model_files, tmp_path_factory):
    """{(arch, format): .bin} of the session's v6/v7 models, quantized from their FP16 files."""
    directory = tmp_path_factory.mktemp("gguf-bins")
    out = {}
    for arch in GGUF_ARCHES:
        out[arch, "FP32"], out[arch, "FP16"] = model_files[arch].fp32, model_files[arch].fp16
        for name in FORMATS[2:]:
            out[arch, name] = directory / f"{arch}-{name}.bin"
            quantize(model_files[arch].fp16, out[arch, name], name)
    return out


def logits(path) -> np.ndarray:
    with Model(str(path)) as model:
        return model.eval_sequence(TOKENS, all_logits=True)[0]


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("arch", GGUF_ARCHES)
@pytest.mark.parametrize("name", FORMATS)
def test_bin_gguf_bin_is_byte_identical(bins, tmp_path, arch, name):
    source = bins[arch, name]
    bin_to_gguf(source, tmp_path / "model.gguf")
    gguf_to_bin(tmp_path / "model.gguf", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == source.read_bytes()
    with GGUFFile(tmp_path / "model.gguf") as gguf:
        # The matrices' blocks are the .bin's, byte for byte, under llama.cpp's names.
        records = {r.name: r for r in fmt.load_records(source)}
        key = gguf.tensors["blk.1.time_mix_key.weight"]
        assert key.type_name.replace("F", "FP") == records["blocks.1.att.key.weight"].type_name
        assert bytes(gguf.data(key)) == bytes(fmt.read_tensor(str(source), records["blocks.1.att.key.weight"]))
        assert gguf.metadata["general.architecture"] == {"v6": "rwkv6", "v7": "rwkv7"}[arch]
        assert gguf.metadata[f"rwkv{arch[1]}.wkv.head_size"] == 64


@pytest.mark.parametrize("name", ("Q4_K", "Q5_K"))
def test_k_formats_both_ways(tmp_path, name):
    """Q4_K and Q5_K's super-blocks are ggml's too; they need rows of a multiple of 256, which
    only v7 models 256 wide or more have (v6's time_decay_w2 has rows of 64)."""
    write_model(tmp_path / "wide.bin", make_checkpoint("v7", 2, 256, 256, seed=6), "FP16")
    quantize(tmp_path / "wide.bin", tmp_path / "k.bin", name)
    bin_to_gguf(tmp_path / "k.bin", tmp_path / "k.gguf")
    with GGUFFile(tmp_path / "k.gguf") as gguf:
        assert gguf.tensors["blk.1.channel_mix_key.weight"].type_name == name
    gguf_to_bin(tmp_path / "k.gguf", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == (tmp_path / "k.bin").read_bytes()


@pytest.mark.parametrize("arch", GGUF_ARCHES)
def test_heads_of_another_size(tmp_path, arch):
    """The head size is the file's (v6's time_faaaa, v7's r_k): heads of 32 here."""
    write_model(tmp_path / "h32.bin", make_checkpoint(arch, 2, 128, 256, seed=4, head_size=32), "FP16")
    bin_to_gguf(tmp_path / "h32.bin", tmp_path / "h32.gguf")
    with GGUFFile(tmp_path / "h32.gguf") as gguf:
        assert gguf.metadata[f"rwkv{arch[1]}.wkv.head_size"] == 32
    gguf_to_bin(tmp_path / "h32.gguf", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == (tmp_path / "h32.bin").read_bytes()


def test_untransposed_v6_decay_w2(bins, tmp_path):
    """Files from converters that left time_decay_w2 as (D, C) (the engine takes both) become the
    same GGUF; a quantized one cannot be transposed and is refused."""
    bin_to_gguf(bins["v6", "FP32"], tmp_path / "expected.gguf", name="v6")
    header = fmt.read_header(bins["v6", "FP32"])
    with BinWriter(tmp_path / "untransposed.bin", header.n_vocab, header.n_embed, header.n_layer, fmt.FP32) as out:
        for record in fmt.load_records(bins["v6", "FP32"]):
            values = fmt.read_tensor_f32(str(bins["v6", "FP32"]), record)
            out.write_tensor(record.name, values.T if record.name.endswith("time_decay_w2") else values, fmt.FP32)
    bin_to_gguf(tmp_path / "untransposed.bin", tmp_path / "untransposed.gguf", name="v6")
    assert (tmp_path / "untransposed.gguf").read_bytes() == (tmp_path / "expected.gguf").read_bytes()
    quantize(tmp_path / "untransposed.bin", tmp_path / "q.bin", "Q8_0")
    with pytest.raises(GGUFError, match="'blocks.0.att.time_decay_w2' is stored untransposed"):
        bin_to_gguf(tmp_path / "q.bin", tmp_path / "q.gguf")


def test_gguf_of_a_checkpoint_and_of_its_bin_agree(model_files, tmp_path):
    """``convert(checkpoint, x.gguf)`` goes through a .bin; reading it back gives that .bin."""
    from rwkvcpp.conversion.pth_write import save_safetensors

    save_safetensors(tmp_path / "model.safetensors", model_files["v7"].checkpoint)
    convert(tmp_path / "model.safetensors", tmp_path / "model.gguf")
    gguf_to_bin(tmp_path / "model.gguf", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == model_files["v7"].fp16.read_bytes()
    convert(tmp_path / "model.gguf", tmp_path / "q.bin", quantize="Q5_1")  # a GGUF through quantize
    quantize(model_files["v7"].fp16, tmp_path / "expected.bin", "Q5_1")
    assert (tmp_path / "q.bin").read_bytes() == (tmp_path / "expected.bin").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back.bin", "expected.bin", "model.gguf",
                                                          "model.safetensors", "q.bin"]


def _rewrite(src, dst, metadata=None, tensors=None, extra=()) -> None:
    """A copy of a GGUF file with metadata entries replaced or added ({key: (type, value)}),
    tensors replaced ({name: OutTensor}, None to drop one) and ``extra`` tensors appended."""
    metadata, tensors = metadata or {}, tensors or {}
    with GGUFFile(src) as gguf:
        entries = {key: (gguf.value_types[key], value) for key, value in gguf.metadata.items()}
        entries.update(metadata)
        packed = []
        for key, (vtype, value) in entries.items():
            if vtype == ARRAY:  # the token texts and their types (int32)
                value = (STRING, value) if isinstance(value, list) else (INT32, value.tolist())
            packed.append((key, vtype, value))
        out = []
        for name, t in gguf.tensors.items():
            if name not in tensors:
                out.append(OutTensor(name, t.type_id, t.shape, lambda t=t: bytes(gguf.data(t))))
            elif tensors[name] is not None:
                out.append(tensors[name])
        write_gguf(dst, packed, out + list(extra))


@pytest.mark.parametrize("name", FORMATS)
def test_llama_cpp_rescaling_is_undone_exactly(bins, tmp_path, name):
    """llama.cpp's converter divides v6's output and FFN value matrices of layer N by
    2^(N // rescale_every); reading multiplies back (values, or the blocks' FP16 scales)."""
    bin_to_gguf(bins["v6", name], tmp_path / "plain.gguf")
    with GGUFFile(tmp_path / "plain.gguf") as gguf:
        halved = {}
        for tensor_name in ("blk.1.time_mix_output.weight", "blk.1.channel_mix_value.weight"):
            t = gguf.tensors[tensor_name]
            raw = np.frombuffer(bytes(gguf.data(t)), np.uint8).copy()
            if name in ("FP32", "FP16"):
                values = raw.view("<f4" if name == "FP32" else "<f2")
                values /= 2
            else:  # d (and m) of each block
                blocks = raw.reshape(-1, fmt.TYPES[fmt.type_id(name)].block_bytes)
                for field in (0, 2) if name in ("Q4_1", "Q5_1") else (0,):
                    scales = blocks[:, field:field + 2].copy().view("<f2") / 2
                    blocks[:, field:field + 2] = scales.view(np.uint8)
            halved[tensor_name] = OutTensor(tensor_name, t.type_id, t.shape, lambda raw=raw: raw)
    _rewrite(tmp_path / "plain.gguf", tmp_path / "rescaled.gguf", {"rwkv6.rescale_every_n_layers": (UINT32, 1)},
             halved)
    gguf_to_bin(tmp_path / "rescaled.gguf", tmp_path / "back.bin")
    if name != "FP16":
        assert (tmp_path / "back.bin").read_bytes() == bins["v6", name].read_bytes()
        return
    # Halving an FP16 value below 2^-13 loses its last bit (a subnormal); only that is lost.
    source, back = fmt.load_records(bins["v6", name]), fmt.load_records(tmp_path / "back.bin")
    assert [r[:3] for r in source] == [r[:3] for r in back]
    for a, b in zip(source, back):
        want, got = fmt.read_tensor_f32(str(bins["v6", name]), a), fmt.read_tensor_f32(str(tmp_path / "back.bin"), b)
        tolerance = 2.0 ** -23 if a.name in ("blocks.1.att.output.weight", "blocks.1.ffn.value.weight") else 0
        assert np.abs(got - want).max() <= tolerance, a.name


@pytest.mark.parametrize("arch", GGUF_ARCHES)
def test_bf16_tensors_become_exact_fp32(bins, tmp_path, arch):
    """BF16 (llama.cpp's converter writes it for bf16 checkpoints) has no .bin type: widened to
    FP32 it is exact, so bf16-exact weights come back as the FP32 file."""
    bin_to_gguf(bins[arch, "FP32"], tmp_path / "f32.gguf")
    with GGUFFile(tmp_path / "f32.gguf") as gguf:
        as_bf16 = {}
        for name, t in gguf.tensors.items():
            if len(t.shape) == 2:
                bits = np.frombuffer(bytes(gguf.data(t)), "<u4")
                assert not (bits & 0xFFFF).any()  # the test checkpoints are bf16-exact
                as_bf16[name] = OutTensor(name, 30, t.shape, lambda bits=bits: (bits >> 16).astype("<u2"))
    _rewrite(tmp_path / "f32.gguf", tmp_path / "bf16.gguf", {"general.file_type": (UINT32, 32)}, as_bf16)
    gguf_to_bin(tmp_path / "bf16.gguf", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == bins[arch, "FP32"].read_bytes()


def test_v6_mixes_stored_one_by_one(bins, tmp_path):
    """Older llama.cpp files hold v6's five mixes as time_mix_lerp_w/k/v/r/g, not fused; the
    reader puts each back in its place, wherever the file has it."""
    bin_to_gguf(bins["v6", "FP16"], tmp_path / "fused.gguf")
    dropped, separate = {}, []
    with GGUFFile(tmp_path / "fused.gguf") as gguf:
        for layer in range(2):
            fused = gguf.tensors[f"blk.{layer}.time_mix_lerp_fused.weight"]
            values = np.frombuffer(bytes(gguf.data(fused)), "<f4").reshape(5, -1)
            dropped[fused.name] = None
            separate += [OutTensor(f"blk.{layer}.time_mix_lerp_{mix}.weight", 0, (1, 1, values.shape[1]),
                                   lambda row=values[k].copy(): row) for k, mix in enumerate("wkvrg")]
    _rewrite(tmp_path / "fused.gguf", tmp_path / "separate.gguf", tensors=dropped, extra=separate)
    gguf_to_bin(tmp_path / "separate.gguf", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == bins["v6", "FP16"].read_bytes()


# ----------------------------------------------------------------------------- vocabulary


def _llama_cpp_unescape(text: str) -> bytes:
    """llama.cpp's reading of an rwkv token text (llama-vocab.cpp): \\t \\n \\r \\xhh, and a
    backslash before any other character keeps that character."""
    out, raw, i = bytearray(), text.encode("utf-8"), 0
    while i < len(raw):
        if raw[i:i + 1] != b"\\":
            out.append(raw[i])
            i += 1
            continue
        c = raw[i + 1:i + 2]
        if c == b"x":
            out.append(int(raw[i + 2:i + 4], 16))
            i += 4
            continue
        out += {b"t": b"\t", b"n": b"\n", b"r": b"\r"}.get(c, c)
        i += 2
    return bytes(out)


@pytest.fixture(scope="module")
def world_gguf(tmp_path_factory):
    """A v7 model with the World vocabulary (n_vocab 65536) as a GGUF file."""
    directory = tmp_path_factory.mktemp("world")
    write_model(directory / "world.bin", make_checkpoint("v7", 2, 64, 65536, seed=3), "FP16")
    bin_to_gguf(directory / "world.bin", directory / "world.gguf")
    return directory / "world.gguf"


def test_world_vocabulary_reads_back_as_llama_cpp_reads_it(world_gguf):
    world = WorldTokenizer()
    with GGUFFile(world_gguf) as gguf:
        texts, types = gguf.metadata["tokenizer.ggml.tokens"], gguf.metadata["tokenizer.ggml.token_type"]
        assert gguf.metadata["tokenizer.ggml.model"] == "rwkv" and len(texts) == len(types) == 65536
        assert texts[0] == "<s>" and types[0] == 3  # control
        for token_id in range(1, 65536):
            raw = world.token_bytes(token_id)
            assert (_llama_cpp_unescape(texts[token_id]) if raw else b"") == raw, token_id
            assert types[token_id] == (1 if raw else 5)  # normal, unused
        assert gguf.metadata["tokenizer.ggml.eot_token_id"] == world.encode("\n\n")[0] == 261


def test_byte_vocabulary(bins, tmp_path):
    bin_to_gguf(bins["v7", "FP16"], tmp_path / "model.gguf")
    with GGUFFile(tmp_path / "model.gguf") as gguf:
        texts = gguf.metadata["tokenizer.ggml.tokens"]
        assert [_llama_cpp_unescape(t) for t in texts] == [bytes([b]) for b in range(256)]


# ----------------------------------------------------------------------------- llama.cpp's converter

needs_converter = pytest.mark.skipif(llama_cpp.missing_reason() is not None,
                                     reason=llama_cpp.missing_reason() or "")
OUTTYPES = ("f32", "f16", "bf16", "q8_0")


@pytest.fixture(scope="module")
def llama_cpp_ggufs(tmp_path_factory):
    """GGUF files written by llama.cpp's convert_hf_to_gguf.py from Hugging Face folders of random
    v6 (Rwkv6ForCausalLM, rescale_every 1) and v7 (fla's RWKV7ForCausalLM) checkpoints, of both
    with heads of 32, and of a v7 model with the whole World vocabulary:
    {(arch, outtype): (checkpoint, gguf path)}."""
    directory = tmp_path_factory.mktemp("llama-cpp")
    jobs, out = [], {}
    for arch, seed in (("v6", 21), ("v7", 22)):
        checkpoint = make_checkpoint(arch, 2, 128, 256, seed=seed)
        folder = llama_cpp.write_folder(directory / arch, checkpoint, arch, rescale_every=1)
        for outtype in OUTTYPES:
            out[arch, outtype] = checkpoint, directory / f"{arch}-{outtype}.gguf"
            jobs.append((folder, out[arch, outtype][1], outtype))
    for arch, seed in (("v6", 24), ("v7", 25)):
        checkpoint = make_checkpoint(arch, 2, 128, 256, seed=seed, head_size=32)
        folder = llama_cpp.write_folder(directory / f"{arch}-h32", checkpoint, arch)
        out[f"{arch}-h32", "f32"] = checkpoint, directory / f"{arch}-h32-f32.gguf"
        jobs.append((folder, out[f"{arch}-h32", "f32"][1], "f32"))
    checkpoint = make_checkpoint("v7", 2, 64, 65536, seed=23)
    folder = llama_cpp.write_folder(directory / "world", checkpoint, "v7")
    out["world", "f16"] = checkpoint, directory / "world-f16.gguf"
    jobs.append((folder, out["world", "f16"][1], "f16"))
    llama_cpp.convert(jobs)
    return out


def _dequantize_q8_0(raw: np.ndarray) -> tuple:
    blocks = raw.reshape(-1, 34)
    d = blocks[:, :2].copy().view("<f2").astype(np.float32)
    return (blocks[:, 2:].view(np.int8) * d).reshape(-1), np.repeat(np.abs(d), 32)


@needs_converter
@pytest.mark.parametrize("arch", GGUF_ARCHES)
@pytest.mark.parametrize("outtype", OUTTYPES)
def test_llama_cpp_converter_gguf_gives_the_source_logits(llama_cpp_ggufs, tmp_path, arch, outtype):
    checkpoint, gguf = llama_cpp_ggufs[arch, outtype]
    write_model(tmp_path / "source.bin", checkpoint, "FP32")
    gguf_to_bin(gguf, tmp_path / "from-gguf.bin")
    got, source = logits(tmp_path / "from-gguf.bin"), logits(tmp_path / "source.bin")
    reference = Reference(checkpoint).eval_sequence(TOKENS)[0]
    spread = float(np.ptp(reference))
    if outtype in ("f32", "bf16"):
        # bf16-exact weights, the rescaling undone exactly: the very file rwkvcpp makes itself.
        assert (tmp_path / "from-gguf.bin").read_bytes() == (tmp_path / "source.bin").read_bytes()
    elif outtype == "f16":
        assert np.abs(got - source).max() < 1e-4 * spread
    else:  # Q8_0 matrices: every value within its block's rounding of the source's
        expected = {r.name: r for r in fmt.load_records(tmp_path / "source.bin")}
        n_q8 = 0
        for record in fmt.load_records(tmp_path / "from-gguf.bin"):
            if record.type_id == fmt.Q8_0:
                values, step = _dequantize_q8_0(np.asarray(fmt.read_tensor(str(tmp_path / "from-gguf.bin"), record)))
                want = fmt.read_tensor_f32(str(tmp_path / "source.bin"), expected[record.name]).reshape(-1)
                assert (np.abs(values - want) <= 0.6 * step + 1e-7).all(), record.name
                n_q8 += 1
        assert n_q8 >= 8
        assert np.abs(got - source).max() < 0.03 * spread
    assert np.abs(got - reference).max() < 0.03 * spread


@needs_converter
@pytest.mark.parametrize("arch", GGUF_ARCHES)
def test_llama_cpp_converter_gguf_with_heads_of_32(llama_cpp_ggufs, tmp_path, arch):
    checkpoint, gguf = llama_cpp_ggufs[f"{arch}-h32", "f32"]
    write_model(tmp_path / "source.bin", checkpoint, "FP32")
    gguf_to_bin(gguf, tmp_path / "from-gguf.bin")
    assert (tmp_path / "from-gguf.bin").read_bytes() == (tmp_path / "source.bin").read_bytes()


def _squeezed(shape: tuple) -> tuple:
    return tuple(n for n in shape if n != 1)


@needs_converter
@pytest.mark.parametrize("arch", GGUF_ARCHES)
def test_gguf_written_here_matches_llama_cpp_converter(llama_cpp_ggufs, tmp_path, arch):
    """Every tensor of the GGUF written from the .bin is the converter's: name, shape (up to
    leading 1s), type and bytes; v6's rescaled matrices are the converter's times 2."""
    checkpoint, theirs_path = llama_cpp_ggufs[arch, "f32"]
    write_model(tmp_path / "source.bin", checkpoint, "FP32")
    bin_to_gguf(tmp_path / "source.bin", tmp_path / "ours.gguf")
    with GGUFFile(theirs_path) as theirs, GGUFFile(tmp_path / "ours.gguf") as ours:
        assert set(theirs.tensors) == set(ours.tensors)
        for name, t in theirs.tensors.items():
            mine = ours.tensors[name]
            assert (t.type_id, _squeezed(t.shape)) == (mine.type_id, _squeezed(mine.shape)), name
            a, b = np.frombuffer(bytes(theirs.data(t)), "<f4"), np.frombuffer(bytes(ours.data(mine)), "<f4")
            rescaled = arch == "v6" and name in ("blk.1.time_mix_output.weight", "blk.1.channel_mix_value.weight")
            factor = 2 if rescaled else 1
            assert np.array_equal(a * factor, b), name
        for key in ("embedding_length", "block_count", "feed_forward_length", "wkv.head_size", "attention.head_count"):
            key = f"rwkv{arch[1]}.{key}"
            assert theirs.metadata[key] == ours.metadata[key], key


@needs_converter
def test_world_vocabulary_matches_llama_cpp_converter(llama_cpp_ggufs, tmp_path):
    checkpoint, theirs_path = llama_cpp_ggufs["world", "f16"]
    write_model(tmp_path / "world.bin", checkpoint, "FP16")
    bin_to_gguf(tmp_path / "world.bin", tmp_path / "ours.gguf")
    with GGUFFile(theirs_path) as theirs, GGUFFile(tmp_path / "ours.gguf") as ours:
        for key in ("tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.bos_token_id",
                    "tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"):
            assert theirs.metadata[key] == ours.metadata[key], key
        assert np.array_equal(theirs.metadata["tokenizer.ggml.token_type"], ours.metadata["tokenizer.ggml.token_type"])
    gguf_to_bin(theirs_path, tmp_path / "back.bin")
    assert np.abs(logits(tmp_path / "back.bin") - logits(tmp_path / "world.bin")).max() < 1e-3


# ----------------------------------------------------------------------------- malformed files


def _gguf(kvs: bytes = b"", n_kv: int = 0, infos: bytes = b"", n_tensors: int = 0, data: bytes = b"",
          version: int = 3) -> bytes:
    """A GGUF file from raw parts (independent of the writer): header, metadata, infos, data."""
    head = struct.pack("<4sIQQ", b"GGUF", version, n_tensors, n_kv) + kvs + infos
    return head + b"\0" * (-len(head) % 32) + data


def _s(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _kv(key: str, vtype: int, packed: bytes) -> bytes:
    return _s(key) + struct.pack("<I", vtype) + packed


def _info(name: str, ne: tuple, type_id: int = 0, offset: int = 0) -> bytes:
    return _s(name) + struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, type_id, offset)


ARCH_KV = _kv("general.architecture", STRING, _s("rwkv7"))


@pytest.mark.parametrize("content, message", [
    (b"GGML" + b"\0" * 40, "not a GGUF file"),
    (b"GG", "too short for a GGUF header"),
    (_gguf(version=1), "GGUF version 1"),
    (_gguf(version=0x03000000), "big-endian"),
    (struct.pack("<4sIQQ", b"GGUF", 3, 0, 1), "truncated in metadata key 0"),
    (struct.pack("<4sIQQ", b"GGUF", 3, 0, 2**60), "claims 1152921504606846976 metadata entries"),
    (struct.pack("<4sIQQ", b"GGUF", 3, 2**40, 0), "claims 1099511627776 tensors"),
    (_gguf(struct.pack("<Q", 2**62) + b"x" * 8, 1), "truncated in metadata key 0"),
    (_gguf(_kv("k", 99, b"\0" * 8), 1), "metadata 'k' has unknown value type 99"),
    (_gguf(_kv("k", ARRAY, struct.pack("<IQ", STRING, 2**50)), 1), "claims 1125899906842624 strings"),
    (_gguf(_kv("k", ARRAY, struct.pack("<IQ", UINT32, 2**40)), 1), "truncated in metadata 'k'"),
    (_gguf(_kv("k", STRING, _s("a")) * 2, 2), "metadata key 'k' appears twice"),
    (_gguf(_kv("k", STRING, struct.pack("<Q", 2) + b"\xff\xfe"), 1), "metadata 'k' is not UTF-8"),
    (_gguf(_kv("general.alignment", UINT32, struct.pack("<I", 24)), 1), "general.alignment is 24"),
    (_gguf(infos=_info("t", ()), n_tensors=1), "tensor 't' has 0 dimensions"),
    (_gguf(infos=_info("t", (1, 1, 1, 1, 1)), n_tensors=1), "tensor 't' has 5 dimensions"),
    (_gguf(infos=_info("t", (4, 0)), n_tensors=1), r"tensor 't' has sizes \[4, 0\]"),
    (_gguf(infos=_info("t", (2**40, 2**40)), n_tensors=1, data=b"\0" * 64), "impossible for a"),
    (_gguf(infos=_info("t", (8,), type_id=77), n_tensors=1, data=b"\0" * 32), "unknown ggml type 77"),
    (_gguf(infos=_info("t", (16,), type_id=8), n_tensors=1, data=b"\0" * 64), "not a multiple of its 32-value"),
    (_gguf(infos=_info("t", (8,), offset=4), n_tensors=1, data=b"\0" * 64), "not a multiple of the alignment"),
    (_gguf(infos=_info("t", (8,)), n_tensors=1, data=b"\0" * 16), "truncated in the data of tensor 't'"),
    (_gguf(infos=_info("t", (8,)) * 2, n_tensors=2, data=b"\0" * 64), "tensor 't' appears twice"),
    (_gguf(infos=_info("a", (16,)) + _info("b", (8,), offset=32), n_tensors=2, data=b"\0" * 96),
     "the data of tensors 'a' and 'b' overlap"),
    (_gguf(), "no general.architecture"),
    (_gguf(_kv("general.architecture", STRING, _s("llama")), 1), "architecture 'llama' is not RWKV"),
    (_gguf(_kv("general.architecture", STRING, _s("rwkv6qwen2")), 1), "rwkvcpp does not run"),
    (_gguf(ARCH_KV, 1), "metadata 'rwkv7.embedding_length' is missing"),
], ids=lambda value: value if isinstance(value, str) else "")
def test_malformed_files_are_refused_by_name(tmp_path, content, message):
    (tmp_path / "bad.gguf").write_bytes(content)
    with pytest.raises(GGUFError, match=message) as info:
        gguf_to_bin(tmp_path / "bad.gguf", tmp_path / "out.bin")
    assert str(tmp_path / "bad.gguf") in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf"]


@pytest.fixture(scope="module")
def good_gguf(bins, tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "v7.gguf"
    bin_to_gguf(bins["v7", "FP16"], path)
    return path


def _zeros(name: str, type_id: int, shape: tuple, block=(1, 4)) -> OutTensor:
    nbytes = int(np.prod(shape)) // block[0] * block[1]
    return OutTensor(name, type_id, shape, lambda: np.zeros(nbytes, np.uint8))


@pytest.mark.parametrize("change, message", [
    ({"tensors": {"blk.1.time_mix_k_a.weight": None}}, "tensor 'blk.1.time_mix_k_a.weight' is missing"),
    ({"tensors": {"blk.0.time_mix_w0.weight": _zeros("blk.0.time_mix_w0.weight", 0, (64,))}},
     r"tensor 'blk.0.time_mix_w0.weight' has shape \(64,\); expected \(128,\)"),
    ({"extra": [_zeros("extra", 0, (8,))]}, "tensor 'extra' is not part of an rwkv7 model"),
    ({"tensors": {"blk.0.channel_mix_value.weight": _zeros("blk.0.channel_mix_value.weight", 14, (128, 512),
                                                           (256, 210))}},
     "tensor 'blk.0.channel_mix_value.weight' is Q6_K, which rwkv.cpp model files cannot hold.*--pure"),
    ({"tensors": {"blk.0.channel_mix_key.weight": _zeros("blk.0.channel_mix_key.weight", 20, (512, 128),
                                                         (32, 18))}}, "is IQ4_NL"),
    ({"metadata": {"rwkv7.wkv.head_size": (UINT32, 48)}}, "embedding_length 128 is not a multiple"),
    ({"metadata": {"rwkv7.block_count": (UINT32, 3)}}, "tensor 'blk.2.attn_norm.weight' is missing"),
    ({"metadata": {"rwkv7.attention.layer_norm_epsilon": (6, 1e-6)}}, "layer_norm_epsilon is"),
    ({"metadata": {"rwkv7.attention.decay_lora_rank": (STRING, "32")}}, "expected a positive integer"),
], ids=lambda value: value if isinstance(value, str) else "")
def test_wrong_models_are_refused_by_name(good_gguf, tmp_path, change, message):
    _rewrite(good_gguf, tmp_path / "bad.gguf", change.get("metadata"), change.get("tensors"), change.get("extra", ()))
    with pytest.raises(GGUFError, match=message):
        gguf_to_bin(tmp_path / "bad.gguf", tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()


def test_bins_llama_cpp_cannot_run_are_refused(model_files, tmp_path):
    with pytest.raises(GGUFError, match="RWKV v5.2 model; llama.cpp runs RWKV-6 and RWKV-7 only"):
        bin_to_gguf(model_files["v5.2"].fp16, tmp_path / "x.gguf")
    write_model(tmp_path / "odd.bin", make_checkpoint("v7", 1, 64, 1000, seed=1), "FP16")
    with pytest.raises(GGUFError, match="n_vocab 1000 fits neither"):
        convert(tmp_path / "odd.bin", tmp_path / "x.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.bin"]


# ----------------------------------------------------------------------------- command line


def test_command_line_both_ways_and_info(bins, tmp_path, capsys):
    assert cli_main(["convert", str(bins["v6", "Q5_1"]), str(tmp_path / "m.gguf")]) == 0
    assert cli_main(["convert", str(tmp_path / "m.gguf"), str(tmp_path / "m.bin")]) == 0
    assert (tmp_path / "m.bin").read_bytes() == bins["v6", "Q5_1"].read_bytes()
    assert "GGUF" in capsys.readouterr().out
    assert cli_main(["info", str(tmp_path / "m.gguf")]) == 0
    out = capsys.readouterr().out
    assert "GGUF version 3, llama.cpp architecture rwkv6" in out and "architecture: RWKV v6" in out
    assert "blk.1.time_mix_lerp_fused.weight" in out and "tokenizer.ggml.tokens: [256 strings]" in out
    assert cli_main(["convert", str(tmp_path / "m.gguf"), str(tmp_path / "again.gguf")]) == 2
    assert "already a GGUF file" in capsys.readouterr().err
