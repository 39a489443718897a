"""Activation-sparsity thresholds (CHESS, He et al., EMNLP 2024, arXiv 2409.01366).

At inference on one token, the patched llama.cpp skips the weight rows whose
input is (made) zero.  The thresholds come from the dense source model's
activations on calibration tokens (calibrate.py's forward pass, watched by
SparsityProbe), per layer, at a sparsity P (the fraction of inputs zeroed):

  * FFN: m_i = mean over tokens of |up(x)_i|; s = |act(gate x)_i| m_i for every
    token and channel i; T = the P-quantile of all s of the layer; t_i = T / m_i.
    At inference act(gate x)_i is zeroed where |act(gate x)_i| < t_i, which zeroes
    the s below T: the channels whose product with up(x) matters least.
  * Attention: one scalar per layer and weight, T = the P-quantile of |x| over
    the tokens and channels of the input of attn_q (attn_norm's output) and of
    attn_output (the attention output before wo).

The file stores per-channel thresholds in its own coordinates (the format:
constants.py, Keys.SPARSE_* and SPARSE_*):
convert folds W' = W diag(s), x' = x / s into attn_q and attn_output
(fold.RescalePlan.cols), so their thresholds are t_j = T / s_j, and |x'_j| < t_j
exactly when |x_j| < T.  act(gate x) is unchanged by every fold (gate's input
fold is exact, the up -> down fold divides up's rows only), so t_i stays as is.

P = 0 gives thresholds of 0: nothing is ever zeroed (|a| < 0 never holds).  The
0-quantile would be the minimum of the calibration values, which zeroes nothing
of those tokens but would zero values of other text below it; dense is what P = 0
means.  (Convert writes nothing of a kind whose P is 0.)
"""
from __future__ import annotations

import numpy as np

from ..constants import SPARSE_THR_SUFFIX

SPARSE_ARCHS = ("gemma3", "llama", "qwen2", "qwen3")
# values of one layer's activation (tokens x channels) kept for a quantile:
# 2^25 float32 = 128 MiB; above it every k-th token is kept (a regular subsample:
# the tokens of a text are not ordered by importance); the mean m_i uses all
MAX_QUANTILE_VALUES = 1 << 25


def ffn_thresholds(abs_act: np.ndarray, m: np.ndarray, p: float) -> np.ndarray:
    """t_i = T / m_i of one layer: abs_act = |act(gate x)| (tokens x n_ff), m_i = mean |up x|."""
    if p == 0:
        return np.zeros(m.shape, np.float32)
    T = float(np.quantile(abs_act * m.astype(np.float32), p))
    # a channel whose up output is always 0 contributes nothing: always skipped
    with np.errstate(divide="ignore"):
        t = np.where(m > 0, T / m, np.finfo(np.float32).max)
    return np.minimum(t, np.finfo(np.float32).max).astype(np.float32)


def scalar_threshold(x: np.ndarray, p: float) -> float:
    """T = the p-quantile of |x| over all tokens and channels (0 at p = 0)."""
    return 0.0 if p == 0 else float(np.quantile(np.abs(x), p))


class SparsityProbe:
    """Watches calibrate._run (its probe argument) and computes each layer's
    thresholds in the source model's coordinates when the layer is done:
    ffn[layer] = t (n_ff), attn_q[layer] / attn_output[layer] = T (scalars).
    n_tokens: about how many tokens pass (for the subsample of MAX_QUANTILE_VALUES)."""

    def __init__(self, ffn_p: float, attn_p: float, n_tokens: int):
        self.ffn_p, self.attn_p, self.n_tokens = float(ffn_p), float(attn_p), int(n_tokens)
        self.ffn: dict[int, np.ndarray] = {}
        self.attn_q: dict[int, float] = {}
        self.attn_output: dict[int, float] = {}
        self._width: dict[tuple, int] = {}      # (layer, kind) -> n_in of that weight
        self._seen: dict[str, list] = {}        # this layer's |values|, per kind
        self._up_sum, self._up_count = None, 0

    def see(self, layer: int, what: str, v: np.ndarray) -> None:
        if what == "ffn_up" and self.ffn_p > 0:
            s = np.abs(v).sum(axis=0, dtype=np.float64)
            self._up_sum = s if self._up_sum is None else self._up_sum + s
            self._up_count += v.shape[0]
        elif (what == "ffn_act" and self.ffn_p > 0) or \
                (what in ("attn_q", "attn_output") and self.attn_p > 0):
            self._width[(layer, what)] = v.shape[1]
            every = max(1, -(-self.n_tokens * v.shape[1] // MAX_QUANTILE_VALUES))
            self._seen.setdefault(what, []).append(np.abs(v[::every]))

    def layer_done(self, layer: int) -> None:
        if self.ffn_p > 0:
            m = self._up_sum / max(self._up_count, 1)
            self.ffn[layer] = ffn_thresholds(np.concatenate(self._seen.pop("ffn_act")), m, self.ffn_p)
            self._up_sum, self._up_count = None, 0
        if self.attn_p > 0:
            for what, out in (("attn_q", self.attn_q), ("attn_output", self.attn_output)):
                out[layer] = scalar_threshold(np.concatenate(self._seen.pop(what)), self.attn_p)
        self._seen.clear()

    def tensors(self, plan=None) -> dict[str, np.ndarray]:
        """{threshold tensor name: float32 values} in the coordinates of the
        converted file: attn thresholds T / s_j with s = plan.cols of the weight
        (ones when it is not rescaled); see the module docstring."""
        cols = {} if plan is None else plan.cols
        out = {}
        for il, t in sorted(self.ffn.items()):
            out[f"blk.{il}.ffn_up{SPARSE_THR_SUFFIX}"] = t
        for kind, per_layer in (("attn_q", self.attn_q), ("attn_output", self.attn_output)):
            for il, T in sorted(per_layer.items()):
                name = f"blk.{il}.{kind}.weight"
                s = np.asarray(cols.get(name, np.ones(self._width[(il, kind)])), np.float64)
                out[f"blk.{il}.{kind}{SPARSE_THR_SUFFIX}"] = (T / s).astype(np.float32)
        return out


def calibrate(model, ids, ffn_p: float, attn_p: float, n_ctx: int = 512, progress=None,
              cov: dict | None = None):
    """(E[x^2] statistics as calibrate.activation_stats gives them, the probe
    holding the thresholds) of one numpy forward pass of the dense MODEL on ids;
    cov: see activation_stats."""
    from .calibrate import activation_stats
    probe = SparsityProbe(ffn_p, attn_p, len(ids))
    with np.errstate(over="ignore"):      # exp of large negative gates in SiLU: 1 / inf = 0
        stats = activation_stats(model, ids, n_ctx, progress, probe=probe, cov=cov)
    return stats, probe
