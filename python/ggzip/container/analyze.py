"""analyze_file: where the bits of a GGUF go, per tensor and in total.

For each tensor: its size, the order-0 entropy bound of its bytes under the layout
ggzip codes it with, the size of ggzip's frame, and what general-purpose
compressors reach (zstd levels 3 and 19, lz4).  zstd -19 runs at a few MB/s, so
tensors larger than `sample_bytes` are measured on evenly spread row ranges of
that total size, and their sizes are scaled (the report says which and by how
much); ggzip and the entropy bound always see the whole tensor.

For Q8_0 tensors it also answers "what would a coarser quantization grain give":
the order-0 entropy of the int8 symbols as stored (one scale per 32-block), and
after requantizing each row with one shared scale (absmax of the row / 127), on up
to `grain_rows` sampled rows.  Per-block absmax scaling spreads every block over
the full int8 range; one step per row leaves small blocks on small symbols, which
is where ggzip's converter finds its entropy.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from .. import codec
from . import gguf_io as G
from .reader import GGZipReader
from .writer import layout_for

SAMPLE_BYTES = 512 * 1024
GRAIN_ROWS = 512


def _compressors():
    """name -> compress(bytes) -> int, and notes on what is missing."""
    out, notes = {}, []
    try:
        import zstandard
        z3, z19 = zstandard.ZstdCompressor(level=3), zstandard.ZstdCompressor(level=19)
        out["zstd3"] = lambda b: len(z3.compress(b))
        out["zstd19"] = lambda b: len(z19.compress(b))
    except ImportError:
        notes.append("zstandard is not installed: no zstd columns (pip install zstandard)")
    try:
        import lz4.frame
        out["lz4"] = lambda b: len(lz4.frame.compress(b))
    except ImportError:
        notes.append("lz4 is not installed: no lz4 column (pip install lz4)")
    return out, notes


def _sample(data: np.ndarray, row: int, limit: int) -> tuple[bytes, float]:
    """Up to `limit` bytes of data in 8 evenly spread runs of whole rows, and the
    fraction of the tensor they are."""
    n = data.size
    if not limit or n <= limit:
        return data.tobytes(), 1.0
    rows = n // row
    per = max(1, limit // 8 // row)
    starts = np.linspace(0, rows - per, 8).astype(np.int64)
    parts = [data[s * row:(s + per) * row] for s in np.unique(starts)]
    b = b"".join(p.tobytes() for p in parts)
    return b, len(b) / n


def _entropy_bits(sym: np.ndarray) -> float:
    """Order-0 entropy in bits of uint8 symbols (any shape; counted by slices of
    rows, since np.bincount widens its input to int64)."""
    c = np.zeros(256, np.int64)
    rows = sym.reshape(sym.shape[0], -1) if sym.ndim > 1 else sym.reshape(1, -1)
    per = max(1, (1 << 22) // max(rows.shape[1], 1))
    for i in range(0, rows.shape[0], per):
        c += np.bincount(rows[i:i + per].reshape(-1), minlength=256)
    p = c[c > 0] / sym.size
    return float(-(p * np.log2(p)).sum())


def q8_0_grain(data: np.ndarray, ne0: int, max_rows: int = GRAIN_ROWS) -> dict:
    """Symbol entropy (bits) of Q8_0 data as stored and requantized with one
    scale per row (on up to max_rows evenly spread rows)."""
    qk, block_bytes = G.type_sizes(G.T.Q8_0)
    blocks = data.reshape(-1, ne0 // qk, block_bytes)
    rows = blocks.shape[0]
    sel = np.unique(np.linspace(0, rows - 1, min(rows, max_rows)).astype(np.int64))
    b = blocks[sel]
    d = b[:, :, :2].copy().view("<f2")[..., 0].astype(np.float32)      # (rows, blocks)
    q = b[:, :, 2:].copy().view(np.int8)                                 # (rows, blocks, 32)
    x = q.astype(np.float32) * d[:, :, None]
    step = np.abs(x).reshape(len(sel), -1).max(axis=1) / 127
    step[step == 0] = 1
    q_row = np.clip(np.rint(x / step[:, None, None]), -127, 127).astype(np.int8)
    err = x - q_row * step[:, None, None]
    sig = float((x.astype(np.float64) ** 2).mean())
    return {"rows_sampled": int(len(sel)), "rows": int(rows),
            "symbol_entropy_bits": _entropy_bits(blocks[:, :, 2:].view(np.uint8)),
            "row_scale_symbol_entropy_bits": _entropy_bits(q_row.view(np.uint8)),
            "row_scale_snr_db": float(10 * np.log10(sig / max(float((err.astype(np.float64) ** 2).mean()), 1e-30)))}


def _bytes(col: str) -> str:
    return "bytes" if col == "raw" else f"{col}_bytes"


def analyze_file(path, *, sample_bytes: int = SAMPLE_BYTES, grain_rows: int = GRAIN_ROWS,
                 threads: int = 0, progress: bool = True) -> dict:
    """The report (a dict, JSON-ready): "tensors" (one entry per tensor, sizes in
    bytes, "bpw_*" in bits per weight), "total", "notes"."""
    from tqdm import tqdm
    path = Path(path)
    comps, notes = _compressors()
    columns = ["raw", "entropy", "ggzip"] + list(comps)
    t0 = time.perf_counter()
    out = []
    with GGZipReader(path) as r:
        tensors = list(r.tensors.values())
        bar = tqdm(total=sum(t.nbytes for t in tensors), unit="B", unit_scale=True, desc="analyze",
                   file=sys.stderr, leave=False, disable=None if progress else True)
        for t in tensors:
            data = np.ascontiguousarray(r.data(t.name))
            layout, row = layout_for(t.ggml_type, t.ne)
            if t.coded:
                frame_size = t.stored
            else:
                frame_size = len(codec.encode(data, layout=layout, row_size=row, threads=threads))
            e = {"name": t.name, "type": t.type_name, "ne": list(t.ne), "n_elements": t.n_elements,
                 "bytes": t.nbytes, "layout": layout,
                 "entropy_bytes": codec.entropy_bound(data, layout, row_size=row),
                 "ggzip_bytes": frame_size, "stored_coded": t.coded}
            sample, frac = _sample(data, G.tensor_nbytes(t.ggml_type, t.ne[:1]), sample_bytes)
            e["sampled_fraction"] = frac
            for name, f in comps.items():
                e[f"{name}_bytes"] = f(sample) / frac
            if t.ggml_type == G.T.Q8_0 and len(t.ne) >= 2:
                e["q8_0"] = q8_0_grain(data, t.ne[0], grain_rows)
            for col in columns:
                e["bpw" if col == "raw" else f"bpw_{col}"] = 8 * e[_bytes(col)] / max(t.n_elements, 1)
            out.append(e)
            del data, sample
            r.release(t.name)
            bar.update(t.nbytes)
        bar.close()
        size = r.size
    total = {"file_bytes": size, "n_tensors": len(out),
             "n_elements": sum(e["n_elements"] for e in out)}
    for col in columns:
        total[_bytes(col)] = float(sum(e[_bytes(col)] for e in out))
        total[f"ratio_{col}"] = total["bytes"] / max(total[_bytes(col)], 1)
    q8 = [e for e in out if "q8_0" in e]
    if q8:
        w = np.array([e["n_elements"] for e in q8], np.float64)
        total["q8_0_symbol_entropy_bits"] = float(np.average([e["q8_0"]["symbol_entropy_bits"] for e in q8], weights=w))
        total["q8_0_row_scale_symbol_entropy_bits"] = float(np.average(
            [e["q8_0"]["row_scale_symbol_entropy_bits"] for e in q8], weights=w))
    if any(e["sampled_fraction"] < 1 for e in out) and comps:
        notes.append(f"{', '.join(comps)}: tensors above {sample_bytes} bytes measured on "
                     f"{sample_bytes} bytes of evenly spread rows, sizes scaled")
    if q8:
        notes.append(f"q8_0 grain: symbol entropy with one scale per row, on up to {grain_rows} "
                     "evenly spread rows per tensor")
    return {"file": str(path), "seconds": time.perf_counter() - t0, "tensors": out,
            "total": total, "notes": notes}


def format_report(rep: dict) -> str:
    cols = [c for c in ("zstd3", "zstd19", "lz4") if f"{c}_bytes" in rep["total"]]
    head = f"{'tensor':40s} {'type':6s} {'MB':>8s} {'bpw':>6s} {'H0':>6s} {'ggzip':>6s}" + \
        "".join(f" {c:>6s}" for c in cols) + f" {'q8 H':>6s} {'row H':>6s}"
    lines = [head]
    for e in rep["tensors"]:
        g = e.get("q8_0")
        lines.append(
            f"{e['name'][:40]:40s} {e['type']:6s} {e['bytes'] / 1e6:8.2f} {e['bpw']:6.2f} "
            f"{e['bpw_entropy']:6.2f} {e['bpw_ggzip']:6.2f}" +
            "".join(f" {e[f'bpw_{c}']:6.2f}" for c in cols) +
            (f" {g['symbol_entropy_bits']:6.2f} {g['row_scale_symbol_entropy_bits']:6.2f}" if g else "") +
            (" *" if e["sampled_fraction"] < 1 else ""))
    t = rep["total"]
    n = max(t["n_elements"], 1)
    lines.append(
        f"{'total':40s} {'':6s} {t['bytes'] / 1e6:8.2f} {8 * t['bytes'] / n:6.2f} "
        f"{8 * t['entropy_bytes'] / n:6.2f} {8 * t['ggzip_bytes'] / n:6.2f}" +
        "".join(f" {8 * t[f'{c}_bytes'] / n:6.2f}" for c in cols))
    lines.append("ratio vs raw tensor bytes: " + ", ".join(
        [f"entropy bound {t['ratio_entropy']:.3f}", f"ggzip {t['ratio_ggzip']:.3f}"] +
        [f"{c} {t[f'ratio_{c}']:.3f}" for c in cols]))
    if "q8_0_symbol_entropy_bits" in t:
        lines.append(f"Q8_0 symbols: {t['q8_0_symbol_entropy_bits']:.2f} bits as stored (scale per 32), "
                     f"{t['q8_0_row_scale_symbol_entropy_bits']:.2f} bits with one scale per row")
    lines.append("columns: bits per weight; H0 = order-0 entropy bound of the ggzip layout; "
                 "q8 H / row H = Q8_0 symbol entropy per block / per row scale; * = sampled")
    lines += [f"note: {x}" for x in rep["notes"]]
    return "\n".join(lines)


def plot_report(rep: dict, out: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ts = [e for e in rep["tensors"] if e["bytes"] >= 4096]
    x = np.arange(len(ts))
    fig, ax = plt.subplots(figsize=(max(8, len(ts) * 0.08), 5))
    for key, label, style in (("bpw", "raw", "k-"), ("bpw_entropy", "order-0 entropy", "g:"),
                              ("bpw_ggzip", "ggzip", "b.-"), ("bpw_zstd19", "zstd -19", "r.-"),
                              ("bpw_zstd3", "zstd -3", "m.-"), ("bpw_lz4", "lz4", "y.-")):
        if ts and key in ts[0]:
            ax.plot(x, [e[key] for e in ts], style, label=label, lw=0.8, ms=3)
    ax.set_xlabel("tensor (file order, >= 4 KiB)")
    ax.set_ylabel("bits per weight")
    ax.set_title(Path(rep["file"]).name)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
