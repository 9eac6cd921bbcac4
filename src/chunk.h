/*
 * chunk.h - small blocks: the chunk header, the block arithmetic the
 * lock-free free path uses, the links between free blocks, and the
 * class pools' operations (chunk.c).
 *
 * Glossary
 *   chunk    a span owned by one size class and carved into equal blocks.
 *            Small blocks carry no header: their chunk is found through the
 *            unit map, their state in the chunk's bitmap.
 *   grain    4 KiB of a chunk, the unit of its purged-page bitmap; a kernel
 *            page is one or more whole grains.
 *   free key a per-process random word that every free block on a page not
 *            purged carries in its second word, so that freeing it again is
 *            noticed without the lock; the bitmap decides for sure.
 */
#ifndef MEMALLOC_CHUNK_H
#define MEMALLOC_CHUNK_H

#include "heap.h"
#include "size_class.h"

#define CHUNK_MIN_BLOCKS 8
#define CHUNK_MAX_BLOCKS (UNIT / ALIGNMENT)
#define CHUNK_MAX_UNITS 20          /* the 128 KiB class needs 17 */
#define CHUNK_MAX_GRAINS (CHUNK_MAX_UNITS * UNIT / GRAIN)
#define TBIN_BYTES 16               /* a thread-cache bin (tcache.h asserts it) */

/* Which blocks are free is kept in a bitmap only, so free blocks hold
 * nothing that must survive: whole pages of free blocks can be given back
 * with madvise.  Blocks past `carved` were never handed out.
 *
 * The first cache line holds what the lock-free free path reads; it is
 * written only while the chunk is set up, carved or purged.  The counts and
 * links that every batch under the class lock writes live on the next line,
 * so threads freeing into their caches do not fight over the header. */
struct chunk {
    struct span s;
    uint8_t cls;
    uint8_t shift;                  /* block size == odd * 2^shift ... */
    uint16_t bin;                   /* cls * TBIN_BYTES: the bin's offset in a thread cache */
    uint32_t carved;                /* blocks below have been handed out once */
    uintptr_t blocks;               /* address of block 0: chunk + data_off */
    uint64_t inv;                   /* ... and odd * inv == 1 modulo 2^64 */
    /* Bit k is set while some purged grain has an address / GRAIN == k
     * modulo 64: the OR of the words of purged_map, rotated by the chunk's
     * own grain number.  A free block on a purged grain has lost the key
     * that marks it free and only its bit can tell, so the lock-free free
     * path leaves blocks whose key word sits on a grain with its bit set to
     * the slow path.  Exact for chunks of up to 64 grains. */
    uint64_t purged_mask;
    uint32_t size;                  /* block size, copied from the class */
    uint32_t data_off;              /* offset of block 0 from the chunk start */
    /* --- written under the class lock --- */
    uint32_t in_use __attribute__((aligned(64)));   /* blocks handed out */
    uint32_t capacity;              /* blocks that fit */
    uint32_t fresh;                 /* memory came straight from sbrk: zero */
    uint32_t hint;                  /* no free block in used_map words below */
    uint32_t purged;                /* grains set in purged_map */
    uint32_t touched;               /* os_now_ms() (mod 2^32) a block last came or went */
    uint32_t listed;                /* on the class's candidate list */
    struct chunk *next, *prev;      /* in the class's list of chunks with room */
    struct chunk *cand_next, *cand_prev;    /* in the class's candidate list */
    uint64_t used_map[CHUNK_MAX_BLOCKS / 64];   /* 1 bit per block in use */
    uint64_t purged_map[CHUNK_MAX_GRAINS / 64]; /* 1 bit per grain given back */
};
#define CHUNK_HDR_SIZE sizeof(struct chunk)

/* In hardened mode only, between the header and block 0: one byte per
 * block, 1 while the program holds the block (harden.c).  A block in a
 * thread cache or in the quarantine is in use for used_map but free here,
 * so this map, not the block, says whether a free is a double free.  A
 * byte, not a bit: no other block shares it, so the thread handing a block
 * out, which alone holds it then, sets it with a plain store. */
static inline uint8_t *chunk_live_map(struct chunk *c)
{
    return (uint8_t *)c + CHUNK_HDR_SIZE;
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

static inline bool bit_get(const uint64_t *map, size_t i)
{
    return (map[i / 64] >> (i % 64)) & 1;
}

/* ---- the free key and the links between free blocks ------------------------ */

extern uintptr_t memalloc_free_key HIDDEN;

/* Blocks in thread caches and in parked batches are listed through their
 * first word.  The link is stored XORed with a per-process secret (glibc's
 * safe-linking, keyed), so a program writing into a freed block cannot
 * steer a later malloc: what it wrote decodes to a random value that fails
 * link_plausible(), and the process stops with "corrupted free list"
 * instead.  The slot's own address is left out of the mangling: it would
 * cost two instructions a pair on the hot path and only adds that a link
 * copied from one free block to another is caught. */
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

/* ---- the pools (chunk.c) ------------------------------------------------------ */

HIDDEN void chunk_init(void);       /* class geometry and the secrets */
HIDDEN void chunk_fork_child(void);
HIDDEN void *chunk_alloc(unsigned cls, bool *zeroed);
HIDDEN void chunk_free(struct chunk *c, void *p, const char *func);
HIDDEN size_t chunk_block_size(struct chunk *c, const void *p, const char *func);
HIDDEN bool chunk_block_live(const struct chunk *c, const void *p);
HIDDEN unsigned chunk_alloc_batch(unsigned cls, void **list, unsigned n);
HIDDEN void chunk_free_batch(unsigned cls, void *list, unsigned n, bool park);
HIDDEN bool chunk_parked_holds(unsigned cls, const void *p);
HIDDEN size_t chunk_parked_blocks(unsigned cls);    /* class lock held */
HIDDEN void chunk_unpark(unsigned cls);
HIDDEN void chunk_unpark_all(void);
HIDDEN size_t chunk_release_spares(void);

/* Purging (what purge.c asks for): */
HIDDEN void chunk_sweep(struct sweep *sw);          /* idle candidates */
HIDDEN bool chunk_listed(void);                     /* any candidate at all */
HIDDEN void chunk_purge_everything(void);           /* every chunk, now */
extern size_t memalloc_chunk_noted HIDDEN;  /* bytes that turned purgeable, ever */
HIDDEN size_t chunk_purged_bytes(void);
HIDDEN size_t chunk_reused_bytes(void);

/* For check.c: */
HIDDEN bool chunk_all_free(const struct chunk *c, size_t lo, size_t hi);
HIDDEN uint64_t chunk_purged_mask(const struct chunk *c);

#endif /* MEMALLOC_CHUNK_H */
