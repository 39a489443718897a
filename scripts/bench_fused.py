#!/usr/bin/env python3
"""Fused decode inside the matrix products (patches 0008-0009): what keeping a
model's tensors compressed in RAM costs per token, against the decode-bound speed
and against decoding the same tensors alone plus the plain Q8_0 matmul.

For each ggzip GGUF and thread count, in interleaved rounds (the machine is shared:
only side-by-side ratios mean something), with the patched llama-bench:
  none  = GGZIP_KEEP unset: every frame decoded at load, plain Q8_0 matmuls;
  all   = GGZIP_KEEP=all: every Q8_0 matrix kept as its frame, decoded chunk by
          chunk inside MUL_MAT / GET_ROWS on the same threads;
and, with the codec's Python binding on the same frames and thread count, the time
to decode every kept frame once (what one generated token must decode).  Then

  decode-bound tokens/s = 1 / t_decode
  fused efficiency      = (1/tg_none + t_decode) / (1/tg_all)   (>= 0.9: fusing costs
                          no more than decoding alone plus the plain matmul)

    python scripts/bench_fused.py MODEL.gguf [MODEL.gguf ...] [--threads 1 2] [--rounds 5]

Writes BENCHMARKS.md, section "fused" (--no-write: print only)."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "python"))
from benchmd import BENCH_MD, provenance, write_section  # noqa: E402

BIN = Path(os.environ.get("GGZIP_LLAMA_DIR", ROOT / "build" / "llama")) / "bin"


def llama_bench(model: Path, keep: str | None, threads: int, n_prompt: int, n_gen: int, reps: int) -> dict:
    """pp and tg tokens/s of one llama-bench run (its mean over reps)."""
    env = {k: v for k, v in os.environ.items() if k != "GGZIP_KEEP"}
    if keep:
        env["GGZIP_KEEP"] = keep
    cmd = [str(BIN / "llama-bench"), "-m", str(model), "-t", str(threads), "-p", str(n_prompt), "-n", str(n_gen),
           "-r", str(reps), "-o", "json"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if r.returncode != 0:
        raise SystemExit(f"llama-bench failed on {model} (GGZIP_KEEP={keep}):\n{r.stderr[-2000:]}")
    out = {}
    for row in json.loads(r.stdout):
        kind = "pp" if row["n_prompt"] > 0 else "tg"
        out[kind] = float(row["avg_ts"])
    return out


def kept_frames(model: Path) -> tuple[list[bytes], int, int]:
    """The frames GGZIP_KEEP=all keeps (ggzip.plan's eligibility, the loader's rule),
    their decoded and stored bytes."""
    from ggzip.container import GGZipReader
    from ggzip.plan.plan import eligible_items
    items = eligible_items(model)
    with GGZipReader(model) as r:
        frames = [bytes(r.stored(it.name)) for it in items]
    return frames, sum(it.decoded for it in items), sum(it.frame for it in items)


def decode_seconds(frames: list[bytes], threads: int) -> float:
    """Seconds to decode every frame once, each with `threads` threads, into buffers
    faulted in beforehand (as the fused path's scratch is)."""
    import numpy as np
    from ggzip import codec
    outs = [np.ones(codec.info(f).raw_size, np.uint8) for f in frames]
    t0 = time.perf_counter()
    for f, o in zip(frames, outs):
        codec.decode(f, out=o, threads=threads)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", type=Path, help="ggzip GGUFs (Q8_0 frames)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (medians are quoted)")
    ap.add_argument("--n-prompt", type=int, default=128)
    ap.add_argument("--n-gen", type=int, default=32)
    ap.add_argument("--reps", type=int, default=2, help="llama-bench -r per run")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--out", type=Path, default=BENCH_MD)
    args = ap.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    if not (BIN / "llama-bench").exists():
        raise SystemExit(f"no patched llama-bench in {BIN}: run scripts/build_llama.sh")

    lines = [provenance("bench_fused.py", given), "",
             f"Patched llama-bench ({BIN}), pp{args.n_prompt} and tg{args.n_gen}, -r {args.reps}; medians of "
             f"{args.rounds} interleaved rounds. none = every frame decoded at load; all = GGZIP_KEEP=all (every "
             "Q8_0 matrix kept as its frame, decoded inside MUL_MAT / GET_ROWS on the same threads). decode = the "
             "codec decoding those frames once on the same thread count (the bytes one token needs). "
             "decode-bound = 1 / decode; fused eff. = (1/tg none + decode) / (1/tg all).", "",
             "| model | frames / decoded MiB | threads | pp none | pp all | pp all/none | tg none | tg all | "
             "decode ms | decode-bound tg | tg all / decode-bound | fused eff. | load avg |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for model in args.models:
        frames, dec, stored = kept_frames(model)
        if not frames:
            raise SystemExit(f"{model}: no Q8_0 frame to keep")
        for t in args.threads:
            res = {"none": [], "all": [], "dec": []}
            for rnd in range(args.rounds):
                for keep in ("none", "all"):
                    res[keep].append(llama_bench(model, None if keep == "none" else "all", t,
                                                 args.n_prompt, args.n_gen, args.reps))
                res["dec"].append(decode_seconds(frames, t))
                print(f"{model.name} t={t} round {rnd + 1}: none {res['none'][-1]} all {res['all'][-1]} "
                      f"decode {res['dec'][-1] * 1e3:.1f} ms", file=sys.stderr)
            med = lambda key, kind: statistics.median(r[kind] for r in res[key])  # noqa: E731
            pp_n, pp_a, tg_n, tg_a = med("none", "pp"), med("all", "pp"), med("none", "tg"), med("all", "tg")
            t_dec = statistics.median(res["dec"])
            eff = (1 / tg_n + t_dec) / (1 / tg_a)
            lines.append(f"| {model.name} | {stored / 2**20:.1f} / {dec / 2**20:.1f} | {t} | {pp_n:.1f} | {pp_a:.1f} | "
                         f"{pp_a / pp_n:.2f} | {tg_n:.1f} | {tg_a:.1f} | {t_dec * 1e3:.1f} | {1 / t_dec:.1f} | "
                         f"{tg_a * t_dec:.2f} | {eff:.2f} | {os.getloadavg()[0]:.1f} |")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("fused", "## Fused decode inside the matmuls (GGZIP_KEEP)\n\n" + text, args.out)
        print(f"wrote {args.out} (section fused)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
