/*
 * harden.c - the hardened mode's checks on small blocks: a canary in the
 * last CANARY bytes of each block, derived from a per-process secret and
 * the block's address (so a value copied from one block does not fit
 * another), checked at free, realloc and malloc_usable_size; blocks zeroed
 * at free (a read after free sees zeroes, not data or free-list words) and
 * checked to be zero still when handed out again ("write after free");
 * never-used blocks on memory that held data zeroed when handed out, so
 * that fresh memory reads zero too; and each small block taken
 * from and given back to its chunk under the class lock, so that whether
 * a free is a double free is decided by the chunk's bitmap every time,
 * never by anything the program can overwrite in the block.
 *
 * Invariants: the mode is fixed before the first block is handed out
 * (init.c); the thread caches are never created in it.
 */
#define _GNU_SOURCE
#include <string.h>

#include "harden.h"
#include "options.h"

static uint64_t canary_secret;

/* ---- the quarantine ----------------------------------------------------------- */

/* Freed small blocks wait here, zeroed, in a FIFO before they go back to
 * their chunks, so that a stale pointer's write lands in a block nobody
 * was handed yet (and is caught when it is handed out), and a second free
 * of it is not the free of some new owner's block.  A block stays "in use"
 * in its chunk's bitmap while it waits: the quarantine's own table, kept
 * out of the blocks, tells that it is free.  One lock, never held while
 * any other of memalloc's locks is taken.  The arrays sit in .bss: only
 * the slots a program's quarantine reaches become resident. */
#define Q_MAX (1u << 16)            /* OPT_QUARANTINE_BLOCKS's ceiling */
#define Q_TABLE (2 * Q_MAX)         /* open addressing, at most half full */
#define Q_RELEASE 32                /* blocks one free can push out at once */

static pthread_mutex_t q_lock = PTHREAD_MUTEX_INITIALIZER;
static struct { void *p; uint32_t size; } q_ring[Q_MAX];
static size_t q_head, q_count, q_bytes;
static void *q_table[Q_TABLE];      /* the blocks in the ring, by address */

static inline size_t q_slot(const void *p)
{
    return (size_t)(((uintptr_t)p >> 4) * 0x9e3779b97f4a7c15ull >> 47) & (Q_TABLE - 1);
}

static bool q_has(const void *p)
{
    for (size_t i = q_slot(p); q_table[i]; i = (i + 1) & (Q_TABLE - 1))
        if (q_table[i] == p)
            return true;
    return false;
}

static void q_insert(void *p)
{
    size_t i = q_slot(p);
    while (q_table[i])
        i = (i + 1) & (Q_TABLE - 1);
    q_table[i] = p;
}

/* Linear probing's deletion: later entries of the run move back into the
 * hole when their home slot allows it, so that no lookup stops early. */
static void q_delete(const void *p)
{
    size_t i = q_slot(p);
    while (q_table[i] != p)
        i = (i + 1) & (Q_TABLE - 1);
    for (size_t j = (i + 1) & (Q_TABLE - 1); q_table[j]; j = (j + 1) & (Q_TABLE - 1)) {
        size_t home = q_slot(q_table[j]);
        /* Movable when home is not cyclically in (i, j]. */
        if (((j - home) & (Q_TABLE - 1)) >= ((j - i) & (Q_TABLE - 1))) {
            q_table[i] = q_table[j];
            i = j;
        }
    }
    q_table[i] = NULL;
}

/* The oldest block out of the quarantine; q_lock held, q_count > 0. */
static void *q_pop_oldest(void)
{
    size_t oldest = (q_head + Q_MAX - q_count) % Q_MAX;
    void *p = q_ring[oldest].p;
    q_bytes -= q_ring[oldest].size;
    q_count--;
    q_delete(p);
    return p;
}

/* Blocks out of the quarantine back to their chunks, outside its lock. */
static void release(void *const *out, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        void *meta;
        if (ptr_lookup(out[i], &meta) == PTR_SMALL)
            chunk_free(meta, out[i], "free");
    }
}

void harden_fork_prepare(void) { if (hardened()) pthread_mutex_lock(&q_lock); }
void harden_fork_parent(void) { if (hardened()) pthread_mutex_unlock(&q_lock); }
void harden_fork_child(void) { if (hardened()) lock_init(&q_lock); }

/* Right after the first options_load, before any block is handed out
 * (options.c takes MEMALLOC_HARDEN from that load only). */
void harden_init(void)
{
    if (!hardened())
        return;
    canary_secret = os_random();
    /* Zero fills replace junk fills: a test for stale data must see 0. */
    option_set(OPT_PERTURB, 0);
}

static inline uint64_t canary_of(const void *p)
{
    uint64_t x = ((uint64_t)(uintptr_t)p ^ canary_secret) * 0x9e3779b97f4a7c15ull;
    return x ^ (x >> 29);
}

unsigned harden_class(size_t n, size_t align)
{
    if (n > SMALL_MAX || align > CLASS_ALIGN_MAX)
        return NUM_CLASSES;
    size_t want = n + CANARY;
    if (want < align)
        want = align;
    if (want > SMALL_MAX)
        return NUM_CLASSES;
    unsigned cls = size_to_class(want);
    while (cls < NUM_CLASSES && memalloc_classes[cls].align < align)
        cls++;
    return cls;
}

/* Is the block all zeroes but for its second word (where chunk.c keeps
 * the free key, cleared by now)?  Word by word: blocks are 16-aligned,
 * their sizes multiples of 16. */
static bool zero_but_key(const char *p, size_t size)
{
    const uint64_t *w = (const uint64_t *)p;
    uint64_t any = w[0];
    for (size_t i = 2; i < size / 8; i++)
        any |= w[i];
    return any == 0;
}

void *harden_small_alloc(unsigned cls)
{
    bool zeroed;
    char *p = chunk_alloc(cls, &zeroed);
    if (!p)
        return NULL;
    size_t size = memalloc_classes[cls].size;
    if (!zeroed)                    /* never handed out, on memory that held data */
        memset(p, 0, size - CANARY);
    else if (unlikely(!zero_but_key(p, size)))
        fatal_pointer("malloc", "write after free into", p);
    uint64_t c = canary_of(p);
    memcpy(p + size - CANARY, &c, CANARY);
    return p;
}

size_t harden_small_check(struct chunk *c, const void *p, const char *func)
{
    size_t size = chunk_block_size(c, p, func);     /* stops on double free, bad p */
    uint64_t have, want = canary_of(p);
    memcpy(&have, (const char *)p + size - CANARY, CANARY);
    if (unlikely(have != want)) {
        /* A quarantined block is in use for its chunk, its canary zeroed:
         * the quarantine's table, not the block, tells which it is. */
        pthread_mutex_lock(&q_lock);
        bool waiting = q_has(p);
        pthread_mutex_unlock(&q_lock);
        bool freeing = strcmp(func, "free") == 0 || strcmp(func, "operator delete") == 0;
        if (waiting)
            fatal_pointer(func, freeing ? "double free" : "use after free", p);
        fatal_pointer(func, "overflow past the end of", p);
    }
    return size - CANARY;
}

void harden_small_free(struct chunk *c, void *p, const char *func)
{
    size_t size = harden_small_check(c, p, func) + CANARY;
    memset(p, 0, size);
    size_t max_blocks = (size_t)option(OPT_QUARANTINE_BLOCKS);
    size_t max_bytes = (size_t)option(OPT_QUARANTINE_BYTES);
    if (max_blocks == 0 || size > max_bytes) {
        chunk_free(c, p, func);     /* the bitmap decides a racing double free */
        return;
    }
    void *out[Q_RELEASE];
    unsigned n = 0;
    pthread_mutex_lock(&q_lock);
    if (unlikely(q_has(p))) {       /* a double free racing the first */
        pthread_mutex_unlock(&q_lock);
        fatal_pointer(func, "double free", p);
    }
    while (n < Q_RELEASE && q_count &&
           (q_count >= max_blocks || q_bytes + size > max_bytes))
        out[n++] = q_pop_oldest();
    q_ring[q_head].p = p;
    q_ring[q_head].size = (uint32_t)size;
    q_head = (q_head + 1) % Q_MAX;
    q_count++;
    q_bytes += size;
    q_insert(p);
    pthread_mutex_unlock(&q_lock);
    release(out, n);
}

/* malloc_trim: every quarantined block back to its chunk, so that what
 * the program freed can be given back. */
void harden_flush(void)
{
    if (!hardened())
        return;
    for (;;) {
        void *out[Q_RELEASE];
        unsigned n = 0;
        pthread_mutex_lock(&q_lock);
        while (n < Q_RELEASE && q_count)
            out[n++] = q_pop_oldest();
        pthread_mutex_unlock(&q_lock);
        if (n == 0)
            return;
        release(out, n);
    }
}

void harden_sized_delete(const void *p, size_t n, size_t align)
{
    static const char func[] = "operator delete";
    void *meta;
    switch (ptr_lookup(p, &meta)) {
    case PTR_SMALL: {
        struct chunk *c = meta;
        harden_small_check(c, p, func);
        if (harden_class(n, align > ALIGNMENT ? align : ALIGNMENT) != c->cls)
            fatal_pointer(func, "size mismatch", p);
        return;
    }
    case PTR_LARGE: {
        const struct large_block *b = meta;
        if (b->s.kind == SPAN_LARGE && (const char *)b + b->user_off == (const char *)p &&
            b->requested != n)
            fatal_pointer(func, "size mismatch", p);
        return;
    }
    case PTR_BAD:
        return;                     /* free reports it */
    }
}
