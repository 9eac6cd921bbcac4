/*
 * test_api.c - conformance of every prefixed entry point with glibc's
 * semantics: malloc(0), 16-byte alignment of every result, realloc keeping
 * contents across small/large transitions and staying in place when the
 * block still fits, calloc zeroing reused, dirtied and re-grown memory,
 * free preserving errno, sizes above PTRDIFF_MAX and overflowing products
 * failing with ENOMEM (and leaving the old block intact), padding overflow
 * in huge aligned requests, mallopt/malloc_trim/mallinfo/mallinfo2/
 * malloc_stats.  memalloc_check() must report 0 after every phase.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "memalloc.h"
#include "check.h"

/* Sizes the compiler cannot see through, so it neither warns nor folds. */
static volatile size_t v_size_max = SIZE_MAX;
static volatile size_t v_ptrdiff_max = PTRDIFF_MAX;

static unsigned char pat(size_t i, unsigned seed)
{
    return (unsigned char)(seed * 37u + i * 131u + (i >> 9) + 1u);
}

static void fill(void *p, size_t n, unsigned seed)
{
    unsigned char *c = p;
    for (size_t i = 0; i < n; i++)
        c[i] = pat(i, seed);
}

/* Index of the first byte that does not match the pattern, or n. */
static size_t verify(const void *p, size_t n, unsigned seed)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++)
        if (c[i] != pat(i, seed))
            return i;
    return n;
}

static size_t first_nonzero(const void *p, size_t n)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++)
        if (c[i])
            return i;
    return n;
}

static int aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

/* ---- malloc(0), alignment, usable size ------------------------------------ */

static void test_malloc_zero(void)
{
    enum { N = 64 };
    void *p[N];
    for (int i = 0; i < N; i++) {
        p[i] = memalloc_malloc(0);
        CHECK(p[i] != NULL, "malloc(0) returned NULL");
        CHECK(aligned16(p[i]), "malloc(0) = %p not 16-byte aligned", p[i]);
        for (int j = 0; j < i; j++)
            CHECK(p[i] != p[j], "malloc(0) returned %p twice", p[i]);
    }
    for (int i = 0; i < N; i++)
        memalloc_free(p[i]);

    void *r = memalloc_realloc(NULL, 0);
    CHECK(r != NULL, "realloc(NULL, 0) returned NULL (glibc returns a block)");
    memalloc_free(r);
    void *c = memalloc_calloc(0, 0);
    CHECK(c != NULL, "calloc(0, 0) returned NULL");
    memalloc_free(c);
    CHECK_HEAP("malloc(0)");
}

static void check_block(void *p, size_t n, const char *what)
{
    CHECK(p != NULL, "%s(%zu) returned NULL", what, n);
    if (!p)
        return;
    CHECK(aligned16(p), "%s(%zu) = %p is not 16-byte aligned", what, n, p);
    size_t u = memalloc_malloc_usable_size(p);
    CHECK(u >= n, "%s(%zu): malloc_usable_size = %zu < requested", what, n, u);
}

static void test_alignment_and_usable(void)
{
    CHECK(memalloc_malloc_usable_size(NULL) == 0, "malloc_usable_size(NULL) != 0");

    /* Every size from 1 to 5000, a ring of live blocks so neighbours exist. */
    enum { RING = 64 };
    void *ring[RING] = {0};
    size_t ring_n[RING] = {0};
    for (size_t n = 1; n <= 5000; n++) {
        size_t k = n % RING;
        if (ring[k]) {
            size_t bad = verify(ring[k], ring_n[k], (unsigned)ring_n[k]);
            CHECK(bad == ring_n[k], "block of %zu bytes corrupted at %zu", ring_n[k], bad);
            memalloc_free(ring[k]);
        }
        void *p = memalloc_malloc(n);
        check_block(p, n, "malloc");
        if (p)
            fill(p, n, (unsigned)n);
        ring[k] = p;
        ring_n[k] = n;
    }
    for (int k = 0; k < RING; k++) {
        if (ring[k]) {
            size_t bad = verify(ring[k], ring_n[k], (unsigned)ring_n[k]);
            CHECK(bad == ring_n[k], "block of %zu bytes corrupted at %zu", ring_n[k], bad);
        }
        memalloc_free(ring[k]);
    }

    /* Odd sizes around every power of two up to 1 MiB and a bit beyond. */
    for (size_t pw = 16; pw <= 2 * MiB; pw <<= 1) {
        size_t sizes[] = {pw - 17, pw - 1, pw, pw + 1, pw + 15, pw + 17, pw / 2 * 3 + 7};
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            size_t n = sizes[i];
            if (n > 1 * MiB + 100 * KiB)
                continue;
            void *p = memalloc_malloc(n);
            check_block(p, n, "malloc");
            void *c = memalloc_calloc(1, n);
            check_block(c, n, "calloc");
            if (p) {
                /* usable size means usable: write to all of it */
                size_t u = memalloc_malloc_usable_size(p);
                memset(p, 0x5c, u);
            }
            if (c) {
                size_t z = first_nonzero(c, n);
                CHECK(z == n, "calloc(1, %zu) byte %zu not zero", n, z);
            }
            memalloc_free(p);
            memalloc_free(c);
        }
        memalloc_malloc_trim(0);    /* spare chunks of big classes add up */
    }
    CHECK_HEAP("alignment sweep");
}

/* ---- realloc ---------------------------------------------------------------- */

/* Resize p (holding n bytes of pattern `seed`) to m and check the common
 * prefix survived. */
static void *resize_check(void *p, size_t n, size_t m, unsigned seed, const char *what)
{
    void *q = memalloc_realloc(p, m);
    CHECK(q != NULL, "realloc %s %zu -> %zu returned NULL", what, n, m);
    if (!q)
        return p;
    CHECK(aligned16(q), "realloc %s %zu -> %zu gave misaligned %p", what, n, m, q);
    CHECK(memalloc_malloc_usable_size(q) >= m, "realloc %s: usable size < %zu", what, m);
    size_t keep = n < m ? n : m;
    size_t bad = verify(q, keep, seed);
    CHECK(bad == keep, "realloc %s %zu -> %zu lost contents at byte %zu", what, n, m, bad);
    fill(q, m, seed);
    return q;
}

static void test_realloc_contents(void)
{
    unsigned seed = 7;
    void *p = memalloc_malloc(100);
    CHECK(p != NULL, "malloc(100)");
    if (!p)
        return;
    fill(p, 100, seed);
    p = resize_check(p, 100, 1000, seed, "small->small grow");
    p = resize_check(p, 1000, 40, seed, "small->small shrink");
    p = resize_check(p, 40, 3000, seed, "small->small grow");
    p = resize_check(p, 3000, 300 * KiB, seed, "small->large");
    p = resize_check(p, 300 * KiB, 1500 * KiB, seed, "large->large grow");
    p = resize_check(p, 1500 * KiB, 200 * KiB, seed, "large->large shrink");
    p = resize_check(p, 200 * KiB, 100, seed, "large->small");
    p = resize_check(p, 100, 130 * KiB, seed, "small->large (just above 128 KiB)");
    p = resize_check(p, 130 * KiB, 128 * KiB, seed, "large->128 KiB");
    memalloc_free(p);
    CHECK_HEAP("realloc chain");

    /* Large grow when the block is pinned from above: must move or use the
     * free space above, never overwrite the pin. */
    seed = 11;
    void *a = memalloc_malloc(256 * KiB);
    void *pin = memalloc_malloc(200 * KiB);
    CHECK(a && pin, "malloc for pinned realloc");
    if (a && pin) {
        fill(a, 256 * KiB, seed);
        fill(pin, 200 * KiB, 99);
        a = resize_check(a, 256 * KiB, 900 * KiB, seed, "large pinned grow");
        size_t bad = verify(pin, 200 * KiB, 99);
        CHECK(bad == 200 * KiB, "realloc of a neighbour corrupted the pin at %zu", bad);
        /* free the pin so a's successor (if it is above) is free space, then
         * grow a again into it */
        void *b = memalloc_malloc(300 * KiB);
        CHECK(b != NULL, "malloc(300K)");
        memalloc_free(b);
        a = resize_check(a, 900 * KiB, 1200 * KiB, seed, "large grow into free neighbour");
        a = resize_check(a, 1200 * KiB, 64 * KiB, seed, "large shrink to one unit");
        bad = verify(pin, 200 * KiB, 99);
        CHECK(bad == 200 * KiB, "pin corrupted at %zu", bad);
    }
    memalloc_free(a);
    memalloc_free(pin);
    CHECK_HEAP("pinned realloc");

    /* realloc(NULL, n) behaves like malloc. */
    void *m = memalloc_realloc(NULL, 333);
    check_block(m, 333, "realloc(NULL)");
    memalloc_free(m);
    m = memalloc_realloc(NULL, 333 * KiB);
    check_block(m, 333 * KiB, "realloc(NULL)");
    memalloc_free(m);

    /* realloc(p, 0) frees and returns NULL. */
    struct memalloc_stats s0 = stats();
    void *big = memalloc_malloc(500 * KiB);
    CHECK(big != NULL, "malloc(500K)");
    struct memalloc_stats s1 = stats();
    CHECK(s1.large_blocks == s0.large_blocks + 1, "large_blocks did not count a new block");
    void *r = memalloc_realloc(big, 0);
    CHECK(r == NULL, "realloc(large, 0) returned %p, not NULL", r);
    struct memalloc_stats s2 = stats();
    CHECK(s2.large_blocks == s0.large_blocks, "realloc(p, 0) did not free the large block");
    CHECK(s2.large_in_use == s0.large_in_use, "realloc(p, 0): large_in_use %zu != %zu",
          s2.large_in_use, s0.large_in_use);
    void *sm = memalloc_malloc(48);
    CHECK(sm != NULL, "malloc(48)");
    r = memalloc_realloc(sm, 0);
    CHECK(r == NULL, "realloc(small, 0) returned %p, not NULL", r);
    CHECK_HEAP("realloc(p, 0)");

    /* A size that still fits keeps the block where it is. */
    static const size_t sizes[] = {1, 16, 17, 100, 1000, 4000, 70000, 131072,
                                   131073, 200000, 1000000};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        void *q = memalloc_malloc(n);
        CHECK(q != NULL, "malloc(%zu)", n);
        if (!q)
            continue;
        fill(q, n, 3);
        size_t u = memalloc_malloc_usable_size(q);
        void *q2 = memalloc_realloc(q, u);
        CHECK(q2 == q, "realloc(p, usable=%zu) of a %zu-byte block moved it", u, n);
        if (q2 != q && q2)
            q = q2;
        void *q3 = memalloc_realloc(q, n);
        CHECK(q3 == q, "realloc(p, %zu) back to the original size moved it", n);
        if (q3)
            q = q3;
        size_t bad = verify(q, n, 3);
        CHECK(bad == n, "in-place realloc of %zu bytes lost byte %zu", n, bad);
        memalloc_free(q);
    }
    CHECK_HEAP("realloc in place");
}

/* ---- calloc ----------------------------------------------------------------- */

static void test_calloc(void)
{
    /* Reuse of a dirtied small block, for many classes. */
    for (size_t n = 8; n <= 128 * KiB; n = n * 5 / 4 + 8) {
        void *blocks[8];
        for (int i = 0; i < 8; i++) {
            blocks[i] = memalloc_malloc(n);
            CHECK(blocks[i] != NULL, "malloc(%zu)", n);
            if (blocks[i])
                memset(blocks[i], 0xa5, memalloc_malloc_usable_size(blocks[i]));
        }
        for (int i = 0; i < 8; i++)
            memalloc_free(blocks[i]);
        for (int i = 0; i < 8; i++) {
            blocks[i] = memalloc_calloc(1, n);
            CHECK(blocks[i] != NULL, "calloc(1, %zu)", n);
            if (blocks[i]) {
                size_t z = first_nonzero(blocks[i], n);
                CHECK(z == n, "calloc(1, %zu) reusing a dirty block: byte %zu not zero", n, z);
                memset(blocks[i], 0x5a, n);
            }
        }
        for (int i = 0; i < 8; i++)
            memalloc_free(blocks[i]);
        memalloc_malloc_trim(0);    /* no spare chunk per class piles up */
    }
    CHECK_HEAP("calloc small reuse");

    /* A dirtied large block freed in the middle (pinned), reused by calloc
     * as a large block and then as fresh chunks of classes carved from it. */
    void *big = memalloc_malloc(1 * MiB);
    void *pin = memalloc_malloc(200 * KiB);
    CHECK(big && pin, "malloc for dirty middle span");
    if (big && pin) {
        memset(big, 0xee, 1 * MiB);
        memalloc_free(big);
        void *c = memalloc_calloc(1000, 1000);
        CHECK(c != NULL, "calloc(1000, 1000)");
        if (c) {
            size_t z = first_nonzero(c, 1000 * 1000);
            CHECK(z == 1000 * 1000, "calloc over a freed dirty large block: byte %zu not zero", z);
            memset(c, 0xdd, 1000 * 1000);
            memalloc_free(c);
        }
        /* Chunks of classes not used so far in this program come out of the
         * dirty free space. */
        static const size_t odd[] = {7000, 9000, 11000, 13000, 18000, 22000,
                                     27000, 36000, 45000, 52000, 60000};
        void *held[sizeof odd / sizeof odd[0]][3];
        for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++)
            for (int k = 0; k < 3; k++) {
                held[i][k] = memalloc_calloc(odd[i], 1);
                CHECK(held[i][k] != NULL, "calloc(%zu, 1)", odd[i]);
                if (held[i][k]) {
                    size_t z = first_nonzero(held[i][k], odd[i]);
                    CHECK(z == odd[i], "calloc(%zu) in a chunk carved from dirty space: "
                          "byte %zu not zero", odd[i], z);
                }
            }
        for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++)
            for (int k = 0; k < 3; k++)
                memalloc_free(held[i][k]);
    }
    memalloc_free(pin);
    CHECK_HEAP("calloc over dirty middle span");

    /* The heap shrinks and grows again: the regrown memory must read zero.
     * Pinning the trim threshold turns off the space kept after big frees,
     * so each free below really shrinks the heap. */
    memalloc_mallopt(M_TRIM_THRESHOLD, 128 << 10);
    memalloc_malloc_trim(0);
    for (int round = 0; round < 3; round++) {
        size_t n = (size_t)(2 - round % 2) * MiB + (size_t)round * 4096 + 48;
        void *d = memalloc_malloc(n);
        CHECK(d != NULL, "malloc(%zu)", n);
        if (!d)
            break;
        memset(d, 0xc3, n);
        char *brk_held = sbrk(0);
        memalloc_free(d);
        char *brk_freed = sbrk(0);
        CHECK(brk_freed < brk_held, "freeing a %zu-byte top block did not shrink the break", n);
        void *z = memalloc_calloc(n, 1);
        CHECK(z != NULL, "calloc(%zu, 1) after a shrink", n);
        if (z) {
            size_t bad = first_nonzero(z, n);
            CHECK(bad == n, "calloc after the heap shrank and regrew: byte %zu not zero", bad);
        }
        /* small blocks carved from regrown memory */
        memalloc_free(z);
        void *sm[16];
        for (int i = 0; i < 16; i++) {
            sm[i] = memalloc_calloc(1, 12000 + 16 * (size_t)round);
            if (sm[i]) {
                size_t bad = first_nonzero(sm[i], 12000);
                CHECK(bad == 12000, "small calloc after regrowth: byte %zu not zero", bad);
                memset(sm[i], 0xb7, 12000);
            } else {
                CHECK(0, "calloc(1, 12000)");
            }
        }
        for (int i = 0; i < 16; i++)
            memalloc_free(sm[i]);
        memalloc_malloc_trim(0);
    }
    CHECK_HEAP("calloc after regrowth");

    /* M_PERTURB junk-fills what malloc hands out (glibc: byte ^ 0xff), but
     * calloc must still return zeros.  Sizes above the thread-cache limit
     * (32 KiB), since, as in glibc, cache hits are not junk-filled. */
    CHECK(memalloc_mallopt(M_PERTURB, 0x3c) == 1, "mallopt(M_PERTURB) refused");
    static const size_t psz[] = {40000, 300 * 1024};
    for (int k = 0; k < 2; k++) {
        size_t n = psz[k];
        void *pj = memalloc_malloc(n);
        CHECK(pj != NULL, "malloc(%zu)", n);
        if (pj) {
            const unsigned char *b = pj;
            size_t i = 0;
            while (i < n && b[i] == (0x3c ^ 0xff))
                i++;
            CHECK(i == n, "M_PERTURB 0x3c: malloc(%zu) byte %zu is 0x%02x, not 0x%02x", n, i,
                  i < n ? b[i] : 0, 0x3c ^ 0xff);
            memalloc_free(pj);
        }
        void *cj = memalloc_calloc(n, 1);
        CHECK(cj != NULL, "calloc(%zu, 1)", n);
        if (cj) {
            size_t z = first_nonzero(cj, n);
            CHECK(z == n, "calloc(%zu) with M_PERTURB: byte %zu not zero", n, z);
            memalloc_free(cj);
        }
    }
    long restore = 0;
    const char *env = getenv("MALLOC_PERTURB_");
    if (env) {
        char *end;
        long v = strtol(env, &end, 10);
        if (*end == '\0' && v >= 0 && v <= 255)
            restore = v;
    }
    memalloc_mallopt(M_PERTURB, (int)restore);
    CHECK_HEAP("calloc + perturb");
}

/* ---- errno, huge sizes, overflow --------------------------------------------- */

static void test_free_errno(void)
{
    void *a = memalloc_malloc(40);
    void *b = memalloc_malloc(600 * KiB);
    CHECK(a && b, "malloc for errno test");
    errno = EILSEQ;
    memalloc_free(a);
    CHECK(errno == EILSEQ, "free(small) changed errno to %d", errno);
    errno = EDOM;
    memalloc_free(b);               /* on top: gives memory back */
    CHECK(errno == EDOM, "free(large) changed errno to %d", errno);
    errno = ERANGE;
    memalloc_free(NULL);
    CHECK(errno == ERANGE, "free(NULL) changed errno to %d", errno);
    CHECK_HEAP("free errno");
}

#define EXPECT_ENOMEM(expr, what)                                             \
    do {                                                                      \
        errno = 0;                                                            \
        void *r_ = (expr);                                                    \
        int e_ = errno;                                                       \
        CHECK(r_ == NULL, "%s returned %p, expected NULL", what, r_);         \
        CHECK(e_ == ENOMEM, "%s: errno %d, expected ENOMEM", what, e_);       \
        if (r_)                                                               \
            memalloc_free(r_);                                                \
    } while (0)

static void test_huge(void)
{
    size_t smax = v_size_max, pmax = v_ptrdiff_max;

    EXPECT_ENOMEM(memalloc_malloc(pmax + 1), "malloc(PTRDIFF_MAX + 1)");
    EXPECT_ENOMEM(memalloc_malloc(smax), "malloc(SIZE_MAX)");
    EXPECT_ENOMEM(memalloc_malloc(smax - 4095), "malloc(SIZE_MAX - 4095)");
    EXPECT_ENOMEM(memalloc_malloc(pmax), "malloc(PTRDIFF_MAX)");
    EXPECT_ENOMEM(memalloc_malloc(pmax - 100), "malloc(PTRDIFF_MAX - 100)");
    EXPECT_ENOMEM(memalloc_malloc(pmax / 2), "malloc(PTRDIFF_MAX / 2)");
    EXPECT_ENOMEM(memalloc_calloc(1, pmax + 1), "calloc(1, PTRDIFF_MAX + 1)");
    EXPECT_ENOMEM(memalloc_calloc(smax, 1), "calloc(SIZE_MAX, 1)");
    EXPECT_ENOMEM(memalloc_memalign(64, smax), "memalign(64, SIZE_MAX)");
    EXPECT_ENOMEM(memalloc_memalign(16, pmax + 1), "memalign(16, PTRDIFF_MAX + 1)");
    EXPECT_ENOMEM(memalloc_memalign(4096, pmax + 1), "memalign(4096, PTRDIFF_MAX + 1)");
    EXPECT_ENOMEM(memalloc_memalign(1 << 20, pmax + 1), "memalign(1 MiB, PTRDIFF_MAX + 1)");
    EXPECT_ENOMEM(memalloc_pvalloc(smax), "pvalloc(SIZE_MAX)");
    EXPECT_ENOMEM(memalloc_pvalloc(pmax + 1), "pvalloc(PTRDIFF_MAX + 1)");
    EXPECT_ENOMEM(memalloc_pvalloc(pmax - 100), "pvalloc(PTRDIFF_MAX - 100)");
    EXPECT_ENOMEM(memalloc_pvalloc(smax - 100), "pvalloc(SIZE_MAX - 100)");
    EXPECT_ENOMEM(memalloc_valloc(smax), "valloc(SIZE_MAX)");
    EXPECT_ENOMEM(memalloc_valloc(pmax + 1), "valloc(PTRDIFF_MAX + 1)");
    EXPECT_ENOMEM(memalloc_aligned_alloc(64, smax), "aligned_alloc(64, SIZE_MAX)");

    /* Padding overflow: the size fits, size + alignment does not. */
    EXPECT_ENOMEM(memalloc_aligned_alloc(1 << 20, smax - 100), "aligned_alloc(1 MiB, SIZE_MAX - 100)");
    EXPECT_ENOMEM(memalloc_aligned_alloc(1 << 20, pmax - 100), "aligned_alloc(1 MiB, PTRDIFF_MAX - 100)");
    EXPECT_ENOMEM(memalloc_aligned_alloc(1 << 20, pmax - (1 << 20) + 1),
                  "aligned_alloc(1 MiB, PTRDIFF_MAX - 1 MiB + 1)");
    EXPECT_ENOMEM(memalloc_aligned_alloc(64 * KiB, pmax - 1000), "aligned_alloc(64 KiB, PTRDIFF_MAX - 1000)");
    EXPECT_ENOMEM(memalloc_aligned_alloc(8192, pmax - 100), "aligned_alloc(8192, PTRDIFF_MAX - 100)");
    EXPECT_ENOMEM(memalloc_aligned_alloc(256, pmax - 10), "aligned_alloc(256, PTRDIFF_MAX - 10)");
    EXPECT_ENOMEM(memalloc_memalign((size_t)1 << 40, 1), "memalign(2^40, 1)");
    EXPECT_ENOMEM(memalloc_memalign((size_t)1 << 40, pmax - 100), "memalign(2^40, PTRDIFF_MAX - 100)");
    EXPECT_ENOMEM(memalloc_aligned_alloc((size_t)1 << 62, 1), "aligned_alloc(2^62, 1)");
    EXPECT_ENOMEM(memalloc_valloc(pmax - 100), "valloc(PTRDIFF_MAX - 100)");
    {
        void *sentinel = (void *)0x1230;
        void *mp = sentinel;
        int rc = memalloc_posix_memalign(&mp, 1 << 20, smax - 100);
        CHECK(rc == ENOMEM, "posix_memalign(1 MiB, SIZE_MAX - 100) = %d, expected ENOMEM", rc);
        CHECK(mp == sentinel, "posix_memalign failure changed *memptr");
        rc = memalloc_posix_memalign(&mp, 1 << 20, pmax - 100);
        CHECK(rc == ENOMEM, "posix_memalign(1 MiB, PTRDIFF_MAX - 100) = %d, expected ENOMEM", rc);
        CHECK(mp == sentinel, "posix_memalign failure changed *memptr");
        rc = memalloc_posix_memalign(&mp, 16, smax);
        CHECK(rc == ENOMEM, "posix_memalign(16, SIZE_MAX) = %d, expected ENOMEM", rc);
        CHECK(mp == sentinel, "posix_memalign failure changed *memptr");
    }
    CHECK_HEAP("huge requests");

    /* realloc to an impossible size leaves the block alone, small and large. */
    static const size_t olds[] = {100, 300 * KiB};
    for (int i = 0; i < 2; i++) {
        size_t n = olds[i];
        void *p = memalloc_malloc(n);
        CHECK(p != NULL, "malloc(%zu)", n);
        if (!p)
            continue;
        fill(p, n, 21);
        size_t u = memalloc_malloc_usable_size(p);
        EXPECT_ENOMEM(memalloc_realloc(p, pmax + 1), "realloc(p, PTRDIFF_MAX + 1)");
        EXPECT_ENOMEM(memalloc_realloc(p, smax), "realloc(p, SIZE_MAX)");
        EXPECT_ENOMEM(memalloc_realloc(p, pmax - 100), "realloc(p, PTRDIFF_MAX - 100)");
        EXPECT_ENOMEM(memalloc_realloc(p, smax - 100), "realloc(p, SIZE_MAX - 100)");
        CHECK(memalloc_malloc_usable_size(p) == u, "failed realloc changed the usable size");
        size_t bad = verify(p, n, 21);
        CHECK(bad == n, "failed realloc of %zu bytes corrupted byte %zu", n, bad);
        memalloc_free(p);
    }
    CHECK_HEAP("failed realloc");
}

static void test_overflow(void)
{
    size_t smax = v_size_max;
    size_t half = smax / 2 + 1;
    size_t big32 = (size_t)1 << 32;

    EXPECT_ENOMEM(memalloc_calloc(half, 2), "calloc(SIZE_MAX/2+1, 2)");
    EXPECT_ENOMEM(memalloc_calloc(2, half), "calloc(2, SIZE_MAX/2+1)");
    EXPECT_ENOMEM(memalloc_calloc(big32, big32), "calloc(2^32, 2^32)");
    EXPECT_ENOMEM(memalloc_calloc(smax, smax), "calloc(SIZE_MAX, SIZE_MAX)");
    EXPECT_ENOMEM(memalloc_calloc(big32 + 1, big32 - 1), "calloc(2^32+1, 2^32-1)");
    /* no overflow, but too big */
    EXPECT_ENOMEM(memalloc_calloc(big32, big32 / 2), "calloc(2^32, 2^31)");

    static const size_t olds[] = {64, 400 * KiB};
    for (int i = 0; i < 2; i++) {
        size_t n = olds[i];
        void *p = memalloc_malloc(n);
        CHECK(p != NULL, "malloc(%zu)", n);
        if (!p)
            continue;
        fill(p, n, 5);
        EXPECT_ENOMEM(memalloc_reallocarray(p, big32, big32), "reallocarray(p, 2^32, 2^32)");
        EXPECT_ENOMEM(memalloc_reallocarray(p, half, 2), "reallocarray(p, SIZE_MAX/2+1, 2)");
        EXPECT_ENOMEM(memalloc_reallocarray(p, 3, smax / 3 + 1), "reallocarray(p, 3, SIZE_MAX/3+1)");
        size_t bad = verify(p, n, 5);
        CHECK(bad == n, "failed reallocarray corrupted byte %zu of %zu", bad, n);
        /* and a working one keeps the contents */
        void *q = memalloc_reallocarray(p, 2, n);
        CHECK(q != NULL, "reallocarray(p, 2, %zu) failed", n);
        if (q) {
            p = q;
            bad = verify(p, n, 5);
            CHECK(bad == n, "reallocarray(p, 2, %zu) lost byte %zu", n, bad);
            CHECK(memalloc_malloc_usable_size(p) >= 2 * n, "reallocarray result too small");
        }
        memalloc_free(p);
    }
    void *ra = memalloc_reallocarray(NULL, 7, 9);
    check_block(ra, 63, "reallocarray(NULL, 7, 9)");
    memalloc_free(ra);
    CHECK_HEAP("overflow");
}

/* ---- the aligned entry points, briefly (test_aligned.c goes deep) ----------- */

static void test_aligned_entry_points(void)
{
    void *mp = NULL;
    CHECK(memalloc_posix_memalign(&mp, 64, 100) == 0, "posix_memalign(64, 100)");
    CHECK(mp && ((uintptr_t)mp & 63) == 0, "posix_memalign(64) = %p", mp);
    memalloc_free(mp);
    void *sentinel = (void *)0x4560, *keep = sentinel;
    CHECK(memalloc_posix_memalign(&keep, 24, 100) == EINVAL, "posix_memalign(24) != EINVAL");
    CHECK(keep == sentinel, "posix_memalign(24) changed *memptr");

    void *a = memalloc_aligned_alloc(256, 1000);
    CHECK(a && ((uintptr_t)a & 255) == 0, "aligned_alloc(256, 1000) = %p", a);
    memalloc_free(a);
    errno = 0;
    a = memalloc_aligned_alloc(48, 100);
    CHECK(a == NULL && errno == EINVAL, "aligned_alloc(48) = %p errno %d", a, errno);
    memalloc_free(a);

    void *m = memalloc_memalign(1, 10);
    check_block(m, 10, "memalign(1)");
    memalloc_free(m);
    m = memalloc_memalign(96, 10);
    CHECK(m && ((uintptr_t)m & 127) == 0, "memalign(96) = %p not rounded up to 128", m);
    memalloc_free(m);

    void *v = memalloc_valloc(10);
    CHECK(v && ((uintptr_t)v & 4095) == 0, "valloc(10) = %p", v);
    memalloc_free(v);
    void *pv = memalloc_pvalloc(0);
    CHECK(pv && ((uintptr_t)pv & 4095) == 0, "pvalloc(0) = %p", pv);
    CHECK(memalloc_malloc_usable_size(pv) >= page_in_force(), "pvalloc(0) smaller than a page");
    memalloc_free(pv);
    CHECK_HEAP("aligned entry points");
}

/* ---- mallopt, malloc_trim, mallinfo, malloc_stats --------------------------- */

static void test_mallopt_trim(void)
{
    /* Negative values: trimming off (mallopt(3)), no pad; test_glibc checks what they do. */
    CHECK(memalloc_mallopt(M_TRIM_THRESHOLD, -1) == 1, "mallopt(M_TRIM_THRESHOLD, -1) refused");
    CHECK(memalloc_mallopt(M_TOP_PAD, -5) == 1, "mallopt(M_TOP_PAD, -5) refused");
    CHECK(memalloc_mallopt(12345, 1) == 0, "mallopt(unknown param) accepted");
    CHECK(memalloc_mallopt(M_MMAP_THRESHOLD, 1 << 20) == 1, "mallopt(M_MMAP_THRESHOLD) refused");
    CHECK(memalloc_mallopt(M_ARENA_MAX, 1) == 1, "mallopt(M_ARENA_MAX) refused");

    /* A high trim threshold keeps freed top memory; malloc_trim gives it back. */
    memalloc_malloc_trim(0);
    char *before = sbrk(0);
    CHECK(memalloc_mallopt(M_TRIM_THRESHOLD, 64 << 20) == 1, "mallopt(M_TRIM_THRESHOLD)");
    void *p = memalloc_malloc(1 * MiB);
    CHECK(p != NULL, "malloc(1 MiB)");
    char *held = sbrk(0);
    CHECK(held >= before + 1 * MiB, "a 1 MiB block did not grow the break");
    memalloc_free(p);
    CHECK((char *)sbrk(0) == held, "free shrank the heap below a 64 MiB trim threshold");
    CHECK_HEAP("high trim threshold");
    int t = memalloc_malloc_trim(0);
    CHECK(t == 1, "malloc_trim(0) with 1 MiB free on top returned %d", t);
    CHECK((char *)sbrk(0) == before, "malloc_trim(0) left the break at +%td, not at the start",
          (char *)sbrk(0) - before);
    CHECK(memalloc_mallopt(M_TRIM_THRESHOLD, 128 << 10) == 1, "mallopt(M_TRIM_THRESHOLD)");

    /* M_TOP_PAD: a shrink keeps that much free on top. */
    CHECK(memalloc_mallopt(M_TOP_PAD, 256 << 10) == 1, "mallopt(M_TOP_PAD)");
    p = memalloc_malloc(1 * MiB);
    CHECK(p != NULL, "malloc(1 MiB)");
    memalloc_free(p);
    ptrdiff_t kept = (char *)sbrk(0) - before;
    CHECK(kept >= (ptrdiff_t)(256 * KiB) && kept <= (ptrdiff_t)(256 * KiB + 128 * KiB),
          "M_TOP_PAD 256 KiB: the break stays %td bytes above the start", kept);
    CHECK(memalloc_mallopt(M_TOP_PAD, 0) == 1, "mallopt(M_TOP_PAD, 0)");
    memalloc_malloc_trim(0);
    CHECK((char *)sbrk(0) == before, "malloc_trim(0) after M_TOP_PAD left +%td",
          (char *)sbrk(0) - before);
    CHECK_HEAP("top pad");

    /* nothing to give back: 0 */
    t = memalloc_malloc_trim(0);
    CHECK(t == 0 || t == 1, "malloc_trim returned %d", t);
}

static void test_mallinfo(void)
{
    memalloc_malloc_trim(0);
    struct memalloc_mallinfo2 m0 = memalloc_mallinfo2();
    void *big = memalloc_malloc(700 * KiB);
    void *sm[100];
    for (int i = 0; i < 100; i++)
        sm[i] = memalloc_malloc(300);
    struct memalloc_mallinfo2 m1 = memalloc_mallinfo2();
    struct memalloc_mallinfo mi = memalloc_mallinfo();
    CHECK(m1.hblks == m0.hblks + 1, "mallinfo2.hblks %zu, expected %zu", m1.hblks, m0.hblks + 1);
    CHECK(m1.uordblks >= m0.uordblks + 700 * KiB + 100 * 300,
          "mallinfo2.uordblks grew by %zu only", m1.uordblks - m0.uordblks);
    CHECK(m1.arena >= m1.uordblks, "mallinfo2.arena %zu < uordblks %zu", m1.arena, m1.uordblks);
    CHECK(m1.arena > 0 && m1.usmblks >= m1.arena, "mallinfo2.usmblks (peak) < arena");
    CHECK(m1.fordblks == m1.arena - m1.uordblks, "mallinfo2.fordblks != arena - uordblks");
    CHECK(mi.arena == (int)(m1.arena > INT_MAX ? INT_MAX : m1.arena), "mallinfo.arena %d", mi.arena);
    CHECK(mi.hblks == (int)m1.hblks, "mallinfo.hblks %d != %zu", mi.hblks, m1.hblks);
    CHECK(mi.uordblks == (int)m1.uordblks, "mallinfo.uordblks %d != %zu", mi.uordblks, m1.uordblks);
    memalloc_free(big);
    for (int i = 0; i < 100; i++)
        memalloc_free(sm[i]);
    memalloc_malloc_trim(0);
    struct memalloc_mallinfo2 m2 = memalloc_mallinfo2();
    CHECK(m2.hblks == m0.hblks, "mallinfo2.hblks %zu after free, expected %zu", m2.hblks, m0.hblks);
    CHECK(m2.uordblks == m0.uordblks, "mallinfo2.uordblks %zu after free, expected %zu",
          m2.uordblks, m0.uordblks);
    CHECK_HEAP("mallinfo");
}

static void test_malloc_stats(void)
{
    void *p = memalloc_malloc(1000);
    int fds[2];
    if (pipe(fds) != 0) {
        CHECK(0, "pipe() failed");
        return;
    }
    int saved = dup(2);
    dup2(fds[1], 2);
    memalloc_malloc_stats();
    dup2(saved, 2);
    close(saved);
    close(fds[1]);
    static char out[64 * 1024];
    size_t len = read_all(fds[0], out, sizeof out);
    close(fds[0]);
    CHECK(len > 0, "malloc_stats printed nothing on stderr");
    static const char *const want[] = {
        "class     size    in use      peak  chunks  held KiB  in use KiB   cached",
        "small bytes held:", "small bytes in use:", "thread caches:", "blocks in caches:",
        "blocks parked:", "heap bytes now:", "heap bytes at peak:", "returned with sbrk:",
        "returned with madvise:",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        CHECK(strstr(out, want[i]) != NULL, "malloc_stats output lacks \"%s\"", want[i]);
    CHECK(strstr(out, "     1024 ") != NULL, "malloc_stats output has no row for class 1024");
    CHECK(len > 0 && out[len - 1] == '\n', "malloc_stats output does not end in a newline");
    memalloc_free(p);
}

int main(void)
{
    test_malloc_zero();
    test_calloc();                  /* early: relies on a mostly clean heap */
    test_alignment_and_usable();
    test_realloc_contents();
    test_free_errno();
    test_huge();
    test_overflow();
    test_aligned_entry_points();
    test_mallopt_trim();
    test_mallinfo();
    test_malloc_stats();
    CHECK_HEAP("end");
    return check_report("test_api");
}
