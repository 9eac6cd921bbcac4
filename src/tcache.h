/*
 * tcache.h - per-thread caches: the structure and the two hot-path
 * operations, inline so that a malloc or free that hits the cache is a
 * handful of instructions with no lock, no atomic read-modify-write and no
 * call.  Everything that is not a hit lives in tcache.c.
 *
 * Invariants:
 *   - a cached block is a small block whose chunk bit says "in use" (the
 *     pool sees it as handed out); bins[c] holds blocks of class c only;
 *   - a free block, cached or in its chunk, carries memalloc_free_key in its
 *     second word unless its page is purged (then the chunk's purged_mask
 *     says so); a block handed out has that word cleared.  A free of a block
 *     that still carries the key, or whose page's mask bit is set, goes to
 *     the slow path, which decides for sure;
 *   - count <= max; the thread-local pointer is the only reference to a
 *     cache apart from the global list used for statistics and fork.
 */
#ifndef MEMALLOC_TCACHE_H
#define MEMALLOC_TCACHE_H

#include "chunk.h"

/* Every class is cached.  A malloc of up to TC_MAX_SIZE finds its class in
 * the table on the hot path; a bigger one (up to SMALL_MAX) takes the slow
 * path for its class but still pops this thread's bin, and every free of a
 * small block may take the hot path. */
#define TC_MAX_SIZE CLASS_TABLE_MAX

struct tbin {
    void *head;
    uint32_t count;
    uint16_t max;                   /* blocks the bin may hold now */
    uint16_t flushed;               /* unwanted batches flushed in a row since the
                                     * last refill; COLLAPSED (tcache.c): collapsed */
};

struct tcache {
    struct tbin bins[NUM_CLASSES];      /* first: a chunk finds its bin at cls * TBIN_BYTES */
    uint32_t seen_refills[NUM_CLASSES];  /* class refill counts last seen */
    struct tcache *next, *prev;     /* all live caches, under the list lock */
};
_Static_assert(sizeof(struct tbin) == TBIN_BYTES && offsetof(struct tcache, bins) == 0,
               "chunk.h's bin offsets");

/* This thread's cache as the hot path sees it: an always-empty cache with
 * no room (memalloc_tc_none) while the thread has none, and also while
 * MALLOC_PERTURB_ asks for junk fills, so that misses and fills happen on
 * the slow path and the hot path needs no test for either. */
extern __thread struct tcache *memalloc_tc
    __attribute__((tls_model("initial-exec"))) HIDDEN;
extern struct tcache memalloc_tc_none HIDDEN;

/* The thread's own cache, or where the thread stands without one: none
 * yet, being created (its allocations go straight to the classes), or
 * gone (the thread is exiting).  memalloc_tc is the hot path's view. */
#define TC_NONE ((struct tcache *)0)
#define TC_CREATING ((struct tcache *)1)
#define TC_DEAD ((struct tcache *)2)
extern __thread struct tcache *memalloc_tc_own
    __attribute__((tls_model("initial-exec"))) HIDDEN;

/* This thread's cache, even when perturbing or hardened; NULL for none.
 * Inline: the hardened mode's every malloc and free asks. */
static inline struct tcache *tcache_current(void)
{
    return memalloc_tc_own > TC_DEAD ? memalloc_tc_own : NULL;
}

/* ---- hot path ------------------------------------------------------------ */

static inline void *tcache_pop(struct tcache *t, unsigned cls)
{
    struct tbin *b = &t->bins[cls];
    void **p = b->head;
    if (likely(p != NULL)) {
        b->head = link_next("malloc", p);
        b->count--;
        p[1] = NULL;                /* no longer carries the free key */
    }
    return p;
}

/* Is p, inside chunk c, a block that may be freed into a cache without
 * the lock: a carved block, not carrying the free key, whose page was not
 * purged?  False leaves it to the bitmap, which decides for sure. */
static inline bool tcache_block_plausible(const struct chunk *c, const void *p)
{
    uintptr_t a = (uintptr_t)p;
    /* Interior, misaligned and never-carved pointers in one compare. */
    if (unlikely(block_number(c, a - c->blocks) >=
                 __atomic_load_n(&c->carved, __ATOMIC_RELAXED)))
        return false;
    /* The key first (acquire), then the mask: a purge stores the mask
     * (release) before its madvise wipes the keys.  A load that finds a
     * wiped key has taken the page fault that maps the page back, under
     * the page-table lock that the madvise took after storing the mask,
     * so the mask read after it is the new one on any CPU, weakly ordered
     * aarch64 included. */
    uintptr_t key = __atomic_load_n(&((const uintptr_t *)p)[1], __ATOMIC_ACQUIRE);
    uint64_t purged = __atomic_load_n(&c->purged_mask, __ATOMIC_RELAXED);
    return likely(!((purged >> ((a / GRAIN) & 63)) & 1) && key != memalloc_free_key);
}

/* The bin p may go into: p is a valid small block of a cached class, does
 * not look freed already, and the bin has room.  NULL leaves p to the slow
 * path, which validates and reports.  Writes nothing.
 *
 * Ordering: the map entry and the chunk header are read without a lock or
 * an acquire.  They were written under the class lock before p was handed
 * out, and whatever passed p to this thread (the program's own
 * synchronisation, or this thread's own malloc) orders those writes before
 * these reads in C11's happens-before.  Only a pointer that memalloc never
 * handed to anyone can race with a chunk being set up: it may then take
 * the slow path, which rechecks under the lock.  A double free racing the
 * first free of the same block on another thread may see no key: that one
 * is not caught (nor is it by glibc's tcache). */
static inline struct tbin *tcache_bin_for(struct tcache *t, const void *p)
{
    /* The range check: the unit map covers all the heap can ever span, and
     * only units of live chunks say MAP_SMALL; below the base wraps. */
    size_t u = unit_index((uintptr_t)p);
    if (unlikely(u >= MAP_UNITS))
        return NULL;
    uint8_t m = memalloc_unit_map[u];
    if (unlikely(!(m & MAP_SMALL)))
        return NULL;
    const struct chunk *c = (const struct chunk *)unit_addr(u - (m & MAP_SMALL_MAX_K));
    /* Room first: the always-empty cache (perturbing, hardened) then
     * misses before the block's own checks. */
    struct tbin *b = (struct tbin *)((char *)t + c->bin);  /* &t->bins[c->cls], one add */
    if (unlikely(b->count >= b->max))
        return NULL;
    if (unlikely(!tcache_block_plausible(c, p)))
        return NULL;
    return b;
}

static inline void tbin_push(struct tbin *b, void *p)
{
    void **q = p;
    q[1] = (void *)memalloc_free_key;
    q[0] = link_hide(q, b->head);
    b->head = q;
    b->count++;
}

/* ---- slow path (tcache.c) ------------------------------------------------- */

HIDDEN void tcache_init(void);
HIDDEN struct tcache *tcache_create(void);
HIDDEN void *tcache_refill(struct tcache *t, unsigned cls);
HIDDEN void tcache_free_slow(struct tcache *t, struct chunk *c, void *p, const char *func);
HIDDEN void tcache_flush_all(struct tcache *t);
HIDDEN bool tcache_holds(const void *p);
HIDDEN size_t tcache_cached_blocks(unsigned cls);
HIDDEN size_t tcache_count(void);
HIDDEN void tcache_list_lock(void);
HIDDEN void tcache_list_unlock(void);
HIDDEN void tcache_fork_child(void);

#endif /* MEMALLOC_TCACHE_H */
