"""A stock llama.cpp (the pinned one, unpatched: scripts/build_llama.sh --stock)
must refuse a ggzip GGUF with a clear message, never crash or run garbage."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.llama, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
STOCK = Path(os.environ.get("GGZIP_LLAMA_STOCK_DIR", ROOT / "build" / "llama-stock")) / "bin" / "llama-simple"


@pytest.fixture(scope="module")
def ggz_file(smollm2_gguf, tmp_path_factory) -> Path:
    from ggzip.constants import Keys
    from ggzip.container import GGZipReader, compress_file
    out = tmp_path_factory.mktemp("stock") / "smollm2.ggzip.gguf"
    compress_file(smollm2_gguf, out, progress=False)
    with GGZipReader(out) as r:
        names = r.value(Keys.TENSOR_NAMES, [])
    assert names, "nothing was compressed: the test would prove nothing"
    return out


def test_stock_llama_refuses_ggzip_file(ggz_file, smollm2_gguf):
    if not os.access(STOCK, os.X_OK):
        pytest.skip(f"no unpatched llama-simple at {STOCK} (scripts/build_llama.sh --stock)")
    # the stock build runs the original file: the refusal below is about the format
    ok = subprocess.run([str(STOCK), "-m", str(smollm2_gguf), "-n", "2", "Hello"],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    r = subprocess.run([str(STOCK), "-m", str(ggz_file), "-n", "2", "Hello"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode > 0, f"exit {r.returncode} (negative: killed by a signal)\n{r.stderr[-2000:]}"
    assert "wrong shape" in r.stderr or "failed to load" in r.stderr, r.stderr[-2000:]
