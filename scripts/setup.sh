#!/usr/bin/env bash
# Sets up what ggzip needs on a fresh Debian/Ubuntu machine, idempotently:
# Debian packages (when run as root with apt), the ggzip package with its native
# codec, the patched llama.cpp (tools and llama-cpp-python over one build) and the
# small real models.  Re-running skips what is already done.  One line per step;
# compiler output goes to build/logs/ (a failing step names its log).
#   bash scripts/setup.sh            # everything the tests need
#   bash scripts/setup.sh --demo     # only what scripts/demo.sh runs
#   GGZIP_SKIP_LLAMA=1 bash ...      # no llama.cpp build (codec/converter only)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOGS=${GGZIP_BUILD_LOGS:-$PWD/build/logs}
export GGZIP_BUILD_LOGS=$LOGS
mkdir -p "$LOGS"
mode=full
case ${1:-} in
    --demo) mode=demo ;;
    "") ;;
    *) echo "usage: $0 [--demo]" >&2; exit 2 ;;
esac

T0=$SECONDS
step() { printf '== %s\n' "$*"; }
# logged NAME CMD...: output to $LOGS/NAME.log; on failure its path and last lines
logged() {
    local name=$1; shift
    if ! "$@" >"$LOGS/$name.log" 2>&1; then
        echo "setup.sh: FAILED: $name (full log: $LOGS/$name.log); its last lines:" >&2
        tail -n 25 "$LOGS/$name.log" | sed 's/^/    /' >&2
        exit 1
    fi
}

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    # compilers and ccache for llama.cpp; the tests add clang (sanitizers, fuzzer),
    # the aarch64 cross compiler and qemu (NEON kernel), htscodecs (benchmark)
    PKGS="build-essential cmake ninja-build ccache"
    [ $mode = full ] && PKGS="$PKGS clang libclang-rt-14-dev gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static libhtscodecs-dev"
    missing=""
    for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
    if [ -n "$missing" ]; then
        step "apt-get install$missing"
        logged apt apt-get update -qq
        DEBIAN_FRONTEND=noninteractive logged apt apt-get install -y -qq $missing
    fi
fi

extras=""
[ $mode = full ] && extras="[test,bench]"
step "pip install ggzip$extras (native codec built with CMake)"
"$PY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
logged pip "$PY" -m pip install scikit-build-core cmake
logged pip "$PY" -m pip install --no-build-isolation -e ".$extras"
$PY -c "import ggzip.codec as c; print('   codec kernels:', ', '.join(c.kernels()), '- in use:', c.kernel())"

if [ -z "${GGZIP_SKIP_LLAMA:-}" ]; then
    if [ $mode = demo ]; then
        # the demo generates through llama-cpp-python, so libllama is all it builds;
        # convert calibrates with its numpy forward pass where llama-imatrix is not
        # built (same weighted SNR on SmolLM2: 27.05 vs 27.02 dB), which spares
        # compiling llama.cpp's common library and tools
        step "patched llama.cpp: libllama and llama-cpp-python"
        bash scripts/build_llama.sh --python-only
    else
        step "patched llama.cpp: the tools, libllama and llama-cpp-python"
        bash scripts/build_llama.sh --python
        step "unpatched llama-simple (a stock llama.cpp must refuse ggzip files)"
        bash scripts/build_llama.sh --stock
    fi
fi

step "models"
ggzip fetch smollm2
[ $mode = full ] && ggzip fetch minilm
echo "setup.sh: done in $((SECONDS - T0)) s"
