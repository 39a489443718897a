"""Each benchmark script owns one section of BENCHMARKS.md, between
<!-- begin:NAME --> and <!-- end:NAME -->, and rewrites only that section.
Every section opens with the same provenance line (provenance()): the command,
the git revision, the date and the CPU, so a table says what made it."""
from __future__ import annotations

import hashlib
import os
import platform
import re
import shlex
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_MD = ROOT / "BENCHMARKS.md"


def write_section(name: str, text: str, path: Path = BENCH_MD) -> None:
    begin, end = f"<!-- begin:{name} -->", f"<!-- end:{name} -->"
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    old = path.read_text() if path.exists() else "# ggzip benchmarks\n\n"
    pat = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.S)
    new = pat.sub(lambda _: block, old) if pat.search(old) else old.rstrip() + "\n\n" + block
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(new)
    os.replace(tmp, path)


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_revision() -> str:
    """`git rev-parse --short HEAD`, with "+dirty" when the work tree differs from it."""
    def git(*a):
        return subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True)
    head = git("rev-parse", "--short", "HEAD")
    if head.returncode != 0:
        return "unknown (not a git work tree)"
    # the tables and plots the benchmarks write are not what made them
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!BENCHMARKS.md", ":!docs").stdout.strip()
    return head.stdout.strip() + ("+dirty" if dirty else "")


def source_hash(paths) -> str:
    """sha256 (first 12 hex digits) over the names and bytes of every file under
    paths (relative to the repository root), in sorted order: it changes exactly
    when one of those files does, committed or not. Caches are keyed by it."""
    h = hashlib.sha256()
    for p in paths:
        base = ROOT / p
        files = [base] if base.is_file() else sorted(
            f for f in base.rglob("*") if f.is_file() and "__pycache__" not in f.parts
            and f.suffix not in (".pyc", ".so", ".o"))
        for f in files:
            h.update(str(f.relative_to(ROOT)).encode() + b"\0")
            h.update(f.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def command_line(script: str, argv) -> str:
    """The command that ran, as one would type it from the repository root."""
    return f"python scripts/{script}" + "".join(f" {shlex.quote(str(a))}" for a in argv)


def provenance(script: str, argv, extra: str = "") -> str:
    """One line: command, git revision, date (UTC), CPU and cores."""
    return (f"Made by `{command_line(script, argv)}` at git {git_revision()}{extra}, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, on {cpu_name()} "
            f"({os.cpu_count()} logical cores).")


def save_figure(fig, path: Path) -> None:
    """Write a matplotlib figure to PATH through a temporary file, and close it."""
    import matplotlib.pyplot as plt
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def llama_stat(out: str, pat: str, who: str) -> float:
    """The number after regex PAT in a llama.cpp tool's output (e.g. r"Mean\\s+KLD:");
    exits naming WHO and the output's tail when it is missing."""
    import sys
    m = re.search(pat + r"\s*:?\s*([0-9.eE+-]+)", out)
    if not m:
        sys.exit(f"{who}: no {pat!r} in the tool's output:\n{out[-2000:]}")
    return float(m.group(1))
