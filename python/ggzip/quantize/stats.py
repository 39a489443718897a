"""Activation statistics: per input column j of a weight, c_j = E[x_j^2].

Sources:
  * an imatrix of llama-imatrix (llama.cpp).  The GGUF form (default since mid
    2025) holds, per weight `<name>`, a tensor `<name>.in_sum2` (ne0 = columns,
    ne1 = experts) of summed squared activations and `<name>.counts` (ne0 = 1 or
    experts) of how many activation rows were summed, so c = in_sum2 / counts.  The
    legacy .dat form: i32 entry count, then per entry i32 name length, name, i32
    ncall, i32 nval, nval f32 values = mean(x^2) * ncall; then i32 chunk count and
    the dataset name.
  * none: weight-only proxy (see fold.py): a column fed by an RMSNorm gets the
    square of the norm's weight, every other column weight 1.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from ..errors import GGZipError


def load_imatrix(path: str | Path) -> dict[str, np.ndarray]:
    """{weight name: E[x^2] per input column (float64)} from an imatrix file.
    Mixture-of-experts entries (several matrices) are averaged over experts."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise GGZipError(f"{path}: cannot read imatrix: {e.strerror}") from None
    if magic == b"GGUF":
        return _load_gguf(path)
    return _load_dat(path)


def _load_gguf(path: Path) -> dict[str, np.ndarray]:
    from ..container import GGZipReader
    from ..container.gguf_io import T
    sums, counts = {}, {}
    with GGZipReader(path) as r:   # GGZipError naming the file (and tensor) on damage
        for name in r.tensors:
            if name.endswith(".in_sum2"):
                sums[name[:-len(".in_sum2")]] = name
            elif name.endswith(".counts"):
                counts[name[:-len(".counts")]] = name
        if not sums:
            raise GGZipError(f"{path}: GGUF has no '<tensor>.in_sum2' entries: not an imatrix")
        out = {}
        for name, s_name in sums.items():
            if name not in counts:
                raise GGZipError(f"{path}: imatrix entry {name!r} has in_sum2 but no counts")
            for t in (r.tensors[s_name], r.tensors[counts[name]]):
                if t.ggml_type != T.F32:
                    raise GGZipError(f"{path}: imatrix tensor {t.name} is {t.type_name}, "
                                     "expected F32")
            ne0 = int(r.tensors[s_name].ne[0])
            s2 = r.array(s_name).astype(np.float64).reshape(-1, ne0)
            c = r.array(counts[name]).astype(np.float64).reshape(-1)
            if c.size != s2.shape[0]:
                raise GGZipError(f"{path}: imatrix entry {name!r}: {s2.shape[0]} matrices "
                                 f"but {c.size} counts")
            used = c > 0
            if not used.any():
                continue       # never activated during calibration: no information
            out[name] = (s2[used] / c[used, None]).mean(axis=0)
    return out


def _load_dat(path: Path) -> dict[str, np.ndarray]:
    data = path.read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise GGZipError(f"{path}: truncated or not an imatrix (.dat) file")
        v = struct.unpack_from(fmt, data, pos)
        pos += size
        return v

    (n,) = take("<i")
    if not 0 < n < 1_000_000:
        raise GGZipError(f"{path}: not an imatrix file (neither GGUF nor legacy .dat)")
    out = {}
    for _ in range(n):
        (ln,) = take("<i")
        if not 0 < ln < 4096:
            raise GGZipError(f"{path}: corrupt imatrix entry name length {ln}")
        name = bytes(take(f"<{ln}s")[0]).decode("utf-8", "replace")
        ncall, nval = take("<ii")
        vals = np.array(take(f"<{nval}f"), np.float64)
        if ncall > 0:
            out[name] = vals / ncall
    return out
