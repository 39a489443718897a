"""Measure one model load in llama-cpp-python: prompt and generation speed, RSS.

    from ggzip.plan.measure import measure
    m = measure("model.ggzip.gguf", keep="blk.*.ffn_*", threads=2, ctx=2048)
    m.gen_tps, m.prompt_tps, m.peak_rss

Each call runs ONE fresh process (`python -m ggzip.plan.measure ...`, which prints
a JSON object), so that its peak RSS is the model's alone and a memory limit can be
put on it: with cgroup=DIR (a cgroup v1 directory the caller made and limited, e.g.
/sys/fs/cgroup/memory/bench with memory.limit_in_bytes set), the child writes its
pid into DIR/cgroup.procs before it imports llama_cpp.

What the child does, in this order:
  load    Llama(model, n_ctx=ctx, n_threads=threads, n_threads_batch=threads,
          kv_overrides={"ggzip.keep": keep, "ggzip.load_threads": threads}) with
          llama-cpp-python's other defaults (n_batch = n_ubatch = 512, mmap on), as
          `ggzip run` loads; keep=None sets no ggzip.keep override at all (then
          GGZIP_KEEP or the file's key decide, as in every tool).
  warm-up one prompt of n_prompt tokens and one generated token (untimed), so that
          buffers are allocated and pages faulted in before timing, as llama-bench does.
  timed   `repeat` rounds of: PROMPT_EVALS times (clear the KV cache, evaluate the
          prompt of n_prompt tokens as one batch), then n_gen single tokens chosen
          greedily after the last.
Reported:
  prompt_tps  n_prompt / median prompt time over all the prompt evaluations.
  gen_tps     1 / median of the per-token times of all rounds: the median, not the
              mean, because this machine is shared and one preempted token would move
              the mean; gen_tps_mean = n_gen / mean round time (llama-bench's tg) too.
  rss_load    VmRSS right after the load; peak_rss: VmHWM at the end (both bytes,
              of the child process: interpreter, llama.cpp, model, KV cache, buffers).
  keep_log    llama.cpp's "ggzip: keeping N of M frames ..." line, or "" when the
              library did not keep any (or predates ggzip.keep).
The signature of measure() and the fields of Measurement are stable: scripts use them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import GGZipError

DEFAULT_CTX = 2048        # `ggzip run`'s default context, so a plan fits what run loads
KEEP_LOG = "ggzip: keeping"
# A prompt is one sample of a fraction of a second where generation gives n_gen: on
# a shared machine one burst moved a single sample's pp by 20-25% (bench_memory:
# the plan's pp off by +23% where its tg was +7%), so each round times it this often
PROMPT_EVALS = 3


@dataclass
class Measurement:
    model: str
    keep: Optional[str]
    threads: int
    ctx: int
    n_prompt: int
    n_gen: int
    repeat: int
    load_s: float            # seconds to load (Llama() construction)
    prompt_tps: float        # prompt tokens/s (median prompt evaluation)
    gen_tps: float           # generated tokens/s (median per-token time)
    gen_tps_mean: float      # generated tokens/s (n_gen / mean round time)
    gen_ms_median: float     # median time of one generated token, ms
    rss_load: int            # bytes, VmRSS after load
    peak_rss: int            # bytes, VmHWM at the end
    keep_log: str            # the loader's "ggzip: keeping ..." line, or ""
    library: str             # ggzip version string of the libllama used


def measure(model_path, keep: Optional[str] = None, threads: Optional[int] = None, ctx: int = DEFAULT_CTX,
            n_prompt: int = 128, n_gen: int = 64, repeat: int = 1, cgroup=None, env: Optional[dict] = None,
            timeout: float = 1800) -> Measurement:
    """Load model_path in a fresh llama-cpp-python process and time it (see the module doc).
    @param keep     the ggzip.keep SPEC ("all", "none", globs), or None for no override
    @param threads  n_threads, n_threads_batch and ggzip.load_threads (default: all CPUs)
    @param cgroup   a cgroup v1 directory the child joins before loading (caller limits it)
    @param env      extra environment variables of the child (e.g. GGZIP_PAGES)
    @return Measurement; GGZipError when the child fails (its stderr's tail in the message)"""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise GGZipError(f"{model_path}: no such file")
    threads = threads or os.cpu_count() or 1
    if n_prompt < 1 or n_gen < 1 or repeat < 1 or threads < 1:
        raise GGZipError("measure: n_prompt, n_gen, repeat and threads must be >= 1")
    if ctx < n_prompt + n_gen:
        raise GGZipError(f"measure: ctx {ctx} < n_prompt + n_gen = {n_prompt + n_gen}")
    cmd = [sys.executable, "-m", "ggzip.plan.measure", str(model_path), "--threads", str(threads),
           "--ctx", str(ctx), "--n-prompt", str(n_prompt), "--n-gen", str(n_gen), "--repeat", str(repeat)]
    if keep is not None:
        cmd += ["--keep", keep]
    if cgroup is not None:
        cmd += ["--cgroup", str(cgroup)]
    child_env = dict(os.environ)
    # the child imports this package from where the parent did (a source checkout too)
    pkg_root = str(Path(__file__).resolve().parents[2])
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, child_env.get("PYTHONPATH")) if p)
    child_env.update(env or {})
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=child_env)
    except subprocess.TimeoutExpired:
        raise GGZipError(f"{model_path}: measuring took more than {timeout:.0f} s (keep={keep!r})") from None
    if r.returncode != 0:
        why = "killed (out of memory?)" if r.returncode in (-9, 137) else f"exit code {r.returncode}"
        raise GGZipError(f"{model_path}: measuring keep={keep!r} failed, {why}: {r.stderr.strip()[-1500:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["keep_log"] = next((ln.strip() for ln in r.stderr.splitlines() if KEEP_LOG in ln), "")
    return Measurement(**out)


# ---- the child process ------------------------------------------------------

def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # the kernel writes kB
    raise GGZipError(f"/proc/self/status has no {field}")


def _join_cgroup(cgroup: str) -> None:
    procs = Path(cgroup) / "cgroup.procs"
    try:
        procs.write_text(f"{os.getpid()}\n")
    except OSError as e:
        raise GGZipError(f"{procs}: cannot join the cgroup ({e})") from None


def _child(args) -> dict:
    if args.cgroup:
        _join_cgroup(args.cgroup)   # before the model (and llama_cpp) take any memory
    import numpy as np
    import llama_cpp
    from ..constants import Keys
    from ..run.llama import Llama, ggzip_version

    overrides = {Keys.LOAD_THREADS: args.threads}
    if args.keep is not None:
        overrides[Keys.KEEP] = args.keep
    t0 = time.perf_counter()
    # verbose: the loader's log (the "ggzip: keeping" line) goes to stderr for the parent
    llm = Llama(args.model, n_ctx=args.ctx, n_threads=args.threads, n_threads_batch=args.threads,
                kv_overrides=overrides, verbose=True)
    load_s = time.perf_counter() - t0
    rss_load = _status_bytes("VmRSS")
    ctx, n_vocab = llm._ctx.ctx, llm.n_vocab()

    # a fixed prompt: dense-model speed does not depend on which tokens
    prompt = [llm.token_bos()] + [(17 + 7919 * i) % n_vocab for i in range(1, args.n_prompt)]

    def greedy() -> int:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
        return int(logits.argmax())

    def round_(n_gen: int, evals: int = PROMPT_EVALS):
        prompt_s = []
        for _ in range(evals):
            llm.reset()
            t = time.perf_counter()
            llm.eval(prompt)
            prompt_s.append(time.perf_counter() - t)
        per_token = []
        tok = greedy()
        for _ in range(n_gen):
            t = time.perf_counter()
            llm.eval([tok])
            tok = greedy()
            per_token.append(time.perf_counter() - t)
        return prompt_s, per_token

    round_(1, 1)  # warm-up
    prompt_times, token_times, round_times = [], [], []
    for _ in range(args.repeat):
        p, per_token = round_(args.n_gen)
        prompt_times += p
        token_times += per_token
        round_times.append(sum(per_token))
    med_token = statistics.median(token_times)
    return dict(model=str(args.model), keep=args.keep, threads=args.threads, ctx=args.ctx,
                n_prompt=args.n_prompt, n_gen=args.n_gen, repeat=args.repeat, load_s=load_s,
                prompt_tps=args.n_prompt / statistics.median(prompt_times), gen_tps=1.0 / med_token,
                gen_tps_mean=args.n_gen / statistics.mean(round_times), gen_ms_median=med_token * 1e3,
                rss_load=rss_load, peak_rss=_status_bytes("VmHWM"), library=ggzip_version())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ggzip.plan.measure",
                                description="Time one model load (prints one JSON line); see ggzip.plan.measure.")
    p.add_argument("model")
    p.add_argument("--keep", default=None, help="ggzip.keep SPEC (default: no override)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--ctx", type=int, default=DEFAULT_CTX)
    p.add_argument("--n-prompt", type=int, default=128)
    p.add_argument("--n-gen", type=int, default=64)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--cgroup", default=None, help="cgroup v1 directory to join before loading")
    args = p.parse_args(argv)
    try:
        out = _child(args)
    except GGZipError as e:
        print(f"ggzip: error: {e}", file=sys.stderr)
        return 1
    out["keep_log"] = ""   # the parent reads it from stderr
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
