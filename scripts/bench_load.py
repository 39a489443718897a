#!/usr/bin/env python3
"""Load time, peak RSS and tokens/s of a ggzip GGUF against its plain Q8_0 twin,
through the patched llama.cpp (scripts/build_llama.sh llama-bench).

    scripts/bench_load.py PLAIN_Q8_0.gguf GGZIP.gguf [PLAIN GGZIP ...] [--runs 5] [--threads 1 2] [--idle S]
                          [--primed MIB] [--pages off,huge,probe] [--before LLAMA_DIR] [--quick]
                          [--out FILE | --no-write]

Load is measured as the wall time and peak RSS of `llama-bench -p 0 -n 1 -r 1`
(model load, one context, one token: for these sizes the load dominates; the
same work is done for both files), page cache warm (file read once before) and
cold (the model file's pages dropped: /proc/sys/vm/drop_caches when permitted,
else posix_fadvise(DONTNEED) on the file, which evicts its clean pages without
root).  Both files are loaded with mmap (llama.cpp's default) and without
(`--load-mode none`): plain Q8_0 with mmap copies nothing, without it reads
every byte into fresh memory as ggzip's decode writes it.  Every load that puts
weights in anonymous memory (Q8_0 no-mmap, ggzip both ways) runs under each page
policy of --pages, the patched loader's environment variable GGZIP_PAGES (off:
no madvise; huge: 2 MiB pages asked for on the buffers receiving weights; probe:
huge, turned off after three slow 2 MiB faults in a row), so that ggzip is
compared with a plain file loaded under the same policy and the default policy
can be read off the table.  Every cell runs with the same -t, which the
loader's decode threads follow too.  The loads of a cell run interleaved,
`--runs` rounds, and the median is kept: the machines this runs on are shared,
and the load average is printed with the table.  Tokens/s is llama-bench's
tg32 after a load of each kind, median of --runs interleaved runs.  --idle S
adds a warm cell where every load starts after S seconds of rest: on a VM that
hands free memory back to its host (virtio-balloon free page reporting), fresh
memory then costs a host fault per page, which loads that run back to back do
not see.  --primed MIB adds a warm cell where a helper process faults in and
frees MIB of 2 MiB pages just before every load, so that recently freed pages,
which the host has not taken back, wait for it.  Writes section "load" of
BENCHMARKS.md (or --out FILE)."""
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
from benchmd import BENCH_MD, provenance, write_section  # noqa: E402

BIN = Path(os.environ.get("GGZIP_LLAMA_DIR", ROOT / "build" / "llama")) / "bin"
POLICIES = ("off", "huge", "probe")   # GGZIP_PAGES of the patched loader
NO_MMAP = ["--load-mode", "none"]


def build_knows(bindir: Path, word: bytes) -> bool:
    """Whether the build in bindir (its executables and libraries) contains word: an
    environment variable or key a loader ignores must not label a column."""
    for f in bindir.iterdir():
        if f.is_file() and (f.name.startswith("libllama") or f.name == "llama-bench"):
            if word in f.read_bytes():
                return True
    return False


def drop_cache(path: Path) -> str:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return "drop_caches"
    except OSError:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        return "fadvise (drop_caches not permitted)"


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def env_for(pages: str | None) -> dict:
    env = dict(os.environ)
    env.pop("GGZIP_PAGES", None)
    if pages:
        env["GGZIP_PAGES"] = pages
    return env


def measure_load(model: Path, threads: int, cache: str, extra: list[str], bindir: Path = BIN,
                 idle: float = 0.0, primed: int = 0, pages: str | None = None) -> tuple[float, float]:
    """Wall time and peak RSS of one load in a fresh process (RSS via wait4); cache
    "cold", "warm", "idle" (warm, then `idle` seconds of rest) or "primed" (warm,
    then `primed` bytes of 2 MiB pages faulted in and freed by a helper)."""
    if cache == "cold":
        drop_cache(model)
    else:
        warm(model)
    if cache == "idle":
        time.sleep(idle)
    if cache == "primed":
        prime(primed)
    cmd = [str(bindir / "llama-bench"), "-m", str(model), "-p", "0", "-n", "1", "-r", "1", "-t", str(threads),
           "-o", "json", *extra]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env_for(pages))
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench_load: {' '.join(cmd)} failed:\n{p.stderr.read().decode()[-2000:]}")
    return wall, ru.ru_maxrss / 1024


def largest_frame(path: Path) -> int:
    """Bytes of the largest ggzip frame of path (the RSS target allows one beyond the decoded size)."""
    import gguf
    r = gguf.GGUFReader(path)
    f = r.fields.get("ggzip.tensor_names")
    names = set(f.contents()) if f else set()
    return max((int(t.n_bytes) for t in r.tensors if t.name in names), default=0)


_TOUCH = """
import mmap, sys, time
n = int(sys.argv[1])
m = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # private: shared memory never gets 2 MiB pages
if hasattr(mmap, "MADV_HUGEPAGE"):
    m.madvise(mmap.MADV_HUGEPAGE)
t = time.perf_counter()
m[0:n:4096] = b"\\x01" * len(range(0, n, 4096))
print(time.perf_counter() - t)
"""


def touch(nbytes: int) -> float:
    """Seconds a new process takes to fault in nbytes of anonymous memory in 2 MiB pages
    (freed again when it exits)."""
    return float(subprocess.run([sys.executable, "-c", _TOUCH, str(nbytes)], capture_output=True, text=True,
                                check=True).stdout)


def fresh_memory_s(nbytes: int, runs: int = 5, idle: float = 0.0) -> float:
    """Median time for a new process to touch nbytes of fresh anonymous memory (2 MiB pages
    asked for, as the loader does): the kernel zeroes every page, a cost the decoded tensors
    pay and a mapped plain file does not. Back to back, each process gets the pages the last
    one freed; after `idle` seconds of rest, a VM's host may have taken them back, and each
    then costs a host fault per 4 KiB."""
    def one() -> float:
        time.sleep(idle)
        return touch(nbytes)
    if not idle:
        one()  # the first of a back-to-back series may follow a rest of any length
    return statistics.median(one() for _ in range(runs))


def prime(nbytes: int) -> None:
    """Fault in and free nbytes of 2 MiB pages in a helper process: the kernel hands
    these recently freed, host-backed pages out first to the next process."""
    touch(nbytes)


TG_REPS = 3  # llama-bench repetitions of tg32 in one tokens/s run


def tokens_per_s(model: Path, threads: int, extra: list[str], pages: str | None) -> float:
    cmd = [str(BIN / "llama-bench"), "-m", str(model), "-p", "0", "-n", "32", "-r", str(TG_REPS), "-t", str(threads),
           "-o", "json", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env_for(pages))
    if r.returncode != 0:
        raise SystemExit(f"bench_load: {' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    return float(json.loads(r.stdout)[0]["avg_ts"])


class Load:
    """One kind of load: a file, mapped or not, under one GGZIP_PAGES policy (None:
    the variable unset; a mapped plain file puts no weight in anonymous memory)."""

    def __init__(self, file: str, path: Path, mmap: bool, pages: str | None, before: Path | None = None):
        self.file, self.path, self.mmap, self.pages = file, path, mmap, pages
        self.before, self.bindir = before is not None, before or BIN
        self.extra = [] if mmap else NO_MMAP
        self.label = f"{file} {'mmap' if mmap else 'no-mmap'} {pages or '-'}" + (" before" if before else "")


def pair_loads(plain: Path, ggz: Path, args) -> list[Load]:
    loads = [Load("Q8_0", plain, True, None)]
    loads += [Load("Q8_0", plain, False, p) for p in args.pages]
    loads += [Load("ggzip", ggz, m, p) for m in (True, False) for p in args.pages]
    if args.before:
        loads.append(Load("ggzip", ggz, True, None, args.before / "bin"))
    return loads


def measure_cells(plain: Path, ggz: Path, args, caches: tuple[str, ...]) -> list[tuple]:
    """(threads, cache, {label: (median s, max peak RSS MiB)}) for every thread count and cache state."""
    loads = pair_loads(plain, ggz, args)
    rows = []
    for threads in args.threads:
        for cache in caches:
            samples = {ld.label: [] for ld in loads}
            for _ in range(args.runs):  # interleaved: a burst of load on the machine hits every column
                for ld in loads:
                    samples[ld.label].append(measure_load(ld.path, threads, cache, ld.extra, ld.bindir, args.idle,
                                                          args.primed << 20, ld.pages))
            cell = {label: (statistics.median(s[0] for s in v), max(s[1] for s in v)) for label, v in samples.items()}
            name = {"idle": f"warm, after {args.idle:g} s idle", "primed": "warm, fresh pages primed"}.get(cache, cache)
            rows.append((threads, name, cell))
            print(rows[-1], flush=True)
    return rows


def measure_pair(plain: Path, ggz: Path, args) -> dict:
    """Warm and cold cells, tokens/s and the load average around them."""
    load_before = os.getloadavg()[0]
    rows = measure_cells(plain, ggz, args, ("warm", "cold") + (("primed",) if args.primed else ()))
    samples = {}
    loads = [ld for ld in pair_loads(plain, ggz, args) if not ld.before]
    for _ in range(args.runs):  # interleaved, as the loads are
        for t in args.threads:
            for ld in loads:
                samples.setdefault((t, ld.label), []).append(tokens_per_s(ld.path, t, ld.extra, ld.pages))
    tps = {key: statistics.median(v) for key, v in samples.items()}
    return {"rows": rows, "tps": tps, "load": (load_before, os.getloadavg()[0])}


def pair_lines(plain: Path, ggz: Path, args, res: dict) -> list[str]:
    """The tables of one pair: every load, the page policies side by side, tokens/s."""
    rows, tps, (load_before, load_after) = res["rows"], res["tps"], res["load"]
    mib = lambda n: n / 2**20  # noqa: E731
    big = largest_frame(ggz)
    loads = pair_loads(plain, ggz, args)
    base = loads[0].label                                   # Q8_0 mapped: llama.cpp's default
    same = {p: f"Q8_0 no-mmap {p or '-'}" for p in args.pages}  # plain, no mmap, same policy
    lines = [
        f"### `{ggz.name}` ({mib(ggz.stat().st_size):.1f} MiB) vs its plain Q8_0 twin `{plain.name}` "
        f"({mib(plain.stat().st_size):.1f} MiB)",
        "",
        f"Load average {load_before:.1f} before, {load_after:.1f} after.",
        "",
        "Every load: seconds, and against the plain file mapped (llama.cpp's default) and loaded without mmap "
        "under the same GGZIP_PAGES (what ggzip itself costs or gains when both land in anonymous memory).",
        "",
        "| threads | cache | file | load | GGZIP_PAGES | s | / Q8_0 mmap | / Q8_0 no-mmap, same pages | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for threads, cache, cell in rows:
        for ld in loads:
            t, rss = cell[ld.label]
            vs = f"{t / cell[same[ld.pages]][0]:.2f}x" if ld.pages in same and ld.label != same[ld.pages] else "-"
            lines.append(f"| {threads} | {cache} | {ld.file} | {'mmap' if ld.mmap else 'no-mmap'}"
                         f"{' (before)' if ld.before else ''} | {ld.pages or '-'} | {t:.3f} | "
                         f"{t / cell[base][0]:.2f}x | {vs} | {rss:.0f} |")
    pol = args.pages
    lines += ["", "Page policy side by side (load seconds, " + " / ".join(pol) + "):", "",
              "| threads | cache | Q8_0 no-mmap | ggzip mmap | ggzip no-mmap |", "|---|---|---|---|---|"]
    for threads, cache, cell in rows:
        def by(file, mm):
            return " / ".join(f"{cell[f'{file} {mm} {p}'][0]:.3f}" for p in pol)
        lines.append(f"| {threads} | {cache} | {by('Q8_0', 'no-mmap')} | {by('ggzip', 'mmap')} | "
                     f"{by('ggzip', 'no-mmap')} |")
    decoded = plain.stat().st_size
    touch = fresh_memory_s(decoded)
    rested = fresh_memory_s(decoded, runs=3, idle=args.idle) if args.idle else None
    lines += ["", f"Largest frame: {mib(big):.1f} MiB (the RSS target is the decoded size plus that).",
              "", f"Fresh memory: a new process touching {mib(decoded):.0f} MiB of anonymous memory in 2 MiB pages "
              f"(about the decoded size) takes {touch * 1e3:.0f} ms here right after another freed as much "
              f"({decoded / touch / 1e9:.1f} GB/s, median of 5)"
              + (f", and {rested * 1e3:.0f} ms after {args.idle:g} s of rest (median of 3)" if rested else "")
              + ": page zeroing (and, on a VM, the host backing the pages again) that ggzip's decoded tensors pay "
              "and a mapped Q8_0 file does not.",
              "", "Tokens/s (tg32) after each kind of load:", "",
              "| threads | file | load | GGZIP_PAGES | tokens/s | / Q8_0 mmap | / Q8_0 no-mmap, same pages |",
              "|---|---|---|---|---|---|---|"]
    for t in args.threads:
        for ld in loads:
            if ld.before:
                continue
            v = tps[(t, ld.label)]
            vs = f"{v / tps[(t, same[ld.pages])]:.2f}x" if ld.pages in same and ld.label != same[ld.pages] else "-"
            lines.append(f"| {t} | {ld.file} | {'mmap' if ld.mmap else 'no-mmap'} | {ld.pages or '-'} | {v:.1f} | "
                         f"{v / tps[(t, base)]:.2f}x | {vs} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pairs", type=Path, nargs="+", metavar="PLAIN GGZIP",
                    help="a plain Q8_0 GGUF and its ggzip GGUF; more pairs may follow")
    ap.add_argument("--runs", type=int, default=5, help="interleaved rounds per cell (median)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                    help="llama-bench -t, the same for every cell of a row (the loader's decode threads follow it)")
    ap.add_argument("--pages", default=",".join(POLICIES),
                    help="GGZIP_PAGES policies to run every anonymous-memory load under (default: all)")
    ap.add_argument("--quick", action="store_true", help="a smoke test: 1 round, 1 thread count, warm and cold only")
    ap.add_argument("--out", type=Path, default=BENCH_MD, help="the markdown file to write (default BENCHMARKS.md)")
    ap.add_argument("--no-write", action="store_true", help="print only, do not write the markdown file")
    ap.add_argument("--how", default="", help="how the files were made (printed with the tables)")
    ap.add_argument("--idle", type=float, default=0.0, metavar="S",
                    help="also a warm cell where each load follows S seconds of rest")
    ap.add_argument("--primed", type=int, default=0, metavar="MIB",
                    help="also a warm cell where MIB of 2 MiB pages are faulted in and freed before each load")
    ap.add_argument("--before", type=Path, metavar="LLAMA_DIR",
                    help="another patched build (its bin/llama-bench): ggzip loads with it too, as a before column")
    args = ap.parse_args(argv)
    given = argv if argv is not None else sys.argv[1:]
    if len(args.pairs) % 2:
        ap.error("give files in pairs: PLAIN GGZIP [PLAIN GGZIP ...]")
    args.pages = [p for p in args.pages.split(",") if p]
    if any(p not in POLICIES for p in args.pages) or not args.pages:
        ap.error(f"--pages: one or more of {','.join(POLICIES)}")
    if args.quick:
        args.runs, args.threads, args.idle, args.primed = 1, args.threads[-1:], 0.0, 0
    if not (BIN / "llama-bench").exists():
        raise SystemExit(f"bench_load: {BIN}/llama-bench missing: run scripts/build_llama.sh llama-bench")
    knows_pages = build_knows(BIN, b"GGZIP_PAGES")
    knows_threads = build_knows(BIN, b"ggzip.load_threads")
    warnings = ([] if knows_pages else
                ["WARNING: this build of llama.cpp never reads GGZIP_PAGES: the policy columns all ran the same "
                 "code"]) + \
               ([] if knows_threads else
                ["WARNING: this build has no ggzip.load_threads: its load-time decode runs on every core "
                 "whatever -t says"])
    for w in warnings:
        print(w, file=sys.stderr)

    cache_how = drop_cache(args.pairs[0])
    lines = [
        provenance("bench_load.py", given),
        "",
        f"Patched llama.cpp ({BIN}). Cold cache by {cache_how}. "
        f"Load = wall time of `llama-bench -p 0 -n 1 -r 1` (load + one token), median of {args.runs} interleaved "
        f"rounds; peak RSS of that process; tokens/s = llama-bench tg32 ({TG_REPS} repetitions), median of as many "
        "interleaved rounds. `threads` is llama-bench -t, the same for every load and token run of a row; the "
        "loader's decode threads follow it (ggzip.load_threads, set from -t). "
        "mmap = llama.cpp's default load (ggzip: frames decode in the background from the start of the "
        "load, patch 0004); no-mmap = `--load-mode none` (ggzip: frames decode at load_all_data). "
        "GGZIP_PAGES = the page policy of the buffers that receive weights in anonymous memory (off: no madvise; "
        "huge: MADV_HUGEPAGE; probe: huge, turned off after three slow 2 MiB faults in a row); '-' = unset "
        "(a mapped Q8_0 file puts no weight in anonymous memory)."
        + (f" fresh pages primed = a helper process faults in and frees {args.primed} MiB of 2 MiB pages just "
           "before each load, so that the load gets recently freed pages, which the host still backs (on a VM "
           "that hands free memory back to its host, any other load may get pages the host took back, and "
           "each then costs a host fault per 4 KiB: see Fresh memory below the table)."
           if args.primed else "")
        + (f" before = ggzip (mmap) loaded by the build in `{args.before}`, GGZIP_PAGES unset."
           if args.before else ""),
    ] + [f"\n**{w}**" for w in warnings]
    if args.how:
        lines += ["", args.how]
    pairs = list(zip(args.pairs[0::2], args.pairs[1::2]))
    results = [measure_pair(plain, ggz, args) for plain, ggz in pairs]
    # the idle cells last: their rests let the host take back free memory, which the
    # back-to-back loads of the other cells would then pay for
    if args.idle:
        for (plain, ggz), res in zip(pairs, results):
            res["rows"] += measure_cells(plain, ggz, args, ("idle",))
    for (plain, ggz), res in zip(pairs, results):
        lines += [""] + pair_lines(plain, ggz, args, res)
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("load", "## Load time (llama.cpp)\n\n" + text, args.out)
        print(f"wrote {args.out} (section load)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
