#!/usr/bin/env bash
# bench/mimalloc-bench.sh - memalloc and its peers on the C and C++ programs of
# the community suite daanx/mimalloc-bench.  The suite is not part of this
# project: give the path of a checkout of it (SRC).  The script builds the
# programs it needs with CMake outside the project tree (--build-dir), runs
# every test under every allocator as the process malloc (LD_PRELOAD; glibc
# with nothing preloaded), round by round with the allocator order rotated
# each round, and prints per test the median time, its ratio to glibc, the
# spread ((max-min)/median) and the median peak RSS, then the geometric means
# of the ratios over the tests that every allocator finished.  Raw samples
# (CSV) and a Markdown table go to --out.
#
#   bench/mimalloc-bench.sh [options] SRC
#
# Time is the wall time of the whole process, except for the tests that run
# for a fixed duration (larson, xmalloc-test, rptest, glibc-thread): there it
# is the program's own inverse throughput, in its own units (only the ratios
# mean anything).  A run that exits nonzero or times out is a FAIL.
set -euo pipefail

usage() {
    cat <<EOF
usage: bench/mimalloc-bench.sh [options] SRC

SRC is a checkout of https://github.com/daanx/mimalloc-bench (never fetched
by this script).

options:
  --rounds N            rounds (default 5); each runs every test under every
                        allocator, the allocator order rotated each round
  --quick               much smaller arguments: a smoke test, not a measurement
  --tests a,b,c         only these tests (default: all of them, listed below)
  --only a,b            only these allocators besides glibc (always run: it is
                        the reference)
  --memalloc PATH       libmemalloc.so to test (default: build-release/
                        libmemalloc.so of this project, built if missing)
  --allocator NAME=PATH add an allocator (a preloadable .so); repeatable
  --threads N           thread count of the threaded tests (default 2; the
                        *8 variants always use 8)
  --timeout S           seconds before a run counts as failed (default 60)
  --build-dir DIR       where the suite is built (default
                        \$HOME/.cache/memalloc-mimalloc-bench)
  --jobs N              parallel compile jobs (default: number of CPUs)
  --build-only          build the programs (and memalloc), then stop
  --locks               after the rounds, run each test once more with
                        bench/opcount.c's shim over memalloc (build-release's)
                        and add memalloc's lock acquisitions per 1,000
                        allocator calls to the report (counts, not times)
  --out DIR             results directory (default results/mimalloc-bench
                        under the current directory): samples.csv, tests.tsv,
                        table.md, logs/ (output of failed runs)
  -h, --help            this message

tests: ${all_tests[*]}

peers found in /usr/lib/<arch>-linux-gnu: jemalloc (libjemalloc.so.2),
tcmalloc (libtcmalloc_minimal.so.4), mimalloc (libmimalloc.so.2).
Needs cmake, gcc, g++, python3, GNU timeout; /usr/bin/time (Debian package
time) for timing, else a python3 wrapper does it.
EOF
}

all_tests=(cfrac espresso barnes larson larson8 larson-sized xmalloc-test
           xmalloc-test8 mstress rptest alloc-test cache-scratch cache-thrash
           glibc-simple glibc-thread malloc-large mleak)

die() { echo "mimalloc-bench.sh: $*" >&2; exit 1; }

root=$(cd "$(dirname "$0")/.." && pwd)
rounds=5 quick=0 threads=2 run_timeout=60 build_only=0 locks=0
jobs=$(nproc 2>/dev/null || echo 2)
build_dir=$HOME/.cache/memalloc-mimalloc-bench
out=results/mimalloc-bench
tests_arg='' only_arg='' memalloc_lib='' extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds=$2; shift ;;
        --quick) quick=1 ;;
        --tests) tests_arg=$2; shift ;;
        --only) only_arg=$2; shift ;;
        --memalloc) memalloc_lib=$2; shift ;;
        --allocator) extra+=("$2"); shift ;;
        --threads) threads=$2; shift ;;
        --timeout) run_timeout=$2; shift ;;
        --build-dir) build_dir=$2; shift ;;
        --jobs) jobs=$2; shift ;;
        --build-only) build_only=1 ;;
        --locks) locks=1 ;;
        --out) out=$2; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; break ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) break ;;
    esac
    shift
done
[ $# -eq 1 ] || { usage >&2; exit 2; }
[[ $rounds =~ ^[1-9][0-9]*$ ]] || die "--rounds wants a positive number"
[[ $threads =~ ^[1-9][0-9]*$ ]] || die "--threads wants a positive number"
src=$(cd "$1" 2>/dev/null && pwd -P) || die "no directory $1"
[ -f "$src/bench/CMakeLists.txt" ] || die "$src is not a mimalloc-bench checkout (no bench/CMakeLists.txt)"
for tool in cmake python3 timeout; do
    command -v "$tool" >/dev/null || die "needs $tool"
done
mkdir -p "$build_dir" "$out"
build_dir=$(cd "$build_dir" && pwd)
out=$(cd "$out" && pwd)

# ---------------------------------------------------------------- tests
# define_test NAME sets T_BIN (CMake target = executable), T_ARGS, T_IN
# (stdin) and T_METRIC: wall, or how to read the program's own result for
# the fixed-duration tests.  Arguments are upstream bench.sh's, scaled so
# that a run takes about 1-5 s on a 2-core machine (glibc; --quick scales
# further down).  Fixed by the programs: espresso (one input, ~5 s),
# alloc-test (~5 s), glibc-simple, malloc-large (~3.5 s), glibc-thread (2 s),
# rptest (~16 s of wall time, mostly its own sleeps; larger arguments only
# add CPU work, which is what it measures); larson sleeps 2.5 s after its run.
q() { if [ "$quick" = 1 ]; then echo "$2"; else echo "$1"; fi; }
define_test() {
    local t=$threads
    T_IN=/dev/null T_METRIC=wall T_ARGS=()
    case "$1" in
        cfrac)        T_BIN=cfrac   # upstream: a 44-digit number, ~7 s
                      T_ARGS=("$(q 17545186520507317056371138836327483792789 17545186520507317056371138836327)") ;;
        espresso)     T_BIN=espresso
                      T_ARGS=("$src/bench/espresso/largest.espresso") ;;
        barnes)       T_BIN=barnes   # upstream's input: 163840 bodies
                      T_IN=$(q "$src/bench/barnes/input" "$(barnes_input 20000)") ;;
        larson|larson8|larson-sized)   # upstream runs 5 s
                      T_BIN=${1%8} T_METRIC=larson
                      if [ "$1" = larson8 ]; then t=8; fi
                      T_ARGS=("$(q 2 1)" 8 1000 5000 100 4141 "$t") ;;
        xmalloc-test|xmalloc-test8)    # upstream runs 5 s
                      T_BIN=xmalloc-test T_METRIC=xmalloc
                      if [ "$1" = xmalloc-test8 ]; then t=8; fi
                      T_ARGS=(-w "$t" -t "$(q 2 0.5)" -s 64) ;;
        mstress)      T_BIN=mstress   # upstream: 25 iterations, ~0.1 s at 2 threads
                      T_ARGS=("$t" 50 "$(q 500 50)") ;;
        rptest)       T_BIN=rptest T_METRIC=rptest
                      T_ARGS=("$t" 0 1 2 "$(q 500 20)" 1000 100 8 16000) ;;
        alloc-test)   T_BIN=alloc-test T_ARGS=("$t") ;;
        cache-scratch|cache-thrash)    # upstream: 2000000 repetitions
                      T_BIN=$1 T_ARGS=("$t" "$(q 1000 100)" 1 "$(q 4000000 1000000)" "$t") ;;
        glibc-simple) T_BIN=glibc-simple ;;
        glibc-thread) T_BIN=glibc-thread T_METRIC=glibc-thread T_ARGS=("$t") ;;
        malloc-large) T_BIN=malloc-large ;;
        mleak)        T_BIN=mleak T_ARGS=("$(q 20 3)") ;;   # upstream: 5 and 50
        *) die "unknown test $1 (tests: ${all_tests[*]})" ;;
    esac
}
# barnes reads its parameters from stdin, one a line, the body count on the
# second: upstream's input file with a smaller count.
barnes_input() {
    local f=$build_dir/barnes-input-$1
    [ -f "$f" ] || sed "2s/.*/$1/" "$src/bench/barnes/input" >"$f"
    echo "$f"
}
# metric KIND OUTFILE: the fixed-duration tests' inverse throughput.
metric() {
    local n
    case "$1" in
        larson) sed -n 's/.*relative time: \([0-9.]*\)s.*/\1/p' "$2" | tail -n1 ;;
        xmalloc) sed -n 's/^rtime: \([0-9.]*\),.*/\1/p' "$2" | tail -n1 ;;
        rptest) n=$(grep -o '[0-9]* memory ops/CPU second' "$2" | tail -n1 | cut -d' ' -f1 || true)
                [ -n "$n" ] && [ "$n" -gt 0 ] && awk -v n="$n" 'BEGIN { printf "%.4f\n", 1e8 / n }' ;;
        glibc-thread) n=$(sed -n 's/^\([0-9]*\) iterations$/\1/p' "$2" | tail -n1 || true)
                [ -n "$n" ] && [ "$n" -gt 0 ] && awk -v n="$n" 'BEGIN { printf "%.4f\n", 1e8 / n }' ;;
    esac
    return 0
}

if [ -n "$tests_arg" ]; then
    IFS=, read -r -a tests <<<"$tests_arg"
else
    tests=("${all_tests[@]}")
fi
for t in "${tests[@]}"; do define_test "$t"; done   # dies on unknown names

# ---------------------------------------------------------------- build
configure() {   # DIR: configure the suite's CMake project in DIR
    rm -rf "$build_dir/CMakeCache.txt" "$build_dir/CMakeFiles"
    cmake -S "$1" -B "$build_dir" -DCMAKE_BUILD_TYPE=Release >"$build_dir/configure.log" 2>&1
}
# Some sources are not in the repository (upstream's build-bench-env.sh
# downloads shbench's), and CMake refuses the whole project without them.
# Then configure a shadow of SRC/bench instead: symbolic links to its files
# plus an empty stand-in for each source CMake could not find (the targets
# that need them are not ours and are never built).
missing_sources() {
    sed -n '/Cannot find source file:/{n;n;s/^ *//p}' "$build_dir/configure.log" | sort -u
}
shadow=$build_dir/shadow
if [ ! -f "$build_dir/CMakeCache.txt" ]; then
    echo "configuring $src/bench in $build_dir"
    if ! configure "$src/bench"; then
        mapfile -t missing < <(missing_sources)
        [ ${#missing[@]} -gt 0 ] || die "cmake failed, see $build_dir/configure.log"
        echo "sources missing from the checkout: ${missing[*]}; configuring a shadow tree with empty stand-ins"
        rm -rf "$shadow" && mkdir -p "$shadow" && cp -as "$src/bench/." "$shadow/"
        for m in "${missing[@]}"; do mkdir -p "$(dirname "$shadow/$m")" && : >"$shadow/$m"; done
        configure "$shadow" || die "cmake failed, see $build_dir/configure.log"
    fi
else
    home=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$build_dir/CMakeCache.txt")
    home=$(cd "$home" 2>/dev/null && pwd -P || echo "$home")
    if [ "$home" = "$shadow" ]; then
        home=$(readlink -f "$shadow/CMakeLists.txt" | xargs -r dirname)
    fi
    [ "$home" = "$src/bench" ] || die "$build_dir is configured for $home; give another --build-dir"
fi
mkdir -p "$build_dir/logs"
declare -A built=()
runnable=() skipped=()
for t in "${tests[@]}"; do
    define_test "$t"
    if [ -z "${built[$T_BIN]:-}" ]; then
        if cmake --build "$build_dir" --target "$T_BIN" -j "$jobs" \
               >"$build_dir/logs/build-$T_BIN.log" 2>&1 && [ -x "$build_dir/$T_BIN" ]; then
            built[$T_BIN]=ok
        else
            built[$T_BIN]=failed
            echo "skipping $T_BIN: it failed to build, see $build_dir/logs/build-$T_BIN.log" >&2
        fi
    fi
    if [ "${built[$T_BIN]}" = ok ]; then runnable+=("$t"); else skipped+=("$t"); fi
done

# ---------------------------------------------------------------- allocators
names=(glibc) libs=('')
add_allocator() {   # NAME PATH: a later one of the same name replaces it
    local i
    [ -f "$2" ] || die "allocator $1: no file $2"
    for i in "${!names[@]}"; do
        if [ "${names[$i]}" = "$1" ]; then libs[i]=$(realpath "$2"); return; fi
    done
    names+=("$1") libs+=("$(realpath "$2")")
}
if [ -z "$memalloc_lib" ]; then
    memalloc_lib=$root/build-release/libmemalloc.so
    if [ ! -f "$memalloc_lib" ]; then
        echo "building memalloc in $root/build-release"
        [ -d "$root/build-release" ] ||
            meson setup "$root/build-release" "$root" --buildtype=release -Dtests=false >/dev/null
        meson compile -C "$root/build-release" memalloc >/dev/null
    fi
fi
add_allocator memalloc "$memalloc_lib"
for dir in /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu; do
    for peer in jemalloc=libjemalloc.so.2 tcmalloc=libtcmalloc_minimal.so.4 mimalloc=libmimalloc.so.2; do
        if [ -f "$dir/${peer#*=}" ]; then add_allocator "${peer%%=*}" "$dir/${peer#*=}"; fi
    done
done
for a in "${extra[@]}"; do
    [[ $a == ?*=?* ]] || die "--allocator wants NAME=PATH, not $a"
    add_allocator "${a%%=*}" "${a#*=}"
done
if [ -n "$only_arg" ]; then
    keep_names=(glibc) keep_libs=('')
    IFS=, read -r -a wanted <<<"$only_arg"
    for w in "${wanted[@]}"; do
        [ "$w" = glibc ] && continue
        found=0
        for i in "${!names[@]}"; do
            if [ "${names[$i]}" = "$w" ]; then keep_names+=("$w") keep_libs+=("${libs[$i]}") found=1; fi
        done
        [ $found = 1 ] || die "--only: no allocator $w (have: ${names[*]})"
    done
    names=("${keep_names[@]}") libs=("${keep_libs[@]}")
fi

if [ "$build_only" = 1 ]; then echo "built in $build_dir; allocators: ${names[*]}"; exit 0; fi
[ ${#runnable[@]} -gt 0 ] || die "nothing to run"

# ---------------------------------------------------------------- running
# timed FILE CMD...: runs CMD, writes "wall-seconds max-RSS-KiB" to FILE.
if [ -x /usr/bin/time ]; then
    timed() { local f=$1; shift; /usr/bin/time -o "$f" -f '%e %M' "$@"; }
else
    timed() {
        local f=$1; shift
        python3 -c '
import resource, subprocess, sys, time
start = time.monotonic()
rc = subprocess.call(sys.argv[2:])
wall = time.monotonic() - start
with open(sys.argv[1], "w") as f:
    print("%.3f %d" % (wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss), file=f)
sys.exit(rc if rc >= 0 else 128 - rc)' "$f" "$@"
    }
    # A child inherits the high-water mark of the python3 that forked it.
    timed "$build_dir/floor.txt" true
    echo "no /usr/bin/time (Debian package time): timing with python3; peak RSS" \
         "below $(( $(cut -d' ' -f2 "$build_dir/floor.txt") / 1024 )) MiB reads as that much"
fi

csv=$out/samples.csv
logs=$out/logs
rm -rf "$logs" && mkdir -p "$logs" "$build_dir/run"
echo "round,test,allocator,status,time,wall_s,rss_kib" >"$csv"
: >"$out/tests.tsv"
for t in "${runnable[@]}"; do
    define_test "$t"
    cmd="$T_BIN${T_ARGS[*]:+ ${T_ARGS[*]}}"
    if [ "$T_IN" != /dev/null ]; then cmd+=" < $(basename "$T_IN")"; fi
    printf '%s\t%s\t%s\n' "$t" "$T_METRIC" "${cmd//$src\//}" >>"$out/tests.tsv"
done

# run_one ROUND TEST NAME LIB: one run, one CSV line; prints the result.
run_one() {
    local round=$1 test=$2 name=$3 lib=$4 rc=0 wall rss value status
    local log=$logs/$test.$name.r$round tf=$build_dir/run/time.txt
    local env_args=()
    if [ -n "$lib" ]; then env_args=("LD_PRELOAD=$lib"); fi
    define_test "$test"
    rm -f "$tf"
    ( cd "$build_dir/run" &&
      timed "$tf" timeout -k 5 "$run_timeout" env "${env_args[@]}" \
          "$build_dir/$T_BIN" "${T_ARGS[@]}" <"$T_IN" >"$log.out" 2>"$log.err" ) || rc=$?
    read -r wall rss < <(tail -n1 "$tf" 2>/dev/null || echo "nan nan")
    value=$wall status=ok
    if [ $rc = 124 ] || [ $rc = 137 ]; then
        status=timeout
    elif [ $rc != 0 ]; then
        status=exit$rc
    elif [ "$T_METRIC" != wall ]; then
        value=$(metric "$T_METRIC" "$log.out")
        [ -n "$value" ] || status=noresult
    fi
    if [ $status = ok ]; then rm -f "$log.out" "$log.err"; else value=nan; fi
    echo "$round,$test,$name,$status,$value,$wall,$rss" >>"$csv"
    if [ $status = ok ]; then printf ' %s %s' "$name" "$value"; else printf ' %s FAIL(%s)' "$name" "$status"; fi
}

n=${#names[@]}
echo "allocators: ${names[*]}"
echo "tests: ${runnable[*]}"
for ((r = 1; r <= rounds; r++)); do
    for t in "${runnable[@]}"; do
        printf 'round %d/%d %-14s' "$r" "$rounds" "$t"
        for ((k = 0; k < n; k++)); do
            i=$(( (k + r - 1) % n ))
            run_one "$r" "$t" "${names[$i]}" "${libs[$i]}"
        done
        echo
    done
done

# One more run of each test under the counting shim: memalloc's lock
# acquisitions per 1,000 calls (of the lines its processes wrote, the one
# with the most calls: the test's own process).
: >"$out/locks.tsv"
if [ "$locks" = 1 ]; then
    shim=$root/build-release/bench/libopcount.so
    [ -f "$shim" ] || meson compile -C "$root/build-release" opcount >/dev/null
    for t in "${runnable[@]}"; do
        define_test "$t"
        f=$build_dir/run/opcount.txt
        : >"$f"
        ( cd "$build_dir/run" &&
          timeout -k 5 "$run_timeout" env LD_PRELOAD="$shim" OPCOUNT_OUT="$f" \
              "$build_dir/$T_BIN" "${T_ARGS[@]}" <"$T_IN" >/dev/null 2>&1 ) || true
        line=$(grep '^opcount ' "$f" | sort -t= -k2 -n | tail -n1 || true)
        printf '%s\t%s\n' "$t" "${line:-none}" >>"$out/locks.tsv"
        echo "locks $t: ${line:-no count (the run failed)}"
    done
fi

# ---------------------------------------------------------------- report
src_rev=$(git -C "$src" rev-parse --short HEAD 2>/dev/null || echo "unknown revision")
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo 2>/dev/null | head -n1)
about="daanx/mimalloc-bench ($src_rev), $rounds round(s)$([ "$quick" = 1 ] && echo ', --quick'), $(nproc) CPUs${cpu:+ ($cpu)}, $(date +%Y-%m-%d)"
python3 - "$csv" "$out/tests.tsv" "$out/table.md" "$(IFS=,; echo "${names[*]}")" "$about" "${skipped[*]:-}" "$out/locks.tsv" <<'EOF'
import csv, math, statistics, sys
samples, tests_tsv, md_path, names, about, skipped, locks_tsv = sys.argv[1:]
names = names.split(",")
tests, metric, command = [], {}, {}
for line in open(tests_tsv):
    t, m, c = line.rstrip("\n").split("\t")
    tests.append(t); metric[t] = m; command[t] = c
runs = {}
for row in csv.DictReader(open(samples)):
    runs.setdefault((row["test"], row["allocator"]), []).append(row)

def summary(t, a):
    rows = runs.get((t, a), [])
    bad = [r["status"] for r in rows if r["status"] != "ok"]
    if not rows or bad:
        return {"fail": "%d of %d runs (%s)" % (len(bad), len(rows), ", ".join(sorted(set(bad))))}
    v = [float(r["time"]) for r in rows]
    rss = [float(r["rss_kib"]) / 1024 for r in rows if r["rss_kib"] not in ("", "nan")]
    med = statistics.median(v)
    spread = (max(v) - min(v)) / med if med and len(v) > 1 else None
    return {"time": med, "spread": spread,
            "rss": statistics.median(rss) if rss else None}

S = {(t, a): summary(t, a) for t in tests for a in names}
def ratio(t, a, key):
    g, x = S[t, "glibc"], S[t, a]
    if "fail" in g or "fail" in x or not g.get(key) or x.get(key) is None:
        return None
    return x[key] / g[key]

def unit(t):
    return "wall s" if metric[t] == "wall" else "own inverse throughput"

out = []
for t in tests:
    out.append("%s: %s  [%s]" % (t, command[t], unit(t)))
    out.append("  %-10s %9s %7s %7s %9s %7s" % ("allocator", "time", "ratio", "spread", "RSS MiB", "ratio"))
    for a in names:
        s = S[t, a]
        if "fail" in s:
            out.append("  %-10s FAIL: %s" % (a, s["fail"]))
            continue
        tr, rr = ratio(t, a, "time"), ratio(t, a, "rss")
        out.append("  %-10s %9.3f %7s %7s %9s %7s" % (
            a, s["time"], "%.3f" % tr if tr else "-",
            "%.1f%%" % (100 * s["spread"]) if s["spread"] is not None else "-",
            "%.1f" % s["rss"] if s["rss"] is not None else "n/a", "%.3f" % rr if rr else "-"))
    out.append("")

complete = [t for t in tests if all("fail" not in S[t, a] for a in names)]
def geomean(a, key):
    r = [ratio(t, a, key) for t in complete]
    r = [x for x in r if x]
    return math.exp(sum(map(math.log, r)) / len(r)) if r else None
gm = {a: (geomean(a, "time"), geomean(a, "rss")) for a in names}
fmt = lambda x: "%.3f" % x if x else "-"
out.append("geometric mean of the ratios to glibc over the %d test(s) every allocator finished%s:"
           % (len(complete), "" if len(complete) == len(tests) else
              " (left out: %s)" % ", ".join(t for t in tests if t not in complete)))
out.append("  %-10s %7s %7s" % ("allocator", "time", "RSS"))
for a in names:
    out.append("  %-10s %7s %7s" % (a, fmt(gm[a][0]), fmt(gm[a][1])))
if skipped:
    out.append("not built, not run: " + skipped)
print("\n".join(out))

# Markdown: ratios to glibc (glibc's own median in its column), two tables.
def cell(t, a, key):
    s = S[t, a]
    if "fail" in s:
        return "FAIL"
    if a == "glibc":
        if key == "time":
            return "%.3f%s" % (s["time"], " s" if metric[t] == "wall" else "")
        return "%.1f MiB" % s["rss"] if s["rss"] is not None else "n/a"
    r = ratio(t, a, key)
    if r is None:
        return "-"
    if key == "rss" or s["spread"] is None:
        return "%.2f" % r
    return "%.2f (±%.0f%%)" % (r, 100 * s["spread"])

md = ["### mimalloc-bench", "", about + ".", ""]
for key, title in (("time", "Time, ratio to glibc (lower is better; in brackets the spread, (max-min)/median)"),
                   ("rss", "Peak RSS, ratio to glibc")):
    md += ["%s:" % title, "", "| test | " + " | ".join(names) + " |",
           "|---" * (len(names) + 1) + "|"]
    for t in tests:
        md.append("| %s | " % t + " | ".join(cell(t, a, key) for a in names) + " |")
    k = 0 if key == "time" else 1
    md.append("| geometric mean (%d tests) | " % len(complete) +
              " | ".join("1" if a == "glibc" else fmt(gm[a][k]) for a in names) + " |")
    md.append("")
md += ["Time is the median wall time of the whole process, except for the tests"
       " that run for a fixed duration (%s): their own inverse throughput."
       % ", ".join(t for t in tests if metric[t] != "wall") if any(metric[t] != "wall" for t in tests)
       else "Time is the median wall time of the whole process.", "",
       "| test | command |", "|---|---|"]
md += ["| %s | `%s` |" % (t, command[t]) for t in tests]
if skipped:
    md += ["", "Not built, not run: %s." % skipped]
locks = []
for line in open(locks_tsv):
    t, rest = line.rstrip("\n").split("\t")
    v = dict(kv.split("=") for kv in rest.split()[1:]) if rest.startswith("opcount ") else {}
    ops = int(v.get("ops", 0))
    if ops:
        k = ops / 1000
        locks.append("| %s | %d | %.2f | %.3f | %.3f | %.4f |" % (
            t, ops, int(v["class_locks"]) / k, int(v["class_contended"]) / k,
            int(v["heap_locks"]) / k, int(v["heap_contended"]) / k))
    else:
        locks.append("| %s | no count | | | | |" % t)
if locks:
    md += ["", "memalloc's lock acquisitions per 1,000 allocator calls (one counting run):", "",
           "| test | calls | class locks /1k | contended /1k | heap locks /1k | contended /1k |",
           "|---|---:|---:|---:|---:|---:|"] + locks
    print("\nlock acquisitions per 1,000 calls:\n" + "\n".join(locks))
open(md_path, "w").write("\n".join(md) + "\n")
EOF
echo "samples: $csv; table: $out/table.md"
