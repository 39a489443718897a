"""The native codec's C-level steps (scripts/test_native.sh), one test each:
the C tests natively, under ASan + UBSan and under ThreadSanitizer, the fuzzer, the NEON kernel under
qemu (two CPUs, two compilers) and the AVX2 kernel under qemu on AVX-512
hosts.  A step whose tool is missing is skipped with the script's reason,
never passed.  The fuzzer runs 20 s here (GGZIP_NATIVE_FULL=1: 60 s).  The zig
build needs zig's aarch64 musl, built once into ~/.cache/zig (a few minutes; the
Android build of tests/test_android.py, which runs first, makes it too)."""
from __future__ import annotations

import os
import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "test_native.sh"
STEPS = ["native", "sanitize", "tsan", "fuzz", "neon-a53", "neon-a76", "neon-zig", "avx2-haswell"]


@pytest.mark.parametrize("step", STEPS)
def test_native_step(step):
    args = ["bash", str(SCRIPT), "--step", step]
    if not os.environ.get("GGZIP_NATIVE_FULL"):
        args.insert(2, "--quick")
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    out = proc.stdout + proc.stderr
    m = re.search(rf"^(PASS|FAIL|SKIPPED) {re.escape(step)}\b(.*)$", proc.stdout, re.M)
    assert m, f"no result line for step {step}:\n{out}"
    result, rest = m.group(1), m.group(2).strip()
    if result == "SKIPPED":
        pytest.skip(rest.strip("()"))
    assert result == "PASS" and proc.returncode == 0, out


# ---- ggzip-bench (native/tools/ggzip_bench.c) --------------------------------------

@pytest.fixture(scope="module")
def bench_file(tmp_path_factory) -> pathlib.Path:
    """A small ggzip GGUF: I8, F16 and Q8_0 frames, several chunks each, one
    tensor of noise kept plain; alignment 64 (a general.alignment key)."""
    import gguf
    import numpy as np
    from ggzip.container import GGZipWriter
    T = gguf.GGMLQuantizationType
    rng = np.random.default_rng(14)
    w32 = rng.normal(0, 1, (96, 1024)).astype(np.float32)
    path = tmp_path_factory.mktemp("bench") / "small.ggz.gguf"
    with GGZipWriter(path, chunk_size=64 * 1024) as w:
        w.add_kv("general.alignment", 64, gguf.GGUFValueType.UINT32)
        w.add_tensor("i8", T.I8, (4096, 40), np.round(rng.normal(0, 6, (40, 4096))).clip(-127, 127).astype(np.int8))
        w.add_tensor("f16", T.F16, (1024, 96), w32.astype(np.float16))
        w.add_tensor("q8_0", T.Q8_0, (1024, 96), gguf.quants.quantize(w32, T.Q8_0))
        assert not w.add_tensor("noise", T.I8, (1 << 16,), rng.integers(0, 256, 1 << 16, dtype=np.uint8)).coded
    return path


def test_ggzip_bench_crcs_match_python(ggzip_bench, bench_file):
    """Every kernel's per-frame CRC (--tensors) and whole CRC equal the CRC32C of
    the bytes the Python package decodes; the plain tensor is skipped."""
    from ggzip import codec
    from ggzip.container import GGZipReader
    proc = subprocess.run([str(ggzip_bench), "--tensors", "--repeat", "1", str(bench_file)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert re.search(r"^.*small\.ggz\.gguf: 3 frames \(1 plain tensors skipped\), \d+ compressed bytes, "
                     r"\d+ decoded bytes", out, re.M), out
    kernels = re.findall(r"^kernel (\S+): [\d.]+ MB/s \(decoded MB/s, median of 1\) crc32c 0x([0-9a-f]{8})$", out, re.M)
    assert {k for k, _ in kernels} == set(codec.kernels()), out
    frames = re.findall(r"^(\S+) crc32c 0x([0-9a-f]{8}) (\d+)$", out, re.M)
    with GGZipReader(bench_file) as r:
        want = {n: (codec.crc32c(r.data(n)), t.nbytes) for n, t in r.tensors.items() if t.coded}
        whole = 0
        for name, _, _ in frames:   # the frames in file order
            whole = codec.crc32c(r.data(name), whole)
    assert {n: (int(c, 16), int(b)) for n, c, b in frames} == want, out
    assert all(int(c, 16) == whole for _, c in kernels), out


def test_ggzip_bench_damaged_files(ggzip_bench, bench_file, tmp_path):
    """A truncated file, and a flipped byte inside a frame: exit 1 with the file
    (and for the flip the tensor) named."""
    from ggzip.container import GGZipReader
    data = bench_file.read_bytes()
    with GGZipReader(bench_file) as r:
        t = r.tensors["f16"]
        flip_at = t.offset + t.stored // 2
        header_end = r.header.data_start
    cases = {"cut.gguf": (data[:len(data) // 2], r"cut\.gguf: tensor '\S+': truncated"),
             "cut-header.gguf": (data[:header_end // 2], r"cut-header\.gguf: truncated GGUF header"),
             "flip.gguf": (data[:flip_at] + bytes([data[flip_at] ^ 0x10]) + data[flip_at + 1:],
                           r"flip\.gguf: tensor 'f16': frame is damaged \(checksum mismatch, chunk \d+")}
    for name, (blob, msg) in cases.items():
        (tmp_path / name).write_bytes(blob)
        proc = subprocess.run([str(ggzip_bench), "--repeat", "1", str(tmp_path / name)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1 and re.search(msg, proc.stderr), (name, proc.stdout + proc.stderr)
