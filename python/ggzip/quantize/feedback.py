"""Error feedback (the optimal-brain-quantization / GPTQ scheme) onto ggzip's grid.

A row w of a weight is quantized column by column; the error of column j is
pushed onto the columns not yet quantized, along the direction that keeps the
output error E|(w - w_hat) x|^2 = (w - w_hat) H (w - w_hat)^T smallest, H = E[x x^T]
of the weight's input on calibration text.  With U the upper Cholesky factor of
H^-1 (H^-1 = U^T U), after quantizing column j:

    e = (w_j - w_hat_j) / U[j, j];   w[j+1:] -= e * U[j, j+1:]

The grid is the one ggzip codes anyway: one f16 step per row, or per block where
a block escapes (q8.row_steps), so the symbols stay Q8_0 blocks and the entropy
coder sees the same kind of
histogram.  Rows are independent (same H), so a tensor is done chunk by chunk;
columns go in blocks whose pending updates are applied at once (a matrix
product) to the columns right of the block.
"""
from __future__ import annotations

import numpy as np

from .q8 import QK, QMAX

DAMP = 0.01      # added to H's diagonal, times its mean: keeps H^-1 finite and tame
# H estimated from n calibration tokens has noisy off-diagonal terms when n is not
# well above its size: feedback then fits the calibration text and loses on other
# text.  On SmolLM2 with 1123 calibration tokens, the output error on another
# text (8.5k tokens of Alice) relative to plain rounding, geometric mean over 29
# weights at 4 bpw: damping 0.01 -> 0.82, 0.3 -> 0.60, 0.6 -> 0.59, 1 -> 0.60,
# 2 -> 0.62 (shrinking H toward its diagonal instead: 0.65 at best).  So the
# damping grows with size / tokens: 0.5 cols / n, within [DAMP, 1].  EmbeddingGemma
# at 3.9 bpw (mean cosine to F32 on 300 Alice sentences, 0.9848 without feedback),
# by DAMP_PER_COL: 0.1 -> 0.9848, 0.25 -> 0.9850, 0.5 -> 0.9857, 1 -> 0.9861; more tokens from
# random_text appended to the calibration text (2k, 8k) did not help (0.9851, 0.9854).
DAMP_PER_COL = 0.5
BLOCK = 128      # columns whose updates are applied together
INNER = 16       # columns updated one by one inside a block


def damping(cols: int, n_tokens: int) -> float:
    """Share of mean(diag H) added to H's diagonal for an input of `cols`
    channels seen on n_tokens calibration tokens."""
    return float(np.clip(DAMP_PER_COL * cols / max(n_tokens, 1), DAMP, 1.0))


def feedback_factor(h: np.ndarray, damp: float = DAMP) -> np.ndarray:
    """U (float32, upper triangular) with U^T U = (H + damp * mean(diag H) I)^-1.
    Columns never active in calibration (zero variance) get unit variance: no
    error is pushed from or onto them in earnest."""
    h = np.array(h, np.float64, copy=True)
    n = h.shape[0]
    dead = np.diag(h) <= 0
    h[dead, :] = 0
    h[:, dead] = 0
    h[dead, dead] = 1.0
    mean = float(np.mean(np.diag(h)))
    h[np.diag_indices(n)] += damp * (mean if mean > 0 else 1.0)
    # H = M M^T with M upper (the Cholesky factor of H in reversed order), so
    # H^-1 = M^-T M^-1 and U = M^-1, upper too: one factorisation, one inverse
    m = np.linalg.cholesky(h[::-1, ::-1])[::-1, ::-1]
    return np.ascontiguousarray(np.triu(np.linalg.inv(m)), np.float32)


class Factors:
    """The feedback factors of one (damped) input covariance h, each computed
    on first use: in column order (quantize_feedback) and in lane order
    (codec.lane_order: the trellis decides a row lane after lane,
    codec.tcq_feedback)."""

    def __init__(self, h: np.ndarray):
        self.h = h
        self._u: dict[bool, np.ndarray] = {}

    @property
    def cols(self) -> int:
        return self.h.shape[0]

    def get(self, lanes: bool = False) -> np.ndarray:
        if lanes not in self._u:
            h = self.h
            if lanes:
                from ..codec import lane_order
                o = lane_order(self.cols)
                h = h[np.ix_(o, o)]
            self._u[lanes] = feedback_factor(h)
        return self._u[lanes]


def code_lengths(q: np.ndarray) -> np.ndarray:
    """Bits of each symbol 0..127 of |q| as an order-0 coder of the signed
    symbols would spend (a sign bit for nonzero ones), from a histogram of q,
    smoothed so that unseen symbols cost a finite amount."""
    c = np.bincount(np.abs(q.reshape(-1).astype(np.int16)), minlength=QMAX + 1)[:QMAX + 1]
    p = (c + 0.5) / (c.sum() + 0.5 * (QMAX + 1))
    bits = -np.log2(p)
    bits[1:] += 1.0              # p(|q|) counts both signs: -log2(p/2) = -log2 p + 1
    return bits.astype(np.float32)


def quantize_feedback(w: np.ndarray, d16: np.ndarray, u: np.ndarray | None,
                      theta: float = 0.0, block: int = BLOCK, inner: int = INNER,
                      lengths: np.ndarray | None = None, rdo: float = 0.0) -> np.ndarray:
    """int8 symbols of the (rows, cols) float32 rows w on their f16 steps d16
    (per row, or per block: (rows, cols/32)), with error feedback through
    u = feedback_factor(H) (None: no feedback, for rounding by rdo alone).
    Same rounding rule as
    q8.quantize_rows (half away from zero, minus the dead-zone offset theta),
    clipped to +-127 (feedback may push a weight past its row's absmax).
    Works on w transposed, so a column is contiguous; updates go column by
    column only within `inner` columns, then by matrix products (an inner
    group onto the rest of its block, a block onto the columns right of it).
    rdo > 0 with lengths (code_lengths): rate-distortion optimised rounding:
    each weight takes, of the two grid points around it, the one minimising
    (x/d - q)^2 + rdo * ln2/6 * bits(q); ln2/6 is the high-rate slope of a
    uniform quantizer's distortion (d^2/12 per weight) per bit, so rdo = 1
    trades bits and error at the rate they trade anyway."""
    wt = np.array(w.T, np.float32, order="C")          # (cols, rows)
    cols, rows = wt.shape
    # steps per row, or per block transposed: block j // 32 of every row is a
    # contiguous row of these, read once per column without a copy
    ds = d16.astype(np.float32)
    if ds.ndim == 2:
        ds = np.ascontiguousarray(ds.T)
    invs = (1.0 / ds).astype(np.float32)
    off = np.float32(0.5 - theta)
    qt = np.empty((cols, rows), np.int8)
    mu = np.float32(rdo * np.log(2) / 6) if (rdo and lengths is not None) else 0
    err = np.empty((block, rows), np.float32)
    for b0 in range(0, cols, block):
        b1 = min(cols, b0 + block)
        for i0 in range(b0, b1, inner):
            i1 = min(b1, i0 + inner)
            for j in range(i0, i1):
                col = wt[j]
                d, inv = (ds, invs) if ds.ndim == 1 else (ds[j // QK], invs[j // QK])
                if mu:
                    r = np.abs(col) * inv
                    lo_ = np.minimum(np.floor(r), QMAX - 1)
                    li = lo_.astype(np.intp)
                    up = (r - lo_ - 1) ** 2 + mu * lengths[li + 1] < (r - lo_) ** 2 + mu * lengths[li]
                    qj = np.minimum(lo_ + up, QMAX)
                else:
                    qj = np.minimum(np.floor(np.abs(col) * inv + off), QMAX)
                qj = np.copysign(qj, col, out=qj)
                qt[j] = qj
                if u is None:
                    continue
                e = err[j - b0]
                np.subtract(col, qj * d, out=e)
                e /= u[j, j]
                if j + 1 < i1:
                    wt[j + 1:i1] -= u[j, j + 1:i1, None] * e[None, :]
            if u is None:
                continue
            if i1 < b1:
                wt[i1:b1] -= u[i0:i1, i1:b1].T @ err[i0 - b0:i1 - b0]
        if u is not None and b1 < cols:
            wt[b1:] -= u[b0:b1, b1:].T @ err[:b1 - b0]
    return np.ascontiguousarray(qt.T)
