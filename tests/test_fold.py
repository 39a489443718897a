"""The fold of 1/s into the op before (quantize/fold.py), end to end through the
patched llama.cpp for every architecture it is claimed for: `ggzip convert
--keep-float` (rescaled and folded, not quantized) against the unfolded model,
logits for the decoders, sentence embeddings for gemma-embedding.

Two checks.  Bit for bit: an imatrix that makes every s a power of two (1/8 to
8; tinymodels.write_pow2_imatrix) makes every folded value exact in float, so
the folded model must give exactly the logits (embeddings) of the unfolded one;
any fold that is not exact moves them by factors of 2.  This runs on tiny
random llama / qwen2 / qwen3 / gemma3 GGUFs (tests/tinymodels.py: GQA, untied
output head, q/k norms, biases, Gemma's post-norms) and on the real SmolLM2-135M
(llama), Gemma-3-270M (gemma3; tied heads) and EmbeddingGemma-300M.
Arbitrary s (statistics over 4 decades, s spanning 100x) on the tiny models,
within a tolerance:

Tolerance.  Both models run with F32 weights and a F32 KV cache, without flash
attention (whose CPU kernel accumulates V in F16), so the one difference is the
order and scale of F32 roundings: a dot product of K terms is off by about
sqrt(K) 2^-24 of its scale (4e-6 at K = 2048), and a dozen such products feed
each logit through the layers.  Measured: 5e-7 to 2e-6 of the largest logit on
the tiny models; TOL = 1e-4 leaves 50x room and is 1000x below what one skipped
fold does (checked below on every tiny arch, each time another kind of fold).
A deep real model amplifies those roundings more (Gemma-3-270M, arbitrary s:
2.3e-4, while its power-of-two run is bit for bit): hence the bit-for-bit check
there.  llama.cpp's default F16
cache rounds V / s where the unfolded model rounds V: relative error 2^-11 either
way, so that case is held to the F16 noise of the unfolded model itself."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import gguf
from ggzip.cli import main as ggzip_main
from ggzip.constants import Keys
from ggzip.container import GGZipReader, decompress_file, is_ggzip
from ggzip.convert import GGUFModel, convert
from ggzip.errors import GGZipError
from ggzip.quantize import load_imatrix, plan_rescale

from tinymodels import (HEAD_DIM, TINY_ARCHS, patched_llama_cpp, rewrite_gguf, write_dequantized,
                        write_pow2_imatrix, write_random_imatrix, write_tiny)

ROOT = Path(__file__).resolve().parent.parent
TOL = 1e-4          # of max |logit|, F32 weights and cache (module docstring)
TEXT = ("The history of the city begins with a small village on the river. Over the years "
        "the people built houses, a market and a school, and the village grew into a town. "
        "Merchants came from the north and the south to trade grain, wine and cloth.")
SENTENCES = ["The village grew into a town on the river.",
             "Merchants traded grain, wine and cloth.",
             "A careful engineer repaired old radios in her shop near the harbour."]
F32, F16, Q8_0 = (int(t) for t in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16,
                                   gguf.GGMLQuantizationType.Q8_0))


def logits(path: Path, cache: str = "f32") -> np.ndarray:
    """Logits of every position of TEXT's first 64 tokens, by llama.cpp.
    cache: "f32" (F32 K and V), "f16" (llama.cpp's default), "q8v" (F16 K,
    Q8_0 V, which needs flash attention)."""
    llama_cpp = patched_llama_cpp()
    kv = {"f32": dict(type_k=F32, type_v=F32), "f16": dict(type_k=F16, type_v=F16),
          "q8v": dict(type_k=F16, type_v=Q8_0, flash_attn=True)}[cache]
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_batch=256, logits_all=True,
                          n_threads=2, verbose=False, **kv)
    toks = llm.tokenize(TEXT.encode())[:64]
    assert len(toks) >= 32
    llm.eval(toks)
    out = np.array(llm.scores[:len(toks)], np.float64)
    llm.close()
    return out


def embeddings(path: Path) -> np.ndarray:
    """Mean-pooled embedding of each of SENTENCES, by llama.cpp, F32 cache."""
    llama_cpp = patched_llama_cpp()
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_batch=256, embedding=True,
                          pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN, n_threads=2,
                          verbose=False, type_k=F32, type_v=F32)
    out = np.array(llm.embed(SENTENCES), np.float64)
    llm.close()
    return out


def rel(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a - b).max() / np.abs(b).max())


def cli(*args) -> None:
    assert ggzip_main(["convert", *map(str, args), "-q"]) == 0


def tensors(path: Path) -> dict:
    """Every tensor of a plain GGUF or a ggzip GGUF, as float32 arrays."""
    if is_ggzip(path):
        plain = path.with_name(path.stem + ".plain.gguf")
        if not plain.exists():
            decompress_file(path, plain, progress=False)
        path = plain
    m = GGUFModel(path)
    return {n: m.float32(n) for n in m.tensors}


def fold_flags(path: Path) -> dict:
    with GGZipReader(path) as r:
        return {k: r.value(k) for k in (Keys.FOLD_OUTPUT_NORM, Keys.FOLD_ATTN_V)}


# ---- tiny random models: llama, qwen2, qwen3, gemma3 ----------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """arch -> (unfolded F32 GGUF, its random imatrix, folded --keep-float ggzip
    GGUF, the same folded with power-of-two s)."""
    d = tmp_path_factory.mktemp("tiny")
    made = {}

    def get(arch):
        if arch not in made:
            src, im, out = d / f"{arch}.gguf", d / f"{arch}.imatrix.gguf", d / f"{arch}.folded.gguf"
            im2, out2 = d / f"{arch}.pow2.imatrix.gguf", d / f"{arch}.pow2.gguf"
            shapes = {n: a.shape for n, a in write_tiny(arch, src).items()}
            write_random_imatrix(im, shapes)
            write_pow2_imatrix(im2, shapes, HEAD_DIM)
            cli(src, out, "--keep-float", "--imatrix", im, "--alpha", "0.5")
            cli(src, out2, "--keep-float", "--imatrix", im2, "--alpha", "0.5")
            made[arch] = src, im, out, out2
        return made[arch]
    return get


# one fold of each kind left out, per arch: the comparison must see it
SKIPPED = {"llama": "blk.1.attn_v.weight",        # V rows / s (attn_output still * s)
           "qwen2": "blk.0.attn_v.bias",          # V bias / s
           "qwen3": "output_norm.weight",         # output_norm / s (output still * s)
           "gemma3": "blk.0.ffn_up.weight"}       # ffn_up rows / s (ffn_down still * s)


@pytest.mark.llama
@pytest.mark.slow
@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_fold_is_exact_through_llama_cpp(arch, tiny, tmp_path):
    src, _, folded, pow2 = tiny(arch)
    assert fold_flags(folded) == {Keys.FOLD_OUTPUT_NORM: True, Keys.FOLD_ATTN_V: True}
    w0, w1 = tensors(src), tensors(folded)
    assert set(w0) == set(w1)
    # every kind of fold was done, with s far from 1
    for name in ("output_norm.weight", "output.weight", "blk.0.attn_norm.weight",
                 "blk.1.ffn_norm.weight", "blk.0.attn_v.weight", "blk.1.ffn_up.weight",
                 "blk.1.ffn_down.weight", "blk.0.attn_output.weight"):
        ratio = np.abs(w1[name] / np.where(w0[name] == 0, 1, w0[name]))
        assert ratio.max() / ratio.min() > 10, name
    for name in w0:          # norms that read outputs, not inputs, are untouched
        if "q_norm" in name or "k_norm" in name or "post_" in name or "token_embd" in name:
            np.testing.assert_array_equal(w0[name], w1[name])
    ref = logits(src)
    err = rel(logits(folded), ref)
    assert err < TOL, f"{arch}: folded logits off by {err:.2e} of max |logit|"
    w2 = tensors(pow2)
    s = w2["blk.0.attn_norm.weight"] / w0["blk.0.attn_norm.weight"]
    assert set(np.log2(s).tolist()) == set(range(-3, 4))
    exact = rel(logits(pow2), ref)
    assert exact == 0, f"{arch}: power-of-two fold moves logits by {exact:.2e}"
    # the check can fail: the same file with one fold left out is far off
    name = SKIPPED[arch]
    plain_folded = folded.with_name(folded.stem + ".plain.gguf")
    broken = tmp_path / "broken.gguf"
    rewrite_gguf(plain_folded, broken, {name: w0[name]})
    bad = rel(logits(broken), ref)
    assert bad > 100 * TOL, f"{arch}: {name} left unfolded moves logits by only {bad:.2e}"


@pytest.mark.llama
@pytest.mark.slow
def test_kv_cache_types(tiny, tmp_path):
    """llama.cpp's default F16 cache: folded within the F16 noise of the unfolded
    model.  A Q8_0 V cache rounds V / s, not V: the fold moves the logits more than
    F16 does, and --no-fold v gives back the unfolded model's Q8_0 logits."""
    src, im, folded, _ = tiny("qwen3")
    nofold_v = tmp_path / "nofold-v.gguf"
    cli(src, nofold_v, "--keep-float", "--imatrix", im, "--alpha", "0.5", "--no-fold", "v")
    assert fold_flags(nofold_v) == {Keys.FOLD_OUTPUT_NORM: True, Keys.FOLD_ATTN_V: False}
    ref32 = logits(src)
    floor = rel(logits(src, "f16"), ref32)          # what F16 rounding alone does
    f16 = rel(logits(folded, "f16"), logits(src, "f16"))
    assert f16 < 4 * floor + TOL, (f16, floor)
    q8 = logits(src, "q8v")
    q8_folded = rel(logits(folded, "q8v"), q8)
    q8_nofold = rel(logits(nofold_v, "q8v"), q8)
    assert q8_nofold < q8_folded / 4 and q8_nofold < 4 * floor + TOL, (q8_nofold, q8_folded)


@pytest.mark.llama
@pytest.mark.slow
def test_no_fold_output_keeps_decoder_embeddings(tiny, tmp_path):
    """llama-embedding's state of a decoder is output_norm's output: --no-fold
    output keeps it; folded, llama.cpp refuses it (ggzip.fold.output_norm) or it
    is h / s, not h."""
    src, im, folded, _ = tiny("llama")
    keep = tmp_path / "nofold-output.gguf"
    cli(src, keep, "--keep-float", "--imatrix", im, "--alpha", "0.5", "--no-fold", "output")
    assert fold_flags(keep) == {Keys.FOLD_OUTPUT_NORM: False, Keys.FOLD_ATTN_V: True}
    ref = embeddings(src)
    assert rel(embeddings(keep), ref) < TOL
    try:
        moved = rel(embeddings(folded), ref)
    except (ValueError, RuntimeError, GGZipError):
        return      # refused, as the patched llama.cpp does for such a model
    assert moved > 100 * TOL


def test_no_fold_leaves_those_tensors_and_still_converts(tiny, tmp_path, capsys):
    src, im, _, _ = tiny("qwen2")
    w0 = tensors(src)
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    cli(src, a, "--keep-float", "--imatrix", im, "--alpha", "0.5", "--no-fold", "output",
        "--no-fold", "v")
    cli(src, b, "--keep-float", "--imatrix", im, "--alpha", "0.5", "--no-fold", "v,output")
    wa, wb = tensors(a), tensors(b)
    for name in wa:
        np.testing.assert_array_equal(wa[name], wb[name])
    off = {Keys.FOLD_OUTPUT_NORM: False, Keys.FOLD_ATTN_V: False}
    assert fold_flags(a) == fold_flags(b) == off
    # the consumers of the folds left out keep their input scale; V keeps its
    # rows (its columns still take attn_norm's s, like attn_q's)
    for il in (0, 1):
        p = f"blk.{il}."
        for name in ("attn_output.weight", "attn_v.bias"):
            np.testing.assert_array_equal(wa[p + name], w0[p + name])
        col_v = wa[p + "attn_v.weight"] / w0[p + "attn_v.weight"]
        col_q = wa[p + "attn_q.weight"] / w0[p + "attn_q.weight"]
        np.testing.assert_allclose(col_v, np.broadcast_to(col_q[:1], col_v.shape), rtol=1e-5)
        assert np.ptp(col_q[0]) > 1
    for name in ("output.weight", "output_norm.weight"):
        np.testing.assert_array_equal(wa[name], w0[name])
    # the rest is folded as before
    assert np.abs(wa["blk.0.ffn_down.weight"] - w0["blk.0.ffn_down.weight"]).max() > 0.01
    # quantized and rANS-coded too, keys carried
    q = tmp_path / "q.gguf"
    cli(src, q, "--imatrix", im, "--target-bpw", "5", "--no-fold", "output,v")
    assert fold_flags(q) == off and GGZipReader(q).tensors
    # converting a folded file again keeps what it records, even with --no-fold
    again = tmp_path / "again.gguf"
    convert(tiny("qwen2")[2], again, imatrix=im, alpha=0.5, keep_float=True,
            no_fold=("output", "v"), progress=False)
    assert fold_flags(again) == {Keys.FOLD_OUTPUT_NORM: True, Keys.FOLD_ATTN_V: True}
    # without statistics nothing is rescaled (alpha 0): nothing recorded
    none = tmp_path / "none.gguf"
    cli(src, none, "--keep-float")
    assert fold_flags(none) == off
    # bad names: CLI and API
    with pytest.raises(SystemExit):
        ggzip_main(["convert", str(src), str(none), "--no-fold", "output,k"])
    assert "expected a comma list of output, v" in capsys.readouterr().err
    with pytest.raises(GGZipError, match="--no-fold q: unknown fold"):
        plan_rescale("qwen2", {n: x.shape for n, x in w0.items()}, GGUFModel(src).kv,
                     w0.__getitem__, load_imatrix(im), 0.5, no_fold=("q",))


# ---- real models: Gemma-3-270M, EmbeddingGemma-300M -----------------------------

def pow2_imatrix(model: Path, out: Path) -> Path:
    """write_pow2_imatrix for the tensors of a GGUF."""
    with GGZipReader(model) as r:
        arch = r.value("general.architecture")
        hd = r.value(f"{arch}.attention.key_length") or \
            r.value(f"{arch}.embedding_length") // r.value(f"{arch}.attention.head_count")
        write_pow2_imatrix(out, {n: t.shape for n, t in r.tensors.items()}, int(hd))
    return out


@pytest.mark.llama
@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2", "gemma3-270m"])
def test_real_decoder_fold_is_exact(name, tmp_path):
    """SmolLM2-135M (llama) and Gemma-3-270M (gemma3; its q/k norms, post-norms
    and sqrt(n_embd) input scale), both dequantized to F32, both with a tied head
    (so no output fold): attn_norm, ffn_norm, V and ffn_up folds, bit for bit."""
    from conftest import fetch_or_skip
    patched_llama_cpp()
    src = fetch_or_skip(name)
    orig, folded = tmp_path / "orig.gguf", tmp_path / "folded.gguf"
    write_dequantized(src, orig)
    im = pow2_imatrix(src, tmp_path / "imatrix.gguf")
    cli(src, folded, "--keep-float", "--imatrix", im, "--alpha", "0.5")
    assert fold_flags(folded) == {Keys.FOLD_OUTPUT_NORM: False, Keys.FOLD_ATTN_V: True}
    with GGZipReader(folded) as r, GGZipReader(orig) as r0:
        a, b = r.array("blk.3.ffn_norm.weight"), r0.array("blk.3.ffn_norm.weight")
    ratio = a[b != 0] / b[b != 0]            # Gemma-3-270M has a norm weight of 0
    assert set(np.log2(ratio).tolist()) == set(range(-3, 4))
    err = rel(logits(folded), logits(orig))
    assert err == 0, f"{name}: folded logits off by {err:.2e} of max |logit|"


@pytest.mark.llama
@pytest.mark.slow
def test_embeddinggemma_fold_is_exact(gemma3_gguf, tmp_path):
    """EmbeddingGemma-300M from its true F32 safetensors (written as a GGUF the way
    scripts/bench_rd.py does, with the 2_Dense/3_Dense head that reads
    output_norm's output): no output head, so no output fold; embeddings of a few
    sentences through llama.cpp, bit for bit."""
    from conftest import fetch_or_skip
    patched_llama_cpp()
    folder = fetch_or_skip("embeddinggemma-300m")
    if (folder / "model_download").is_dir():
        folder = folder / "model_download"
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_rd import write_embeddinggemma_f32
    f32, folded = tmp_path / "f32.gguf", tmp_path / "folded.gguf"
    write_embeddinggemma_f32(folder, gemma3_gguf, f32)
    im = pow2_imatrix(f32, tmp_path / "imatrix.gguf")
    cli(f32, folded, "--keep-float", "--imatrix", im, "--alpha", "0.5")
    assert fold_flags(folded) == {Keys.FOLD_OUTPUT_NORM: False, Keys.FOLD_ATTN_V: True}
    err = rel(embeddings(folded), embeddings(f32))
    assert err == 0, f"embeddinggemma: folded embeddings off by {err:.2e}"


def test_output_fold_skipped_beside_a_dense_head(tiny):
    """A sentence-transformers dense_2 projection reads output_norm's output too:
    folding output_norm into the head alone would change it."""
    src, im, _, _ = tiny("gemma3")
    m = GGUFModel(src)
    shapes = {n: m.shape(n) for n in m.tensors}
    plan = plan_rescale("gemma3", shapes, m.kv, m.float32, load_imatrix(im), 0.5)
    assert plan.folded["output"] and "output.weight" in plan.cols
    shapes["dense_2.weight"] = (3 * shapes["output_norm.weight"][0], shapes["output_norm.weight"][0])
    plan = plan_rescale("gemma3", shapes, m.kv, m.float32, load_imatrix(im), 0.5)
    assert not plan.folded["output"] and plan.folded["v"]
    assert "output_norm.weight" not in plan.divide and "output.weight" not in plan.cols
