/*
 * tcache.c - the slow paths of the per-thread caches: creating a cache,
 * refilling a bin from its class in one batch, flushing half a bin back in
 * one batch, deciding suspected double frees, and handing everything back
 * when the thread exits.
 *
 * Invariants: the class lock is taken once per batch, never per block; a
 * cache is created outside every allocator lock (pthread_setspecific may
 * call malloc) and a thread that is creating or tearing down its cache
 * allocates straight from the classes; the list lock comes before every
 * class lock.
 */
#define _GNU_SOURCE
#include <string.h>

#include "tcache.h"
#include "track.h"
#include "options.h"
#include "purge.h"

struct tcache memalloc_tc_none HIDDEN;    /* every bin empty, max 0 */
__thread struct tcache *memalloc_tc __attribute__((tls_model("initial-exec"))) HIDDEN =
    &memalloc_tc_none;

/* The thread's own cache (tcache.h says what else it may hold). */
__thread struct tcache *memalloc_tc_own __attribute__((tls_model("initial-exec"))) HIDDEN;

static pthread_key_t exit_key;
static bool exit_key_ok;
static pthread_mutex_t list_mutex = PTHREAD_MUTEX_INITIALIZER;
static struct tcache *all_caches;

void tcache_list_lock(void) { pthread_mutex_lock(&list_mutex); }
void tcache_list_unlock(void) { pthread_mutex_unlock(&list_mutex); }

/* A bin starts out holding up to 16 KiB of its class (between 2 and 64
 * blocks) and takes and gives back half of its limit at a time.  The bin
 * of a class above TC_MAX_SIZE holds one block and never grows: a block
 * that big costs more to touch than a class lock, and a thread that used
 * every such class then holds 1.2 MiB in them at most.  A bin that keeps
 * running dry and overflowing in turn, because the program holds more of
 * the class at once than that, doubles its limit, up to
 * 64 KiB (at most 1024 blocks): the class lock is then taken once per many
 * operations again.  Growth past the starting limits is capped at 256 KiB
 * per thread, summed over its bins, so that a program whose threads each
 * churn dozens of classes does not pay up to 64 KiB for every one of them
 * in every thread.  (A soft cap: a refill that receives a whole parked
 * batch from another thread's bigger bin keeps it.)
 *
 * The other way round, a bin that flushed COLLAPSE_BATCHES batches (or
 * COLLAPSE_BYTES, if that is fewer batches of a big class) without a
 * refill of its own, while no thread refilled the class either, serves a
 * thread that only frees that class and nobody wants the blocks back:
 * caching them buys nothing and pins a block, and so a page, in every
 * chunk they came from.  Such a bin collapses: its class's parked batches
 * go back to their chunks, and the bin keeps only an eighth of its usual
 * limit (1 to 8 blocks), flushed whole each time it fills, until a refill
 * of the bin or of the class by another thread turns it back. */
#define BIN_MOST 1024               /* no bin ever holds more */
#define BIN_START_BYTES ((size_t)16 << 10)
#define BIN_CAP_BYTES ((size_t)64 << 10)
#define THREAD_GROWTH_BYTES ((size_t)256 << 10)
#define COLLAPSE_BATCHES 16
#define COLLAPSE_BYTES ((size_t)128 << 10)
#define COLLAPSED 0xffff            /* tbin.flushed of a collapsed bin */

static uint16_t bin_limit(unsigned cls, size_t bytes, size_t most)
{
    size_t size = memalloc_classes[cls].size;
    if (size > TC_MAX_SIZE)
        return 1;
    size_t n = bytes / size;
    return (uint16_t)(n < 2 ? 2 : n > most ? most : n);
}
static uint16_t bin_max(unsigned cls) { return bin_limit(cls, BIN_START_BYTES, 64); }
static uint16_t bin_cap(unsigned cls) { return bin_limit(cls, BIN_CAP_BYTES, BIN_MOST); }

static uint16_t bin_collapsed(unsigned cls)
{
    uint16_t n = bin_max(cls) / 8;
    return n < 1 ? 1 : n > 8 ? 8 : n;
}

/* ---- batches ---------------------------------------------------------------- */

void *tcache_refill(struct tcache *t, unsigned cls)
{
    struct tbin *b = &t->bins[cls];
    if (b->flushed == COLLAPSED)
        b->max = bin_max(cls);
    void *list;
    unsigned got = chunk_alloc_batch(cls, &list, b->max / 2 ? b->max / 2 : 1);
    if (!got)
        return NULL;
    b->head = list;                 /* keyed and linked by the class */
    b->count = got;
    if (b->count > b->max)          /* a parked batch from a bigger bin */
        b->max = (uint16_t)b->count;
    b->flushed = 0;
    return tcache_pop(t, cls);
}

/* Return the first n blocks of bin cls to their class, parked for another
 * thread's refill if park. */
static void flush(struct tcache *t, unsigned cls, uint32_t n, bool park)
{
    struct tbin *b = &t->bins[cls];
    if (n > b->count)
        n = b->count;
    if (n == 0)
        return;
    void **last = b->head;
    for (uint32_t i = 1; i < n; i++)
        last = link_next("free", last);
    void *list = b->head;
    b->head = link_next("free", last);
    last[0] = link_hide(last, NULL);
    b->count -= n;
    chunk_free_batch(cls, list, n, park);
}

/* Has any thread refilled class cls since this cache last looked?  A racy
 * read is fine: it only steers a heuristic. */
static bool class_wanted(struct tcache *t, unsigned cls)
{
    uint32_t now = __atomic_load_n(&memalloc_classes[cls].refills, __ATOMIC_RELAXED);
    bool wanted = now != t->seen_refills[cls];
    t->seen_refills[cls] = now;
    return wanted;
}

/* Every bin back to the classes, each parked whole for the next refill if
 * hand_on and some thread refilled its class since t last looked; the
 * caller looks for a purge. */
static void flush_bins(struct tcache *t, bool hand_on)
{
    for (unsigned c = 0; c < NUM_CLASSES; c++)
        if (t->bins[c].count)
            flush(t, c, t->bins[c].count, hand_on && class_wanted(t, c));
}

void tcache_flush_all(struct tcache *t) { flush_bins(t, false); }

/* ---- double-free decision ------------------------------------------------------ */

/* Other threads change their bins without a lock while we look, so the walk
 * is bounded and stops at anything that is not a small block: a torn list
 * may hide p (the free then proceeds, as without caches), never crash us. */
static bool bin_contains(const struct tbin *b, const void *p)
{
    uint32_t left = BIN_MOST;
    void *const *q = __atomic_load_n(&b->head, __ATOMIC_RELAXED);
    void *meta;
    while (q && left-- > 0 && ptr_lookup(q, &meta) == PTR_SMALL) {
        if (q == p)
            return true;
        q = link_reveal(q, __atomic_load_n(&q[0], __ATOMIC_RELAXED));
        if (!link_plausible(q))
            break;
    }
    return false;
}

/* Is p sitting in any thread's cache, or parked in its class?  Only asked
 * when p carries the free key, so a false alarm costs one scan and is then
 * ignored.  p can only be in the bins of its own class.  The walk reads
 * blocks that their owners may flush meanwhile, and a flushed block's chunk
 * may go back to the heap: the heap lock, held throughout, keeps every
 * span mapped (nothing is given back with sbrk while it is held), and the
 * map still says which units are chunks. */
bool tcache_holds(const void *p)
{
    bool found = false;
    void *meta;
    if (ptr_lookup(p, &meta) != PTR_SMALL)
        return false;
    unsigned cls = ((const struct chunk *)meta)->cls;
    tcache_list_lock();
    heap_lock();
    for (struct tcache *t = all_caches; t && !found; t = t->next)
        found = bin_contains(&t->bins[cls], p);
    heap_unlock();
    tcache_list_unlock();
    if (!found)
        found = chunk_parked_holds(cls, p);
    return found;
}


/* How far t's bins have grown past their starting limits, in bytes. */
static size_t grown_bytes(const struct tcache *t)
{
    size_t n = 0;
    for (unsigned c = 0; c < NUM_CLASSES; c++) {
        uint16_t base = bin_max(c);
        if (t->bins[c].max > base)
            n += (size_t)(t->bins[c].max - base) * memalloc_classes[c].size;
    }
    return n;
}

/* Bin cls is full: grow it; or flush half of it, parked for another
 * thread's refill if some thread refilled the class meanwhile; or
 * collapse it. */
static void make_room(struct tcache *t, unsigned cls)
{
    struct tbin *b = &t->bins[cls];
    uint16_t cap = bin_cap(cls);
    if (b->flushed == 0 && b->max < cap &&  /* refilled since the last overflow: grow */
        grown_bytes(t) + (size_t)b->max * memalloc_classes[cls].size <= THREAD_GROWTH_BYTES) {
        b->max = (uint16_t)(b->max * 2 < cap ? b->max * 2 : cap);
        b->flushed = 1;
        return;
    }
    bool wanted = class_wanted(t, cls);
    uint32_t batch = b->max / 2 ? b->max / 2 : 1;
    flush(t, cls, batch, wanted);
    size_t batch_bytes = (size_t)batch * memalloc_classes[cls].size;
    uint16_t enough = COLLAPSE_BYTES / batch_bytes < COLLAPSE_BATCHES
                          ? (uint16_t)(COLLAPSE_BYTES / batch_bytes + 1) : COLLAPSE_BATCHES;
    if (!wanted && b->flushed >= enough) {
        flush(t, cls, b->count, false);
        b->max = bin_collapsed(cls);
        b->flushed = COLLAPSED;
        chunk_unpark(cls);
    } else if (wanted) {            /* only batches in a row that nobody wanted count */
        b->flushed = 1;
    } else if (b->flushed < COLLAPSE_BATCHES) {
        b->flushed++;
    }
    if (!wanted)
        purge_maybe();
}

/* A free into a full collapsed bin: the stash goes back to the chunks
 * whole, and the bin turns back to normal if some thread refilled the
 * class meanwhile (a refill of this bin does that by itself). */
static void collapsed_flush(struct tcache *t, unsigned cls)
{
    struct tbin *b = &t->bins[cls];
    flush(t, cls, b->count, false);
    if (class_wanted(t, cls)) {
        b->max = bin_max(cls);
        b->flushed = 1;
    }
    purge_maybe();
}

/* Every small free that the hot path did not finish: t may be NULL (no
 * cache in this thread), p may be anything inside a chunk.  The hot path
 * gives up on full or collapsed bins and on blocks whose page was purged,
 * where the free key may be gone; here the hot path's checks are tried
 * again and, where they cannot tell, the chunk's bitmap decides. */
void tcache_free_slow(struct tcache *t, struct chunk *c, void *p, const char *func)
{
    if (((void **)p)[1] == (void *)memalloc_free_key && tcache_holds(p))
        fatal_pointer(func, "double free", p);
    struct tbin *b = NULL;
    if (t && c->s.kind == SPAN_CHUNK &&
        (tcache_block_plausible(c, p) || chunk_block_live(c, p))) {
        b = &t->bins[c->cls];
        if (b->count >= b->max) {
            if (b->flushed == COLLAPSED)
                collapsed_flush(t, c->cls);
            else
                make_room(t, c->cls);
        }
    }
    if (!b) {                       /* no cache, or not a live block */
        chunk_free(c, p, func);
        purge_maybe();
        return;
    }
    long perturb = option(OPT_PERTURB);
    if (perturb)
        memset(p, (int)(perturb & 0xff), c->size);
    tbin_push(b, p);
}

/* ---- life cycle -------------------------------------------------------------------- */

static void list_remove(struct tcache *t)
{
    tcache_list_lock();
    if (t->prev)
        t->prev->next = t->next;
    else
        all_caches = t->next;
    if (t->next)
        t->next->prev = t->prev;
    tcache_list_unlock();
}

/* The cache leaves the list before it is flushed, so that no double-free
 * lookup walks blocks that are going back to their chunks.  A double free
 * racing the exit, of a block still in this cache, is then not found by the
 * lookup: like the race described at tcache_bin_for, that one is missed. */
static void thread_exit(void *arg)
{
    struct tcache *t = arg;
    track_quiet_begin();
    memalloc_tc_own = TC_DEAD;      /* later frees and mallocs bypass caches */
    memalloc_tc = &memalloc_tc_none;
    list_remove(t);
    /* What other threads are refilling is parked for them whole: a thread
     * that lived for a few allocations hands its batches on in O(1). */
    flush_bins(t, true);
    void *meta;
    if (ptr_lookup(t, &meta) == PTR_SMALL)
        chunk_free(meta, t, "free");
    purge_maybe();
    track_quiet_end();
}

/* Every new cache starts as a copy of these: filled once, so that a
 * short-lived thread pays no per-class arithmetic. */
static struct tbin fresh_bins[NUM_CLASSES];

/* Without a key a cache could never be handed back at thread exit: then
 * there are no caches (all PTHREAD_KEYS_MAX keys may be taken). */
void tcache_init(void)
{
    for (unsigned c = 0; c < NUM_CLASSES; c++)
        fresh_bins[c] = (struct tbin){.max = bin_max(c)};
    exit_key_ok = pthread_key_create(&exit_key, thread_exit) == 0;
}

struct tcache *tcache_create(void)
{
    if (memalloc_tc_own != TC_NONE || !option(OPT_TCACHE) || !exit_key_ok)
        return NULL;
    memalloc_tc_own = TC_CREATING;
    bool zeroed;
    struct tcache *t = chunk_alloc(size_to_class(sizeof *t), &zeroed);
    if (!t) {
        memalloc_tc_own = TC_NONE;
        return NULL;
    }
    track_internal(t, sizeof *t);
    memcpy(t->bins, fresh_bins, sizeof t->bins);
    memset(t->seen_refills, 0, sizeof t->seen_refills);
    t->prev = NULL;
    tcache_list_lock();
    t->next = all_caches;
    if (t->next)
        t->next->prev = t;
    all_caches = t;
    tcache_list_unlock();
    /* May allocate (keys past the first 32); we are TC_CREATING, so that
     * allocation goes straight to the classes.  If it fails, the cache
     * would never be flushed at exit: this thread does without one. */
    if (pthread_setspecific(exit_key, t) != 0) {
        list_remove(t);
        void *meta;
        if (ptr_lookup(t, &meta) == PTR_SMALL)
            chunk_free(meta, t, "free");
        memalloc_tc_own = TC_DEAD;
        return NULL;
    }
    memalloc_tc_own = t;
    /* Perturbing and hardened processes keep the cache for their slow
     * paths only: the hot paths always miss. */
    memalloc_tc = option(OPT_PERTURB) || option(OPT_HARDEN) ? &memalloc_tc_none : t;
    return t;
}

/* In the child of fork only this thread exists: the other caches can never
 * be used again.  Their blocks stay counted as in use (a leak, never a
 * crash); forgetting the caches keeps statistics and checks meaningful. */
void tcache_fork_child(void)
{
    pthread_mutex_init(&list_mutex, NULL);
    all_caches = tcache_current();
    if (all_caches)
        all_caches->next = all_caches->prev = NULL;
}

/* ---- statistics and checking --------------------------------------------------- */

size_t tcache_count(void)
{
    size_t n = 0;
    tcache_list_lock();
    for (struct tcache *t = all_caches; t; t = t->next)
        n++;
    tcache_list_unlock();
    return n;
}

/* Blocks of class cls that the pool counts as in use but the program does
 * not hold: those in caches, and the caches' own structures. */
size_t tcache_cached_blocks(unsigned cls)
{
    size_t n = 0;
    bool own = cls == size_to_class(sizeof(struct tcache));
    tcache_list_lock();
    for (struct tcache *t = all_caches; t; t = t->next)
        n += own + __atomic_load_n(&t->bins[cls].count, __ATOMIC_RELAXED);
    tcache_list_unlock();
    return n;
}
