"""Error feedback (the optimal-brain-quantization / GPTQ scheme) onto ggzip's grid.

A row w of a weight is quantized column by column; the error of column j is
pushed onto the columns not yet quantized, along the direction that keeps the
output error E|(w - w_hat) x|^2 = (w - w_hat) H (w - w_hat)^T smallest, H = E[x x^T]
of the weight's input on calibration text.  With U the upper Cholesky factor of
H^-1 (H^-1 = U^T U), after quantizing column j:

    e = (w_j - w_hat_j) / U[j, j];   w[j+1:] -= e * U[j, j+1:]

The grid is the one ggzip codes anyway: one f16 step per row (q8.row_steps), so
the symbols stay Q8_0 blocks and the entropy coder sees the same kind of
histogram.  Rows are independent (same H), so a tensor is done chunk by chunk;
columns go in blocks whose pending updates are applied at once (a matrix
product) to the columns right of the block.
"""
from __future__ import annotations

import numpy as np

from .q8 import QMAX

DAMP = 0.01      # added to H's diagonal, times its mean: keeps H^-1 finite and tame
# H estimated from n calibration tokens has noisy off-diagonal terms when n is not
# well above its size: feedback then fits the calibration text and loses on other
# text.  On SmolLM2 with 1123 calibration tokens, the output error on another
# text (8.5k tokens of Alice) relative to plain rounding, geometric mean over 29
# weights at 4 bpw: damping 0.01 -> 0.82, 0.3 -> 0.60, 0.6 -> 0.59, 1 -> 0.60,
# 2 -> 0.62 (shrinking H toward its diagonal instead: 0.65 at best).  So the
# damping grows with size / tokens: 0.5 cols / n, within [DAMP, 1].
DAMP_PER_COL = 0.5
BLOCK = 128      # columns whose updates are applied together


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
    # H^-1 from H's own Cholesky factor (H = L L^T: H^-1 = L^-T L^-1), then
    # H^-1 = C C^T and U = C^T
    li = np.linalg.inv(np.linalg.cholesky(h))
    return np.ascontiguousarray(np.linalg.cholesky(li.T @ li).T, np.float32)


def quantize_feedback(w: np.ndarray, d16: np.ndarray, u: np.ndarray,
                      theta: float = 0.0, block: int = BLOCK) -> np.ndarray:
    """int8 symbols of the (rows, cols) float32 rows w on their f16 steps d16,
    with error feedback through u = feedback_factor(H).  Same rounding rule as
    q8.quantize_rows (half away from zero, minus the dead-zone offset theta),
    clipped to +-127 (feedback may push a weight past its row's absmax)."""
    w = np.array(w, np.float32, copy=True)
    rows, cols = w.shape
    d = d16.astype(np.float32)
    inv = (1.0 / d).astype(np.float32)
    off = np.float32(0.5 - theta)
    q = np.empty((rows, cols), np.int8)
    for b0 in range(0, cols, block):
        b1 = min(cols, b0 + block)
        wb = w[:, b0:b1]                   # a view: updates land in w
        err = np.empty((rows, b1 - b0), np.float32)
        for j in range(b1 - b0):
            col = wb[:, j]
            qj = np.minimum(np.floor(np.abs(col) * inv + off), QMAX)
            qj = np.copysign(qj, col)
            q[:, b0 + j] = qj
            e = (col - qj * d) / u[b0 + j, b0 + j]
            err[:, j] = e
            if j + 1 < b1 - b0:
                wb[:, j + 1:] -= np.outer(e, u[b0 + j, b0 + j + 1:b1])
        if b1 < cols:
            w[:, b1:] -= err @ u[b0:b1, b1:]
    return q
