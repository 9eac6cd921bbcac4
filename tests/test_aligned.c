/*
 * test_aligned.c - aligned allocation: every power-of-two alignment from 1
 * to 4 MiB (1 MiB under valgrind, whose brk segment is small) for a spread
 * of sizes through aligned_alloc, memalign and posix_memalign, each result
 * aligned, usable, writable without touching its neighbours, resizable and
 * freeable; posix_memalign's EINVAL cases and *memptr left alone on every
 * error; aligned_alloc's EINVAL; memalign rounding a non-power-of-two up;
 * valloc and pvalloc; and a bound on the heap an aligned request consumes
 * (about size + alignment + one 64 KiB unit, never twice the alignment).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "memalloc.h"
#include "check.h"

static volatile size_t v_size_max = SIZE_MAX;

static int is_aligned(const void *p, size_t a) { return ((uintptr_t)p & (a - 1)) == 0; }

static unsigned char pat(size_t i, unsigned seed)
{
    return (unsigned char)(seed * 29u + i * 7u + (i >> 11) + 3u);
}

/* Writing every byte is slow under valgrind for megabyte blocks: touch the
 * first and last 4 KiB and one byte per 512 in between. */
static size_t next_idx(size_t i, size_t n)
{
    i++;
    if (i >= 4096 && i + 4096 < n) {
        size_t j = (i + 511) & ~(size_t)511;
        return j + 4096 >= n ? n - 4096 : j;
    }
    return i;
}

static void fill(void *p, size_t n, unsigned seed)
{
    unsigned char *c = p;
    for (size_t i = 0; i < n; i = next_idx(i, n))
        c[i] = pat(i, seed);
}

/* Check the first `keep` bytes of a block filled with fill(p, n, seed). */
static size_t verify_prefix(const void *p, size_t keep, size_t n, unsigned seed)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < keep && i < n; i = next_idx(i, n))
        if (c[i] != pat(i, seed))
            return i;
    return keep;
}

static size_t verify(const void *p, size_t n, unsigned seed)
{
    return verify_prefix(p, n, n, seed);
}

enum fn { F_ALIGNED_ALLOC, F_MEMALIGN, F_POSIX_MEMALIGN, F_COUNT };
static const char *const fn_name[F_COUNT] = {"aligned_alloc", "memalign", "posix_memalign"};

static void *alloc_with(enum fn f, size_t align, size_t n)
{
    switch (f) {
    case F_ALIGNED_ALLOC:
        return memalloc_aligned_alloc(align, n);
    case F_MEMALIGN:
        return memalloc_memalign(align, n);
    case F_POSIX_MEMALIGN: {
        void *p = NULL;
        int rc = memalloc_posix_memalign(&p, align, n);
        CHECK((rc == 0) == (p != NULL), "posix_memalign(%zu, %zu) rc %d but p %p", align, n, rc, p);
        return rc == 0 ? p : NULL;
    }
    default:
        return NULL;
    }
}

static void test_all_alignments(void)
{
    size_t max_align = UNDER_VALGRIND() ? 512 * KiB : 4 * MiB;
    static const size_t sizes[] = {0, 1, 8, 16, 24, 100, 1000, 4095, 4096, 4097, 20000,
                                   65536 - 64, 65536, 100000, 131072, 131073, 300000, 1048579};
    enum { NS = sizeof sizes / sizeof sizes[0] };
    for (size_t align = 1; align <= max_align; align <<= 1) {
        for (int f = 0; f < F_COUNT; f++) {
            if (f == F_POSIX_MEMALIGN && align < sizeof(void *))
                continue;
            void *held[NS];
            for (int i = 0; i < NS; i++) {
                size_t n = sizes[i];
                /* valgrind's brk segment is about 8 MiB: hold fewer, smaller
                 * blocks at alignments whose gaps eat address space */
                if (UNDER_VALGRIND() && align >= 128 * KiB && (i % 3 != 0 || n > 100000)) {
                    held[i] = NULL;
                    continue;
                }
                if (n == 0 && align >= 64 * KiB)
                    n = 1;          /* size 0 at these alignments: test_zero_size */
                void *p = alloc_with((enum fn)f, align, n);
                held[i] = p;
                CHECK(p != NULL, "%s(%zu, %zu) returned NULL", fn_name[f], align, n);
                if (!p)
                    continue;
                size_t need = align < 16 ? 16 : align;
                CHECK(is_aligned(p, need), "%s(%zu, %zu) = %p not aligned to %zu",
                      fn_name[f], align, n, p, need);
                size_t u = memalloc_malloc_usable_size(p);
                CHECK(u >= n, "%s(%zu, %zu): usable size %zu too small", fn_name[f], align, n, u);
                fill(p, n, (unsigned)(i + f * 40));
            }
            /* all held together: nothing overlapped */
            for (int i = 0; i < NS; i++) {
                if (!held[i])
                    continue;
                size_t n = memalloc_malloc_usable_size(held[i]);
                size_t want = sizes[i] < n ? sizes[i] : n;
                size_t bad = verify(held[i], want, (unsigned)(i + f * 40));
                CHECK(bad == want, "%s(%zu, %zu): byte %zu overwritten by a neighbour",
                      fn_name[f], align, sizes[i], bad);
            }
            /* free in a scrambled order */
            for (int i = 0; i < NS; i++)
                memalloc_free(held[(i * 7) % NS]);
        }
        if (align >= 64 * KiB)
            CHECK_HEAP("large alignments");
    }
    CHECK_HEAP("all alignments");
}

/* Aligned large blocks (header one unit below the pointer for alignments of
 * a unit or more) survive realloc in both directions. */
/* Size 0 with an alignment of a 64 KiB unit or more, then a block above it:
 * the result must still be a block of its own (freeable, with a usable size)
 * and must not be the start of its neighbour.  In a child, since a broken
 * allocator aborts. */
static void test_zero_size(void)
{
    size_t max_align = UNDER_VALGRIND() ? 1 * MiB : 4 * MiB;
    for (size_t align = 64 * KiB; align <= max_align; align <<= 1) {
        for (int f = 0; f < F_COUNT; f++) {
            fflush(stderr);
            pid_t pid = fork();
            if (pid < 0) {
                CHECK(0, "fork failed");
                return;
            }
            if (pid == 0) {
                void *p = alloc_with((enum fn)f, align, 0);
                if (!p || !is_aligned(p, align))
                    _exit(2);
                /* enough blocks that one of them lands right above p */
                enum { NQ = 12 };
                void *q[NQ];
                for (int i = 0; i < NQ; i++) {
                    q[i] = memalloc_malloc(UNDER_VALGRIND() ? 100 * KiB : 256 * KiB);
                    if (!q[i])
                        _exit(3);
                    memset(q[i], 0x11, 64);
                }
                (void)memalloc_malloc_usable_size(p);
                memalloc_free(p);
                for (int i = 0; i < NQ; i++)
                    memalloc_free(q[i]);
                _exit(memalloc_check() == 0 ? 0 : 4);
            }
            int st = wait_child(pid);
            CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0,
                  "%s(%zu, 0) followed by malloc(200K): child %s %d (0 expected)", fn_name[f], align,
                  CHILD_HOW(st));
        }
    }
}

static void test_aligned_realloc(void)
{
    static const size_t aligns[] = {8192, 64 * KiB, 128 * KiB, 1 * MiB};
    for (int i = 0; i < 4; i++) {
        size_t a = aligns[i];
        void *p = memalloc_aligned_alloc(a, 200 * KiB);
        CHECK(p && is_aligned(p, a), "aligned_alloc(%zu, 200K) = %p", a, p);
        if (!p)
            continue;
        void *pin = memalloc_malloc(1000);
        fill(p, 200 * KiB, 9);
        void *q = memalloc_realloc(p, 900 * KiB);
        CHECK(q != NULL, "realloc of an aligned block to 900K failed");
        if (q) {
            p = q;
            size_t bad = verify(p, 200 * KiB, 9);
            CHECK(bad == 200 * KiB, "realloc grow of an %zu-aligned block lost byte %zu", a, bad);
        }
        q = memalloc_realloc(p, 70 * KiB);
        CHECK(q != NULL, "realloc of an aligned block to 70K failed");
        if (q) {
            p = q;
            size_t bad = verify_prefix(p, 70 * KiB, 200 * KiB, 9);
            CHECK(bad == 70 * KiB, "realloc shrink of an %zu-aligned block lost byte %zu", a, bad);
        }
        memalloc_free(p);
        memalloc_free(pin);
    }
    CHECK_HEAP("aligned realloc");
}

static void test_posix_memalign_errors(void)
{
    static const size_t bad_aligns[] = {0, 1, 2, 3, 4, 5, 12, 24, 40, 48, 96, 4097, 3 * 4096,
                                        (SIZE_MAX >> 1) + 2, SIZE_MAX};
    void *sentinel = (void *)0xdead0;
    for (size_t i = 0; i < sizeof bad_aligns / sizeof bad_aligns[0]; i++) {
        void *p = sentinel;
        errno = 0;
        int rc = memalloc_posix_memalign(&p, bad_aligns[i], 100);
        CHECK(rc == EINVAL, "posix_memalign(align %zu) = %d, expected EINVAL", bad_aligns[i], rc);
        CHECK(p == sentinel, "posix_memalign(align %zu) changed *memptr to %p", bad_aligns[i], p);
        if (rc == 0 && p != sentinel)
            memalloc_free(p);
    }
    /* ENOMEM also leaves *memptr alone */
    size_t smax = v_size_max;
    static const size_t aligns[] = {8, 16, 64, 4096, 1 << 20, (size_t)1 << 40};
    for (size_t i = 0; i < sizeof aligns / sizeof aligns[0]; i++) {
        void *p = sentinel;
        int rc = memalloc_posix_memalign(&p, aligns[i], smax - 64);
        CHECK(rc == ENOMEM, "posix_memalign(%zu, SIZE_MAX - 64) = %d, expected ENOMEM", aligns[i], rc);
        CHECK(p == sentinel, "posix_memalign(%zu, SIZE_MAX - 64) changed *memptr", aligns[i]);
        p = sentinel;
        rc = memalloc_posix_memalign(&p, aligns[i], (size_t)PTRDIFF_MAX - aligns[i] / 2);
        CHECK(rc == ENOMEM, "posix_memalign(%zu, PTRDIFF_MAX - a/2) = %d, expected ENOMEM",
              aligns[i], rc);
        CHECK(p == sentinel, "posix_memalign(%zu, PTRDIFF_MAX - a/2) changed *memptr", aligns[i]);
    }
    /* size 0 with a good alignment works */
    void *z = NULL;
    CHECK(memalloc_posix_memalign(&z, 64, 0) == 0 && z != NULL, "posix_memalign(64, 0) failed");
    memalloc_free(z);
    CHECK_HEAP("posix_memalign errors");
}

static void test_aligned_alloc_errors(void)
{
    static const size_t bad[] = {0, 3, 24, 48, 100, 4097, 3 * 4096, (1 << 20) + 16};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        errno = 0;
        void *p = memalloc_aligned_alloc(bad[i], 64);
        int e = errno;
        CHECK(p == NULL, "aligned_alloc(%zu, 64) = %p, expected NULL", bad[i], p);
        CHECK(e == EINVAL, "aligned_alloc(%zu, 64): errno %d, expected EINVAL", bad[i], e);
        memalloc_free(p);
    }
}

static size_t next_pow2(size_t a)
{
    size_t r = 1;
    while (r < a)
        r <<= 1;
    return r;
}

static void test_memalign_rounding(void)
{
    static const size_t odd[] = {3, 17, 24, 48, 96, 100, 1000, 3 * 4096, 5000, 100000,
                                 3 * 64 * 1024, 1000000};
    for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) {
        size_t want = next_pow2(odd[i]);
        if (want < 16)
            want = 16;
        void *p = memalloc_memalign(odd[i], 50);
        CHECK(p != NULL, "memalign(%zu, 50) returned NULL", odd[i]);
        CHECK(p == NULL || is_aligned(p, want), "memalign(%zu, 50) = %p not rounded up to %zu",
              odd[i], p, want);
        if (p)
            memset(p, 1, 50);
        memalloc_free(p);
    }
    errno = 0;
    void *p = memalloc_memalign(SIZE_MAX, 10);
    CHECK(p == NULL && errno == EINVAL, "memalign(SIZE_MAX, 10) = %p, errno %d", p, errno);
    CHECK_HEAP("memalign rounding");
}

static void test_valloc_pvalloc(void)
{
    long page = (long)page_in_force();
    static const size_t sizes[] = {0, 1, 4095, 4096, 4097, 10000, 65536, 300000};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        void *v = memalloc_valloc(n);
        CHECK(v && is_aligned(v, (size_t)page), "valloc(%zu) = %p not page aligned", n, v);
        if (v) {
            CHECK(memalloc_malloc_usable_size(v) >= n, "valloc(%zu) too small", n);
            memset(v, 2, n);
        }
        void *pv = memalloc_pvalloc(n);
        size_t rounded = n == 0 ? (size_t)page : (n + (size_t)page - 1) / (size_t)page * (size_t)page;
        CHECK(pv && is_aligned(pv, (size_t)page), "pvalloc(%zu) = %p not page aligned", n, pv);
        if (pv) {
            size_t u = memalloc_malloc_usable_size(pv);
            CHECK(u >= rounded, "pvalloc(%zu): usable %zu < %zu (whole pages)", n, u, rounded);
            memset(pv, 3, u < rounded ? u : rounded);   /* a short block: no overrun */
        }
        memalloc_free(v);
        memalloc_free(pv);
    }
    CHECK_HEAP("valloc/pvalloc");
}

/* What an aligned request costs: the heap may grow by the request, the
 * alignment slack (at most alignment - unit, the rest given back or kept
 * as reusable free space) and one unit of rounding. */
static void test_waste_bound(void)
{
    size_t max_align = UNDER_VALGRIND() ? 1 * MiB : 4 * MiB;
    static const size_t sizes[] = {1, 5000, 100000, 1 * MiB};
    for (size_t a = 64 * KiB; a <= max_align; a <<= 1) {
        for (int i = 0; i < 4; i++) {
            size_t n = sizes[i];
            memalloc_malloc_trim(0);
            struct memalloc_stats s0 = stats();
            char *b0 = sbrk(0);
            void *p = memalloc_aligned_alloc(a, n);
            CHECK(p && is_aligned(p, a), "aligned_alloc(%zu, %zu) = %p", a, n, p);
            struct memalloc_stats s1 = stats();
            char *b1 = sbrk(0);
            size_t grew = s1.heap_bytes - s0.heap_bytes;
            size_t bound = n + a + 64 * KiB;
            CHECK(grew <= bound, "aligned_alloc(%zu, %zu) grew the heap by %zu > %zu",
                  a, n, grew, bound);
            CHECK(b1 - b0 <= (ptrdiff_t)(bound + 64 * KiB),
                  "aligned_alloc(%zu, %zu) moved the break by %td", a, n, b1 - b0);
            /* what the block itself holds is about n, not n + a */
            size_t held = s1.large_in_use - s0.large_in_use;
            CHECK(held <= n + 2 * 64 * KiB,
                  "aligned_alloc(%zu, %zu): the block holds %zu bytes", a, n, held);
            memalloc_free(p);
        }
    }
    /* Small aligned requests stay in the classes: 256 page-aligned 100-byte
     * blocks cost nowhere near 256 units. */
    memalloc_malloc_trim(0);
    struct memalloc_stats s0 = stats();
    void *held[256];
    for (int i = 0; i < 256; i++) {
        held[i] = memalloc_aligned_alloc(4096, 100);
        CHECK(held[i] && is_aligned(held[i], 4096), "aligned_alloc(4096, 100) = %p", held[i]);
    }
    struct memalloc_stats s1 = stats();
    size_t grew = s1.heap_bytes - s0.heap_bytes;
    CHECK(grew <= 256 * 4096 * 5 / 4 + 1 * MiB,
          "256 x aligned_alloc(4096, 100) grew the heap by %zu", grew);
    for (int i = 0; i < 256; i++)
        memalloc_free(held[i]);
    memalloc_malloc_trim(0);
    CHECK_HEAP("waste bound");
}

int main(void)
{
    test_waste_bound();
    test_all_alignments();
    test_zero_size();
    test_aligned_realloc();
    test_posix_memalign_errors();
    test_aligned_alloc_errors();
    test_memalign_rounding();
    test_valloc_pvalloc();
    CHECK_HEAP("end");
    return check_report("test_aligned");
}
