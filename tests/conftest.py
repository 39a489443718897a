"""Shared fixtures: the real models of the project, installed by `ggzip fetch`
(cached under ~/.cache/ggzip/models; scripts/setup.sh fetches the small ones)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# the patched x86 llama.cpp of scripts/build_llama.sh
BIN = Path(os.environ.get("GGZIP_LLAMA_DIR", ROOT / "build" / "llama")) / "bin"


def llama_tool(name: str) -> Path:
    """A tool of the patched build, or a visible skip when it is not built."""
    path = BIN / name
    if not os.access(path, os.X_OK):
        pytest.skip(f"patched {name} not built in {BIN} (run scripts/build_llama.sh {name})")
    return path


def fetch_or_skip(name: str) -> Path:
    """The fetched model, or a visible skip when it cannot be had."""
    from ggzip.errors import GGZipError
    from ggzip.fetch import fetch
    try:
        return fetch(name, quiet=True)
    except GGZipError as e:  # no network and not cached: say so, visibly
        pytest.skip(f"model {name} unavailable: {e}")


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct, Q4_1 with a Q8_0 token embedding (llama)."""
    return fetch_or_skip("smollm2")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 folder (config.json, vocab.txt, model.safetensors), true F32."""
    return fetch_or_skip("minilm")


@pytest.fixture(scope="session")
def gemma3_gguf() -> Path:
    """Gemma-3-270M, Q4_K_M with Q8_0/Q5_0/Q6_K tensors (gemma3)."""
    return fetch_or_skip("gemma3-270m")


@pytest.fixture(scope="session")
def smollm2_q8_0(tmp_path_factory, smollm2_gguf) -> Path:
    """SmolLM2 re-quantized to Q8_0 by the patched llama-quantize."""
    out = tmp_path_factory.mktemp("smollm2") / "smollm2.Q8_0.gguf"
    r = subprocess.run([str(llama_tool("llama-quantize")), "--allow-requantize", str(smollm2_gguf), str(out), "Q8_0", "2"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


@pytest.fixture(scope="session")
def smollm2_ggz(smollm2_q8_0) -> Path:
    """The lossless ggzip GGUF of smollm2_q8_0 (every tensor rANS-coded)."""
    from ggzip.container import compress_file
    out = smollm2_q8_0.with_name("smollm2.Q8_0.ggzip.gguf")
    compress_file(smollm2_q8_0, out, progress=False)
    return out


@pytest.fixture(scope="session")
def ggzip_bench() -> Path:
    """ggzip-bench (native/tools/ggzip_bench.c) built for this host: a target outside `all`."""
    if not shutil.which("cmake") or not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("cmake or a C compiler not found")
    d = ROOT / "build" / "native-bench"
    for cmd in (["cmake", "-S", "native", "-B", str(d), "-DCMAKE_BUILD_TYPE=Release"],
                ["cmake", "--build", str(d), "-j", "2", "--target", "ggzip-bench"]):
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return d / "ggzip-bench"
