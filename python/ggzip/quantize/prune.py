"""Activation-aware pruning: zero the weights that matter least.

The score of W_ij is |W_ij| * sqrt(E[x_j^2]) (Wanda): the size of its
contribution to output i.  It is the same number in rescaled coordinates,
|W'_ij| * sqrt(E[x'_j^2]), since W' = W s and x' = x / s.  Each row loses the
same fraction: rows are outputs, and a row left with nothing is a dead output.
A zeroed weight becomes symbol 0, the cheapest symbol of the coder."""
from __future__ import annotations

import numpy as np


def prune_rows(w: np.ndarray, fraction: float, col_stat: np.ndarray | None = None) -> np.ndarray:
    """w with the `fraction` lowest-scoring weights of every row set to 0
    (a new array).  col_stat: E[x^2] per column in w's coordinates, or None."""
    rows, cols = w.shape
    k = int(round(fraction * cols))
    if k <= 0:
        return w
    score = np.abs(w)
    if col_stat is not None:
        score = score * np.sqrt(col_stat).astype(np.float32)[None, :]
    if k >= cols:
        return np.zeros_like(w)
    # the k-th smallest score of each row is its threshold; ties at the
    # threshold may prune a few more, which only matters for exact repeats
    thr = np.partition(score, k - 1, axis=1)[:, k - 1:k]
    out = np.array(w, np.float32, copy=True)
    out[score <= thr] = 0.0
    return out
