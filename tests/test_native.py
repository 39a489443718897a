"""The native codec's C-level steps (scripts/test_native.sh), one test each:
the C tests natively, under ASan + UBSan and under ThreadSanitizer, the fuzzer, the NEON kernel under
qemu (two CPUs, two compilers) and the AVX2 kernel under qemu on AVX-512
hosts.  A step whose tool is missing is skipped with the script's reason,
never passed.  The fuzzer runs 20 s here (GGZIP_NATIVE_FULL=1: 60 s)."""
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
    if step == "neon-zig" and not os.environ.get("GGZIP_NATIVE_FULL"):
        # the gcc build of the same kernel runs under qemu in neon-a53/neon-a76
        pytest.skip("second compiler (zig cc, musl): building zig's aarch64 libc takes ~9 min "
                    "on 2 cores; GGZIP_NATIVE_FULL=1 runs it")
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
