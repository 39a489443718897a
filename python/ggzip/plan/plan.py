"""Choose which ggzip frames stay compressed in RAM for a memory budget.

Calibration, measured on this device for this file (cached: a second plan is instant):
  (a) the file's decode speed per thread count (the codec's Python binding, a sample
      of its frames decoded with 1..threads threads): reported, and the bound a
      fused matmul cannot beat;
  (b) measure() runs (ggzip.plan.measure): keep none, keep all, and one per tensor
      kind present among the eligible tensors (attn: blk.N.attn_*, ffn: blk.N.ffn_*,
      embd: token_embd, output: output.weight, other).  A kind's cost per decoded byte,
      in generation and in prompt processing, is (its run - keep none) / its decoded
      bytes (clamped at 0: a kind within noise costs nothing), then all kinds scaled
      by one factor so that keeping every kind costs what the keep-all run measured
      (kind_costs): a burst of load on one kind's run (a 128-token prompt takes about
      0.15 s) once made SmolLM2's three kinds sum to 5.8x the keep-all delta, and the
      predicted prompt speed 25% low.
Model, for a kept set K:
  time per generated token(K) = T_none + sum over K of cost[kind] x decoded bytes,
  prompt time(K) likewise,
  peak RSS(K) = peak RSS of keep none - sum over K of (decoded - frame bytes - o),
  o = bytes a kept tensor costs beyond its frame, fitted on the keep-all run (about
  60 KiB on SmolLM2: without it keep-all is predicted 6% low, with it every kind's
  run is predicted within 1%); the kind runs check it (printed when more than 5% off).
Choice: the least predicted generation time with predicted peak RSS <= budget, found
greedily: units of one kind in one layer (a whole kind for tensors outside blk.N),
the kinds in order of bytes saved per added second, layers in ascending order within
a kind (so that the SPEC of a partial kind is a short layer range), taken until the
saving reaches the need.  Units are equal in cost per byte within a kind, so this is
the optimum up to one unit (a kind in one layer) and the frames' small differences in
ratio.  If the SPEC of that set would not fit llama.cpp's 127 bytes, the partial kind
is rounded up to whole (more memory saved, a little slower).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import GGZipError
from .measure import DEFAULT_CTX, measure
from .spec import SpecTooLong, compress_spec, selected

MiB = 1 << 20
KINDS = ("attn", "ffn", "embd", "output", "other")
CALIBRATION_VERSION = 4        # bump when the cached calibration's meaning changes
_BLK = re.compile(r"^blk\.(\d+)\.(.+)$")
_KEEP_LOG = re.compile(r"keeping (\d+) of (\d+) frames")


# ---- sizes ---------------------------------------------------------------------
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30,
          "gib": 1 << 30, "t": 1 << 40, "tib": 1 << 40, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9,
          "tb": 10 ** 12}


def parse_size(text) -> int:
    """Bytes of a size: a byte count, or a number with K/M/G/T or KiB/MiB/GiB/TiB
    (powers of 1024) or KB/MB/GB/TB (powers of 1000): '300M', '0.5G', '512MiB'."""
    if isinstance(text, int):
        n = text
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
        unit = m.group(2).lower() if m else None
        if unit not in _UNITS:
            raise GGZipError(f"cannot read the size {text!r}: give bytes or a number with K, M, G, "
                             "KiB, MiB, GiB, KB, MB or GB (e.g. 300M, 0.5G, 512MiB)")
        n = int(float(m.group(1)) * _UNITS[unit])
    if n <= 0:
        raise GGZipError(f"the size {text!r} must be positive")
    return n


def fmt_mib(n: float) -> str:
    return f"{n / MiB:.1f} MiB"


# ---- the file's eligible tensors ---------------------------------------------------
@dataclass(frozen=True)
class Item:
    name: str
    kind: str
    layer: int           # -1 outside blk.N
    decoded: int         # bytes decoded (Q8_0)
    frame: int           # bytes of its frame in the file

    @property
    def saving(self) -> int:
        return self.decoded - self.frame


def kind_of(name: str) -> str:
    m = _BLK.match(name)
    if m:
        role = m.group(2)
        return "attn" if role.startswith("attn") else "ffn" if role.startswith("ffn") else "other"
    if name.startswith("token_embd"):
        return "embd"
    return "output" if name.startswith("output") else "other"


def eligible_items(path) -> list:
    """The tensors the loader may keep compressed (the keep-compressed contract):
    stored as ggzip frames, real type Q8_0, at most 2-D, frame bytes <= decoded bytes
    (as the loader's ggzip_select_kept, patch 0009)."""
    from ..container.reader import GGZipReader
    with GGZipReader(path) as r:
        if not r.is_ggzip:
            raise GGZipError(f"{path}: not a ggzip GGUF (no frames to keep compressed)")
        out = []
        for t in r.tensors.values():
            if t.coded and t.type_name == "Q8_0" and len(t.ne) <= 2 and t.stored <= t.nbytes:
                m = _BLK.match(t.name)
                out.append(Item(t.name, kind_of(t.name), int(m.group(1)) if m else -1, t.nbytes, t.stored))
    if not out:
        raise GGZipError(f"{path}: no tensor can stay compressed (none is a 2-D Q8_0 frame)")
    return out


# ---- calibration -------------------------------------------------------------------
@dataclass
class Run:
    spec: str
    n_kept: int          # tensors the SPEC selects (by our eligibility)
    keep_log: str        # the loader's own count
    prompt_s: float      # seconds for the n_prompt-token prompt
    gen_ms: float        # ms per generated token (median)
    peak_rss: int
    rss_load: int


@dataclass
class Calibration:
    version: int
    model: str
    threads: int
    ctx: int
    n_prompt: int
    n_gen: int
    library: str
    decode_gbps: dict            # str(threads) -> GB/s of this file's frames (decoded bytes / s)
    runs: dict                   # "none", "all", kind -> Run
    gen_ms_per_mib: dict = field(default_factory=dict)    # kind -> extra ms per token per decoded MiB
    prompt_ms_per_mib: dict = field(default_factory=dict)  # kind -> extra ms per prompt per decoded MiB
    keep_overhead: int = 0       # RSS bytes per kept tensor beyond its frame (>= 0)
    seconds: float = 0.0         # how long calibrating took

    @classmethod
    def from_json(cls, d: dict) -> "Calibration":
        d = dict(d)
        d["runs"] = {k: Run(**v) for k, v in d["runs"].items()}
        return cls(**d)


def _library_identity() -> str:
    """The ggzip version of the loaded libllama, and its file's identity (a rebuild
    with the same version string must recalibrate)."""
    from ..run.llama import check_patched_llama_cpp
    llama_cpp, version = check_patched_llama_cpp()
    lib = Path(getattr(llama_cpp.llama_cpp._lib, "_name", "") or "")
    st = lib.stat() if lib.is_file() else None
    ident = f"{lib}:{st.st_size}:{st.st_mtime_ns}" if st else str(lib)
    return f"{version}; llama-cpp-python {llama_cpp.__version__}; {ident}"


def cache_dir() -> Path:
    return Path(os.environ.get("GGZIP_PLAN_CACHE") or Path.home() / ".cache" / "ggzip" / "plan")


def _cache_path(path: Path, threads: int, ctx: int, n_prompt: int, n_gen: int, library: str) -> Path:
    st = path.stat()
    ident = json.dumps([CALIBRATION_VERSION, str(path.resolve()), st.st_size, st.st_mtime_ns, threads, ctx,
                        n_prompt, n_gen, library])
    return cache_dir() / (hashlib.sha256(ident.encode()).hexdigest()[:24] + ".json")


def decode_speed(path, items: list, threads: int, sample_bytes: int = 64 * MiB) -> dict:
    """{threads: GB/s} decoding the largest frames of `items` (up to sample_bytes
    decoded) with the codec, 1..threads threads, best of 3 passes."""
    import numpy as np
    from .. import codec
    from ..container.reader import GGZipReader
    sample, total = [], 0
    for it in sorted(items, key=lambda i: -i.decoded):
        if total >= sample_bytes:
            break
        sample.append(it)
        total += it.decoded
    out = np.empty(max(i.decoded for i in sample), np.uint8)
    speeds = {}
    with GGZipReader(path) as r:
        frames = [r.stored(i.name) for i in sample]
        for f in frames:            # fault the mapped frames in: time decoding, not the disk
            codec.decode(f, out=out, threads=threads)
        for t in range(1, threads + 1):
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                for f in frames:
                    codec.decode(f, out=out, threads=t)
                best = min(best, time.perf_counter() - t0)
            speeds[t] = total / best / 1e9
        del frames                  # views of the mapping: released before it closes
    return speeds


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(f"ggzip plan: {msg}", file=sys.stderr, flush=True)


def _check_keeps(run: Run, n_eligible: int, library: str) -> None:
    got = _KEEP_LOG.search(run.keep_log)
    if not got:
        raise GGZipError(f"the libllama of llama-cpp-python ({library}) does not keep frames compressed in RAM "
                         "(no 'ggzip: keeping' line with ggzip.keep=all): install the patched build that "
                         "reads ggzip.keep (scripts/build_llama.sh --python)")
    if int(got.group(1)) != n_eligible:
        print(f"ggzip plan: warning: llama.cpp keeps {got.group(1)} tensors with 'all', this plan counts "
              f"{n_eligible} eligible: the predictions may be off", file=sys.stderr)


def calibrate(model_path, threads: Optional[int] = None, ctx: int = DEFAULT_CTX, n_prompt: int = 128,
              n_gen: int = 64, recalibrate: bool = False, progress: bool = True, rounds: int = 1) -> Calibration:
    """The calibration of model_path on this device (from the cache when it is there).
    rounds > 1: every run that many times, in passes over all the runs (so that a burst
    of other load on a shared machine hits one pass), each time the fastest pass."""
    path = Path(model_path)
    if not path.is_file():
        raise GGZipError(f"{path}: no such file")
    threads = threads or os.cpu_count() or 1
    items = eligible_items(path)
    library = _library_identity()
    if rounds < 1:
        raise GGZipError("calibration rounds must be >= 1")
    cache = _cache_path(path, threads, ctx, n_prompt, n_gen, f"{library}; rounds {rounds}")
    if cache.is_file() and not recalibrate:
        try:
            return Calibration.from_json(json.loads(cache.read_text()))
        except (ValueError, TypeError, KeyError):
            pass   # a damaged or older cache entry: calibrate again
    t_start = time.perf_counter()
    names = [i.name for i in items]
    _say(progress, f"calibrating {path.name} on {threads} threads, ctx {ctx} (cached for the next plan)")
    _say(progress, "decode speed of this file's frames ...")
    gbps = decode_speed(path, items, threads)
    specs = {"none": "none", "all": "all"}   # "all" early: a library that ignores ggzip.keep fails fast
    for kind in KINDS:
        kept = {i.name for i in items if i.kind == kind}
        if kept:
            specs[kind] = compress_spec(kept, names)
    runs: dict = {}
    todo = [label for _ in range(rounds) for label in specs]
    for j, label in enumerate(todo, 1):
        spec = specs[label]
        _say(progress, f"run {j}/{len(todo)}: keep {label} ({spec}) ...")
        m = measure(path, keep=spec, threads=threads, ctx=ctx, n_prompt=n_prompt, n_gen=n_gen)
        run = Run(spec, len(selected(spec, names)), m.keep_log, n_prompt / m.prompt_tps,
                  m.gen_ms_median, m.peak_rss, m.rss_load)
        if label == "all" and label not in runs:
            _check_keeps(run, len(items), library)
        if label in runs:   # the fastest pass; memory does not depend on the load
            best = runs[label]
            run.prompt_s, run.gen_ms = min(run.prompt_s, best.prompt_s), min(run.gen_ms, best.gen_ms)
        runs[label] = run
    cal = Calibration(CALIBRATION_VERSION, str(path), threads, ctx, n_prompt, n_gen, library,
                      {str(t): s for t, s in gbps.items()}, runs)
    none = runs["none"]
    saving_all = sum(i.saving for i in items)
    cal.keep_overhead = max(0, (runs["all"].peak_rss - (none.peak_rss - saving_all)) // len(items))
    kinds = [k for k in specs if k not in ("none", "all")]
    mib = {k: sum(i.decoded for i in items if i.kind == k) / MiB for k in kinds}
    cal.gen_ms_per_mib = kind_costs({k: runs[k].gen_ms - none.gen_ms for k in kinds}, mib,
                                    runs["all"].gen_ms - none.gen_ms)
    cal.prompt_ms_per_mib = kind_costs({k: (runs[k].prompt_s - none.prompt_s) * 1e3 for k in kinds}, mib,
                                       (runs["all"].prompt_s - none.prompt_s) * 1e3)
    cal.seconds = time.perf_counter() - t_start
    cache.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=cache.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(cal), f, indent=1)
    os.replace(tmp, cache)
    _say(progress, f"calibrated in {cal.seconds:.0f} s")
    return cal


def kind_costs(delta_ms: dict, mib: dict, all_ms: float) -> dict:
    """Cost per decoded MiB of each kind (ms) from its run's delta over keep none
    (delta_ms[kind], its decoded MiB in mib[kind]) and the keep-all run's delta
    all_ms: each kind's own delta / MiB, clamped at 0, then all scaled so that
    together they give all_ms (the same per MiB for every kind where no kind's own
    run rose above keep none's)."""
    own = {k: max(0.0, delta_ms[k]) / mib[k] for k in delta_ms if mib.get(k)}
    total = sum(own[k] * mib[k] for k in own)
    if all_ms <= 0 or not own:
        return {k: 0.0 for k in own}
    if total <= 0:
        return {k: all_ms / sum(mib[j] for j in own) for k in own}
    return {k: v * all_ms / total for k, v in own.items()}


# ---- the plan ------------------------------------------------------------------------
@dataclass
class Plan:
    model: str
    budget: int
    items: list                 # every eligible Item
    kept: list                  # the Items kept compressed
    spec: str
    calibration: Calibration
    peak_rss: int               # predicted
    gen_ms: float               # predicted ms per generated token
    prompt_s: float             # predicted seconds for the n_prompt prompt
    notes: list                 # cross-checks worth printing

    @property
    def gen_tps(self) -> float:
        return 1e3 / self.gen_ms

    @property
    def prompt_tps(self) -> float:
        return self.calibration.n_prompt / self.prompt_s

    def cost_ms(self, it: Item) -> float:
        """Predicted extra ms per generated token of keeping `it`."""
        return self.calibration.gen_ms_per_mib.get(it.kind, 0.0) * it.decoded / MiB


def predict(cal: Calibration, kept: list) -> tuple:
    """(peak RSS bytes, ms per generated token, prompt seconds) of keeping `kept`."""
    none = cal.runs["none"]
    peak = none.peak_rss - sum(i.saving - cal.keep_overhead for i in kept)
    gen = none.gen_ms + sum(cal.gen_ms_per_mib.get(i.kind, 0.0) * i.decoded for i in kept) / MiB
    prompt = none.prompt_s + sum(cal.prompt_ms_per_mib.get(i.kind, 0.0) * i.decoded for i in kept) / MiB / 1e3
    return peak, gen, prompt


class BudgetTooSmall(GGZipError):
    """A budget below the smallest feasible size (bytes: .smallest), of which the
    kept frames are .frames: the rest (llama.cpp, its KV cache and buffers, the
    process) does not shrink by keeping more, so the message says both."""

    def __init__(self, cal: "Calibration", budget: int, smallest: int, frames: int):
        self.smallest, self.frames = smallest, frames
        super().__init__(
            f"{cal.model}: {fmt_mib(budget)} is below the smallest feasible size, {fmt_mib(smallest)} "
            f"({smallest} bytes) with every tensor that saves memory kept compressed (threads {cal.threads}, "
            f"ctx {cal.ctx}): {fmt_mib(frames)} of it are the kept frames, {fmt_mib(smallest - frames)} the "
            f"rest (tensors decoded at load, llama.cpp with its KV cache and compute buffers, the process "
            f"itself); give --memory {smallest // MiB + 1}M or more")


def _expressible(group: list, names: list):
    """The SPEC that keeps exactly `group`, or None when none fits in 127 bytes."""
    try:
        return compress_spec({i.name for i in group}, names)
    except SpecTooLong:
        return None


def choose(items: list, cal: Calibration, budget: int) -> tuple:
    """(kept Items, SPEC) for a budget in bytes (see the module doc); BudgetTooSmall
    naming the smallest feasible size when even keeping everything does not fit."""
    names = [i.name for i in items]
    # a tensor whose frame saves less than a kept tensor's overhead never helps
    pool = [i for i in items if i.saving > cal.keep_overhead]
    # the smallest is that of a set a SPEC can name: the pool, or else everything
    # ("all"; the pool's globs may not fit in 127 bytes when it leaves out tensors
    # scattered over the layers; the others only add to the peak)
    floor_spec = _expressible(pool, names)
    floor_group, floor_spec = (pool, floor_spec) if floor_spec is not None else (items, "all")
    smallest = predict(cal, floor_group)[0]
    if budget < smallest:
        raise BudgetTooSmall(cal, budget, smallest, sum(i.frame for i in floor_group))
    need = cal.runs["none"].peak_rss - budget
    if need <= 0:
        return [], "none"

    def net(group) -> int:
        return sum(i.saving - cal.keep_overhead for i in group)

    def ratio(kind):   # bytes saved per ms added per token
        group = [i for i in pool if i.kind == kind]
        cost = cal.gen_ms_per_mib.get(kind, 0.0) * sum(i.decoded for i in group) / MiB
        return net(group) / cost if cost > 0 else float("inf")

    kinds = sorted({i.kind for i in pool}, key=lambda k: (-ratio(k), KINDS.index(k)))
    units: list = []   # the Items of one kind in one layer, in the order they are taken
    for kind in kinds:
        for layer in sorted({i.layer for i in pool if i.kind == kind}):
            units.append([i for i in pool if i.kind == kind and i.layer == layer])
    kept, saved = [], 0
    for unit in units:
        if saved >= need:
            break
        kept += unit
        saved += net(unit)
    spec = _expressible(kept, names)
    if spec is not None:
        return kept, spec
    # round the partial kind up to the whole kind, then add whole kinds in order;
    # each as the pool's tensors of those kinds, or all of them (shorter globs)
    done = {i.kind for i in kept}
    for kind in [None] + kinds:
        done.add(kind)
        for group in ([i for i in pool if i.kind in done], [i for i in items if i.kind in done]):
            if predict(cal, group)[0] <= budget and (spec := _expressible(group, names)) is not None:
                return group, spec
    return floor_group, floor_spec      # fits: budget >= smallest


def plan(model_path, memory, threads: Optional[int] = None, ctx: int = DEFAULT_CTX, n_prompt: int = 128,
         n_gen: int = 64, recalibrate: bool = False, progress: bool = True, rounds: int = 1) -> Plan:
    """Plan model_path for a peak RSS of `memory` (bytes or a size string like '300M')
    with `threads` threads and a context of `ctx` tokens.  Calibrates on first use
    (`rounds` passes, see calibrate)."""
    budget = parse_size(memory)
    cal = calibrate(model_path, threads, ctx, n_prompt, n_gen, recalibrate, progress, rounds)
    items = eligible_items(model_path)
    kept, spec = choose(items, cal, budget)
    peak, gen, prompt = predict(cal, kept)
    notes = []
    for label, run in cal.runs.items():   # the model against every calibration run
        ran = [i for i in items if i.name in selected(run.spec, [i.name for i in items])]
        pred_peak, pred_gen, _ = predict(cal, ran)
        if abs(pred_peak - run.peak_rss) > 0.05 * run.peak_rss:
            notes.append(f"peak RSS with {label} kept: predicted {fmt_mib(pred_peak)}, measured {fmt_mib(run.peak_rss)}")
        if label == "all" and abs(pred_gen - run.gen_ms) > 0.05 * run.gen_ms:
            notes.append(f"generation with all kept: predicted {pred_gen:.1f} ms/token, measured {run.gen_ms:.1f} "
                         "(the kinds' costs do not add up exactly)")
    return Plan(str(model_path), budget, items, kept, spec, cal, peak, gen, prompt, notes)


def format_plan(p: Plan) -> str:
    """The table of kept tensors, the summary and the SPEC."""
    cal, lines = p.calibration, []
    if p.kept:
        w = max(len(i.name) for i in p.kept)
        lines.append(f"{'tensor':<{w}}  {'decoded MiB':>11}  {'compressed MiB':>14}  {'ms/token':>8}")
        for i in p.kept:
            lines.append(f"{i.name:<{w}}  {i.decoded / MiB:11.2f}  {i.frame / MiB:14.2f}  {p.cost_ms(i):8.3f}")
        lines.append("")
    dec = sum(i.decoded for i in p.kept)
    rest = [i for i in p.items if i not in p.kept]
    lines.append(f"kept compressed: {len(p.kept)} of {len(p.items)} eligible tensors ({fmt_mib(dec)} decoded "
                 f"-> {fmt_mib(sum(i.frame for i in p.kept))} of frames); decoded at load: {len(rest)} "
                 f"({fmt_mib(sum(i.decoded for i in rest))})")
    none, all_ = cal.runs["none"], cal.runs["all"]
    lines.append(f"predicted peak RSS {fmt_mib(p.peak_rss)} for a budget of {fmt_mib(p.budget)} "
                 f"(measured: keep none {fmt_mib(none.peak_rss)}, keep all {fmt_mib(all_.peak_rss)})")
    lines.append(f"predicted prompt {p.prompt_tps:.1f} tokens/s, generation {p.gen_tps:.1f} tokens/s "
                 f"(measured keep none: {cal.n_prompt / none.prompt_s:.1f} / {1e3 / none.gen_ms:.1f}, "
                 f"keep all: {cal.n_prompt / all_.prompt_s:.1f} / {1e3 / all_.gen_ms:.1f})")
    speeds = ", ".join(f"{s:.2f} GB/s on {t}" for t, s in cal.decode_gbps.items())
    costs = ", ".join(f"{k} {v:.3f}" for k, v in cal.gen_ms_per_mib.items())
    lines.append(f"calibration ({cal.threads} threads, ctx {cal.ctx}, pp{cal.n_prompt}/tg{cal.n_gen}): "
                 f"decode {speeds}; ms per token per decoded MiB kept: {costs}; "
                 f"RSS per kept tensor beyond its frame {cal.keep_overhead / 1024:.0f} KiB")
    lines += [f"note: {n}" for n in p.notes]
    lines.append(f"SPEC: {p.spec}")
    return "\n".join(lines)
