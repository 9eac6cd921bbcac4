/*
 * check.c - memalloc_check(): stop the world (every class lock, then the
 * heap lock, in the documented order) and verify every invariant that
 * heap.c and chunk.c state.  For tests and fuzzers; far too slow for
 * production use.
 */
#include "internal.h"
#include "memalloc.h"
#include "tcache.h"

__attribute__((visibility("default"))) int memalloc_check(void)
{
    ensure_init();
    for (unsigned c = 0; c < NUM_CLASSES; c++)
        pthread_mutex_lock(&memalloc_classes[c].lock);
    heap_lock();
    chunk_check_begin();
    int bad = heap_check();
    bad += chunk_check_end();
    bad += tcache_check_own();
    heap_unlock();
    for (unsigned c = NUM_CLASSES; c-- > 0;)
        pthread_mutex_unlock(&memalloc_classes[c].lock);
    return bad;
}
