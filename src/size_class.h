/*
 * size_class.h - the small size classes: their sizes, the request-to-class
 * table, and each class's pool (struct size_class), which chunk.c keeps
 * under the class's lock.
 *
 * Invariants: sizes are multiples of 16 and strictly increasing;
 * size_to_class(n) is the smallest class whose size is >= n.
 */
#ifndef MEMALLOC_SIZE_CLASS_H
#define MEMALLOC_SIZE_CLASS_H

#include "os.h"

/* Small classes: 16..128 in steps of 16, then eight classes per doubling up
 * to SMALL_MAX.  Eight steps per doubling bound the rounding waste of any
 * request above 128 bytes by 1/8 = 12.5%: a request just above 2^k is
 * rounded up by at most one step of 2^k/8.  Below 128 bytes the 16-byte
 * alignment floor dominates instead.  SMALL_MAX is where a chunk of at
 * least eight blocks reaches 1 MiB; beyond it a dedicated large block wastes
 * at most the tail of one 64 KiB unit, and those tail pages are never
 * touched, so they cost address space but no resident memory. */
#define SMALL_MAX ((size_t)128 << 10)
#define NUM_CLASSES 88
#define CLASS_ALIGN_MAX 4096u       /* classes give their blocks natural alignment up to this */
#define XFER_SLOTS 4                /* batches parked per class */

struct chunk;

struct size_class {
    pthread_mutex_t lock;
    uint32_t size;                  /* block size */
    uint32_t shift;                 /* size == odd << shift ... */
    uint64_t inv;                   /* ... and odd * inv == 1 modulo 2^64 */
    /* chunk geometry (chunk_init) */
    uint32_t units;                 /* units per chunk */
    uint32_t align;                 /* every block of the class is aligned so */
    uint32_t data_off;
    uint32_t capacity;
    /* the pool, under the lock (chunk.c) */
    struct chunk *partial;          /* chunks with at least one free block */
    struct chunk *spare;            /* one empty chunk kept to avoid churn */
    struct chunk *cand;             /* purge candidates */
    /* Whole batches flushed by thread caches, parked as they are so that the
     * next refill takes one in O(1) without touching any chunk.  Their
     * blocks still count as in use for their chunks. */
    unsigned parked;
    uint16_t parked_count[XFER_SLOTS];
    void *parked_list[XFER_SLOTS];
    uint32_t refills;               /* batches or blocks handed out from the pool */
    uint32_t refilled;              /* os_now_ms() (mod 2^32) of the last one */
    /* statistics, under the lock */
    size_t in_use, peak, chunks;
    uint64_t locks, contended;      /* the lock taken, and taken after a wait */
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

#endif /* MEMALLOC_SIZE_CLASS_H */
