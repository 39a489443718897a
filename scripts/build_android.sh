#!/usr/bin/env bash
# Static aarch64 builds of the patched llama.cpp for Android phones (adb shell,
# Termux) and other ARM Linux: llama-cli, llama-server, llama-bench and
# ggzip-bench, fully static against musl, made with zig (pip's ziglang: no NDK
# needed; Android's app seccomp filter kills static glibc binaries).
#
#   scripts/build_android.sh                       # both variants, all tools, tarballs
#   scripts/build_android.sh --variant armv8.0     # one variant
#   scripts/build_android.sh --targets "llama-cli ggzip-bench" --no-tarball
#
# Variants (only ggml's CPU backend differs; the rest is built for armv8.0):
#   armv8.0          any 64-bit ARM phone (Cortex-A53 and later)
#   armv8.2-dotprod  phones from about 2018 on (Cortex-A55/A75/A76 and later: the
#                    SDOT instruction, about 2x faster Q8_0 matrix products)
# Outputs (override with env):
#   GGZIP_ANDROID_DIR  build/android     the build tree and each variant's tools
#   GGZIP_TOOLCHAIN_DIR ~/.cache/ggzip/toolchain-aarch64  zig wrappers (outside the checkout, so
#                                        that ccache's compiler check holds across clones)
#   GGZIP_DIST_DIR     dist              ggzip-android-<variant>.tar.gz
#   GGZIP_BUILD_LOGS   build/logs        compiler output, one log per step
# Incremental: re-running rebuilds only what changed.  zig keeps its own cache of
# the musl libc and libc++ it builds for the target (~/.cache/zig: about 12 min
# on 2 cores the first time); ccache, when installed, serves the objects.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${GGZIP_ANDROID_DIR:-$ROOT/build/android}
DIST=${GGZIP_DIST_DIR:-$ROOT/dist}
LOGS=${GGZIP_BUILD_LOGS:-$ROOT/build/logs}
PY=${PYTHON:-python3}
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2}
ALL_VARIANTS=(armv8.0 armv8.2-dotprod)
ALL_TARGETS=(llama-cli llama-server llama-bench ggzip-bench)
# the -march that ggml's CPU backend gets per variant
declare -A ARCH=([armv8.0]=armv8-a [armv8.2-dotprod]=armv8.2-a+dotprod)

variants=() targets=() tarball=1
while [ $# -gt 0 ]; do
    case $1 in
        --variant) variants+=("$2"); shift ;;
        --targets) read -r -a targets <<<"$2"; shift ;;
        --no-tarball) tarball=0 ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) echo "build_android.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[ ${#variants[@]} -gt 0 ] || variants=("${ALL_VARIANTS[@]}")
[ ${#targets[@]} -gt 0 ] || targets=("${ALL_TARGETS[@]}")
if [ $tarball = 1 ] && [ "${targets[*]}" != "${ALL_TARGETS[*]}" ]; then
    echo "build_android.sh: a tarball holds every tool (${ALL_TARGETS[*]}): drop --targets or add --no-tarball" >&2
    exit 2
fi

log() { echo "build_android.sh: $*" >&2; }
TOOLCHAIN=${GGZIP_TOOLCHAIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ggzip/toolchain-aarch64}
mkdir -p "$LOGS" "$TOOLCHAIN" "$OUT"
# ccache: paths under the checkout hashed relative to it, and the wrappers by
# their text (which names zig's version), so another clone hits the cache
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$ROOT} CCACHE_COMPILERCHECK=${CCACHE_COMPILERCHECK:-content}
logged() {
    local name=$1; shift
    if ! "$@" >"$LOGS/$name.log" 2>&1; then
        log "FAILED: $name (full log: $LOGS/$name.log); its last lines:"
        tail -n 25 "$LOGS/$name.log" | sed 's/^/    /' >&2
        exit 1
    fi
}

# GCC's -march=armv8.X-a+feat (what ggml's CMake passes) as zig's -mcpu=generic+v8_Xa+feat
march_flag() {
    local arch=${1%%+*} feats="" f
    [ "$arch" = "$1" ] || feats=${1#*+}
    local mcpu=generic
    case $arch in
        armv8-a|armv8.0-a) ;;
        armv8.[1-9]-a) mcpu="generic+v8_${arch:6:1}a" ;;
        armv9-a|armv9.[0-9]-a) mcpu="generic+v9a" ;;
        *) log "no zig spelling for -march=$1"; return 1 ;;
    esac
    for f in ${feats//+/ }; do
        case $f in
            fp16) mcpu+="+fullfp16" ;;
            no*) mcpu+="-${f#no}" ;;
            *) mcpu+="+$f" ;;
        esac
    done
    echo "-mcpu=$mcpu"
}

for v in "${variants[@]}"; do
    [ -n "${ARCH[$v]:-}" ] || { log "unknown variant $v (${ALL_VARIANTS[*]})"; exit 2; }
done

# 1. zig
if ! "$PY" -c "import ziglang" 2>/dev/null; then
    # the release these scripts were tested with (as pyproject.toml's test extra)
    log "installing zig (pip install ziglang)"
    logged zig-install "$PY" -m pip install "ziglang>=0.17.1,<0.18"
fi
ZIG=$("$PY" -c "import ziglang, os; print(os.path.join(os.path.dirname(ziglang.__file__), 'zig'))")
[ -x "$ZIG" ] || { log "zig not found at $ZIG"; exit 1; }
ZIG_VERSION=$("$ZIG" version)

# 2. toolchain wrappers: one-word compiler paths for CMake (and ccache), that
# pass the target and translate -march; rewritten only when their text changes,
# so ccache's compiler check (mtime) stays valid
write_if_changed() {  # FILE: stdin to FILE unless FILE already holds it
    local tmp; tmp=$(mktemp)
    cat >"$tmp"
    if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv "$tmp" "$1"; chmod +x "$1"; fi
}
cases=""
for v in "${ALL_VARIANTS[@]}"; do
    cases+="        -march=${ARCH[$v]}) args+=($(march_flag "${ARCH[$v]}")) ;;"$'\n'
done
for tool in cc c++; do
    write_if_changed "$TOOLCHAIN/aarch64-zig-$tool" <<EOF
#!/usr/bin/env bash
# zig $ZIG_VERSION $tool for aarch64-linux-musl (made by scripts/build_android.sh):
# ggml's CMake passes GCC's -march, which zig rejects
args=()
for a in "\$@"; do
    case \$a in
$cases        -march=*) echo "aarch64-zig-$tool: no zig spelling for \$a" >&2; exit 1 ;;
        *) args+=("\$a") ;;
    esac
done
exec "$ZIG" $tool -target aarch64-linux-musl "\${args[@]}"
EOF
done
for tool in ar ranlib; do
    write_if_changed "$TOOLCHAIN/aarch64-zig-$tool" <<EOF
#!/bin/sh
exec "$ZIG" $tool "\$@"
EOF
done

# 3. the patched source tree (shared with the x86 build)
llama=$(bash "$ROOT/scripts/build_llama.sh" --tree-only)

launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
TC=$TOOLCHAIN/aarch64-zig
# linked ahead of libc.a: musl's accept4 would fall back to accept(2), which
# Android's app seccomp filter kills (android/accept4.c); named by its hash, so
# that a change of it changes the link flags and relinks
shim=$OUT/accept4-$(sha256sum "$ROOT/android/accept4.c" | cut -c1-12).o
[ -f "$shim" ] || logged android-shim "$TC-cc" -O2 -c "$ROOT/android/accept4.c" -o "$shim"
# One build tree for every variant: only the CPU backend's flags differ, so a
# variant switch recompiles ggml-cpu alone (ccache keeps both) and relinks.
dir=$OUT/build
# a tree configured with another compiler starts afresh (CMake would drop the cache
# and our -D options with it)
if [ -f "$dir/CMakeCache.txt" ] && ! grep -qx "CMAKE_C_COMPILER:[A-Z]*=$TC-cc" "$dir/CMakeCache.txt"; then
    rm -rf "$dir"
fi
for v in "${variants[@]}"; do
    start=$SECONDS
    log "building ${targets[*]} for $v (-march=${ARCH[$v]}; log: $LOGS/android-$v.log)"
    # -s: stripped at link; OpenMP off (zig ships no libgomp: ggml's own threadpool);
    # no curl/openssl: models are pushed with adb, not downloaded
    logged "android-$v-configure" cmake -S "$llama" -B "$dir" -DCMAKE_BUILD_TYPE=Release "${launcher[@]}" \
        -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 \
        -DCMAKE_C_COMPILER="$TC-cc" -DCMAKE_CXX_COMPILER="$TC-c++" \
        -DCMAKE_AR="$TC-ar" -DCMAKE_RANLIB="$TC-ranlib" \
        -DCMAKE_EXE_LINKER_FLAGS="-static -s $shim" -DBUILD_SHARED_LIBS=OFF \
        -DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH="${ARCH[$v]}" -DGGML_OPENMP=OFF \
        -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DGGZIP_NATIVE_DIR="$ROOT/native"
    logged "android-$v" cmake --build "$dir" --target "${targets[@]}"
    mkdir -p "$OUT/$v/bin"
    for t in "${targets[@]}"; do cp "$dir/bin/$t" "$OUT/$v/bin/$t"; done
    log "built $v in $((SECONDS - start)) s into $OUT/$v/bin"
done

# 4. one tarball per variant: the stripped tools and a README for the phone
[ $tarball = 1 ] || exit 0
mkdir -p "$DIST"
rev=$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
pin=$(git -C "$llama" rev-parse --short=7 HEAD~$(ls "$ROOT"/patches/*.patch | wc -l) 2>/dev/null || echo unknown)
for v in "${variants[@]}"; do
    name=ggzip-android-$v
    stage=$OUT/stage/$name
    rm -rf "$stage" && mkdir -p "$stage/bin"
    cp "${ALL_TARGETS[@]/#/$OUT/$v/bin/}" "$stage/bin/"
    { sed "s/VARIANT/$v/g" "$ROOT/android/README.md"
      printf '\nBuilt from ggzip %s with llama.cpp %s and zig %s (aarch64-linux-musl, -march=%s for the CPU backend).\n' \
          "$rev" "$pin" "$ZIG_VERSION" "${ARCH[$v]}"; } > "$stage/README.md"
    tar -C "$OUT/stage" -czf "$DIST/$name.tar.gz.tmp" "$name"
    mv "$DIST/$name.tar.gz.tmp" "$DIST/$name.tar.gz"
    log "$DIST/$name.tar.gz: $(du -k "$DIST/$name.tar.gz" | cut -f1) KiB; llama-cli $(du -k "$stage/bin/llama-cli" | cut -f1) KiB"
done
