/*
 * api.c - the public entry points, memalloc_*: argument checking, glibc's
 * semantics for the corner cases, the choice between a small class and a
 * large block, mallopt, malloc_trim, and the program's sbrk and brk.
 * override.c maps the remaining standard names onto these.
 *
 * Invariants: every result is 16-byte aligned; failures return NULL with
 * errno set (ENOMEM, or EINVAL for a bad alignment) and change nothing; free
 * preserves errno; a pointer memalloc did not hand out never reaches a
 * header read before ptr_lookup() vouched for the memory it reads.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <string.h>

#include "harden.h"
#include "init.h"
#include "memalloc.h"
#include "options.h"
#include "purge.h"
#include "tcache.h"
#include "standard_names.h"
#include "track.h"

/* In memcheck and ASan builds (track.h) api_tracked.c exports the entry points
 * that hand out, take back or look at blocks, and calls these, renamed
 * untracked_*, under its hooks. */
#if TRACKING
#define TRACKED(name) untracked_##name
#define TRACKED_EXPORT HIDDEN
#else
#define TRACKED(name) name
#define TRACKED_EXPORT EXPORT
#endif

static inline bool is_pow2(size_t x) { return x && !(x & (x - 1)); }

static inline void junk_fill(void *p, size_t n)
{
    long perturb = option(OPT_PERTURB);
    if (unlikely(perturb))
        memset(p, (int)(~perturb & 0xff), n);
}

/* ---- allocation ----------------------------------------------------------- */

static NOINLINE void *malloc_large(size_t n, size_t align, size_t *dirty)
{
    if (n > (size_t)PTRDIFF_MAX) {
        errno = ENOMEM;
        return NULL;
    }
    return large_alloc(n, align, dirty);
}

/* A block of class cls for an n-byte request: from this thread's cache
 * (created on first use), else from the class. */
static void *small_alloc(unsigned cls, size_t n, size_t *dirty)
{
    struct tcache *t = tcache_current();
    void *p;
    bool zeroed = false;
    if (t || (t = tcache_create())) {
        p = tcache_pop(t, cls);
        if (!p)
            p = tcache_refill(t, cls);
    } else {
        p = chunk_alloc(cls, &zeroed);
    }
    if (unlikely(!p))
        errno = ENOMEM;
    *dirty = zeroed ? 0 : n;
    return p;
}

/* Small blocks with an alignment above 16: the first class at least as big
 * whose blocks all share that alignment (power-of-two classes are aligned
 * to their size, up to a page). */
static void *alloc_aligned(size_t align, size_t n, size_t *dirty)
{
    ensure_init();
    if (unlikely(hardened())) {
        *dirty = 0;
        return harden_malloc(n, align);
    }
    size_t want = n > align ? n : align;
    if (align <= CLASS_ALIGN_MAX && want <= SMALL_MAX) {
        unsigned cls = size_to_class(want);
        while (cls < NUM_CLASSES && memalloc_classes[cls].align < align)
            cls++;
        /* Every block of the class has the alignment, so the class's
         * thread-cache bin serves aligned requests too. */
        if (cls < NUM_CLASSES)
            return small_alloc(cls, n, dirty);
    }
    if (align > (size_t)PTRDIFF_MAX / 2) {
        errno = ENOMEM;
        return NULL;
    }
    return malloc_large(n, align, dirty);
}

/* ---- slow path: no cache, cache miss, large blocks ------------------------- */

/* Any size, with *dirty set to how many leading bytes may be non-zero. */
static NOINLINE void *alloc_slow(size_t n, size_t *dirty)
{
    ensure_init();
    if (unlikely(hardened())) {
        *dirty = 0;
        return harden_malloc(n, ALIGNMENT);
    }
    if (likely(n <= SMALL_MAX))
        return small_alloc(size_to_class(n), n, dirty);
    return malloc_large(n, ALIGNMENT, dirty);
}

/* The default mode's malloc past its hot path. */
static NOINLINE void *malloc_miss(size_t n)
{
    /* A small block above the table's reach: its bin before anything else
     * (the class by formula), so that these classes are cached too. */
    if (n > TC_MAX_SIZE && n <= SMALL_MAX) {
        void *p = tcache_pop(memalloc_tc, CLASS_OF_BIG(n));
        if (p)
            return p;
    }
    size_t dirty;
    void *p = alloc_slow(n, &dirty);
    if (p)
        junk_fill(p, n);
    return p;
}

/* Every malloc of a hardened process comes here, and goes on in two tail
 * calls.  Initialised first: the first options_load turns the mode on
 * before the classes and the secrets are set up, and another thread may be
 * doing that now. */
static NOINLINE void *malloc_slow(size_t n)
{
    ensure_init();
    if (unlikely(hardened()))
        return harden_malloc(n, ALIGNMENT);
    return malloc_miss(n);
}

/* ---- hot path: malloc that hits this thread's cache ------------------------- */

TRACKED_EXPORT void *TRACKED(memalloc_malloc)(size_t n)
{
    if (likely(n - 1 < TC_MAX_SIZE)) {     /* malloc(0) wraps to the slow path */
        void *p = tcache_pop(memalloc_tc, size_to_class(n));    /* the table */
        if (likely(p != NULL))
            return p;
    }
    return malloc_slow(n);
}

TRACKED_EXPORT void *TRACKED(memalloc_calloc)(size_t nmemb, size_t size)
{
    size_t n, dirty;
    if (__builtin_mul_overflow(nmemb, size, &n)) {
        errno = ENOMEM;
        return NULL;
    }
    void *p = alloc_slow(n, &dirty);
    if (p && dirty)
        memset(p, 0, dirty < n ? dirty : n);
    return p;
}

/* ---- free ------------------------------------------------------------------ */

static void free_checked(void *p, const char *func)
{
    void *meta;
    switch (ptr_lookup(p, &meta)) {
    case PTR_SMALL: {
        /* A thread that only frees (a consumer) gets its cache here: its
         * frees then go back in batches, parked for the threads that
         * allocate, instead of one class lock each. */
        struct tcache *t = tcache_current();
        tcache_free_slow(t ? t : tcache_create(), meta, p, func);
        return;
    }
    case PTR_LARGE: {
        struct large_block *b = meta;
        if (unlikely(option(OPT_PERTURB)) && b->s.kind == SPAN_LARGE &&
            (char *)b + b->user_off == (char *)p)
            memset(p, (int)(option(OPT_PERTURB) & 0xff), b->requested);
        large_free(b, p, func);
        purge_maybe();
        return;
    }
    case PTR_BAD:
        break;
    }
    fatal_pointer(func, "invalid pointer", p);
}

static NOINLINE void free_keeping_errno(void *p, const char *func)
{
    int saved = errno;
    free_checked(p, func);
    errno = saved;
}

/* Two tail calls: the hardened mode's every free comes here. */
static NOINLINE void free_slow(void *p, const char *func)
{
    if (!p)
        return;
    if (unlikely(hardened()))
        harden_free(p, func);       /* keeps errno itself, where it may change */
    else
        free_keeping_errno(p, func);
}

static inline __attribute__((always_inline)) void free_any(void *p, const char *func)
{
    struct tbin *b = tcache_bin_for(memalloc_tc, p);
    if (likely(b != NULL)) {
        tbin_push(b, p);
        return;
    }
    free_slow(p, func);
}

/* Hot path: a free that fits in this thread's cache touches no lock and
 * leaves errno alone. */
TRACKED_EXPORT void TRACKED(memalloc_free)(void *p)
{
    free_any(p, "free");
}

/* ---- realloc ---------------------------------------------------------------- */

/* Usable size of an in-use block, aborting on anything else. */
static size_t usable_checked(void *p, const char *func, void **meta, enum ptr_kind *kind)
{
    *kind = ptr_lookup(p, meta);
    if (*kind == PTR_SMALL) {
        if (unlikely(hardened()))
            return harden_small_check(*meta, p, func);
        /* The chunk counts cached blocks as in use: ask the caches. */
        if (((void **)p)[1] == (void *)memalloc_free_key && tcache_holds(p))
            fatal_pointer(func, "use after free", p);
        return chunk_block_size(*meta, p, func);
    }
    if (*kind == PTR_LARGE) {
        struct large_block *b = *meta;
        if (b->s.kind == SPAN_LARGE && (char *)b + b->user_off == (char *)p)
            return unlikely(hardened()) ? harden_large_check(b, p, func) : large_usable(b);
    }
    if (unlikely(hardened()) && harden_zero_owns(p, false, func))
        return 0;
    fatal_pointer(func, "invalid pointer", p);
}

TRACKED_EXPORT void *TRACKED(memalloc_realloc)(void *p, size_t n)
{
    if (!p)
        return memalloc_malloc(n);
    if (n == 0) {                   /* glibc: free and return NULL */
        free_slow(p, "realloc");    /* keeps errno, as free does */
        return NULL;
    }
    void *meta;
    enum ptr_kind kind;
    size_t old = usable_checked(p, "realloc", &meta, &kind);
    /* A large block shrinks in place, or grows into free space or the break
     * above it; a small block that still fits stays where it is. */
    if (kind == PTR_LARGE && !hardened() && large_resize_in_place(meta, n)) {
        purge_maybe();              /* a shrink may have freed units */
        return p;
    }
    if (n <= old)
        return p;
    void *q = memalloc_malloc(n);
    if (!q)
        return NULL;                /* errno is ENOMEM; p is untouched */
    memcpy(q, p, old < n ? old : n);
    free_any(p, "realloc");
    return q;
}

TRACKED_EXPORT void *TRACKED(memalloc_reallocarray)(void *p, size_t nmemb, size_t size)
{
    size_t n;
    if (__builtin_mul_overflow(nmemb, size, &n)) {
        errno = ENOMEM;
        return NULL;
    }
    return memalloc_realloc(p, n);
}

/* ---- aligned allocation --------------------------------------------------------- */

static void *memalign_common(size_t align, size_t n)
{
    size_t dirty;
    void *p = align <= ALIGNMENT ? alloc_slow(n, &dirty) : alloc_aligned(align, n, &dirty);
    if (p)
        junk_fill(p, n);
    return p;
}

TRACKED_EXPORT int TRACKED(memalloc_posix_memalign)(void **memptr, size_t align, size_t n)
{
    if (!is_pow2(align) || align % sizeof(void *) != 0)
        return EINVAL;
    void *p = memalign_common(align, n);
    if (!p)
        return ENOMEM;              /* errno too, as glibc leaves it */
    *memptr = p;
    return 0;
}

TRACKED_EXPORT void *TRACKED(memalloc_aligned_alloc)(size_t align, size_t n)
{
    if (!is_pow2(align)) {          /* C17 / glibc >= 2.38 */
        errno = EINVAL;
        return NULL;
    }
    return memalign_common(align, n);
}

TRACKED_EXPORT void *TRACKED(memalloc_memalign)(size_t align, size_t n)
{
    /* As glibc: EINVAL only where no power of two can be rounded up to;
     * up to 2^63 an impossible alignment fails with ENOMEM. */
    if (align > SIZE_MAX / 2 + 1) {
        errno = EINVAL;
        return NULL;
    }
    if (!is_pow2(align) && align > ALIGNMENT)   /* glibc rounds up */
        align = (size_t)1 << (64 - __builtin_clzl(align));
    return memalign_common(align, n);
}

TRACKED_EXPORT void *TRACKED(memalloc_valloc)(size_t n)
{
    ensure_init();                  /* os_page() is read from the kernel there */
    return memalign_common(os_page(), n);
}

TRACKED_EXPORT void *TRACKED(memalloc_pvalloc)(size_t n)
{
    if (n > (size_t)PTRDIFF_MAX) {
        errno = ENOMEM;
        return NULL;
    }
    ensure_init();
    size_t page = os_page();
    size_t rounded = n == 0 ? page : (n + page - 1) & ~(page - 1);
    return memalign_common(page, rounded);
}

TRACKED_EXPORT size_t TRACKED(memalloc_malloc_usable_size)(void *p)
{
    if (!p)
        return 0;
    void *meta;
    enum ptr_kind kind;
    return usable_checked(p, "malloc_usable_size", &meta, &kind);
}

#if TRACKING
/* For api_tracked.c: p's usable size, vouched for (misuse stops the process
 * naming func), and the bytes of the block at p as far as the heap's
 * headers tell, without any check (0 for no block). */
HIDDEN size_t api_usable(void *p, const char *func)
{
    void *meta;
    enum ptr_kind kind;
    return usable_checked(p, func, &meta, &kind);
}

HIDDEN size_t api_block_bytes(const void *p)
{
    void *meta;
    switch (ptr_lookup(p, &meta)) {
    case PTR_SMALL: return ((struct chunk *)meta)->size;
    case PTR_LARGE: return large_usable(meta);
    default: return 0;
    }
}
#endif

/* ---- glibc's malloc.h extensions and the break ---------------------------------- */

EXPORT int memalloc_mallopt(int param, int value)
{
    ensure_init();
    switch (param) {
    /* As in glibc, setting either one by hand turns off the threshold that
     * follows the size of freed large blocks.  A negative threshold
     * (mallopt(3): -1) turns automatic trimming off, malloc_trim still
     * works; a negative pad is no pad.  Both return 1 for any value. */
    case M_TRIM_THRESHOLD:
        option_set(OPT_TRIM_THRESHOLD, value < 0 ? PTRDIFF_MAX : value);
        option_set(OPT_RETAIN_MAX, 0);
        return 1;
    case M_TOP_PAD:
        option_set(OPT_TOP_PAD, value < 0 ? 0 : value);
        option_set(OPT_RETAIN_MAX, 0);
        return 1;
    case M_PERTURB:
        /* Not in memcheck and ASan builds (options.c says why), nor in the
         * hardened mode, whose freed blocks must stay zero. */
        if (!TRACKING && !hardened())
            option_set(OPT_PERTURB, value & 0xff);
        return 1;
    case M_MXFAST: case M_MMAP_THRESHOLD: case M_MMAP_MAX: case M_CHECK_ACTION:
    case M_ARENA_TEST: case M_ARENA_MAX:
        return 1;                   /* accepted; nothing here they could tune */
    default:
        return 0;
    }
}

TRACKED_EXPORT int TRACKED(memalloc_malloc_trim)(size_t pad)
{
    ensure_init();
    harden_flush();                 /* into this thread's cache, flushed next */
    if (tcache_current())
        tcache_flush_all(tcache_current());
    return purge_trim(pad);
}

/* sbrk and brk for the rest of the program, in both libraries: the space
 * above the break is reserved, so glibc's own would fail there (heap.c). */
EXPORT void *sbrk(intptr_t delta)
{
    ensure_init();
    return heap_sbrk(delta);
}

EXPORT int brk(void *addr)
{
    ensure_init();
    void *old = heap_brk(addr);
    if (old == (void *)-1) {
        errno = ENOMEM;
        return -1;
    }
    return 0;
}

/* ---- the standard names (libmemalloc only) ------------------------------------- */

#if defined(MEMALLOC_STANDARD_NAMES) && !TRACKING      /* api_tracked.c's, in those builds */
STANDARD_NAMES();                   /* aliases: standard_names.h */
#endif
