/*
 * test_keys.c - memalloc loaded when every pthread key is taken.  The
 * thread caches need one key, for the destructor that hands a cache back at
 * thread exit; without it a cache could never be returned.  The test takes
 * all PTHREAD_KEYS_MAX keys, then dlopen()s libmemalloc-prefixed (its
 * initialisation runs then, and pthread_key_create fails), and runs threads
 * that allocate and free through it.  They must work, and once they have
 * exited no block may be left in a thread cache: with a key that was never
 * created, the caches would be registered under someone else's key and
 * never flushed.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "memalloc.h"
#include "check.h"

static void *(*m_malloc)(size_t);
static void (*m_free)(void *);

static void *worker(void *arg)
{
    (void)arg;
    void *p[200];
    for (int round = 0; round < 50; round++) {
        for (int i = 0; i < 200; i++) {
            p[i] = m_malloc(16 + (size_t)(i % 40) * 24);
            if (!p[i])
                return (void *)1;
            memset(p[i], i, 16);
        }
        for (int i = 0; i < 200; i++)
            m_free(p[i]);
    }
    return NULL;
}

int main(void)
{
    const char *lib = getenv("MEMALLOC_PREFIXED_LIB");
    if (!lib) {
        fprintf(stderr, "%s: MEMALLOC_PREFIXED_LIB is not set\n", __FILE__);
        return 77;
    }
    pthread_key_t k;
    int taken = 0;
    while (pthread_key_create(&k, NULL) == 0)
        taken++;
    void *h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "%s: dlopen(%s): %s\n", __FILE__, lib, dlerror());
        return 1;
    }
    m_malloc = (void *(*)(size_t))dlsym(h, "memalloc_malloc");
    m_free = (void (*)(void *))dlsym(h, "memalloc_free");
    size_t (*get_stats)(struct memalloc_stats *, size_t) =
        (size_t (*)(struct memalloc_stats *, size_t))dlsym(h, "memalloc_get_stats");
    int (*check)(void) = (int (*)(void))dlsym(h, "memalloc_check");
    if (!m_malloc || !m_free || !get_stats || !check) {
        fprintf(stderr, "%s: dlsym failed\n", __FILE__);
        return 1;
    }
    fprintf(stderr, "took %d keys before loading memalloc\n", taken);

    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        CHECK(pthread_create(&t[i], NULL, worker, NULL) == 0, "pthread_create");
    for (int i = 0; i < 4; i++) {
        void *r = (void *)1;
        pthread_join(t[i], &r);
        CHECK(r == NULL, "thread %d: memalloc_malloc failed", i);
    }
    struct memalloc_stats st;
    get_stats(&st, sizeof st);
    CHECK(st.cached_bytes == 0, "%zu bytes left in thread caches after the threads exited",
          st.cached_bytes);
    CHECK(st.small_in_use == 0, "%zu small bytes still in use after every block was freed",
          st.small_in_use);
    CHECK(check() == 0, "memalloc_check() found broken invariants");
    return check_report(__FILE__);
}
