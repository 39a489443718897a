"""ggzip.container on real weights: byte-identical round trips (sha256) for every
tensor type of the project's models, frames at their order-0 bound, the layout the
patched llama.cpp loader expects, and every error path (damaged frame, truncated
file, not a GGUF, unknown type, already compressed, temporaries removed)."""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest

import gguf
from ggzip import codec
from ggzip.cli import main as cli
from ggzip.constants import Keys
from ggzip.container import (GGZipReader, GGZipWriter, analyze_file, compress_file, decompress_file,
                             is_ggzip, layout_for, verify_file)
from ggzip.container import gguf_io as G
from ggzip.errors import GGZipError

T = gguf.GGMLQuantizationType
MiB = 1 << 20


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(folder: Path, keep) -> list:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


@pytest.fixture(scope="module")
def minilm_types(minilm_dir, tmp_path_factory) -> Path:
    """MiniLM's true-F32 weights as a GGUF holding F32, F16, BF16 and Q8_0 copies of
    the same matrices (quantized by gguf-py), 1-D F32 and an I32 tensor."""
    from ggzip.convert.safetensors import SafeTensors
    st = SafeTensors(minilm_dir / "model.safetensors")
    emb = np.asarray(st.get("embeddings.word_embeddings.weight"), np.float32)[:8192]   # 12.6 MB F32
    up = np.asarray(st.get("encoder.layer.0.intermediate.dense.weight"), np.float32)  # 1536 x 384
    path = tmp_path_factory.mktemp("minilm") / "minilm-types.gguf"
    w = gguf.GGUFWriter(path, "bert")
    w.add_uint32("bert.block_count", 6)
    w.add_array("tokenizer.ggml.tokens", (minilm_dir / "vocab.txt").read_text().split("\n")[:2000])
    w.add_tensor("token_embd.weight", emb)
    w.add_tensor("emb.f16", emb.astype(np.float16))
    w.add_tensor("emb.bf16", gguf.quants.quantize(emb, T.BF16), raw_dtype=T.BF16)
    w.add_tensor("emb.q8_0", gguf.quants.quantize(emb, T.Q8_0), raw_dtype=T.Q8_0)
    w.add_tensor("blk.0.ffn_up.weight", up)
    w.add_tensor("blk.0.ffn_up.q8_0", gguf.quants.quantize(up, T.Q8_0), raw_dtype=T.Q8_0)
    w.add_tensor("blk.0.ffn_up.bias", np.asarray(st.get("encoder.layer.0.intermediate.dense.bias"), np.float32))
    w.add_tensor("position_ids", np.arange(512, dtype=np.int32))
    w.add_tensor("odd", np.arange(5, dtype=np.float32))          # 20 bytes: padding follows
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def packed(minilm_types, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("packed") / "minilm.ggz.gguf"
    compress_file(minilm_types, out, progress=False)
    return out


def roundtrip(src: Path, tmp: Path) -> tuple[Path, object]:
    ggz, back = tmp / (src.stem + ".ggz.gguf"), tmp / (src.stem + ".back.gguf")
    rep = compress_file(src, ggz, progress=False)
    assert is_ggzip(ggz) and not is_ggzip(src)
    decompress_file(ggz, back, progress=False)
    assert sha(back) == sha(src)
    assert back.stat().st_size == src.stat().st_size
    return ggz, rep


def check_bounds(ggz: Path, min_bytes: int = MiB, tol: float = 0.005) -> int:
    """Every coded tensor of >= min_bytes is within tol of the order-0 bound of
    its layout; returns how many were checked."""
    n = 0
    with GGZipReader(ggz) as r:
        for t in r.tensors.values():
            if not t.coded or t.nbytes < min_bytes:
                continue
            layout, row = layout_for(t.ggml_type, t.ne)
            bound = codec.entropy_bound(r.data(t.name), layout, row_size=row)
            assert t.stored <= (1 + tol) * bound, (t.name, t.type_name, t.stored, bound)
            n += 1
    return n


def loader_layout(ggz: Path) -> None:
    """What patches/0002 relies on: every compressed tensor is a 1-D I8 tensor under
    its name whose ne0 is its frame size, listed and stored after every plain one;
    offsets as gguf-py (and llama.cpp's gguf.cpp) compute them."""
    buf = ggz.read_bytes()
    h = G.parse_header(buf, str(ggz))
    names = set(h.value(Keys.TENSOR_NAMES))
    coded = [t.name in names for t in h.tensors]
    assert coded == sorted(coded)                       # plain ones first
    off = 0
    for t in h.tensors:
        assert t.offset == off
        if t.name in names:
            assert t.ggml_type == T.I8 and len(t.ne) == 1
            assert codec.info(buf[h.data_start + off:h.data_start + off + t.ne[0]]).frame_size == t.ne[0]
        off = G.align(off + t.nbytes, h.alignment)
    assert h.data_start + off == len(buf)


def test_roundtrip_minilm_float_and_q8_types(minilm_types, tmp_path):
    ggz, rep = roundtrip(minilm_types, tmp_path)
    by = {t.name: t for t in rep.tensors}
    # every type coded with its layout, the tiny and integer tensors left plain
    assert {n: by[n].layout for n in ("token_embd.weight", "emb.f16", "emb.bf16", "emb.q8_0")} == \
        {"token_embd.weight": "plane32", "emb.f16": "plane16", "emb.bf16": "plane16", "emb.q8_0": "q8_0"}
    assert all(by[n].coded for n in ("blk.0.ffn_up.weight", "blk.0.ffn_up.q8_0"))
    assert not by["blk.0.ffn_up.bias"].coded and not by["position_ids"].coded
    # true float weights: the byte planes of F32/F16 carry real redundancy (exponents)
    assert by["token_embd.weight"].stored < 0.9 * by["token_embd.weight"].nbytes
    assert by["emb.bf16"].stored < 0.8 * by["emb.bf16"].nbytes
    assert check_bounds(ggz) >= 5
    loader_layout(ggz)
    # an independent reader (gguf-py, which follows llama.cpp's gguf.cpp) reads it
    # too: a check of the format, not a second reader of the package
    r = gguf.GGUFReader(ggz)
    assert r.fields[Keys.TENSOR_NAMES].contents()[0] == "token_embd.weight"
    # the reader gives back the original arrays
    with GGZipReader(ggz) as z:
        t = z.tensors["emb.f16"]
        assert t.type_name == "F16" and t.shape == (8192, 384) and t.coded
        a = z.array("emb.f16")
        with GGZipReader(minilm_types) as plain:
            np.testing.assert_array_equal(a, plain.array("emb.f16"))
            np.testing.assert_array_equal(z.array("emb.q8_0"), plain.array("emb.q8_0"))


def test_roundtrip_smollm2(smollm2_gguf, tmp_path):
    """Q4_1 + Q8_0 + F32; llama.cpp-made."""
    ggz, rep = roundtrip(smollm2_gguf, tmp_path)
    types = {G.type_name(t.ggml_type) for t in rep.tensors if t.coded}
    assert {"Q4_1", "Q8_0"} <= types
    assert rep.out_size < 0.96 * rep.in_size
    assert check_bounds(ggz) >= 1                       # token_embd, Q8_0
    # + the 0.55 MB Q4_1 matrices, where tables cost more: every one checked
    big = [t for t in rep.tensors if t.coded and t.nbytes >= 512 * 1024]
    assert len(big) > 1 and check_bounds(ggz, 512 * 1024, 0.01) == len(big)
    assert not rep.header_stored
    loader_layout(ggz)
    v = verify_file(ggz, progress=False)
    assert v["identical"] is True and v["coded"] == sum(t.coded for t in rep.tensors)


def test_roundtrip_gemma3(gemma3_gguf, tmp_path):
    """Q4_K, Q5_0, Q6_K, Q8_0, F32, and a 262k-token vocabulary."""
    ggz, rep = roundtrip(gemma3_gguf, tmp_path)
    types = {G.type_name(t.ggml_type) for t in rep.tensors if t.coded}
    assert {"Q8_0", "Q5_0", "Q4_K"} <= types, types
    assert {G.type_name(t.ggml_type) for t in rep.tensors} >= {"Q6_K", "F32"}
    assert rep.out_size < 0.97 * rep.in_size
    assert check_bounds(ggz) >= 1
    assert check_bounds(ggz, 256 * 1024, 0.01) > 25


def test_header_and_padding_fallbacks(minilm_types, tmp_path):
    """A GGUF v2 header and non-zero padding cannot be rebuilt: they are stored,
    and the round trip is still byte-identical."""
    data = bytearray(minilm_types.read_bytes())
    h = G.parse_header(bytes(data), "x")
    struct.pack_into("<I", data, 4, 2)                          # GGUF v2
    odd = next(t for t in h.tensors if t.name == "odd")
    gap = h.data_start + odd.offset + odd.nbytes                # the padding after it
    assert gap % 32 and gap < len(data)
    data[gap] = 0xAB
    data[h.data_start - 1] = 0x01                               # and padding inside the header
    src = tmp_path / "odd.gguf"
    src.write_bytes(bytes(data))
    ggz, rep = roundtrip(src, tmp_path)
    assert rep.header_stored
    with GGZipReader(ggz) as r:
        assert r.value(Keys.ORIGINAL_HEADER) is not None
        assert r.value(Keys.ORIGINAL_PADDING).max() == 0xAB
        assert Keys.ORIGINAL_TENSOR_INFO not in r.header.kvs


def test_convert_output_decompresses_to_plain(tmp_path, minilm_types):
    """A file written by GGZipWriter without an original (as convert does)
    decompresses to what the writer writes with plain=True."""
    with GGZipReader(minilm_types) as r:
        for plain, out in ((False, tmp_path / "w.ggz.gguf"), (True, tmp_path / "w.plain.gguf")):
            with GGZipWriter(out, plain=plain) as w:
                w.add_kv("general.architecture", "bert", G.VT.STRING)
                w.add_kv("x.list", [1.5, 2.5], G.VT.ARRAY, G.VT.FLOAT32)
                for t in r.tensors.values():
                    w.add_tensor(t.name, t.ggml_type, t.ne, r.data(t.name))
    assert is_ggzip(tmp_path / "w.ggz.gguf") and not is_ggzip(tmp_path / "w.plain.gguf")
    decompress_file(tmp_path / "w.ggz.gguf", tmp_path / "w.back.gguf", progress=False)
    assert sha(tmp_path / "w.back.gguf") == sha(tmp_path / "w.plain.gguf")
    assert verify_file(tmp_path / "w.ggz.gguf", progress=False)["identical"] is None
    pr = gguf.GGUFReader(tmp_path / "w.plain.gguf")        # an ordinary GGUF to gguf-py too
    assert list(pr.fields["x.list"].contents()) == [1.5, 2.5]
    assert int(pr.tensors[0].n_bytes) == 8192 * 384 * 4


def test_damaged_payload_names_tensor(packed, tmp_path):
    data = bytearray(packed.read_bytes())
    with GGZipReader(packed) as r:
        t = r.tensors["emb.q8_0"]
        pos = t.offset + t.stored // 2
    data[pos] ^= 0x40
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(GGZipError, match=r"bad.gguf: tensor 'emb.q8_0': frame is damaged \((CHECKSUM|CORRUPT)\)"):
        verify_file(bad, progress=False)
    with GGZipReader(bad) as r:                     # the others still decode alone
        r.data("emb.f16")
        with pytest.raises(GGZipError, match="'emb.q8_0'"):
            r.data("emb.q8_0")
    out = tmp_path / "out.gguf"
    with pytest.raises(GGZipError, match="'emb.q8_0'"):
        decompress_file(bad, out, progress=False)
    assert leftovers(tmp_path, {"bad.gguf"}) == []          # no output, no temporary
    assert cli(["verify", "-q", str(bad)]) == 1
    # a damaged frame header too
    data = bytearray(packed.read_bytes())
    data[t.offset + 10] ^= 1
    bad.write_bytes(bytes(data))
    with pytest.raises(GGZipError, match=r"tensor 'emb.q8_0'"):
        verify_file(bad, progress=False)


def test_truncated_files(packed, minilm_types, tmp_path):
    cut = tmp_path / "cut.ggz.gguf"                     # a ggzip file missing its last 1000 bytes
    cut.write_bytes(packed.read_bytes()[:-1000])
    with pytest.raises(GGZipError, match=r"cut.ggz.gguf: truncated: tensor '[\w.]+' ends at byte"):
        verify_file(cut, progress=False)
    with pytest.raises(GGZipError, match=r"cut.ggz.gguf: truncated"):
        decompress_file(cut, tmp_path / "o.gguf", progress=False)
    half = tmp_path / "half.gguf"                       # a plain GGUF cut in half
    half.write_bytes(minilm_types.read_bytes()[:minilm_types.stat().st_size // 2])
    with pytest.raises(GGZipError, match=r"half.gguf: truncated: tensor '[\w.]+' ends at byte"):
        compress_file(half, tmp_path / "o.gguf", progress=False)
    head = tmp_path / "head.gguf"
    head.write_bytes(minilm_types.read_bytes()[:3000])
    with pytest.raises(GGZipError, match="head.gguf: truncated GGUF header"):
        compress_file(head, tmp_path / "o.gguf", progress=False)
    assert not (tmp_path / "o.gguf").exists()


def test_not_a_gguf_and_missing(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"PK\x03\x04" + bytes(5000))
    with pytest.raises(GGZipError, match=r"junk.bin: not a GGUF file \(magic b'PK"):
        compress_file(junk, tmp_path / "o.gguf", progress=False)
    with pytest.raises(GGZipError, match="nope.gguf: no such file"):
        compress_file(tmp_path / "nope.gguf", tmp_path / "o.gguf", progress=False)
    assert not is_ggzip(junk)
    assert leftovers(tmp_path, {"junk.bin"}) == []


def _with_tensor_type(src: Path, dst: Path, name: str, type_id: int) -> None:
    """src with the type id of one tensor's info patched (sizes are left alone)."""
    data = bytearray(src.read_bytes())
    h = G.parse_header(bytes(data), "x")
    t = next(t for t in h.tensors if t.name == name)
    struct.pack_into("<I", data, t.end - 12, type_id)
    dst.write_bytes(bytes(data))


def test_unknown_type_and_temporaries_removed(minilm_types, tmp_path):
    bad = tmp_path / "bad.gguf"
    _with_tensor_type(minilm_types, bad, "position_ids", 250)   # the last tensor
    out = tmp_path / "out.gguf"
    out.write_bytes(b"previous")
    with pytest.raises(GGZipError, match=r"bad.gguf: tensor 'position_ids': unknown ggml type id 250"):
        compress_file(bad, out, progress=False)
    assert out.read_bytes() == b"previous"


def test_failure_midway_leaves_nothing(minilm_types, tmp_path, monkeypatch):
    """An error after several tensors were written: OUT untouched, no temporary left."""
    from ggzip.container import writer
    calls = []
    real = writer.codec.encode

    def failing(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise codec.CodecError("encode: simulated", "ALLOC")
        return real(*a, **kw)
    monkeypatch.setattr(writer.codec, "encode", failing)
    out = tmp_path / "sub" / "out.gguf"
    with pytest.raises(GGZipError, match="simulated"):
        compress_file(minilm_types, out, progress=False)
    assert len(calls) == 3
    assert list((tmp_path / "sub").iterdir()) == []


def test_already_compressed(packed, tmp_path):
    with pytest.raises(GGZipError, match=r"minilm.ggz.gguf: already ggzip-compressed"):
        compress_file(packed, tmp_path / "twice.gguf", progress=False)
    assert cli(["compress", "-q", str(packed), str(tmp_path / "twice.gguf")]) == 1
    assert leftovers(tmp_path, set()) == []
    plain = tmp_path / "plain.gguf"
    decompress_file(packed, plain, progress=False)
    with pytest.raises(GGZipError, match="plain.gguf: not a ggzip GGUF"):
        decompress_file(plain, tmp_path / "x.gguf", progress=False)


def test_writer_memory_is_one_tensor(tmp_path):
    """Peak Python/numpy memory of GGZipWriter is a few times one tensor (the
    encoder's output buffer, the frame, the decode check), not the file: eight
    4 MiB tensors."""
    import tracemalloc
    rng = np.random.default_rng(0)
    tensors = [np.round(rng.normal(0, 3, (1024, 4096))).astype(np.int8) for _ in range(2)]
    tracemalloc.start()
    try:
        with GGZipWriter(tmp_path / "m.gguf") as w:
            for i in range(8):
                w.add_tensor(f"t{i}", T.I8, (4096, 1024), tensors[i % 2])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3.5 * 4 * MiB < 0.5 * 8 * 4 * MiB, peak
    with GGZipReader(tmp_path / "m.gguf") as r:
        assert all(t.coded for t in r.tensors.values())
        np.testing.assert_array_equal(r.array("t5").reshape(1024, 4096), tensors[1])


def test_writer_keeps_incompressible_tensors_plain(tmp_path):
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, 1 << 18, dtype=np.uint8)
    with GGZipWriter(tmp_path / "n.gguf") as w:
        t = w.add_tensor("noise", T.I8, (noise.size,), noise)
        with pytest.raises(GGZipError, match="'short' .* needs 1024 bytes, got 1000"):
            w.add_tensor("short", T.F32, (256,), bytes(1000))
        with pytest.raises(GGZipError, match="'noise' given twice"):
            w.add_tensor("noise", T.I8, (4,), bytes(4))
    assert not t.coded and t.stored == t.nbytes


def test_writer_records_a_non_default_alignment(tmp_path):
    rng = np.random.default_rng(2)
    small = rng.integers(-3, 4, 100, dtype=np.int8)
    coded = np.round(rng.normal(0, 3, 1 << 16)).astype(np.int8)
    with GGZipWriter(tmp_path / "a.gguf", alignment=64) as w:
        w.add_tensor("small", T.I8, (small.size,), small)
        w.add_tensor("coded", T.I8, (coded.size,), coded)
    # gguf-py finds the data where the header says, as llama.cpp does
    assert gguf.GGUFReader(tmp_path / "a.gguf").alignment == 64
    with GGZipReader(tmp_path / "a.gguf") as r:
        np.testing.assert_array_equal(r.array("small"), small)
        np.testing.assert_array_equal(r.array("coded"), coded)


def test_analyze_json_and_plot(packed, tmp_path, capsys):
    png = tmp_path / "a.png"
    assert cli(["analyze", "-q", str(packed), "--json", "--plot", str(png)]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert png.stat().st_size > 10_000
    by = {e["name"]: e for e in rep["tensors"]}
    e = by["emb.q8_0"]
    for k in ("type", "ne", "bytes", "entropy_bytes", "ggzip_bytes", "zstd3_bytes", "zstd19_bytes",
              "lz4_bytes", "bpw", "bpw_entropy", "bpw_ggzip", "bpw_zstd3", "bpw_zstd19", "bpw_lz4",
              "sampled_fraction"):
        assert k in e, k
    assert e["type"] == "Q8_0" and e["bpw"] == 8.5 and e["sampled_fraction"] < 1
    # ggzip at the bound; zstd -19 on Q8_0 is worse than the rANS layout
    assert e["bpw_ggzip"] <= 1.005 * e["bpw_entropy"] < e["bpw_zstd19"]
    # one scale per row gives int8 symbols of lower entropy than per-32 absmax
    g = e["q8_0"]
    assert g["row_scale_symbol_entropy_bits"] < g["symbol_entropy_bits"] - 0.3
    t = rep["total"]
    for k in ("bytes", "ggzip_bytes", "ratio_ggzip", "ratio_zstd19", "ratio_lz4", "ratio_entropy",
              "q8_0_symbol_entropy_bits", "q8_0_row_scale_symbol_entropy_bits"):
        assert k in t, k
    assert t["ratio_ggzip"] > 1.05
    assert any("measured on" in n for n in rep["notes"])


def test_analyze_plain_matches_ggzip(minilm_types, packed):
    """The analysis of a plain file and of its ggzip twin agree (ggzip frames are
    read, plain tensors coded on the fly)."""
    a = analyze_file(minilm_types, progress=False, sample_bytes=64 * 1024)
    b = analyze_file(packed, progress=False, sample_bytes=64 * 1024)
    assert [x["name"] for x in a["tensors"]] == [y["name"] for y in b["tensors"]]
    for x, y in zip(a["tensors"], b["tensors"]):
        assert x["entropy_bytes"] == y["entropy_bytes"]
        assert abs(x["zstd3_bytes"] - y["zstd3_bytes"]) < 1e-6
    assert b["total"]["ggzip_bytes"] <= a["total"]["ggzip_bytes"]


def test_chunk_size_option(smollm2_gguf, tmp_path):
    """compress --chunk-kib: finer chunks (for tensors kept compressed in RAM, shared among
    more threads) are recorded in each frame, cost little, and give the input back."""
    ggz, back = tmp_path / "c64.gguf", tmp_path / "back.gguf"
    rep = compress_file(smollm2_gguf, ggz, progress=False, chunk_size=64 * 1024)
    default = compress_file(smollm2_gguf, tmp_path / "c256.gguf", progress=False)
    with GGZipReader(ggz) as r:
        infos = [codec.info(bytes(r.stored(t.name))) for t in r.tensors.values() if t.coded]
    assert infos and all(i.chunk_raw_size <= 64 * 1024 for i in infos)
    assert any(i.n_chunks > 4 for i in infos)
    assert default.out_size < rep.out_size < 1.01 * default.out_size
    decompress_file(ggz, back, progress=False)
    assert sha(back) == sha(smollm2_gguf)
