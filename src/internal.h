/*
 * internal.h - memalloc's structures, constants and the small inline helpers
 * that map a pointer to its metadata.  Everything here is hidden from the
 * shared library's export list.
 *
 * Glossary
 *   unit     64 KiB of address space, aligned to 64 KiB.  The heap is made of
 *            whole units; every span starts on a unit boundary.
 *   span     a run of units with a header in its first bytes: a small-class
 *            chunk, a large block, or free space.  Spans tile each segment
 *            with no gaps; each knows its size and its predecessor's size, so
 *            free neighbours can be coalesced in O(1).
 *   segment  a contiguous run of units obtained with sbrk.  There is more
 *            than one only when other code moved the break behind our back;
 *            only the top segment can grow or shrink.
 *   chunk    a span owned by one size class and carved into equal blocks.
 *            Small blocks carry no header: their chunk is found through the
 *            unit map, their state in the chunk's bitmap.
 *   unit map one byte per unit of the address range above the heap base,
 *            saying whether a span starts there or which unit of a chunk it
 *            is.  It lives in .bss (untouched pages cost nothing) and lets
 *            free() validate any pointer before reading heap memory.
 *
 * Lock order (never taken in any other order):
 *   thread-cache list lock -> size-class locks, in class-index order
 *   -> heap-top lock
 * A thread holds at most one class lock except in memalloc_check() and the
 * fork handlers, which take all of them in index order.  Nothing that may
 * call malloc is called while any of these locks is held.
 */
#ifndef MEMALLOC_INTERNAL_H
#define MEMALLOC_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HIDDEN __attribute__((visibility("hidden")))
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)
#define NOINLINE __attribute__((noinline))

/* ---- geometry ---------------------------------------------------------- */

#define UNIT_SHIFT 16
#define UNIT ((size_t)1 << UNIT_SHIFT)
#define GRAIN 4096u                 /* see the glossary; os_page() is the real page */
#define CLASS_ALIGN_MAX 4096u       /* classes give their blocks natural alignment up to this */
#define ALIGNMENT 16u               /* every result is 16-byte aligned */

/* 2^22 units of 64 KiB: memalloc's heap may span 256 GiB above its base.
 * That costs 4 MiB of .bss address space and one resident page of map per
 * 256 MiB of heap actually used. */
#define MAP_UNITS ((size_t)1 << 22)

/* Small classes: 16..128 in steps of 16, then eight classes per doubling up
 * to SMALL_MAX.  Eight steps per doubling bound the rounding waste of any
 * request above 128 bytes by 1/8 = 12.5%: a request just above 2^k is
 * rounded up by at most one step of 2^k/8.  Below 128 bytes the 16-byte
 * alignment floor dominates instead.  SMALL_MAX is where a chunk of at
 * least eight blocks reaches 1 MiB; beyond it a dedicated large block wastes
 * at most the tail of one 64 KiB unit, and those tail pages are never
 * touched, so they cost address space but no resident memory. */
#define SMALL_MAX ((size_t)128 << 10)
#define XFER_SLOTS 4                /* batches parked per class */
#define NUM_CLASSES 88
#define CHUNK_MIN_BLOCKS 8

/* ---- spans ------------------------------------------------------------- */

enum span_kind {
    SPAN_FREE  = 0x46524545,        /* "FREE" */
    SPAN_LARGE = 0x4c415247,        /* "LARG" */
    SPAN_CHUNK = 0x43484e4b,        /* "CHNK" */
};

#define SPAN_SEG_END 1u             /* last span of a non-top segment */

struct span {
    uint32_t kind;                  /* enum span_kind */
    uint32_t flags;
    size_t units;                   /* size of this span */
    size_t prev_units;              /* size of the span below; 0: first in segment */
};

/* Free space: linked into a size bin of the heap. */
struct free_span {
    struct span s;
    struct free_span *next, *prev;
    size_t dirty;                   /* bytes that may still be resident */
    uint64_t dirty_since;           /* purge epoch in which it became dirty */
    struct free_span *dirty_next, *dirty_prev;  /* binned spans with dirty != 0 */
};

/* A large block: one allocation.  The user pointer sits user_off bytes
 * above the span start (64, the alignment, or a whole unit for alignments
 * of a unit or more), so the header is found from the pointer's unit. */
struct large_block {
    struct span s;
    size_t user_off;
    size_t requested;               /* what was asked for: perturb fills, checks */
};
#define LARGE_HDR 64u

/* A small-class chunk.  Which blocks are free is kept in a bitmap only, so
 * free blocks hold nothing that must survive: whole pages of free blocks can
 * be given back with madvise.  Blocks past `carved` were never handed out. */
#define CHUNK_MAX_BLOCKS (UNIT / ALIGNMENT)
#define CHUNK_MAX_UNITS 20          /* the 128 KiB class needs 17 */
#define CHUNK_MAX_GRAINS (CHUNK_MAX_UNITS * UNIT / GRAIN)
/* The first cache line holds what the lock-free free path reads; it is
 * written only while the chunk is set up, carved or purged.  The counts and
 * links that every batch under the class lock writes live on the next line,
 * so threads freeing into their caches do not fight over the header. */
struct chunk {
    struct span s;
    uint8_t cls;
    uint8_t shift;                  /* block size == odd * 2^shift ... */
    uint16_t bin;                   /* offset of this class's bin in a thread cache */
    uint32_t carved;                /* blocks below have been handed out once */
    uintptr_t blocks;               /* address of block 0: chunk + data_off */
    uint64_t inv;                   /* ... and odd * inv == 1 modulo 2^64 */
    /* Bit k is set while some purged grain has an address / GRAIN == k
     * modulo 64: the OR of the words of purged_map, rotated by the chunk's
     * own grain number.  A free block on a purged grain has lost
     * the key that marks it free and only its bit can tell, so the
     * lock-free free path leaves blocks whose key word sits on a page with
     * its bit set to the slow path.  Exact for chunks of up to 64 grains. */
    uint64_t purged_mask;
    uint32_t size;                  /* block size, copied from the class */
    uint32_t data_off;              /* offset of block 0 from the chunk start */
    /* --- written under the class lock --- */
    uint32_t in_use __attribute__((aligned(64)));   /* blocks handed out */
    uint32_t capacity;              /* blocks that fit */
    uint32_t fresh;                 /* memory came straight from sbrk: zero */
    uint32_t hint;                  /* no free block in used_map words below */
    uint32_t purged;                /* grains set in purged_map */
    uint32_t touched;               /* purge epoch of the last block taken or put back */
    uint32_t listed;                /* on the class's candidate list */
    struct chunk *next, *prev;      /* in the class's list of chunks with room */
    struct chunk *cand_next, *cand_prev;    /* in the class's candidate list */
    uint64_t used_map[CHUNK_MAX_BLOCKS / 64];   /* 1 bit per block in use */
    uint64_t purged_map[CHUNK_MAX_GRAINS / 64]; /* 1 bit per grain given back */
};
#define CHUNK_HDR_SIZE sizeof(struct chunk)

/* ---- the unit map ------------------------------------------------------- */

#define MAP_NONE  0x00              /* no span starts here */
#define MAP_SPAN  0x80              /* a free span or large block starts here */
#define MAP_SMALL 0x40              /* unit k of a chunk: MAP_SMALL | k */
#define MAP_SMALL_MAX_K 0x3f

extern uint8_t memalloc_unit_map[MAP_UNITS] HIDDEN;
extern uintptr_t memalloc_heap_base HIDDEN;         /* unit-aligned, set once */
extern uintptr_t memalloc_heap_limit HIDDEN;        /* our highest end so far */

static inline size_t unit_index(uintptr_t a)
{
    return (a - memalloc_heap_base) >> UNIT_SHIFT;
}

static inline uintptr_t unit_addr(size_t u)
{
    return memalloc_heap_base + (u << UNIT_SHIFT);
}

/* The number of the block that starts off bytes above block 0 of c, or,
 * when off is not a multiple of the block size, a number above 2^46, which
 * no block count reaches.  One multiply and one rotate (exact division by
 * the multiplicative inverse of the size's odd part): a single compare with
 * c->carved then rejects interior, misaligned, out-of-chunk ("negative"
 * off wraps to near 2^64) and never-carved pointers alike. */
static inline uint64_t block_number(const struct chunk *c, uintptr_t off)
{
    uint64_t q = (uint64_t)off * c->inv;
    return (q >> c->shift) | (q << ((64 - c->shift) & 63));
}

/* ---- links between free blocks ------------------------------------------ */

/* Blocks in thread caches, in batches and in parked batches are listed
 * through their first word.  The link is stored XORed with a per-process
 * secret (glibc's safe-linking, keyed), so a program writing into a freed
 * block cannot steer a later malloc: what it wrote decodes to a random
 * value that fails link_plausible(), and the process stops with
 * "corrupted free list" instead.  The slot's own address is left out of
 * the mangling: it would cost two instructions a pair on the hot path and
 * only adds that a link copied from one free block to another is caught. */
extern uintptr_t memalloc_link_secret HIDDEN;

static inline void *link_hide(const void *slot, const void *next)
{
    (void)slot;
    return (void *)((uintptr_t)next ^ memalloc_link_secret);
}

static inline void *link_reveal(const void *slot, const void *stored)
{
    return link_hide(slot, stored);
}

/* NULL, or a 16-byte aligned address below 2^48 (where the break lives on
 * x86-64 and on aarch64, whose PIE programs load near 0xaaaa'aaaa'0000): a
 * random 64-bit value passes one time in 2^20.  One mask test, NULL
 * included. */
#define LINK_BAD_BITS (~(((uintptr_t)1 << 48) - 1) | (ALIGNMENT - 1))
static inline bool link_plausible(const void *next)
{
    return ((uintptr_t)next & LINK_BAD_BITS) == 0;
}

/* The next block after p in a list, checked; NULL ends the list.  Stops
 * the process with a message naming func when the link was overwritten. */
HIDDEN _Noreturn void link_corrupt(const char *func, const void *p);
static inline void *link_next(const char *func, void *const *p)
{
    void *next = link_reveal(p, p[0]);
    if (unlikely(!link_plausible(next)))
        link_corrupt(func, p);
    return next;
}

/* ---- size classes ------------------------------------------------------- */

struct size_class {
    pthread_mutex_t lock;
    uint32_t size;                  /* block size */
    uint32_t units;                 /* units per chunk */
    uint32_t align;                 /* every block of the class is aligned so */
    uint32_t data_off;
    uint32_t capacity;
    uint32_t shift;                 /* see block_number() */
    uint64_t inv;
    struct chunk *partial;          /* chunks with at least one free block */
    struct chunk *spare;            /* one empty chunk kept to avoid churn */
    struct chunk *cand;             /* purge candidates touched since their last purge */
    /* Whole batches flushed by thread caches, parked as they are so that the
     * next refill takes one in O(1) without touching any chunk.  Their
     * blocks still count as in use for their chunks. */
    unsigned parked;
    uint16_t parked_count[XFER_SLOTS];
    void *parked_list[XFER_SLOTS];
    uint32_t refills;               /* batches or blocks handed out from the pool */
    /* statistics, under the lock */
    size_t in_use, peak, chunks;
} __attribute__((aligned(64)));

extern struct size_class memalloc_classes[NUM_CLASSES] HIDDEN;

/* The class of an n-byte request, for n above 128: eight classes per
 * doubling.  A macro so that the table below can be built from it at
 * compile time. */
#define CLASS_OF_BIG(n) \
    (8u * (57u - (unsigned)__builtin_clzl((n) - 1)) + \
     (unsigned)((((n) - 1) >> (60u - (unsigned)__builtin_clzl((n) - 1))) & 7u))

/* Requests up to CLASS_TABLE_MAX (every size the thread caches serve) find
 * their class in one table load, indexed by (n - 1) / 16: class bounds are
 * multiples of 16 up there.  2 KiB of read-only data. */
#define CLASS_TABLE_MAX ((size_t)32 << 10)
extern const uint8_t memalloc_class_of[CLASS_TABLE_MAX / 16] HIDDEN;

static inline unsigned size_to_class(size_t n)
{
    if (likely(n - 1 < CLASS_TABLE_MAX))    /* n == 0 wraps past it */
        return memalloc_class_of[(n - 1) >> 4];
    return n == 0 ? 0 : CLASS_OF_BIG(n);
}

HIDDEN void classes_init(void);
HIDDEN size_t class_size_formula(unsigned cls);

/* ---- chunks (chunk.c) --------------------------------------------------- */

HIDDEN void *chunk_alloc(unsigned cls, bool *zeroed);
HIDDEN void chunk_free(struct chunk *c, void *p, const char *func);
HIDDEN size_t chunk_release_spares(void);
HIDDEN size_t chunk_block_size(struct chunk *c, const void *p, const char *func);
HIDDEN unsigned chunk_alloc_batch(unsigned cls, void **list, unsigned n);
HIDDEN void chunk_free_batch(unsigned cls, void *list, unsigned n, bool park);
HIDDEN bool chunk_parked_holds(unsigned cls, const void *p);
HIDDEN size_t chunk_parked_blocks(unsigned cls);    /* class lock held */
HIDDEN void chunk_unpark(unsigned cls);
HIDDEN void chunk_unpark_all(void);
HIDDEN bool chunk_block_live(const struct chunk *c, const void *p);
HIDDEN void chunk_purge_pass(unsigned decay);
HIDDEN void chunk_purge_everything(void);
HIDDEN size_t chunk_purged_bytes(void);
HIDDEN size_t chunk_reused_bytes(void);
HIDDEN void chunk_check_begin(void);
HIDDEN int chunk_check_end(void);

/* ---- the heap (heap.c) -------------------------------------------------- */

struct heap_stats {
    size_t heap_bytes, heap_peak, large_in_use, large_blocks, free_bytes;
    size_t released_sbrk, released_madvise, segments;
};

HIDDEN struct span *heap_alloc_span(size_t units, bool *fresh);
HIDDEN void heap_free_span(struct span *s, size_t dirty);
HIDDEN void *large_alloc(size_t size, size_t align, size_t *dirty_user);
HIDDEN void large_free(struct large_block *b, const void *p, const char *func);
HIDDEN bool large_resize_in_place(struct large_block *b, size_t size);
HIDDEN size_t large_usable(const struct large_block *b);
HIDDEN int heap_trim(size_t pad);
HIDDEN void purge_note(size_t bytes);
HIDDEN void purge_maybe(void);
HIDDEN void heap_get_stats(struct heap_stats *st);
HIDDEN void heap_lock(void);
HIDDEN void heap_unlock(void);
HIDDEN void heap_fork_child(bool relock);
extern int memalloc_pass_running HIDDEN;   /* heap.c: a purge pass is under way */
HIDDEN int heap_check(void);        /* caller holds the heap lock */
HIDDEN int chunk_check(struct chunk *c);  /* caller holds the class lock */

/* ---- pointer lookup ----------------------------------------------------- */

enum ptr_kind { PTR_BAD, PTR_SMALL, PTR_LARGE };

/*
 * Classify p without trusting it: range check first, then the map, then
 * the header the map vouches for.  For PTR_SMALL *meta is the chunk, for
 * PTR_LARGE the block header.  Interior and misaligned pointers are
 * PTR_BAD here or caught by the chunk's own bitmap check.
 */
static inline enum ptr_kind ptr_lookup(const void *p, void **meta)
{
    uintptr_t a = (uintptr_t)p;
    /* Acquire: pairs with heap.c's publish_end(), which stores the new
     * limit (release) after the map entries of the memory below it. */
    uintptr_t limit = __atomic_load_n(&memalloc_heap_limit, __ATOMIC_ACQUIRE);
    if (unlikely(a < memalloc_heap_base || a >= limit || (a & (ALIGNMENT - 1))))
        return PTR_BAD;
    size_t u = unit_index(a);
    uint8_t m = memalloc_unit_map[u];
    if (likely(m & MAP_SMALL)) {
        *meta = (void *)unit_addr(u - (m & MAP_SMALL_MAX_K));
        return PTR_SMALL;
    }
    if (m == MAP_SPAN && (a & (UNIT - 1)) != 0) {
        *meta = (void *)unit_addr(u);
        return PTR_LARGE;
    }
    if (m == MAP_NONE && (a & (UNIT - 1)) == 0 && u > 0 &&
        memalloc_unit_map[u - 1] == MAP_SPAN) {
        *meta = (void *)unit_addr(u - 1);
        return PTR_LARGE;
    }
    return PTR_BAD;
}

/* ---- options and statistics (options.c) -------------------------------- */

enum option_id {
    OPT_TRIM_THRESHOLD,             /* free top space that triggers a shrink */
    OPT_TOP_PAD,                    /* free top space kept after a shrink */
    OPT_STATS,                      /* print statistics at exit */
    OPT_VERBOSE,                    /* warn about bad option values etc. */
    OPT_PERTURB,                    /* glibc's MALLOC_PERTURB_ junk byte */
    OPT_TCACHE,                     /* per-thread caches on (1) or off (0) */
    OPT_PURGE_THRESHOLD,            /* dirty free bytes that trigger madvise */
    OPT_PURGE_LAZY,                 /* MADV_FREE (1) instead of MADV_DONTNEED */
    OPT_PURGE_SHARE,                /* passes at least heap/N apart (0: off) */
    OPT_RETAIN_MAX,                 /* cap of the top space kept after big frees */
    OPT_PURGE_DECAY,                /* pass intervals before a purge (0: adapt) */
    OPT_COUNT
};

extern long memalloc_options[OPT_COUNT] HIDDEN;
HIDDEN void options_load(void);
extern bool memalloc_options_loaded HIDDEN;
static inline void options_ensure(void)
{
    if (unlikely(!memalloc_options_loaded))
        options_load();
}
static inline long option(enum option_id id) { return memalloc_options[id]; }
HIDDEN void stats_print(void);

/* ---- platform (platform.c) ---------------------------------------------- */

HIDDEN void *raw_sbrk(intptr_t delta);
HIDDEN void *raw_break(void);
HIDDEN void raw_reserve(void);
HIDDEN size_t os_purge(void *from, size_t len, bool lazy);
HIDDEN void os_init(void);
extern size_t memalloc_os_page HIDDEN;
/* The kernel's page size (or the build's forced one, if bigger): set by
 * os_init() before the first block is handed out. */
static inline size_t os_page(void) { return memalloc_os_page; }
HIDDEN _Noreturn void fatal_pointer(const char *func, const char *what, const void *p);
HIDDEN void message(const char *text);
HIDDEN size_t fmt_unsigned(char *buf, size_t v);
HIDDEN void lazy_init(void);
HIDDEN void lock_init(pthread_mutex_t *m);

extern int memalloc_initialized HIDDEN;
static inline void ensure_init(void)
{
    if (unlikely(!__atomic_load_n(&memalloc_initialized, __ATOMIC_ACQUIRE)))
        lazy_init();
}

#endif /* MEMALLOC_INTERNAL_H */
