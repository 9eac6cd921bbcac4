/*
 * test_brk.c - other code moving the break.  With memalloc blocks live, the
 * test takes its own region with sbrk(+N) (an odd size, so the break is left
 * unaligned), fills it with a pattern, and then makes memalloc grow, free
 * (the top included), realloc and trim, small and large.  Throughout: the
 * region's pattern is intact, no memalloc block overlaps it, memalloc never
 * lowers the break below the region's end, and memalloc_check() is 0.  A
 * block that was on top when the region was taken must not be given back
 * with sbrk, nor grown in place into the region.  Once memalloc has let go
 * of everything above the region, the test releases it with sbrk(-N) and
 * memalloc must keep working.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "memalloc.h"
#include "check.h"

/* The region this test owns. */
static unsigned char *own_start, *own_end;
#define OWN_SIZE (3 * 64 * KiB + 1000)

static unsigned char own_pat(size_t i) { return (unsigned char)(i * 13u + (i >> 12) + 0x5a); }

static void own_fill(void)
{
    for (size_t i = 0; i < OWN_SIZE; i++)
        own_start[i] = own_pat(i);
}

static void own_verify(const char *phase)
{
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < OWN_SIZE; i++)
        if (own_start[i] != own_pat(i)) {
            if (!bad)
                first = i;
            bad++;
        }
    CHECK(bad == 0, "%s: %zu bytes of the test's own sbrk region changed (first at +%zu)", phase,
          bad, first);
    CHECK((unsigned char *)sbrk(0) >= own_end,
          "%s: the break %p is below the end of the test's region %p", phase, sbrk(0),
          (void *)own_end);
}

/* Live memalloc blocks, checked against the region. */
#define MAXB 4096
static void *blk[MAXB];
static size_t blk_n[MAXB];

static void no_overlap(const char *phase)
{
    for (int i = 0; i < MAXB; i++) {
        if (!blk[i])
            continue;
        unsigned char *p = blk[i];
        unsigned char *e = p + memalloc_malloc_usable_size(p);
        CHECK(e <= own_start || p >= own_end,
              "%s: block [%p, %p) overlaps the test's region [%p, %p)", phase, (void *)p,
              (void *)e, (void *)own_start, (void *)own_end);
    }
}

static void blk_alloc(int i, size_t n)
{
    blk[i] = memalloc_malloc(n);
    blk_n[i] = n;
    CHECK(blk[i] != NULL, "malloc(%zu)", n);
    if (blk[i])
        memset(blk[i], (int)(i & 0xff), n < 4096 ? n : 4096);
}

static void blk_free(int i)
{
    if (blk[i]) {
        const unsigned char *c = blk[i];
        size_t n = blk_n[i] < 4096 ? blk_n[i] : 4096;
        size_t k = 0;
        while (k < n && c[k] == (unsigned char)(i & 0xff))
            k++;
        CHECK(k == n, "block %d (%zu bytes) corrupted at %zu", i, blk_n[i], k);
    }
    memalloc_free(blk[i]);
    blk[i] = NULL;
}

static void churn(const char *phase, int rounds)
{
    /* valgrind's brk segment is about 8 MiB: smaller and fewer there */
    size_t big = UNDER_VALGRIND() ? 200 * KiB : 700 * KiB;
    int nsmall = UNDER_VALGRIND() ? 400 : 1500;
    size_t spread = UNDER_VALGRIND() ? 1000 : 3000;
    for (int r = 0; r < rounds; r++) {
        /* grow the heap with large and small blocks */
        for (int i = 100; i < 106; i++)
            blk_alloc(i, big + (size_t)i * 1000);
        for (int i = 200; i < 200 + nsmall; i++)
            blk_alloc(i, 16 + (size_t)(i * 37) % spread);
        own_verify(phase);
        no_overlap(phase);
        /* free the top first, then the rest in a scramble */
        for (int i = 105; i >= 100; i -= 2)
            blk_free(i);
        own_verify(phase);
        for (int i = 200; i < 200 + nsmall; i += 3)
            blk_free(i);
        for (int i = 100; i < 106; i++)
            blk_free(i);
        for (int i = 200; i < 200 + nsmall; i++)
            blk_free(i);
        own_verify(phase);
        memalloc_malloc_trim(0);
        own_verify(phase);
        CHECK_HEAP(phase);
    }
}

int main(void)
{
    /* memalloc is in use before the test takes its region */
    for (int i = 0; i < 50; i++)
        blk_alloc(i, 100 + (size_t)i * 10);
    blk_alloc(50, 300 * KiB);
    void *top = memalloc_malloc(1 * MiB);      /* memalloc's highest block */
    CHECK(top != NULL, "malloc(1 MiB)");
    if (!top)
        return 1;
    memset(top, 0x77, 1 * MiB);
    CHECK_HEAP("before");

    unsigned char *brk_before = sbrk(0);
    own_start = sbrk(OWN_SIZE);
    if (own_start == (void *)-1) {
        fprintf(stderr, "test_brk: sbrk(%zu) failed; skipping\n", (size_t)OWN_SIZE);
        return 77;
    }
    CHECK(own_start == brk_before, "sbrk returned %p, not the old break %p", (void *)own_start,
          (void *)brk_before);
    own_end = own_start + OWN_SIZE;
    own_fill();

    /* The block under the region must neither be released with sbrk nor
     * grown in place into the region. */
    void *grown = memalloc_realloc(top, 2 * MiB);
    CHECK(grown != NULL, "realloc(top, 2 MiB) with the test's region above it");
    if (grown) {
        const unsigned char *g = grown;
        size_t k = 0;
        while (k < 1 * MiB && g[k] == 0x77)
            k++;
        CHECK(k == 1 * MiB, "realloc across the foreign region lost byte %zu", k);
        top = grown;
        blk[51] = top;              /* tracked for the overlap checks */
        blk_n[51] = 0;
    }
    own_verify("realloc of the top block");
    no_overlap("realloc of the top block");
    CHECK_HEAP("realloc of the top block");

    churn("churn with the region on top", 3);

    /* Free everything memalloc holds above and below the region. */
    blk[51] = NULL;
    memalloc_free(top);
    own_verify("free of the moved block");
    blk_free(50);
    own_verify("free of the block below the region");
    memalloc_malloc_trim(0);
    own_verify("trim");
    CHECK_HEAP("trim with the region");

    /* memalloc has let go of everything above the region: the break is the
     * region's end again, so the test can give its region back. */
    CHECK((unsigned char *)sbrk(0) == own_end,
          "memalloc still holds %td bytes above the test's region after freeing all of it",
          (unsigned char *)sbrk(0) - own_end);
    if ((unsigned char *)sbrk(0) == own_end) {
        CHECK(sbrk(-(intptr_t)OWN_SIZE) != (void *)-1, "sbrk(-N) failed");
        own_start = own_end = NULL;
        CHECK((unsigned char *)sbrk(0) == brk_before, "the break did not go back");

        /* memalloc keeps working below and above the old region */
        for (int i = 100; i < 106; i++)
            blk_alloc(i, 400 * KiB);
        for (int i = 200; i < 700; i++)
            blk_alloc(i, 50 + (size_t)i);
        CHECK_HEAP("after the region went away");
        for (int i = 100; i < 106; i++)
            blk_free(i);
        for (int i = 200; i < 700; i++)
            blk_free(i);
        CHECK_HEAP("after the region went away, freed");
        void *again = memalloc_malloc(3 * MiB);
        CHECK(again != NULL, "malloc(3 MiB) after the region went away");
        if (again)
            memset(again, 1, 3 * MiB);
        memalloc_free(again);
    }

    for (int i = 0; i < 50; i++)
        blk_free(i);
    memalloc_malloc_trim(0);
    CHECK_HEAP("end");
    return check_report("test_brk");
}
