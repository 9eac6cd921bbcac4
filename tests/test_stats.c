/*
 * test_stats.c - memalloc_get_stats and mallinfo2 follow what the program
 * holds (large and small bytes and counts, heap size, peak); malloc_trim(0)
 * after freeing everything returns 1 and puts the break back where it was;
 * the heap shrinks on free alone (no malloc_trim) when large blocks on top
 * go, freed in reverse and in mixed order; and freed neighbours coalesce so
 * a block of their combined size lands at the lower one's address without
 * growing the break.  The footprint figures: small_held covers what is in
 * use, cached_bytes what thread caches keep, released_madvise grows when
 * malloc_trim gives back pages inside chunks; mallinfo2's other fields
 * match.  The lock counts: in one thread every class-lock and heap-lock
 * acquisition is counted, at least one per batch a bin takes or gives
 * back, and none of them waited; with two threads on one class, waits
 * never exceed acquisitions; a cached 64 KiB block takes no lock.  (test_api checks what malloc_stats() prints.)
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "memalloc.h"
#include "check.h"

static char *brk_now(void) { return sbrk(0); }

/* Coalescing: A, B, C large; free A and B; A+B's size fits their merged
 * space exactly where A was. */
static void test_coalesce(void)
{
    static const size_t sa[] = {256 * KiB, 300 * KiB, 640 * KiB};
    static const size_t sb[] = {384 * KiB, 200 * KiB, 700 * KiB};
    for (int k = 0; k < 3; k++) {
        memalloc_malloc_trim(0);
        void *a = memalloc_malloc(sa[k]);
        void *b = memalloc_malloc(sb[k]);
        void *c = memalloc_malloc(200 * KiB);
        CHECK(a && b && c, "malloc A, B, C");
        if (!a || !b || !c)
            return;
        CHECK((char *)b > (char *)a && (char *)c > (char *)b,
              "A, B, C not placed upwards (%p %p %p): heap not clean?", a, b, c);
        char *before = brk_now();
        if (k == 1) {               /* the other order of merging */
            memalloc_free(b);
            memalloc_free(a);
        } else {
            memalloc_free(a);
            memalloc_free(b);
        }
        CHECK(brk_now() == before, "freeing A and B below C moved the break");
        void *ab = memalloc_malloc(sa[k] + sb[k]);
        CHECK(ab == a, "a block of size A+B landed at %p, not at A %p (no coalescing?)", ab, a);
        CHECK(brk_now() == before, "A+B grew the break by %td although A and B were free",
              brk_now() - before);
        memalloc_free(ab);
        memalloc_free(c);
        CHECK_HEAP("coalesce");
    }

    /* Three in a row: free A and C, then B joins both. */
    memalloc_malloc_trim(0);
    void *p[4];
    for (int i = 0; i < 4; i++)
        p[i] = memalloc_malloc(256 * KiB);
    CHECK(p[0] && p[1] && p[2] && p[3], "malloc 4 x 256K");
    if (!(p[0] && p[1] && p[2] && p[3]))
        return;
    char *before = brk_now();
    memalloc_free(p[0]);
    memalloc_free(p[2]);
    memalloc_free(p[1]);
    void *all = memalloc_malloc(3 * 256 * KiB);
    CHECK(all == p[0], "3 x 256K after freeing three neighbours landed at %p, not %p", all, p[0]);
    CHECK(brk_now() == before, "the merged allocation grew the break");
    memalloc_free(all);
    memalloc_free(p[3]);
    CHECK_HEAP("coalesce three");
}

static void test_counts(void)
{
    memalloc_malloc_trim(0);
    struct memalloc_stats s0 = stats();
    char *brk0 = brk_now();

    static const size_t lsz[] = {300 * KiB, 1 * MiB, 2 * MiB + 12345};
    void *large[3];
    size_t lsum = 0;
    for (int i = 0; i < 3; i++) {
        large[i] = memalloc_malloc(lsz[i]);
        CHECK(large[i] != NULL, "malloc(%zu)", lsz[i]);
        if (large[i])
            memset(large[i], 0x33, lsz[i]);
        lsum += lsz[i];
    }
    enum { NS = 1000, NM = 50 };
    static void *small[NS], *mid[NM];
    size_t ssum = 0;
    for (int i = 0; i < NS; i++) {
        small[i] = memalloc_malloc(100);
        CHECK(small[i] != NULL, "malloc(100)");
        ssum += 100;
    }
    for (int i = 0; i < NM; i++) {
        mid[i] = memalloc_malloc(3000);
        CHECK(mid[i] != NULL, "malloc(3000)");
        ssum += 3000;
    }

    struct memalloc_stats s1 = stats();
    CHECK(s1.large_blocks == s0.large_blocks + 3, "large_blocks %zu, expected %zu",
          s1.large_blocks, s0.large_blocks + 3);
    size_t ldelta = s1.large_in_use - s0.large_in_use;
    CHECK(ldelta >= lsum && ldelta <= lsum + 3 * 2 * 64 * KiB,
          "large_in_use grew by %zu for %zu bytes of large blocks", ldelta, lsum);
    size_t sdelta = s1.small_in_use - s0.small_in_use;
    CHECK(sdelta >= ssum, "small_in_use grew by %zu < %zu bytes allocated", sdelta, ssum);
    CHECK(sdelta <= ssum * 5 / 4 + 64 * KiB, "small_in_use grew by %zu, far more than %zu",
          sdelta, ssum);
    CHECK(s1.heap_bytes > 0, "heap_bytes is 0 while blocks are held");
    CHECK(s1.heap_bytes >= s1.large_in_use + s1.small_in_use,
          "heap_bytes %zu < large %zu + small %zu", s1.heap_bytes, s1.large_in_use, s1.small_in_use);
    CHECK(s1.heap_peak >= s1.heap_bytes, "heap_peak %zu < heap_bytes %zu", s1.heap_peak, s1.heap_bytes);
    CHECK(s1.chunks >= 2, "chunks %zu while two classes are in use", s1.chunks);
    CHECK(brk_now() - brk0 >= (ptrdiff_t)(s1.heap_bytes - s0.heap_bytes),
          "the break grew by %td, less than heap_bytes did (%zu)", brk_now() - brk0,
          s1.heap_bytes - s0.heap_bytes);

    struct memalloc_mallinfo2 mi = memalloc_mallinfo2();
    CHECK(mi.hblks == s1.large_blocks, "mallinfo2.hblks %zu != large_blocks %zu", mi.hblks,
          s1.large_blocks);
    CHECK(mi.arena == s1.heap_bytes, "mallinfo2.arena %zu != heap_bytes %zu", mi.arena, s1.heap_bytes);
    CHECK(mi.uordblks == s1.small_in_use + s1.large_in_use,
          "mallinfo2.uordblks %zu != small + large %zu", mi.uordblks,
          s1.small_in_use + s1.large_in_use);
    CHECK(mi.usmblks == s1.heap_peak, "mallinfo2.usmblks %zu != heap_peak %zu", mi.usmblks,
          s1.heap_peak);
    CHECK_HEAP("counts, held");

    /* Free half the small blocks: small_in_use drops by at least that much
     * once caches are flushed. */
    for (int i = 0; i < NS; i += 2)
        memalloc_free(small[i]);
    memalloc_malloc_trim(0);
    struct memalloc_stats s2 = stats();
    CHECK(s1.small_in_use - s2.small_in_use >= NS / 2 * 100,
          "freeing %d x 100 bytes lowered small_in_use by %zu only", NS / 2,
          s1.small_in_use - s2.small_in_use);

    for (int i = 0; i < 3; i++)
        memalloc_free(large[i]);
    struct memalloc_stats s3 = stats();
    CHECK(s3.large_blocks == s0.large_blocks, "large_blocks %zu after free, expected %zu",
          s3.large_blocks, s0.large_blocks);
    CHECK(s3.large_in_use == s0.large_in_use, "large_in_use %zu after free, expected %zu",
          s3.large_in_use, s0.large_in_use);

    for (int i = 1; i < NS; i += 2)
        memalloc_free(small[i]);
    for (int i = 0; i < NM; i++)
        memalloc_free(mid[i]);
    int t = memalloc_malloc_trim(0);
    CHECK(t == 1, "malloc_trim(0) after freeing everything returned %d", t);
    struct memalloc_stats s4 = stats();
    CHECK(s4.small_in_use == s0.small_in_use, "small_in_use %zu after free + trim, expected %zu",
          s4.small_in_use, s0.small_in_use);
    CHECK(s4.heap_bytes <= s0.heap_bytes, "heap_bytes %zu after free + trim, was %zu before",
          s4.heap_bytes, s0.heap_bytes);
    CHECK(s4.released_sbrk > s0.released_sbrk, "released_sbrk did not grow");
    CHECK(s4.heap_peak >= s1.heap_bytes, "heap_peak %zu forgot the peak %zu", s4.heap_peak,
          s1.heap_bytes);
    CHECK(brk_now() == brk0, "after free + malloc_trim(0) the break is %+td from where it started",
          brk_now() - brk0);
    CHECK_HEAP("counts, freed");
}

/* Freeing a large block on top keeps up to twice its size there, so that a
 * program cycling one big buffer reuses it; more than that goes back at
 * once, and malloc_trim(0) gives back the rest.  Runs first: it needs a
 * process that has not freed a large block yet. */
static void test_retention(void)
{
    struct memalloc_stats st0, st1;
    memalloc_malloc_trim(0);
    char *before = brk_now();
    void *p = memalloc_malloc(1 * MiB);
    CHECK(p != NULL, "malloc(1 MiB)");
    if (!p)
        return;
    memset(p, 1, 1 * MiB);
    char *held = brk_now();
    memalloc_free(p);
    CHECK(brk_now() == held, "a freed 1 MiB top block was not kept (break %+td)",
          brk_now() - held);
    memalloc_get_stats(&st0, sizeof st0);
    for (int i = 0; i < 20; i++) {          /* the big-buffer pattern */
        void *q = memalloc_malloc(1 * MiB);
        CHECK(q == p, "cycle %d: the kept block was not reused (%p, not %p)", i, q, p);
        if (!q)
            return;
        memset(q, i, 1 * MiB);
        memalloc_free(q);
    }
    memalloc_get_stats(&st1, sizeof st1);
    CHECK(brk_now() == held, "cycling a 1 MiB buffer moved the break by %+td", brk_now() - held);
    CHECK(st1.released_sbrk == st0.released_sbrk,
          "cycling a 1 MiB buffer went through sbrk (%zu bytes released)",
          st1.released_sbrk - st0.released_sbrk);
    CHECK(memalloc_malloc_trim(0) == 1, "malloc_trim(0) did not release the kept space");
    CHECK(brk_now() == before, "after malloc_trim(0) the break is %+td from before",
          brk_now() - before);

    /* Twice the biggest freed block is the bound: freeing three 1 MiB blocks
     * from the top reaches it on the second free, which gives everything
     * back; the third is kept. */
    void *b[3];
    for (int i = 0; i < 3; i++) {
        b[i] = memalloc_malloc(1 * MiB);
        CHECK(b[i] != NULL, "malloc(1 MiB)");
        if (!b[i])
            return;
        memset(b[i], 2, 1 * MiB);
    }
    char *top3 = brk_now();
    memalloc_free(b[2]);
    CHECK(brk_now() == top3, "the first of three freed blocks was not kept");
    memalloc_free(b[1]);
    CHECK(brk_now() <= (char *)b[1], "2 MiB free on top was not given back (break %+td)",
          brk_now() - before);
    memalloc_free(b[0]);
    CHECK(brk_now() - before <= (ptrdiff_t)(2 * (MiB + 64 * KiB)),
          "more than twice the block kept on top: break %+td", brk_now() - before);
    memalloc_malloc_trim(0);
    CHECK(brk_now() == before, "after malloc_trim(0) the break is %+td", brk_now() - before);
    CHECK_HEAP("retention");
}

/* With the trim threshold set by hand (which, as in glibc, turns off the
 * space kept after big frees), the heap shrinks on free alone when at least
 * the threshold is free on top. */
static void test_shrink_without_trim(void)
{
    CHECK(memalloc_mallopt(M_TRIM_THRESHOLD, 128 * KiB) == 1, "mallopt(M_TRIM_THRESHOLD)");
    memalloc_malloc_trim(0);
    void *low = memalloc_malloc(200 * KiB);   /* the heap is not empty below */
    char *before = brk_now();
    void *p[4];
    for (int i = 0; i < 4; i++) {
        p[i] = memalloc_malloc(1 * MiB);
        CHECK(p[i] != NULL, "malloc(1 MiB)");
        if (!p[i])
            return;
        memset(p[i], i + 1, 1 * MiB);
    }
    char *held = brk_now();
    CHECK(held >= before + 4 * MiB, "4 x 1 MiB grew the break by %td only", held - before);

    /* reverse order: each free gives its block back */
    char *last = held;
    for (int i = 3; i >= 0; i--) {
        memalloc_free(p[i]);
        char *now = brk_now();
        CHECK(now < last, "freeing top block %d did not lower the break", i);
        CHECK(now <= (char *)p[i], "after freeing top block %d the break %p is above it (%p)", i,
              (void *)now, p[i]);
        last = now;
    }
    CHECK(brk_now() == before, "after freeing 4 x 1 MiB in reverse the break is %+td from before",
          brk_now() - before);
    CHECK_HEAP("shrink, reverse");

    /* mixed order: 0, 2 (no change), 3 (3 and 2 go), 1 (everything goes) */
    for (int i = 0; i < 4; i++) {
        p[i] = memalloc_malloc(1 * MiB);
        CHECK(p[i] != NULL, "malloc(1 MiB)");
        if (!p[i])
            return;
    }
    held = brk_now();
    memalloc_free(p[0]);
    CHECK(brk_now() == held, "freeing the lowest block moved the break");
    memalloc_free(p[2]);
    CHECK(brk_now() == held, "freeing a middle block moved the break");
    memalloc_free(p[3]);
    CHECK(brk_now() <= (char *)p[2] && brk_now() > (char *)p[1],
          "freeing the top block with a free neighbour: break %p, expected just below %p",
          (void *)brk_now(), p[2]);
    memalloc_free(p[1]);
    CHECK(brk_now() == before, "after freeing 4 x 1 MiB in mixed order the break is %+td",
          brk_now() - before);
    CHECK_HEAP("shrink, mixed");

    /* a large block shrunk by realloc gives its tail back too */
    void *r = memalloc_malloc(2 * MiB);
    CHECK(r != NULL, "malloc(2 MiB)");
    void *r2 = memalloc_realloc(r, 100 * KiB);
    CHECK(r2 == r, "realloc shrink of the top block moved it");
    CHECK(brk_now() <= before + 256 * KiB, "shrinking the top block to 100K left the break at %+td",
          brk_now() - before);
    memalloc_free(r2);
    CHECK(brk_now() <= before + 128 * KiB, "break %+td after freeing it", brk_now() - before);
    memalloc_free(low);
    memalloc_malloc_trim(0);
    CHECK_HEAP("shrink, realloc");
}

/* A thread's first small malloc comes after a large block: whatever
 * per-thread state memalloc sets up then must not pin the heap above the
 * large block, so after freeing both and malloc_trim(0) the break is back. */
static void *pinning_thread(void *arg)
{
    (void)arg;
    memalloc_malloc_trim(0);
    char *before = brk_now();
    void *big = memalloc_malloc(1 * MiB);
    void *small = memalloc_malloc(100);
    CHECK(big && small, "malloc in a new thread");
    memalloc_free(small);
    memalloc_free(big);
    memalloc_malloc_trim(0);
    CHECK(brk_now() == before, "a new thread's first small malloc after a 1 MiB block: after "
          "freeing both and malloc_trim(0) the break is %+td from before", brk_now() - before);
    CHECK_HEAP("new thread");
    return NULL;
}

/* Blocks of 1000 bytes, all freed but one in 64: their chunks keep a few
 * blocks each, and the pages between go back on malloc_trim. */
static void test_footprint_fields(void)
{
    enum { N = 2048 };
    static void *b[N];
    memalloc_malloc_trim(0);
    struct memalloc_stats s0 = stats();
    for (int i = 0; i < N; i++) {
        b[i] = memalloc_malloc(1000);
        CHECK(b[i] != NULL, "malloc(1000)");
        if (b[i])
            memset(b[i], 0x5a, 1000);
    }
    struct memalloc_stats s1 = stats();
    CHECK(s1.small_held >= s1.small_in_use, "small_held %zu < small_in_use %zu", s1.small_held,
          s1.small_in_use);
    CHECK(s1.small_held - s0.small_held >= (size_t)N * 1000,
          "small_held grew by %zu for %d x 1000 bytes", s1.small_held - s0.small_held, N);
    for (int i = 0; i < N; i++)
        if (i % 64)
            memalloc_free(b[i]);
    struct memalloc_stats s2 = stats();
    CHECK(s2.cached_bytes > 0 && s2.cached_bytes <= (size_t)N * 1024,
          "cached_bytes %zu after freeing most blocks", s2.cached_bytes);
    struct memalloc_mallinfo2 mi = memalloc_mallinfo2();
    CHECK(mi.fsmblks == s2.cached_bytes, "mallinfo2.fsmblks %zu != cached_bytes %zu", mi.fsmblks,
          s2.cached_bytes);
    CHECK(mi.hblkhd == s2.large_in_use, "mallinfo2.hblkhd %zu != large_in_use %zu", mi.hblkhd,
          s2.large_in_use);
    CHECK(mi.keepcost == s2.free_bytes, "mallinfo2.keepcost %zu != free_bytes %zu", mi.keepcost,
          s2.free_bytes);
    CHECK(mi.fordblks == s2.heap_bytes - mi.uordblks, "mallinfo2.fordblks %zu, want %zu",
          mi.fordblks, s2.heap_bytes - mi.uordblks);
    int t = memalloc_malloc_trim(0);
    struct memalloc_stats s3 = stats();
    CHECK(t == 1, "malloc_trim with free pages inside chunks returned %d", t);
    /* What stays is the cache's own structure, a small block itself. */
    CHECK(s3.cached_bytes <= 4096, "malloc_trim left %zu bytes in this thread's cache",
          s3.cached_bytes);
    /* 1000-byte blocks: the 63 freed blocks between two survivors hold all
     * but at most one of the whole pages they span (14 of 4 KiB, 2 of
     * 16 KiB, none of 64 KiB unless the chunk spans more units). */
    size_t page = page_in_force(), per_gap = 63 * 1000 / page;
    per_gap = per_gap ? per_gap - 1 : 0;
    CHECK(s3.released_madvise - s2.released_madvise >= (size_t)(N / 64) * per_gap * page,
          "malloc_trim gave back %zu bytes with madvise", s3.released_madvise - s2.released_madvise);
    for (int i = 0; i < N; i += 64)
        memalloc_free(b[i]);
    CHECK_HEAP("footprint fields");
}

static void test_thread_first_small_malloc(void)
{
    pthread_t t;
    if (pthread_create(&t, NULL, pinning_thread, NULL) != 0) {
        CHECK(0, "pthread_create failed");
        return;
    }
    pthread_join(t, NULL);
}

/* A class above the table's reach (64 KiB) is cached too: a block freed and
 * asked for again comes back from this thread's bin, without a class lock. */
static void test_big_class_cached(void)
{
    void *p = memalloc_malloc(64 * KiB);
    CHECK(p != NULL, "malloc(64 KiB) failed");
    memalloc_free(p);
    struct memalloc_lock_stats a, b;
    memalloc_get_lock_stats(&a);
    void *q = memalloc_malloc(64 * KiB);
    memalloc_free(q);
    memalloc_get_lock_stats(&b);
    CHECK(q == p, "a freed 64 KiB block did not come back from the bin (%p, then %p)", p, q);
    CHECK(b.class_locks == a.class_locks,
          "a cached 64 KiB malloc and free took the class locks %llu times",
          (unsigned long long)(b.class_locks - a.class_locks));
}

/* n rounds of four 48 KiB blocks allocated, then freed: more than the bin
 * of that class holds, so every round goes to the class at least twice. */
static void *lock_churn(void *arg)
{
    size_t n = *(size_t *)arg;
    for (size_t i = 0; i < n; i++) {
        void *p[4];
        for (int k = 0; k < 4; k++)
            p[k] = memalloc_malloc(48 * KiB);
        for (int k = 0; k < 4; k++)
            memalloc_free(p[k]);
    }
    return NULL;
}

static void test_lock_counts(void)
{
    struct memalloc_lock_stats a, b, c;
    memalloc_get_lock_stats(&a);
    size_t n = 1000;
    lock_churn(&n);
    void *big = memalloc_malloc(4 * MiB);
    memalloc_free(big);
    memalloc_get_lock_stats(&b);
    CHECK(b.class_locks - a.class_locks >= 2 * n, "%zu rounds past a bin's limit took the "
          "class locks %llu times", n, (unsigned long long)(b.class_locks - a.class_locks));
    CHECK(b.heap_locks - a.heap_locks >= 2, "a large malloc and free took the heap lock %llu "
          "times", (unsigned long long)(b.heap_locks - a.heap_locks));
    CHECK(b.class_contended == a.class_contended && b.heap_contended == a.heap_contended,
          "one thread waited for a lock: class %llu, heap %llu times",
          (unsigned long long)(b.class_contended - a.class_contended),
          (unsigned long long)(b.heap_contended - a.heap_contended));
    pthread_t t;
    size_t m = test_scaled(20000, 1000);
    CHECK(pthread_create(&t, NULL, lock_churn, &m) == 0, "pthread_create");
    lock_churn(&m);
    pthread_join(t, NULL);
    memalloc_get_lock_stats(&c);
    CHECK(c.class_locks - b.class_locks >= 4 * m, "two threads' %zu mallocs and frees took the "
          "class locks %llu times", 2 * m, (unsigned long long)(c.class_locks - b.class_locks));
    CHECK(c.class_contended - b.class_contended <= c.class_locks - b.class_locks,
          "more waits (%llu) than acquisitions (%llu)",
          (unsigned long long)(c.class_contended - b.class_contended),
          (unsigned long long)(c.class_locks - b.class_locks));
    fprintf(stderr, "locks: two threads, %llu class-lock acquisitions, %llu after a wait\n",
            (unsigned long long)(c.class_locks - b.class_locks),
            (unsigned long long)(c.class_contended - b.class_contended));
}

int main(void)
{
    /* Let memalloc set up this thread's state (a thread cache, say) before
     * any baseline is taken; test_thread_first_small_malloc covers the case
     * where that happens late. */
    void *warm = memalloc_malloc(16);
    memalloc_free(warm);
    memalloc_malloc_trim(0);

    test_retention();
    test_coalesce();
    test_counts();
    test_shrink_without_trim();
    test_footprint_fields();
    test_thread_first_small_malloc();
    test_lock_counts();
    test_big_class_cached();
    CHECK_HEAP("end");
    return check_report("test_stats");
}
