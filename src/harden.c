/*
 * harden.c - the hardened mode's checks on small blocks: a canary in the
 * last CANARY bytes of each block, derived from a per-process secret and
 * the block's address (so a value copied from one block does not fit
 * another), checked at free, realloc and malloc_usable_size; blocks zeroed
 * at free (a read after free sees zeroes, not data or free-list words) and
 * checked to be zero still when handed out again ("write after free"); a
 * FIFO quarantine that delays their reuse; and whether a block is the
 * program's decided by its chunk's live map (chunk.h), flipped atomically
 * at hand-out and at free, never by anything the program can overwrite in
 * the block.
 *
 * Blocks travel as in the default mode, through the thread's cache (its
 * bins, which the hot paths never see in this mode: tcache.c gives them
 * the always-empty cache) and the class in batches; only the quarantine
 * is shared by every thread, behind one lock of its own.
 *
 * Invariants: the mode is fixed before the first block is handed out
 * (init.c); a small block not held by the program reads zero but for its
 * first two words, which caches and chunks use for their links and keys.
 */
#define _GNU_SOURCE
#include <string.h>

#include "harden.h"
#include "options.h"
#include "tcache.h"

static uint64_t canary_secret;

/* ---- the quarantine ----------------------------------------------------------- */

/* Freed small blocks wait here, zeroed, in a FIFO before they go back to
 * the freeing thread's cache, so that a stale pointer's write lands in a
 * block nobody was handed yet (and is caught when it is handed out), and a
 * second free of it is not the free of some new owner's block.  The ring
 * sits in .bss: only the slots a program's quarantine reaches become
 * resident.  One lock, never held while any other of memalloc's locks is
 * taken.  Each thread gathers its frees in a stage of STAGE blocks, which
 * enter the ring together: one lock per STAGE frees, not one each (the
 * stage is quarantine too, of at most STAGE blocks a thread). */
#define Q_MAX (1u << 16)            /* OPT_QUARANTINE_BLOCKS's ceiling */
#define STAGE 8
#define Q_RELEASE (4 * STAGE)       /* blocks one stage can push out at once */

static pthread_mutex_t q_lock = PTHREAD_MUTEX_INITIALIZER;
static struct { void *p; uint32_t size; } q_ring[Q_MAX];
static size_t q_head, q_count, q_bytes;

/* The oldest block out of the quarantine; q_lock held, q_count > 0. */
static void *q_pop_oldest(void)
{
    size_t oldest = (q_head + Q_MAX - q_count) % Q_MAX;
    q_bytes -= q_ring[oldest].size;
    q_count--;
    return q_ring[oldest].p;
}

/* A thread's stage: `dead` once its exit flushed it (later frees of the
 * thread skip it).  Initial-exec TLS, as tcache.c's: no allocation. */
static __thread struct {
    void *p[STAGE];
    uint32_t size[STAGE];
    uint32_t n, registered, dead;
} stage __attribute__((tls_model("initial-exec")));
static pthread_key_t stage_key;
static bool stage_key_ok;

/* Blocks that left the quarantine (or skipped it) into this thread's
 * cache, or their chunks when it has none; outside q_lock.  Their first
 * two words are checked here, before a cache writes its link and key
 * there: the rest is checked when they are handed out. */
static void release(void *const *out, unsigned n)
{
    struct tcache *t = n ? tcache_current() : NULL;
    for (unsigned i = 0; i < n; i++) {
        void **p = out[i], *meta;
        if (unlikely(p[0] || p[1]))
            fatal_pointer("free", "write after free into", p);
        struct tbin *b = t ? tcache_bin_for(t, p) : NULL;
        if (b)
            tbin_push(b, p);
        else if (t && ptr_lookup(p, &meta) == PTR_SMALL)
            tcache_free_slow(t, meta, p, "free");
        else if (ptr_lookup(p, &meta) == PTR_SMALL)
            chunk_free(meta, p, "free");
    }
}

/* The stage's blocks (and the n in `more`) into the ring, and the oldest
 * out of it while it holds more than its bounds allow. */
static void q_push(void *const *more, const uint32_t *sizes, unsigned n)
{
    size_t max_blocks = (size_t)option(OPT_QUARANTINE_BLOCKS);
    size_t max_bytes = (size_t)option(OPT_QUARANTINE_BYTES);
    void *out[Q_RELEASE];
    unsigned nout = 0;
    pthread_mutex_lock(&q_lock);
    for (unsigned i = 0; i < n; i++) {
        q_ring[q_head].p = more[i];
        q_ring[q_head].size = sizes[i];
        q_head = (q_head + 1) % Q_MAX;
        q_count++;
        q_bytes += sizes[i];
    }
    while (nout < Q_RELEASE && q_count && (q_count > max_blocks || q_bytes > max_bytes))
        out[nout++] = q_pop_oldest();
    pthread_mutex_unlock(&q_lock);
    release(out, nout);
}

static void stage_flush(void)
{
    unsigned n = stage.n;
    stage.n = 0;
    q_push(stage.p, stage.size, n);
}

/* Thread exit: the stage into the ring, where it ages like any other. */
static void stage_exit(void *arg)
{
    (void)arg;
    stage.dead = 1;
    stage_flush();
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
    stage_key_ok = pthread_key_create(&stage_key, stage_exit) == 0;
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

/* ---- the live map ---------------------------------------------------------------- */

/* The number of p in chunk c, when p is a block that was ever handed out;
 * anything else stops the process, chunk.c naming what it is. */
static size_t block_index(struct chunk *c, const void *p, const char *func)
{
    uint64_t idx = block_number(c, (uintptr_t)p - c->blocks);
    if (likely(c->s.kind == SPAN_CHUNK && idx < __atomic_load_n(&c->carved, __ATOMIC_RELAXED)))
        return idx;
    chunk_block_size(c, p, func);   /* reports it */
    fatal_pointer(func, "invalid pointer", p);
}

static inline bool live_get(struct chunk *c, size_t idx)
{
    return (__atomic_load_n(&chunk_live_map(c)[idx / 64], __ATOMIC_ACQUIRE) >> (idx % 64)) & 1;
}

/* Sets (or clears) block idx's bit; returns what it was.  Atomic: the
 * other bits of the word belong to blocks other threads hold. */
static inline bool live_flip(struct chunk *c, size_t idx, bool set)
{
    uint64_t bit = (uint64_t)1 << (idx % 64), *w = &chunk_live_map(c)[idx / 64];
    uint64_t old = set ? __atomic_fetch_or(w, bit, __ATOMIC_ACQ_REL)
                       : __atomic_fetch_and(w, ~bit, __ATOMIC_ACQ_REL);
    return (old & bit) != 0;
}

/* ---- handing out and taking back ------------------------------------------------- */

/* Is the block all zeroes from its third word on?  Blocks are 16-aligned,
 * their sizes multiples of 16. */
static bool zero_past_links(const char *p, size_t size)
{
    const uint64_t *w = (const uint64_t *)p;
    uint64_t any = 0;
    for (size_t i = 2; i < size / 8; i++)
        any |= w[i];
    return any == 0;
}

void *harden_small_alloc(unsigned cls)
{
    struct tcache *t = tcache_current();
    bool zeroed = true;
    void **p;
    if (t || (t = tcache_create())) {
        p = t->bins[cls].head;
        /* A cached block carries the free key, which tcache_pop clears. */
        if (p && unlikely(p[1] != (void *)memalloc_free_key))
            fatal_pointer("malloc", "write after free into", p);
        p = p ? tcache_pop(t, cls) : tcache_refill(t, cls);
    } else {
        p = chunk_alloc(cls, &zeroed);
    }
    if (!p)
        return NULL;
    size_t size = memalloc_classes[cls].size;
    if (!zeroed)                    /* never handed out, on memory that held data */
        memset(p, 0, size);
    else if (unlikely(!zero_past_links((const char *)p, size)))
        fatal_pointer("malloc", "write after free into", p);
    p[0] = p[1] = NULL;
    void *meta = NULL;
    if (unlikely(ptr_lookup(p, &meta) != PTR_SMALL ||
                 live_flip(meta, block_index(meta, p, "malloc"), true)))
        fatal_pointer("malloc", "corrupted heap metadata at", p);
    uint64_t canary = canary_of(p);
    memcpy((char *)p + size - CANARY, &canary, CANARY);
    return p;
}

static inline bool is_free_call(const char *func)
{
    return strcmp(func, "free") == 0 || strcmp(func, "operator delete") == 0;
}

static inline void canary_check(const void *p, size_t size, const char *func)
{
    uint64_t have, want = canary_of(p);
    memcpy(&have, (const char *)p + size - CANARY, CANARY);
    if (unlikely(have != want))
        fatal_pointer(func, "overflow past the end of", p);
}

size_t harden_small_check(struct chunk *c, const void *p, const char *func)
{
    if (unlikely(!live_get(c, block_index(c, p, func))))
        fatal_pointer(func, is_free_call(func) ? "double free" : "use after free", p);
    canary_check(p, c->size, func);
    return c->size - CANARY;
}

void harden_small_free(struct chunk *c, void *p, const char *func)
{
    /* The flip decides between two threads freeing p at once. */
    if (unlikely(!live_flip(c, block_index(c, p, func), false)))
        fatal_pointer(func, "double free", p);
    size_t size = c->size;
    canary_check(p, size, func);
    memset(p, 0, size);
    if (option(OPT_QUARANTINE_BLOCKS) == 0 || size > (size_t)option(OPT_QUARANTINE_BYTES)) {
        release(&p, 1);
        return;
    }
    uint32_t sz = (uint32_t)size;
    if (unlikely(stage.dead || !stage_key_ok)) {
        q_push(&p, &sz, 1);
        return;
    }
    if (unlikely(!stage.registered)) {
        stage.registered = 1;
        pthread_setspecific(stage_key, &stage);     /* so that exit flushes it */
    }
    stage.p[stage.n] = p;
    stage.size[stage.n] = sz;
    if (++stage.n == STAGE)
        stage_flush();
}

/* malloc_trim: every quarantined block back to a cache or chunk, so that
 * what the program freed can be given back (api.c flushes the cache next). */
void harden_flush(void)
{
    if (!hardened())
        return;
    stage_flush();
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
