"""CLI: `ggzip compress`, `decompress`, `verify`, `analyze`."""
from __future__ import annotations

import json
import sys

# --chunk-kib of compress and convert
CHUNK_KIB_HELP = ("raw KiB per rANS chunk at most (default 256; the count is rounded up to a multiple of 4, "
                  "else 2, where chunks stay at least 32 KiB): smaller chunks share a tensor kept compressed "
                  "in RAM (GGZIP_KEEP) among more threads, for about 270 bytes each")


def _progress(args) -> bool:
    return not getattr(args, "quiet", False)


def _compress(args) -> int:
    from .files import compress_file
    rep = compress_file(args.input, args.output, threads=args.threads, progress=_progress(args),
                        chunk_size=args.chunk_kib * 1024)
    print(rep.summary())
    return 0


def _decompress(args) -> int:
    from .files import decompress_file
    rep = decompress_file(args.input, args.output, progress=_progress(args), threads=args.threads or 0)
    same = {True: ", sha256 of the original checked", False: "", None: " (no sha256 recorded: made by convert, "
            "this is the plain GGUF of its tensors)"}[rep["identical"]]
    print(f"{rep['src']} -> {rep['dst']}: {rep['in_size'] / 1e6:.1f} MB -> {rep['out_size'] / 1e6:.1f} MB"
          f" in {rep['seconds']:.2f} s, {rep['out_size'] / 1e6 / max(rep['seconds'], 1e-9):.0f} MB/s{same}")
    return 0


def _verify(args) -> int:
    from .files import verify_file
    rep = verify_file(args.file, progress=_progress(args), threads=args.threads or 0)
    if args.json:
        json.dump(rep, sys.stdout, indent=1)
        print()
        return 0
    ident = {True: "decompresses to the original (sha256 matches)", None: "no original sha256 recorded",
             False: "sha256 differs"}[rep["identical"]]
    print(f"{rep['file']}: OK, {rep['coded']}/{rep['tensors']} tensors coded, every frame decoded and "
          f"CRC-checked; {ident}; {rep['original_size'] / 1e6:.1f} MB in {rep['seconds']:.2f} s "
          f"({rep['original_size'] / 1e6 / max(rep['seconds'], 1e-9):.0f} MB/s)")
    return 0


def _analyze(args) -> int:
    from .analyze import analyze_file, format_report, plot_report
    rep = analyze_file(args.file, sample_bytes=0 if args.full else args.sample_bytes,
                       threads=args.threads or 0, progress=_progress(args))
    if args.json:
        json.dump(rep, sys.stdout, indent=1)
        print()
    else:
        print(format_report(rep))
    if args.plot:
        plot_report(rep, args.plot)
        print(f"plot: {args.plot}", file=sys.stderr)
    return 0


def register(sub) -> None:
    p = sub.add_parser("compress", help="code a GGUF's tensors with rANS (lossless; runs in patched llama.cpp)",
                       description="Write a ggzip GGUF: every tensor coded where it saves at least 1%, "
                                   "the rest kept plain; `ggzip decompress` gives the input back byte "
                                   "for byte.  OUT is written to a temporary file and renamed when complete.")
    p.add_argument("input", help="GGUF file")
    p.add_argument("output", help="ggzip GGUF to write")
    p.add_argument("-t", "--threads", type=int, default=None, metavar="N", help="encoder threads (default: all cores)")
    p.add_argument("--chunk-kib", type=int, default=0, metavar="KIB",
                   help=CHUNK_KIB_HELP)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_compress)

    p = sub.add_parser("decompress", help="give back the original GGUF of a ggzip GGUF",
                       description="Decode every tensor and write the original GGUF, byte-identical "
                                   "(its sha256 is checked).")
    p.add_argument("input", help="ggzip GGUF")
    p.add_argument("output", help="GGUF to write")
    p.add_argument("-t", "--threads", type=int, default=None, metavar="N", help="decoder threads (default: all cores)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_decompress)

    p = sub.add_parser("verify", help="decode every frame of a ggzip GGUF and check every CRC",
                       description="Decode every frame (every chunk CRC checked) and check that the "
                                   "file decompresses to the original's sha256.  Exit code 1 and the "
                                   "tensor's name on damage.")
    p.add_argument("file", help="ggzip GGUF")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("-t", "--threads", type=int, default=None, metavar="N",
                   help="decoder threads (default: all cores)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_verify)

    p = sub.add_parser("analyze", help="per tensor: entropy, ggzip vs zstd vs lz4, coarser Q8_0 grain",
                       description="Bits per weight of every tensor: raw, order-0 entropy bound, ggzip, "
                                   "zstd -3/-19, lz4; for Q8_0 the symbol entropy with one scale per row.  "
                                   "Plain or ggzip GGUFs.")
    p.add_argument("file", help="GGUF or ggzip GGUF")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--plot", metavar="PNG", help="plot bits/weight per tensor (matplotlib)")
    p.add_argument("--full", action="store_true", help="run zstd/lz4 on whole tensors (slow: zstd -19 "
                                                       "is a few MB/s), not on samples")
    p.add_argument("--sample-bytes", type=int, default=512 * 1024, metavar="B",
                   help="bytes per tensor given to zstd/lz4 (default 512 KiB)")
    p.add_argument("-t", "--threads", type=int, default=None, metavar="N",
                   help="decoder and zstd/lz4 threads (default: all cores)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_analyze)
