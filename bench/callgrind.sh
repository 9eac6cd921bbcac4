#!/usr/bin/env bash
# bench/callgrind.sh - instructions per malloc+free pair, counted exactly by
# callgrind for memalloc, glibc and every peer allocator installed.
#
# Two patterns: malloc(32)+free in a loop, and 1,000 live objects of random
# size 8-512 B allocated then freed.  Each is run at two lengths and the
# difference divided by the extra pairs, so start-up cancels.  The "loop
# included" columns keep the loop body's own instructions; the "net"
# columns subtract what the same loop costs when it calls a null allocator
# (malloc returns a static buffer, free returns) through the same PLT, so
# what is left is the allocator's own work, the convention of the
# reference figures in the project's issue #4.  Callgrind does not replace
# malloc, so the preloaded allocator's own instructions are what gets
# counted.
#   bench/callgrind.sh [build-dir]     (default build-release)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-release}
command -v valgrind >/dev/null || { echo "callgrind.sh: needs valgrind (apt-get install valgrind)"; exit 1; }
if [ ! -f "$build/libmemalloc.so" ]; then
    meson setup "$build" --buildtype=release -Dtests=false >/dev/null
    meson compile -C "$build" >/dev/null
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/pairs.c" <<'C'
#include <stdlib.h>
int main(int argc, char **argv)
{
    long n = atol(argv[1]);
    if (argv[2][0] == 'f') {                /* fixed: malloc(32) + free */
        for (long i = 0; i < n; i++) {
            void *p = malloc(32);
            __asm__ volatile("" : : "r"(p) : "memory");
            free(p);
        }
    } else {                                /* random: 1,000 live, 8-512 B */
        static void *keep[1000];
        unsigned s = 12345;
        for (long r = 0; r < n; r++) {
            for (int i = 0; i < 1000; i++) {
                s = s * 1103515245u + 12345u;
                keep[i] = malloc(8 + (s >> 16) % 505);
            }
            for (int i = 0; i < 1000; i++)
                free(keep[i]);
        }
    }
    return 0;
}
C
cc -O2 -fno-builtin "$tmp/pairs.c" -o "$tmp/pairs"
# The null allocator: the loop's own cost, calls and PLT jumps included.
cat > "$tmp/null.c" <<'C'
#include <stddef.h>
static char buf[1024] __attribute__((aligned(16)));
void *null_malloc(size_t n) { (void)n; return buf; }
void null_free(void *p) { (void)p; }
C
cc -O2 -shared -fPIC "$tmp/null.c" -o "$tmp/libnull.so"
cc -O2 -fno-builtin -Dmalloc=null_malloc -Dfree=null_free -include stddef.h -include stdlib.h \
    "$tmp/pairs.c" -o "$tmp/pairs_null" -L"$tmp" -lnull -Wl,-rpath,"$tmp"

count() {   # count LIB N MODE -> total instructions (LIB "null": the null allocator)
    local out="$tmp/cg.out" prog="$tmp/pairs" lib=$1
    if [ "$lib" = null ]; then prog="$tmp/pairs_null"; lib=; fi
    env ${lib:+LD_PRELOAD=$lib} valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$prog" "$2" "$3" >/dev/null 2>&1
    callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}'
}
per_pair() {  # per_pair LIB MODE N1 N2 PAIRS_PER_UNIT
    local a b
    a=$(count "$1" "$3" "$2")
    b=$(count "$1" "$4" "$2")
    echo $(( (b - a) / ((($4) - ($3)) * $5) ))
}

lib=/usr/lib/$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
allocs=("glibc=" "memalloc=$PWD/$build/libmemalloc.so")
for p in jemalloc:libjemalloc.so.2 tcmalloc:libtcmalloc_minimal.so.4 mimalloc:libmimalloc.so.2; do
    f=$(ls "$lib/${p#*:}"* 2>/dev/null | head -n 1 || true)
    [ -n "$f" ] && allocs+=("${p%%:*}=$f")
done
loop_f=$(per_pair null f 100000 200000 1)
loop_r=$(per_pair null r 100 200 1000)
printf '%-10s %16s %16s %16s %16s\n' "" "malloc(32)+free" "" "1000 live 8-512B" ""
printf '%-10s %16s %16s %16s %16s\n' allocator "loop included" net "loop included" net
for a in "${allocs[@]}"; do
    name=${a%%=*}; path=${a#*=}
    f=$(per_pair "$path" f 100000 200000 1)
    r=$(per_pair "$path" r 100 200 1000)
    printf '%-10s %16s %16s %16s %16s\n' "$name" "$f" $((f - loop_f)) "$r" $((r - loop_r))
done
echo "(instructions per pair; the loop alone costs $loop_f and $loop_r; lower is better)"
