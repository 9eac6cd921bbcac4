/*
 * test_lookup_race.c - the double-free lookup (tcache_holds) must not fault
 * while the caches it walks are being flushed.  It walks other threads'
 * bins without their owners' cooperation; a flushed block's chunk may go
 * back to the heap and the heap shrink under the walk (negative sbrk).  It
 * holds the heap lock, which keeps every span mapped, and an exiting
 * thread's cache leaves the list before it is flushed.
 *
 * One thread asks tcache_holds() about a block over and over while worker
 * threads fill their bins of the same class, free everything and exit, and
 * the trim threshold is 0, so each emptied top chunk goes back to the
 * kernel at once.  The test passes when nothing faults and the lookup never
 * claims the (live) block is cached.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internals.h"
#include "memalloc.h"
#include "check.h"

#define SIZE 1000
#define WORKERS 1000

static void *probe;
static atomic_int stop, false_hits;

static void *walker(void *arg)
{
    (void)arg;
    while (!atomic_load(&stop))
        if (tcache_holds(probe))
            atomic_fetch_add(&false_hits, 1);
    return NULL;
}

static void *worker(void *arg)
{
    (void)arg;
    void *p[400];
    for (int i = 0; i < 400; i++)
        p[i] = memalloc_malloc(SIZE);
    for (int i = 400; i-- > 0;)     /* the bin ends up holding the lowest */
        memalloc_free(p[i]);
    return NULL;                    /* exit: the cache is flushed */
}

int main(void)
{
    memalloc_free(memalloc_malloc(1));
    memalloc_options[OPT_TRIM_THRESHOLD] = 0;
    memalloc_options[OPT_RETAIN_MAX] = 0;
    /* A live block carrying the free key, as a block freed twice would:
     * every lookup walks the bins of its class in every cache. */
    probe = memalloc_malloc(SIZE);
    if (!probe)
        return 1;
    ((void **)probe)[1] = (void *)memalloc_free_key;

    pthread_t w;
    CHECK(pthread_create(&w, NULL, walker, NULL) == 0, "pthread_create");
    int n = (int)test_scaled(WORKERS, 20);
    for (int i = 0; i < n; i++) {
        pthread_t t[4];
        for (int k = 0; k < 4; k++)
            CHECK(pthread_create(&t[k], NULL, worker, NULL) == 0, "pthread_create");
        for (int k = 0; k < 4; k++)
            pthread_join(t[k], NULL);
    }
    atomic_store(&stop, 1);
    pthread_join(w, NULL);
    CHECK(atomic_load(&false_hits) == 0, "the lookup found a live block in a cache %d times",
          atomic_load(&false_hits));
    ((void **)probe)[1] = NULL;
    memalloc_free(probe);
    CHECK_HEAP("the end");
    return check_report(__FILE__);
}
