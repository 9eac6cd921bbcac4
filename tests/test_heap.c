/*
 * test_heap.c - the heap at the span level (src/heap.c): growth, shrink,
 * coalescing, in-place resizing, aligned large blocks, best-fit reuse and
 * other code moving the break.
 *
 *   1. large blocks A, B, C are contiguous spans in address order and grow
 *      the break by exactly their size; freeing B then A coalesces them into
 *      one free span of A+B units; freeing C (on top) merges everything and
 *      takes the break back to where it was (trim threshold 128 KiB, pad 0);
 *   2. large_resize_in_place grows a top block by moving the break, shrinks
 *      it by splitting (a small tail stays free, a big one is trimmed),
 *      grows into a free neighbour and refuses when there is no room;
 *   3. blocks aligned to 64 KiB, 1 MiB and 4 MiB land aligned with their
 *      header one unit below; the units in front become free space;
 *   4. heap_alloc_span takes the best-fitting free span (lowest address
 *      among equals) before growing, and reports fresh only for new memory;
 *   5. after the test moves the break itself, growth starts a new segment:
 *      the old top span gets SPAN_SEG_END, the foreign units stay MAP_NONE
 *      and are never handed out or written; the old segment's free space is
 *      still used; emptying the new segment gives the break back exactly;
 *   6. (in a child) freeing the heap's only segment entirely, then
 *      memalloc_check(): must not crash and must report 0.
 * memalloc_check() == 0 after every phase.
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internals.h"
#include "memalloc.h"

#define CHECK_MAX_FAILURES 100      /* CHECK gives up after that many */
#include "check.h"

#define U UNIT

static uintptr_t brk_now(void) { return (uintptr_t)sbrk(0); }

static struct large_block *hdr_of(const void *p)
{
    return (struct large_block *)((char *)p - LARGE_HDR);
}

static struct span *span_at(uintptr_t a) { return (struct span *)a; }

static uint8_t map_at(uintptr_t a) { return memalloc_unit_map[unit_index(a)]; }

/* A large block of exactly `units` units (16-byte alignment). */
static void *large(size_t units)
{
    size_t dirty;
    void *p = large_alloc(units * U - LARGE_HDR, ALIGNMENT, &dirty);
    CHECK(p != NULL, "large_alloc(%zu units) failed", units);
    if (!p)
        exit(1);
    CHECK(hdr_of(p)->s.units == units, "large block of %zu units has %zu", units,
          hdr_of(p)->s.units);
    return p;
}

/* As free() does it: the block, then a look at whether a purge pass is due. */
static void lfree(void *p)
{
    large_free(hdr_of(p), p, "free");
    purge_maybe();
}

static size_t free_bytes(void)
{
    struct memalloc_stats st;
    memalloc_get_stats(&st, sizeof st);
    return st.free_bytes;
}

/* ---- 1: growth, coalescing, shrink ---------------------------------------- */

static void phase_grow_coalesce(void)
{
    CHECK(free_bytes() == 0, "heap holds %zu free bytes before phase 1", free_bytes());
    uintptr_t b0 = brk_now();
    CHECK((b0 & (U - 1)) == 0, "the break %#lx is not unit-aligned", (unsigned long)b0);
    void *A = large(3), *B = large(2), *C = large(4);
    struct large_block *a = hdr_of(A), *b = hdr_of(B), *c = hdr_of(C);
    CHECK((uintptr_t)a == b0, "A's span at %p, want the old break %#lx", (void *)a,
          (unsigned long)b0);
    CHECK((uintptr_t)b == (uintptr_t)a + 3 * U && (uintptr_t)c == (uintptr_t)b + 2 * U,
          "A %p B %p C %p are not contiguous in address order", (void *)a, (void *)b, (void *)c);
    CHECK(brk_now() == b0 + 9 * U, "break grew by %ld bytes, want %zu",
          (long)(brk_now() - b0), 9 * U);
    CHECK(b->s.prev_units == 3 && c->s.prev_units == 2, "prev_units B %zu C %zu",
          b->s.prev_units, c->s.prev_units);
    CHECK(a->s.kind == SPAN_LARGE && b->s.kind == SPAN_LARGE && c->s.kind == SPAN_LARGE,
          "spans are not SPAN_LARGE");
    CHECK(map_at((uintptr_t)a) == MAP_SPAN && map_at((uintptr_t)a + U) == MAP_NONE &&
              map_at((uintptr_t)b) == MAP_SPAN && map_at((uintptr_t)c) == MAP_SPAN,
          "unit map wrong for A, B, C");
    CHECK(large_usable(a) == 3 * U - LARGE_HDR, "usable size of A %zu", large_usable(a));
    memset(A, 0xa1, large_usable(a));
    memset(B, 0xb2, large_usable(b));
    memset(C, 0xc3, large_usable(c));
    CHECK_HEAP("allocating A, B, C");

    lfree(B);
    CHECK(b->s.kind == SPAN_FREE && b->s.units == 2, "freed B: kind %#x units %zu", b->s.kind,
          b->s.units);
    CHECK(free_bytes() == 2 * U, "free bytes %zu after freeing B", free_bytes());
    CHECK(brk_now() == b0 + 9 * U, "freeing B (not on top) moved the break");
    CHECK_HEAP("freeing B");

    lfree(A);
    CHECK(a->s.kind == SPAN_FREE && a->s.units == 5,
          "A and B did not coalesce: kind %#x units %zu (want 5)", a->s.kind, a->s.units);
    CHECK(map_at((uintptr_t)b) == MAP_NONE, "B's header still mapped after merging into A");
    CHECK(c->s.prev_units == 5, "C's prev_units %zu, want 5", c->s.prev_units);
    CHECK(free_bytes() == 5 * U, "free bytes %zu after freeing A", free_bytes());
    CHECK_HEAP("freeing A");

    lfree(C);
    CHECK(brk_now() == b0, "freeing C: break at +%ld, want back at the start",
          (long)(brk_now() - b0));
    CHECK(free_bytes() == 0, "free bytes %zu after the heap shrank", free_bytes());
    CHECK(map_at((uintptr_t)a) == MAP_NONE, "released span still mapped");
    void *meta;
    CHECK(ptr_lookup(A, &meta) == PTR_BAD && ptr_lookup(C, &meta) == PTR_BAD,
          "pointers into released memory are not PTR_BAD");
    CHECK_HEAP("freeing C");
}

/* ---- 2: large_resize_in_place --------------------------------------------- */

static void phase_resize(void)
{
    uintptr_t b0 = brk_now();
    void *D = large(2);
    struct large_block *d = hdr_of(D);
    CHECK(large_resize_in_place(d, 5 * U - LARGE_HDR), "growing the top block failed");
    CHECK(d->s.units == 5 && brk_now() == b0 + 5 * U && d->requested == 5 * U - LARGE_HDR,
          "grown top block: units %zu, break +%ld", d->s.units, (long)(brk_now() - b0));
    memset(D, 0xd4, 5 * U - LARGE_HDR);
    CHECK_HEAP("growing the top block");

    CHECK(large_resize_in_place(d, 4 * U - LARGE_HDR), "shrinking by one unit failed");
    struct span *tail = span_at((uintptr_t)d + 4 * U);
    CHECK(d->s.units == 4 && tail->kind == SPAN_FREE && tail->units == 1 &&
              tail->prev_units == 4 && brk_now() == b0 + 5 * U,
          "shrink by a unit: units %zu, tail kind %#x units %zu, break +%ld", d->s.units,
          tail->kind, tail->units, (long)(brk_now() - b0));
    CHECK(free_bytes() == U, "free bytes %zu, want one unit", free_bytes());
    CHECK_HEAP("shrinking by one unit (below the trim threshold)");

    CHECK(large_resize_in_place(d, 100), "shrinking to one unit failed");
    CHECK(d->s.units == 1 && brk_now() == b0 + U && free_bytes() == 0,
          "shrink to one unit: units %zu, break +%ld, free %zu", d->s.units,
          (long)(brk_now() - b0), free_bytes());
    CHECK_HEAP("shrinking past the trim threshold");

    CHECK(large_resize_in_place(d, 3 * U - LARGE_HDR), "regrowing the top block failed");
    CHECK(d->s.units == 3 && brk_now() == b0 + 3 * U, "regrown: units %zu break +%ld",
          d->s.units, (long)(brk_now() - b0));
    /* Grow into a free neighbour that is not on top. */
    void *E = large(2), *F = large(1);
    lfree(E);
    CHECK(large_resize_in_place(d, 4 * U - LARGE_HDR), "growing into a free neighbour failed");
    struct span *rest = span_at((uintptr_t)d + 4 * U);
    CHECK(d->s.units == 4 && rest->kind == SPAN_FREE && rest->units == 1 &&
              hdr_of(F)->s.prev_units == 1 && brk_now() == b0 + 6 * U,
          "grown into neighbour: units %zu, rest kind %#x units %zu, F.prev %zu", d->s.units,
          rest->kind, rest->units, hdr_of(F)->s.prev_units);
    CHECK_HEAP("growing into a free neighbour");
    /* No room: one free unit above, F above that. */
    CHECK(!large_resize_in_place(d, 6 * U - LARGE_HDR), "growing without room succeeded");
    CHECK(d->s.units == 4 && d->requested == 4 * U - LARGE_HDR && brk_now() == b0 + 6 * U,
          "a refused resize changed the block: units %zu", d->s.units);
    CHECK_HEAP("a refused resize");
    lfree(F);
    lfree(D);
    CHECK(brk_now() == b0 && free_bytes() == 0, "after freeing D, F: break +%ld free %zu",
          (long)(brk_now() - b0), free_bytes());
    CHECK_HEAP("freeing the resized blocks");
}

/* ---- 3: aligned large blocks ---------------------------------------------- */

static void phase_aligned(void)
{
    static const size_t aligns[] = {(size_t)64 << 10, (size_t)1 << 20, (size_t)4 << 20};
    const size_t size = 100 << 10;
    const size_t units = (U + size + U - 1) / U;
    for (size_t i = 0; i < sizeof aligns / sizeof aligns[0]; i++) {
        size_t align = aligns[i];
        uintptr_t b0 = brk_now();
        size_t dirty;
        void *x = large_alloc(size, align, &dirty);
        CHECK(x != NULL, "large_alloc(%zu, align %zu) failed", size, align);
        if (!x)
            continue;
        struct large_block *h = (struct large_block *)((char *)x - U);
        CHECK((uintptr_t)x % align == 0, "block %p not aligned to %zu", x, align);
        CHECK(h->s.kind == SPAN_LARGE && h->user_off == U && h->s.units == units,
              "align %zu: header one unit below: kind %#x user_off %zu units %zu (want %zu)",
              align, h->s.kind, h->user_off, h->s.units, units);
        void *meta = NULL;
        CHECK(ptr_lookup(x, &meta) == PTR_LARGE && meta == h,
              "align %zu: ptr_lookup does not find the header a unit below", align);
        CHECK(map_at((uintptr_t)h) == MAP_SPAN && map_at((uintptr_t)x) == MAP_NONE,
              "align %zu: unit map wrong", align);
        CHECK(large_usable(h) >= size, "align %zu: usable %zu", align, large_usable(h));
        memset(x, 0x5a, size);
        size_t front = ((uintptr_t)h - b0) / U;
        if (front) {
            struct span *f = span_at(b0);
            CHECK(f->kind == SPAN_FREE && f->units == front && h->s.prev_units == front,
                  "align %zu: %zu front units not free space (kind %#x units %zu)", align, front,
                  f->kind, f->units);
        }
        uintptr_t end = (uintptr_t)h + units * U;
        if (brk_now() != end) {
            struct span *t = span_at(end);
            CHECK(t->kind == SPAN_FREE && end + t->units * U == brk_now() && t->units < 2,
                  "align %zu: tail above the block neither trimmed nor a small free top", align);
        }
        CHECK_HEAP("an aligned large block");
        large_free(h, x, "free");
        CHECK(brk_now() == b0 && free_bytes() == 0,
              "align %zu: freeing did not give everything back (break +%ld, free %zu)", align,
              (long)(brk_now() - b0), free_bytes());
        CHECK_HEAP("freeing an aligned large block");
    }
}

/* ---- 4: best fit ------------------------------------------------------------ */

static void phase_best_fit(void)
{
    uintptr_t b0 = brk_now();
    /* free candidates L1..L4 of 3, 2, 5, 2 units, kept apart by S1..S4 */
    void *L1 = large(3), *S1 = large(1), *L2 = large(2), *S2 = large(1);
    void *L3 = large(5), *S3 = large(1), *L4 = large(2), *S4 = large(1);
    uintptr_t l1 = (uintptr_t)hdr_of(L1), l2 = (uintptr_t)hdr_of(L2);
    uintptr_t l3 = (uintptr_t)hdr_of(L3), l4 = (uintptr_t)hdr_of(L4);
    lfree(L1);
    lfree(L2);
    lfree(L3);
    lfree(L4);
    uintptr_t top = brk_now();
    CHECK(top == b0 + 16 * U && free_bytes() == 12 * U, "setup: break +%ld free %zu",
          (long)(top - b0), free_bytes());
    CHECK_HEAP("setting up free spans of 3, 2, 5, 2 units");

    bool fresh = true;
    struct span *s1 = heap_alloc_span(2, &fresh);
    CHECK((uintptr_t)s1 == l2 && !fresh, "2 units: got +%ld (fresh %d), want L2 (+%ld)",
          (long)((uintptr_t)s1 - b0), fresh, (long)(l2 - b0));
    fresh = true;
    struct span *s2 = heap_alloc_span(2, &fresh);
    CHECK((uintptr_t)s2 == l4 && !fresh, "2 units again: got +%ld, want L4 (+%ld)",
          (long)((uintptr_t)s2 - b0), (long)(l4 - b0));
    fresh = true;
    struct span *s3 = heap_alloc_span(1, &fresh);
    CHECK((uintptr_t)s3 == l1 && !fresh && s3 && s3->units == 1,
          "1 unit: got +%ld, want the front of L1 (+%ld)", (long)((uintptr_t)s3 - b0),
          (long)(l1 - b0));
    struct span *l1rest = span_at(l1 + U);
    CHECK(l1rest->kind == SPAN_FREE && l1rest->units == 2, "rest of L1: kind %#x units %zu",
          l1rest->kind, l1rest->units);
    fresh = true;
    struct span *s4 = heap_alloc_span(4, &fresh);
    CHECK((uintptr_t)s4 == l3 && !fresh && s4 && s4->units == 4,
          "4 units: got +%ld, want L3 (+%ld)", (long)((uintptr_t)s4 - b0), (long)(l3 - b0));
    CHECK(brk_now() == top, "reusing free spans moved the break");
    fresh = false;
    struct span *s5 = heap_alloc_span(3, &fresh);
    CHECK((uintptr_t)s5 == top && fresh && brk_now() == top + 3 * U,
          "3 units with only 2+1 free: got +%ld fresh %d, break +%ld; want new memory",
          (long)((uintptr_t)s5 - b0), fresh, (long)(brk_now() - b0));
    /* Raw spans carry no large-block header: give them back before checking. */
    struct span *raw[] = {s1, s2, s3, s4, s5};
    for (size_t i = 0; i < 5; i++)
        if (raw[i])
            heap_free_span(raw[i], raw[i]->units * U);
    CHECK(brk_now() == top, "freeing the grown span did not trim back");
    CHECK_HEAP("heap_alloc_span / heap_free_span");
    lfree(S1);
    lfree(S2);
    lfree(S3);
    lfree(S4);
    CHECK(brk_now() == b0 && free_bytes() == 0, "after best fit: break +%ld free %zu",
          (long)(brk_now() - b0), free_bytes());
    CHECK_HEAP("freeing the best-fit separators");
}

/* ---- 5: other code moves the break ------------------------------------------ */

static void phase_foreign(void)
{
    uintptr_t b0 = brk_now();
    /* Free space in the old segment: X (2 units) below Y (on top). */
    void *X = large(2), *Y = large(1);
    uintptr_t x = (uintptr_t)hdr_of(X);
    lfree(X);
    struct span *old_top = &hdr_of(Y)->s;
    uintptr_t old_end = brk_now();

    const size_t n = 3 * U + 4096 + 123;
    char *foreign = sbrk((intptr_t)n);
    CHECK(foreign != (void *)-1, "the test's own sbrk failed");
    if (foreign == (void *)-1)
        exit(1);
    CHECK((uintptr_t)foreign == old_end, "foreign memory at %p, break was %#lx", (void *)foreign,
          (unsigned long)old_end);
    uintptr_t f_end = brk_now();
    memset(foreign, 0x77, n);

    /* Growth (bigger than the old free span): a new segment above the
     * foreign memory. */
    void *G = large(3);
    uintptr_t g = (uintptr_t)hdr_of(G);
    CHECK(g == ((f_end + U - 1) & ~(U - 1)), "new segment at %#lx, want the unit above %#lx",
          (unsigned long)g, (unsigned long)f_end);
    CHECK(hdr_of(G)->s.prev_units == 0, "first span of the new segment has prev_units %zu",
          hdr_of(G)->s.prev_units);
    CHECK(old_top->flags & SPAN_SEG_END, "old top span lacks SPAN_SEG_END");
    for (uintptr_t a = old_end; a < g; a += U)
        CHECK(map_at(a) == MAP_NONE, "foreign unit at +%ld mapped %#x", (long)(a - b0),
              map_at(a));
    CHECK_HEAP("growing past foreign memory");

    /* The old segment's free space is still used. */
    void *X2 = large(2);
    CHECK((uintptr_t)hdr_of(X2) == x, "2 units after the move: got %p, want the old free span %p",
          (void *)hdr_of(X2), (void *)x);

    /* More growth and small chunks: never in the foreign range. */
    void *H1 = large(3), *H2 = large(1);
    void *small[64];
    size_t nsmall = 0;
    for (unsigned cls = 40; cls < NUM_CLASSES && nsmall < 64; cls += 6) {
        bool z;
        for (int k = 0; k < 4 && nsmall < 64; k++)
            if ((small[nsmall] = chunk_alloc(cls, &z)) != NULL)
                nsmall++;
    }
    void *all[] = {G, X2, H1, H2};
    for (size_t i = 0; i < 4; i++) {
        uintptr_t s = (uintptr_t)hdr_of(all[i]), e = s + hdr_of(all[i])->s.units * U;
        CHECK(e <= old_end || s >= f_end, "large block %zu overlaps foreign memory", i);
    }
    for (size_t i = 0; i < nsmall; i++) {
        void *meta = NULL;
        uintptr_t s = (uintptr_t)(ptr_lookup(small[i], &meta) == PTR_SMALL ? meta : small[i]);
        uintptr_t e = s + (meta ? ((struct chunk *)meta)->s.units * U : 16);
        CHECK(e <= old_end || s >= f_end, "chunk of small block %zu overlaps foreign memory", i);
    }
    /* Foreign addresses are PTR_BAD, or (unit-aligned right above a span
     * start) PTR_LARGE with a header whose user pointer is elsewhere, which
     * large_free rejects. */
    for (size_t off = 0; off < n; off += 4096 + 16) {
        void *m2 = NULL;
        enum ptr_kind k = ptr_lookup(foreign + off, &m2);
        CHECK(k == PTR_BAD ||
                  (k == PTR_LARGE &&
                   (char *)m2 + ((struct large_block *)m2)->user_off != foreign + off),
              "foreign address +%zu looks like a live block (kind %d)", off, (int)k);
    }
    CHECK_HEAP("allocating after the foreign move");
    for (size_t i = 0; i < nsmall; i++) {
        void *meta = NULL;
        if (ptr_lookup(small[i], &meta) == PTR_SMALL)
            chunk_free(meta, small[i], "free");
    }
    chunk_release_spares();
    lfree(X2);
    lfree(H1);
    lfree(H2);
    lfree(G);
    CHECK_HEAP("freeing the new segment");
    size_t bad = 0;
    for (size_t i = 0; i < n; i++)
        bad += foreign[i] != 0x77;
    CHECK(bad == 0, "%zu bytes of the test's own sbrk memory were changed", bad);
    CHECK(brk_now() == f_end, "emptying the new segment: break at %+ld from the foreign end",
          (long)(brk_now() - f_end));
    lfree(Y);
    CHECK_HEAP("freeing the old segment's last block");
}

/* ---- 6: the whole heap given back ------------------------------------------- */

/* ---- 6: purging free space in the middle, after the delay ----------------- */

/* When the oldest dirt on the heap's free spans was freed (UINT64_MAX: there
 * is none), read under the heap lock. */
static uint64_t oldest_dirt(void)
{
    uint64_t oldest = UINT64_MAX;
    heap_lock();
    for (const struct free_span *f = memalloc_heap.dirty; f; f = f->dirty_next)
        if (span_bytes(&f->s) > os_page() && f->dirty_since < oldest)
            oldest = f->dirty_since;
    heap_unlock();
    return oldest;
}

/* Free space below the top is madvised only once the memory freed since the
 * last pass passes the purge threshold.  While the program keeps
 * allocating, a pass spares what was freed within the purge delay; once it
 * only frees, a pass takes everything.  Purged pages read as zero, which
 * calloc relies on. */
static void phase_purge(void)
{
    if (UNDER_VALGRIND())           /* its ~8 MiB break cannot hold enough passes */
        return;
    long saved = memalloc_options[OPT_PURGE_THRESHOLD];
    long saved_share = memalloc_options[OPT_PURGE_SHARE];
    long saved_delay = memalloc_options[OPT_PURGE_DELAY];
    memalloc_options[OPT_PURGE_THRESHOLD] = 4 * U;
    memalloc_options[OPT_PURGE_SHARE] = 0;
    memalloc_options[OPT_PURGE_DELAY] = 300;
    enum { N = 8 };
    void *blk[N], *pin[N], *keep[N];
    /* Start from clean free space: older free spans then cannot lend their
     * age to the spans freed below when they merge. */
    memalloc_malloc_trim(0);
    for (int i = 0; i < N; i++) {
        blk[i] = large(8);          /* 512 KiB each, filled */
        memset(blk[i], 0xa5, 8 * U - LARGE_HDR);
        pin[i] = large(1);          /* keeps the frees from coalescing */
    }
    /* The frees merge when the pins landed elsewhere, and the allocations
     * after them may be carved out of the freed space: the checks look at
     * the ages on the heap's dirty list, not at particular spans. */
    size_t madv0 = memalloc_heap.st.released_madvise;
    /* Every free adds 512 KiB of dirt, a pass each; an allocation after
     * each keeps the program allocating. */
    for (int i = 0; i < N / 2; i++) {
        lfree(blk[i]);
        keep[i] = large(9);
    }
    CHECK(memalloc_heap.st.released_madvise == madv0, "a freed span was purged at once");
    uint64_t idle_from = os_now_ms();
    os_sleep_ms(400);               /* the first half turns idle */
    purge_maybe();                  /* due: a pass purges it */
    CHECK(memalloc_heap.st.released_madvise > madv0, "no span was purged after the delay");
    CHECK(oldest_dirt() > idle_from, "dirt older than the delay survived a pass: %llu ms old",
          (unsigned long long)(os_now_ms() - oldest_dirt()));
    uint64_t young_from = os_now_ms();
    for (int i = N / 2; i < N; i++) {
        lfree(blk[i]);
        keep[i] = large(9);
    }
    CHECK(oldest_dirt() != UINT64_MAX && oldest_dirt() >= young_from,
          "the spans freed last were purged at once, or old dirt is left (oldest %llu, freed "
          "from %llu)", (unsigned long long)oldest_dirt(), (unsigned long long)young_from);
    /* Now the program only frees: the second pass on spares nothing, so
     * what stays dirty is less than the threshold a pass waits for. */
    for (int i = 0; i < N; i++)
        lfree(keep[i]);
    CHECK(memalloc_heap.dirty_free < 4 * U, "after frees only, %zu bytes of free spans are "
          "still dirty", memalloc_heap.dirty_free);
    CHECK_HEAP("purge passes");

    /* calloc over purged and over dirty space both read zero. */
    for (int i = 0; i < N; i++) {
        char *z = memalloc_calloc(8 * U - LARGE_HDR, 1);
        CHECK(z != NULL, "calloc(512 KiB)");
        if (!z)
            break;
        for (size_t k = 0; k < 8 * U - LARGE_HDR; k += 256)
            if (z[k]) {
                CHECK(0, "calloc block %d byte %zu is %d", i, k, z[k]);
                break;
            }
        blk[i] = z;
    }
    for (int i = 0; i < N; i++) {
        if (blk[i])
            memalloc_free(blk[i]);
        lfree(pin[i]);
    }
    memalloc_options[OPT_PURGE_THRESHOLD] = saved;
    memalloc_options[OPT_PURGE_SHARE] = saved_share;
    memalloc_options[OPT_PURGE_DELAY] = saved_delay;
    CHECK_HEAP("after the purge phase");
}

static void phase_empty_heap_child(void)
{
    pid_t pid = fork();
    if (pid < 0) {
        CHECK(0, "fork failed");
        return;
    }
    if (pid == 0) {
        /* Before any allocation: the heap's only segment will hold one large
         * block, whose free empties it (and gives back its alignment pad). */
        uintptr_t before = brk_now();
        /* The plain rule: no space kept for big blocks freed on top. */
        memalloc_mallopt(M_TRIM_THRESHOLD, 128 << 10);
        void *p = memalloc_malloc(4 * U);
        memalloc_free(p);
        int bad = 0;
        if (brk_now() != before) {
            fprintf(stderr, "%s: FAIL: emptying the only segment left the break at %+ld\n",
                    __FILE__, (long)(brk_now() - before));
            bad = 1;
        }
        int r = memalloc_check();
        if (r != 0) {
            fprintf(stderr, "%s: FAIL: memalloc_check() = %d on an empty heap\n", __FILE__, r);
            bad = 1;
        }
        p = memalloc_malloc(100);
        memalloc_free(p);
        if (memalloc_check() != 0) {
            fprintf(stderr, "%s: FAIL: memalloc_check() after regrowing an emptied heap\n",
                    __FILE__);
            bad = 1;
        }
        _exit(bad);
    }
    int status;
    if (waitpid(pid, &status, 0) != pid) {
        CHECK(0, "waitpid failed");
        return;
    }
    CHECK(!WIFSIGNALED(status),
          "after the heap's only segment was released, memalloc_check() died of signal %d",
          WTERMSIG(status));
    CHECK(!WIFEXITED(status) || WEXITSTATUS(status) == 0,
          "emptied-heap child reported failure (exit %d)", WEXITSTATUS(status));
}

int main(void)
{
    /* Make sure the first segment needs an alignment pad below it (the
     * break is page-aligned at start, not necessarily unit-aligned). */
    if ((brk_now() & (U - 1)) == 0 && sbrk(4096) == (void *)-1) {
        fprintf(stderr, "%s: sbrk does not work here\n", __FILE__);
        return 77;
    }
    phase_empty_heap_child();       /* first: needs a heap nobody has used */

    void *p = memalloc_malloc(1);  /* lazy initialisation */
    memalloc_free(p);
    /* Pin the documented defaults, whatever the environment says. */
    CHECK(memalloc_mallopt(M_TRIM_THRESHOLD, 128 << 10) == 1, "mallopt(M_TRIM_THRESHOLD)");
    CHECK(memalloc_mallopt(M_TOP_PAD, 0) == 1, "mallopt(M_TOP_PAD)");
    CHECK_HEAP("initialisation");

    phase_grow_coalesce();
    phase_resize();
    phase_aligned();
    phase_best_fit();
    phase_foreign();
    phase_purge();

    return check_report(__FILE__);
}
