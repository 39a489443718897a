"""Activation sparsity in the patched llama.cpp (patch 0010, native/src/sparse*.c),
on a real SmolLM2 converted with --sparsity/--attn-sparsity.

The sparse path runs for one token at a time (n_batch=1); a batch takes the
dense path over the same (transposed) weights.  So with every threshold 0 the
two must give the same logits up to summation order, and the environment
variable GGZIP_DENSE=1 must give the dense logits for one token too.  The C
kernels themselves are checked against a double reference on random masks by
native/tests/test_codec.c (scalar, AVX2 here, NEON under qemu in
test_native.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import llama_tool

ROOT = Path(__file__).resolve().parent.parent
TEXT = ROOT / "tests" / "data" / "declaration.txt"


def _llama_cpp():
    from ggzip.errors import GGZipError
    from ggzip.run.llama import check_patched_llama_cpp
    try:
        return check_patched_llama_cpp()[0]
    except GGZipError as e:
        pytest.skip(str(e))


def _rewrite(src: Path, out: Path, tensors: dict | None = None, drop_tensors=(), kv: dict | None = None) -> Path:
    """SRC (a plain GGUF) written again at OUT: some tensors replaced
    ({name: array of the same type}) or left out, some string-array keys
    replaced ({key: [str]})."""
    import gguf
    from ggzip.container import GGZipReader, GGZipWriter
    from ggzip.container.gguf_io import VT
    tensors, kv = tensors or {}, kv or {}
    with GGZipReader(src) as r:
        w = GGZipWriter(out, plain=True)
        try:
            for k, v in r.header.kvs.items():
                if k in kv:
                    w.add_kv(k, kv[k], VT.ARRAY, VT.STRING)
                else:
                    w.add_raw_kv(k, r.header.raw(v.start, v.end))
            for name, t in r.tensors.items():
                if name in drop_tensors:
                    continue
                data = tensors.get(name, r.array(name))
                w.add_tensor(name, gguf.GGMLQuantizationType(t.ggml_type), t.ne, np.ascontiguousarray(data))
            w.close()
        except BaseException:
            w.abort()
            raise
    return out


@pytest.fixture(scope="module")
def sparse(tmp_path_factory, smollm2_gguf) -> Path:
    """SmolLM2 at P = 0.5 (FFN and attention), plain Q8_0 (rANS coding is
    covered elsewhere; plain keeps the fixture at ~25 s)."""
    from ggzip.convert import convert
    out = tmp_path_factory.mktemp("sparse") / "smollm2-sp50.gguf"
    convert(smollm2_gguf, out, calib_text=TEXT, sparsity=0.5, attn_sparsity=0.5, plain=True, progress=False)
    return out


@pytest.fixture(scope="module")
def zero(sparse) -> Path:
    """The same file with every threshold 0: the sparse path skips only exact zeros."""
    from ggzip.container import GGZipReader
    with GGZipReader(sparse) as r:
        thr = {n: np.zeros_like(r.array(n)) for n in r.tensors if n.endswith(".sparse_thr")}
    assert len(thr) == 3 * 30
    return _rewrite(sparse, sparse.with_name("smollm2-sp0.gguf"), tensors=thr)


# logits in a child process: GGZIP_DENSE is read once per process
_CHILD = r"""
import json, sys, numpy as np, llama_cpp
path, n_batch, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
llm = llama_cpp.Llama(path, n_ctx=256, n_batch=n_batch, n_ubatch=n_batch, n_threads=2, logits_all=True, verbose=False, seed=0)
toks = llm.tokenize(open(sys.argv[4]).read()[:300].encode())[:48]
llm.eval(toks)
np.save(out, np.array(llm.scores[: len(toks)], dtype=np.float32))
"""


def _logits(model: Path, n_batch: int, tmp_path: Path, dense: bool = False) -> np.ndarray:
    _llama_cpp()
    out = tmp_path / f"logits-{model.stem}-{n_batch}-{int(dense)}.npy"
    env = dict(os.environ)
    env.pop("GGZIP_DENSE", None)
    if dense:
        env["GGZIP_DENSE"] = "1"
    r = subprocess.run([sys.executable, "-c", _CHILD, str(model), str(n_batch), str(out), str(TEXT)],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    a = np.load(out)
    assert a.shape[0] == 48 and np.isfinite(a).all()
    return a


def _kl(ref: np.ndarray, other: np.ndarray) -> float:
    """Mean over tokens of KL(softmax(ref) || softmax(other)), in nats."""
    def logp(z):
        z = z.astype(np.float64) - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))
    lr = logp(ref)
    return float((np.exp(lr) * (lr - logp(other))).sum(1).mean())


def test_zero_thresholds_give_the_dense_logits(zero, tmp_path):
    # One token at a time with every threshold 0: the sparse kernels (the up
    # rows through ggzip's int8 dot, down/q/o as sums of x_k * row_k) with
    # nothing to skip, against GGZIP_DENSE=1 (ggml's up product).  Not
    # bit-identical: ggml keeps the activation's Q8_0 scale in f16 and sums in
    # another order.  The bound: llama.cpp's own difference between one token
    # at a time and a batch of 64 on the same file (measured: KL 0.0032 for
    # this test, 0.0028 for that one; a plain Q8_0 SmolLM2 shows 0.008).
    sparse_path = _logits(zero, 1, tmp_path)
    dense = _logits(zero, 1, tmp_path, dense=True)
    batch = _logits(zero, 64, tmp_path, dense=True)
    kl, kl_batch = _kl(dense, sparse_path), _kl(dense, batch)
    assert kl < 0.01 and kl < 3 * kl_batch, (kl, kl_batch)
    assert (dense.argmax(1) == sparse_path.argmax(1)).mean() >= 0.95


def test_ggzip_dense_turns_the_thresholds_off(sparse, zero, tmp_path):
    on = _logits(sparse, 1, tmp_path)
    off = _logits(sparse, 1, tmp_path, dense=True)
    ref = _logits(zero, 1, tmp_path, dense=True)
    # GGZIP_DENSE: the file with thresholds computes what the file without computes
    assert np.array_equal(off, ref)
    # the thresholds act: at P = 0.5 (FFN and attention) this 135M model moves far
    # (measured KL 1.5 nats; bench_sparse.py has the curve), the dense run does not
    assert _kl(off, on) > 0.05


def test_sparse_model_generates_in_llama_cpp_python(sparse):
    llama_cpp = _llama_cpp()
    llm = llama_cpp.Llama(str(sparse), n_ctx=128, n_threads=2, verbose=False, seed=0)
    text = llm.create_completion("The capital of France is", max_tokens=8, temperature=0)["choices"][0]["text"]
    llm.close()
    assert len(text.strip()) > 0


def test_the_loader_says_what_it_found(sparse):
    r = subprocess.run([str(llama_tool("llama-cli")), "-m", str(sparse), "-p", "Hi", "-n", "4", "-st", "-t", "2",
                        "--temp", "0", "--no-warmup", "--simple-io", "-v"], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-2000:]
    assert "ggzip: activation sparsity, ffn 0.50, attn 0.50 (90 weights stored transposed)" in log


def test_perplexity_one_token_at_a_time(sparse):
    # llama-perplexity -b 1 (the sparse path for every token; bench_sparse.py's
    # quality measure) asks no output of the first half of each chunk: the
    # last layer then holds no token at all, which the sparse products must
    # pass through as an empty batch
    r = subprocess.run([str(llama_tool("llama-perplexity")), "-m", str(sparse), "-f", str(TEXT), "-c", "128",
                        "-b", "1", "-ub", "1", "--chunks", "1", "-t", "2"],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-2000:]
    import re
    m = re.search(r"Final estimate: PPL = ([0-9.]+)", log)
    assert m and 1.0 < float(m.group(1)) < 1000.0, log[-1000:]


@pytest.mark.parametrize("damage", ["no-transposed-key", "missing-threshold", "unknown-name"])
def test_inconsistent_files_fail_clearly(sparse, tmp_path, damage):
    from ggzip.container import GGZipReader
    with GGZipReader(sparse) as r:
        names = [str(t) for t in r.tensors if t.endswith(("ffn_down.weight", "attn_q.weight", "attn_output.weight"))]
    if damage == "no-transposed-key":
        # every transposed weight then has the wrong shape for stock llama.cpp's loader
        bad = _rewrite(sparse, tmp_path / "bad.gguf", kv={"ggzip.sparse.transposed": ["blk.0.attn_q.weight"]})
        want = "tensor 'blk.0.ffn_down.weight' has wrong shape"
    elif damage == "missing-threshold":
        bad = _rewrite(sparse, tmp_path / "bad.gguf", drop_tensors={"blk.3.ffn_up.sparse_thr"})
        want = "tensor 'blk.3.ffn_down.weight' is for activation sparsity but its layer's ffn_up.sparse_thr is missing"
    else:
        bad = _rewrite(sparse, tmp_path / "bad.gguf", kv={"ggzip.sparse.transposed": names + ["blk.99.ffn_down.weight"]})
        want = "ggzip.sparse.transposed names tensor 'blk.99.ffn_down.weight', which the file does not hold"
    r = subprocess.run([str(llama_tool("llama-cli")), "-m", str(bad), "-p", "Hi", "-n", "1", "-st", "--simple-io"],
                       stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert want in r.stdout + r.stderr, (r.stdout + r.stderr)[-2000:]
    assert str(bad) in r.stdout + r.stderr or damage == "no-transposed-key"
