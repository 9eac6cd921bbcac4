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
#include <errno.h>
#include <string.h>

#include "harden.h"
#include "options.h"
#include "purge.h"
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
        else if (ptr_lookup(p, &meta) != PTR_SMALL)
            continue;               /* cannot happen: it was vouched for at free */
        else if (t)
            tcache_free_slow(t, meta, p, "free");   /* makes room in the bin */
        else
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

/* Also where a hardened program's frees give purging its chance: once a
 * stage, not once a free (purge_maybe reads the clock). */
static void stage_flush(void)
{
    unsigned n = stage.n;
    stage.n = 0;
    q_push(stage.p, stage.size, n);
    purge_maybe();
}

/* Thread exit: the stage into the ring, where it ages like any other. */
static void stage_exit(void *arg)
{
    (void)arg;
    stage.dead = 1;
    stage_flush();
}

/* malloc(0)'s slots (see harden_zero_alloc), under q_lock too. */
#define ZERO_SLOTS (1u << 16)

static char *zero_base;
static uint64_t zero_map[ZERO_SLOTS / 64];
static size_t zero_hint;            /* no free slot in words below */

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
    /* Above all the heap could ever span: the break must not run into it. */
    zero_base = os_reserve_none((size_t)ZERO_SLOTS * ALIGNMENT,
                                (uintptr_t)raw_break() + (MAP_UNITS << UNIT_SHIFT));
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
 * their sizes multiples of 16.  Big ones are compared with a page of
 * zeroes by libc's memcmp, which uses the machine's widest loads. */
static const char zero_page[4096];

static bool zero_past_links(const char *p, size_t size)
{
    if (size > 256) {
        for (size_t off = 16; off < size; off += sizeof zero_page) {
            size_t len = size - off < sizeof zero_page ? size - off : sizeof zero_page;
            if (memcmp(p + off, zero_page, len) != 0)
                return false;
        }
        return true;
    }
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
        purge_maybe();
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

/* ---- large blocks ------------------------------------------------------------------ */

/* A hardened large block has its user pointer on a page of its own above
 * the header (the alignment path of large_alloc), the bytes from its end
 * to the next page boundary filled with a pattern (checked at free, at
 * realloc and by malloc_usable_size), and every page after that to the
 * end of its span inaccessible: at least one guard page, so that an
 * overflow into the next span faults at once.  Freed, its pages are given
 * back (they read zero) and made inaccessible while it waits among the
 * last LQ_MAX freed large blocks; its header says it is held, so that a
 * second free is a double free.  Under q_lock. */
#define LQ_MAX 16

static struct large_block *lq_ring[LQ_MAX];
static unsigned lq_head, lq_count;

static inline unsigned char tail_byte(const void *p)
{
    return (unsigned char)(canary_of(p) | 1);
}

static char *guard_start(const char *p, size_t n)
{
    size_t page = os_page();
    return (char *)(((uintptr_t)p + n + page - 1) & ~(uintptr_t)(page - 1));
}

void *harden_large_alloc(size_t n, size_t align, size_t *dirty)
{
    size_t page = os_page();
    if (n > SIZE_MAX - page) {
        errno = ENOMEM;
        return NULL;
    }
    char *p = large_alloc(n + page, align > page ? align : page, dirty);
    void *meta;
    if (!p || ptr_lookup(p, &meta) != PTR_LARGE)
        return p;
    struct large_block *b = meta;
    b->requested = n;
    if (*dirty)                     /* fresh memory reads zero in this mode */
        memset(p, 0, *dirty < n ? *dirty : n);
    *dirty = 0;
    char *guard = guard_start(p, n), *end = (char *)b + span_bytes(&b->s);
    memset(p + n, tail_byte(p), (size_t)(guard - (p + n)));
    os_protect(guard, (size_t)(end - guard), false);  /* refused: no guard (README) */
    return p;
}

size_t harden_large_check(const struct large_block *b, const void *p, const char *func)
{
    if (unlikely(b->s.flags & SPAN_HELD))
        fatal_pointer(func, is_free_call(func) ? "double free" : "use after free", p);
    const unsigned char *q = p, *guard = (const unsigned char *)guard_start(p, b->requested);
    unsigned char want = tail_byte(p);
    for (const unsigned char *t = q + b->requested; t < guard; t++)
        if (unlikely(*t != want))
            fatal_pointer(func, "overflow past the end of", p);
    return b->requested;
}

/* Out of the quarantine (or past it): accessible again, to the heap. */
static void large_release(struct large_block *b)
{
    char *p = (char *)b + b->user_off;
    os_protect(p, span_bytes(&b->s) - b->user_off, true);
    large_free(b, p, "free");
}

void harden_large_free(struct large_block *b, void *p, const char *func)
{
    harden_large_check(b, p, func);
    large_hold(b, p, func);         /* decides between two racing frees */
    size_t len = span_bytes(&b->s) - b->user_off;
    os_purge(p, len, false);        /* reads zero from now on, and costs no memory */
    os_protect(p, len, false);
    if (option(OPT_QUARANTINE_BLOCKS) == 0) {
        large_release(b);
        return;
    }
    struct large_block *out = NULL;
    pthread_mutex_lock(&q_lock);
    if (lq_count == LQ_MAX) {
        out = lq_ring[(lq_head + LQ_MAX - lq_count) % LQ_MAX];
        lq_count--;
    }
    lq_ring[lq_head] = b;
    lq_head = (lq_head + 1) % LQ_MAX;
    lq_count++;
    pthread_mutex_unlock(&q_lock);
    if (out)
        large_release(out);
}

/* ---- malloc(0) ------------------------------------------------------------------ */

/* malloc(0) hands out one of ZERO_SLOTS 16-byte slots of a reservation
 * that is never accessible, so that any access through the pointer
 * faults; which are taken is a bitmap here, under q_lock.  When the
 * reservation is refused or every slot is taken, malloc(0) falls back to
 * the smallest class.  (The reservation is made by harden_init.) */

void *harden_zero_alloc(void)
{
    if (!zero_base)
        return NULL;
    void *p = NULL;
    pthread_mutex_lock(&q_lock);
    for (size_t w = zero_hint; w < ZERO_SLOTS / 64; w++) {
        if (zero_map[w] != ~(uint64_t)0) {
            unsigned bit = (unsigned)__builtin_ctzll(~zero_map[w]);
            zero_map[w] |= (uint64_t)1 << bit;
            zero_hint = w;
            p = zero_base + (w * 64 + bit) * ALIGNMENT;
            break;
        }
    }
    pthread_mutex_unlock(&q_lock);
    return p;
}

/* Is p a malloc(0) slot?  Then it is given back (free) or checked (free
 * is false): a slot not taken is a double free or a use after free. */
bool harden_zero_owns(const void *p, bool free, const char *func)
{
    uintptr_t off = (uintptr_t)p - (uintptr_t)zero_base;
    if (!zero_base || off >= (uintptr_t)ZERO_SLOTS * ALIGNMENT)
        return false;
    if (off % ALIGNMENT)
        fatal_pointer(func, "interior pointer", p);
    size_t i = off / ALIGNMENT;
    uint64_t bit = (uint64_t)1 << (i % 64);
    pthread_mutex_lock(&q_lock);
    bool taken = zero_map[i / 64] & bit;
    if (taken && free) {
        zero_map[i / 64] &= ~bit;
        if (i / 64 < zero_hint)
            zero_hint = i / 64;
    }
    pthread_mutex_unlock(&q_lock);
    if (!taken)
        fatal_pointer(func, is_free_call(func) ? "double free" : "use after free", p);
    return true;
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
            break;
        release(out, n);
    }
    for (;;) {
        struct large_block *b = NULL;
        pthread_mutex_lock(&q_lock);
        if (lq_count) {
            b = lq_ring[(lq_head + LQ_MAX - lq_count) % LQ_MAX];
            lq_count--;
        }
        pthread_mutex_unlock(&q_lock);
        if (!b)
            return;
        large_release(b);
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
        if (n != 0 && harden_zero_owns(p, false, func))
            fatal_pointer(func, "size mismatch", p);
        return;                     /* free reports the rest */
    }
}
