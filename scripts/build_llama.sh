#!/usr/bin/env bash
# Build llama.cpp with the ggzip patch series (patches/) and the ggzip codec (native/).
# One build serves both the command-line tools and llama-cpp-python: the tools link
# the shared libllama/libggml in $GGZIP_LLAMA_DIR/bin, and --python installs
# llama-cpp-python's Python package (its own library build turned off) with those
# same shared libraries copied in.
#
#   scripts/build_llama.sh                    # all tools below
#   scripts/build_llama.sh llama-perplexity   # only these targets
#   scripts/build_llama.sh --python [TOOLS]   # also llama-cpp-python over the same libraries
#   scripts/build_llama.sh --python-only      # only libllama + llama-cpp-python
#   scripts/build_llama.sh --stock            # only an UNPATCHED llama-simple (tests: a stock
#                                             # llama.cpp must refuse ggzip files cleanly)
#   scripts/build_llama.sh --tree-only        # only the patched source tree; prints its path
#                                             # (scripts/build_android.sh cross-builds it)
#
# Pin: the llama.cpp vendored in the PyPI sdist llama-cpp-python==0.3.36 (commit 0c1e570).
# Outputs (override with env):
#   GGZIP_LLAMA_DIR   build/llama          tools and shared libraries in $GGZIP_LLAMA_DIR/bin
#   GGZIP_LLAMA_SRC   build/llama-src      the downloaded sdist and the patched tree
#   GGZIP_LLAMA_STOCK_DIR build/llama-stock  the unpatched llama-simple (--stock)
#   GGZIP_LLAMA_CMAKE_ARGS                 extra CMake arguments (e.g. -DGGML_NATIVE=OFF)
#   GGZIP_BUILD_LOGS  build/logs           compiler output, one log per step
# Prints one line per step; a failing step prints its log's path and last lines.
# Idempotent: the patched tree and each build carry a stamp keyed on the hash of the
# patch series and native/; work whose stamp matches is skipped.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VERSION=0.3.36
PIN=0c1e570
TOOLS=(llama-cli llama-server llama-perplexity llama-bench llama-quantize llama-imatrix llama-embedding)

BUILD_DIR=${GGZIP_LLAMA_DIR:-$ROOT/build/llama}
SRC_ROOT=${GGZIP_LLAMA_SRC:-$ROOT/build/llama-src}
LOGS=${GGZIP_BUILD_LOGS:-$ROOT/build/logs}
PY=${PYTHON:-python3}
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2}

want_tools=1 want_python=0 want_stock=0 want_tree_only=0 targets=()
for arg in "$@"; do
    case $arg in
        --python) want_python=1 ;;
        --python-only) want_python=1; want_tools=0 ;;
        --stock) want_stock=1; want_tools=0 ;;
        --tree-only) want_tree_only=1; want_tools=0 ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        -*) echo "build_llama.sh: unknown option $arg" >&2; exit 2 ;;
        *) targets+=("$arg") ;;
    esac
done
[ ${#targets[@]} -eq 0 ] && [ $want_tools = 1 ] && targets=("${TOOLS[@]}")
# the Python binding needs only the library
[ $want_python = 1 ] && targets+=(llama)

log() { echo "build_llama.sh: $*" >&2; }
mkdir -p "$LOGS"

# logged NAME CMD...: runs CMD with its output in $LOGS/NAME.log; on failure says
# where the log is and shows its end
logged() {
    local name=$1; shift
    local file=$LOGS/$name.log
    if ! "$@" >"$file" 2>&1; then
        log "FAILED: $name (full log: $file); its last lines:"
        tail -n 25 "$file" | sed 's/^/    /' >&2
        exit 1
    fi
}

# hash of the patch series and of the codec sources: the key of every stamp
series_hash=$(cd "$ROOT" && cat patches/*.patch | sha256sum | cut -c1-16)
native_hash=$(cd "$ROOT" && find native/CMakeLists.txt native/include native/src -type f | sort | xargs cat | sha256sum | cut -c1-16)

# 1. the sdist (cached)
sdist=$SRC_ROOT/llama_cpp_python-$VERSION.tar.gz
mkdir -p "$SRC_ROOT"
if [ ! -f "$sdist" ]; then
    log "downloading the llama-cpp-python==$VERSION sdist (it vendors llama.cpp $PIN)"
    tmp=$(mktemp -d)
    # only this package from source, and no isolated build environment: with
    # ":all:" pip would build cmake itself from source just to read metadata
    logged download "$PY" -m pip install scikit-build-core cmake
    logged download "$PY" -m pip download --no-deps --no-binary llama-cpp-python --no-build-isolation \
        "llama-cpp-python==$VERSION" -d "$tmp"
    mv "$tmp/llama_cpp_python-$VERSION.tar.gz" "$sdist"
    rm -rf "$tmp"
fi

launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
# paths under the checkout hashed relative to it: another clone of it hits the cache
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$ROOT}

# 1b. --stock: the pinned llama.cpp as it is, llama-simple only (ccache shares
# every object the series does not touch with the patched build)
if [ $want_stock = 1 ]; then
    STOCK_DIR=${GGZIP_LLAMA_STOCK_DIR:-$ROOT/build/llama-stock}
    stock_tree=$SRC_ROOT/stock/llama_cpp_python-$VERSION
    if [ ! -x "$STOCK_DIR/bin/llama-simple" ]; then
        start=$(date +%s)
        log "building the unpatched llama-simple (log: $LOGS/stock.log)"
        [ -d "$stock_tree" ] || { mkdir -p "$SRC_ROOT/stock"; tar -xzf "$sdist" -C "$SRC_ROOT/stock"; }
        logged stock cmake -S "$stock_tree/vendor/llama.cpp" -B "$STOCK_DIR" -DCMAKE_BUILD_TYPE=Release "${launcher[@]}" \
            -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_CURL=OFF -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON
        logged stock-build cmake --build "$STOCK_DIR" --target llama-simple
        log "built the unpatched llama-simple in $(( $(date +%s) - start )) s into $STOCK_DIR/bin"
    else
        log "unpatched llama-simple up to date in $STOCK_DIR/bin"
    fi
fi

# 2. a fresh tree with the series applied, unless the stamp says it is current
tree=$SRC_ROOT/llama_cpp_python-$VERSION
llama=$tree/vendor/llama.cpp
if [ "$(cat "$tree/.ggzip-series" 2>/dev/null)" != "$series_hash" ]; then
    log "extracting llama.cpp $PIN and applying $(ls "$ROOT"/patches/*.patch | wc -l) patches"
    rm -rf "$tree"
    tar -xzf "$sdist" -C "$SRC_ROOT"
    head=$(git -C "$llama" rev-parse --short=7 HEAD)
    [ "$head" = "$PIN" ] || { log "vendored llama.cpp is at $head, expected $PIN"; exit 1; }
    for p in "$ROOT"/patches/*.patch; do
        if ! git -C "$llama" -c user.name=ggzip -c user.email=ggzip@localhost am -q --3way "$p" >"$LOGS/patch.log" 2>&1; then
            log "patch $(basename "$p") does not apply to llama.cpp $PIN (log: $LOGS/patch.log)"
            git -C "$llama" am --abort || true
            exit 1
        fi
    done
    echo "$series_hash" > "$tree/.ggzip-series"
fi
if [ $want_tree_only = 1 ]; then echo "$llama"; exit 0; fi

# $ORIGIN: the shared libraries find each other wherever they are copied together
# (llama-cpp-python's package directory)
common=(-DGGZIP_NATIVE_DIR="$ROOT/native" -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_CURL=OFF -DGGML_NATIVE=ON
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON -DBUILD_SHARED_LIBS=ON "-DCMAKE_BUILD_RPATH=\$ORIGIN")
# shellcheck disable=SC2206
extra=(${GGZIP_LLAMA_CMAKE_ARGS:-})

# 3. the tools and the shared libraries
if [ ${#targets[@]} -gt 0 ]; then
    key="$series_hash $native_hash ${common[*]} ${extra[*]:-}"
    stamp=$BUILD_DIR/.ggzip-built
    missing=()
    for t in "${targets[@]}"; do
        case $t in llama) [ -f "$BUILD_DIR/bin/libllama.so" ] || missing+=("$t") ;;
                   *) [ -x "$BUILD_DIR/bin/$t" ] || missing+=("$t") ;; esac
    done
    if [ "$(cat "$stamp" 2>/dev/null)" = "$key" ] && [ ${#missing[@]} -eq 0 ]; then
        log "patched llama.cpp up to date in $BUILD_DIR/bin (${targets[*]})"
    else
        start=$(date +%s)
        log "building the patched ${targets[*]} on $CMAKE_BUILD_PARALLEL_LEVEL jobs (log: $LOGS/llama.log)"
        logged llama-configure cmake -S "$llama" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release "${launcher[@]}" "${common[@]}" "${extra[@]}"
        logged llama cmake --build "$BUILD_DIR" --target "${targets[@]}"
        # the stamp only vouches for the targets built so far: a later subset call rebuilds what is missing
        echo "$key" > "$stamp"
        log "built ${targets[*]} in $(( $(date +%s) - start )) s into $BUILD_DIR/bin"
    fi
fi

# 4. llama-cpp-python over the same shared libraries: its Python package from the
# patched tree with its own library build off (LLAMA_BUILD=OFF), then our
# libllama/libggml* copied into the package's lib/ directory, where it loads them
if [ $want_python = 1 ]; then
    pkg_key="$VERSION $series_hash"
    # the package's folder, found without importing it (the import needs the libraries)
    find_pkg="import importlib.util as u; s = u.find_spec('llama_cpp'); print(s.submodule_search_locations[0] if s else '')"
    site=$("$PY" -c "$find_pkg" 2>/dev/null || true)
    if [ -z "$site" ] || [ "$(cat "$site/.ggzip-package" 2>/dev/null)" != "$pkg_key" ]; then
        start=$(date +%s)
        log "installing llama-cpp-python $VERSION (Python package only; log: $LOGS/llama-cpp-python.log)"
        # --no-deps on the forced reinstall (it would reinstall numpy & co.), then its requirements
        CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" \
            logged llama-cpp-python "$PY" -m pip install --no-deps --no-build-isolation --force-reinstall "$tree"
        reqs=$("$PY" -c "import importlib.metadata as m; print(' '.join(r.split(';')[0].replace(' ', '') for r in m.requires('llama_cpp_python') or [] if 'extra ==' not in r))")
        [ -z "$reqs" ] || logged llama-cpp-python-deps "$PY" -m pip install $reqs
        site=$("$PY" -c "$find_pkg")
        echo "$pkg_key" > "$site/.ggzip-package"
        log "installed llama-cpp-python in $(( $(date +%s) - start )) s"
    fi
    mkdir -p "$site/lib"
    rm -f "$site"/lib/lib*.so*
    cp -P "$BUILD_DIR"/bin/lib*.so* "$site/lib/"
    "$PY" -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__, llama_cpp.llama_cpp._lib.llama_ggzip_version.__name__)" >/dev/null 2>"$LOGS/llama-cpp-python-check.log" \
        || { log "installed llama_cpp lacks llama_ggzip_version (log: $LOGS/llama-cpp-python-check.log)"; exit 1; }
    log "llama-cpp-python uses the patched libraries of $BUILD_DIR/bin (copied to $site/lib)"
fi
