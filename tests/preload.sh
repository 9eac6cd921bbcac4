#!/usr/bin/env bash
# preload.sh LIB - real programs under LD_PRELOAD=LIB (libmemalloc.so).
#
# For each program found on the machine (sort, ls, perl, python3, git,
# sqlite3, gcc, xz, tclsh, node, awk, sed, grep, tar, gzip) run one
# deterministic, allocation-heavy workload twice, with glibc's malloc and
# with memalloc preloaded, and require identical stdout and exit status.
# Also checks that memalloc really was the malloc of the preloaded runs
# (MEMALLOC_STATS=1 makes it print "memalloc statistics" at exit).
# Prints "ok NAME", "skip NAME (absent)" or "FAIL NAME" plus a diff head.
# Exit 0 if all present programs agree, 1 on any failure, 77 if no program
# at all is present.

set -u

LIB=${1:-}
if [[ -z "$LIB" || ! -r "$LIB" ]]; then
    echo "FAIL: usage: preload.sh /path/to/libmemalloc.so (got '${LIB}')"
    exit 1
fi
LIB=$(readlink -f "$LIB")

TMP=$(mktemp -d "${TMPDIR:-/tmp}/memalloc-preload.XXXXXX") || exit 1
trap 'rm -rf "$TMP"' EXIT
export LC_ALL=C TZ=UTC
export HOME="$TMP/home"            # no user configuration for git & co.
mkdir -p "$HOME"
export GIT_CONFIG_NOSYSTEM=1 PYTHONHASHSEED=0

have() { command -v "$1" >/dev/null 2>&1; }

# ---- shared input data, made without the preload --------------------------
# 200k pseudo-random lines "word number word", deterministic.
gen_lines() {
    local n=$1
    if have awk; then
        awk -v n="$n" 'BEGIN {
            s = 12345
            for (i = 1; i <= n; i++) {
                s = (s * 1103515245 + 12345) % 2147483648
                w = ""
                len = 3 + s % 12
                for (k = 0; k < len; k++) {
                    s = (s * 1103515245 + 12345) % 2147483648
                    w = w sprintf("%c", 97 + int(s / 65536) % 26)
                }
                printf "%s %d %s%d\n", w, s % 100000, substr(w, 1, 2), i % 977
            }
        }'
    else
        local i
        for ((i = 1; i <= n; i++)); do
            echo "w$(((i * 7919) % 10007)) $(((i * 104729) % 100000)) x$((i % 977))"
        done
    fi
}
gen_lines 200000 > "$TMP/lines.txt"

# ---- workloads: stdout must not depend on the malloc -----------------------
# Each runs in its own empty directory (the current one).

w_sort() {
    sort "$TMP/lines.txt" | md5sum
    sort -k2,2n -k1,1r "$TMP/lines.txt" | md5sum
    sort -u -k3,3 "$TMP/lines.txt" | head -c 2000
    sort -S 1M -T . -k1,1 "$TMP/lines.txt" | tail -n 5
}

w_ls() {
    local d=/usr/include
    [[ -d $d ]] || d=/usr/lib
    ls -lnR --time-style=+%s "$d" | md5sum
    ls -1RS "$d" | head -n 200
    ls -lnR --time-style=+%s /usr/share/doc 2>/dev/null | wc -l
}

w_perl() {
    perl -e '
        use strict; use warnings;
        my %h; my @a;
        for my $i (1 .. 200000) {
            my $k = "k" . ($i * 7919 % 100003);
            push @{ $h{$k} }, $i, "v" x ($i % 61);
            push @a, join(",", $i, $k, reverse split //, $k) if $i % 3 == 0;
        }
        my $sum = 0;
        for my $k (sort keys %h) { $sum += $_ =~ /^\d+$/ ? $_ : length($_) for @{ $h{$k} } }
        my %cnt; $cnt{substr($_, -3)}++ for @a;
        my $s = join ";", map { "$_=$cnt{$_}" } sort keys %cnt;
        (my $t = $s x 20) =~ s/(\d+)/<$1>/g;
        print scalar(keys %h), " $sum ", length($t), "\n", substr($s, 0, 300), "\n";
        open my $fh, "<", $ARGV[0] or die; my %w;
        while (<$fh>) { my @f = split; $w{$f[2]} .= $f[0] }
        print scalar(keys %w), " ", length(join "", @w{sort keys %w}), "\n";
    ' "$TMP/lines.txt"
}

w_python3() {
    python3 - "$TMP/lines.txt" <<'EOF'
import json, hashlib, sys, collections, re
d = {}
for i in range(150000):
    d["k%d" % (i * 7919 % 100003)] = {"i": i, "s": "x" * (i % 50), "l": list(range(i % 7))}
blob = json.dumps(d, sort_keys=True)
back = json.loads(blob)
print(len(d), len(blob), hashlib.sha256(blob.encode()).hexdigest(), back == d)
words = collections.Counter()
with open(sys.argv[1]) as f:
    for line in f:
        a, b, c = line.split()
        words[c] += int(b)
print(words.most_common(5))
s = " ".join(sorted(words))
print(len(re.findall(r"[a-z]{2}\d+", s)), hashlib.md5(s.encode()).hexdigest())
big = [bytes(range(256)) * (i % 40) for i in range(20000)]
print(sum(map(len, big)), len(set(big)))
EOF
}

w_git() {
    export GIT_AUTHOR_NAME=t GIT_AUTHOR_EMAIL=t@example.com
    export GIT_COMMITTER_NAME=t GIT_COMMITTER_EMAIL=t@example.com
    git -c init.defaultBranch=main init -q repo || return 1
    cd repo || return 1
    local c f
    for c in 1 2 3 4 5; do
        for f in $(seq 1 60); do
            sed -n "$((f * 300 + c * 7)),$((f * 300 + c * 7 + 200))p" "$TMP/lines.txt" > "f$f.txt"
        done
        git add -A
        GIT_AUTHOR_DATE="@$((1000000000 + c)) +0000" GIT_COMMITTER_DATE="@$((1000000000 + c)) +0000" \
            git commit -q -m "commit $c" || return 1
    done
    echo changed >> f7.txt
    rm f9.txt
    echo new > g.txt
    git log --stat --format='%H %s' | md5sum
    git log -p | md5sum
    git status --porcelain
    git diff --stat
    git rev-list --all --objects | sort | md5sum
    git gc -q && git count-objects -v | grep -v -e size -e prune
}

w_sqlite3() {
    sqlite3 db.sqlite <<'EOF'
CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT, v INTEGER, pad TEXT);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000)
  INSERT INTO t(k, v, pad) SELECT 'k' || (x * 7919 % 100003), x % 977, substr(hex(x * x), 1, 12) || printf('%.*c', x % 40, 'z') FROM c;
CREATE INDEX t_k ON t(k);
CREATE INDEX t_v ON t(v);
SELECT count(*), sum(v), max(length(pad)) FROM t;
SELECT v, count(*), group_concat(id, ',') FROM (SELECT * FROM t WHERE v < 5 ORDER BY id LIMIT 40) GROUP BY v ORDER BY v;
SELECT k, v FROM t WHERE k BETWEEN 'k1000' AND 'k1010' ORDER BY k, v;
SELECT sum(length(g)) FROM (SELECT group_concat(pad) AS g FROM t GROUP BY v);
UPDATE t SET pad = pad || pad WHERE v % 3 = 0;
DELETE FROM t WHERE v % 5 = 1;
VACUUM;
SELECT count(*), sum(length(pad)) FROM t;
EOF
}

w_gcc() {
    cat > prog.c <<'EOF'
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
static int cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}
int main(void)
{
    enum { N = 100000 };
    char **v = malloc(N * sizeof *v);
    unsigned long h = 5381;
    for (int i = 0; i < N; i++) {
        v[i] = malloc(16 + i % 200);
        snprintf(v[i], 16 + i % 200, "s%d-%d", (i * 7919) % N, i % 13);
    }
    qsort(v, N, sizeof *v, cmp);
    for (int i = 0; i < N; i++) {
        for (char *p = v[i]; *p; p++)
            h = h * 33 + (unsigned char)*p;
        v[i] = realloc(v[i], 300);
        free(v[i]);
    }
    free(v);
    printf("%s %lu\n", "done", h);
    return 0;
}
EOF
    gcc -O2 -Wall -o prog prog.c && ./prog
}

w_xz() {
    head -n 80000 "$TMP/lines.txt" > in.txt
    xz -9 -T1 -c in.txt > in.txt.xz || return 1
    md5sum < in.txt.xz
    xz -d -c in.txt.xz | md5sum
    xz -l in.txt.xz | tail -n 1
}

w_tclsh() {
    cat > t.tcl <<'EOF'
set l {}
for {set i 0} {$i < 100000} {incr i} {
    lappend l [format "k%05d-%s" [expr {($i * 7919) % 100003}] [string repeat x [expr {$i % 23}]]]
}
set s [lsort $l]
set j [join $s ,]
puts [string length $j]
puts [string range [string map {x y k K} $j] 0 200]
set d [dict create]
foreach e $l { dict lappend d [string index $e end-1] [string length $e] }
foreach k [lsort [dict keys $d]] { puts "$k [llength [dict get $d $k]]" }
set f [open [lindex $argv 0]]
set n 0
while {[gets $f line] >= 0} { incr n [string length [string toupper $line]] }
close $f
puts $n
puts [regsub -all {[aeiou]+} [string range $j 0 100000] {_} r]
puts [string length $r]
EOF
    tclsh t.tcl "$TMP/lines.txt"
}

w_node() {
    node -e '
        const crypto = require("crypto");
        const a = [];
        for (let i = 0; i < 100000; i++)
            a.push({ i, k: "k" + (i * 7919 % 100003), s: "x".repeat(i % 50), l: [i, i * 2, "z" + i] });
        const blob = JSON.stringify(a);
        const back = JSON.parse(blob);
        console.log(blob.length, back.length, crypto.createHash("sha256").update(blob).digest("hex"));
        const m = new Map();
        for (const o of back) m.set(o.k, (m.get(o.k) || 0) + o.i);
        console.log(m.size, [...m.keys()].sort().slice(0, 5).join(","));
        const bufs = [];
        for (let i = 0; i < 2000; i++) bufs.push(Buffer.alloc(1000 + i * 10, i % 256));
        console.log(Buffer.concat(bufs).length);
    '
}

w_awk() {
    awk '{ n[$3] += $2; w[$1]++; s = s substr($1, 1, 1) } END {
        for (k in n) t += n[k]
        c = 0; for (k in w) c++
        print t, c, length(s), substr(s, 1, 100)
    }' "$TMP/lines.txt"
    awk '{ print $3, toupper($1), $2 * 2 }' "$TMP/lines.txt" | md5sum
}

w_sed() {
    sed -E 's/([a-z]+) ([0-9]+)/\2:\1/; s/[aeiou]/<&>/g; /q/d' "$TMP/lines.txt" | md5sum
    sed -n '$!{h;d};x;G;p' "$TMP/lines.txt" | md5sum
    sed -E ':a; N; $!ba; s/\n/|/g' "$TMP/lines.txt" | md5sum
}

w_grep() {
    grep -c -E '^([a-z])[a-z]*\1 ' "$TMP/lines.txt"
    grep -o -E '[a-z]{5,}' "$TMP/lines.txt" | md5sum
    grep -n -F -e abc -e xyz -e qqq "$TMP/lines.txt" | md5sum
    grep -v -i -E 'a|e' "$TMP/lines.txt" | md5sum
}

w_tar() {
    mkdir -p tree/a/b tree/c
    local i
    for i in $(seq 1 200); do
        sed -n "$((i * 100)),$((i * 100 + i))p" "$TMP/lines.txt" > "tree/a/b/f$i"
        echo "$i" > "tree/c/g$i"
    done
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf t.tar tree || return 1
    md5sum < t.tar
    mkdir out && tar -xf t.tar -C out && tar -tvf t.tar | md5sum
    diff -r tree out/tree && echo same
}

w_gzip() {
    gzip -9 -n -c "$TMP/lines.txt" > l.gz || return 1
    md5sum < l.gz
    gzip -d -c l.gz | md5sum
    gzip -l l.gz | tail -n 1 | awk '{ print $1, $2 }'
}

# ---- the comparison ---------------------------------------------------------

run_one() {       # run_one NAME MODE: output in $TMP/NAME.MODE.{out,err,rc}
    local name=$1 mode=$2 dir="$TMP/run-$1-$2"
    mkdir -p "$dir"
    (
        cd "$dir" || exit 1
        if [[ $mode == memalloc ]]; then
            export LD_PRELOAD="$LIB" MEMALLOC_STATS=1 MEMALLOC_VERBOSE=1
        fi
        "w_$name"
    ) > "$TMP/$name.$mode.out" 2> "$TMP/$name.$mode.err"
    echo $? > "$TMP/$name.$mode.rc"
    rm -rf "$dir"
}

programs=(sort ls perl python3 git sqlite3 gcc xz tclsh node awk sed grep tar gzip)
present=0
failed=0
stats_seen=()
for name in "${programs[@]}"; do
    if ! have "$name"; then
        echo "skip $name (absent)"
        continue
    fi
    present=$((present + 1))
    run_one "$name" glibc
    run_one "$name" memalloc
    rc_g=$(cat "$TMP/$name.glibc.rc")
    rc_m=$(cat "$TMP/$name.memalloc.rc")
    if [[ $rc_g == "$rc_m" ]] && cmp -s "$TMP/$name.glibc.out" "$TMP/$name.memalloc.out"; then
        if [[ ! -s "$TMP/$name.glibc.out" ]]; then
            echo "FAIL $name: the workload printed nothing (exit status $rc_g)"
            sed 's/^/    stderr: /' "$TMP/$name.glibc.err" | head -n 10
            failed=1
            continue
        fi
        echo "ok $name"
        grep -q "memalloc statistics" "$TMP/$name.memalloc.err" && stats_seen+=("$name")
    else
        echo "FAIL $name: exit status $rc_g with glibc, $rc_m with memalloc"
        diff "$TMP/$name.glibc.out" "$TMP/$name.memalloc.out" | head -n 20 | sed 's/^/    /'
        grep -v -e '^memalloc statistics' -e '^class ' -e '^ *[0-9]' -e ':  *[0-9]*$' \
            "$TMP/$name.memalloc.err" | head -n 10 | sed 's/^/    stderr (memalloc): /'
        failed=1
    fi
done

# node, 50 times in a row: V8 asks for its code range right at the break
# of a non-PIE node.  Before memalloc reserved the space above its heap,
# the heap then could not grow and node died of std::bad_alloc in about
# one run in ten of this workload (Maps, Buffers, typed arrays, zlib).
w_node_heavy() {
    node -e '
        const zlib = require("zlib"), crypto = require("crypto");
        const m = new Map();
        for (let i = 0; i < 50000; i++) m.set("k" + i, { i, s: "v".repeat(i % 40) });
        const bufs = [];
        for (let i = 0; i < 64; i++) bufs.push(Buffer.alloc(1 << 20, i % 251));
        const ta = new Float64Array(1 << 20);
        for (let i = 0; i < ta.length; i += 4096) ta[i] = i;
        const z = zlib.gzipSync(Buffer.concat(bufs.slice(0, 16)));
        const h = crypto.createHash("sha256");
        for (const b of bufs) h.update(b);
        console.log(m.size, ta[4096], z.length, zlib.gunzipSync(z).length, h.digest("hex"));
    '
}
if have node; then
    w_node_heavy > "$TMP/node50.want" 2>&1
    bad=0
    for i in $(seq 1 50); do
        LD_PRELOAD="$LIB" w_node_heavy > "$TMP/node50.out" 2>&1
        if ! cmp -s "$TMP/node50.want" "$TMP/node50.out"; then
            bad=$((bad + 1))
            [[ $bad -eq 1 ]] && head -n 5 "$TMP/node50.out" | sed 's/^/    node: /'
        fi
    done
    if ((bad == 0)); then
        echo "ok node 50 runs in a row, identical output"
    else
        echo "FAIL node: $bad of 50 runs differed from glibc's output"
        failed=1
    fi
fi

if ((present == 0)); then
    echo "skip: none of the programs is present"
    exit 77
fi

# memalloc must really have been the malloc of the preloaded runs: it prints
# its statistics at exit with MEMALLOC_STATS=1, and glibc's malloc cannot.
# (coreutils, gawk, grep and xz close stderr at exit, so their reports are
# lost: ask a program that does not.)
stats_prog=
for p in perl python3 sed; do
    if have "$p"; then stats_prog=$p; break; fi
done
if [[ -n $stats_prog ]]; then
    case $stats_prog in
        perl) cmd=(perl -e 'my @a = map { "x" x $_ } 1 .. 1000; print scalar(@a), "\n"') ;;
        python3) cmd=(python3 -c 'print(len([bytes(i) for i in range(1000)]))') ;;
        sed) cmd=(sed -n '$=' "$TMP/lines.txt") ;;
    esac
    "${cmd[@]}" > "$TMP/stats.want" 2>/dev/null
    LD_PRELOAD="$LIB" MEMALLOC_STATS=1 "${cmd[@]}" > "$TMP/stats.out" 2> "$TMP/stats.err"
    if grep -q "memalloc statistics" "$TMP/stats.err" && cmp -s "$TMP/stats.want" "$TMP/stats.out"; then
        echo "ok memalloc is the malloc of a preloaded $stats_prog"
    else
        echo "FAIL memalloc did not report statistics from a preloaded $stats_prog (was it loaded?)"
        head -n 5 "$TMP/stats.err" | sed 's/^/    /'
        failed=1
    fi
fi
echo "memalloc statistics seen at exit from: ${stats_seen[*]:-none}"
if ((${#stats_seen[@]} == 0)); then
    echo "FAIL no preloaded program printed memalloc statistics"
    failed=1
fi

exit $failed
