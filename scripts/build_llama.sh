#!/usr/bin/env bash
# Build llama.cpp with the ggzip patch series (patches/) and the ggzip codec (native/).
#
#   scripts/build_llama.sh                    # all tools below
#   scripts/build_llama.sh llama-perplexity   # only these targets (CI)
#   scripts/build_llama.sh --python           # also a patched llama-cpp-python wheel, installed
#   scripts/build_llama.sh --python-only      # only the wheel
#   scripts/build_llama.sh --stock            # only an UNPATCHED llama-simple (tests: a stock
#                                             # llama.cpp must refuse ggzip files cleanly)
#
# Pin: the llama.cpp vendored in the PyPI sdist llama-cpp-python==0.3.36 (commit 0c1e570).
# Outputs (override with env):
#   GGZIP_LLAMA_DIR   build/llama          tools in $GGZIP_LLAMA_DIR/bin
#   GGZIP_LLAMA_SRC   build/llama-src      the downloaded sdist and the patched tree
#   GGZIP_WHEEL_DIR   build/wheels         the patched llama-cpp-python wheel
#   GGZIP_LLAMA_STOCK_DIR build/llama-stock  the unpatched llama-simple (--stock)
#   GGZIP_LLAMA_CMAKE_ARGS                 extra CMake arguments (e.g. -DGGML_NATIVE=OFF)
# Idempotent: the patched tree and each build carry a stamp keyed on the hash of the
# patch series and native/; work whose stamp matches is skipped.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VERSION=0.3.36
PIN=0c1e570
TOOLS=(llama-cli llama-server llama-perplexity llama-bench llama-quantize llama-imatrix llama-embedding)

BUILD_DIR=${GGZIP_LLAMA_DIR:-$ROOT/build/llama}
SRC_ROOT=${GGZIP_LLAMA_SRC:-$ROOT/build/llama-src}
WHEEL_DIR=${GGZIP_WHEEL_DIR:-$ROOT/build/wheels}
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2}

want_tools=1 want_python=0 want_stock=0 targets=()
for arg in "$@"; do
    case $arg in
        --python) want_python=1 ;;
        --python-only) want_python=1; want_tools=0 ;;
        --stock) want_stock=1; want_tools=0 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        -*) echo "build_llama.sh: unknown option $arg" >&2; exit 2 ;;
        *) targets+=("$arg") ;;
    esac
done
[ ${#targets[@]} -eq 0 ] && targets=("${TOOLS[@]}")

log() { echo "build_llama.sh: $*" >&2; }

# hash of the patch series and of the codec sources: the key of every stamp
series_hash=$(cd "$ROOT" && cat patches/*.patch | sha256sum | cut -c1-16)
native_hash=$(cd "$ROOT" && find native/CMakeLists.txt native/include native/src -type f | sort | xargs cat | sha256sum | cut -c1-16)

# 1. the sdist (cached)
sdist=$SRC_ROOT/llama_cpp_python-$VERSION.tar.gz
mkdir -p "$SRC_ROOT"
if [ ! -f "$sdist" ]; then
    log "downloading llama-cpp-python==$VERSION sdist"
    tmp=$(mktemp -d)
    # only this package from source, and no isolated build environment: with
    # ":all:" pip would build cmake itself from source just to read metadata
    pip install -q scikit-build-core cmake >&2
    pip download --no-deps --no-binary llama-cpp-python --no-build-isolation "llama-cpp-python==$VERSION" -d "$tmp" >&2
    mv "$tmp/llama_cpp_python-$VERSION.tar.gz" "$sdist"
    rm -rf "$tmp"
fi

launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)

# 1b. --stock: the pinned llama.cpp as it is, llama-simple only (ccache shares
# every object the series does not touch with the patched build)
if [ $want_stock = 1 ]; then
    STOCK_DIR=${GGZIP_LLAMA_STOCK_DIR:-$ROOT/build/llama-stock}
    stock_tree=$SRC_ROOT/stock/llama_cpp_python-$VERSION
    if [ ! -x "$STOCK_DIR/bin/llama-simple" ]; then
        start=$(date +%s)
        [ -d "$stock_tree" ] || { mkdir -p "$SRC_ROOT/stock"; tar -xzf "$sdist" -C "$SRC_ROOT/stock"; }
        cmake -S "$stock_tree/vendor/llama.cpp" -B "$STOCK_DIR" -DCMAKE_BUILD_TYPE=Release "${launcher[@]}" \
            -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_CURL=OFF -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON >&2
        cmake --build "$STOCK_DIR" --target llama-simple >&2
        log "built the unpatched llama-simple in $(( $(date +%s) - start )) s into $STOCK_DIR/bin"
    else
        log "unpatched llama-simple up to date in $STOCK_DIR/bin"
    fi
fi

# 2. a fresh tree with the series applied, unless the stamp says it is current
tree=$SRC_ROOT/llama_cpp_python-$VERSION
llama=$tree/vendor/llama.cpp
if [ "$(cat "$tree/.ggzip-series" 2>/dev/null)" != "$series_hash" ]; then
    log "extracting and applying $(ls "$ROOT"/patches/*.patch | wc -l) patches"
    rm -rf "$tree"
    tar -xzf "$sdist" -C "$SRC_ROOT"
    head=$(git -C "$llama" rev-parse --short=7 HEAD)
    [ "$head" = "$PIN" ] || { log "vendored llama.cpp is at $head, expected $PIN"; exit 1; }
    for p in "$ROOT"/patches/*.patch; do
        if ! git -C "$llama" -c user.name=ggzip -c user.email=ggzip@localhost am -q --3way "$p"; then
            log "patch $(basename "$p") does not apply to llama.cpp $PIN"
            git -C "$llama" am --abort || true
            exit 1
        fi
    done
    echo "$series_hash" > "$tree/.ggzip-series"
fi

common=(-DGGZIP_NATIVE_DIR="$ROOT/native" -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_CURL=OFF -DGGML_NATIVE=ON
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON)
# shellcheck disable=SC2206
extra=(${GGZIP_LLAMA_CMAKE_ARGS:-})

# 3. the tools
if [ $want_tools = 1 ]; then
    key="$series_hash $native_hash ${extra[*]:-}"
    stamp=$BUILD_DIR/.ggzip-built
    missing=()
    for t in "${targets[@]}"; do [ -x "$BUILD_DIR/bin/$t" ] || missing+=("$t"); done
    if [ "$(cat "$stamp" 2>/dev/null)" = "$key" ] && [ ${#missing[@]} -eq 0 ]; then
        log "tools up to date in $BUILD_DIR/bin"
    else
        start=$(date +%s)
        cmake -S "$llama" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release "${launcher[@]}" "${common[@]}" "${extra[@]}" >&2
        cmake --build "$BUILD_DIR" --target "${targets[@]}" >&2
        # the stamp only vouches for the targets built so far: a later subset call rebuilds what is missing
        echo "$key" > "$stamp"
        log "built ${targets[*]} in $(( $(date +%s) - start )) s into $BUILD_DIR/bin"
    fi
fi

# 4. the patched llama-cpp-python wheel, from the same patched tree
if [ $want_python = 1 ]; then
    key="$series_hash $native_hash ${extra[*]:-}"
    stamp=$WHEEL_DIR/.ggzip-built
    mkdir -p "$WHEEL_DIR"
    if [ "$(cat "$stamp" 2>/dev/null)" = "$key" ] && ls "$WHEEL_DIR"/llama_cpp_python-$VERSION-*.whl >/dev/null 2>&1; then
        log "wheel up to date in $WHEEL_DIR"
    else
        start=$(date +%s)
        rm -f "$WHEEL_DIR"/llama_cpp_python-*.whl
        CMAKE_ARGS="${common[*]} ${launcher[*]} ${extra[*]:-}" \
            pip wheel --no-deps --no-build-isolation -w "$WHEEL_DIR" "$tree" >&2 \
            || CMAKE_ARGS="${common[*]} ${launcher[*]} ${extra[*]:-}" pip wheel --no-deps -w "$WHEEL_DIR" "$tree" >&2
        echo "$key" > "$stamp"
        log "built the wheel in $(( $(date +%s) - start )) s"
    fi
    # replace an installed llama_cpp, then let pip add its dependencies (diskcache, jinja2, ...)
    pip install --no-deps --force-reinstall "$WHEEL_DIR"/llama_cpp_python-$VERSION-*.whl >&2
    pip install "$WHEEL_DIR"/llama_cpp_python-$VERSION-*.whl >&2
    python3 -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__, llama_cpp.llama_cpp._lib.llama_ggzip_version.__name__)" >&2 \
        || { log "installed llama_cpp lacks llama_ggzip_version"; exit 1; }
fi
