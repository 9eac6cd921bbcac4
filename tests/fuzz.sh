#!/usr/bin/env bash
# tests/fuzz.sh - long fuzzing runs: builds the fuzz targets with clang
# (libFuzzer, plus UBSan when it links; no ASan, since the targets link a
# malloc replacement) in build-fuzz/, then runs every variant for its share
# of MINUTES, one after the other:
#   ops_default, ops_notcache, ops_purge, ops_perturb   libFuzzer, coverage of
#       memalloc itself, seeded from tests/fuzz/corpus/ops
#   threads_default, threads_notcache_purge             the standalone driver
#       (a threaded, forking target gains little from coverage feedback)
# Crashes land in build-fuzz/crashes/ (libFuzzer's crash-*, the driver's
# crash-<seed>-<n>); the script prints executions per variant and exits 1
# if any variant failed.
#   tests/fuzz.sh MINUTES
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-}
if ! [[ "$minutes" =~ ^[0-9]+$ ]] || [ "$minutes" -lt 1 ]; then
    echo "usage: tests/fuzz.sh MINUTES" >&2
    exit 2
fi
. scripts/deps.sh
ensure_deps clang libclang-rt-14-dev meson ninja-build

out=build-fuzz
mkdir -p "$out"
crashes=$out/crashes
mkdir -p "$crashes"
jobs=${FUZZ_JOBS:-2}

# UBSan if it links next to libFuzzer; every report stops the run.
ub=""
echo 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { return n && d[0]; }' \
    >"$out/probe.c"
if clang -fsanitize=fuzzer,undefined "$out/probe.c" -o "$out/probe" 2>/dev/null; then
    ub="-fsanitize=undefined -fno-sanitize-recover=undefined"
fi
if [ -n "$ub" ]; then echo "fuzz.sh: UBSan on"; else echo "fuzz.sh: UBSan does not link, off"; fi

# No coverage feedback from the checkers (the targets' verification loops,
# memalloc_check's walkers): their comparisons say nothing about new
# allocator behaviour, and tracing them took a third of the time.
ignore=$PWD/$out/coverage-ignore.txt
printf 'fun:%s\n' verify_block verify_slot verify_all check_zero fill_block sample_next \
    adopt check_blk 'chunk_check*' 'heap_check*' 'tcache_check*' memalloc_check >"$ignore"
cov="-fsanitize=fuzzer-no-link -fsanitize-coverage-ignorelist=$ignore"

# Two static builds of libmemalloc (the drop-in): one with libFuzzer's
# coverage instrumentation for the libFuzzer targets, one without for the
# standalone driver.  Static, so malloc itself is the target's.
setup() {   # dir c_args
    if [ ! -f "$1/build.ninja" ]; then
        CC=clang meson setup "$1" -Ddefault_library=static -Dtests=false -Dbench=disabled \
            -Dbuildtype=debugoptimized -Db_ndebug=false \
            -Dc_args="$2" -Dc_link_args="$ub" >/dev/null
    else
        meson configure "$1" -Dc_args="$2" -Dc_link_args="$ub" >/dev/null
    fi
    ninja -C "$1" -j"$jobs" libmemalloc.a >/dev/null
}
setup "$out/cov" "$cov $ub"
setup "$out/plain" "$ub"

cflags=(-O1 -g -std=gnu11 -Wall -Wextra -Iinclude -fno-builtin-malloc -fno-builtin-free)
lib() { echo "-Wl,--whole-archive $1/libmemalloc.a -Wl,--no-whole-archive -lpthread"; }
# shellcheck disable=SC2046,SC2086
clang "${cflags[@]}" -fsanitize=fuzzer -fsanitize-coverage-ignorelist="$ignore" $ub \
    tests/fuzz/fuzz_ops.c $(lib "$out/cov") \
    -o "$out/fuzz_ops"
# shellcheck disable=SC2046,SC2086
clang "${cflags[@]}" $ub tests/fuzz/fuzz_threads.c tests/fuzz/driver.c $(lib "$out/plain") \
    -o "$out/fuzz_threads"

purge=(MEMALLOC_PURGE_THRESHOLD=0 MEMALLOC_PURGE_SHARE=0 MEMALLOC_PURGE_DELAY=0)
variants=(ops_default ops_notcache ops_purge ops_perturb ops_harden threads_default
          threads_notcache_purge threads_harden)
declare -A envs=(
    [ops_default]="MALLOC_PERTURB_=0"
    [ops_notcache]="MALLOC_PERTURB_=0 MEMALLOC_TCACHE=0"
    [ops_purge]="MALLOC_PERTURB_=0 ${purge[*]}"
    [ops_perturb]="MALLOC_PERTURB_=165"
    [ops_harden]="MALLOC_PERTURB_=0 MEMALLOC_HARDEN=1 MEMALLOC_QUARANTINE_BLOCKS=64"
    [threads_default]="MALLOC_PERTURB_=0"
    [threads_notcache_purge]="MALLOC_PERTURB_=0 MEMALLOC_TCACHE=0 ${purge[*]}"
    [threads_harden]="MALLOC_PERTURB_=0 MEMALLOC_HARDEN=1"
)
share=$((minutes * 60 / ${#variants[@]}))
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

declare -A execs status
failed=0
for v in "${variants[@]}"; do
    log=$out/$v.log
    echo "fuzz.sh: $v for ${share}s (${envs[$v]})"
    rc=0
    if [[ $v == ops_* ]]; then
        # The first directory takes what libFuzzer finds; the committed
        # corpus is only read.
        mkdir -p "$out/corpus/$v"
        # shellcheck disable=SC2086
        env ${envs[$v]} "$out/fuzz_ops" -max_total_time="$share" -print_final_stats=1 \
            -max_len=4096 -timeout=60 -rss_limit_mb=4096 \
            -artifact_prefix="$crashes/$v-" "$out/corpus/$v" tests/fuzz/corpus/ops \
            >"$log" 2>&1 || rc=$?
        execs[$v]=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    else
        # shellcheck disable=SC2086
        env ${envs[$v]} "$out/fuzz_threads" --seconds "$share" --artifacts "$crashes" \
            tests/fuzz/corpus/threads >"$log" 2>&1 || rc=$?
        execs[$v]=$(sed -n 's/^driver: executions \([0-9]*\).*/\1/p' "$log" | tail -1)
    fi
    if [ $rc -ne 0 ]; then
        status[$v]="FAILED (exit $rc, see $log)"
        failed=1
        grep -E 'FAIL|memalloc:|runtime error|deadly signal|failing input|Test unit written' \
            "$log" | head -5 >&2 || true
    else
        status[$v]=ok
    fi
done

echo
echo "fuzz.sh: executions per variant (${share}s each)"
for v in "${variants[@]}"; do
    printf '  %-24s %10s  %s\n' "$v" "${execs[$v]:-?}" "${status[$v]}"
done
found=$(find "$crashes" -type f | wc -l)
echo "fuzz.sh: $found file(s) in $crashes"
[ "$found" -eq 0 ] && [ $failed -eq 0 ]
