"""Rate allocation by output sensitivity (quantize/allocate.py): the equal-slope
rates, and the output distortion the numpy pass measures per tensor group on
tiny causal and encoder models."""
from __future__ import annotations

import numpy as np
import pytest

from ggzip.convert import GGUFModel
from ggzip.quantize import allocate as A
from tinymodels import write_tiny


def test_group_of():
    assert A.group_of("blk.12.attn_v.weight") == "attn_v.weight"
    assert A.group_of("blk.0.ffn_down.weight") == "ffn_down.weight"
    assert A.group_of("dense_2.weight") == "dense_2.weight"
    assert A.group_of("output.weight") == "output.weight"


def test_allocate_equal_slope_at_the_same_bits():
    """Unclamped groups: R_k - log2(D_k / n_k) / 2 is one constant (equal slope
    under D 2^-2R); the weighted mean rate stays; more distortion per weight
    gets more bits; the clamp and the cap hold."""
    n = {"a": 1000, "b": 3000, "c": 500, "d": 2000}
    d = {"a": 0.01, "b": 0.006, "c": 0.01, "d": 0.008}     # within the clamp
    r0 = {k: 4.0 for k in n}
    r = A.allocate(n, d, r0)
    assert sum(n[k] * r[k] for k in n) == pytest.approx(4.0 * sum(n.values()), abs=1e-6)
    lam = [r[k] - 0.5 * np.log2(d[k] / n[k]) for k in n]
    assert np.ptp(lam) < 1e-6, lam
    assert r["c"] > r["a"] > r["d"] > r["b"]
    # a group far more sensitive than the rest: held CLAMP bits above, the rest pay
    d2 = {**d, "c": 1e6}
    r2 = A.allocate(n, d2, r0)
    assert r2["c"] == pytest.approx(4.0 + A.CLAMP)
    assert sum(n[k] * r2[k] for k in n) == pytest.approx(4.0 * sum(n.values()), abs=1e-6)
    # near the cap: no group above RATE_MAX, the budget still met
    r3 = A.allocate(n, d, {k: 6.5 for k in n})
    assert max(r3.values()) <= A.RATE_MAX + 1e-9
    assert sum(n[k] * r3[k] for k in n) == pytest.approx(6.5 * sum(n.values()), abs=1e-6)
    # a group the output does not see: its lower bound
    r4 = A.allocate(n, {**d, "b": 0.0}, r0)
    assert r4["b"] == pytest.approx(4.0 - A.CLAMP)


class _WithDense:
    """A tiny gemma-embedding GGUFModel plus a sentence-transformers head
    (dense_2, dense_3), as EmbeddingGemma's GGUF has."""

    def __init__(self, model, seed=3):
        rng = np.random.default_rng(seed)
        D = int(model.kv["gemma-embedding.embedding_length"])
        self.m = model
        self.dense = {"dense_2.weight": rng.standard_normal((3 * D, D)).astype(np.float32) / np.sqrt(D),
                      "dense_3.weight": rng.standard_normal((D, 3 * D)).astype(np.float32) / np.sqrt(3 * D)}
        self.tensors = {**model.tensors, **self.dense}

    def __getattr__(self, k):
        return getattr(self.m, k)

    def float32(self, n):
        return self.dense[n] if n in self.dense else self.m.float32(n)


def _noisy(model, scale, seed=0):
    """perturbed(): each tensor plus Gaussian noise of `scale` x its rms."""
    def perturbed(name, w):
        rng = np.random.default_rng(abs(hash((name, seed))) % 2 ** 32)
        return w + scale * float(np.sqrt(np.mean(w * w))) * rng.standard_normal(w.shape).astype(np.float32)
    return perturbed


@pytest.mark.parametrize("arch", ["llama", "gemma-embedding"])
def test_output_distortion_measures_each_group(arch, tmp_path):
    """Unchanged tensors: no distortion, exactly (the streams compute what the
    reference does).  Noise on one group's tensors: that group's distortion
    grows about as the noise power (4x for twice the noise, KL and 1 - cosine
    being quadratic near zero), for block kinds, an untied head and an
    encoder's dense projections."""
    path = tmp_path / f"{arch}.gguf"
    write_tiny(arch, path)
    m = GGUFModel(path)
    if arch == "gemma-embedding":
        m = _WithDense(m)
    ids = np.random.default_rng(1).integers(0, 200, 160)
    groups: dict[str, list[str]] = {}
    for n in m.tensors:
        if n.endswith(".weight") and ("blk." in n and "norm" not in n or n in (
                "output.weight", "dense_2.weight", "dense_3.weight")):
            groups.setdefault(A.group_of(n), []).append(n)
    assert ("output.weight" in groups) == (arch == "llama")
    assert ("dense_2.weight" in groups) == (arch == "gemma-embedding")
    zero = A.output_distortion(m, ids, groups, lambda n, w: w, n_ctx=64)
    assert set(zero) == set(groups)
    assert max(zero.values()) < 1e-9, zero
    d1 = A.output_distortion(m, ids, groups, _noisy(m, 0.01), n_ctx=64)
    d2 = A.output_distortion(m, ids, groups, _noisy(m, 0.02), n_ctx=64)
    for g in groups:
        assert d1[g] > 1e-8, (g, d1)
        assert 3.0 < d2[g] / d1[g] < 5.0, (g, d1[g], d2[g])
    with pytest.raises(ValueError, match="token_embd.weight"):
        A.output_distortion(m, ids, {"token_embd.weight": ["token_embd.weight"]}, lambda n, w: w)
