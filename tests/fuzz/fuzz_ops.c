/*
 * fuzz_ops.c - the single-threaded op-sequence fuzz target: the input is a
 * sequence of calls into memalloc's prefixed API (every allocation entry
 * point, free, malloc_usable_size, malloc_trim) over a table of live
 * slots.  After every call it checks what include/memalloc.h and the
 * README promise: alignment, usable size, intact contents of every live
 * block, calloc zeroes, realloc's preserved prefix and same-pointer rule,
 * no overlap with a live block, ENOMEM / EINVAL for impossible requests
 * with the old block intact, errno kept by free, and memalloc_check().
 * Any failure prints one line and aborts.
 *
 * Linked with libmemalloc (the drop-in) so the process has one allocator.
 * Built as a libFuzzer target by tests/fuzz.sh and with driver.c for the
 * meson suite.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <memalloc.h>

#include "fuzz_common.h"

#define NSLOTS 256
#define MAX_BLOCK ((size_t)4 << 20)     /* the largest feasible request */
#define LIVE_BIG_MAX ((size_t)48 << 20) /* bounds what one input holds */
#define CHECK_EVERY 64                  /* memalloc_check() period, in ops */
#define VERIFY_EVERY 32                 /* full content sweep period */
#define VALLOC_ALIGN 4096               /* memalloc's PAGE: valloc/pvalloc */

/* Requests at or above this can never be met (no 64-bit user address
 * space reaches 2^57), so they must fail whatever the machine. */
#define HUGE_MIN ((size_t)1 << 57)

struct slot {
    uint8_t *p;
    size_t req;         /* bytes asked for */
    size_t usable;      /* malloc_usable_size at allocation */
    size_t align;       /* alignment promised */
    unsigned tag;       /* pattern tag */
};

static struct slot slots[NSLOTS];
static size_t live_big;         /* usable bytes of live blocks > FULL_MAX */
static unsigned generation;
static unsigned long op_no;
static const char *op_name = "";

static int is_pow2(size_t x) { return x && !(x & (x - 1)); }

/* One line naming the op that failed, then abort. */
__attribute__((noreturn, format(printf, 1, 2))) static void FAIL(const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fuzz_fail("op %lu (%s): %s", op_no, op_name, msg);
}

/* ---- choices from the input ---------------------------------------------------- */

static const size_t huge_sizes[] = {
    HUGE_MIN, (size_t)1 << 60, (size_t)1 << 62, (size_t)PTRDIFF_MAX - 4095,
    (size_t)PTRDIFF_MAX, (size_t)PTRDIFF_MAX + 1, SIZE_MAX - 4095, SIZE_MAX,
};

static const size_t exact_sizes[] = {
    0, 1, 8, 15, 16, 17, 31, 32, 33, 127, 128, 129, 144, 145, 1023, 1024,
    4095, 4096, 4097, 8192, 32767, 32768, 32769, 65536, 114688, 131071,
    131072, 131073, 135168, 262144, 1 << 20, (1 << 20) + 1, 4 << 20,
};

/* A request size from every regime: 0, tiny, any small class (and its
 * boundaries), large up to MAX_BLOCK, and impossible. */
static size_t rd_size(struct reader *r)
{
    uint8_t sel = rd_u8(r);
    switch (sel % 8) {
    case 0:
        return rd_u8(r) % 65;
    case 1:
    case 2:
        return 1 + rd_u16(r) % 4096;
    case 3: {
        /* A class boundary and its neighbours: 16-byte steps to 128, then
         * eight classes per doubling up to 128 KiB. */
        unsigned k = 4 + rd_u8(r) % 14;         /* 2^4 .. 2^17 */
        unsigned j = rd_u8(r);
        size_t base = (size_t)1 << k;
        size_t n = k < 7 ? (size_t)16 * (1 + j % 8) : base + (base / 8) * (j % 8);
        return n + (size_t)(rd_u8(r) % 3) - 1;
    }
    case 4: {
        unsigned e = 4 + rd_u8(r) % 14;
        return ((size_t)1 << e) + rd_u16(r) % ((size_t)1 << e);
    }
    case 5: {
        /* Log-uniform from 128 KiB to MAX_BLOCK: every large block faults
         * in all its pages (the sampled fill touches each one), so the
         * biggest ones are the rarest. */
        unsigned e = 17 + rd_u8(r) % 5;
        size_t n = ((size_t)1 << e) + 1 + rd_u24(r) % ((size_t)1 << e);
        if (sel & 0x80)
            n &= ~(size_t)4095;                 /* whole pages */
        return n;
    }
    case 6:
        return exact_sizes[rd_u8(r) % (sizeof exact_sizes / sizeof exact_sizes[0])];
    default:
        return huge_sizes[rd_u8(r) % (sizeof huge_sizes / sizeof huge_sizes[0])];
    }
}

/* An alignment: any power of two up to 4 MiB (mostly), a bad one, or an
 * impossible huge one. */
static size_t rd_align(struct reader *r)
{
    static const size_t bad[] = {0, 3, 12, 24, 48, 100, 4097, 12288, 65535};
    static const size_t huge[] = {
        (size_t)1 << 62, (size_t)1 << 63, (size_t)PTRDIFF_MAX, SIZE_MAX,
        ((size_t)1 << 62) + 1, (size_t)3 << 61, ((size_t)1 << 61) + 1,
    };
    uint8_t sel = rd_u8(r) % 32;
    if (sel <= 22)
        return (size_t)1 << sel;
    if (sel <= 26)
        return bad[rd_u8(r) % (sizeof bad / sizeof bad[0])];
    if (sel <= 28)
        return huge[rd_u8(r) % (sizeof huge / sizeof huge[0])];
    return sel == 29 ? 16 : 4096;
}

/* Keep one input's big blocks bounded: a big request that would exceed
 * the budget becomes a small one. */
static size_t bounded(size_t n)
{
    if (n >= HUGE_MIN || n <= FULL_MAX || live_big + n <= LIVE_BIG_MAX)
        return n;
    return n % (64 << 10);
}

/* ---- the table ---------------------------------------------------------------------- */

static void verify_slot(unsigned i, const char *when)
{
    struct slot *s = &slots[i];
    if (!s->p)
        return;
    size_t bad = verify_block(s->p, s->tag, s->usable, s->usable);
    if (bad != (size_t)-1)
        FAIL("slot %u block %p (%zu usable, asked %zu) corrupted at offset %zu %s: "
             "0x%02x, want 0x%02x", i, (void *)s->p, s->usable, s->req, bad, when,
             s->p[bad], pat_byte(s->tag, bad));
}

static void verify_all(const char *when)
{
    for (unsigned i = 0; i < NSLOTS; i++)
        verify_slot(i, when);
}

static void run_check(const char *when)
{
    int bad = memalloc_check();
    if (bad != 0)
        FAIL("memalloc_check() == %d %s", bad, when);
}

/* A block just returned for slot i: check it, record it, fill it. */
static void adopt(unsigned i, void *vp, size_t req, size_t align, int zeroed)
{
    uint8_t *p = vp;
    if (!p)
        FAIL("NULL for a feasible request of %zu bytes (align %zu), errno %d", req, align,
             errno);
    if ((uintptr_t)p % align)
        FAIL("%p is not %zu-aligned (request %zu)", vp, align, req);
    size_t usable = memalloc_malloc_usable_size(p);
    if (usable < req)
        FAIL("usable size %zu < requested %zu at %p", usable, req, vp);
    for (unsigned j = 0; j < NSLOTS; j++) {
        const struct slot *o = &slots[j];
        if (j != i && o->p && p < o->p + o->usable && o->p < p + usable)
            FAIL("new block %p+%zu overlaps live slot %u %p+%zu", vp, usable, j,
                 (void *)o->p, o->usable);
    }
    if (zeroed) {
        size_t nz = check_zero(p, req);
        if (nz != (size_t)-1)
            FAIL("calloc block %p (%zu bytes) not zero at offset %zu: 0x%02x", vp, req, nz,
                 p[nz]);
    }
    struct slot *s = &slots[i];
    s->p = p;
    s->req = req;
    s->usable = usable;
    s->align = align;
    s->tag = (i * 7 + generation++) & 0xff;
    if (sampled(usable))
        live_big += usable;
    fill_block(p, s->tag, usable);
}

/* Forget slot i's block (after the caller freed or moved it). */
static void forget(unsigned i)
{
    struct slot *s = &slots[i];
    if (s->p && sampled(s->usable))
        live_big -= s->usable;
    memset(s, 0, sizeof *s);
}

static void free_slot(unsigned i)
{
    struct slot *s = &slots[i];
    if (!s->p)
        return;
    verify_slot(i, "before free");
    errno = 4242;
    memalloc_free(s->p);
    if (errno != 4242)
        FAIL("free(%p) changed errno to %d", (void *)s->p, errno);
    forget(i);
}

/* An impossible request came back: it must be NULL with errno want (or,
 * if want2 is non-zero, that one). */
static void expect_fail(void *p, int err, int want, int want2, const char *what)
{
    if (p)
        FAIL("%s succeeded (%p), expected NULL", what, p);
    if (err != want && (!want2 || err != want2))
        FAIL("%s: errno %d, expected %d", what, err, want);
}

/* ---- the operations ----------------------------------------------------------------- */

static void op_malloc(unsigned i, struct reader *r)
{
    free_slot(i);
    size_t n = bounded(rd_size(r));
    errno = 0;
    void *p = memalloc_malloc(n);
    if (n >= HUGE_MIN)
        return expect_fail(p, errno, ENOMEM, 0, "malloc(huge)");
    adopt(i, p, n, 16, 0);
}

static void op_calloc(unsigned i, struct reader *r)
{
    static const size_t huge_counts[] = {(size_t)1 << 32, (size_t)1 << 48, SIZE_MAX / 2, SIZE_MAX};
    free_slot(i);
    size_t size = rd_size(r);
    uint8_t c = rd_u8(r);
    size_t nmemb = c < 240 ? c % 9 : huge_counts[c % 4];
    size_t n;
    int overflow = __builtin_mul_overflow(nmemb, size, &n);
    if (!overflow && n < HUGE_MIN && n > MAX_BLOCK) {
        nmemb = 1;              /* feasible but too big for a fast run */
        n = size;
    }
    if (!overflow && n < HUGE_MIN && bounded(n) != n) {
        nmemb = 1;
        size = n = bounded(n);
    }
    errno = 0;
    void *p = memalloc_calloc(nmemb, size);
    if (overflow || n >= HUGE_MIN)
        return expect_fail(p, errno, ENOMEM, 0, "calloc(overflowing or huge)");
    adopt(i, p, n, 16, 1);
}

/* realloc or reallocarray of slot i (NULL when empty) to size n, which
 * overflowed as nmemb * size when overflow is set. */
static void do_realloc(unsigned i, size_t nmemb, size_t size, int array)
{
    struct slot *s = &slots[i];
    size_t n;
    int overflow = __builtin_mul_overflow(nmemb, size, &n);
    if (!overflow && n < HUGE_MIN && n > MAX_BLOCK)
        n = size = MAX_BLOCK, nmemb = 1;
    if (!overflow && n < HUGE_MIN && n > FULL_MAX) {
        size_t have = s->p && sampled(s->usable) ? s->usable : 0;
        if (live_big - have + n > LIVE_BIG_MAX)
            n = size = n % (64 << 10), nmemb = 1;
    }
    uint8_t *old = s->p;
    if (old)
        verify_slot(i, "before realloc");
    errno = 0;
    uint8_t *q = array ? memalloc_reallocarray(old, nmemb, size) : memalloc_realloc(old, n);
    int err = errno;
    if (overflow || n >= HUGE_MIN) {
        expect_fail(q, err, ENOMEM, 0, array ? "reallocarray(overflowing or huge)"
                                             : "realloc(huge)");
        if (old) {
            /* The failed call must leave the old block as it was. */
            size_t u = memalloc_malloc_usable_size(old);
            if (u != s->usable)
                FAIL("failed realloc changed usable size of %p from %zu to %zu",
                     (void *)old, s->usable, u);
            verify_slot(i, "after a failed realloc");
        }
        return;
    }
    if (!old) {                 /* realloc(NULL, n) is malloc(n) */
        adopt(i, q, n, 16, 0);
        return;
    }
    if (n == 0) {               /* glibc: free and return NULL */
        if (q)
            FAIL("realloc(%p, 0) returned %p, expected NULL", (void *)old, (void *)q);
        forget(i);
        return;
    }
    if (!q)
        FAIL("realloc(%p, %zu) failed, errno %d", (void *)old, n, err);
    if (n <= s->usable && q != old)
        FAIL("realloc(%p, %zu) moved to %p though %zu bytes are usable", (void *)old, n,
             (void *)q, s->usable);
    /* The preserved prefix: the old usable bytes up to n. */
    size_t keep = s->usable < n ? s->usable : n;
    size_t bad = verify_block(q, s->tag, s->usable, keep);
    if (bad != (size_t)-1)
        FAIL("realloc(%p, %zu) -> %p lost the old contents at offset %zu", (void *)old, n,
             (void *)q, bad);
    size_t align = q == old ? s->align : 16;
    forget(i);
    adopt(i, q, n, align, 0);   /* a new tag; the prefix was checked above */
}

static void op_realloc(unsigned i, struct reader *r, int array)
{
    if (!array) {
        size_t n = rd_size(r);
        if (rd_u8(r) % 8 == 0)
            n = 0;              /* realloc(p, 0) frees */
        do_realloc(i, 1, n, 0);
        return;
    }
    static const size_t counts[] = {0, 1, 2, 3, 7, 16, (size_t)1 << 33, SIZE_MAX / 3, SIZE_MAX};
    size_t nmemb = counts[rd_u8(r) % (sizeof counts / sizeof counts[0])];
    size_t size = rd_size(r);
    if (nmemb > 16 && size == 0)
        size = 1 + rd_u8(r);
    do_realloc(i, nmemb, size, 1);
}

static size_t next_pow2(size_t a)
{
    size_t p = 1;
    while (p < a)
        p <<= 1;
    return p;
}

/* The aligned entry points, with each one's documented errors. */
static void op_aligned(unsigned i, struct reader *r, int which)
{
    free_slot(i);
    size_t align = rd_align(r);
    size_t n = bounded(rd_size(r));
    const size_t align_huge = (size_t)1 << 62;  /* > PTRDIFF_MAX / 2: ENOMEM */
    void *p = NULL;
    int err;
    errno = 0;
    switch (which) {
    case 0: {                   /* posix_memalign: returns the error */
        void *sentinel = (void *)&slots[i];
        p = sentinel;
        int rc = memalloc_posix_memalign(&p, align, n);
        if (!is_pow2(align) || align % sizeof(void *)) {
            if (rc != EINVAL || p != sentinel)
                FAIL("posix_memalign(align %zu) = %d, memptr %s; expected EINVAL, untouched",
                     align, rc, p == sentinel ? "untouched" : "changed");
            return;
        }
        if (n >= HUGE_MIN || align >= align_huge) {
            if (rc != ENOMEM || p != sentinel)
                FAIL("posix_memalign(align %zu, %zu) = %d, memptr %s; expected ENOMEM, "
                     "untouched", align, n, rc, p == sentinel ? "untouched" : "changed");
            return;
        }
        if (rc != 0)
            FAIL("posix_memalign(align %zu, %zu) = %d", align, n, rc);
        adopt(i, p, n, align < 16 ? 16 : align, 0);
        return;
    }
    case 1:                     /* aligned_alloc: C17, a non-power of two is EINVAL */
        p = memalloc_aligned_alloc(align, n);
        err = errno;
        if (!is_pow2(align))
            return expect_fail(p, err, EINVAL, 0, "aligned_alloc(bad alignment)");
        if (n >= HUGE_MIN || align >= align_huge)
            return expect_fail(p, err, ENOMEM, 0, "aligned_alloc(huge)");
        adopt(i, p, n, align < 16 ? 16 : align, 0);
        return;
    case 2: {                   /* memalign: rounds a non-power of two up */
        p = memalloc_memalign(align, n);
        err = errno;
        /* Beyond 2^62 memalloc says EINVAL where glibc (which compares with
         * SIZE_MAX / 2 + 1) may say ENOMEM: either is a clean refusal. */
        if (align > align_huge)
            return expect_fail(p, err, EINVAL, ENOMEM, "memalign(huge alignment)");
        size_t eff = align <= 16 ? 16 : next_pow2(align);
        if (eff >= align_huge)
            return expect_fail(p, err, ENOMEM, EINVAL, "memalign(huge alignment)");
        if (n >= HUGE_MIN)
            return expect_fail(p, err, ENOMEM, 0, "memalign(huge)");
        adopt(i, p, n, eff, 0);
        return;
    }
    case 3:                     /* valloc */
        p = memalloc_valloc(n);
        err = errno;
        if (n >= HUGE_MIN)
            return expect_fail(p, err, ENOMEM, 0, "valloc(huge)");
        adopt(i, p, n, VALLOC_ALIGN, 0);
        return;
    default: {                  /* pvalloc: whole pages, one for 0 */
        p = memalloc_pvalloc(n);
        err = errno;
        if (n >= HUGE_MIN)
            return expect_fail(p, err, ENOMEM, 0, "pvalloc(huge)");
        size_t pages = n == 0 ? VALLOC_ALIGN : (n + VALLOC_ALIGN - 1) & ~(size_t)(VALLOC_ALIGN - 1);
        adopt(i, p, pages, VALLOC_ALIGN, 0);
        return;
    }
    }
}

static void op_usable(unsigned i)
{
    struct slot *s = &slots[i];
    size_t u = memalloc_malloc_usable_size(s->p);
    if (!s->p) {
        if (u != 0)
            FAIL("malloc_usable_size(NULL) = %zu", u);
        return;
    }
    if (u != s->usable)
        FAIL("malloc_usable_size(%p) changed from %zu to %zu", (void *)s->p, s->usable, u);
    verify_slot(i, "at malloc_usable_size");
}

static void op_trim(struct reader *r)
{
    static const size_t pads[] = {0, 0, 64, 4096, 128 << 10, 1 << 20, 64 << 20,
                                  SIZE_MAX / 2, SIZE_MAX};
    size_t pad = pads[rd_u8(r) % (sizeof pads / sizeof pads[0])];
    int rc = memalloc_malloc_trim(pad);
    if (rc != 0 && rc != 1)
        FAIL("malloc_trim(%zu) = %d, expected 0 or 1", pad, rc);
    /* Trimming and purging give pages back: every live byte must stay. */
    verify_all("after malloc_trim");
}

/* Free a run of slots: neighbours coalesce, chunks empty, purges trigger. */
static void op_free_range(unsigned i, struct reader *r)
{
    unsigned len = 1 + rd_u8(r) % 64, step = 1 + rd_u8(r) % 4;
    for (unsigned k = 0; k < len; k++)
        free_slot((i + k * step) % NSLOTS);
}

/* An impossible realloc of a live block: NULL, ENOMEM, block intact. */
static void op_fail_realloc(unsigned i, struct reader *r)
{
    if (!slots[i].p)
        return;
    size_t n = huge_sizes[rd_u8(r) % (sizeof huge_sizes / sizeof huge_sizes[0])];
    do_realloc(i, 1, n, 0);
}

static const char *const names[16] = {
    "malloc", "calloc", "realloc", "reallocarray", "posix_memalign", "aligned_alloc",
    "memalign", "valloc", "pvalloc", "free", "malloc_usable_size", "malloc_trim",
    "free range", "malloc", "impossible realloc", "check",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct reader r = {data, size, 0};
    fuzz_name = "fuzz_ops";
    fuzz_pat_init();
    op_no = 0;
    while (r.pos < r.size) {
        uint8_t op = rd_u8(&r) % 16;
        unsigned i = rd_u8(&r) % NSLOTS;
        op_name = names[op];
        switch (op) {
        case 0: case 13: op_malloc(i, &r); break;
        case 1: op_calloc(i, &r); break;
        case 2: op_realloc(i, &r, 0); break;
        case 3: op_realloc(i, &r, 1); break;
        case 4: case 5: case 6: case 7: case 8: op_aligned(i, &r, op - 4); break;
        case 9: free_slot(i); break;
        case 10: op_usable(i); break;
        case 11: op_trim(&r); break;
        case 12: op_free_range(i, &r); break;
        case 14: op_fail_realloc(i, &r); break;
        default:
            verify_all("at a check op");
            run_check("at a check op");
            break;
        }
        verify_slot(i, "after its op");
        op_no++;
        if (op_no % VERIFY_EVERY == 0)
            verify_all("in the periodic sweep");
        if (op_no % CHECK_EVERY == 0)
            run_check("in the periodic check");
    }
    op_name = "end of input";
    verify_all("at the end of the input");
    run_check("at the end of the input, blocks live");
    for (unsigned i = 0; i < NSLOTS; i++)
        free_slot(i);
    if (live_big != 0)
        FAIL("bookkeeping: %zu big bytes still counted", live_big);
    run_check("at the end of the input, all freed");
    return 0;
}
