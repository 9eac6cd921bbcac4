/*
 * heap.h - the heap's geometry and its spans: units, the unit map that
 * turns any pointer into its span in O(1), free space, large blocks, and
 * the heap-top lock that guards them all (heap.c).
 *
 * Glossary
 *   unit     64 KiB of address space, aligned to 64 KiB.  The heap is made of
 *            whole units; every span starts on a unit boundary.
 *   span     a run of units with a header in its first bytes: a small-class
 *            chunk (chunk.h), a large block, or free space.  Spans tile each
 *            segment with no gaps; each knows its size and its predecessor's
 *            size, so free neighbours can be coalesced in O(1).
 *   segment  a contiguous run of units obtained with sbrk.  There is more
 *            than one only when other code moved the break behind our back;
 *            only the top segment can grow or shrink.
 *   unit map one byte per unit of the address range above the heap base,
 *            saying whether a span starts there or which unit of a chunk it
 *            is.  It lives in .bss (untouched pages cost nothing) and lets
 *            free() validate any pointer before reading heap memory.
 *
 * Lock order (never taken in any other order):
 *   thread-cache list lock -> size-class locks, in class-index order
 *   -> heap-top lock
 * The hardened mode's quarantine lock (harden.c) is held with none of these,
 * except by the fork handlers, which take it before all of them.
 * A thread holds at most one class lock except in memalloc_check() and the
 * fork handlers, which take all of them in index order.  Nothing that may
 * call malloc is called while any of these locks is held.
 */
#ifndef MEMALLOC_HEAP_H
#define MEMALLOC_HEAP_H

#include "os.h"

/* ---- geometry ---------------------------------------------------------- */

#define UNIT_SHIFT 16
#define UNIT ((size_t)1 << UNIT_SHIFT)
#define GRAIN 4096u                 /* chunk bitmaps' granule; os_page() is the real page */
#define ALIGNMENT 16u               /* every result is 16-byte aligned */
_Static_assert(GRAIN == OS_PAGE_MIN && UNIT == OS_PAGE_MAX,
               "a kernel page is whole grains, and a unit is whole pages");

/* 2^22 units of 64 KiB: memalloc's heap may span 256 GiB above its base.
 * That costs 4 MiB of .bss address space and one resident page of map per
 * 256 MiB of heap actually used. */
#define MAP_UNITS ((size_t)1 << 22)

/* ---- spans ------------------------------------------------------------- */

enum span_kind {
    SPAN_FREE  = 0x46524545,        /* "FREE" */
    SPAN_LARGE = 0x4c415247,        /* "LARG" */
    SPAN_CHUNK = 0x43484e4b,        /* "CHNK" */
};

#define SPAN_SEG_END 1u             /* last span of a non-top segment */
#define SPAN_HELD 2u                /* hardened mode: a large block in quarantine */

struct span {
    uint32_t kind;                  /* enum span_kind */
    uint32_t flags;
    size_t units;                   /* size of this span */
    size_t prev_units;              /* size of the span below; 0: first in segment */
};

static inline size_t span_bytes(const struct span *s) { return s->units << UNIT_SHIFT; }

/* Free space: linked into a size bin of the heap. */
struct free_span {
    struct span s;
    struct free_span *next, *prev;
    size_t dirty;                   /* bytes that may still be resident */
    uint64_t dirty_since;           /* os_now_ms() when its oldest dirt was freed */
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

/* ---- sweeping: what a purge pass asks of chunks and spans --------------- */

/* Purge what was last used at or before `before` (os_now_ms() time), and
 * busy chunks (chunk.c) only when last used at or before `idle`; tell how
 * much was given back and how much was spared, when the oldest spared
 * memory was last used, and how much of the free spans' dirt the sweep
 * cleaned (what heap_dirt_mark() fell by). */
struct sweep {
    uint64_t before, idle;
    size_t purged, spared;
    uint64_t oldest;                /* UINT64_MAX: nothing spared */
    size_t cleaned;
};

/* ---- the heap (heap.c) -------------------------------------------------- */

struct heap_stats {
    size_t heap_bytes, heap_peak, large_in_use, large_blocks, free_bytes;
    size_t released_sbrk, released_madvise, segments;
    uint64_t locks, contended;      /* the heap lock taken, and taken after a wait */
};

#define NUM_BINS 23                 /* floor(log2(units)) for up to 2^22 units */

/* The bin of a free span of `units` units: floor(log2(units)), capped. */
static inline unsigned heap_bin_of(size_t units)
{
    unsigned b = 63u - (unsigned)__builtin_clzl(units);
    return b < NUM_BINS ? b : NUM_BINS - 1;
}

/* The heap's state, under the heap lock; visible for check.c's walker
 * and for the counters purge.c reads (relaxed, they only steer it). */
struct heap_state {
    uintptr_t seg_pad;              /* bytes below the top segment taken to align it */
    uintptr_t end;                  /* end of the top segment */
    struct span *top;               /* highest span of the top segment */
    struct free_span *bins[NUM_BINS];
    struct free_span *dirty;        /* binned spans that may hold resident pages */
    size_t dirty_free;              /* sum of the free spans' dirty bytes */
    size_t chunk_dirt;              /* dirt that retired chunks brought, ever */
    size_t retain;                  /* twice the biggest large block freed */
    size_t large_allocs;            /* large blocks ever handed out */
    struct heap_stats st;
};
extern struct heap_state memalloc_heap HIDDEN;

HIDDEN void heap_lock(void);
HIDDEN void heap_unlock(void);
HIDDEN void heap_fork_child(void);
HIDDEN void *heap_sbrk(intptr_t delta);     /* the program's own sbrk ... */
HIDDEN void *heap_brk(void *addr);          /* ... and brk: the old break */
HIDDEN struct span *heap_alloc_span(size_t units, bool *fresh);
HIDDEN void heap_free_span(struct span *s, size_t dirty);
HIDDEN void *large_alloc(size_t size, size_t align, size_t *dirty_user);
HIDDEN void large_free(struct large_block *b, const void *p, const char *func);
/* Hardened mode: b, the large block at p, turns held (quarantined); a
 * block that is held already or is no large block at p stops the process. */
HIDDEN void large_hold(struct large_block *b, const void *p, const char *func);
HIDDEN bool large_resize_in_place(struct large_block *b, size_t size);
HIDDEN size_t large_usable(const struct large_block *b);
HIDDEN void heap_sweep(struct sweep *sw);
HIDDEN bool heap_shrink(size_t pad);
HIDDEN void heap_get_stats(struct heap_stats *st);

/* Free spans' dirt that large blocks and split spans brought, as a
 * running mark: its growth between two reads is what became purgeable
 * there (retired chunks' dirt is left out: chunk.c counts it). */
static inline size_t heap_dirt_mark(void)
{
    return __atomic_load_n(&memalloc_heap.dirty_free, __ATOMIC_RELAXED) -
           __atomic_load_n(&memalloc_heap.chunk_dirt, __ATOMIC_RELAXED);
}

#endif /* MEMALLOC_HEAP_H */
