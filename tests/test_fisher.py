"""The output-sensitivity pass (quantize/fisher.py): its backward through
calibrate's graph against finite differences on every arch the graph knows, and
the row factors convert --fisher derives from it."""
from __future__ import annotations

import numpy as np
import pytest

from ggzip.convert import GGUFModel
from ggzip.quantize import fisher
from ggzip.quantize.calibrate import _Graph
from tinymodels import write_tiny

ARCHS = ("llama", "qwen2", "qwen3", "gemma3", "gemma-embedding")


class _Float64:
    """A GGUFModel whose float32() gives float64 (so the forward runs in double
    precision and finite differences resolve 1e-5), plus DELTA on one tensor."""

    def __init__(self, model, name=None, delta=None):
        self.m, self.name, self.delta = model, name, delta

    def __getattr__(self, k):
        return getattr(self.m, k)

    def float32(self, n):
        a = self.m.float32(n).astype(np.float64)
        return a + self.delta if n == self.name else a


def _final(model, ids):
    G = _Graph(model)
    xs = G.embed(G.chunks(ids, 64))
    for il in range(G.L):
        W = G.weights(il)
        xs = [G.layer(il, W, x) for x in xs]
    return G, xs


@pytest.mark.parametrize("arch", ARCHS)
def test_backward_matches_finite_differences(arch, tmp_path):
    """For L = sum v . rms(x_final, output_norm), the gradients _layer_back gives
    every block matrix's output (dy, turned into dL/dW = dy^T x with the input x
    the forward shows) match central differences of L along a random direction
    of that matrix, to 1e-3 relative: rope's transpose, attention with GQA and
    masks (causal, sliding, the encoder's symmetric window), per-head Q/K norms,
    qwen2's biases and gemma's post-norms all go back correctly."""
    path = tmp_path / f"{arch}.gguf"
    write_tiny(arch, path)
    m = _Float64(GGUFModel(path))
    ids = np.random.default_rng(1).integers(0, 200, 100)
    G, xs = _final(m, ids)
    assert len(xs) == 2             # two chunks of 64 and 36 tokens
    g_out = m.float32("output_norm.weight")
    rng = np.random.default_rng(5)
    V = [rng.standard_normal((1,) + x.shape) for x in xs]
    inputs, cur = [], G.embed(G.chunks(ids, 64))
    for il in range(G.L):
        inputs.append(cur)
        W = G.weights(il)
        cur = [G.layer(il, W, x) for x in cur]
    ds = [fisher._rms_back(x, g_out, v, G.eps) for x, v in zip(xs, V)]
    dW: dict = {}
    for il in reversed(range(G.L)):
        W = G.weights(il)
        for ci, x in enumerate(inputs[il]):
            c, seen = {}, {}

            def acc(names, v):
                for n in names:
                    seen[n] = v

            def on_grad(n, dy):
                dW[n] = dW.get(n, 0) + dy[0].T @ seen[n]
            G.layer(il, W, x, acc=acc, cache=c)
            ds[ci] = fisher._layer_back(G, il, W, c, ds[ci], on_grad)

    def loss(model):
        _, out = _final(model, ids)
        return sum(float(np.sum(v[0] * G.rms(x, g_out))) for x, v in zip(out, V))
    names = [f"blk.{il}.{k}.weight" for il in range(G.L) for k in fisher.MATRICES]
    assert set(names) <= set(dW)
    for n in names:
        D = np.random.default_rng(2).standard_normal(m.shape(n))
        eps = 1e-4
        fd = (loss(_Float64(m.m, n, eps * D)) - loss(_Float64(m.m, n, -eps * D))) / (2 * eps)
        an = float(np.sum(dW[n] * D))
        assert abs(fd - an) <= 1e-3 * abs(fd) + 1e-9, (n, fd, an)


@pytest.mark.parametrize("arch", ("qwen3", "gemma-embedding"))
def test_row_fisher_covers_every_matrix(arch, tmp_path):
    """row_fisher gives one positive, finite weight per output row of every block
    matrix, the same for the same seed, another for another seed (sampled)."""
    path = tmp_path / f"{arch}.gguf"
    write_tiny(arch, path)
    m = GGUFModel(path)
    ids = np.random.default_rng(1).integers(0, 200, 150)
    a = fisher.row_fisher(m, ids, n_ctx=64)
    b = fisher.row_fisher(m, ids, n_ctx=64)
    c = fisher.row_fisher(m, ids, n_ctx=64, seed=1)
    names = {f"blk.{il}.{k}.weight" for il in range(2) for k in fisher.MATRICES}
    assert set(a) == names
    for n in names:
        assert a[n].shape == (m.shape(n)[0],)
        assert np.all(np.isfinite(a[n])) and np.all(a[n] > 0)
        assert np.array_equal(a[n], b[n])
    assert any(not np.allclose(a[n], c[n]) for n in names)


def test_row_factors():
    """Finer steps for rows that matter more, geometric mean 1 before the clamp,
    never beyond [1/ROW_CLAMP, ROW_CLAMP]."""
    g = np.exp(np.random.default_rng(0).normal(0, 1, 1000))
    f = fisher.row_factors(g)
    assert f.dtype == np.float32
    assert abs(np.mean(np.log(f))) < 0.01
    assert np.all(np.diff(f[np.argsort(g)]) <= 0)
    np.testing.assert_allclose(f, (g / np.exp(np.mean(np.log(g)))) ** -fisher.ROW_POWER, rtol=1e-5)
    wide = fisher.row_factors(np.exp(np.linspace(-12, 12, 101)))
    assert wide.min() == pytest.approx(1 / fisher.ROW_CLAMP) and wide.max() == pytest.approx(fisher.ROW_CLAMP)
