/*
 * falseshare.c - false sharing between threads, the two classic ways
 * (Hoard's cache-thrash and cache-scratch tests): THREADS threads each
 * write, over and over, a small object of their own.
 *   active:  each thread allocates its objects itself; an allocator that
 *            hands neighbouring 8-byte blocks of one cache line to
 *            different threads makes their writes fight over the line.
 *   passive: the main thread allocates one object per thread and hands it
 *            over; each thread frees it and then allocates its own, so an
 *            allocator that gives the freed neighbours back to the other
 *            threads makes them share lines they never asked to share.
 * Wall time is both phases; little memory.  The free phase is the end of
 * the passive one.
 */
#include "wl.h"
#include <pthread.h>

#define THREADS 4
#define OBJ 8                       /* bytes: eight objects to a cache line */
#define WRITES 1000                 /* writes of each object before it is freed */

static long rounds;
static void *handed[THREADS];
static volatile uint64_t sink;

/* One object: written WRITES times, a byte at a time as a counter would be. */
static uint64_t hammer(unsigned char *q)
{
    volatile unsigned char *p = q;  /* every write reaches the cache line */
    for (int w = 0; w < WRITES; w++)
        for (int b = 0; b < OBJ; b++)
            p[b] = (unsigned char)(p[b] + w + b);
    uint64_t s = 0;
    for (int b = 0; b < OBJ; b++)
        s += p[b];
    return s;
}

/* A thread's own objects, one at a time: allocated, hammered, freed. */
static void own_objects(void)
{
    uint64_t s = 0;
    for (long r = 0; r < rounds; r++) {
        unsigned char *p = wl_xmalloc(OBJ);
        memset(p, 0, OBJ);
        s += hammer(p);
        free(p);
    }
    __atomic_fetch_add(&sink, s, __ATOMIC_RELAXED);
}

static void *active(void *arg)
{
    (void)arg;
    own_objects();
    return NULL;
}

static void *passive(void *arg)
{
    free(handed[(uintptr_t)arg]);   /* the main thread's block, next to the others' */
    own_objects();
    return NULL;
}

static void run(void *(*fn)(void *))
{
    pthread_t t[THREADS];
    for (uintptr_t i = 0; i < THREADS; i++)
        if (pthread_create(&t[i], NULL, fn, (void *)i) != 0)
            exit(2);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
}

int main(int argc, char **argv)
{
    double scale = wl_scale(argc, argv);
    rounds = (long)(scale * 10000);
    run(active);
    for (int i = 0; i < THREADS; i++) {   /* consecutive small blocks of one thread */
        handed[i] = wl_xmalloc(OBJ);
        memset(handed[i], 0, OBJ);
    }
    run(passive);
    wl_after_free();
    return wl_report("falseshare", scale, sink);
}
