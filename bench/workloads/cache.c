/*
 * cache.c - an in-memory cache that grows and shrinks: fill to a byte
 * budget while serving hits and replacing values, evict down to a tenth,
 * grow again, then evict to 5%, keeping a random scattered set of survivors
 * (what an LRU leaves).  The "free phase" is that last eviction: RSS after
 * it shows how much memory the allocator gives back while blocks all over
 * the heap are still live.
 */
#include "wl.h"

struct item { uint64_t key; size_t len; char *val; };

static struct item *items;
static size_t nitems, bytes;
static uint64_t sum;

static void put(uint64_t *r, size_t slot, uint64_t key)
{
    size_t len = wl_size(r, 32, 16384);
    char *v = wl_xmalloc(len);
    memset(v, (int)(key & 0x7f), len);
    if (slot == nitems) nitems++;
    else { bytes -= items[slot].len; free(items[slot].val); }
    items[slot] = (struct item){key, len, v};
    bytes += len;
}

static void evict(size_t slot)
{
    sum += (unsigned char)items[slot].val[items[slot].len - 1] + items[slot].key;
    bytes -= items[slot].len;
    free(items[slot].val);
    items[slot] = items[--nitems];
}

/* Serve traffic until the cache holds `target` bytes. */
static void grow(uint64_t *r, uint64_t *key, size_t target)
{
    while (bytes < target) {
        for (int hit = 0; hit < 8 && nitems; hit++) {
            struct item *it = &items[wl_below(r, nitems)];
            sum += (unsigned char)it->val[it->len / 2];
        }
        if (nitems && wl_below(r, 2) == 0) put(r, wl_below(r, nitems), (*key)++);  /* update */
        else put(r, nitems, (*key)++);                                              /* insert */
    }
}

static void shrink(uint64_t *r, size_t target)
{
    while (bytes > target && nitems) evict(wl_below(r, nitems));
}

int main(int argc, char **argv)
{
    double scale = wl_scale(argc, argv);
    uint64_t r = 0xcac4e, key = 1;
    size_t budget = (size_t)(64.0 * scale * (1 << 20));
    items = wl_xmalloc(sizeof *items * (budget / 32 + 16));

    for (int cycle = 0; cycle < 6; cycle++) {
        grow(&r, &key, budget);
        shrink(&r, budget / 10);
        grow(&r, &key, budget / 2);
        shrink(&r, budget / 10);
    }
    shrink(&r, budget / 20);                    /* the free phase */
    wl_after_free();
    sum += nitems;
    while (nitems) evict(nitems - 1);
    free(items);
    return wl_report("cache", scale, sum);
}
