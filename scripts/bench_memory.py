#!/usr/bin/env python3
"""Tokens/s against peak memory: ggzip's kept-compressed tensors under a memory limit.

    python scripts/bench_memory.py [--models smollm2,gemma3-270m] [--threads 2]
                                   [--ctx 512] [--chunks 6] [--prepare-only]
                                   [--work DIR] [--out FILE] [--plot FILE] [--no-write]

Inputs, per model (each made from one F32 GGUF, dequantized from the fetched file
with bench_rd's write_dequantized_f32, so every method starts from the same weights):
  * ggzip 4.5: `ggzip convert F32 --target-bpw 4.5 --imatrix IMATRIX`;
  * ggzip Q8_0 (lossless): `llama-quantize F32 Q8_0`, then `ggzip compress`;
  * llama.cpp quantizations of the F32 GGUF with the same imatrix: Q4_K_M, IQ4_XS,
    Q3_K_M, Q2_K (a k-quant that puts >= 90% of the weights back on the dequantized
    source's own grid is marked "flattered", as bench_rd does);
  The imatrix is llama-imatrix's on tests/data/declaration.txt (calibration); the
  KL divergence from the F32 model is llama-perplexity's on another text,
  scripts/data/alice-ch1-3.txt, --chunks N of 512 tokens (bench_rd's invocation).
Rows, per ggzip file: memory budgets of 100%, 80%, 60% of the plain Q8_0 file's size
and the smallest feasible one (`ggzip plan`), each run under a cgroup v1 memory limit
equal to the budget (the page cache counts against it; the model file is dropped from
the page cache before each run, so no run is served by pages another run charged).
Each row: the plan's SPEC, the cgroup's peak memory and the process's peak RSS,
prompt (pp128) and generation (tg64) tokens/s, the plan's predicted RSS and tokens/s
beside them, the KL divergence. Compared, same threads, same runner:
  (a) the plain Q8_0 file without a limit;
  (b) the plain Q8_0 file, mmap (as stock llama.cpp runs it; the patched build runs
      a plain file as stock does), under each budget's limit;
  (c) the largest llama.cpp quantization whose file fits the budget, with its KLD.
Cache: build/bench-memory/MODEL/, each file named by a hash of what determines it
(the llama.cpp pin and the texts for the F32 GGUF, imatrix, Q8_0 and k-quants; plus
the converter, container and codec sources for the ggzip files); files of other
hashes are removed at start, so a rerun recomputes only what changed. Measurements
are never cached. Writes BENCHMARKS.md (section "memory", or --out) and the plot
docs/bench_memory.svg unless --no-write.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmd import BENCH_MD, provenance, save_figure, source_hash, write_section  # noqa: E402
from bench_rd import (CALIB_TEXT, CTX, EVAL_TEXT, REGRID_SHARE, atomic, fetch_path,  # noqa: E402
                      perplexity, run, tool, weight_snr, write_dequantized_f32)

from ggzip.convert import GGUFModel  # noqa: E402
from ggzip.plan.measure import PROMPT_EVALS  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"smollm2": "SmolLM2-135M", "gemma3-270m": "Gemma-3-270M"}
KQUANTS = ["Q4_K_M", "IQ4_XS", "Q3_K_M", "Q2_K"]
GZ_BPW = "4.5"
REGRID_EXTRA = 0.1
BUDGETS = (1.0, 0.8, 0.6)        # shares of the plain Q8_0 file's size
N_PROMPT, N_GEN = 128, 64
# what determines the F32 GGUF, the imatrix, the KLD base and llama-quantize's files:
# the upstream llama.cpp (its pin: the patches change only how ggzip frames load),
# the two texts and bench_rd's dequantizer
BASE_SOURCES = ("scripts/data/alice-ch1-3.txt", "tests/data/declaration.txt")
# ... and, for the ggzip files, the converter, the container and the codec
GGZIP_SOURCES = ("python/ggzip/quantize", "python/ggzip/convert", "python/ggzip/container",
                 "python/ggzip/codec", "native/src", "native/include")


def llama_pin() -> str:
    m = re.search(r"^PIN=(\S+)", (ROOT / "scripts" / "build_llama.sh").read_text(), re.M)
    return m.group(1) if m else "unknown"


def mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def say(msg: str) -> None:
    print(f"bench_memory: {msg}", flush=True)


# ---- inputs --------------------------------------------------------------------

class Inputs:
    """One model's files and their KL divergences, made once and cached."""

    def __init__(self, name: str, args):
        self.name, self.args = name, args
        self.dir = args.work / name
        self.dir.mkdir(parents=True, exist_ok=True)
        params = {"chunks": args.chunks, "ctx": CTX, "pin": llama_pin(), "model": name}
        self.h_base = hashlib.sha256((json.dumps(params, sort_keys=True) +
                                      source_hash(BASE_SOURCES)).encode()).hexdigest()[:10]
        self.h_gz = hashlib.sha256((self.h_base + source_hash(GGZIP_SOURCES)).encode()
                                   ).hexdigest()[:10]
        self.kld: dict = {}       # method -> {"kld", "top1", "ppl", "lossless"?}

    def path(self, stem: str, ggzip: bool = False, ext: str = ".gguf") -> Path:
        return self.dir / f"{stem}-{self.h_gz if ggzip else self.h_base}{ext}"

    def prune(self) -> None:
        """Remove files of other hashes (another pin, text or converter)."""
        for f in self.dir.iterdir():
            if f.is_file() and self.h_base not in f.name and self.h_gz not in f.name:
                say(f"removing {f} (another source hash)")
                f.unlink()

    def prepare(self) -> None:
        a = self.args
        self.prune()
        say(f"{self.name}: inputs in {self.dir}")
        src = fetch_path(self.name)
        self.f32 = self.path("f32")
        if not self.f32.exists():
            t0 = time.perf_counter()
            atomic(self.f32, lambda t: write_dequantized_f32(src, t))
            say(f"  F32 GGUF {time.perf_counter() - t0:.0f} s")
        self.imatrix = atomic(self.path("imatrix"), lambda t: run(
            [tool("llama-imatrix"), "-m", self.f32, "-f", CALIB_TEXT, "-o", t, "-c", CTX,
             "-b", CTX, "-t", a.threads, "--no-ppl"], "llama-imatrix"))
        self.kld_base = atomic(self.path("kld-base", ext=".bin"), lambda t: run(
            [tool("llama-perplexity"), "-m", self.f32, "-f", EVAL_TEXT, "-c", CTX, "-b", CTX,
             "--chunks", a.chunks, "-t", a.threads, "--kl-divergence-base", t],
            "llama-perplexity (F32 logits)"))
        self.q8 = self.quantize("Q8_0")
        self.kq = {q: self.quantize(q) for q in KQUANTS}
        self.q8gz = atomic(self.path("q8_0.ggzip", ggzip=True), lambda t: run(
            [sys.executable, "-m", "ggzip.cli", "compress", "-q", "-t", a.threads, self.q8, t],
            "ggzip compress Q8_0"))
        self.gz = atomic(self.path(f"gz-{GZ_BPW}", ggzip=True), lambda t: run(
            [sys.executable, "-m", "ggzip.cli", "convert", "-q", "-t", a.threads,
             "--target-bpw", GZ_BPW, "--imatrix", self.imatrix, self.f32, t],
            f"ggzip convert --target-bpw {GZ_BPW}"))
        self.ref = None
        for method, path in [("Q8_0", self.q8), (f"ggzip {GZ_BPW}", self.gz)] + \
                list(self.kq.items()):
            self.kld[method] = self.quality(method, path)
        # `ggzip compress` is lossless (decompress gives the Q8_0 file back byte for byte)
        self.kld["ggzip Q8_0"] = self.kld["Q8_0"]

    def quantize(self, q: str) -> Path:
        return atomic(self.path(f"kq-{q}"), lambda t: run(
            [tool("llama-quantize")] + (["--imatrix", self.imatrix] if q != "Q8_0" else []) +
            [self.f32, t, q, self.args.threads], f"llama-quantize {q}"))

    def quality(self, method: str, path: Path) -> dict:
        """KLD, top-1 agreement and perplexity against the F32 model; for a llama.cpp
        type also the share of weights it re-codes without loss (the source's grid)."""
        cache = path.with_name(path.name[:-len(".gguf")] + ".kld.json")
        if cache.exists():
            return json.loads(cache.read_text())
        say(f"  KL divergence of {method}")
        res = perplexity(path, self.kld_base, self.args)
        if method.startswith(("Q", "IQ")):
            if self.ref is None:
                self.ref = GGUFModel(self.f32)
            res.update(snr_fields(self.ref, path))
        atomic(cache, lambda t: t.write_text(json.dumps(res, indent=1)))
        return res

    def flattered(self, method: str) -> bool:
        """A llama.cpp type that re-codes the dequantized source's own low-bit grid:
        bench_rd's rule (>= REGRID_SHARE of the weights without loss), or without
        loss on REGRID_EXTRA of the weights beyond those Q8_0 itself re-codes so (the
        source's Q8_0 tensors: Gemma-3-270M's token embedding, 63% of its weights)."""
        share = self.kld.get(method, {}).get("lossless", 0)
        return share >= REGRID_SHARE or share - self.kld["Q8_0"]["lossless"] >= REGRID_EXTRA


def snr_fields(ref: GGUFModel, path: Path) -> dict:
    """bench_rd's weight SNR of path against ref: the size-weighted mean SNR (dB)
    and the share of weights re-coded without loss (flattered() reads it)."""
    snr = weight_snr(ref, path)
    return {"snr": snr["snr"], "lossless": snr["lossless"]}


# ---- runs under a memory limit ---------------------------------------------------

class Cgroup:
    """A cgroup v1 memory group (root needed): memory.limit_in_bytes = limit (None:
    no limit, only the peak is read); measure() makes its child join it before
    loading. memory.max_usage_in_bytes counts the page cache too."""
    ROOT = Path("/sys/fs/cgroup/memory")
    count = 0

    def __init__(self, limit):
        Cgroup.count += 1
        self.limit = limit
        self.path = self.ROOT / f"ggzip-bench-memory-{os.getpid()}-{Cgroup.count}"

    def __enter__(self):
        try:
            self.path.mkdir()
            if self.limit is not None:
                (self.path / "memory.limit_in_bytes").write_text(f"{int(self.limit)}\n")
        except OSError as e:
            sys.exit(f"bench_memory: cannot make the cgroup {self.path} ({e}): run as root on a "
                     "host with the cgroup v1 memory controller")
        return self

    def read(self, name: str) -> str:
        return (self.path / name).read_text()

    def peak(self) -> int:
        return int(self.read("memory.max_usage_in_bytes"))

    def oom_kills(self) -> int:
        m = re.search(r"^oom_kill (\d+)", self.read("memory.oom_control"), re.M)
        return int(m.group(1)) if m else 0

    def __exit__(self, *exc):
        # the child has exited; its page-cache charges move to the parent on rmdir
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)
        say(f"warning: could not remove {self.path}")


def atomic_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def drop_cached(path: Path) -> None:
    """Evict the file's pages from the page cache (clean, unmapped pages go), so that
    the next run reads it from storage and its pages are charged to that run's cgroup
    (v1 charges a cached page to the cgroup that first faulted it in)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def run_row(path: Path, keep, limit, args, nth: int = 0) -> dict:
    """One measure() of path (keep: the SPEC, or None) in a cgroup limited to limit
    bytes (None: no limit); the measurement, or {"error": why} when it failed (a
    process the limit killed, a timeout). A plain file's row (keep None) is stored
    in the work folder and, with --reuse-plain, taken from there; nth: which of
    several runs of the same row."""
    from ggzip.errors import GGZipError
    from ggzip.plan.measure import measure
    key = (f"{path.name}|{keep}|{limit}|{args.threads}|{args.ctx}|{N_PROMPT}x{PROMPT_EVALS}|{N_GEN}|"
           f"{args.repeat}" + (f"|{nth}" if nth else ""))
    store = args.work / "plain-rows.json"
    stored = json.loads(store.read_text()) if store.exists() else {}
    if keep is None and args.reuse_plain and key in stored:
        say(f"    {path.name} limit={limit}: reused ({stored[key].get('library', '?')})")
        return dict(stored[key], reused=True)
    drop_cached(path)
    t0 = time.perf_counter()
    with Cgroup(limit) as cg:
        try:
            m = measure(path, keep=keep, threads=args.threads, ctx=args.ctx, n_prompt=N_PROMPT,
                        n_gen=N_GEN, repeat=args.repeat, cgroup=cg.path, timeout=args.timeout)
            out = {k: getattr(m, k) for k in ("prompt_tps", "gen_tps", "gen_tps_mean", "peak_rss",
                                              "rss_load", "load_s", "keep_log", "library")}
        except GGZipError as e:
            msg = str(e)
            out = {"error": "killed by the memory limit (OOM)" if cg.oom_kills() else
                   "SIGBUS: a page of the mapped file could not be read within the limit"
                   if "exit code -7" in msg else msg.splitlines()[0][:160]}
        out["cg_peak"] = cg.peak()
    out["seconds"] = time.perf_counter() - t0
    if keep is None:
        stored[key] = out
        atomic_json(store, stored)
    shown = (f"pp {out['prompt_tps']:.1f} tg {out['gen_tps']:.2f} t/s, RSS {mib(out['peak_rss'])} "
             f"MiB" if "error" not in out else out["error"])
    say(f"    {path.name} keep={keep!r} limit={'none' if limit is None else mib(limit) + ' MiB'}: "
        f"{shown}, cgroup peak {mib(out['cg_peak'])} MiB ({out['seconds']:.0f} s)")
    return out


def runner_baseline() -> int:
    """Peak RSS of the runner with no model: a Python interpreter that imported
    llama_cpp and numpy, as measure()'s child does before it loads."""
    code = ("import numpy, llama_cpp\n"
            "print(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(r.stdout.split()[-1]) * 1024


# ---- one model's rows -------------------------------------------------------------

def plan_for(path: Path, budget: int, args):
    """(SPEC, predictions) of ggzip.plan for a budget, or (None, why) when it fails
    (a budget below the smallest feasible one, a library without keep)."""
    from ggzip.errors import GGZipError
    from ggzip.plan.plan import BudgetTooSmall, decode_speed, plan
    try:
        p = plan(path, budget, threads=args.threads, ctx=args.ctx, n_prompt=N_PROMPT, n_gen=N_GEN,
                 rounds=args.rounds)
    except BudgetTooSmall as e:
        return None, f"infeasible: the smallest is {mib(e.smallest)} MiB ({mib(e.frames)} MiB of it the kept frames)"
    except GGZipError as e:
        return None, str(e).splitlines()[0][:200]
    kept_names = {i.name for i in p.kept}
    # the codec's speed on this file's frames now, just before the run (the
    # calibration's may be older, taken on a busier machine)
    return p.spec, {"pred_rss": p.peak_rss, "pred_pp": p.prompt_tps, "pred_tg": p.gen_tps,
                    "decode_gbps": decode_speed(path, p.items, args.threads)[args.threads],
                    "decoded_per_token": decoded_per_token(path, kept_names),
                    "decoded_all": sum(i.decoded for i in p.items),
                    "n_kept": len(p.kept), "n_eligible": len(p.items)}


def decoded_per_token(path: Path, kept: set) -> int:
    """Bytes decoded per generated token with `kept` kept compressed: every kept
    matrix is multiplied whole; token_embd only gathers a few rows unless the model
    ties its output to it (no output.weight), as SmolLM2 and Gemma 3 do."""
    from ggzip.container.reader import GGZipReader
    with GGZipReader(path) as r:
        tied = "output.weight" not in r.tensors
        return sum(r.tensors[n].nbytes for n in kept if tied or n != "token_embd.weight")


def smallest_feasible(path: Path, args):
    """The plan's own smallest feasible budget, rounded up to a MiB, or (None, why):
    a 1-byte budget is always below it, and the plan's error names it. Calibrates
    afresh (every plan of this invocation reuses that calibration)."""
    from ggzip.errors import GGZipError
    from ggzip.plan.plan import BudgetTooSmall, calibrate, plan
    try:
        calibrate(path, args.threads, args.ctx, N_PROMPT, N_GEN, recalibrate=True, rounds=args.rounds)
        plan(path, 1, threads=args.threads, ctx=args.ctx, n_prompt=N_PROMPT, n_gen=N_GEN,
             rounds=args.rounds)
    except BudgetTooSmall as e:
        return -(-e.smallest // 2**20) * 2**20, ""
    except GGZipError as e:
        return None, str(e)
    return None, "the plan accepted a 1-byte budget"


def bench_model(inp: Inputs, args) -> dict:
    q8_size = inp.q8.stat().st_size
    say(f"{inp.name}: plain Q8_0 {mib(q8_size)} MiB")
    gz_files = {f"ggzip {GZ_BPW}": inp.gz, "ggzip Q8_0": inp.q8gz}
    budgets = [(f"{s:.0%}", int(s * q8_size)) for s in BUDGETS]
    notes, no_plan = [], {}
    for label, path in gz_files.items():
        size, why = smallest_feasible(path, args)
        if size is None:
            no_plan[label] = why.splitlines()[0][:300]
            notes.append(f"{label}: no plan ({no_plan[label]})")
        else:
            budgets.append((f"smallest for {label} ({size / q8_size:.0%})", size))
    # (a) is the reference of every pp ratio: run at the start, halfway and at the
    # end, its median, so that one burst on this shared machine does not move them all
    plain = [run_row(inp.q8, None, None, args)]
    rows = [dict(budget="none", limit=None, method="Q8_0", file=inp.q8, role="a")]
    for i, (blabel, limit) in enumerate(budgets):
        if i == len(budgets) // 2:
            plain.append(run_row(inp.q8, None, None, args, nth=1))
        say(f"  budget {blabel}: {mib(limit)} MiB")
        for label, path in gz_files.items():
            if blabel.startswith("smallest") and label not in blabel:
                continue
            spec, pred = plan_for(path, limit, args) if label not in no_plan else (None, no_plan[label])
            row = dict(budget=blabel, limit=limit, method=label, file=path, role="ggzip", spec=spec)
            if spec is None:
                row["error"] = pred if pred.startswith("infeasible") else "no plan: " + pred
                say(f"    {label}: {row['error']}")
            else:
                row.update(pred)
                row.update(run_row(path, spec, limit, args))
            rows.append(row)
        rows.append(dict(budget=blabel, limit=limit, method="Q8_0", file=inp.q8, role="b",
                         **run_row(inp.q8, None, limit, args)))
        fits = [(p.stat().st_size, q) for q, p in inp.kq.items() if p.stat().st_size <= limit]
        if fits:
            q = max(fits)[1]
            rows.append(dict(budget=blabel, limit=limit, method=q, file=inp.kq[q], role="c",
                             **run_row(inp.kq[q], None, limit, args)))
        else:
            rows.append(dict(budget=blabel, limit=limit, method="-", role="c",
                             error="no llama.cpp quantization's file fits"))
    plain.append(run_row(inp.q8, None, None, args, nth=2))
    rows[0].update(median_row(plain))
    for r in rows:
        r["kld"] = inp.kld.get(r["method"], {}).get("kld")
        r["flattered"] = inp.flattered(r["method"])
        if "file" in r:
            r["file_size"] = r["file"].stat().st_size
            r["file"] = r["file"].name
    return {"name": inp.name, "label": MODELS[inp.name], "threads": args.threads, "q8_size": q8_size, "rows": rows,
            "notes": notes, "kld_all": inp.kld, "files": {
                m: p.stat().st_size for m, p in [("Q8_0", inp.q8), *gz_files.items(), *inp.kq.items()]}}


def median_row(runs: list) -> dict:
    """One row of several runs of it: the median of each measured number (the
    first failed run's error if any failed), and how many runs it is."""
    bad = [r for r in runs if "error" in r]
    if bad:
        return bad[0]
    out = dict(runs[0])
    for k in ("prompt_tps", "gen_tps", "gen_tps_mean", "peak_rss", "rss_load", "load_s", "cg_peak", "seconds"):
        out[k] = statistics.median(r[k] for r in runs)
    out["runs"] = len(runs)
    return out


# ---- report ------------------------------------------------------------------------

ROLE = {"ggzip": "**{}**", "a": "(a) Q8_0, no limit", "b": "(b) Q8_0, stock (mmap)",
        "c": "(c) {}, the largest llama.cpp type that fits"}


def f(x, fmt="{:.1f}", none="-"):
    return none if x is None else fmt.format(x)


def pred_cell(meas, pred, fmt):
    if pred is None:
        return f(meas, fmt)
    if meas is None:
        return f"- (plan {fmt.format(pred)})"
    return f"{fmt.format(meas)} (plan {fmt.format(pred)}, {(pred - meas) / meas:+.0%})"


def table(res) -> list:
    out = ["| budget (MiB) | method | file MiB | SPEC | cgroup peak MiB | peak RSS MiB (plan) | "
           "pp128 t/s (plan) | tg64 t/s (plan) | KLD |", "|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        budget = "no limit" if r["limit"] is None else f"{r['budget']}: {mib(r['limit'])}"
        method = ("(c) the largest llama.cpp type that fits" if r["method"] == "-" else
                  ROLE[r["role"]].format(r["method"])) + (" (earlier run)" if r.get("reused") else "") + \
            (f" (median of {r['runs']} runs)" if r.get("runs", 1) > 1 else "")
        spec = f"`{r['spec']}`" if r.get("spec") else "-"
        kld = "-" if r.get("kld") is None else f"{r['kld']:.4f}" + (" (flattered)" if r["flattered"] else "")
        size = mib(r["file_size"]) if "file_size" in r else "-"
        if "error" in r:
            out.append(f"| {budget} | {method} | {size} | {spec} | "
                       f"{mib(r['cg_peak']) if 'cg_peak' in r else '-'} | {r['error']} | | | {kld} |")
            continue
        out.append(f"| {budget} | {method} | {size} | {spec} | {mib(r['cg_peak'])} | "
                   f"{pred_cell(r['peak_rss'] / 2**20, r.get('pred_rss') and r['pred_rss'] / 2**20, '{:.1f}')} | "
                   f"{pred_cell(r['prompt_tps'], r.get('pred_pp'), '{:.1f}')} | "
                   f"{pred_cell(r['gen_tps'], r.get('pred_tg'), '{:.2f}')} | {kld} |")
    return out


def targets(res) -> list:
    rows, out = res["rows"], []
    plain = next(r for r in rows if r["role"] == "a")
    for blabel in [b for b in dict.fromkeys(r["budget"] for r in rows) if b == "60%" or
                   b.startswith("smallest")]:
        stock = next((r for r in rows if r["budget"] == blabel and r["role"] == "b"), None)
        for r in rows:
            if r["budget"] != blabel or r["role"] != "ggzip" or (blabel.startswith("smallest") and
                                                                 r["method"] not in blabel):
                continue
            head = f"at {blabel}, {r['method']}"
            if "error" in r:
                out.append(f"{head}: not measured ({r['error']})")
                continue
            parts = []
            if stock and "error" not in stock:
                x = r["gen_tps"] / stock["gen_tps"]
                parts.append(f"tg {r['gen_tps']:.2f} / stock under the same limit {stock['gen_tps']:.2f} = "
                             f"{x:.1f}x (target >= 5x: {'met' if x >= 5 else 'NOT met'})")
            if r.get("decode_gbps") and r.get("decoded_per_token"):
                bound = r["decode_gbps"] * 1e9 / r["decoded_per_token"]
                x, share = r["gen_tps"] / bound, r["decoded_per_token"] / r["decoded_all"]
                verdict = "met" if x >= 0.8 else "NOT met"
                if share < 0.5:    # the plain matrices, not the decode, bound such a token
                    verdict = f"not judged: the kept matrices are {share:.0%} of the bytes"
                parts.append(f"tg / decode-bound speed ({r['decode_gbps']:.2f} GB/s on {res['threads']} "
                             f"threads / {mib(r['decoded_per_token'])} MiB decoded per token = "
                             f"{bound:.1f} t/s) = {x:.2f} (target >= 0.8: {verdict})")
            x = r["peak_rss"] / plain["peak_rss"]
            parts.append(f"peak RSS {mib(r['peak_rss'])} MiB = {x:.0%} of plain Q8_0's unlimited "
                         f"{mib(plain['peak_rss'])} MiB (the issue's headline: about 60%)")
            x = r["prompt_tps"] / plain["prompt_tps"]
            parts.append(f"pp / plain Q8_0 pp = {r['prompt_tps']:.1f} / {plain['prompt_tps']:.1f} = {x:.2f} "
                         f"(target >= 0.8: {'met' if x >= 0.8 else 'NOT met'})")
            out.append(f"{head}: " + "; ".join(parts))
    errs = [(r, (r["pred_tg"] - r["gen_tps"]) / r["gen_tps"]) for r in rows
            if r["role"] == "ggzip" and "error" not in r and r.get("pred_tg")]
    if errs:
        worst = max(abs(e) for _, e in errs)
        out.append("plan's predicted tg vs measured: " + ", ".join(
            f"{r['method']} at {r['budget'].split(' (')[0]} {e:+.0%}" for r, e in errs) +
            f" (target within 15%: {'met' if worst <= 0.15 else 'NOT met'})")
        pps = [(r, (r["pred_pp"] - r["prompt_tps"]) / r["prompt_tps"]) for r, _ in errs if r.get("pred_pp")]
        if pps:   # tokens/s of the prompt too: the 15% is for every predicted speed
            out.append("plan's predicted pp vs measured: " + ", ".join(
                f"{r['method']} at {r['budget'].split(' (')[0]} {e:+.0%}" for r, e in pps) +
                f" (within 15%: {'met' if max(abs(e) for _, e in pps) <= 0.15 else 'NOT met'})")
        rss = [(r["pred_rss"] - r["peak_rss"]) / r["peak_rss"] for r, _ in errs]
        out.append("plan's predicted peak RSS vs measured: " + ", ".join(f"{e:+.0%}" for e in rss) +
                   f" (worst {max(abs(e) for e in rss):.0%}; issue 13 item 4 asks within 10%)")
    return out


STYLE = {"ggzip 4.5": ("o-", "C2"), "ggzip Q8_0": ("s-", "C0"), "b": ("x--", "C3"),
         "c": ("D:", "C1"), "a": ("*", "k")}


def plot(results, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 5), squeeze=False)
    for ax, res in zip(axes[0], results):
        ok = [r for r in res["rows"] if "error" not in r]
        series = {f"ggzip {GZ_BPW}": [r for r in ok if r["method"] == f"ggzip {GZ_BPW}"],
                  "ggzip Q8_0": [r for r in ok if r["method"] == "ggzip Q8_0"],
                  "b": [r for r in ok if r["role"] == "b"], "c": [r for r in ok if r["role"] == "c"],
                  "a": [r for r in ok if r["role"] == "a"]}
        for key, rs in series.items():
            if not rs:
                continue
            rs = sorted(rs, key=lambda r: r["cg_peak"])
            mark, color = STYLE[key]
            label = {"a": ROLE["a"], "b": ROLE["b"], "c": "(c) the largest llama.cpp type that fits"}.get(
                key, key + (" (lossless)" if key == "ggzip Q8_0" else "") + ", planned SPEC")
            xs, ys = [r["cg_peak"] / 2**20 for r in rs], [r["gen_tps"] for r in rs]
            ax.plot(xs, ys, mark, color=color, label=label)
            if key == "c":
                for r, x, y in zip(rs, xs, ys):
                    ax.annotate(r["method"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        for _, limit in {(r["budget"], r["limit"]) for r in res["rows"] if r["limit"]}:
            ax.axvline(limit / 2**20, color="0.85", lw=0.8, zorder=0)
        ax.set_yscale("log")
        ax.set_xlabel("peak memory of the run, MiB (cgroup, page cache included)")
        ax.set_ylabel("generation tokens/s (tg64), log scale")
        ax.set_title(f"{res['label']}, {res['threads']} threads (grey lines: the limits)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--threads", "-t", type=int, default=2,
                    help="threads of every run, measured and preparatory (default 2)")
    ap.add_argument("--ctx", type=int, default=512, help="context of the measured runs")
    ap.add_argument("--chunks", type=int, default=6, help="512-token chunks of the KL divergence")
    ap.add_argument("--timeout", type=float, default=900, help="seconds one measured run may take")
    ap.add_argument("--repeat", type=int, default=2,
                    help="timed rounds of each measured run (pp: median prompt evaluation, tg: median token; "
                         "default 2)")
    ap.add_argument("--rounds", type=int, default=2, help="calibration rounds of ggzip.plan (default 2)")
    ap.add_argument("--reuse-plain", action="store_true",
                    help="take the rows of plain files (a, b, c) measured by an earlier invocation with the "
                         "same file, limit, threads and ctx (the section names their libllama)")
    ap.add_argument("--from-results", type=Path, metavar="JSON",
                    help="write the section and plot from a results.json of an earlier invocation")
    ap.add_argument("--prepare-only", action="store_true", help="make the inputs and their KLD only")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "bench-memory")
    ap.add_argument("--out", type=Path, default=BENCH_MD)
    ap.add_argument("--plot", type=Path, default=ROOT / "docs" / "bench_memory.svg")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    given = argv if argv is not None else sys.argv[1:]
    if args.from_results:
        saved = json.loads(args.from_results.read_text())
        return report(saved["header"] + [f"(Section written from {args.from_results.name} by "
                                          f"`--from-results`.)", ""], saved["models"], args)
    t0, load0 = time.perf_counter(), os.getloadavg()[1]
    results = []
    for name in args.models.split(","):
        if name not in MODELS:
            sys.exit(f"bench_memory: unknown model {name} (one of {', '.join(MODELS)})")
        inp = Inputs(name, args)
        inp.prepare()
        for m, r in inp.kld.items():
            say(f"  {m:12s} KLD {r['kld']:.4f}" + (" (flattered)" if inp.flattered(m) else ""))
        if not args.prepare_only:
            results.append(bench_model(inp, args))
    if args.prepare_only:
        return 0
    lib = sorted({r["library"] for res in results for r in res["rows"] if "library" in r})
    header = [provenance("bench_memory.py", given, f", libllama {'; '.join(lib) or '?'}"),
              f"This invocation: {(time.perf_counter() - t0) / 60:.0f} min; load average (5 min) "
              f"{load0:.1f} at the start, {os.getloadavg()[1]:.1f} at the end, on {os.cpu_count()} cores "
              "(the machine is shared: speeds are as noisy as that).", "",
              f"Every run is one `ggzip.plan.measure.measure()` (a fresh llama-cpp-python process: load, "
              f"an untimed warm-up, then {args.repeat} rounds of: a {N_PROMPT}-token prompt as one batch "
              f"{PROMPT_EVALS} times, then {N_GEN} greedy tokens; pp from the median prompt evaluation, "
              f"tg = 1 / median token time), {args.threads} threads, ctx {args.ctx}, mmap on (llama-cpp-python's "
              "default), inside a cgroup v1 memory group whose `memory.limit_in_bytes` is the budget (no "
              "limit for (a), which runs three times, at the start, halfway and at the end of a model's "
              "runs, and shows their median: every pp ratio divides by it); the model file is dropped "
              "from the page cache before each run. **Budgets** "
              "are shares of the plain Q8_0 file's size, and the smallest budget `ggzip.plan` finds feasible "
              "for each ggzip file (every eligible tensor kept). **cgroup peak**: `memory.max_usage_in_bytes` "
              "(page cache included); **peak RSS**: the process's VmHWM (interpreter and shared libraries "
              f"included: the runner alone, Python with llama_cpp imported, peaks at {mib(runner_baseline())} "
              "MiB), the quantity the plan predicts. The ggzip rows run the SPEC `ggzip.plan.plan()` "
              f"chose for the budget (same threads and ctx; calibrated afresh, {args.rounds} rounds). "
              "Inputs from one F32 GGUF per model (dequantized "
              f"from the fetched file): `ggzip convert --target-bpw {GZ_BPW} --imatrix`, `llama-quantize Q8_0` "
              "then `ggzip compress` (lossless), `llama-quantize --imatrix` Q4_K_M, IQ4_XS, Q3_K_M, Q2_K; "
              "imatrix on tests/data/declaration.txt. **KLD**: `llama-perplexity --kl-divergence` against the F32 "
              f"model on scripts/data/alice-ch1-3.txt, {args.chunks} chunks of {CTX} tokens; \"flattered\": the "
              f"type re-codes without loss >= {REGRID_SHARE:.0%} of the weights, or >= {REGRID_EXTRA:.0%} more "
              "of them than Q8_0 does: it puts the dequantized source's low-bit tensors back on their own grid, "
              "so its KLD partly measures the source file (\"lossless\": the share of weights a type re-codes without "
              "loss).", ""]
    atomic_json(args.work / "results.json", {"header": header, "models": results})
    return report(header, results, args)


def report(header: list, results: list, args) -> int:
    lines = list(header)
    for res in results:
        sizes = ", ".join(f"{m} {mib(n)}" for m, n in res["files"].items())
        lines += [f"**{res['label']}** (file MiB: {sizes}; KLD: " +
                  ", ".join(f"{m} {r['kld']:.4f}" + (f" (lossless {r['lossless']:.0%})"
                                                   if "lossless" in r else "")
                            for m, r in res["kld_all"].items()) + ")", ""]
        lines += table(res) + [""]
        lines += [f"- {t}" for t in targets(res) + res["notes"]] + [""]
    text = "\n".join(lines)
    print("\n" + text)
    if args.no_write:
        return 0
    plot(results, args.plot)
    write_section("memory", "## Memory-limited runs (`scripts/bench_memory.py`)\n\n" + text +
                  f"\n![generation tokens/s against peak memory]({os.path.relpath(args.plot, args.out.parent)})\n",
                  args.out)
    say(f"wrote {args.out} (section memory) and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
