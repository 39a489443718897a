"""Rate allocation across tensor groups by measured output sensitivity.

A uniform rate spends the same bits per weight on every matrix, but the
model's output does not suffer the same from each.  A group is the tensors of
one kind across the layers (blk.*.attn_v.weight, ...) or one tensor outside the
blocks (an encoder's dense_2 / dense_3, an untied output head).  Each group is
quantized alone at its rate while the rest stays float, and ggzip's numpy
forward pass (calibrate._Graph) measures what that does to the output on the
calibration tokens:
  * causal models: the KL divergence of the next-token distribution from the
    float model's, on up to EVAL_POSITIONS positions;
  * encoders: 1 - cosine of the L2-normalized mean of POOL-token windows
    through dense_2 / dense_3 (what llama-embedding's sentence vector is).
With D_k measured at rate r_k and the high-rate law D_k(R) = D_k 2^(-2(R - r_k)),
the rates that minimise sum_k D_k(R_k) at the same bytes, sum_k n_k R_k, are
R_k = r_k + log2(D_k / n_k) / 2 + lambda (equal slope: each group's last bit
buys as much as any other's), within CLAMP bits of r_k and [RATE_MIN, RATE_MAX].

Measured: EmbeddingGemma-300M at 3.9 bpw with uniform rates: its dense_2 and
dense_3 are 1.6% of the weights and a third of the cosine loss, attn_v and
ffn_down carry more than attn_q.  What llama.cpp's Q4_K_M spends by a fixed rule
(Q6_K / Q8_0 for attn_v and ffn_down in part of the layers), this measures.
"""
from __future__ import annotations

import re

import numpy as np

from .calibrate import _Graph

EVAL_POSITIONS = 256     # causal: next-token distributions compared per group
POOL = 32                # encoder: tokens per pooled window
CLAMP = 2.0              # bits a group may move from its rate either way
RATE_MIN, RATE_MAX = 1.5, 7.0


AFTER_BLOCKS = ("output.weight", "dense_2.weight", "dense_3.weight")   # measurable heads


def measurable(name: str) -> bool:
    """Tensors output_distortion can perturb: block weights and the heads after the blocks."""
    return name.startswith("blk.") or name in AFTER_BLOCKS


def group_of(name: str) -> str:
    """blk.N.KIND.weight -> KIND.weight; other tensors are a group each."""
    m = re.match(r"blk\.\d+\.(.+)$", name)
    return m.group(1) if m else name


def output_distortion(model, ids, groups: dict[str, list[str]], perturbed, n_ctx: int = 512,
                      progress=None) -> dict[str, float]:
    """{group: output distortion when only its tensors are replaced by
    perturbed(name, w) (w: the float tensor, already read; returns it quantized and
    dequantized, in the model's coordinates)}, on
    the token ids.  Groups may hold block tensors and the tensors read after
    the blocks (output.weight, dense_2 / dense_3); the token embedding is not
    measured.  All streams run layer by layer together: each layer's weights
    are read once."""
    G = _Graph(model)
    chunks = G.chunks(ids, n_ctx)
    member = {n: g for g, names in groups.items() for n in names}
    if not all(measurable(n) for n in member):
        raise ValueError("output_distortion measures block weights and the heads after them, "
                         f"not {sorted(n for n in member if not measurable(n))}")
    block = [g for g, names in groups.items() if any(n.startswith("blk.") for n in names)]
    ref = G.embed(chunks)
    streams = {g: [x.copy() for x in ref] for g in block}
    for il in range(G.L):
        W = G.weights(il)
        p = f"blk.{il}."
        mine: dict[str, dict] = {}
        for short in W:
            g = member.get(p + short)
            if g is not None:
                mine.setdefault(g, {})[short] = perturbed(p + short, W[short])
        for g, xs in streams.items():
            Wg = {**W, **mine.get(g, {})}
            streams[g] = [G.layer(il, Wg, x) for x in xs]
        ref = [G.layer(il, W, x) for x in ref]
        if progress is not None:
            progress(il + 1, G.L + 1)
    g_out = model.float32("output_norm.weight")
    h_ref = [G.rms(x, g_out) for x in ref]
    out: dict[str, float] = {}
    if G.causal:
        T = sum(len(h) for h in h_ref)
        pick = np.unique(np.linspace(0, T - 1, min(T, EVAL_POSITIONS)).astype(np.int64))
        ref_h = np.concatenate(h_ref)[pick]
        ref_lp = _log_softmax(G.logits(ref_h))
        for g in groups:
            if g in streams:
                h = np.concatenate([G.rms(x, g_out) for x in streams[g]])[pick]
                lp = _log_softmax(G.logits(h))
            else:            # the head itself (an untied output.weight)
                z = ref_h @ perturbed(G.head_name, G.head()).T
                if G.softcap:
                    z = np.tanh(z / G.softcap) * G.softcap
                lp = _log_softmax(z)
            out[g] = float(np.mean(np.sum(np.exp(ref_lp) * (ref_lp - lp), axis=1)))
    else:
        dense = [n for n in ("dense_2.weight", "dense_3.weight") if n in model.tensors]
        full = {n: model.float32(n) for n in dense}
        e_ref = _pooled(np.concatenate(h_ref), [full[n] for n in dense])
        for g in groups:
            if g in streams:
                e = _pooled(np.concatenate([G.rms(x, g_out) for x in streams[g]]),
                            [full[n] for n in dense])
            else:
                e = _pooled(np.concatenate(h_ref),
                            [perturbed(n, full[n]) if n in groups[g] else full[n] for n in dense])
            out[g] = float(np.mean(1.0 - np.sum(e * e_ref, axis=1)))
    if progress is not None:
        progress(G.L + 1, G.L + 1)
    return out


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _pooled(h: np.ndarray, dense: list[np.ndarray]) -> np.ndarray:
    """L2-normalized means of POOL-token windows of h, through the dense projections."""
    w = np.arange(len(h)) // POOL
    z = np.zeros((int(w[-1]) + 1, h.shape[1]), np.float64)
    np.add.at(z, w, h)
    for M in dense:
        z = z @ M.T.astype(np.float64)
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def allocate(n: dict[str, int], d: dict[str, float], rate: dict[str, float],
             clamp: float = CLAMP, lo: float = RATE_MIN, hi: float = RATE_MAX) -> dict[str, float]:
    """{group: rate} from each group's weights n, distortion d measured at rate
    `rate`: equal slope under D 2^(-2R), the same total bits sum n x rate,
    each group within clamp bits of its rate and in [lo, hi] (module docstring)."""
    keys = list(n)
    nk = np.array([n[k] for k in keys], np.float64)
    r0 = np.array([rate[k] for k in keys], np.float64)
    dk = np.array([d[k] for k in keys], np.float64)
    pos = dk[dk > 0]
    floor = pos.min() * 1e-6 if pos.size else 1.0
    want = r0 + 0.5 * np.log2(np.maximum(dk, floor) / nk)
    low = np.maximum(np.minimum(lo, r0), r0 - clamp)
    high = np.minimum(np.maximum(hi, r0), r0 + clamp)
    budget = float(nk @ r0)

    def spent(lam):
        return float(nk @ np.clip(want + lam, low, high))
    a, b = -64.0 - want.max(), 64.0 - want.min()
    for _ in range(100):             # spent() rises with lambda: bisect
        m = 0.5 * (a + b)
        a, b = (m, b) if spent(m) < budget else (a, m)
    r = np.clip(want + 0.5 * (a + b), low, high)
    return {k: float(v) for k, v in zip(keys, r)}
