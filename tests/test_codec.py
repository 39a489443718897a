"""The codec through its Python API: every decoder kernel on the scalar
encoder's frames (the one encoder there is), edge sizes, layouts, real Q8_0
data, and damaged frames."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import ggzip.codec as codec
import ggzip.constants as codec_constants
from ggzip.codec import CodecError

CHUNK = 4096  # small chunks so that the edge sizes cross chunk boundaries
ALL = codec.compiled_kernels()
HERE = codec.kernels()


def kernel_param(name):
    return pytest.param(name, marks=pytest.mark.skipif(
        name not in HERE, reason=f"kernel {name} cannot run on this host"))


DECODERS = [kernel_param(k) for k in ["scalar", "avx2", "avx512", "avx512vbmi", "neon"]]


@pytest.fixture(autouse=True)
def restore_kernel():
    before = codec.kernel()
    yield
    codec.set_kernel(before)


def int8_bell(n, sigma=20.0, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(np.round(rng.normal(size=n) * sigma), -127, 127).astype(np.int8).view(np.uint8)


def q8_blocks(n_rows, blocks_per_row, constant_scales, seed=0):
    rng = np.random.default_rng(seed)
    blk = np.zeros((n_rows, blocks_per_row, 34), np.uint8)
    if constant_scales:
        d = np.repeat(rng.uniform(1e-3, 1e-2, size=(n_rows, 1)), blocks_per_row, axis=1)
    else:
        d = rng.uniform(1e-3, 1e-2, size=(n_rows, blocks_per_row))
    blk[:, :, :2] = d.astype(np.float16).view(np.uint8).reshape(n_rows, blocks_per_row, 2)
    blk[:, :, 2:] = int8_bell(n_rows * blocks_per_row * 32, seed=seed).reshape(n_rows, blocks_per_row, 32)
    return blk.reshape(-1)


EDGE_SIZES = [0, 1, 31, 32, 33, CHUNK - 1, CHUNK, CHUNK + 1, 300_001]


@pytest.mark.parametrize("dec", DECODERS)
@pytest.mark.parametrize("n", EDGE_SIZES)
def test_roundtrip_edge_sizes(dec, n):
    data = int8_bell(n, seed=n)
    frame = codec.encode(data, chunk_size=CHUNK)
    codec.set_kernel(dec)
    out = codec.decode(frame)
    assert out.nbytes == n and np.array_equal(out, data)
    assert codec.info(frame).raw_size == n


@pytest.mark.parametrize("dec", DECODERS)
@pytest.mark.parametrize("case", ["one_symbol", "uniform", "two_symbols", "alternating"])
def test_roundtrip_distributions(dec, case):
    rng = np.random.default_rng(1)
    n = 200_003
    data = {
        "one_symbol": np.full(n, 0x5A, np.uint8),
        "uniform": rng.integers(0, 256, n, dtype=np.uint8),
        "two_symbols": rng.choice(np.array([3, 250], np.uint8), n, p=[0.999, 0.001]),
        "alternating": np.tile(np.arange(256, dtype=np.uint8), n // 256 + 1)[:n],
    }[case]
    frame = codec.encode(data, chunk_size=CHUNK * 8)
    codec.set_kernel(dec)
    assert np.array_equal(codec.decode(frame), data)
    if case == "one_symbol":  # 32 states per chunk and next to nothing else
        assert len(frame) < 200 + codec.info(frame).n_chunks * 150
    if case == "uniform":     # incompressible: stored raw, not expanded
        assert len(frame) <= n + 1000


@pytest.mark.parametrize("dec", DECODERS)
@pytest.mark.parametrize("layout,unit", [("plane16", 2), ("plane32", 4)])
def test_roundtrip_planes(dec, layout, unit):
    rng = np.random.default_rng(2)
    x = rng.normal(size=50_000 * 4 // unit).astype(np.float16 if unit == 2 else np.float32)
    frame = codec.encode(x, layout=layout, row_size=unit * 100, chunk_size=CHUNK * 4)
    codec.set_kernel(dec)
    assert np.array_equal(codec.decode(frame), x.view(np.uint8))
    # the high (sign/exponent) bytes are cheap: the frame is smaller than the input
    assert len(frame) < x.nbytes * 0.97


@pytest.mark.parametrize("dec", DECODERS)
@pytest.mark.parametrize("constant", [True, False])
def test_roundtrip_q8_0(dec, constant):
    data = q8_blocks(64, 24, constant)
    frame = codec.encode(data, layout="q8_0", row_size=24 * 34, chunk_size=CHUNK * 4)
    codec.set_kernel(dec)
    assert np.array_equal(codec.decode(frame), data)
    if constant:
        # scales constant along a row cost next to nothing: about 2 bytes per
        # row, plus the scale stream's 32 states (128 B) per chunk
        symbols = data.reshape(-1, 34)[:, 2:].copy()
        alone = len(codec.encode(symbols, chunk_size=CHUNK * 4 * 32 // 34))
        n_chunks = codec.info(frame).n_chunks
        assert len(frame) - alone < 64 * 3 + n_chunks * (128 + 8) + 300


def test_one_encoder():
    # the SIMD kernels decode only: whichever kernel is chosen, frames come
    # from the scalar encoder, which every round trip here checks against
    for k in HERE:
        codec.set_kernel(k)
        assert codec.encoder_kernel() == "scalar"


@pytest.mark.parametrize("dec", DECODERS)
def test_decode_chunk_alone(dec):
    data = int8_bell(10 * CHUNK + 77)
    frame = codec.encode(data, chunk_size=CHUNK)
    codec.set_kernel(dec)
    fi = codec.info(frame)
    assert fi.n_chunks == 11 and fi.chunk_raw_size == -(-data.nbytes // 11)    # as many chunks, of equal size
    for j in range(fi.n_chunks):
        part = codec.decode_chunk(frame, j)
        assert np.array_equal(part, data[j * fi.chunk_raw_size:(j + 1) * fi.chunk_raw_size])


@pytest.mark.parametrize("rows,row,chunk", [(576, 612, 0), (1536, 612, 0), (49152, 612, 0), (7, 612, 0),
                                            (1000, 34, 34 * 64), (173, 340, 340 * 40), (5, 1, 2)])
def test_chunks_are_even(rows, row, chunk):
    """The encoder cuts a tensor into as many chunks as chunk_size asks for, their
    count rounded up to a multiple of 4 (else 2) where chunks stay at least 32 KiB
    (an odd count idles a thread decoding a kept tensor), of equal rows to within one
    (so does a short last chunk), and codec.rows_per_chunk (what the trellis
    quantizer restarts its lanes on) says so."""
    data = np.zeros(rows * row, np.uint8)
    frame = codec.encode(data, row_size=row, chunk_size=chunk)
    fi = codec.info(frame)
    rpc = max(1, (chunk or 256 * 1024) // row)
    n = -(-rows // min(rpc, rows))
    for m in (4, 2):
        nm = -(-n // m) * m
        if nm <= rows and rows * row // nm >= 32 * 1024:
            n = nm
            break
    assert fi.n_chunks == -(-rows // -(-rows // n))
    if rows * row >= 4 * 32 * 1024:
        assert fi.n_chunks % 4 == 0
    assert fi.rows_per_chunk == codec.rows_per_chunk(rows * row, row, chunk)
    last = rows - (fi.n_chunks - 1) * fi.rows_per_chunk
    assert 0 < last <= fi.rows_per_chunk and fi.rows_per_chunk - last < fi.n_chunks


@pytest.mark.parametrize("dec", DECODERS)
def test_reader_random_access(dec):
    """ggz_reader (the kept-in-RAM path): chunks in any order equal the data; check()
    finds a damaged chunk by its stored bytes alone, and decoding it fails too."""
    rng = np.random.default_rng(5)
    blocks = rng.integers(-127, 128, size=(300, 34), dtype=np.int8).view(np.uint8)
    blocks[:, :2] = np.frombuffer(np.float16(rng.random(300)).tobytes(), np.uint8).reshape(300, 2)
    data = blocks.reshape(-1)
    frame = codec.encode(data, layout="q8_0", row_size=34 * 10, chunk_size=34 * 40)
    codec.set_kernel(dec)
    r = codec.Reader(frame)
    assert r.info.n_chunks > 3 and r.check() == data.nbytes
    step = r.info.chunk_raw_size
    for j in reversed(range(r.info.n_chunks)):
        assert np.array_equal(r.chunk(j), data[j * step:(j + 1) * step])
    bad = bytearray(frame)
    bad[-3] ^= 0x10
    rb = codec.Reader(bytes(bad))
    with pytest.raises(CodecError) as e:
        rb.check()
    assert e.value.name == "CHECKSUM" and e.value.chunk == r.info.n_chunks - 1
    with pytest.raises(CodecError):
        rb.chunk(r.info.n_chunks - 1)
    with pytest.raises(IndexError):
        r.chunk(r.info.n_chunks)


@pytest.mark.parametrize("trellis", [False, True], ids=["rounded", "trellis"])
@pytest.mark.parametrize("dec", DECODERS)
def test_reader_pair_equals_two_chunks(dec, trellis):
    """ggz_reader_decode_pair (two chunks' symbols side by side on x86) gives the
    bytes of two single decodes, for chunks of unequal length too (the last one
    is short, so one stream goes on alone), and names the chunk that fails."""
    rng = np.random.default_rng(6)
    rows = 173                                    # 40-row chunks: the last has 13
    blocks = np.clip(rng.normal(0, 12, size=(rows * 10, 34)), -127, 127).astype(np.int8).view(np.uint8)
    blocks[:, :2] = np.frombuffer(np.float16(rng.random(rows * 10)).tobytes(), np.uint8).reshape(-1, 2)
    data = blocks.reshape(-1)
    frame = codec.encode(data, layout="q8_0", row_size=34 * 10, chunk_size=34 * 10 * 40, trellis=trellis)
    codec.set_kernel(dec)
    r = codec.Reader(frame)
    n, step = r.info.n_chunks, r.info.chunk_raw_size
    assert n == 5
    for j in range(n - 1):
        a, b = r.pair(j)
        assert np.array_equal(a, data[j * step:(j + 1) * step])
        assert np.array_equal(b, data[(j + 1) * step:(j + 2) * step])
    with pytest.raises(IndexError):
        r.pair(n - 1)
    for victim in (n - 2, n - 1):                 # the first and the second chunk of the last pair
        bad = bytearray(frame)
        bad[_chunk_payload_byte(frame, victim)] ^= 0x10
        with pytest.raises(CodecError) as e:
            codec.Reader(bytes(bad)).pair(n - 2)
        assert e.value.name == "CHECKSUM" and e.value.chunk == victim


def _chunk_payload_byte(frame: bytes, j: int) -> int:
    """An offset in chunk j's stored bytes (near the frame's end): a flip there
    makes check() name chunk j."""
    for at in range(len(frame) - 3, 0, -7):
        bad = bytearray(frame)
        bad[at] ^= 0x10
        try:
            codec.Reader(bytes(bad)).check()
        except CodecError as e:
            if e.chunk == j:
                return at
            if e.chunk is None or e.chunk < j:
                break
    raise AssertionError(f"no byte of chunk {j} found")


def test_threads_and_out_buffer():
    data = int8_bell(2_000_000)
    frame = codec.encode(data, threads=2)
    assert frame == codec.encode(data, threads=1)  # threads never change the bytes
    out = np.zeros(data.nbytes + 10, np.uint8)
    codec.decode(frame, out=out, threads=2)
    assert np.array_equal(out[:data.nbytes], data) and not out[data.nbytes:].any()
    with pytest.raises(ValueError):
        codec.decode(frame, out=np.empty(10, np.uint8))


def test_ratio_near_entropy_bound():
    data = int8_bell(4 << 20, sigma=40.0)
    frame = codec.encode(data)
    assert len(frame) <= codec.entropy_bound(data) / 0.997


@pytest.mark.parametrize("constant", [True, False])
def test_entropy_bound_holds_for_q8_0(constant):
    # scales constant along a row are coded as row differences, nearly free:
    # the bound must count them so, or the frame would beat its own bound
    row = 24 * 34
    data = q8_blocks(64, 24, constant)
    frame = codec.encode(data, layout="q8_0", row_size=row, chunk_size=CHUNK * 4)
    bound = codec.entropy_bound(data, "q8_0", row_size=row)
    assert bound <= len(frame)
    one_block_rows = codec.entropy_bound(data, "q8_0")  # no row to take differences in
    assert (bound < one_block_rows * 0.97) if constant else (bound == one_block_rows)
    assert one_block_rows <= len(codec.encode(data, layout="q8_0"))
    with pytest.raises(ValueError):
        codec.entropy_bound(data, "q8_0", row_size=35)


def test_bad_params():
    with pytest.raises(CodecError) as e:
        codec.encode(np.zeros(35, np.uint8), layout="q8_0")
    assert e.value.name == "PARAM"
    with pytest.raises(ValueError):
        codec.encode(b"abc", layout="q4_0")


# ---- damaged frames ------------------------------------------------------

def _frame(n=50_000, layout="bytes"):
    data = q8_blocks(n // 340, 10, False) if layout == "q8_0" else int8_bell(n)
    return data, codec.encode(data, layout=layout, row_size=340 if layout == "q8_0" else 0, chunk_size=CHUNK)


@pytest.mark.parametrize("dec", DECODERS)
def test_truncated_frames_fail(dec):
    data, frame = _frame()
    codec.set_kernel(dec)
    for cut in [0, 10, 31, 32, 40, len(frame) // 2, len(frame) - 1]:
        with pytest.raises(CodecError) as e:
            codec.decode(frame[:cut])
        assert e.value.name in ("SRC_TRUNCATED", "HEADER", "CHECKSUM")


@pytest.mark.parametrize("dec", DECODERS)
@pytest.mark.parametrize("layout", ["bytes", "q8_0"])
def test_bit_flips_fail(dec, layout):
    data, frame = _frame(layout=layout)
    codec.set_kernel(dec)
    rng = np.random.default_rng(3)
    positions = list(range(64)) + list(rng.integers(0, len(frame), 300))
    for pos in positions:
        bad = bytearray(frame)
        bad[pos] ^= 1 << int(rng.integers(0, 8))
        with pytest.raises(CodecError):
            codec.decode(bytes(bad))


def test_checksum_error_names_the_chunk():
    data, frame = _frame()
    fi = codec.info(frame)
    bad = bytearray(frame)
    bad[-5] ^= 0x40  # inside the last chunk
    with pytest.raises(CodecError) as e:
        codec.decode(bytes(bad))
    assert e.value.name == "CHECKSUM" and e.value.chunk == fi.n_chunks - 1
    with pytest.raises(CodecError):
        codec.verify(bytes(bad))
    assert codec.verify(frame) == data.nbytes


def test_oversized_header_fails():
    data, frame = _frame()
    for off, value in [(8, 1 << 60), (24, 0xFFFFFFFF), (20, 0)]:
        bad = bytearray(frame)
        width = 8 if off == 8 else 4
        bad[off:off + width] = int(value).to_bytes(width, "little")
        with pytest.raises(CodecError) as e:
            codec.decode(bytes(bad))
        assert e.value.name in ("HEADER", "CHECKSUM", "SRC_TRUNCATED")
    with pytest.raises(CodecError) as e:
        codec.info(b"XXXX" + frame[4:])
    assert e.value.name == "BAD_MAGIC"


def test_no_chunks_for_a_huge_size_fails():
    # 33 bytes: a header claiming 2^64 - 1 bytes in 0 chunks of 2 rows, one
    # stored stream, no index (ceil(rows / 2) once wrapped to 0 and passed)
    import struct
    head = struct.pack("<IBBBBQIII", codec_constants.FRAME_MAGIC, codec_constants.FORMAT_VERSION,
                       codec_constants.Layout.BYTES, 0, 1, (1 << 64) - 1, 1, 2, 0)
    body = b"\x00"
    frame = head + struct.pack("<I", codec.crc32c(body, codec.crc32c(head))) + body
    assert len(frame) == 33
    for call in (codec.info, codec.decode, codec.verify):
        with pytest.raises(CodecError) as e:
            call(frame)
        assert e.value.name == "HEADER", call.__name__


# ---- real data ----------------------------------------------------------

def test_real_q8_0_tensor(smollm2_gguf):
    from ggzip.container import GGZipReader
    from ggzip.container.gguf_io import T, tensor_nbytes
    with GGZipReader(smollm2_gguf) as reader:
        tensors = [t for t in reader.tensors.values() if t.ggml_type == T.Q8_0]
        assert tensors, "SmolLM2 carries a Q8_0 token embedding"
        t = max(tensors, key=lambda t: t.nbytes)
        raw = np.array(reader.data(t.name))          # a copy: the map closes here
    row = tensor_nbytes(t.ggml_type, t.ne[:1])
    frame = codec.encode(raw, layout="q8_0", row_size=row, threads=2)
    bound = codec.entropy_bound(raw, layout="q8_0", row_size=row)
    assert len(frame) <= bound * 1.005  # the 0.5% of the order-0 bound
    for dec in HERE:
        codec.set_kernel(dec)
        assert np.array_equal(codec.decode(frame), raw)


# ---- kernels and versions -------------------------------------------------

def default_kernel_rule():
    """The dispatcher's default (native/src/dispatch.c): the last kernel the host
    runs (kernels are listed slowest first)."""
    return HERE[-1]


def test_kernel_forced_by_environment():
    for k in HERE:
        out = subprocess.run([sys.executable, "-c", "import ggzip.codec as c; print(c.kernel())"],
                             env={**os.environ, "GGZIP_KERNEL": k}, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == k
    env = {k: v for k, v in os.environ.items() if k != "GGZIP_KERNEL"}
    out = subprocess.run([sys.executable, "-c", "import ggzip.codec as c; print(c.kernel())"],
                         env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == default_kernel_rule()
    out = subprocess.run([sys.executable, "-c", "import ggzip.codec as c; print(c.kernel(), c.forced_kernel_error())"],
                         env={**env, "GGZIP_KERNEL": "nosuch"}, capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] == default_kernel_rule() and "not built" in out.stdout


def test_missing_kernel_refused():
    missing = [k for k in ["neon", "avx512vbmi", "avx512", "avx2"] if k not in HERE]
    if not missing:
        pytest.skip("every kernel runs on this host")
    with pytest.raises(CodecError):
        codec.set_kernel(missing[0])


def test_version_mismatch_is_refused():
    from ggzip.codec import _native
    from ggzip.errors import GGZipError
    with pytest.raises(GGZipError) as e:
        _native._load(expected=(9, 9, 9))
    got = ".".join(map(str, _native.EXPECTED_VERSION))
    assert "9.9.9" in str(e.value) and got in str(e.value)


def test_crc32c_known_value():
    assert codec.crc32c(b"123456789") == 0xE3069283


# ---- the binding against the C header ----------------------------------------

def _header_values(tmp_path, exprs):
    """Values of C expressions as the compiler sees them through ggzip.h:
    {name: expression} -> {name: int}."""
    import shutil
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        pytest.skip("no C compiler (cc) to read native/include/ggzip.h with")
    include = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "native", "include")
    lines = [f'    printf("{k} %llu\\n", (unsigned long long)({v}));' for k, v in exprs.items()]
    src = tmp_path / "abi.c"
    src.write_text("#include <stddef.h>\n#include <stdio.h>\n#include \"ggzip.h\"\nint main(void)\n{\n"
                   + "\n".join(lines) + "\n    return 0;\n}\n")
    exe = tmp_path / "abi"
    subprocess.run([cc, "-std=c11", "-Wall", "-Werror", "-I", include, str(src), "-o", str(exe)],
                   check=True, capture_output=True, text=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


def test_cdef_structs_match_header(tmp_path):
    from ggzip.codec._native import ffi
    structs = ffi.list_types()[0]
    assert structs, "the cdef declares the header's structs"
    exprs, want = {}, {}
    for name in structs:
        t = ffi.typeof(name)
        if t.fields is None:   # opaque (ggz_reader): declared, never defined in the header
            continue
        exprs[f"sizeof({name})"] = f"sizeof({name})"
        want[f"sizeof({name})"] = ffi.sizeof(t)
        for field, cf in t.fields:
            exprs[f"offsetof({name},{field})"] = f"offsetof({name}, {field})"
            want[f"offsetof({name},{field})"] = cf.offset
            exprs[f"sizeof({name}.{field})"] = f"sizeof((({name} *)0)->{field})"
            want[f"sizeof({name}.{field})"] = ffi.sizeof(cf.type)
    assert _header_values(tmp_path, exprs) == want


def test_cdef_functions_match_header(tmp_path):
    # every prototype of the cdef has the header's type (an enum result passes
    # through cffi as int); a changed signature would corrupt calls silently
    import re
    from ggzip.codec._native import CDEF
    protos = re.findall(r"^(.+?)\b(ggz_\w+)\((.*)\);$", CDEF, re.M)
    assert len(protos) >= 10
    exprs = {}
    for ret, name, args in protos:
        same = f"__builtin_types_compatible_p(__typeof__(&{name}), {ret.strip()} (*)({args}))"
        as_enum = (f"__builtin_types_compatible_p(__typeof__(&{name}), ggz_error (*)({args}))"
                   if ret.strip() == "int" else "0")
        exprs[name] = f"{same} || {as_enum}"
    got = _header_values(tmp_path, exprs)
    assert [n for n, ok in got.items() if not ok] == []


def test_python_constants_match_header(tmp_path):
    from ggzip.codec._native import EXPECTED_VERSION
    C = codec_constants
    want = {"GGZ_FRAME_MAGIC": C.FRAME_MAGIC, "GGZ_FORMAT_VERSION": C.FORMAT_VERSION,
            "GGZ_FORMAT_VERSION_TRELLIS": C.FORMAT_VERSION_TRELLIS,
            "GGZ_FORMAT_VERSION_ROWS": C.FORMAT_VERSION_ROWS, "GGZ_FLAG_TRELLIS": C.FLAG_TRELLIS,
            "GGZ_FLAG_SCALE_DELTA": C.FLAG_SCALE_DELTA, "GGZ_LANES": C.LANES,
            "GGZ_TCQ_STATES": C.TCQ_STATES, "GGZ_TCQ_PROB_BITS": C.TCQ_PROB_BITS,
            "GGZ_PROB_BITS": C.PROB_BITS, "GGZ_RANS_L": C.RANS_L, "GGZ_FRAME_HEADER_SIZE": C.FRAME_HEADER_SIZE,
            "GGZ_DEFAULT_CHUNK": C.DEFAULT_CHUNK, "GGZ_MAX_STREAMS": C.MAX_STREAMS,
            "GGZ_LAYOUT_COUNT": len(C.LAYOUT_IDS), "GGZ_ERR_MAX": len(C.ERRORS),
            "GGZ_VERSION_MAJOR": EXPECTED_VERSION[0], "GGZ_VERSION_MINOR": EXPECTED_VERSION[1],
            "GGZ_VERSION_PATCH": EXPECTED_VERSION[2]}
    want.update({f"GGZ_LAYOUT_{name.upper()}": v for name, v in C.LAYOUT_IDS.items()})
    want.update({f"TCQ_NEXT_{s}_{b}": C.TCQ_NEXT[s][b] for s in range(4) for b in range(2)})
    want.update({("GGZ_OK" if e == "OK" else f"GGZ_ERR_{e}"): i for i, e in enumerate(C.ERRORS)})
    exprs = {k: k for k in want}
    exprs.update({f"TCQ_NEXT_{s}_{b}": f"((const unsigned char[4][2])GGZ_TCQ_NEXT)[{s}][{b}]"
                  for s in range(4) for b in range(2)})
    assert _header_values(tmp_path, exprs) == want


def test_layout_units_match_library():
    # the units live in the library's frame code, not in the header
    for layout, unit in codec_constants.LAYOUT_UNIT.items():
        assert codec.bound(unit, layout) > 0
        assert unit == 1 or codec.bound(unit - 1, layout) == 0


def test_trellis_frames_round_trip_and_cost_less():
    """codec.tcq_quantize gives levels on the trellis path (class = parity, the
    lanes' states replayed here from GGZ_TCQ_NEXT); their trellis frame decodes
    to the same bytes and is smaller than the same bytes coded plain by most of
    a bit per symbol; with scales that differ per block, it is version 2."""
    rng = np.random.default_rng(3)
    rows, cols = 400, 256
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    steps = np.full((rows, cols // 32), 0.05, np.float32)
    rpc = codec.rows_per_chunk(rows * cols // 32 * 34, cols // 32 * 34, 64 * 34 * 8)
    q, counts = codec.tcq_quantize(w, steps, rpc)
    assert counts.sum() == q.size
    nxt = np.array(codec_constants.TCQ_NEXT)
    st = np.zeros(32, np.int64)
    lanes = q.reshape(rows, cols // 32, 32).astype(np.int64)
    for r in range(rows):
        if r % rpc == 0:
            st[:] = 0
        for b in range(cols // 32):
            assert np.array_equal(lanes[r, b] & 1, st >> 1)
            st = nxt[st, (lanes[r, b] >> 1) & 1]
    assert np.abs(w - q * 0.05).max() <= 0.1 + 1e-6
    blocks = np.empty((rows, cols // 32, 34), np.uint8)
    blocks[:, :, :2] = np.frombuffer(np.float16(0.05).tobytes(), np.uint8)
    blocks[:, :, 2:] = lanes.astype(np.int8).view(np.uint8)
    raw = blocks.tobytes()
    row = cols // 32 * 34
    ft = codec.encode(raw, "q8_0", row, chunk_size=64 * 34 * 8, trellis=True)
    fp = codec.encode(raw, "q8_0", row, chunk_size=64 * 34 * 8)
    # one scale everywhere: coded plain (version 1 or 2) or by row steps (3)
    assert codec.info(ft).trellis and not codec.info(fp).trellis
    assert codec.info(ft).version != 1 and codec.info(fp).version != 2
    assert codec.info(ft).rows_per_chunk == rpc
    assert codec.decode(ft).tobytes() == raw
    assert len(ft) < len(fp) - 0.8 * q.size / 8
    blocks[:, :, :2] = rng.integers(0x2000, 0x2400, (rows, cols // 32), np.uint16)[..., None].view(np.uint8)
    ft = codec.encode(blocks.tobytes(), "q8_0", row, chunk_size=64 * 34 * 8, trellis=True)
    assert codec.info(ft).version == codec_constants.FORMAT_VERSION_TRELLIS
    assert codec.decode(ft).tobytes() == blocks.tobytes()
    with pytest.raises(ValueError, match="q8_0 layout only"):
        codec.encode(raw, "bytes", trellis=True)
    with pytest.raises(ValueError, match="steps of shape"):
        codec.tcq_quantize(w, steps[:, :2], rpc)


def test_row_step_scales_are_version_3():
    """Scales as convert writes them (one step a row, a few blocks with their
    own larger step) are coded by row steps (version 3): the frame decodes to
    the same bytes, through the reader's chunks and pairs too.  Scales that
    differ block by block (stock Q8_0's) stay version 1."""
    rng = np.random.default_rng(5)
    rows, bpr = 3000, 20
    blocks = np.empty((rows, bpr, 34), np.uint8)
    blocks[:, :, 2:] = np.clip(np.round(rng.laplace(0, 3, (rows, bpr, 32))), -127, 127).astype(np.int8).view(np.uint8)
    step = rng.integers(0x1800, 0x1C00, rows).astype(np.uint16)
    scales = np.repeat(step[:, None], bpr, 1)
    own = rng.random((rows, bpr)) < 0.01
    scales[own] = (scales[own] + rng.integers(1, 0x300, own.sum())).astype(np.uint16)
    blocks[:, :, :2] = scales[..., None].view(np.uint8)
    raw = blocks.tobytes()
    f = codec.encode(raw, "q8_0", bpr * 34, chunk_size=64 * 1024)
    inf = codec.info(f)
    assert inf.version == codec_constants.FORMAT_VERSION_ROWS and inf.n_chunks >= 4
    assert codec.decode(f).tobytes() == raw
    r = codec.Reader(f)
    a, b = r.pair(0)
    assert np.concatenate([a, b, r.chunk(2)]).tobytes() == raw[:3 * inf.chunk_raw_size]
    blocks[:, :, :2] = rng.integers(0x1800, 0x1C00, (rows, bpr), np.uint16)[..., None].view(np.uint8)
    g = codec.encode(blocks.tobytes(), "q8_0", bpr * 34, chunk_size=64 * 1024)
    assert codec.info(g).version == codec_constants.FORMAT_VERSION
    assert codec.decode(g).tobytes() == blocks.tobytes()


def test_trellis_with_feedback_cuts_the_output_error():
    """codec.tcq_feedback: with U = I (no feedback) it is tcq_quantize's
    Viterbi path; with the factor of a correlated input's covariance
    (feedback.Factors, lane order) its levels follow the trellis and cut the
    output error |(w - q d) x| on that input below both the trellis alone and
    rounding with feedback, at the same rate (4 bits, order-0 entropy)."""
    from ggzip.quantize.feedback import Factors, quantize_feedback
    from ggzip.quantize.q8 import symbol_entropy, trellis_bits
    rng = np.random.default_rng(5)
    rows, cols, rpc = 128, 256, 32
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    q0, c0 = codec.tcq_quantize(w, np.full((rows, cols // 32), 0.25, np.float32), rpc)
    q1, c1 = codec.tcq_feedback(w, np.full((rows, cols // 32), 0.25, np.float32), rpc,
                                np.eye(cols, dtype=np.float32))
    assert np.array_equal(q0, q1) and np.array_equal(c0, c1)
    mix = rng.standard_normal((cols, cols)) * 0.2 + np.eye(cols)
    x = rng.standard_normal((8000, cols)) @ mix           # inputs with correlated channels
    h = x.T @ x / len(x)
    fb = Factors(h)
    o = codec.lane_order(cols)
    assert o[3 * cols // 32 + 2] == 2 * 32 + 3            # lane 3, block 2

    def at_rate(f, bits=4.0):      # f(step) -> (levels, rate): the levels at `bits`
        lo, hi = -6.0, 2.0
        for _ in range(30):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(2.0 ** mid)[1] > bits else (lo, mid)
        return f(2.0 ** hi)[0], 2.0 ** hi

    def out_err(q, d):
        e = w - q * d
        return float(np.einsum("ij,jk,ik->", e, h, e))

    def tcq(d):
        q, c = codec.tcq_quantize(w, np.full((rows, cols // 32), d, np.float32), rpc)
        return q, trellis_bits(c) / w.size

    def tcq_fb(d):
        q, c = codec.tcq_feedback(w, np.full((rows, cols // 32), d, np.float32), rpc, fb.get(lanes=True))
        assert c.sum() == q.size
        return q, trellis_bits(c) / w.size

    def round_fb(d):
        q = quantize_feedback(w, np.full(rows, d, np.float32), fb.get())
        return q, symbol_entropy(q)
    errs = {name: out_err(*at_rate(f)) for name, f in
            (("trellis", tcq), ("trellis+feedback", tcq_fb), ("rounding+feedback", round_fb))}
    assert errs["trellis+feedback"] < 0.85 * min(errs["trellis"], errs["rounding+feedback"]), errs
    with pytest.raises(ValueError, match="feedback factor of shape"):
        codec.tcq_feedback(w, np.full((rows, cols // 32), 0.25, np.float32), rpc,
                           np.eye(cols - 1, dtype=np.float32))
    with pytest.raises(CodecError, match="trellis feedback"):
        codec.tcq_feedback(w, np.full((rows, cols // 32), 0.25, np.float32), rpc,
                           np.zeros((cols, cols), np.float32))
