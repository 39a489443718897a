#!/usr/bin/env bash
# Sets up everything ggzip needs on a fresh Debian/Ubuntu machine, idempotently:
# Debian packages (when run as root with apt), the ggzip package with its native
# codec, the patched llama.cpp tools and llama-cpp-python wheel, and the small
# real models the tests use.  Re-running skips what is already done.
#   bash scripts/setup.sh            # everything
#   GGZIP_SKIP_LLAMA=1 bash ...      # no llama.cpp build (codec/converter only)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

step() { printf '\n== %s\n' "$*"; }

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    # compilers and emulators for the kernel tests, ccache for llama.cpp,
    # htscodecs for the benchmark
    PKGS="build-essential cmake ninja-build ccache clang libclang-rt-14-dev gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static libhtscodecs-dev"
    missing=""
    for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
    if [ -n "$missing" ]; then
        step "apt-get install$missing"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    fi
fi

step "pip install ggzip (native codec built with CMake)"
$PY -m pip install -q --upgrade pip >/dev/null 2>&1 || true
$PY -m pip install -q scikit-build-core cmake
$PY -m pip install -q --no-build-isolation -e ".[test,bench]"
$PY -c "import ggzip.codec as c; print('ggzip codec kernels:', ', '.join(c.kernels()), '- in use:', c.kernel())"

if [ -z "${GGZIP_SKIP_LLAMA:-}" ] && [ -f scripts/build_llama.sh ]; then
    step "patched llama.cpp (tools + llama-cpp-python wheel)"
    bash scripts/build_llama.sh --python
    step "unpatched llama-simple (a stock llama.cpp must refuse ggzip files)"
    bash scripts/build_llama.sh --stock
fi

step "models for the tests"
ggzip fetch smollm2
ggzip fetch minilm
