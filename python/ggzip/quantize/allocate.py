"""Rate allocation across tensors by measured sensitivity.

Each weight t gets its own step so that the marginal loss per bit is the same
everywhere (a Lagrangian choice: minimise sum_t D_t + lambda * bits_t).  The loss
of t is modelled as

    D_t = a_t * E|dW_t x|^2        (+ a_in * mean row |dW|^2 for a looked-up embedding)

E|dW x|^2 comes from the imatrix statistics (sum_j c_j err_ij^2, in the original
model's coordinates), and a_t, the KL divergence of the next-token distribution
per unit of noise power added to t's outputs, is measured on this model: ggzip's
numpy forward pass over calibration tokens with white noise injected
(calibrate.logits).  One pass per tensor kind (noise in every layer) and one per
layer (noise in every kind) fit a_(kind, layer) = A_kind * B_layer; the output
head and the embedding lookup get their own pass.  Rate and distortion of every
tensor are then measured on a row sample over a grid of steps, and lambda is
bisected until the bits fit the budget.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .calibrate import EMBD_INPUT, _run
from .q8 import (QK, quantize_rows, row_absmax, row_steps, sample_rows, scale_stream_bits,
                 step_for_rate, symbol_entropy)

KINDS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
RHO = 3e-3          # injected noise / output power: about the error of 4-bit weights
MAX_TOKENS = 256    # calibration tokens per pass
GRID = np.arange(-9, 10) / 3.0     # log2 step offsets tried around the target's step


def _kld(ref: np.ndarray, other: np.ndarray) -> float:
    def logp(z):
        z = z.astype(np.float64)
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    lr, lo = logp(ref), logp(other)
    return float((np.exp(lr) * (lr - lo)).sum(axis=1).mean())


def logits(model, ids, noise=None, power=None, seed=0):
    return _run(model, ids, len(ids), None, want_logits=True,
                noise=(noise or {}, power if power is not None else {},
                       np.random.default_rng(seed)))


def sensitivities(model, ids, progress=None) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """({weight name, and calibrate.EMBD_INPUT: KL divergence per unit of noise
    power per token on its outputs}, E[x^2] of every weight's input on these
    tokens, the output head's included) of a llama / qwen2 / qwen3 / gemma3 model."""
    ids = list(ids)[:MAX_TOKENS]
    L = int(model.kv[f"{model.arch}.block_count"])
    names = {(k, il): f"blk.{il}.{k}.weight" for k in KINDS for il in range(L)
             if f"blk.{il}.{k}.weight" in model.tensors}
    head = "output.weight" if "output.weight" in model.tensors else "token_embd.weight"
    stats, ref = logits(model, ids)
    passes = [("kind", k) for k in KINDS] + [("layer", il) for il in range(L)] + \
        [("head", head), ("input", EMBD_INPUT)]
    kl, power = {}, {}
    for i, (what, key) in enumerate(passes):
        if what == "kind":
            noise = {n: RHO for (k, _), n in names.items() if k == key}
        elif what == "layer":
            noise = {n: RHO for (_, il), n in names.items() if il == key}
        else:
            noise = {key: RHO}
        if not noise:
            continue
        pw: dict = {}
        kl[(what, key)] = max(_kld(ref, logits(model, ids, noise, pw, seed=i)[1]), 0.0)
        power[(what, key)] = pw
        if progress is not None:
            progress(i + 1, len(passes))
    # a_(k, l) = A_k B_l from KL_kind(k) = A_k sum_l B_l P_kl and
    # KL_layer(l) = B_l sum_k A_k P_kl (alternating fits, geometric normalisation)
    A = {k: 1.0 for k in KINDS}
    B = {il: 1.0 for il in range(L)}
    P = {kl_key: pw for kl_key, pw in power.items()}
    for _ in range(50):
        for k in KINDS:
            if ("kind", k) in P:
                d = sum(B[il] * P[("kind", k)].get(n, 0.0) for (kk, il), n in names.items() if kk == k)
                A[k] = kl[("kind", k)] / d if d > 0 else 0.0
        for il in range(L):
            if ("layer", il) in P:
                d = sum(A[k] * P[("layer", il)].get(n, 0.0) for (k, ll), n in names.items() if ll == il)
                B[il] = kl[("layer", il)] / d if d > 0 else 0.0
        g = np.exp(np.mean(np.log([b for b in B.values() if b > 0] or [1.0])))
        B = {il: b / g for il, b in B.items()}
    out = {n: A[k] * B[il] for (k, il), n in names.items()}
    for what, key in (("head", head), ("input", EMBD_INPUT)):
        p = power.get((what, key), {}).get(key, 0.0)
        if p > 0:
            out[key] = kl[(what, key)] / p
    return out, stats


@dataclass
class TensorCurve:
    """Rate (bits per weight) and loss (sensitivity-weighted output error per
    token, whole tensor) of one tensor at each base step of a grid."""
    name: str
    n: int                        # weights
    steps: np.ndarray
    bits: np.ndarray
    loss: np.ndarray


def tensor_curve(name: str, w: np.ndarray, n_rows: int, target_bpw: float, row_factor,
                 col_weight, row_weight, a_out: float, a_in: float = 0.0) -> TensorCurve:
    """w: a row sample (rescaled) of a tensor of n_rows rows; row_factor,
    row_weight: of the sampled rows; col_weight: E[x'^2] per column (None: 1);
    row_weight: the factor by which a row's error is scaled back into the
    original model (plan.divide), None for 1."""
    amax = row_absmax(w)
    center = np.log2(step_for_rate(w, target_bpw, row_factor, amax))
    cw = np.ones(w.shape[1]) if col_weight is None else np.asarray(col_weight, np.float64)
    rw = np.ones(w.shape[0]) if row_weight is None else np.square(np.asarray(row_weight, np.float64))
    nb = w.shape[1] // QK
    scale = n_rows / w.shape[0]
    steps, bits, loss = [], [], []
    for off in GRID:
        d = row_steps(2.0 ** (center + off), row_factor, amax)
        q = quantize_rows(w, d)
        e = q.astype(np.float32) * d.astype(np.float32)[:, None] - w
        e2 = np.square(e, dtype=np.float64)
        out_err = float(rw @ (e2 @ cw)) * scale          # E|dW x|^2 per token
        in_err = float(rw @ e2.sum(axis=1)) / w.shape[0]  # mean row |dW|^2
        steps.append(2.0 ** (center + off))
        bits.append(symbol_entropy(q) + scale_stream_bits(d, nb) / w.size)
        loss.append(a_out * out_err + a_in * in_err)
    return TensorCurve(name, n_rows * w.shape[1], np.array(steps), np.array(bits), np.array(loss))


@dataclass
class Allocation:
    steps: dict[str, float] = field(default_factory=dict)     # name -> base step
    bits: dict[str, float] = field(default_factory=dict)      # predicted bits per weight
    loss: float = 0.0                                         # predicted KL divergence


def allocate(curves: list[TensorCurve], budget_bits: float) -> Allocation:
    """The grid step of each tensor minimising total loss with sum of n x bits
    <= budget_bits (Lagrangian bisection on lambda; the largest-loss choice of
    every tensor if even that does not fit)."""
    def pick(lam):
        return [int(np.argmin(c.loss + lam * c.n * c.bits)) for c in curves]

    def total(ch):
        return sum(c.n * c.bits[i] for c, i in zip(curves, ch))
    lo, hi = -60.0, 20.0         # log2 lambda
    best = pick(2.0 ** hi)
    if total(best) <= budget_bits:
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            ch = pick(2.0 ** mid)
            if total(ch) <= budget_bits:
                hi, best = mid, ch
            else:
                lo = mid
    out = Allocation()
    for c, i in zip(curves, best):
        out.steps[c.name] = float(c.steps[i])
        out.bits[c.name] = float(c.bits[i])
        out.loss += float(c.loss[i])
    return out
