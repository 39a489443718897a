"""The static aarch64 builds (scripts/build_android.sh) under qemu-user, one
emulated CPU per variant: armv8.0 on a Cortex-A53, armv8.2-dotprod on a
Cortex-A76.  For each: ggzip-bench decodes a ggzip SmolLM2 to the same bytes as
the x86 build (per-tensor CRC32C); llama-cli generates text from it and
llama-server answers a completion over HTTP and stops on SIGINT, every system
call of both runs one that Android's app seccomp filter allows
(android/seccomp-allowed.txt); keeping every tensor compressed (GGZIP_KEEP=all)
generates the same greedy text.  Skips, saying why, without qemu-aarch64-static."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.llama, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(os.environ.get("GGZIP_ANDROID_DIR", ROOT / "build" / "android"))
VARIANTS = {"armv8.0": "cortex-a53", "armv8.2-dotprod": "cortex-a76"}
QEMU = "qemu-aarch64-static"
PROMPT = "What is the capital of France?"


def run(cmd, timeout=1800, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def arm_bins() -> Path:
    """Both variants' llama-cli, llama-server and ggzip-bench, built (or brought up to date) once."""
    if not shutil.which(QEMU):
        pytest.skip(f"{QEMU} not found (Debian: qemu-user-static)")
    r = run(["bash", ROOT / "scripts" / "build_android.sh", "--targets", "llama-cli llama-server ggzip-bench", "--no-tarball"],
            timeout=5400)
    if r.returncode != 0 and "FAILED: zig-install" in r.stderr:
        pytest.skip(f"zig cannot be installed here: {r.stderr.strip()[-300:]}")
    assert r.returncode == 0, r.stderr[-3000:]
    return OUT


def tensor_crcs(out: str) -> dict:
    """`NAME crc32c 0x... BYTES` lines of ggzip-bench --tensors"""
    crcs = dict(re.findall(r"^(\S+) (crc32c 0x[0-9a-f]{8} \d+)$", out, re.M))
    assert crcs, f"no tensor lines in ggzip-bench output:\n{out[-2000:]}"
    return crcs


def qemu(variant: str, *args) -> list:
    return [QEMU, "-cpu", VARIANTS[variant], *args]


@pytest.mark.parametrize("variant", VARIANTS)
def test_arm_decode_equals_x86(variant, arm_bins, ggzip_bench, smollm2_ggz):
    # ggzip_bench: the host build, the reference decode
    ref = run([ggzip_bench, smollm2_ggz, "--tensors", "--repeat", "1"])
    assert ref.returncode == 0, ref.stdout + ref.stderr
    # both the NEON and the scalar kernel; ggzip-bench itself fails if they disagree
    arm = run(qemu(variant, arm_bins / variant / "bin" / "ggzip-bench", smollm2_ggz, "--tensors", "--repeat", "1",
                   "--kernel", "neon", "--kernel", "scalar"))
    assert arm.returncode == 0, arm.stdout + arm.stderr
    assert tensor_crcs(arm.stdout) == tensor_crcs(ref.stdout)


def generate(variant: str, bins: Path, model: Path, trace: bool = False, env=None, extra=()):
    cmd = qemu(variant, *(["-strace"] if trace else []), bins / variant / "bin" / "llama-cli",
               "-m", model, "-p", PROMPT, "-n", "6", "-st", "--temp", "0", "-t", "2", "-c", "256",
               "--no-warmup", "--simple-io", *extra)
    r = run(cmd, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r


def answer(out: str) -> str:
    """The model's reply: llama-cli's output between the prompt's echo and its
    timings line"""
    m = re.search(re.escape(PROMPT) + r"\n(.*?)\n\[ Prompt:", out, re.S)
    assert m, f"no reply in llama-cli's output:\n{out[-2000:]}"
    return re.sub(r"\s+", " ", m.group(1)).strip()


def allowed_syscalls() -> set:
    lines = (ROOT / "android" / "seccomp-allowed.txt").read_text().splitlines()
    return {ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")}


@pytest.mark.parametrize("variant", VARIANTS)
def test_llama_cli_runs_within_android_seccomp(variant, arm_bins, smollm2_ggz):
    # the limit for a stripped static llama-cli
    assert (arm_bins / variant / "bin" / "llama-cli").stat().st_size < 15e6
    r = generate(variant, arm_bins, smollm2_ggz, trace=True)
    text = answer(r.stdout)
    assert re.search(r"[A-Za-z]{2}", text), f"no text generated:\n{r.stdout[-2000:]}"
    check_syscalls(r.stderr)


def check_syscalls(trace: str) -> None:
    """qemu -strace's log: "PID name(args) = ret" per guest call"""
    calls = set(re.findall(r"^\d+ (\w+)\(", trace, re.M))
    assert "openat" in calls and "mmap" in calls, f"no strace output:\n{trace[-2000:]}"
    unknown = re.findall(r"Unknown syscall \d+", trace)
    assert not unknown, unknown
    outside = sorted(calls - allowed_syscalls())
    assert not outside, f"system calls Android's app seccomp filter kills: {outside}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("variant", VARIANTS)
def test_llama_server_runs_within_android_seccomp(variant, arm_bins, smollm2_ggz, tmp_path):
    """Serve one completion over HTTP, then stop on SIGINT as a user would."""
    port = free_port()
    log = tmp_path / "strace.log"
    with open(log, "wb") as err:
        srv = subprocess.Popen([str(c) for c in qemu(variant, "-strace", arm_bins / variant / "bin" / "llama-server",
                                "-m", smollm2_ggz, "--host", "127.0.0.1", "--port", port, "-c", "256", "-t", "2",
                                "--no-warmup")], stdout=subprocess.DEVNULL, stderr=err)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 600
            while True:
                assert srv.poll() is None, log.read_bytes()[-3000:].decode(errors="replace")
                try:
                    with urllib.request.urlopen(url + "/health", timeout=10) as h:
                        if h.status == 200:
                            break
                except (urllib.error.URLError, ConnectionError):  # loading: 503, or not listening yet
                    pass
                assert time.monotonic() < deadline, "llama-server did not come up in 10 min under qemu"
                time.sleep(2)
            req = urllib.request.Request(url + "/completion", method="POST", data=json.dumps(
                {"prompt": "The capital of France is", "n_predict": 4, "temperature": 0}).encode())
            with urllib.request.urlopen(req, timeout=600) as resp:
                content = json.loads(resp.read())["content"]
            assert re.search(r"[A-Za-z]{2}", content), content
            srv.send_signal(signal.SIGINT)
            assert srv.wait(timeout=120) == 0
        finally:
            if srv.poll() is None:
                srv.kill()
                srv.wait()
    check_syscalls(log.read_bytes().decode(errors="replace"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_keep_compressed_generates_the_same_text(variant, arm_bins, smollm2_ggz):
    # Kept tensors run ggml's own Q8_0 kernels (vec_dot, sgemm) on the decoded
    # chunks.  The dotprod build's plain path would repack Q8_0 into interleaved
    # blocks whose kernels round differently (on this prompt SmolLM2's first
    # token is a near tie that flips), so the plain run is made with the same
    # kernels (--no-repack): then the text must be identical.
    plain = generate(variant, arm_bins, smollm2_ggz, extra=["--no-repack"])
    # -v: the CLI logs the loader's lines only when verbose
    kept = generate(variant, arm_bins, smollm2_ggz, env={"GGZIP_KEEP": "all"}, extra=["--no-repack", "-v"])
    assert re.search(r"ggzip: keeping \d+ of \d+ frames compressed in RAM", kept.stderr), kept.stderr[-2000:]
    assert answer(kept.stdout) == answer(plain.stdout)
