#!/usr/bin/env bash
# The native codec's tests, one step at a time, each printing PASS, FAIL or
# SKIPPED (reason); the exit code is 1 if any step failed.  Builds go out of
# tree under build/native-*; nothing is installed (see the tools each step
# names when it skips).
#
#   scripts/test_native.sh [--quick] [--step NAME]...
#
# Steps:
#   native        C tests (native/tests/test_codec.c) on every kernel the host runs, and
#                 nm: ggzip_decode_static holds no encoder and is complete; on x86 it
#                 also builds native/tests/bench_kernel.c (not run)
#   sanitize      the same under ASan + UBSan (clang, GGZIP_SANITIZE=address)
#   tsan          the same under ThreadSanitizer (clang, GGZIP_SANITIZE=thread): the
#                 thread pool, batch API and threaded encoder, failing frames included
#   fuzz          libFuzzer on the decoders, 60 s (--quick: 20 s), corpus kept in build/;
#                 a crash file to keep goes into native/tests/fuzz_corpus
#   neon-a53      NEON kernel cross-built with aarch64-linux-gnu-gcc, under qemu -cpu cortex-a53
#   neon-a76      the same binary under qemu -cpu cortex-a76, with a speed sanity check
#   neon-zig      NEON kernel built with zig cc (aarch64-linux-musl), under qemu -cpu cortex-a76
#   avx2-haswell  on an AVX-512 host: the C tests under qemu -cpu Haswell-v4, where
#                 the dispatcher must pick (and the tests run) the avx2 kernel
#   bench-aarch64 ggzip-bench cross-built (as neon-a53) on the ggzip GGUF $GGZIP_BENCH_FILE
#                 under qemu -cpu cortex-a53 and cortex-a76, neon and scalar kernels: every
#                 frame's CRC must equal the native build's (skipped without the file)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
LOGS=$ROOT/build/native-logs
mkdir -p "$LOGS"

FUZZ_SECONDS=60
STEPS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) FUZZ_SECONDS=20 ;;
        --step) STEPS+=("$2"); shift ;;
        *) echo "usage: $0 [--quick] [--step NAME]..." >&2; exit 2 ;;
    esac
    shift
done
[ ${#STEPS[@]} -gt 0 ] || STEPS=(native sanitize tsan fuzz neon-a53 neon-a76 neon-zig avx2-haswell)

have() { command -v "$1" >/dev/null 2>&1; }
JOBS=2  # the machines this runs on are small and shared

# configure + build DIR TARGETS... -- CMAKE_ARGS...; output goes to the step log
build() {
    local dir=$1; shift
    local targets=()
    while [ "$1" != "--" ]; do targets+=("$1"); shift; done
    shift
    local gen=() launcher=()
    have ninja && gen=(-G Ninja)
    have ccache && launcher=(-DCMAKE_C_COMPILER_LAUNCHER=ccache)
    if [ ! -f "$dir/CMakeCache.txt" ]; then
        cmake -S native -B "$dir" "${gen[@]}" "${launcher[@]}" -DCMAKE_BUILD_TYPE=Release \
            -DGGZIP_BUILD_TESTS=ON "$@" || return 1
    fi
    cmake --build "$dir" -j "$JOBS" --target "${targets[@]}"
}

FAILED=0
# run_step NAME: calls step_NAME with its output in the log; the function
# returns 0 (PASS), 1 (FAIL) or 2 (SKIPPED, reason in $SKIP)
run_step() {
    local name=$1 log=$LOGS/$1.log t0=$SECONDS rc
    SKIP=""
    "step_${name//-/_}" >"$log" 2>&1
    rc=$?
    local dt=$((SECONDS - t0))
    case $rc in
        0) echo "PASS $name (${dt}s)" ;;
        2) echo "SKIPPED $name ($SKIP)" ;;
        *) echo "FAIL $name (${dt}s, log: ${log#$ROOT/})"
           { grep -E "^FAIL|ERROR|SUMMARY" "$log" | head -n 8; echo ...; tail -n 12 "$log"; } | sed 's/^/    /'
           FAILED=1 ;;
    esac
}
# skip REASON: records why and makes the step report SKIPPED
skip() { SKIP=$1; echo "SKIPPED: $1"; return 2; }
need() { for t in "$@"; do have "$t" || { skip "$t not found"; return; }; done; }

# The decode-only library (llama.cpp links it) must hold no encoder and need
# nothing of ggzip from outside itself.
check_decode_lib() {
    local lib=$1 defined encoder missing
    have nm || { echo "nm not found: the decode-only library is not checked"; return 0; }
    defined=$(nm -g --defined-only "$lib" | awk 'NF == 3 {print $3}' | sort -u)
    encoder=$(echo "$defined" | grep -E '^ggz_(encode_|frame_bound$|normalize$|cost_bits$|entropy_|table_write$|etab_build$|hist_|q8_histograms$|scale_bits$)')
    missing=$(nm -u "$lib" | awk '{print $NF}' | grep '^ggz_' | sort -u | comm -23 - <(echo "$defined"))
    echo "decode-only library: $(echo "$defined" | grep -c '^ggz_') ggz_ symbols"
    [ -z "$encoder" ] || { echo "FAIL decode-only library holds encoder symbols:" $encoder; return 1; }
    [ -z "$missing" ] || { echo "FAIL decode-only library needs symbols it lacks:" $missing; return 1; }
}

step_native() {
    need cmake cc || return
    local extra=()
    case "$(uname -m)" in x86_64|amd64) extra=(ggzip_bench_kernel) ;; esac   # built, not run
    build build/native-test ggzip_test ggzip_decode_static "${extra[@]}" -- || return 1
    check_decode_lib build/native-test/libggzip_decode_static.a || return 1
    build/native-test/ggzip_test
}

step_sanitize() {
    need cmake clang || return
    CC=clang build build/native-asan ggzip_test -- -DGGZIP_SANITIZE=address || return 1
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ASAN_OPTIONS=detect_leaks=1 build/native-asan/ggzip_test
}

step_tsan() {
    need cmake clang || return
    CC=clang build build/native-tsan ggzip_test -- -DGGZIP_SANITIZE=thread || return 1
    # clang 14's TSan hangs at start-up under the wide mmap randomisation of
    # newer kernels (its shadow memory layout predates it): run without ASLR
    local norand=()
    setarch "$(uname -m)" -R true 2>/dev/null && norand=(setarch "$(uname -m)" -R)
    TSAN_OPTIONS=halt_on_error=1:exitcode=66 "${norand[@]}" build/native-tsan/ggzip_test
}

step_fuzz() {
    need cmake clang || return
    # libFuzzer ships with clang's runtime (Debian: libclang-rt-14-dev)
    echo 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { return 0; }' > "$LOGS/probe.c"
    clang -fsanitize=fuzzer "$LOGS/probe.c" -o "$LOGS/probe" 2>/dev/null || { skip "clang cannot link -fsanitize=fuzzer (libclang-rt-14-dev missing)"; return; }
    CC=clang build build/native-fuzz ggzip_fuzz ggzip_fuzz_seeds -- -DGGZIP_SANITIZE=address -DGGZIP_FUZZ=ON || return 1
    local dir=build/native-fuzz
    rm -rf "$dir/seeds" && mkdir -p "$dir/seeds" "$dir/corpus" || return 1
    "$dir/ggzip_fuzz_seeds" "$dir/seeds" || return 1
    # native/tests/fuzz_corpus: inputs that once failed, run first, every time;
    # new crash files go to the log directory, where a failing CI run keeps them
    "$dir/ggzip_fuzz" -max_total_time="$FUZZ_SECONDS" -max_len=8192 -timeout=20 -print_final_stats=1 \
        -artifact_prefix="$LOGS/fuzz-" "$dir/corpus" "$dir/seeds" native/tests/fuzz_corpus
}

# NEON: cross-built statically, so qemu-user needs no aarch64 sysroot
neon_build() {
    need cmake aarch64-linux-gnu-gcc qemu-aarch64-static || return
    build build/native-aarch64 ggzip_test -- -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 \
        -DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc -DCMAKE_EXE_LINKER_FLAGS=-static || return 1
}

step_neon_a53() {
    neon_build || return
    qemu-aarch64-static -cpu cortex-a53 build/native-aarch64/ggzip_test --expect-kernel neon
}

step_neon_a76() {
    neon_build || return
    # speeds under qemu are emulation speeds, printed only as a sanity check
    qemu-aarch64-static -cpu cortex-a76 build/native-aarch64/ggzip_test --expect-kernel neon --bench
}

step_neon_zig() {
    need cmake python3 qemu-aarch64-static || return
    python3 -m ziglang version >/dev/null 2>&1 || { skip "zig not found (pip install ziglang)"; return; }
    local dir=build/native-zig-aarch64
    mkdir -p "$dir"
    # a one-word compiler path for CMake
    printf '#!/bin/sh\nexec python3 -m ziglang cc -target aarch64-linux-musl "$@"\n' > "$dir/zcc"
    chmod +x "$dir/zcc"
    build "$dir" ggzip_test -- -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 \
        -DCMAKE_C_COMPILER="$ROOT/$dir/zcc" -DCMAKE_C_COMPILER_LAUNCHER= -DCMAKE_EXE_LINKER_FLAGS=-static || return 1
    qemu-aarch64-static -cpu cortex-a76 "$dir/ggzip_test" --expect-kernel neon
}

step_avx2_haswell() {
    [ "$(uname -m)" = x86_64 ] || { skip "not an x86-64 host"; return; }
    grep -qw avx512f /proc/cpuinfo || { skip "host has no AVX-512: the native step already ran avx2"; return; }
    need cmake cc qemu-x86_64-static || return
    build build/native-test ggzip_test -- || return 1
    # Haswell-v4 has AVX2 and BMI2 but no AVX-512; qemu warns about the
    # features TCG lacks (pcid, x2apic, ...), which do not matter here.  The
    # avx2 kernel looks its table up with scalar loads, not vpgatherdd (which
    # qemu 7.2 mis-emulates for some index registers), so all of it runs here.
    qemu-x86_64-static -cpu Haswell-v4 build/native-test/ggzip_test --expect-kernel avx2 2>/dev/null
}

step_bench_aarch64() {
    [ -n "${GGZIP_BENCH_FILE:-}" ] || { skip "GGZIP_BENCH_FILE not set (a ggzip GGUF to decode)"; return; }
    neon_build || return
    build build/native-aarch64 ggzip-bench -- || return 1
    build build/native-bench ggzip-bench -- || return 1
    # the speeds are emulation speeds (a proxy at best); the CRCs must agree
    build/native-bench/ggzip-bench --repeat 1 --tensors "$GGZIP_BENCH_FILE" > "$LOGS/bench-native.txt" || return 1
    grep -q ' crc32c 0x.* [0-9]*$' "$LOGS/bench-native.txt" || { echo "FAIL no ggzip frames in $GGZIP_BENCH_FILE"; return 1; }
    local cpu
    for cpu in cortex-a53 cortex-a76; do
        qemu-aarch64-static -cpu "$cpu" build/native-aarch64/ggzip-bench --kernel neon --kernel scalar \
            --repeat 1 --tensors "$GGZIP_BENCH_FILE" > "$LOGS/bench-$cpu.txt" || return 1
        grep '^kernel' "$LOGS/bench-$cpu.txt" | sed "s/^/$cpu: /"
        diff <(grep -v '^kernel' "$LOGS/bench-native.txt" | grep crc32c) <(grep -v '^kernel' "$LOGS/bench-$cpu.txt" | grep crc32c) \
            || { echo "FAIL $cpu: frames decode differently from the native build"; return 1; }
    done
    grep '^kernel' "$LOGS/bench-native.txt" | sed 's/^/native: /'
}

T0=$SECONDS
for s in "${STEPS[@]}"; do
    declare -F "step_${s//-/_}" >/dev/null || { echo "FAIL $s (no such step)"; FAILED=1; continue; }
    run_step "$s"
done
echo "test_native.sh: $((SECONDS - T0))s, $([ $FAILED = 0 ] && echo "no failures" || echo "FAILED")"
exit $FAILED
