"""Entropy-aware 8-bit quantization into Q8_0-compatible blocks.

A Q8_0 block is an f16 scale d and 32 int8 q; llama.cpp reconstructs q*d.  Stock
Q8_0 takes d = absmax/127 per block, so every block uses the whole int8 range and
the symbols are nearly incompressible.  Here every block of a row shares one step
(the scale stream then costs next to nothing once coded as row deltas), and the
step is chosen for a rate: a coarser step concentrates the symbols near 0, which
the rANS coder turns into fewer bits.  High-rate rule: halving the step costs one
bit per weight and buys 6 dB.

Steps come per row (shape (rows,)) or per block (shape (rows, cols/32)): with
per-block absmax, row_steps gives each block its row's step unless the block
holds a weight beyond 127 steps, which then takes its own step absmax/127, as
stock Q8_0 does for every block (an escape).  Without escapes the row's step
could never go below the row's absmax/127, and rows with outliers capped the
rate near 6.6-6.9 bits at an SNR a 6.56-bit Q6_K matched (EmbeddingGemma); an
escaped block costs two nonzero scale deltas, and below ~5.5 bpw hardly any
block escapes.

Invariants kept by every function here:
  * the step used to divide is the f16-rounded step that is stored, so that
    dequantizing the blocks gives exactly q*d (no hidden float32 step);
  * a step is never below the absmax/127 of the weights it codes (the row's, or
    with per-block steps the block's), so nothing is clipped and |q| <= 127
    (-128 never occurs: llama.cpp's dot products assume a symmetric range).
"""
from __future__ import annotations

from dataclasses import dataclass

import gguf
import numpy as np

# weights per Q8_0 block, bytes per block (f16 scale + QK int8)
QK, BLOCK_BYTES = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0]
QMAX = 127
# Rounding offset: q = sign(x) floor(|x|/d + 0.5 - theta).  theta > 0 widens the
# zero bin (a dead zone).  Measured on MiniLM's float weights at a matched rate
# (rate-controlled per tensor): theta 0 is best from 4 bpw up (0.15 loses 0.8 dB
# at 4.5 bpw, 0.9 dB at 6 bpw); only below ~3 bpw does a small dead zone win
# (+0.16 dB for 0.05 at 2.5 bpw).  So plain rounding by default.
DEFAULT_THETA = 0.0
_F16_TINY = np.float16(2.0 ** -24)   # smallest positive f16: a step is never 0
_CHUNK = 1 << 20                     # elements per pass: keeps temporaries in cache


def row_absmax(w: np.ndarray) -> np.ndarray:
    return np.max(np.abs(w), axis=1)


def block_absmax(w: np.ndarray) -> np.ndarray:
    """(rows, cols/32) absmax of each Q8_0 block."""
    rows, cols = w.shape
    return np.max(np.abs(w.reshape(rows, cols // QK, QK)), axis=2)


def row_steps(base: float, row_factor: np.ndarray | None, amax: np.ndarray) -> np.ndarray:
    """f16 steps: base*row_factor, raised where needed so that the largest
    weight still fits in [-127, 127] after rounding to f16.  amax: row_absmax
    (one step per row) or block_absmax (a step per block: the row's, but where
    a block's weights need more, the block's own, an escape)."""
    want = np.full(amax.shape[0], base, np.float32) if row_factor is None else \
        (base * row_factor).astype(np.float32)
    if amax.ndim == 2:
        want = np.broadcast_to(want[:, None], amax.shape)
    floor = (amax / QMAX).astype(np.float32)
    d = np.maximum(want, floor).astype(np.float16)
    # f16 rounding may land just below absmax/127: step up one f16 ulp there
    low = d.astype(np.float32) < floor
    if low.any():
        d[low] = np.nextafter(d[low], np.float16(np.inf))
    return np.maximum(d, _F16_TINY)


def per_weight(d: np.ndarray, cols: int) -> np.ndarray:
    """Steps (rows,) or (rows, cols/32) as an array that broadcasts against
    (rows, cols): (rows, 1) or each block's step repeated over its 32 weights."""
    return d[:, None] if d.ndim == 1 else np.repeat(d, QK, axis=1)


def quantize_rows(w: np.ndarray, d16: np.ndarray, theta: float = DEFAULT_THETA) -> np.ndarray:
    """int8 symbols of a (rows, cols) float32 tensor with f16 steps per row or
    per block (row_steps)."""
    rows, cols = w.shape
    q = np.empty((rows, cols), np.int8)
    inv = (1.0 / d16.astype(np.float32)).astype(np.float32)
    off = np.float32(0.5 - theta)
    step = max(1, _CHUNK // max(cols, 1))
    for r0 in range(0, rows, step):
        blk = w[r0:r0 + step]
        x = np.abs(blk, dtype=np.float32)
        x *= per_weight(inv[r0:r0 + step], cols)
        x += off
        np.floor(x, out=x)
        np.minimum(x, QMAX, out=x)
        np.copysign(x, blk, out=x)
        q[r0:r0 + step] = x
    return q


def pack_q8_0(q: np.ndarray, d16: np.ndarray) -> np.ndarray:
    """Q8_0 bytes, shape (rows, cols/32*34), of int8 symbols and f16 steps per
    row or per block."""
    rows, cols = q.shape
    nb = cols // QK
    out = np.empty((rows, nb, BLOCK_BYTES), np.uint8)
    out[:, :, :2] = d16.astype("<f2").view(np.uint8).reshape(rows, -1, 2)
    out[:, :, 2:] = q.reshape(rows, nb, QK).view(np.uint8)
    return out.reshape(rows, nb * BLOCK_BYTES)


def dequantize_rows(q: np.ndarray, d16: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) * per_weight(d16.astype(np.float32), q.shape[1])


def _entropy_bits(counts: np.ndarray) -> float:
    """Order-0 entropy in bits of the whole sequence whose histogram is counts."""
    n = counts.sum()
    if n == 0:
        return 0.0
    p = counts[counts > 0] / n
    return float(-(p * np.log2(p)).sum() * n)


def symbol_entropy(q: np.ndarray) -> float:
    """Order-0 entropy of the int8 symbols, bits per symbol."""
    counts = np.bincount(q.reshape(-1).view(np.uint8), minlength=256)
    return _entropy_bits(counts) / max(q.size, 1)


def scale_bytes(d16: np.ndarray, blocks_per_row: int) -> tuple[np.ndarray, int]:
    """The scale stream's bytes as the codec stores it (FORMAT.md: flag bit 0,
    each scale after the first of its row replaced by its difference to the
    previous one, mod 2^16): (the (n, 2) low/high bytes of the values that are
    not zero deltas, the number of zero deltas left out).  Per-row steps: one
    f16 per row and nb-1 zero deltas."""
    if d16.ndim == 1:
        return d16.astype("<f2").view(np.uint8).reshape(-1, 2), len(d16) * (blocks_per_row - 1)
    u = d16.astype("<f2").view("<u2").astype(np.int64)
    u[:, 1:] = (u[:, 1:] - u[:, :-1]) & 0xFFFF
    keep = u != 0
    keep[:, 0] = True
    v = u[keep].astype("<u2")
    return v.view(np.uint8).reshape(-1, 2), int(u.size - keep.sum())


def scale_stream_bits(d16: np.ndarray, blocks_per_row: int) -> float:
    """Order-0 bits of the scale stream (scale_bytes; low and high bytes use
    separate tables)."""
    b, zeros = scale_bytes(d16, blocks_per_row)
    bits = 0.0
    for k in range(2):
        c = np.bincount(b[:, k], minlength=256).astype(np.float64)
        c[0] += zeros
        bits += _entropy_bits(c)
    return bits


@dataclass
class QuantStats:
    bits_symbols: float    # order-0 entropy of the int8 symbols, bits/weight
    bits_scales: float     # scale stream, bits/weight
    snr_db: float          # plain SNR of the dequantized tensor
    wsnr_db: float         # SNR with column weights (activation statistics)
    zero_fraction: float   # share of symbols equal to 0

    @property
    def bpw(self) -> float:
        return self.bits_symbols + self.bits_scales


class RateDistortion:
    """Accumulates rate and distortion of a tensor coded row chunk by row chunk
    (the whole-tensor order-0 entropy needs the whole histogram)."""

    def __init__(self, n_cols: int, col_weight: np.ndarray | None = None):
        self.cols = n_cols
        self.err2 = np.zeros(n_cols, np.float64)
        self.sig2 = np.zeros(n_cols, np.float64)
        self.hist = np.zeros(256, np.int64)
        self.scale_hist = np.zeros((2, 256), np.float64)
        self.n = 0
        self.cw = None if col_weight is None else col_weight.astype(np.float64)

    def add(self, w: np.ndarray, q: np.ndarray, d16: np.ndarray, counts: np.ndarray | None = None) -> None:
        """counts: the (2, 256) histogram by trellis class of trellis-coded
        symbols (quantize_trellis), which the coder pays as that, not as q's."""
        step = max(1, _CHUNK // max(self.cols, 1))
        for r0 in range(0, w.shape[0], step):
            blk = w[r0:r0 + step].astype(np.float32)
            e = dequantize_rows(q[r0:r0 + step], d16[r0:r0 + step]) - blk
            self.err2 += np.einsum("ij,ij->j", e, e, dtype=np.float64)
            self.sig2 += np.einsum("ij,ij->j", blk, blk, dtype=np.float64)
        self.hist += np.bincount(q.reshape(-1).view(np.uint8), minlength=256)
        if counts is not None:
            self.class_hist = counts.astype(np.int64) + getattr(self, "class_hist", 0)
        b, zeros = scale_bytes(d16, self.cols // QK)
        for k in range(2):
            self.scale_hist[k] += np.bincount(b[:, k], minlength=256)
            self.scale_hist[k, 0] += zeros      # zero row deltas
        self.n += q.size

    def result(self) -> QuantStats:
        def snr(s, e):
            return float("inf") if e == 0 else 10 * np.log10(max(s, 1e-300) / e)
        cw = np.ones_like(self.err2) if self.cw is None else self.cw
        n = max(self.n, 1)
        return QuantStats(
            bits_symbols=(sum(_entropy_bits(h) for h in self.class_hist) if hasattr(self, "class_hist")
                          else _entropy_bits(self.hist)) / n,
            bits_scales=sum(_entropy_bits(h) for h in self.scale_hist) / n,
            snr_db=snr(self.sig2.sum(), self.err2.sum()),
            wsnr_db=snr((self.sig2 * cw).sum(), (self.err2 * cw).sum()),
            zero_fraction=float(self.hist[0] / n),
        )


def measure(w: np.ndarray, q: np.ndarray, d16: np.ndarray,
            col_weight: np.ndarray | None = None) -> QuantStats:
    """Rate and distortion of (q, d16) as a code of w, in w's own coordinates."""
    rd = RateDistortion(w.shape[1], col_weight)
    rd.add(w, q, d16)
    return rd.result()


def reference_step(amax: np.ndarray) -> float:
    """The step that `--step 1` means: the median over rows of absmax/127, i.e.
    about what one step per row at full int8 range gives."""
    return float(np.median(amax)) / QMAX if amax.size else 1.0


def sample_rows(n_rows: int, n_cols: int, budget: int = 1 << 18) -> np.ndarray:
    """Evenly spread rows holding about `budget` weights, for rate estimation."""
    k = max(1, min(n_rows, budget // max(n_cols, 1)))
    return np.unique(np.linspace(0, n_rows - 1, k).round().astype(np.int64))


def steps_per_block(d16: np.ndarray, cols: int) -> np.ndarray:
    """f16 steps per row or per block as float32 (rows, cols/32)."""
    d = d16.astype(np.float32)
    return np.ascontiguousarray(np.broadcast_to(d[:, None], (d.shape[0], cols // QK)) if d.ndim == 1 else d)


def quantize_trellis(w: np.ndarray, d16: np.ndarray, rows_per_chunk: int,
                     u: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Trellis-coded int8 levels of the rows w on their f16 steps d16 (per row
    or per block), lanes restarting every rows_per_chunk rows, and their (2,
    256) counts by trellis class (codec.tcq_quantize).  A trellis frame codes
    each level with its class's table: the classes are the levels' parity, so
    the coder pays about one bit less than for the same levels as plain
    symbols, and the path search (Viterbi, in C) buys a grid of step d at the
    price of step 2d.  Measured: 0.9 dB over rounding at equal entropy on
    Gaussian and Laplacian sources; SmolLM2 at 3.97 bpw, KL divergence 0.118
    against 0.151 (Alice, 6 x 512 tokens).  The path search minimises the
    error alone: with a rate term (codec.tcq_quantize's mu, code lengths from a
    first pass) EmbeddingGemma's blk.12.ffn_up at 3.885 bits gained 0.02 dB at
    most (mu 0.05-0.5) and the embedding cosine at 3.9 bpw stayed 0.9848, as
    the only cheaper move in a subset is 4 levels away.  u: with error feedback through
    this factor in lane order (feedback.Factors.get(lanes=True)), the rows
    decided lane after lane (codec.tcq_feedback)."""
    from .. import codec
    steps = steps_per_block(d16, w.shape[1])
    if u is not None:
        return codec.tcq_feedback(w, steps, rows_per_chunk, u)
    return codec.tcq_quantize(w, steps, rows_per_chunk)


def trellis_bits(counts: np.ndarray) -> float:
    """Bits of trellis-coded symbols with these (2, 256) counts by class."""
    return sum(_entropy_bits(np.asarray(c, np.float64)) for c in counts)


def step_for_rate(w: np.ndarray, target_bpw: float, row_factor: np.ndarray | None = None,
                  amax: np.ndarray | None = None, theta: float = DEFAULT_THETA,
                  tol: float = 0.003, max_iter: int = 40, symbol_bits=None) -> float:
    """Base step at which symbols + scales cost `target_bpw` bits per weight
    (order-0 entropy).  w may be a row sample of the tensor: the rate of a
    uniform quantizer is a per-weight average, so ~256k weights estimate it to a
    few thousandths of a bit.  Search in log2(step): safeguarded secant inside a
    bisection bracket (the rate falls about one bit per doubling).
    symbol_bits(w, d16): bits per weight of the symbols at steps d16 (default:
    the order-0 entropy of plain rounding)."""
    if amax is None:
        amax = row_absmax(w)
    nb = w.shape[1] // QK

    def rate(log_step: float) -> float:
        d = row_steps(2.0 ** log_step, row_factor, amax)
        sym = symbol_bits(w, d) if symbol_bits else symbol_entropy(quantize_rows(w, d, theta))
        return sym + scale_stream_bits(d, nb) / w.size

    # start from the high-rate estimate: rate ~ target where step ~ rms * 2^(2.05 - bits)
    rms = float(np.sqrt(np.mean(np.square(w, dtype=np.float64)))) or 1.0
    x = np.log2(rms) + 2.05 - target_bpw
    lo, hi = -np.inf, np.inf          # log steps with rate above / below target
    r_lo = r_hi = None
    fx = rate(x) - target_bpw
    for _ in range(max_iter):
        if abs(fx) <= tol:
            return 2.0 ** x
        if fx > 0:
            lo, r_lo = x, fx
        else:
            hi, r_hi = x, fx
        if np.isfinite(lo) and np.isfinite(hi):
            if hi - lo < 1e-4:
                break
            # secant between the bracket ends, kept away from them
            t = r_lo / (r_lo - r_hi)
            x = lo + min(max(t, 0.1), 0.9) * (hi - lo)
        else:
            x = x + fx                  # rate falls ~1 bit per doubling
        fx = rate(x) - target_bpw
    # rates are discrete near the clipping floor: return the side within budget
    if fx <= 0 or not np.isfinite(hi):
        return 2.0 ** x
    return 2.0 ** hi
