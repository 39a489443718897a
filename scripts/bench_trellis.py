#!/usr/bin/env python3
"""Decode speed of trellis-coded frames against rounded ones, side by side.

    python scripts/bench_trellis.py [--model smollm2] [--bpw 4.5] [--repeat 9] [--out FILE | --no-write]

Converts the model (ggzip fetch) at --bpw with an imatrix from the calibration
text twice: with convert's default, trellis-coded quantization (11-bit tables
by trellis class: format version 2, or 3 where the scales are coded by row
steps), and with --no-trellis (rounding: version 1, or 3).  Then decodes
every Q8_0 frame of both files on one thread with each decode kernel the CPU
runs, the two files interleaved run by run
(the machine is shared: a ratio from one run is worth more than two runs'
speeds), into buffers allocated and faulted in once, each decode checked (off
the clock) against the bytes the library decoded first.  Reports MB/s
of decoded bytes (medians of --repeat) and the trellis/rounding ratio.
Writes BENCHMARKS.md section "trellis" unless --no-write.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmd import BENCH_MD, provenance, write_section  # noqa: E402

CALIB_TEXT = ROOT / "tests" / "data" / "declaration.txt"


def frames(path: Path) -> list[tuple[str, bytes, np.ndarray]]:
    """(name, frame, decoded bytes) of the file's coded Q8_0 tensors."""
    import gguf
    from ggzip import codec
    from ggzip.container import GGZipReader
    out = []
    with GGZipReader(path) as r:
        for name, t in r.tensors.items():
            if t.coded and t.ggml_type == gguf.GGMLQuantizationType.Q8_0:
                f = bytes(r.stored(name))
                out.append((name, f, codec.decode(f, threads=1)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--bpw", type=float, default=4.5)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--out", type=Path, default=BENCH_MD)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)

    from ggzip import codec
    from ggzip.codec._native import ffi, lib
    from ggzip.convert import convert
    from ggzip.fetch import fetch
    src = fetch(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        files = {"trellis": Path(tmp) / "trellis.gguf", "rounding": Path(tmp) / "rounding.gguf"}
        for name, path in files.items():
            convert(src, path, target_bpw=args.bpw, calib_text=CALIB_TEXT, progress=False,
                    trellis=None if name == "trellis" else False)
        sets = {name: frames(path) for name, path in files.items()}
        sizes = {name: path.stat().st_size for name, path in files.items()}
    versions = {name: sorted({codec.info(f).version for _, f, _ in fr}) for name, fr in sets.items()}
    raw = {name: sum(d.size for _, _, d in fr) for name, fr in sets.items()}
    names = []
    for i in range(lib.ggz_kernel_count()):
        avail = ffi.new("int *")
        n = ffi.string(lib.ggz_kernel_info(i, avail, ffi.NULL)).decode()
        if avail[0]:
            names.append(n)
    # outputs allocated and faulted in once: no decode pays for fresh pages
    outs = {name: [np.ones_like(d) for _, _, d in fr] for name, fr in sets.items()}
    rows = []
    for k in names:
        lib.ggz_set_kernel(k.encode())
        times = {name: [] for name in sets}
        for _ in range(args.repeat):
            for name, fr in sets.items():
                t0 = time.perf_counter()
                for (tname, f, want), out in zip(fr, outs[name]):
                    codec.decode(f, out, threads=1)
                times[name].append(time.perf_counter() - t0)
                for (tname, f, want), out in zip(fr, outs[name]):      # checked, off the clock
                    if not np.array_equal(out, want):
                        sys.exit(f"bench_trellis: {name} {tname}: kernel {k} decoded other bytes")
        mbs = {name: raw[name] / statistics.median(t) / 1e6 for name, t in times.items()}
        rows.append((k, mbs["trellis"], mbs["rounding"], mbs["trellis"] / mbs["rounding"]))
        print(f"{k}: trellis {mbs['trellis']:.0f} MB/s, rounding {mbs['rounding']:.0f} MB/s, "
              f"ratio {mbs['trellis'] / mbs['rounding']:.3f}", flush=True)
    lines = [provenance("bench_trellis.py", sys.argv[1:] if argv is None else argv), "",
             f"{args.model} converted at --target-bpw {args.bpw:g} with an imatrix of "
             f"tests/data/declaration.txt: trellis (convert's default; frame versions "
             f"{versions['trellis']}, {sizes['trellis'] / 1e6:.2f} MB) and --no-trellis (versions "
             f"{versions['rounding']}, {sizes['rounding'] / 1e6:.2f} MB). Every coded Q8_0 frame "
             f"decoded on one thread ({raw['trellis'] / 1e6:.1f} MB of Q8_0), the two files "
             f"interleaved, medians of {args.repeat}; every decode checked.", "",
             "| kernel | trellis MB/s | rounding MB/s | trellis / rounding |", "|---|---|---|---|"]
    lines += [f"| {k} | {t:.0f} | {r:.0f} | {x:.3f} |" for k, t, r, x in rows]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("trellis", "## Trellis-coded frames: decode speed\n\n" + text, args.out)
        print(f"wrote {args.out} (section trellis)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
