/*
 * larson.c - a server in the style of Larson and Krishnan's benchmark:
 * THREADS threads each keep SLOTS live blocks of 8 to 1000 bytes and, over
 * and over, free a random one and allocate a new one in its place.  Each
 * round ends the threads and hands every thread's slots to a new thread,
 * so most blocks are freed by a thread other than the one that allocated
 * them, and threads come and go as connections do.  The free phase frees
 * whatever is left.
 */
#include "wl.h"
#include <pthread.h>

#define THREADS 4
#define SLOTS 2000
#define ROUNDS 10

struct worker {
    void **slot;
    uint64_t seed, sum;
    long ops;
};

static void *serve(void *arg)
{
    struct worker *w = arg;
    for (long i = 0; i < w->ops; i++) {
        size_t k = wl_below(&w->seed, SLOTS);
        free(w->slot[k]);
        size_t n = 8 + wl_below(&w->seed, 993);
        unsigned char *p = wl_xmalloc(n);
        p[0] = (unsigned char)i;
        p[n - 1] = (unsigned char)n;
        w->sum += p[n - 1];
        w->slot[k] = p;
    }
    return NULL;
}

int main(int argc, char **argv)
{
    double scale = wl_scale(argc, argv);
    struct worker w[THREADS];
    uint64_t seed = 0x1a750;
    for (int t = 0; t < THREADS; t++) {
        w[t].slot = wl_xmalloc(SLOTS * sizeof(void *));
        for (int k = 0; k < SLOTS; k++) {
            size_t n = 8 + wl_below(&seed, 993);
            w[t].slot[k] = wl_xmalloc(n);
            memset(w[t].slot[k], t, n);
        }
        w[t].seed = seed + (uint64_t)t * 7919;
        w[t].sum = 0;
        w[t].ops = (long)(scale * 1000000 / ROUNDS);
    }
    for (int r = 0; r < ROUNDS; r++) {
        pthread_t th[THREADS];
        for (int t = 0; t < THREADS; t++)
            if (pthread_create(&th[t], NULL, serve, &w[t]) != 0)
                exit(2);
        for (int t = 0; t < THREADS; t++)
            pthread_join(th[t], NULL);
        void **first = w[0].slot;       /* every thread's slots to the next thread */
        for (int t = 0; t < THREADS - 1; t++)
            w[t].slot = w[t + 1].slot;
        w[THREADS - 1].slot = first;
    }
    uint64_t sum = 0;
    for (int t = 0; t < THREADS; t++) {
        sum += w[t].sum;
        for (int k = 0; k < SLOTS; k++)
            free(w[t].slot[k]);
        free(w[t].slot);
    }
    wl_after_free();
    return wl_report("larson", scale, sum);
}
