/*
 * chunk.c - small blocks: each size class carves equal blocks out of chunks
 * taken from the heap, keeps the chunks that have room on a list, trades
 * blocks with the thread caches in batches (parking whole batches that one
 * thread flushed for the next thread that refills), and gives the pages of
 * free blocks back to the kernel when purge.c's passes sweep it.
 *
 * Invariants, under the class lock (check.c walks them):
 *   - a block is in use (bit set in used_map) or free; "in use" covers
 *     blocks held by the program, by thread caches and in parked batches
 *     alike; blocks from `carved` up were never handed out;
 *   - in_use == popcount(used_map); no free block sits below word `hint`;
 *   - a page set in purged_map holds only free blocks and was given back
 *     with madvise; purged == popcount(purged_map); purged_mask is the OR
 *     of purged_map's words;
 *   - a chunk is on its class's partial list exactly when it has room and
 *     is not the class's spare; an empty chunk is either the spare or given
 *     back to the heap at once;
 *   - a chunk is on its class's candidate list exactly when `listed`.
 * Free blocks on pages that are not purged carry the free key in
 * their second word, so that freeing one again is noticed on the lock-free
 * path; the bitmap is what decides double frees and interior pointers
 * without a per-block header.
 */
#define _GNU_SOURCE
#include <string.h>

#include "chunk.h"
#include "track.h"
#include "options.h"

_Static_assert(offsetof(struct chunk, in_use) == 64,
               "what the lock-free free path reads fits the first cache line");

uintptr_t memalloc_free_key HIDDEN;
uintptr_t memalloc_link_secret HIDDEN;
size_t memalloc_chunk_noted HIDDEN; /* atomic */

void link_corrupt(const char *func, const void *p)
{
    fatal_pointer(func, "corrupted free list at", p);
}

static void partial_push(struct size_class *sc, struct chunk *c)
{
    c->prev = NULL;
    c->next = sc->partial;
    if (c->next)
        c->next->prev = c;
    sc->partial = c;
}

static void partial_remove(struct size_class *sc, struct chunk *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        sc->partial = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->next = c->prev = NULL;
}

/* ---- purging: free pages inside chunks go back with madvise --------------- */

/* Which chunks a pass purges.  Every chunk that a block came back to is on
 * its class's candidate list until a pass purges it.  A sparse one, at most
 * 1/SPARSE_DIV of its blocks in use (half, for blocks of a page or more,
 * where every free block is whole pages), is what a program leaves when it
 * frees most of what it held: a pass purges it once nobody touched it since
 * the sweep's cutoff (purge.c decides it; with nothing allocated since the
 * last pass, that is now).  A busier chunk of small blocks has few whole
 * free pages, and its free blocks are the first to be handed out again:
 * purging them costs a madvise now and page faults soon, so it waits until
 * nobody touched it for the whole delay.  Sparse chunks count towards the
 * memory that starts a pass (memalloc_chunk_noted); `listed` says 2 for
 * those, 1 for busier ones. */
#define SPARSE_DIV 16
static size_t purged_bytes;         /* statistics, atomic */
static size_t reused_bytes;         /* purged pages handed out again, atomic */

/* Every class lock is taken here, and counted (stats.c reports it). */
static inline void class_lock(struct size_class *sc)
{
    bool waited = lock_take(&sc->lock);
    sc->locks++;
    sc->contended += waited;
}

static inline bool candidate(const struct chunk *c)
{
    if (c->size >= os_page())       /* each free block is whole pages */
        return (size_t)c->in_use * 2 <= c->capacity;
    return (size_t)c->in_use * SPARSE_DIV <= c->capacity;
}

static inline void touch(struct chunk *c, uint32_t now) { c->touched = now; }

static void cand_add(struct size_class *sc, struct chunk *c)
{
    c->cand_prev = NULL;
    c->cand_next = sc->cand;
    if (c->cand_next)
        c->cand_next->cand_prev = c;
    sc->cand = c;
}

static void cand_remove(struct size_class *sc, struct chunk *c)
{
    if (!c->listed)
        return;
    if (c->cand_prev)
        c->cand_prev->cand_next = c->cand_next;
    else
        sc->cand = c->cand_next;
    if (c->cand_next)
        c->cand_next->cand_prev = c->cand_prev;
    c->cand_next = c->cand_prev = NULL;
    c->listed = 0;
}

/* Are blocks lo..hi (inclusive) all free? */
bool chunk_all_free(const struct chunk *c, size_t lo, size_t hi)
{
    for (size_t w = lo / 64; w <= hi / 64; w++) {
        uint64_t mask = ~(uint64_t)0;
        if (w == lo / 64)
            mask &= ~(uint64_t)0 << (lo % 64);
        if (w == hi / 64 && hi % 64 != 63)
            mask &= ((uint64_t)1 << (hi % 64 + 1)) - 1;
        if (c->used_map[w] & mask)
            return false;
    }
    return true;
}

/* Bit k of the mask stands for the grains whose address / GRAIN is k
 * modulo 64, so that the fast path can index it with the block's own
 * address. */
uint64_t chunk_purged_mask(const struct chunk *c)
{
    uint64_t mask = 0;
    for (size_t w = 0; w < CHUNK_MAX_GRAINS / 64; w++)
        mask |= c->purged_map[w];
    unsigned r = (unsigned)((uintptr_t)c / GRAIN) & 63;
    return r ? (mask << r) | (mask >> (64 - r)) : mask;
}

static void set_purged_mask(struct chunk *c)
{
    __atomic_store_n(&c->purged_mask, chunk_purged_mask(c), __ATOMIC_RELEASE);
}

/* madvise every kernel page of c that holds only free blocks and may hold
 * data, in runs.  The bitmap is kept in grains, and a kernel page is one or
 * more whole grains (the chunk is unit-aligned): a page goes back whole,
 * and all its grains are marked.  The header's page stays.  Class lock
 * held: a block cannot be taken from a page while it is being purged.
 *
 * Ordering: the mask is stored (release) before madvise wipes the free
 * keys; a lock-free free that reads a wiped key has taken the page fault
 * that maps the page back, under the page-table lock madvise took after
 * the store, so it reads the new mask (see tcache_block_plausible).  With
 * MADV_FREE a key may survive the purge: the mask still sends such a free
 * to the bitmap. */
static void purge_chunk(struct chunk *c)
{
    const size_t grains = c->s.units * (UNIT / GRAIN);
    const size_t page = os_page(), step = page / GRAIN;
    if (page > UNIT)
        return;
    size_t end = grains;
    if (c->fresh) {     /* pages above the carved blocks were never touched */
        size_t touched = c->data_off + (size_t)c->carved * c->size;
        end = (touched + page - 1) / page * step;
        if (end > grains)
            end = grains;
    }
    uint64_t newly[CHUNK_MAX_GRAINS / 64] = {0};   /* first grains of pages this call purges */
    size_t first = (c->data_off + page - 1) / page * step;
    for (size_t pg = first; pg + step <= end; pg += step) {
        size_t lo = (pg * GRAIN - c->data_off) / c->size;
        size_t hi = ((pg + step) * GRAIN - 1 - c->data_off) / c->size;
        if (hi >= c->capacity)
            hi = c->capacity - 1;
        if (lo > hi || !chunk_all_free(c, lo, hi))
            continue;
        /* Only grains that hold part of a block are marked: taking the
         * blocks back unmarks them all again. */
        for (size_t g = pg; g < pg + step; g++) {
            if (!bit_get(c->purged_map, g) &&
                (g * GRAIN - c->data_off) / c->size < c->capacity) {
                c->purged_map[g / 64] |= (uint64_t)1 << (g % 64);
                c->purged++;
                newly[pg / 64] |= (uint64_t)1 << (pg % 64);
            }
        }
    }
    set_purged_mask(c);
    bool lazy = option(OPT_PURGE_LAZY) != 0;
    char *run = NULL;
    for (size_t pg = first; pg <= end; pg += step) {
        if (pg + step <= end && bit_get(newly, pg)) {
            if (!run)
                run = (char *)c + pg * GRAIN;
        } else if (run) {
            size_t done = os_purge(run, (size_t)((char *)c + pg * GRAIN - run), lazy);
            __atomic_add_fetch(&purged_bytes, done, __ATOMIC_RELAXED);
            run = NULL;
        }
    }
}

static size_t resident_estimate(const struct chunk *c);
static void return_list(struct size_class *sc, void *list, unsigned n, uint32_t now);

/* Purge every candidate that nobody touched after sw->before; count the
 * others as spared.  One class lock at a time. */
void chunk_sweep(struct sweep *sw)
{
    for (unsigned cls = 0; cls < NUM_CLASSES; cls++) {
        struct size_class *sc = &memalloc_classes[cls];
        if (!__atomic_load_n(&sc->cand, __ATOMIC_RELAXED) &&
            !__atomic_load_n(&sc->parked, __ATOMIC_RELAXED))
            continue;
        class_lock(sc);
        /* Batches parked for refills that have not come for the whole
         * delay go back to their chunks, dated as old as they are, so
         * that this sweep can purge the chunks they kept busy. */
        if (sc->parked && (int32_t)(sc->refilled - (uint32_t)sw->idle) <= 0)
            while (sc->parked) {
                sc->parked--;
                return_list(sc, sc->parked_list[sc->parked], sc->parked_count[sc->parked],
                            (uint32_t)sw->idle);
            }
        for (struct chunk *c = sc->cand, *next; c; c = next) {
            next = c->cand_next;
            /* Wrapping every 49 days: the touch is within 2^31 ms of now. */
            uint64_t cutoff = candidate(c) ? sw->before : sw->idle;
            int32_t after = (int32_t)(c->touched - (uint32_t)cutoff);
            if (after <= 0) {
                purge_chunk(c);
                cand_remove(sc, c);
            } else {
                uint64_t touched = cutoff + (uint32_t)after;
                sw->spared += resident_estimate(c);
                if (touched < sw->oldest)
                    sw->oldest = touched;
            }
        }
        pthread_mutex_unlock(&sc->lock);
    }
}

/* Is any chunk waiting on a candidate list, or any batch parked?  Racy: it
 * only tells the background thread whether a pass could find something. */
bool chunk_listed(void)
{
    for (unsigned cls = 0; cls < NUM_CLASSES; cls++)
        if (__atomic_load_n(&memalloc_classes[cls].cand, __ATOMIC_RELAXED) ||
            __atomic_load_n(&memalloc_classes[cls].parked, __ATOMIC_RELAXED))
            return true;
    return false;
}

/* malloc_trim: every chunk with a free block, candidate or not, now. */
void chunk_purge_everything(void)
{
    for (unsigned cls = 0; cls < NUM_CLASSES; cls++) {
        struct size_class *sc = &memalloc_classes[cls];
        class_lock(sc);
        for (struct chunk *c = sc->partial; c; c = c->next) {
            purge_chunk(c);
            cand_remove(sc, c);
        }
        if (sc->spare) {
            purge_chunk(sc->spare);
            cand_remove(sc, sc->spare);
        }
        pthread_mutex_unlock(&sc->lock);
    }
}

size_t chunk_purged_bytes(void)
{
    return __atomic_load_n(&purged_bytes, __ATOMIC_RELAXED);
}

size_t chunk_reused_bytes(void)
{
    return __atomic_load_n(&reused_bytes, __ATOMIC_RELAXED);
}

/* ---- slow path: a new chunk for the class ------------------------------- */

/* Hardened mode hands out blocks that read zero (harden.c zeroes them at
 * free).  Blocks carved for the first time from a chunk on memory that held
 * data are zeroed as a batch takes them: blocks first..end-1 of c, the last
 * ones of the batch so far and consecutive (a batch takes the lowest free
 * block first), with their key and links written again.  Zeroing only what
 * is carved keeps untouched pages untouched. */
static void zero_carved(struct chunk *c, size_t first, size_t end)
{
    char *p = (char *)c->blocks + first * c->size;
    memset(p, 0, (end - first) * c->size);
    for (size_t i = first; i < end; i++, p += c->size) {
        void **q = (void **)p;
        q[1] = (void *)memalloc_free_key;
        if (i + 1 < end)            /* the last one's link is the caller's */
            q[0] = link_hide(q, p + c->size);
    }
}

static NOINLINE struct chunk *chunk_new(struct size_class *sc, unsigned cls)
{
    struct chunk *c = sc->spare;
    if (c) {
        sc->spare = NULL;
        partial_push(sc, c);
        return c;
    }
    bool fresh;
    struct span *s = heap_alloc_span(sc->units, &fresh);
    if (!s)
        return NULL;
    c = (struct chunk *)s;
    c->s.kind = SPAN_CHUNK;
    c->cls = (uint8_t)cls;
    c->bin = (uint16_t)(cls * TBIN_BYTES);
    c->capacity = sc->capacity;
    c->in_use = 0;
    c->carved = 0;
    c->purged_mask = 0;
    c->hint = 0;
    c->purged = 0;
    c->listed = 0;
    c->cand_next = c->cand_prev = NULL;
    c->data_off = sc->data_off;
    c->blocks = (uintptr_t)c + sc->data_off;
    c->inv = sc->inv;
    c->shift = (uint8_t)sc->shift;
    c->size = sc->size;
    c->fresh = fresh;
    if (!fresh) {
        memset(c->used_map, 0, sizeof c->used_map);
        memset(c->purged_map, 0, sizeof c->purged_map);
        if (option(OPT_HARDEN))
            memset(chunk_live_map(c), 0, c->data_off - CHUNK_HDR_SIZE);
    }
    /* Publishing the chunk in the map last: free() trusts these bytes. */
    size_t u = unit_index((uintptr_t)c);
    for (size_t k = 0; k < sc->units; k++)
        memalloc_unit_map[u + k] = (uint8_t)(MAP_SMALL | k);
    sc->chunks++;
    partial_push(sc, c);
    track_chunk_blocks((void *)c->blocks, (size_t)c->capacity * c->size);
    return c;
}

/* The chunk's pages that may still be resident: what it adds to the free
 * memory waiting for a purge pass when it turns sparse.  Counting freed
 * bytes instead would miss that freeing one small block can leave a whole
 * page free, and would count every block of a busy chunk's churn. */
static size_t resident_estimate(const struct chunk *c)
{
    size_t grains = c->s.units * (UNIT / GRAIN);
    if (c->fresh) {
        size_t touched = (c->data_off + (size_t)c->carved * c->size + GRAIN - 1) / GRAIN;
        grains = touched < grains ? touched : grains;
    }
    return (grains > c->purged ? grains - c->purged : 1) * GRAIN;
}

static void chunk_retire(struct size_class *sc, struct chunk *c)
{
    if (c->listed < 2)              /* a sparse candidate's pages were noted already */
        __atomic_add_fetch(&memalloc_chunk_noted, resident_estimate(c), __ATOMIC_RELAXED);
    cand_remove(sc, c);
    size_t u = unit_index((uintptr_t)c);
    for (size_t k = 1; k < c->s.units; k++)
        memalloc_unit_map[u + k] = MAP_NONE;
    sc->chunks--;
    heap_free_span(&c->s, resident_estimate(c));
}

/* ---- taking and putting back blocks (class lock held) -------------------- */

/* Grain pg of c comes back into use: its free blocks lost their free key
 * when it was purged, and with the grain's mask bit about to clear the
 * lock-free path would trust them again, so a second free of one of them
 * would go into a cache while the bitmap still calls it free.  Give every
 * free block that starts in the grain its key back. */
static void rekey_grain(struct chunk *c, size_t pg, size_t taken)
{
    size_t lo_off = pg * GRAIN, hi_off = lo_off + GRAIN;
    if (hi_off <= c->data_off)
        return;
    size_t first = lo_off > c->data_off ? (lo_off - c->data_off + c->size - 1) / c->size : 0;
    size_t end = (hi_off - c->data_off + c->size - 1) / c->size;
    if (end > c->carved)
        end = c->carved;
    for (size_t i = first; i < end; i++)
        if (i != taken && !bit_get(c->used_map, i))
            ((void **)((char *)c + c->data_off + i * c->size))[1] = (void *)memalloc_free_key;
}

/* Taking block idx out of purged grains makes them live again.  The rest
 * of their kernel page stays marked: its free blocks read as zero, without
 * their keys, which is all that a purged grain promises. */
static NOINLINE void unpurge(struct chunk *c, size_t idx)
{
    size_t first = (c->data_off + idx * c->size) / GRAIN;
    size_t last = (c->data_off + (idx + 1) * c->size - 1) / GRAIN;
    size_t reused = 0;
    for (size_t pg = first; pg <= last; pg++) {
        if (bit_get(c->purged_map, pg)) {
            rekey_grain(c, pg, idx);
            c->purged_map[pg / 64] &= ~((uint64_t)1 << (pg % 64));
            c->purged--;
            reused += GRAIN;
        }
    }
    if (reused)
        __atomic_add_fetch(&reused_bytes, reused, __ATOMIC_RELAXED);
    set_purged_mask(c);
}

/* The lowest free block: keeping the low blocks busy leaves whole pages
 * free at the high end, where they can be purged.  *was_carved tells
 * whether the block had been handed out before. */
static inline void *take_block(struct chunk *c, bool *was_carved)
{
    size_t w = c->hint;
    while (c->used_map[w] == ~(uint64_t)0)
        w++;
    c->hint = (uint32_t)w;
    size_t idx = w * 64 + (size_t)__builtin_ctzll(~c->used_map[w]);
    c->used_map[w] |= (uint64_t)1 << (idx % 64);
    c->in_use++;
    *was_carved = idx < c->carved;
    if (unlikely(c->purged))
        unpurge(c, idx);
    if (!*was_carved)
        __atomic_store_n(&c->carved, (uint32_t)idx + 1, __ATOMIC_RELAXED);
    return (char *)c + c->data_off + idx * c->size;
}

/* Block idx (p) is in use; mark it free.  Free blocks carry the key in their
 * second word so that freeing one again is noticed on the lock-free path. */
static inline void put_back(struct size_class *sc, struct chunk *c, void *p, size_t idx,
                            uint32_t now)
{
    c->used_map[idx / 64] &= ~((uint64_t)1 << (idx % 64));
    if (idx / 64 < c->hint)
        c->hint = (uint32_t)(idx / 64);
    ((void **)p)[1] = (void *)memalloc_free_key;
    touch(c, now);
    if (c->in_use-- == c->capacity)
        partial_push(sc, c);
    if (c->listed < 2 && candidate(c)) {
        if (!c->listed)
            cand_add(sc, c);
        c->listed = 2;
        __atomic_add_fetch(&memalloc_chunk_noted, resident_estimate(c), __ATOMIC_RELAXED);
    } else if (!c->listed) {
        cand_add(sc, c);
        c->listed = 1;
    }
    if (unlikely(c->in_use == 0)) {
        /* The spare is the lowest empty chunk: a high one would keep the
         * heap from shrinking once a program has freed everything. */
        partial_remove(sc, c);
        struct chunk *other = c;
        if (!sc->spare || c < sc->spare) {
            other = sc->spare;
            sc->spare = c;
        }
        if (other)
            chunk_retire(sc, other);
    }
}

/* ---- malloc of a small block -------------------------------------------- */

/* The class's first chunk with room, checked: a chunk on the partial list
 * always has a free block, so one that does not, or is no chunk at all,
 * had its header overwritten (by a program writing out of bounds, or by
 * another thread's sbrk racing ours and handing the same memory out
 * twice).  Stop with a message rather than loop or hand out its garbage. */
static struct chunk *partial_head(struct size_class *sc)
{
    struct chunk *c = sc->partial;
    if (unlikely(c && (c->s.kind != SPAN_CHUNK || c->in_use >= c->capacity))) {
        pthread_mutex_unlock(&sc->lock);
        fatal_pointer("malloc", "heap corruption: chunk header overwritten at", c);
    }
    return c;
}

void *chunk_alloc(unsigned cls, bool *zeroed)
{
    struct size_class *sc = &memalloc_classes[cls];
    uint32_t now = (uint32_t)os_now_ms();
    class_lock(sc);
    __atomic_store_n(&sc->refills, sc->refills + 1, __ATOMIC_RELAXED);
    sc->refilled = now;
    struct chunk *c = partial_head(sc);
    if (unlikely(!c)) {
        c = chunk_new(sc, cls);
        if (!c) {
            pthread_mutex_unlock(&sc->lock);
            return NULL;
        }
    }
    bool was_carved;
    void **p = take_block(c, &was_carved);
    touch(c, now);
    /* Fresh memory reads as zero; so, in hardened mode (set before the
     * first block and never changed), does every block that was freed:
     * harden.c zeroes it, the key aside, before it comes back here. */
    *zeroed = was_carved ? option(OPT_HARDEN) != 0 : c->fresh;
    if (!*zeroed || was_carved)
        p[1] = NULL;                /* drop the free key */
    if (c->in_use == c->capacity)
        partial_remove(sc, c);
    if (++sc->in_use > sc->peak)
        sc->peak = sc->in_use;
    pthread_mutex_unlock(&sc->lock);
    return p;
}

/* ---- validation shared by free, realloc and malloc_usable_size ----------- */

/* Index of p in c if p is a block of c that is in use; otherwise unlocks and
 * aborts with a message naming func.  Called with the class lock held. */
static size_t checked_index(struct size_class *sc, struct chunk *c, const void *p,
                            const char *func)
{
    uintptr_t off = (uintptr_t)p - (uintptr_t)c;
    const char *what = "invalid pointer";
    if (off >= c->data_off) {
        off -= c->data_off;
        size_t idx = off / c->size;     /* the block p points into */
        if (idx * c->size == off && idx < c->carved) {
            if (c->used_map[idx / 64] & ((uint64_t)1 << (idx % 64)))
                return idx;
            what = "double free";
        } else if (idx < c->carved) {
            what = "interior pointer";
        }
    }
    pthread_mutex_unlock(&sc->lock);
    fatal_pointer(func, what, p);
}

/* The chunk header itself is only trusted once its kind and class check out:
 * a stale map entry must not send us to a random lock. */
static struct size_class *lock_class_of(struct chunk *c, const void *p, const char *func)
{
    uint32_t cls = c->cls;
    if (c->s.kind != SPAN_CHUNK || cls >= NUM_CLASSES)
        fatal_pointer(func, "invalid pointer", p);
    struct size_class *sc = &memalloc_classes[cls];
    class_lock(sc);
    return sc;
}

/* Is p a carved block of c whose bit says in use?  Without the lock: the
 * bit of a block the caller owns cannot change under us; a racing batch may
 * rewrite the other bits of the word, hence the atomic read. */
bool chunk_block_live(const struct chunk *c, const void *p)
{
    if (c->s.kind != SPAN_CHUNK)
        return false;
    uint64_t idx = block_number(c, (uintptr_t)p - c->blocks);
    return idx < __atomic_load_n(&c->carved, __ATOMIC_RELAXED) &&
           ((__atomic_load_n(&c->used_map[idx / 64], __ATOMIC_RELAXED) >> (idx % 64)) & 1);
}

size_t chunk_block_size(struct chunk *c, const void *p, const char *func)
{
    /* Anything but the common case takes the locked path, which reports. */
    if (chunk_block_live(c, p))
        return c->size;
    struct size_class *sc = lock_class_of(c, p, func);
    checked_index(sc, c, p, func);
    size_t size = c->size;
    pthread_mutex_unlock(&sc->lock);
    return size;
}

/* ---- free of a small block ---------------------------------------------- */

void chunk_free(struct chunk *c, void *p, const char *func)
{
    uint32_t now = (uint32_t)os_now_ms();
    struct size_class *sc = lock_class_of(c, p, func);
    size_t idx = checked_index(sc, c, p, func);
    long perturb = option(OPT_PERTURB);
    if (unlikely(perturb))
        memset(p, (int)(perturb & 0xff), c->size);
    else if (unlikely(option(OPT_HARDEN)))
        memset(p, 0, c->size);      /* a thread's cache, say: blocks come back zero */
    sc->in_use--;
    put_back(sc, c, p, idx, now);
    pthread_mutex_unlock(&sc->lock);
}

/* ---- batches for the thread caches ---------------------------------------- */

/* Up to n blocks of class cls for a thread cache, linked through their
 * first words (see link_hide) in the order taken (address order for
 * freshly carved ones), each carrying the free key as cached blocks do (a
 * parked batch comes from a cache and has them already).  The blocks are
 * written here, under the lock, so the refilling thread owns their cache
 * lines from the start.  Returns how many. */
unsigned chunk_alloc_batch(unsigned cls, void **list, unsigned n)
{
    struct size_class *sc = &memalloc_classes[cls];
    void *head = NULL, **last = NULL;
    unsigned got = 0;
    uint32_t now = (uint32_t)os_now_ms();
    class_lock(sc);
    __atomic_store_n(&sc->refills, sc->refills + 1, __ATOMIC_RELAXED);
    sc->refilled = now;
    if (sc->parked) {
        /* A parked batch goes out whole, whatever n says. */
        sc->parked--;
        *list = sc->parked_list[sc->parked];
        got = sc->parked_count[sc->parked];
        pthread_mutex_unlock(&sc->lock);
        return got;
    }
    while (got < n) {
        struct chunk *c = partial_head(sc);
        if (!c && !(c = chunk_new(sc, cls)))
            break;
        uint32_t carved = c->carved;
        while (got < n && c->in_use < c->capacity) {
            bool was_carved;
            void **p = take_block(c, &was_carved);
            p[1] = (void *)memalloc_free_key;
            if (last)
                last[0] = link_hide(last, p);
            else
                head = p;
            last = p;
            got++;
        }
        if (unlikely(c->carved > carved) && !c->fresh && option(OPT_HARDEN))
            zero_carved(c, carved, c->carved);
        touch(c, now);
        if (c->in_use == c->capacity)
            partial_remove(sc, c);
    }
    if (last)
        last[0] = link_hide(last, NULL);
    sc->in_use += got;
    if (sc->in_use > sc->peak)
        sc->peak = sc->in_use;
    pthread_mutex_unlock(&sc->lock);
    *list = head;
    return got;
}

/* Put n listed blocks back into their chunks; the bitmap catches a block
 * that reached the pool twice.  Each block is looked up before its link is
 * read, so an overwritten link stops here as a bad block of this class.
 * Class lock held. */
static void return_list(struct size_class *sc, void *list, unsigned n, uint32_t now)
{
    unsigned seen = 0;
    for (void **p = list, **next; p || seen != n; p = next) {
        void *meta;
        if (!p || seen++ == n || ptr_lookup(p, &meta) != PTR_SMALL ||
            ((struct chunk *)meta)->cls != (unsigned)(sc - memalloc_classes)) {
            pthread_mutex_unlock(&sc->lock);
            link_corrupt("free", p ? p : list);
        }
        next = link_reveal(p, p[0]);
        struct chunk *c = meta;
        put_back(sc, c, p, checked_index(sc, c, p, "free"), now);
    }
    sc->in_use -= n;
}

/* Give back n blocks of class cls (a list through their first words), each
 * validated when it entered a cache: parked whole when `park` says some
 * thread is refilling the class and a slot is free, else returned to their
 * chunks (a parked block keeps its chunk alive). */
void chunk_free_batch(unsigned cls, void *list, unsigned n, bool park)
{
    struct size_class *sc = &memalloc_classes[cls];
    uint32_t now = (uint32_t)os_now_ms();
    class_lock(sc);
    if (park && sc->parked < XFER_SLOTS) {
        sc->parked_list[sc->parked] = list;
        sc->parked_count[sc->parked] = (uint16_t)n;
        sc->parked++;
    } else {
        return_list(sc, list, n, now);
    }
    pthread_mutex_unlock(&sc->lock);
}

/* Empty the class's parking slots into its chunks, so that chunks that
 * only parked blocks kept alive can go back to the heap: nobody is taking
 * the batches (a thread cache gave up on the class) or malloc_trim asks. */
void chunk_unpark(unsigned cls)
{
    struct size_class *sc = &memalloc_classes[cls];
    uint32_t now = (uint32_t)os_now_ms();
    class_lock(sc);
    while (sc->parked) {
        sc->parked--;
        return_list(sc, sc->parked_list[sc->parked], sc->parked_count[sc->parked], now);
    }
    pthread_mutex_unlock(&sc->lock);
}

void chunk_unpark_all(void)
{
    for (unsigned cls = 0; cls < NUM_CLASSES; cls++)
        chunk_unpark(cls);
}

size_t chunk_parked_blocks(unsigned cls)
{
    const struct size_class *sc = &memalloc_classes[cls];
    size_t n = 0;
    for (unsigned i = 0; i < sc->parked; i++)
        n += sc->parked_count[i];
    return n;
}

/* Is p in one of the class's parked batches?  For the double-free check. */
bool chunk_parked_holds(unsigned cls, const void *p)
{
    struct size_class *sc = &memalloc_classes[cls];
    bool found = false;
    class_lock(sc);
    /* The links were written by a thread cache but live in free blocks:
     * look each block up before reading its link, as bin_contains does. */
    for (unsigned i = 0; i < sc->parked && !found; i++) {
        unsigned left = sc->parked_count[i];
        void *meta;
        for (void *const *q = sc->parked_list[i];
             q && left-- && !found && ptr_lookup(q, &meta) == PTR_SMALL;
             q = link_reveal(q, q[0]))
            found = q == p;
    }
    pthread_mutex_unlock(&sc->lock);
    return found;
}

/* Give every class's spare chunk back to the heap (malloc_trim). */
size_t chunk_release_spares(void)
{
    size_t n = 0;
    for (unsigned cls = 0; cls < NUM_CLASSES; cls++) {
        struct size_class *sc = &memalloc_classes[cls];
        class_lock(sc);
        struct chunk *c = sc->spare;
        if (c) {
            sc->spare = NULL;
            chunk_retire(sc, c);
            n++;
        }
        pthread_mutex_unlock(&sc->lock);
    }
    return n;
}

/* ---- set-up ------------------------------------------------------------- */

static size_t lowest_bit(size_t v) { return v & -v; }
static size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

/* Where block 0 starts (a multiple of the blocks' natural alignment) past
 * a header of header bytes, how many units a chunk spans (room for at
 * least CHUNK_MIN_BLOCKS blocks) and how many blocks it holds. */
static void geometry(size_t size, size_t header, size_t natural, size_t *data_off,
                     size_t *units, size_t *capacity)
{
    *data_off = round_up(header, natural < 64 ? 64 : natural);
    *units = (*data_off + size * CHUNK_MIN_BLOCKS + UNIT - 1) / UNIT;
    *capacity = (*units * UNIT - *data_off) / size;
    if (*capacity > CHUNK_MAX_BLOCKS)
        *capacity = CHUNK_MAX_BLOCKS;
}

/* Once, from init.c, after the first options_load (a hardened mode's chunk
 * headers hold a live map too) and classes_init: each class's chunk geometry, and
 * the free key and link secret.  The key is never zero or a plausible
 * pointer; it is readable in every free block, so the link secret is drawn
 * apart from it. */
void chunk_init(void)
{
    for (unsigned c = 0; c < NUM_CLASSES; c++) {
        struct size_class *sc = &memalloc_classes[c];
        lock_init(&sc->lock);
        size_t size = sc->size;
        /* Blocks of power-of-two classes get their natural alignment (up to a
         * page) by starting the data area at a multiple of it; that is what
         * lets small aligned requests stay in the classes. */
        size_t natural = lowest_bit(size) < CLASS_ALIGN_MAX ? lowest_bit(size) : CLASS_ALIGN_MAX;
        size_t data_off, units, capacity;
        geometry(size, CHUNK_HDR_SIZE, natural, &data_off, &units, &capacity);
        /* Hardened, a live byte for each block after the header: a bigger
         * header leaves room for no more blocks unless it takes a unit
         * more, so this ends, in one pass for every class today. */
        while (option(OPT_HARDEN) && data_off - CHUNK_HDR_SIZE < capacity)
            geometry(size, CHUNK_HDR_SIZE + capacity, natural, &data_off, &units, &capacity);
        size_t align = lowest_bit(size) < lowest_bit(data_off) ? lowest_bit(size)
                                                              : lowest_bit(data_off);
        sc->units = (uint32_t)units;
        sc->align = (uint32_t)align;
        sc->data_off = (uint32_t)data_off;
        sc->capacity = (uint32_t)capacity;
    }
    memalloc_free_key = (uintptr_t)os_random() | 1;
    memalloc_link_secret = (uintptr_t)os_random();
}

/* In a fork child only the forking thread exists; the class locks it took
 * in the prepare handler are made new. */
void chunk_fork_child(void)
{
    for (unsigned c = 0; c < NUM_CLASSES; c++)
        lock_init(&memalloc_classes[c].lock);
}
