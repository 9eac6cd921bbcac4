/*
 * harden.c - the hardened mode's checks on small blocks: a canary in the
 * last CANARY bytes of each block, derived from a per-process secret and
 * the block's address (so a value copied from one block does not fit
 * another), checked at free, realloc and malloc_usable_size; blocks zeroed
 * at free (a read after free sees zeroes, not data or free-list words) and
 * checked to be zero still when handed out again ("write after free"); a
 * FIFO quarantine that delays their reuse; and whether a block is the
 * program's decided by its chunk's live map (chunk.h), a byte for each
 * block, set at hand-out and exchanged atomically at free, never by
 * anything the program can overwrite in the block.
 *
 * Blocks travel as in the default mode, through the thread's cache (its
 * bins, which the hot paths never see in this mode: tcache.c gives them
 * the always-empty cache) and the class in batches; each thread has its
 * own quarantine.  Only the large blocks' quarantine and malloc(0)'s slots
 * are shared, behind one lock of their own.
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
#if defined(__x86_64__)
static bool have_avx2;              /* the zero check's widest loads (harden_init) */
#endif

/* ---- the quarantine ----------------------------------------------------------- */

/* Freed small blocks wait here, zeroed, in a FIFO before they go back to
 * the thread's cache, so that a stale pointer's write lands in a block
 * nobody was handed yet (and is caught when it is handed out), and a
 * second free of it is not the free of some new owner's block.  Each
 * thread has its own ring, so a free takes no lock: the bounds
 * (OPT_QUARANTINE_BLOCKS, OPT_QUARANTINE_BYTES) are per thread.  The ring
 * is one block from the classes (or a large block), made at the thread's
 * first hardened free and given back at its exit, when the blocks still in
 * it go straight to the cache or their chunks (each is checked again when
 * it is handed out).  Initial-exec TLS, as tcache.c's: no allocation.
 *
 * The ring has OPT_QUARANTINE_BLOCKS slots, so that once it is full the
 * slot a free fills holds the oldest block, the one that leaves: a free
 * is one load and one store in the ring.  A slot is a block's address
 * with its class in the top byte (user addresses are below 2^56 on x86-64
 * and aarch64), or 0 when empty. */
#define Q_CLS_SHIFT 56

struct quarantine {
    uint32_t head;                  /* the slot the next free fills */
    uint32_t count;                 /* slots in use: those before head */
    uint32_t cap;                   /* OPT_QUARANTINE_BLOCKS */
    size_t bytes;                   /* the blocks' sizes, summed */
    size_t max_bytes;               /* OPT_QUARANTINE_BYTES */
    uintptr_t e[];                  /* oldest at head - count (mod cap) */
};

enum { Q_NONE, Q_MAKING, Q_LIVE, Q_DEAD };
static __thread struct quarantine *q_mine __attribute__((tls_model("initial-exec")));
static __thread int q_state __attribute__((tls_model("initial-exec")));
static pthread_key_t q_key;
static bool q_key_ok;

/* Large blocks' quarantine and malloc(0)'s slots, shared by every thread. */
static pthread_mutex_t q_lock = PTHREAD_MUTEX_INITIALIZER;

/* release's slow half: the bin is full, or the thread has no cache.  Like
 * every path of harden_free that may make a system call (the common ones
 * make none), it keeps errno. */
static NOINLINE void release_slow(struct tcache *t, void *p)
{
    void *meta;
    if (ptr_lookup(p, &meta) != PTR_SMALL)
        return;                     /* cannot happen: it was vouched for at free */
    int saved = errno;
    if (t)
        tcache_free_slow(t, meta, p, "free");       /* makes room in the bin */
    else
        chunk_free(meta, p, "free");
    errno = saved;
}

/* A block out of the quarantine (or past it) into this thread's cache, or
 * its chunk when the thread has no cache.  Its first two words are checked
 * here, before a cache writes its link and key there: the rest is checked
 * when it is handed out. */
static inline void release(void *p, unsigned cls)
{
    void **w = p;
    if (unlikely(w[0] || w[1]))
        fatal_pointer("free", "write after free into", p);
    struct tcache *t = tcache_current();
    if (likely(t && t->bins[cls].count < t->bins[cls].max))
        tbin_push(&t->bins[cls], p);
    else
        release_slow(t, p);
}

static void purge_keeping_errno(void)
{
    int saved = errno;
    purge_maybe();
    errno = saved;
}

static inline void *slot_block(uintptr_t e)
{
    return (void *)(e & (((uintptr_t)1 << Q_CLS_SHIFT) - 1));
}

static inline unsigned slot_class(uintptr_t e) { return (unsigned)(e >> Q_CLS_SHIFT); }

/* The oldest block out of the ring, which is left consistent before the
 * block is released: its release may come back into it. */
static void q_pop_oldest(struct quarantine *q)
{
    uint32_t i = q->head >= q->count ? q->head - q->count : q->head + q->cap - q->count;
    uintptr_t e = q->e[i];
    q->e[i] = 0;
    q->count--;
    q->bytes -= memalloc_classes[slot_class(e)].size;
    release(slot_block(e), slot_class(e));
}

static void q_drain(struct quarantine *q)
{
    while (q->count)
        q_pop_oldest(q);
}

/* Thread exit: the blocks to the cache (or chunks), the ring to its class. */
static void q_exit(void *arg)
{
    struct quarantine *q = arg;
    void *meta;
    q_state = Q_DEAD;
    q_mine = NULL;
    q_drain(q);
    switch (ptr_lookup(q, &meta)) {
    case PTR_SMALL: chunk_free(meta, q, "free"); break;
    case PTR_LARGE: large_free(meta, q, "free"); break;
    case PTR_BAD: break;
    }
}

/* This thread's ring, made on its first use; NULL when it has none (the
 * thread is exiting, or the ring could not be made). */
static NOINLINE struct quarantine *q_make(void)
{
    if (q_state != Q_NONE || !q_key_ok)
        return NULL;
    q_state = Q_MAKING;             /* pthread_setspecific may allocate */
    uint32_t cap = (uint32_t)option(OPT_QUARANTINE_BLOCKS);
    size_t bytes = sizeof(struct quarantine) + (size_t)cap * sizeof(uintptr_t);
    bool zeroed;
    size_t dirty;
    struct quarantine *q = bytes <= SMALL_MAX ? chunk_alloc(size_to_class(bytes), &zeroed)
                                              : large_alloc(bytes, ALIGNMENT, &dirty);
    if (!q) {
        q_state = Q_NONE;
        return NULL;
    }
    *q = (struct quarantine){ .cap = cap, .max_bytes = (size_t)option(OPT_QUARANTINE_BYTES) };
    memset(q->e, 0, (size_t)cap * sizeof(uintptr_t));
    if (pthread_setspecific(q_key, q) != 0) {
        q_exit(q);                  /* and no quarantine for this thread */
        return NULL;
    }
    q_mine = q;
    q_state = Q_LIVE;
    return q;
}

/* A free that put the ring over its byte bound (a big block came in, or,
 * in steady state, any block over 256 bytes, whose bytes bind before
 * their count): old, the block it pushed out if any, released, then the
 * oldest until the ring is within the bound. */
static NOINLINE void q_shed(struct quarantine *q, uintptr_t old)
{
    if (old)
        release(slot_block(old), slot_class(old));
    while (q->bytes > q->max_bytes)
        q_pop_oldest(q);
}

/* p, a freed, zeroed block of class cls and size bytes, into the ring q at
 * its head; when the ring is full, the slot holds the oldest block, which
 * leaves (in steady state, every time).  Releasing last, so that the
 * common case makes no call and its caller saves few registers. */
static inline void q_put(struct quarantine *q, void *p, unsigned cls, size_t size)
{
    uint32_t h = q->head;
    uintptr_t old = q->e[h];
    q->e[h] = (uintptr_t)p | (uintptr_t)cls << Q_CLS_SHIFT;
    q->head = h + 1 == q->cap ? 0 : h + 1;
    q->bytes += size;
    if (likely(old))
        q->bytes -= memalloc_classes[slot_class(old)].size;
    else
        q->count++;
    if (unlikely(q->bytes > q->max_bytes))
        q_shed(q, old);
    else if (likely(old))
        release(slot_block(old), slot_class(old));
}

/* This thread's first hardened free, or a free without a quarantine (its
 * bounds are 0, the block is too big for them, the thread is exiting, or
 * the ring could not be made, which is tried again at the next free): the
 * ring made and p put in it, or p released at once. */
static NOINLINE void q_first(void *p, unsigned cls, size_t size)
{
    int saved = errno;              /* q_make may fail */
    struct quarantine *q = option(OPT_QUARANTINE_BLOCKS) == 0 ||
        size > (size_t)option(OPT_QUARANTINE_BYTES) ? NULL : q_make();
    errno = saved;
    if (!q) {
        release(p, cls);
        purge_keeping_errno();
        return;
    }
    q_put(q, p, cls, size);
}

/* A freed, zeroed block into this thread's ring. */
static inline void q_push(void *p, unsigned cls, size_t size)
{
    struct quarantine *q = q_mine;
    if (unlikely(!q))
        q_first(p, cls, size);
    else
        q_put(q, p, cls, size);
}

/* malloc(0)'s slots (see zero_alloc), under q_lock. */
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
#if defined(__x86_64__)
    __builtin_cpu_init();           /* this may run before libgcc's constructor */
    have_avx2 = __builtin_cpu_supports("avx2");
#endif
    /* Above all the heap could ever span: the break must not run into it. */
    zero_base = os_reserve_none((size_t)ZERO_SLOTS * ALIGNMENT,
                                (uintptr_t)raw_break() + (MAP_UNITS << UNIT_SHIFT));
    q_key_ok = pthread_key_create(&q_key, q_exit) == 0;
    /* Zero fills replace junk fills: a test for stale data must see 0. */
    option_set(OPT_PERTURB, 0);
}

static inline uint32_t canary_of(const void *p)
{
    uint64_t x = ((uint64_t)(uintptr_t)p ^ canary_secret) * 0x9e3779b97f4a7c15ull;
    return (uint32_t)(x >> 32);     /* the product's high half mixes every bit */
}

/* The class for n bytes at alignment align, or NUM_CLASSES when it takes a
 * large block. */
static unsigned harden_class(size_t n, size_t align)
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
static inline __attribute__((always_inline)) size_t block_index(struct chunk *c, const void *p,
                                                                 const char *func)
{
    uint64_t idx = block_number(c, (uintptr_t)p - c->blocks);
    if (likely(c->s.kind == SPAN_CHUNK && idx < __atomic_load_n(&c->carved, __ATOMIC_RELAXED)))
        return idx;
    chunk_block_size(c, p, func);   /* reports it */
    fatal_pointer(func, "invalid pointer", p);
}

static inline bool live_get(struct chunk *c, size_t idx)
{
    return __atomic_load_n(&chunk_live_map(c)[idx], __ATOMIC_RELAXED);
}

/* Handing out: the block is this thread's alone (it came from this
 * thread's cache or its class), so its byte needs no atomic exchange; a
 * byte that says held already is a block handed out twice. */
static inline bool live_take(struct chunk *c, size_t idx)
{
    uint8_t *b = &chunk_live_map(c)[idx];
    bool was = __atomic_load_n(b, __ATOMIC_RELAXED);
    __atomic_store_n(b, 1, __ATOMIC_RELAXED);
    return was;
}

/* Freeing: an atomic exchange, so that of two threads freeing the same
 * block at once exactly one sees it held. */
static inline bool live_drop(struct chunk *c, size_t idx)
{
    return __atomic_exchange_n(&chunk_live_map(c)[idx], 0, __ATOMIC_ACQ_REL);
}

/* ---- handing out and taking back ------------------------------------------------- */

/* Is the block all zeroes from its third word on?  Blocks are 16-aligned,
 * their sizes multiples of 16.  Small ones are ORed 16 bytes at a time
 * (vector registers on x86-64 and aarch64 alike).  Big ones, on x86-64
 * with AVX2, are ORed 32 bytes a load, four loads an iteration: one stream
 * where libc's memcmp against a page of zeroes reads two (bench/
 * MECHANISMS.md has the A/B run); elsewhere that memcmp, the machine's
 * widest. */
typedef uint64_t vec16 __attribute__((vector_size(16), may_alias));
static const char zero_page[4096];

static bool zero_by_memcmp(const char *p, size_t size)
{
    for (size_t off = 16; off < size; off += sizeof zero_page) {
        size_t len = size - off < sizeof zero_page ? size - off : sizeof zero_page;
        if (memcmp(p + off, zero_page, len) != 0)
            return false;
    }
    return true;
}

#if defined(__x86_64__)
typedef uint64_t vec32 __attribute__((vector_size(32), may_alias, aligned(16)));  /* blocks are 16-aligned */

/* size > 256: bytes 16-31 as one vector, then 32-byte vectors. */
__attribute__((target("avx2"))) static bool zero_by_avx2(const char *p, size_t size)
{
    const vec32 *w = (const vec32 *)p;
    vec16 head = ((const vec16 *)p)[1];
    vec32 a = { 0 }, b = { 0 }, c = { 0 }, d = { 0 };
    size_t i = 1, n = size / 32;
    for (; i + 4 <= n; i += 4) {
        a |= w[i];
        b |= w[i + 1];
        c |= w[i + 2];
        d |= w[i + 3];
    }
    for (; i < n; i++)
        a |= w[i];
    if (size % 32)                  /* the last 16 bytes */
        head |= ((const vec16 *)p)[size / 16 - 1];
    a |= b | c | d;
    return (a[0] | a[1] | a[2] | a[3] | head[0] | head[1]) == 0;
}
#endif

/* Blocks of up to 256 bytes, inline: 16 bytes a load. */
static inline __attribute__((always_inline)) bool zero_small_past_links(const char *p,
                                                                        size_t size)
{
    const vec16 *v = (const vec16 *)p;
    vec16 any = { 0, 0 };
    for (size_t i = 1; i < size / 16; i++)
        any |= v[i];
    return (any[0] | any[1]) == 0;
}

static bool zero_big_past_links(const char *p, size_t size)
{
#if defined(__x86_64__)
    if (have_avx2)
        return zero_by_avx2(p, size);
#endif
    return zero_by_memcmp(p, size);
}

/* The last steps of handing out p, a block of chunk c whose contents are
 * vouched for: its links cleared, its live byte set, its canary written. */
static inline void *hand_over(void **p, struct chunk *c, size_t idx, size_t size)
{
    p[0] = p[1] = NULL;
    if (unlikely(live_take(c, idx)))
        fatal_pointer("malloc", "corrupted heap metadata at", p);
    uint32_t canary = canary_of(p);
    memcpy((char *)p + size - CANARY, &canary, CANARY);
    return p;
}

static NOINLINE void *hand_out_big(void **p, struct chunk *c, size_t idx, size_t size,
                                   bool check)
{
    if (check && unlikely(!zero_big_past_links((const char *)p, size)))
        fatal_pointer("malloc", "write after free into", p);
    return hand_over(p, c, idx, size);
}

/* p, just taken from a bin or from its class, to the program, checked to
 * read zero past its links unless it was zeroed just now.  The common
 * case makes no call (blocks over 256 bytes go on in hand_out_big), so
 * that it saves few registers. */
static inline __attribute__((always_inline)) void *hand_out(void **p, unsigned cls, bool check)
{
    /* p came from a bin or from its class: the unit map alone finds its
     * chunk.  A link overwritten to point elsewhere fails the range test,
     * the map, the block number (block_index) or the class. */
    size_t u = unit_index((uintptr_t)p);
    uint8_t m = likely(u < MAP_UNITS) ? memalloc_unit_map[u] : 0;
    if (unlikely(!(m & MAP_SMALL)))
        fatal_pointer("malloc", "corrupted heap metadata at", p);
    struct chunk *c = (struct chunk *)unit_addr(u - (m & MAP_SMALL_MAX_K));
    if (unlikely(c->cls != cls))
        fatal_pointer("malloc", "corrupted heap metadata at", p);
    size_t idx = block_index(c, p, "malloc"), size = c->size;
    if (size > 256)
        return hand_out_big(p, c, idx, size, check);
    if (check && unlikely(!zero_small_past_links((const char *)p, size)))
        fatal_pointer("malloc", "write after free into", p);
    return hand_over(p, c, idx, size);
}

/* small_alloc's slow half: no cache yet, or an empty bin. */
static NOINLINE void *small_alloc_slow(struct tcache *t, unsigned cls)
{
    bool zeroed = true;
    void **p = t || (t = tcache_create()) ? tcache_refill(t, cls) : chunk_alloc(cls, &zeroed);
    if (unlikely(!p)) {
        errno = ENOMEM;
        return NULL;
    }
    if (!zeroed)                    /* never handed out, on memory that held data */
        memset(p, 0, memalloc_classes[cls].size);
    return hand_out(p, cls, zeroed);
}

/* A block of class cls, zeroed, canary written, live byte set; or NULL
 * with errno ENOMEM. */
static inline void *small_alloc(unsigned cls)
{
    struct tcache *t = tcache_current();
    void **p = t ? t->bins[cls].head : NULL;
    if (unlikely(p == NULL))
        return small_alloc_slow(t, cls);
    /* A cached block carries the free key, which tcache_pop clears. */
    if (unlikely(p[1] != (void *)memalloc_free_key))
        fatal_pointer("malloc", "write after free into", p);
    tcache_pop(t, cls);
    return hand_out(p, cls, true);
}

static inline bool is_free_call(const char *func)
{
    return strcmp(func, "free") == 0 || strcmp(func, "operator delete") == 0;
}

static inline void canary_check(const void *p, size_t size, const char *func)
{
    uint32_t have, want = canary_of(p);
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

/* Blocks of up to 256 bytes are zeroed 16 bytes a store, inline: most
 * frees are of those, and a call to libc's memset would make the common
 * path save registers.  The empty asm keeps the compiler from making the
 * loop that call. */
static inline void zero_small(void *p, size_t size)
{
    vec16 *v = p;
    for (size_t i = 0; i < size / 16; i++) {
        v[i] = (vec16){ 0, 0 };
        __asm__("" : : "r"(v) : "memory");
    }
}

static NOINLINE void small_free_big(void *p, unsigned cls, size_t size)
{
    memset(p, 0, size);
    q_push(p, cls, size);
}

/* Blocks over 256 bytes go on in small_free_big, so that the common case
 * makes no call. */
static void small_free(struct chunk *c, void *p, const char *func)
{
    /* The exchange decides between two threads freeing p at once. */
    if (unlikely(!live_drop(c, block_index(c, p, func))))
        fatal_pointer(func, "double free", p);
    size_t size = c->size;
    canary_check(p, size, func);
    if (size > 256) {
        small_free_big(p, c->cls, size);
        return;
    }
    zero_small(p, size);
    q_push(p, c->cls, size);
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

static void *large_alloc_guarded(size_t n, size_t align, size_t *dirty)
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

static void large_free_checked(struct large_block *b, void *p, const char *func)
{
    if (b->s.kind != SPAN_LARGE || (char *)b + b->user_off != (char *)p)
        fatal_pointer(func, "invalid pointer", p);  /* before its fields are trusted */
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

static void *zero_alloc(void)
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

/* ---- the entry points ------------------------------------------------------------ */

/* Any request but a small one of the usual alignment. */
static NOINLINE void *malloc_other(size_t n, size_t align)
{
    void *p;
    if (n == 0 && align <= ALIGNMENT && (p = zero_alloc()))
        return p;
    unsigned cls = harden_class(n, align);
    if (cls == NUM_CLASSES) {
        if (align > (size_t)PTRDIFF_MAX / 2 || n > (size_t)PTRDIFF_MAX) {
            errno = ENOMEM;
            return NULL;
        }
        size_t dirty;
        return large_alloc_guarded(n, align, &dirty);
    }
    return small_alloc(cls);
}

/* The common case apart, so that it saves few registers. */
void *harden_malloc(size_t n, size_t align)
{
    if (unlikely(align > ALIGNMENT || n - 1 >= CLASS_TABLE_MAX - CANARY))
        return malloc_other(n, align);
    return small_alloc(size_to_class(n + CANARY));          /* the table */
}

/* A large block or a malloc(0) slot, or no block at all. */
static NOINLINE void free_other(void *p, enum ptr_kind kind, void *meta, const char *func)
{
    int saved = errno;
    if (kind == PTR_LARGE) {
        large_free_checked(meta, p, func);
        purge_maybe();
    } else if (!harden_zero_owns(p, true, func)) {
        fatal_pointer(func, "invalid pointer", p);
    }
    errno = saved;
}

void harden_free(void *p, const char *func)
{
    void *meta = NULL;
    enum ptr_kind kind = ptr_lookup(p, &meta);
    if (unlikely(kind != PTR_SMALL))
        free_other(p, kind, meta, func);
    else
        small_free(meta, p, func);  /* keeps errno where it may change */
}

/* malloc_trim: this thread's quarantined blocks back to its cache (api.c
 * flushes the cache next) and every large one to the heap, so that what
 * the program freed can be given back.  Other threads' rings are theirs. */
void harden_flush(void)
{
    if (!hardened())
        return;
    if (q_mine)
        q_drain(q_mine);
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
