"""Output-aware row weights: how much an error in each output row of each block
matrix moves the model's output, from a numpy backward pass of calibrate's graph.

The imatrix weighs a weight's columns by E[x_j^2] of its input; nothing there
says which *rows* matter.  A second-order view of the output loss (K-FAC's
diagonal) weighs W_ij's error by g_i * c_j, where g_i = E[(dL/dy_i)^2] is the
squared gradient of the loss with respect to row i's output y_i = W_i x, summed
over tokens.  For the loss the Fisher of the output is used, sampled:
  * causal models: L = sum_t log p_t(s_t), the token s_t drawn from the model's
    own next-token distribution p_t (the Fisher of the KL divergence from it);
  * encoders: L = sum_w v_w . e_w, e_w the L2-normalized mean of a window of
    POOL tokens' final states (after output_norm, and the dense_2 / dense_3
    projections of a sentence-transformers head when the GGUF has them), and
    v_w ~ N(0, I): the Gauss-Newton matrix of 1 - cosine at the float model.
PROBES draws per token; their gradients run as one batch.  The pass keeps each
layer's residual input of every chunk (tokens x n_embd floats per layer) and
recomputes the layer's internals going back.

convert (--fisher) turns g into a step per row (row_steps): step_i proportional
to (g_i / geometric mean)^-ROW_POWER, within [1 / ROW_CLAMP, ROW_CLAMP].  The
high-rate optimum of sum_i g_i step_i^2 at a fixed sum_i log step_i is the power
1/2, and on one tensor it does cut the g-weighted error most (EmbeddingGemma,
blk.3.attn_q at 3.9 bits: predicted 3.75 dB, realized 2.8 dB with one frequency
table, the rows of different steps sharing it), but end to end 1/4 wins:
  * EmbeddingGemma, 3.9 bpw, imatrix, mean cosine over 300 Alice sentences:
    0.98481 without, 0.98548 with 1/4, 0.98441 with 1/2; with --feedback
    0.98568 -> 0.98624;
  * SmolLM2, 3.9 bpw, KL divergence on Alice: 0.1316 without, 0.1210 (1/4),
    0.1296 (0.35), 0.1361 (1/2), 0.1291 (0.15); with --feedback 0.0958 ->
    0.0890; at 4.5 bpw 0.0611 -> 0.0561;
  * Gemma-3-270M, 3.9 bpw: 0.1245 -> 0.1051.
Out of the calibration text's domain (SmolLM2 calibrated on the Declaration of
Independence, KL divergence on Python source, 3.9 bpw): 0.163 without, 0.174 with
rows alone, 0.129 with --feedback, 0.128 with both: the rows follow the text's
domain; feedback generalizes.  The tied head's rows weighted the same way (their
Fisher is sum_t p_v (1 - p_v), what the model predicts on the text) gained most on
Alice (0.1316 -> 0.1090 alone, 0.0917 with the block rows) and lost most on the
source (0.188): not kept, the vocabulary of another domain loses its bits.
Measured and not kept: weighting each column by sum_i g_i-weighted E[x_j^2]
(the exact diagonal Fisher's column marginal, instead of the imatrix): 0.98505
against 0.98481; a Fisher of whole sentences (each its own chunk, pooled
whole): 0.98534; with --feedback, 16 probes instead of 4: 0.98593 against 0.98624,
and the power 0.35: 0.98558; equal-slope rates across the block matrices from
each one's g-weighted error (a rate split, predicted +1.46 dB): 0.98403, at half
the spread 0.98597 (against 0.98548 with --fisher alone).  The diagonal Fisher
itself is close to rank one, g_i times the column marginal (log residual std
0.12-0.44), so rows and columns separate.
"""
from __future__ import annotations

import numpy as np

from .calibrate import _Graph, _rope

PROBES = 4
POOL = 32               # tokens per pooled window of an encoder's loss
ROW_POWER = 0.25
LOGIT_ROWS = 64          # tokens whose logits are held at once
ROW_CLAMP = 4.0
MATRICES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def _rms_back(v, g, dout, eps):
    """d/dv of rms(v, g) = v * r * g, r = 1/sqrt(mean(v^2) + eps), against dout
    (leading probe axis broadcast)."""
    r = 1.0 / np.sqrt(np.mean(v * v, axis=-1, keepdims=True) + eps)
    z = dout * g
    return r * z - v * (r ** 3) * np.mean(v * z, axis=-1, keepdims=True)


def _act_back(gemma: bool, x):
    """Derivative of the FFN activation (GELU tanh for gemma, SiLU else)."""
    if gemma:
        c = np.float32(np.sqrt(2 / np.pi))
        t = np.tanh(c * (x + np.float32(0.044715) * x ** 3))
        return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * np.float32(0.044715) * x * x)
    s = 1 / (1 + np.exp(-x))
    return s * (1 + x * (1 - s))


def _output_grad(G: _Graph, x, rng, probes: int, pool: int, g_out, dense):
    """(probes, T, D) gradient of the sampled loss with respect to the residual
    stream x leaving the last layer.  g_out: output_norm's weight; dense: an
    encoder's projections after pooling (dense_2, dense_3), read once by the
    caller."""
    hs = G.rms(x, g_out)
    T, D = hs.shape
    if G.causal:
        head = G.head()
        cap = G.softcap
        d = np.empty((probes, T, D), np.float32)
        for t0 in range(0, T, LOGIT_ROWS):     # a 262k vocabulary: logits a few rows at a time
            sl = slice(t0, min(T, t0 + LOGIT_ROWS))
            z = hs[sl] @ head.T
            if cap:
                t = np.tanh(z / cap)
                z, dcap = t * cap, 1 - t * t
            z -= z.max(axis=1, keepdims=True)
            pr = np.exp(z)
            pr /= pr.sum(axis=1, keepdims=True)
            cdf = np.cumsum(pr, axis=1)
            n = len(pr)
            for p in range(probes):
                # the sampled token's one-hot minus p: the gradient of log p(s)
                s = np.minimum((cdf < rng.random((n, 1)) * cdf[:, -1:]).sum(axis=1),
                               pr.shape[1] - 1)
                dz = -pr
                dz[np.arange(n), s] += 1
                if cap:
                    dz *= dcap
                d[p, sl] = dz @ head
    else:
        # windows of `pool` tokens mean-pooled, through the dense projections
        # when the GGUF has them, L2-normalized: llama-embedding's sentence vector
        w = np.arange(T) // pool
        nw = int(w[-1]) + 1
        cnt = np.bincount(w, minlength=nw).astype(np.float32)[:, None]
        z = np.zeros((nw, D), np.float32)
        np.add.at(z, w, hs)
        z /= cnt
        for M in dense:
            z = z @ M.T
        n = np.linalg.norm(z, axis=1, keepdims=True)
        e = z / n
        v = rng.standard_normal((probes,) + z.shape).astype(np.float32)
        d = (v - e * np.sum(v * e, axis=-1, keepdims=True)) / n
        for M in reversed(dense):
            d = d @ M
        d = (d / cnt)[:, w]
    return _rms_back(x, g_out, d, G.eps)


def _layer_back(G: _Graph, il, W, c, dx2, on_grad):
    """Back through block il (its forward cache c) from dx2 (probes, T, D) to the
    residual stream entering it; on_grad(weight name, dy) gets the gradient
    (probes, T, rows) with respect to each matrix's output (before its bias)."""
    p = f"blk.{il}."
    eps, gemma = G.eps, G.gemma
    P, T = dx2.shape[:2]

    def add(n, dy):
        on_grad(p + n + ".weight", dy)

    dfy = _rms_back(c["fy"], W["post_ffw_norm.weight"], dx2, eps) if gemma else dx2
    add("ffn_down", dfy)
    dm = dfy @ W["ffn_down.weight"]
    du = dm * c["g"]
    dgy = dm * c["u"] * _act_back(gemma, c["gy"])
    del dm
    add("ffn_up", du)
    add("ffn_gate", dgy)
    dh2 = dgy @ W["ffn_gate.weight"] + du @ W["ffn_up.weight"]
    del du, dgy
    dx1 = dx2 + _rms_back(c["x1"], W["ffn_norm.weight"], dh2, eps)
    del dh2
    doy = _rms_back(c["oy"], W["post_attention_norm.weight"], dx1, eps) if gemma else dx1
    add("attn_output", doy)
    H, hd, gqa = G.n_head, G.hd, G.n_head // G.n_kv
    do = (doy @ W["attn_output.weight"]).reshape(P, T, H, hd)
    del doy
    a, q, k, v = c["a"], c["q"], c["k"], c["v"]
    da = np.einsum("pthd,shd->phts", do, v)
    dv = np.einsum("hts,pthd->pshd", a, do)
    del do
    ds = a * (da - np.sum(da * a, axis=-1, keepdims=True)) * G.q_scale
    del da
    dq = np.einsum("phts,shd->pthd", ds, k)
    dk = np.einsum("phts,thd->pshd", ds, q)
    del ds
    # repeated K/V heads: the gradient of a KV head is the sum over its query heads
    dk = dk.reshape(P, T, G.n_kv, gqa, hd).sum(axis=3)
    dv = dv.reshape(P, T, G.n_kv, gqa, hd).sum(axis=3)
    cos, sin = c["cos"], c["sin"]
    dq = _rope(dq, cos, -sin, G.mode)      # a rotation's transpose turns the other way
    dk = _rope(dk, cos, -sin, G.mode)
    dh = np.zeros((P, T, G.D), np.float32)
    for n, dy in (("attn_q", dq), ("attn_k", dk), ("attn_v", dv)):
        if n + "_norm.weight" in W:
            dy = _rms_back(c[n], W[n + "_norm.weight"], dy, eps)
        dy = dy.reshape(P, T, -1)
        add(n, dy)
        dh += dy @ W[n + ".weight"]
    return dx1 + _rms_back(c["x"], W["attn_norm.weight"], dh, eps)


def row_fisher(model, ids, n_ctx: int = 512, probes: int = PROBES, seed: int = 0,
               progress=None, pool: int = POOL) -> dict[str, np.ndarray]:
    """{weight name: g_i per output row, float64} of every block matrix (MATRICES)
    of a CALIB_ARCHS model on token ids, in the model's own coordinates, summed
    over tokens and divided by tokens x probes.  pool: an encoder's window
    (ignored by causal models).  progress(done, total): layers of
    the forward and the backward pass."""
    G = _Graph(model)
    rng = np.random.default_rng(seed)
    chunks = G.chunks(ids, n_ctx)
    xs = G.embed(chunks)
    inputs = []                     # the residual stream entering each layer, per chunk
    for il in range(G.L):
        inputs.append(xs)
        W = G.weights(il)
        xs = [G.layer(il, W, x) for x in xs]
        if progress is not None:
            progress(il + 1, 2 * G.L)
    g_out = model.float32("output_norm.weight")
    dense = [] if G.causal else [model.float32(n) for n in ("dense_2.weight", "dense_3.weight")
                                 if n in model.tensors]
    ds = [_output_grad(G, x, rng, probes, pool, g_out, dense) for x in xs]
    del xs
    fisher: dict[str, np.ndarray] = {}

    def on_grad(name, dy):
        dy = dy.reshape(-1, dy.shape[-1])
        fisher[name] = fisher.get(name, 0) + np.einsum("ti,ti->i", dy, dy, dtype=np.float64)

    for il in reversed(range(G.L)):
        W = G.weights(il)
        for ci, x in enumerate(inputs[il]):
            c: dict = {}
            G.layer(il, W, x, cache=c)
            ds[ci] = _layer_back(G, il, W, c, ds[ci], on_grad)
        inputs[il] = None
        if progress is not None:
            progress(2 * G.L - il, 2 * G.L)
    n = sum(len(ch) for ch in chunks) * probes
    return {k: v / n for k, v in fisher.items()}


def row_factors(g: np.ndarray, clamp: float = ROW_CLAMP, power: float = ROW_POWER) -> np.ndarray:
    """Relative row steps from row weights g: (g / geometric mean)^-power,
    clamped to [1/clamp, clamp]; geometric mean 1 before the clamp."""
    lg = np.log(np.maximum(g, np.max(g) * 1e-12))
    f = np.exp(-power * (lg - lg.mean()))
    return np.clip(f, 1.0 / clamp, clamp).astype(np.float32)
