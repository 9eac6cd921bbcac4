#!/usr/bin/env python3
"""gen_corpus.py - writes the committed seed corpus for the fuzz targets:
corpus/ops/ (one input per op and regime, in the byte encoding that
fuzz_ops.c decodes) and corpus/threads/ (streams for fuzz_threads.c).
Deterministic; rerun after changing either decoder:
    python3 tests/fuzz/gen_corpus.py
"""
import os
import random
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))

# ---- fuzz_ops.c's encoding ---------------------------------------------------

MALLOC, CALLOC, REALLOC, REALLOCARRAY, POSIX_MEMALIGN, ALIGNED_ALLOC, MEMALIGN, \
    VALLOC, PVALLOC, FREE, USABLE, TRIM, FREE_RANGE, MALLOC2, FAIL_REALLOC, CHECK = range(16)

EXACT = [0, 1, 8, 15, 16, 17, 31, 32, 33, 127, 128, 129, 144, 145, 1023, 1024,
         4095, 4096, 4097, 8192, 32767, 32768, 32769, 65536, 114688, 131071,
         131072, 131073, 135168, 262144, 1 << 20, (1 << 20) + 1, 4 << 20]
NHUGE = 8           # huge_sizes[] entries
NHUGE_ALIGN = 7     # huge[] alignments
NBAD_ALIGN = 9      # bad[] alignments
REALLOCARRAY_COUNTS = [0, 1, 2, 3, 7, 16, 1 << 33, 'third', 'max']


def tiny(n):
    assert 0 <= n <= 64
    return [0, n]


def small(n):
    assert 1 <= n <= 4096
    v = n - 1
    return [1, v & 0xff, v >> 8]


def boundary(k, j, delta=0):
    """2^k + j * 2^(k-3) (k >= 7) or 16 * (1 + j) (k < 7), plus delta."""
    return [3, k - 4, j, delta + 1]


def large(e, extra=0, pages=False):
    """2^e + 1 + extra, e in 17..21."""
    return [5 | (0x80 if pages else 0), e - 17, extra & 0xff, (extra >> 8) & 0xff,
            (extra >> 16) & 0xff]


def exact(n):
    return [6, EXACT.index(n)]


def huge(i):
    return [7, i]


def align_pow2(k):
    assert 0 <= k <= 22
    return [k]


def align_bad(i):
    return [23, i]


def align_huge(i):
    return [27, i]


class Ops:
    """Builds one input and tracks which slots are live (op 14 reads its
    argument only for a live slot)."""

    def __init__(self):
        self.b = []
        self.live = set()

    def op(self, code, slot, *args, live=None):
        self.b += [code, slot]
        for a in args:
            self.b += a if isinstance(a, list) else [a]
        if live is True:
            self.live.add(slot)
        elif live is False:
            self.live.discard(slot)
        return self

    def malloc(self, slot, size):
        return self.op(MALLOC, slot, size, live=size[0] % 8 != 7)

    def calloc(self, slot, size, count=1):
        return self.op(CALLOC, slot, size, count, live=True)

    def realloc(self, slot, size, zero=False):
        return self.op(REALLOC, slot, size, 0 if zero else 1,
                       live=False if zero else None)

    def reallocarray(self, slot, count_idx, size):
        return self.op(REALLOCARRAY, slot, count_idx, size)

    def aligned(self, which, slot, align, size):
        return self.op(POSIX_MEMALIGN + which, slot, align, size, live=True)

    def free(self, slot):
        return self.op(FREE, slot, live=False)

    def usable(self, slot):
        return self.op(USABLE, slot)

    def trim(self, pad_idx):
        return self.op(TRIM, 0, pad_idx)

    def free_range(self, slot, length, step):
        for k in range(1 + length % 64):
            self.live.discard((slot + k * (1 + step % 4)) % 256)
        return self.op(FREE_RANGE, slot, length, step)

    def fail_realloc(self, slot, i):
        return self.op(FAIL_REALLOC, slot, *([i] if slot in self.live else []))

    def check(self):
        return self.op(CHECK, 0)

    def bytes(self):
        return bytes(self.b)


def ops_corpus():
    out = {}
    o = Ops()
    for s in range(8):
        o.malloc(s, tiny(s * 9))
    o.check()
    out['malloc-tiny'] = o

    o = Ops()
    slot = 0
    for k in range(4, 18):
        for j in range(8):
            for d in (-1, 0, 1):
                o.malloc(slot % 256, boundary(k, j, d))
                slot += 1
    o.check()
    out['malloc-class-boundaries'] = o

    o = Ops()
    for i, n in enumerate(EXACT):
        o.malloc(i, exact(n))
    o.usable(3).check()
    out['malloc-exact'] = o

    o = Ops()
    for i in range(NHUGE):
        o.malloc(i, huge(i))
    out['malloc-huge'] = o

    o = Ops()
    for e in range(17, 22):
        o.malloc(e, large(e, 12345 * e))
        o.malloc(e + 10, large(e, 0, pages=True))
    o.free(18).free(19).malloc(40, large(18)).check()
    out['large-mix'] = o

    o = Ops()
    for i in range(10):
        o.malloc(i, large(17 + i % 3, i * 4096))
    for i in (1, 3, 5, 2, 4):               # coalesce with both neighbours
        o.free(i)
    o.malloc(20, large(19)).check().free_range(0, 9, 0).check()
    out['large-coalesce'] = o

    o = Ops()
    o.malloc(0, small(4000)).free(0).calloc(0, small(4000))
    o.malloc(1, large(20)).free(1).calloc(1, large(20))
    o.calloc(2, tiny(0), 0).calloc(3, small(100), 8).calloc(4, exact(131072), 1)
    out['calloc-reuse'] = o

    # More big blocks than one input may hold: the budget turns the rest
    # into small ones.
    o = Ops()
    for i in range(20):
        o.malloc(i, large(21, 0x3fffff))
    o.calloc(20, large(21), 1).realloc(21, large(21, 0x3fffff)).check()
    out['large-budget'] = o

    o = Ops()
    o.calloc(0, huge(0), 240).calloc(1, small(16), 241).calloc(2, exact(4096), 243)
    o.calloc(3, huge(7), 2)
    out['calloc-overflow'] = o

    o = Ops()
    o.malloc(0, tiny(10))
    for s in (small(100), small(4000), boundary(16, 3), large(17), large(20, 777),
              large(19), small(30), tiny(1)):
        o.realloc(0, s)
    o.usable(0).realloc(0, small(5), zero=True)
    out['realloc-chain'] = o

    o = Ops()
    o.realloc(5, small(64))                 # realloc(NULL, n)
    o.malloc(6, large(18)).realloc(6, large(18, 100)).realloc(6, large(17))
    o.realloc(6, large(21)).check()
    out['realloc-large-in-place'] = o

    o = Ops()
    o.malloc(0, small(300)).malloc(1, large(19))
    for i in range(NHUGE):
        o.fail_realloc(0, i).fail_realloc(1, i)
    o.check()
    out['realloc-impossible'] = o

    o = Ops()
    o.malloc(0, small(100))
    for i in range(len(REALLOCARRAY_COUNTS)):
        o.reallocarray(0, i, small(50 + i))
        o.live.add(0)
        if i == 0:
            o.live.discard(0)
    o.reallocarray(1, 2, small(10))
    out['reallocarray'] = o

    names = ['posix_memalign', 'aligned_alloc', 'memalign']
    for which, name in enumerate(names):
        o = Ops()
        for k in range(23):
            o.aligned(which, k, align_pow2(k), small(1 + 37 * k))
        for k in range(0, 23, 4):
            o.aligned(which, 30 + k, align_pow2(k), large(17 + k % 5))
        o.check()
        out[name + '-pow2'] = o
        o = Ops()
        for i in range(NBAD_ALIGN):
            o.aligned(which, i, align_bad(i), small(64))
        for i in range(NHUGE_ALIGN):
            o.aligned(which, 20 + i, align_huge(i), small(64))
        o.aligned(which, 40, align_pow2(12), huge(3))
        o.check()
        out[name + '-bad'] = o

    o = Ops()
    for i, s in enumerate([tiny(0), tiny(1), small(4095), small(4096), exact(4097),
                           large(18), huge(2)]):
        o.aligned(3, i, align_pow2(0), s)   # the alignment byte is read, unused
        o.aligned(4, 10 + i, align_pow2(0), s)
    o.check()
    out['valloc-pvalloc'] = o

    o = Ops()
    for i in range(40):
        o.malloc(i, large(17, i * 5000) if i % 4 == 0 else small(i * 90 + 1))
    o.free_range(0, 39, 0)
    for p in range(9):
        o.trim(p)
    o.malloc(0, small(10)).trim(0)
    out['trim'] = o

    o = Ops()
    for i in range(200):
        o.malloc(i, small(1 + (i * 131) % 4096))
    o.free_range(0, 63, 1).free_range(100, 63, 3).check().trim(0)
    out['free-range'] = o

    o = Ops()
    o.free(3).usable(3).realloc(3, tiny(0)).usable(3).free(3)
    out['empty-slots'] = o

    # Purge fodder: many blocks of one class, most freed, then reused.
    o = Ops()
    for i in range(250):
        o.malloc(i, boundary(12, 0))
    for i in range(250):
        if i % 16:
            o.free(i)
    o.check()
    for i in range(250):
        if i % 16:
            o.calloc(i, boundary(12, 0))
    o.check()
    out['purge-sparse-chunk'] = o

    res = {k: v.bytes() for k, v in out.items()}
    rng = random.Random(1)
    for i in range(8):
        res['random-%d' % i] = bytes(rng.randrange(256) for _ in range(rng.choice([16, 64, 256, 1024])))
    return res


# ---- fuzz_threads.c's encoding: per-thread (op, x, y), dealt round-robin -------------

def interleave(streams):
    n = max(len(s) for s in streams)
    out = []
    for i in range(n):
        for s in streams:
            out.append(s[i] if i < len(s) else 0)
    return bytes(out)


def threads_corpus():
    res = {}
    rng = random.Random(2)

    def stream(weights, n):
        s = []
        for _ in range(n):
            op = rng.choices(range(8), weights)[0] | (rng.randrange(32) << 3)
            s += [op, rng.randrange(256), rng.randrange(256)]
        return s

    mixes = {
        'balanced': [2, 2, 1, 2, 1, 2, 2, 1],
        'handoff-heavy': [2, 1, 1, 0, 0, 5, 5, 1],
        'alloc-free': [4, 4, 0, 4, 0, 1, 1, 0],
        'realloc-heavy': [2, 0, 1, 1, 5, 2, 2, 0],
        'calloc-check': [1, 0, 4, 2, 1, 2, 1, 2],
    }
    for name, w in mixes.items():
        for n in (20, 120):
            res['%s-%d' % (name, n)] = interleave([stream(w, n) for _ in range(4)])
    for i in range(4):
        res['random-%d' % i] = bytes(rng.randrange(256) for _ in range(rng.choice([64, 512, 2048])))
    return res


def write(sub, files):
    d = os.path.join(HERE, 'corpus', sub)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for name, data in files.items():
        with open(os.path.join(d, name), 'wb') as f:
            f.write(data)


if __name__ == '__main__':
    write('ops', ops_corpus())
    write('threads', threads_corpus())
