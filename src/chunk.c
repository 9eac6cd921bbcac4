/*
 * chunk.c - small blocks: each size class carves equal blocks out of chunks
 * taken from the heap, keeps the chunks that have room on a list, and trades
 * blocks with the thread caches in batches (parking whole batches that one
 * thread flushed for the next thread that refills).
 *
 * Invariants, under the class lock (checked by chunk_check):
 *   - a chunk's blocks below `carved` are either in use (bit set in
 *     used_map) or on its free list, never both; blocks from `carved` up
 *     were never handed out;
 *   - in_use == popcount(used_map), in_use + free-list length == carved;
 *     "in use" covers blocks held by the program, by thread caches and in
 *     parked batches alike;
 *   - a chunk is on its class's partial list exactly when it has room and
 *     is not the class's spare; an empty chunk is either the spare or given
 *     back to the heap at once.
 * The bitmap is what makes double frees and interior pointers detectable
 * without a per-block header.
 */
#define _GNU_SOURCE
#include <string.h>

#include "internal.h"
#include "tcache.h"

static inline size_t block_index(const struct chunk *c, uintptr_t off)
{
    return (size_t)((off * c->div_mul) >> 40);
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

/* ---- slow path: a new chunk for the class ------------------------------- */

static NOINLINE struct chunk *chunk_new(struct size_class *sc, unsigned cls)
{
    struct chunk *c = sc->spare;
    if (c) {
        sc->spare = NULL;
        partial_push(sc, c);
        return c;
    }
    options_ensure();
    bool fresh;
    struct span *s = heap_alloc_span(sc->units, &fresh);
    if (!s)
        return NULL;
    c = (struct chunk *)s;
    c->s.kind = SPAN_CHUNK;
    c->cls = cls;
    c->capacity = sc->capacity;
    c->in_use = 0;
    c->carved = 0;
    c->free_list = NULL;
    c->data_off = sc->data_off;
    c->div_mul = sc->div_mul;
    c->size = sc->size;
    c->fresh = fresh;
    if (!fresh)
        memset(c->used_map, 0, sizeof c->used_map);
    /* Publishing the chunk in the map last: free() trusts these bytes. */
    size_t u = unit_index((uintptr_t)c);
    for (size_t k = 0; k < sc->units; k++)
        memalloc_unit_map[u + k] = (uint8_t)(MAP_SMALL | k);
    sc->chunks++;
    partial_push(sc, c);
    return c;
}

static void chunk_retire(struct size_class *sc, struct chunk *c)
{
    size_t u = unit_index((uintptr_t)c);
    for (size_t k = 1; k < c->s.units; k++)
        memalloc_unit_map[u + k] = MAP_NONE;
    sc->chunks--;
    heap_free_span(&c->s);
}

/* ---- taking and putting back blocks (class lock held) -------------------- */

static inline void *take_block(struct chunk *c)
{
    void *p = c->free_list;
    size_t idx;
    if (p) {
        c->free_list = *(void **)p;
        idx = block_index(c, (uintptr_t)p - (uintptr_t)c - c->data_off);
    } else {
        idx = c->carved;
        p = (char *)c + c->data_off + idx * c->size;
        __atomic_store_n(&c->carved, c->carved + 1, __ATOMIC_RELAXED);
    }
    c->used_map[idx / 64] |= (uint64_t)1 << (idx % 64);
    c->in_use++;
    return p;
}

/* p's bit is already clear.  Free blocks carry the key in their second word
 * so that freeing one again is noticed on the lock-free path too. */
static inline void put_back(struct size_class *sc, struct chunk *c, void *p)
{
    void **q = p;
    q[0] = c->free_list;
    q[1] = (void *)memalloc_tc_key;
    c->free_list = p;
    if (c->in_use-- == c->capacity)
        partial_push(sc, c);
    if (unlikely(c->in_use == 0)) {
        partial_remove(sc, c);
        if (!sc->spare)
            sc->spare = c;
        else
            chunk_retire(sc, c);
    }
}

/* ---- malloc of a small block -------------------------------------------- */

void *chunk_alloc(unsigned cls, bool *zeroed)
{
    struct size_class *sc = &memalloc_classes[cls];
    pthread_mutex_lock(&sc->lock);
    struct chunk *c = sc->partial;
    if (unlikely(!c)) {
        c = chunk_new(sc, cls);
        if (!c) {
            pthread_mutex_unlock(&sc->lock);
            return NULL;
        }
    }
    *zeroed = !c->free_list && c->fresh;
    void **p = take_block(c);
    if (!*zeroed)
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
        size_t idx = block_index(c, off);
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
    pthread_mutex_lock(&sc->lock);
    return sc;
}

size_t chunk_block_size(struct chunk *c, const void *p, const char *func)
{
    /* The common case without the lock: p is a carved block of c whose bit
     * says in use.  The bit of a block the caller owns cannot change under
     * us; a racing batch may rewrite the other bits of the word, hence the
     * atomic read.  Anything else takes the locked path, which reports. */
    if (c->s.kind == SPAN_CHUNK) {
        uintptr_t off = (uintptr_t)p - (uintptr_t)c - c->data_off;
        size_t idx = block_index(c, off);
        if (idx * c->size == off && idx < __atomic_load_n(&c->carved, __ATOMIC_RELAXED) &&
            ((__atomic_load_n(&c->used_map[idx / 64], __ATOMIC_RELAXED) >> (idx % 64)) & 1))
            return c->size;
    }
    struct size_class *sc = lock_class_of(c, p, func);
    checked_index(sc, c, p, func);
    size_t size = c->size;
    pthread_mutex_unlock(&sc->lock);
    return size;
}

/* ---- free of a small block ---------------------------------------------- */

void chunk_free(struct chunk *c, void *p, const char *func)
{
    struct size_class *sc = lock_class_of(c, p, func);
    size_t idx = checked_index(sc, c, p, func);
    c->used_map[idx / 64] &= ~((uint64_t)1 << (idx % 64));
    long perturb = option(OPT_PERTURB);
    if (unlikely(perturb))
        memset(p, (int)(perturb & 0xff), c->size);
    sc->in_use--;
    put_back(sc, c, p);
    pthread_mutex_unlock(&sc->lock);
}

/* ---- batches for the thread caches ---------------------------------------- */

/* Up to n blocks of class cls, linked through their first words in the order
 * taken (address order for freshly carved ones).  Returns how many. */
unsigned chunk_alloc_batch(unsigned cls, void **list, unsigned n)
{
    struct size_class *sc = &memalloc_classes[cls];
    void *head = NULL, **tail = &head;
    unsigned got = 0;
    pthread_mutex_lock(&sc->lock);
    if (sc->parked) {
        /* A parked batch goes out whole, whatever n says. */
        sc->parked--;
        *list = sc->parked_list[sc->parked];
        got = sc->parked_count[sc->parked];
        pthread_mutex_unlock(&sc->lock);
        return got;
    }
    while (got < n) {
        struct chunk *c = sc->partial;
        if (!c && !(c = chunk_new(sc, cls)))
            break;
        while (got < n && c->in_use < c->capacity) {
            void *p = take_block(c);
            *tail = p;
            tail = (void **)p;
            got++;
        }
        if (c->in_use == c->capacity)
            partial_remove(sc, c);
    }
    *tail = NULL;
    sc->in_use += got;
    if (sc->in_use > sc->peak)
        sc->peak = sc->in_use;
    pthread_mutex_unlock(&sc->lock);
    *list = head;
    return got;
}

/* Put n listed blocks back into their chunks; the bitmap catches a block
 * that reached the pool twice.  Class lock held. */
static void return_list(struct size_class *sc, void *list, unsigned n)
{
    for (void *p = list, *next; p; p = next) {
        next = *(void **)p;
        void *meta;
        if (ptr_lookup(p, &meta) != PTR_SMALL) {
            pthread_mutex_unlock(&sc->lock);
            fatal_pointer("free", "invalid pointer", p);
        }
        struct chunk *c = meta;
        size_t idx = checked_index(sc, c, p, "free");
        c->used_map[idx / 64] &= ~((uint64_t)1 << (idx % 64));
        put_back(sc, c, p);
    }
    sc->in_use -= n;
}

/* Give back n blocks of class cls (a list through their first words), each
 * validated when it entered a cache: parked whole when a slot is free,
 * else returned to their chunks. */
void chunk_free_batch(unsigned cls, void *list, unsigned n)
{
    struct size_class *sc = &memalloc_classes[cls];
    pthread_mutex_lock(&sc->lock);
    if (sc->parked < XFER_SLOTS) {
        sc->parked_list[sc->parked] = list;
        sc->parked_count[sc->parked] = (uint16_t)n;
        sc->parked++;
    } else {
        return_list(sc, list, n);
    }
    pthread_mutex_unlock(&sc->lock);
}

/* Empty every class's parking slots into the chunks (malloc_trim), so that
 * empty chunks can go back to the heap. */
void chunk_unpark_all(void)
{
    for (unsigned cls = 0; cls < NUM_CLASSES; cls++) {
        struct size_class *sc = &memalloc_classes[cls];
        pthread_mutex_lock(&sc->lock);
        while (sc->parked) {
            sc->parked--;
            return_list(sc, sc->parked_list[sc->parked], sc->parked_count[sc->parked]);
        }
        pthread_mutex_unlock(&sc->lock);
    }
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
    pthread_mutex_lock(&sc->lock);
    for (unsigned i = 0; i < sc->parked && !found; i++) {
        unsigned left = sc->parked_count[i];
        for (void *const *q = sc->parked_list[i]; q && left-- && !found; q = q[0])
            found = q == p;
    }
    pthread_mutex_unlock(&sc->lock);
    return found;
}

bool chunk_block_in_use(const struct chunk *c, const void *p)
{
    size_t idx = block_index(c, (uintptr_t)p - (uintptr_t)c - c->data_off);
    return (c->used_map[idx / 64] >> (idx % 64)) & 1;
}

/* Give every class's spare chunk back to the heap (malloc_trim). */
size_t chunk_release_spares(void)
{
    size_t n = 0;
    for (unsigned cls = 0; cls < NUM_CLASSES; cls++) {
        struct size_class *sc = &memalloc_classes[cls];
        pthread_mutex_lock(&sc->lock);
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

/* ---- checking ----------------------------------------------------------- */

static int chunk_complain(const char *what, const struct chunk *c)
{
    char buf[160];
    size_t n = 0;
    const char *parts[] = {"memalloc_check: chunk of class ", NULL};
    memcpy(buf, parts[0], strlen(parts[0]));
    n = strlen(parts[0]);
    n += fmt_unsigned(buf + n, c->cls);
    buf[n++] = ':';
    buf[n++] = ' ';
    size_t len = strlen(what);
    memcpy(buf + n, what, len);
    n += len;
    buf[n++] = '\n';
    buf[n] = '\0';
    message(buf);
    return 1;
}

/* Blocks and chunks seen per class during one memalloc_check() walk. */
static size_t seen_blocks[NUM_CLASSES], seen_chunks[NUM_CLASSES];

void chunk_check_begin(void)
{
    memset(seen_blocks, 0, sizeof seen_blocks);
    memset(seen_chunks, 0, sizeof seen_chunks);
}

int chunk_check_end(void)
{
    int bad = 0;
    for (unsigned cls = 0; cls < NUM_CLASSES; cls++) {
        const struct size_class *sc = &memalloc_classes[cls];
        for (unsigned i = 0; i < sc->parked; i++) {
            unsigned n = 0;
            for (void **q = sc->parked_list[i]; q; q = q[0]) {
                void *meta;
                if (++n > sc->parked_count[i] || ptr_lookup(q, &meta) != PTR_SMALL ||
                    ((struct chunk *)meta)->cls != cls || !chunk_block_in_use(meta, q)) {
                    struct chunk dummy = {.cls = cls};
                    bad += chunk_complain("parked batch holds a bad block", &dummy);
                    break;
                }
            }
            if (n != sc->parked_count[i]) {
                struct chunk dummy = {.cls = cls};
                bad += chunk_complain("parked batch count is wrong", &dummy);
            }
        }
        if (seen_blocks[cls] != sc->in_use || seen_chunks[cls] != sc->chunks) {
            struct chunk dummy = {.cls = cls};
            bad += chunk_complain("class totals differ from its chunks", &dummy);
        }
    }
    return bad;
}

/* Called by heap_check with every class lock and the heap lock held. */
int chunk_check(struct chunk *c)
{
    if (c->cls >= NUM_CLASSES)
        return chunk_complain("class out of range", c);
    const struct size_class *sc = &memalloc_classes[c->cls];
    seen_blocks[c->cls] += c->in_use;
    seen_chunks[c->cls]++;
    int bad = 0;
    if (c->s.units != sc->units || c->size != sc->size || c->capacity != sc->capacity ||
        c->data_off != sc->data_off)
        bad += chunk_complain("header disagrees with its class", c);
    if (c->in_use > c->carved || c->carved > c->capacity)
        return bad + chunk_complain("counts out of range", c);
    size_t bits = 0;
    for (size_t i = 0; i < CHUNK_MAX_BLOCKS / 64; i++)
        bits += (size_t)__builtin_popcountll(c->used_map[i]);
    if (bits != c->in_use)
        bad += chunk_complain("bitmap population differs from in_use", c);
    size_t listed = 0;
    uintptr_t lo = (uintptr_t)c + c->data_off;
    for (void *p = c->free_list; p; p = *(void **)p) {
        uintptr_t off = (uintptr_t)p - lo;
        size_t idx = block_index(c, off);
        if ((uintptr_t)p < lo || idx * c->size != off || idx >= c->carved)
            return bad + chunk_complain("free list leaves the chunk", c);
        if (c->used_map[idx / 64] & ((uint64_t)1 << (idx % 64)))
            bad += chunk_complain("block both free and in use", c);
        if (++listed > c->carved)
            return bad + chunk_complain("free list has a cycle", c);
    }
    if (listed + c->in_use != c->carved)
        bad += chunk_complain("free list plus in_use differ from carved", c);
    bool on_partial = false;
    for (const struct chunk *q = sc->partial; q; q = q->next)
        if (q == c)
            on_partial = true;
    bool is_spare = sc->spare == c;
    if (is_spare && c->in_use != 0)
        bad += chunk_complain("spare chunk holds blocks", c);
    if (!is_spare && on_partial != (c->in_use < c->capacity))
        bad += chunk_complain("partial list membership wrong", c);
    if (!is_spare && c->in_use == 0)
        bad += chunk_complain("empty chunk neither spare nor released", c);
    return bad;
}
