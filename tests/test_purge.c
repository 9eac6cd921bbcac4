/*
 * test_purge.c - pages of free blocks inside chunks go back to the kernel
 * (src/chunk.c: purge_chunk, chunk_sweep, chunk_purge_everything,
 * unpurge), and everything that reads a chunk still works while some of
 * its pages are purged.  Each phase uses a size class nobody touched yet.
 *
 *   1. malloc_trim: a chunk filled through chunk_alloc, a pattern written
 *      into every block, all blocks but one or two freed; then
 *      memalloc_malloc_trim(0) returns 1 and purges exactly the pages whose
 *      overlapping blocks are all free (never the header page) and takes
 *      the chunk off the candidate list: c->purged and the bits of
 *      c->purged_map match a model computed from the blocks, purged_mask
 *      (the fast path's bits) is their OR and not 0, mincore(2) says the purged pages are gone and the pages of the
 *      live blocks are resident, purged pages read as zero, the live blocks
 *      keep their pattern.  Allocating again hands the free blocks out
 *      lowest first at their old addresses, not claiming zeroed, with every
 *      byte on a purged page zero; each page's bit clears as soon as a block
 *      on it is handed out (c->purged follows the model block by block) and
 *      purged_mask clears with the last purged page.  For a
 *      one-unit class with blocks straddling pages, a class of multi-page
 *      blocks, and a multi-unit class (pages past the first unit).
 *   2. sweeps (chunk_sweep, what a purge pass runs): a dense chunk
 *      (in_use * 16 > capacity; for blocks of a page or more in_use * 2 >
 *      capacity) is listed but not purged by a sweep's cutoff for sparse
 *      chunks, only by its cutoff for busy ones; a sparse one is purged
 *      by a sweep whose cutoff is at or after its last touch, and spared,
 *      counted and dated, by one whose cutoff is before it; a free into it
 *      moves its last touch; the sweep takes it off the candidate list.  (Spontaneous passes are kept
 *      out by raising the purge threshold for this phase.)
 *   3. misuse on purged pages, in forked children (memalloc_free & co.):
 *      freeing again a block that was freed before its page was purged (its
 *      free key is gone with the page), freeing twice a live block of a
 *      chunk with purged pages, realloc / malloc_usable_size of a purged
 *      block and an interior pointer into one: each dies of SIGABRT with
 *      one "memalloc:" line naming the function and the pointer ("double
 *      free" for the double frees).  A single free of the live block in a
 *      child succeeds and leaves memalloc_check() at 0.
 *   4. the slow free path: blocks from memalloc_malloc (thread cache when
 *      there is one), their chunk purged by malloc_trim, so purged_mask is
 *      set; memalloc_free of a live block of that chunk works: it lands in
 *      this thread's bin (junk-filled under MALLOC_PERTURB_, which turns off
 *      only the hot path), or goes back to the chunk when there is no cache;
 *      the next memalloc_malloc returns a live block of the class (the same
 *      one from the cache), and memalloc_check() stays 0.  Allocating on
 *      through memalloc_malloc (batch refills) unpurges every page and
 *      clears purged_mask; freeing it all and trimming leaves the class
 *      empty.
 *   6. (test_rekey) a purged page that comes back into use gives its free
 *      blocks their free key back: freeing one again still aborts.
 *   5. statistics: heap_get_stats' released_madvise and chunk_purged_bytes
 *      grow by at least the purged bytes of each trim or pass, and
 *      chunk_reused_bytes by exactly the pages that came back into use.
 * The mincore and zero checks are skipped when MEMALLOC_PURGE_LAZY asks
 * for MADV_FREE (pages may stay), and when mincore does not work (some
 * valgrind versions).  memalloc_check() == 0 after every phase, with and
 * without MALLOC_PERTURB_.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internals.h"
#include "memalloc.h"

#define CHECK_MAX_FAILURES 100      /* CHECK gives up after that many */
#include "check.h"

/* ---- madvise, as a kernel with the page size in force sees it -------------- */

/* This test links memalloc's objects statically, so this definition is the
 * one memalloc calls.  It does what a kernel whose pages are os_page() bytes
 * does (memalloc may be built to assume bigger pages than this machine's):
 * a start off a page boundary fails with EINVAL, a length is rounded up to
 * whole pages, zapping whatever shares the last one.  Any such call is
 * also counted: memalloc must round every range inward itself.  The live
 * blocks' contents are checked after every purge, so a range that zaps
 * live data fails there too. */
static size_t madvise_calls, madvise_misaligned;

int madvise(void *addr, size_t len, int advice)
{
    size_t page = os_page();
    madvise_calls++;
    if ((uintptr_t)addr % page != 0 || len % page != 0) {
        madvise_misaligned++;
        fprintf(stderr, "madvise(%p, %zu) is not aligned to the %zu-byte page\n", addr, len,
                page);
    }
    if ((uintptr_t)addr % page != 0) {
        errno = EINVAL;
        return -1;
    }
    return (int)syscall(SYS_madvise, addr, (len + page - 1) / page * page, advice);
}

/* ---- helpers ------------------------------------------------------------- */

/* Units a chunk needs for a kernel page above its header: with 64 KiB pages
 * a one-unit chunk has nothing it could give back. */
static uint32_t purgeable_units(void) { return os_page() >= UNIT ? 2 : 1; }


/* The fast path's mask: bit k set exactly when a purged page's address
 * divided by GRAIN is k modulo 64. */
static bool mask_ok(const struct chunk *c)
{
    uint64_t m = 0;
    for (size_t pg = 0; pg < CHUNK_MAX_GRAINS; pg++)
        if ((c->purged_map[pg / 64] >> (pg % 64)) & 1)
            m |= (uint64_t)1 << (((uintptr_t)c / GRAIN + pg) % 64);
    return c->purged_mask == m;
}

static struct chunk *chunk_of(const void *p)
{
    void *meta = NULL;
    return ptr_lookup(p, &meta) == PTR_SMALL ? meta : NULL;
}

/* The first class of at least min_size that nobody has used yet. */
static int pristine_class(size_t min_size, uint32_t min_units)
{
    for (unsigned c = size_to_class(min_size); c < NUM_CLASSES; c++) {
        const struct size_class *sc = &memalloc_classes[c];
        if (sc->units >= min_units && sc->chunks == 0 && !sc->partial && !sc->spare &&
            sc->in_use == 0 && sc->parked == 0)
            return (int)c;
    }
    return -1;
}


static unsigned char pat(size_t i) { return (unsigned char)((i * 29 + 0x35) | 1); }

static void fill(void *p, size_t size, size_t i) { memset(p, pat(i), size); }

/* Does block i (at p) still hold its pattern? */
static bool intact(const void *p, size_t size, size_t i)
{
    const unsigned char *b = p;
    for (size_t j = 0; j < size; j++)
        if (b[j] != pat(i))
            return false;
    return true;
}

static bool page_zero(const void *p)
{
    const uint64_t *w = p;
    for (size_t j = 0; j < GRAIN / sizeof *w; j++)
        if (w[j])
            return false;
    return true;
}

static size_t chunk_pages(const struct chunk *c) { return c->s.units * (UNIT / GRAIN); }

static char *block_at(const struct chunk *c, size_t i)
{
    return (char *)c + c->data_off + i * c->size;
}

static size_t first_page(const struct chunk *c, size_t i)
{
    return (c->data_off + i * c->size) / GRAIN;
}

static size_t last_page(const struct chunk *c, size_t i)
{
    return (c->data_off + (i + 1) * c->size - 1) / GRAIN;
}

static bool purged_bit(const struct chunk *c, size_t pg)
{
    return (c->purged_map[pg / 64] >> (pg % 64)) & 1;
}

/* The model, from the blocks alone: which pages of a full chunk (every block
 * carved) a purge must take.  A page goes when it lies wholly above the
 * header's start (data_off), overlaps at least one block and no live one.
 * state[pg]: 0 no block, 1 free blocks only, 2 a live block.  Returns the
 * number of pages to purge, marking them in want[]. */
enum { PG_EMPTY, PG_FREE, PG_LIVE };

static size_t model(const struct chunk *c, const bool *live, unsigned char *state, bool *want)
{
    size_t npages = chunk_pages(c), n = 0;
    memset(state, PG_EMPTY, npages);
    for (size_t i = 0; i < c->capacity; i++)
        for (size_t pg = first_page(c, i); pg <= last_page(c, i); pg++)
            if (live[i])
                state[pg] = PG_LIVE;
            else if (state[pg] == PG_EMPTY)
                state[pg] = PG_FREE;
    /* A kernel page goes back whole: its grains go when none holds a live
     * block and the page lies wholly above data_off. */
    const size_t step = os_page() / GRAIN;
    for (size_t pg = 0; pg < npages; pg += step) {
        bool page_free = pg * GRAIN >= c->data_off;
        for (size_t g = pg; g < pg + step; g++)
            page_free &= state[g] != PG_LIVE;
        for (size_t g = pg; g < pg + step; g++) {
            want[g] = page_free && state[g] == PG_FREE;
            n += want[g];
        }
    }
    return n;
}

static int mincore_ok = -1;         /* -1: not probed yet */

static bool can_check_residency(void)
{
    if (option(OPT_PURGE_LAZY))     /* MADV_FREE: pages may stay until pressure */
        return false;
    if (mincore_ok < 0) {
        unsigned char v = 0;
        void *probe = (void *)(memalloc_heap_base);
        mincore_ok = mincore(probe, GRAIN, &v) == 0;
        if (!mincore_ok)
            fprintf(stderr, "note: mincore fails (%s): residency checks skipped\n",
                    strerror(errno));
    }
    return mincore_ok;
}

/* After a purge of c: the bitmap and counters follow the model, the purged
 * pages are gone and read as zero, the live blocks' pages are resident and
 * their data intact.  blk[i] == block i, live[i] says whether it is held. */
static void verify_purged(const char *phase, struct chunk *c, const bool *live,
                          const unsigned char *state, const bool *want, size_t n_want)
{
    size_t npages = chunk_pages(c);
    CHECK(c->purged == n_want, "%s: c->purged %u, want %zu pages", phase, c->purged, n_want);
    for (size_t pg = 0; pg < npages; pg++)
        if (purged_bit(c, pg) != want[pg]) {
            CHECK(0, "%s: page %zu purged bit %d, want %d (state %d, data_off %u, size %u)",
                  phase, pg, purged_bit(c, pg), want[pg], state[pg], c->data_off, c->size);
            break;
        }
    CHECK(!purged_bit(c, 0), "%s: the header page is marked purged", phase);
    CHECK(mask_ok(c) && (c->purged_mask != 0) == (n_want != 0), "%s: mask set %u with %u purged pages "
          "(carved %u)", phase, (unsigned)(c->purged_mask != 0), c->purged, c->carved);

    if (can_check_residency()) {
        unsigned char vec[CHUNK_MAX_GRAINS];   /* one per real page: at most one per grain */
        const size_t real = (size_t)sysconf(_SC_PAGESIZE);
        /* qemu-user's mincore reports host pages, not the guest's. */
        if (getenv("MESON_EXE_WRAPPER")) {
            /* only the zero check below */
        } else if (mincore(c, npages * GRAIN, vec) != 0) {
            CHECK(0, "%s: mincore(%p, %zu): %s", phase, (void *)c, npages * GRAIN,
                  strerror(errno));
        } else {
            size_t gone_resident = 0, live_missing = 0;
            for (size_t pg = 0; pg < npages; pg++) {
                unsigned char v = vec[pg * GRAIN / real];
                if (want[pg] && (v & 1))
                    gone_resident++;
                if ((state[pg] == PG_LIVE || pg == 0) && !(v & 1))
                    live_missing++;
            }
            CHECK(gone_resident == 0, "%s: %zu of %zu purged pages still resident", phase,
                  gone_resident, n_want);
            CHECK(live_missing == 0, "%s: %zu pages holding live blocks (or the header) not "
                  "resident", phase, live_missing);
        }
        /* Reading maps the zero page: only after mincore. */
        for (size_t pg = 0; pg < npages; pg++)
            if (want[pg] && !page_zero((char *)c + pg * GRAIN)) {
                CHECK(0, "%s: purged page %zu does not read as zero", phase, pg);
                break;
            }
    }
    for (size_t i = 0; i < c->capacity; i++)
        if (live[i] && !intact(block_at(c, i), c->size, i))
            CHECK(0, "%s: live block %zu lost its data", phase, i);
}

/* Fill a fresh chunk of cls through chunk_alloc: every block, in address
 * order, each holding its pattern.  blk gets capacity pointers. */
static struct chunk *fill_chunk(unsigned cls, void **blk)
{
    struct size_class *sc = &memalloc_classes[cls];
    struct chunk *c = NULL;
    for (size_t i = 0; i < sc->capacity; i++) {
        bool z;
        blk[i] = chunk_alloc(cls, &z);
        if (!blk[i]) {
            fprintf(stderr, "%s: chunk_alloc(%u) failed\n", __FILE__, cls);
            exit(1);
        }
        if (i == 0)
            c = chunk_of(blk[0]);
        CHECK(c && chunk_of(blk[i]) == c && blk[i] == block_at(c, i),
              "class %u: block %zu at %p is not the chunk's block %zu", cls, i, blk[i], i);
        if (!c || blk[i] != block_at(c, i))
            exit(1);
        fill(blk[i], sc->size, i);
    }
    CHECK(c->carved == c->capacity && c->in_use == c->capacity && c->purged == 0 &&
          c->purged_mask == 0,
          "class %u: full chunk carved %u in_use %u purged %u mask set %u", cls, c->carved,
          c->in_use, c->purged, (unsigned)(c->purged_mask != 0));
    return c;
}

static void free_block(struct chunk *c, void *p)
{
    chunk_free(c, p, "free");
}

/* A sweep of the chunks, as a pass runs it, with the given cutoffs: for
 * sparse chunks, and for busy ones (idle for the whole delay). */
static struct sweep sweep_at(uint64_t before, uint64_t idle)
{
    struct sweep sw = {.before = before, .idle = idle, .oldest = UINT64_MAX};
    chunk_sweep(&sw);
    return sw;
}

static struct sweep sweep_before(uint64_t before) { return sweep_at(before, 0); }

static size_t released_madvise(void)
{
    struct heap_stats h;
    heap_get_stats(&h);
    h.released_madvise += chunk_purged_bytes();
    return h.released_madvise;
}

/* ---- 1. malloc_trim purges, allocation unpurges ---------------------------- */

static void test_trim(unsigned cls, const size_t *keep, size_t nkeep)
{
    struct size_class *sc = &memalloc_classes[cls];
    const size_t cap = sc->capacity, size = sc->size;
    fprintf(stderr, "trim: class %u, size %zu, %u unit(s), capacity %zu, data_off %u\n", cls,
            size, sc->units, cap, sc->data_off);
    void **blk = xcalloc(cap, sizeof *blk);
    bool *live = xcalloc(cap, sizeof *live);
    unsigned char state[CHUNK_MAX_GRAINS];
    bool want[CHUNK_MAX_GRAINS], was_purged[CHUNK_MAX_GRAINS];

    struct chunk *c = fill_chunk(cls, blk);
    for (size_t k = 0; k < nkeep; k++)
        live[keep[k]] = true;
    for (size_t i = 0; i < cap; i++)
        if (!live[i])
            free_block(c, blk[i]);
    CHECK(c->in_use == nkeep, "in_use %u after freeing all but %zu", c->in_use, nkeep);
    CHECK_HEAP("freeing all but a few blocks");

    size_t n_want = model(c, live, state, want);
    CHECK(n_want > 0, "test setup: no page holds only free blocks");
    size_t madv0 = released_madvise(), purged0 = chunk_purged_bytes();
    size_t reused0 = chunk_reused_bytes();
    size_t already = c->purged;     /* a spontaneous pass may have come first */
    int r = memalloc_malloc_trim(0);
    CHECK(r == 1 || already == n_want, "malloc_trim(0) returned %d after freeing %zu pages' "
          "worth of blocks", r, n_want);
    verify_purged("malloc_trim", c, live, state, want, n_want);
    CHECK(!c->listed, "malloc_trim left the purged chunk on the candidate list");
    size_t got = (n_want - already) * GRAIN;
    CHECK(released_madvise() - madv0 >= got, "released_madvise grew by %zu, want at least %zu",
          released_madvise() - madv0, got);
    CHECK(chunk_purged_bytes() - purged0 >= got, "chunk_purged_bytes grew by %zu, want >= %zu",
          chunk_purged_bytes() - purged0, got);
    CHECK_HEAP("malloc_trim with live blocks in the chunk");

    /* Allocate every free block again: lowest first, pages unpurged as
     * blocks are taken from them. */
    memcpy(was_purged, want, sizeof was_purged);
    size_t left = n_want;
    bool resid = can_check_residency();
    for (size_t i = 0; i < cap; i++) {
        if (live[i])
            continue;
        bool z = true;
        char *q = chunk_alloc(cls, &z);
        CHECK(q == blk[i], "allocation after the purge: got %p, want the lowest free block %zu "
              "at %p", (void *)q, i, blk[i]);
        if (q != blk[i])
            break;
        CHECK(!z, "block %zu handed out before claims to be zeroed", i);
        if (resid) {
            /* Every byte of the block on a purged page is zero (the word
             * chunk_alloc clears aside). */
            for (size_t pg = first_page(c, i); pg <= last_page(c, i); pg++) {
                if (!was_purged[pg])
                    continue;
                char *lo = (char *)c + pg * GRAIN, *hi = lo + GRAIN;
                if (lo < q)
                    lo = q;
                if (hi > q + size)
                    hi = q + size;
                bool zero = true;
                for (char *b = lo; b < hi; b++)
                    zero &= *b == 0;
                CHECK(zero, "block %zu reads non-zero on purged page %zu", i, pg);
            }
        }
        for (size_t pg = first_page(c, i); pg <= last_page(c, i); pg++)
            if (want[pg]) {
                want[pg] = false;
                left--;
            }
        live[i] = true;
        fill(q, size, i);
        CHECK(c->purged == left, "after block %zu: purged %u, want %zu", i, c->purged, left);
        for (size_t pg = first_page(c, i); pg <= last_page(c, i); pg++)
            CHECK(!purged_bit(c, pg), "page %zu of block %zu handed out still marked purged",
                  pg, i);
        CHECK(mask_ok(c) && (c->purged_mask != 0) == (left != 0), "after block %zu: mask set %u, "
              "purged %zu, carved %u", i, (unsigned)(c->purged_mask != 0), left, c->carved);
        if (c->purged != left)
            break;
    }
    CHECK(c->in_use == cap && c->purged == 0 && c->purged_mask == 0 &&
          c->carved == cap, "refilled chunk: in_use %u purged %u mask set %u carved %u",
          c->in_use, c->purged, (unsigned)(c->purged_mask != 0), c->carved);
    CHECK(chunk_reused_bytes() - reused0 == n_want * GRAIN,
          "chunk_reused_bytes grew by %zu, want the %zu purged pages", chunk_reused_bytes() -
          reused0, n_want);
    for (size_t i = 0; i < cap; i++)
        if (!intact(blk[i], size, i)) {
            CHECK(0, "block %zu of the refilled chunk lost its data", i);
            break;
        }
    CHECK_HEAP("refilling a purged chunk");

    for (size_t i = 0; i < cap; i++)
        free_block(c, blk[i]);
    CHECK(sc->in_use == 0, "class in_use %zu after freeing all", sc->in_use);
    CHECK_HEAP("emptying the chunk");
    memalloc_malloc_trim(0);
    CHECK_HEAP("trim after emptying the chunk");
    free(live);
    free(blk);
}

/* ---- 2. purge passes: sparse, idle chunks only ------------------------------ */

static void test_pass(unsigned cls)
{
    struct size_class *sc = &memalloc_classes[cls];
    const size_t cap = sc->capacity;
    const bool page_blocks = sc->size >= os_page();
    /* The most blocks in use that still make a candidate. */
    const size_t sparse = page_blocks ? cap / 2 : cap / 16;
    fprintf(stderr, "pass: class %u, size %u, capacity %zu, candidate at %zu in use\n", cls,
            sc->size, cap, sparse);
    if (sparse < 2) {
        CHECK(0, "test setup: class %u too small for the pass test", cls);
        return;
    }
    void **blk = xcalloc(cap, sizeof *blk);
    bool *live = xcalloc(cap, sizeof *live);
    unsigned char state[CHUNK_MAX_GRAINS];
    bool want[CHUNK_MAX_GRAINS];

    long threshold = memalloc_options[OPT_PURGE_THRESHOLD];
    memalloc_options[OPT_PURGE_THRESHOLD] = PTRDIFF_MAX;    /* no passes but ours */

    struct chunk *c = fill_chunk(cls, blk);
    for (size_t i = 0; i < cap; i++)
        live[i] = true;
    /* Dense: one block more than a candidate may hold, the lowest ones. */
    for (size_t i = cap; i-- > sparse + 1;) {
        free_block(c, blk[i]);
        live[i] = false;
    }
    CHECK(c->in_use == sparse + 1 && c->listed == 1, "dense chunk: in_use %u listed %u",
          c->in_use, c->listed);
    sweep_before(os_now_ms() + 1000);
    CHECK(c->purged == 0 && c->purged_mask == 0,
          "passes purged a dense chunk (in_use %u of %zu): purged %u mask set %u", c->in_use,
          cap, c->purged, (unsigned)(c->purged_mask != 0));

    /* Sparse: a candidate, purged by a sweep whose cutoff is its last touch. */
    free_block(c, blk[sparse]);
    live[sparse] = false;
    CHECK(c->listed == 2, "sparse chunk (in_use %u of %zu) is not a noted purge candidate",
          c->in_use, cap);
    uint32_t t0 = c->touched;
    struct sweep sw = sweep_before((uint64_t)t0 - 1);
    CHECK(c->purged == 0 && c->listed, "a sweep purged a chunk touched after its cutoff: "
          "purged %u listed %u", c->purged, c->listed);
    CHECK(sw.spared > 0 && (uint32_t)sw.oldest == t0, "the spared chunk was not counted "
          "(%zu bytes) or dated (%llu, touched %u)", sw.spared, (unsigned long long)sw.oldest, t0);
    /* A free moves the last touch. */
    os_sleep_ms(30);
    free_block(c, blk[sparse - 1]);
    live[sparse - 1] = false;
    CHECK((int32_t)(c->touched - t0) >= 20, "a free 30 ms later moved the touch from %u to %u",
          t0, c->touched);
    sweep_before((uint64_t)t0 + 10);
    CHECK(c->purged == 0 && c->listed, "a sweep purged a chunk freed into after its cutoff: "
          "purged %u listed %u", c->purged, c->listed);
    size_t n_want = model(c, live, state, want);
    size_t madv0 = released_madvise();
    sweep_before(c->touched);
    CHECK(c->purged != 0 && !c->listed, "a sweep with the cutoff at the last touch did not "
          "purge the chunk: purged %u listed %u", c->purged, c->listed);
    verify_purged("purge pass", c, live, state, want, n_want);
    CHECK(released_madvise() - madv0 >= n_want * GRAIN,
          "released_madvise grew by %zu after a pass, want at least %zu",
          released_madvise() - madv0, n_want * GRAIN);
    CHECK_HEAP("purge pass");

    /* Dense again: the pass leaves it alone, its purged pages stay purged. */
    size_t before = c->purged;
    for (size_t i = 0; i < cap && c->in_use < sparse + 2; i++)
        if (!live[i]) {
            bool z;
            CHECK(chunk_alloc(cls, &z) == blk[i], "refill: block %zu not handed out first", i);
            live[i] = true;
        }
    free_block(c, blk[sparse + 1]);
    live[sparse + 1] = false;
    CHECK(c->listed == 1, "a dense chunk is not listed as busy: %u", c->listed);
    size_t after_refill = c->purged;
    CHECK(after_refill <= before, "refilling raised purged from %zu to %zu", before,
          after_refill);
    sweep_before(os_now_ms() + 1000);
    CHECK(c->listed == 1, "a sweep took a busy chunk that was not idle off its list");
    CHECK(c->purged == after_refill, "a pass changed a dense chunk's purged pages %zu -> %u",
          after_refill, c->purged);
    CHECK_HEAP("dense chunk after a purge");
    /* Idle for the whole delay, a busy chunk goes too (its free pages were
     * purged before: the sweep takes it off the list). */
    sweep_at(0, os_now_ms() + 1000);
    CHECK(!c->listed, "a busy chunk idle for the delay is still listed");
    CHECK_HEAP("busy chunk purged after the delay");

    for (size_t i = 0; i < cap; i++)
        if (live[i])
            free_block(c, blk[i]);
    memalloc_options[OPT_PURGE_THRESHOLD] = threshold;
    memalloc_malloc_trim(0);
    CHECK_HEAP("after the pass test");
    free(live);
    free(blk);
}

/* ---- 3. misuse of blocks on purged pages ---------------------------------- */

enum action { A_FREE, A_FREE_TWICE, A_FREE_CHECK, A_REALLOC, A_USABLE };

static void act(enum action a, void *p)
{
    void *volatile r = NULL;
    switch (a) {
    case A_FREE:
        memalloc_free(p);
        break;
    case A_FREE_TWICE:
        memalloc_free(p);
        memalloc_free(p);
        break;
    case A_FREE_CHECK:
        memalloc_free(p);
        _exit(memalloc_check() == 0 ? 0 : 3);
    case A_REALLOC:
        r = memalloc_realloc(p, 10);
        break;
    case A_USABLE:
        r = (void *)memalloc_malloc_usable_size(p);
        break;
    }
    (void)r;
}

static void act_any(int a, void *p) { act((enum action)a, p); }

/* Run the action in a child.  func NULL: it must exit 0.  Otherwise it must
 * die of SIGABRT with one line holding "memalloc:", "func()", the pointer
 * and, if label, that word. */
static void expect(const char *what, enum action a, void *p, const char *func,
                   const char *label, int line)
{
    char out[1024];
    size_t len;
    int st = run_captured(act_any, (int)a, p, out, sizeof out, &len);
    if (!func) {
        if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
            fprintf(stderr, "%s:%d: FAIL: %s: child %s %d; stderr: \"%s\"\n", __FILE__, line,
                    what, CHILD_HOW(st), out);
            failures++;
        }
        return;
    }
    if (!(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT)) {
        fprintf(stderr, "%s:%d: FAIL: %s (%s() %p): child %s %d, not SIGABRT; stderr: \"%s\"\n",
                __FILE__, line, what, func, p, CHILD_HOW(st), out);
        failures++;
        return;
    }
    char fn[64];
    snprintf(fn, sizeof fn, "%s()", func);
    if (!abort_line_ok(out, len, fn, p) || (label && !strstr(out, label))) {
        fprintf(stderr, "%s:%d: FAIL: %s: message \"%s\" should be one line with \"memalloc:\", "
                "\"%s\", %p%s%s%s\n", __FILE__, line, what, out, fn, p,
                label ? " and \"" : "", label ? label : "", label ? "\"" : "");
        failures++;
    }
}

#define EXPECT_ABORT(what, a, p, func, label) expect(what, a, p, func, label, __LINE__)
#define EXPECT_OK(what, a, p) expect(what, a, p, NULL, NULL, __LINE__)

static void test_misuse(unsigned cls)
{
    struct size_class *sc = &memalloc_classes[cls];
    const size_t cap = sc->capacity;
    fprintf(stderr, "misuse: class %u, size %u, capacity %zu\n", cls, sc->size, cap);
    void **blk = xcalloc(cap, sizeof *blk);
    bool *live = xcalloc(cap, sizeof *live);
    unsigned char state[CHUNK_MAX_GRAINS];
    bool want[CHUNK_MAX_GRAINS];

    struct chunk *c = fill_chunk(cls, blk);
    size_t keep = os_page() >= UNIT ? 1 : cap / 2;     /* see main */
    live[0] = live[keep] = true;
    for (size_t i = 0; i < cap; i++)
        if (!live[i])
            free_block(c, blk[i]);
    size_t n_want = model(c, live, state, want);
    memalloc_malloc_trim(0);
    CHECK(c->purged == n_want && c->purged_mask != 0 && mask_ok(c), "setup: purged %u (want %zu), purged_mask "
          "%u", c->purged, n_want, (unsigned)(c->purged_mask != 0));
    /* A freed block lying wholly on purged pages, and a live one. */
    size_t gone = cap;
    for (size_t i = 0; i < cap && gone == cap; i++) {
        bool all = !live[i];
        for (size_t pg = first_page(c, i); all && pg <= last_page(c, i); pg++)
            all = want[pg];
        if (all)
            gone = i;
    }
    CHECK(gone < cap, "setup: no free block lies wholly on purged pages");
    if (gone == cap) {
        free(live);
        free(blk);
        return;
    }
    void *purged_blk = blk[gone], *live_blk = blk[keep];

    EXPECT_ABORT("free of a block freed before its page was purged", A_FREE, purged_blk, "free",
                 "double free");
    EXPECT_ABORT("double free of a live block in a chunk with purged pages", A_FREE_TWICE,
                 live_blk, "free", "double free");
    EXPECT_ABORT("realloc of a block on a purged page", A_REALLOC, purged_blk, "realloc", NULL);
    EXPECT_ABORT("malloc_usable_size of a block on a purged page", A_USABLE, purged_blk,
                 "malloc_usable_size", NULL);
    EXPECT_ABORT("free of an interior pointer into a block on a purged page", A_FREE,
                 (char *)purged_blk + 16, "free", NULL);
    EXPECT_OK("a single free of a live block in a chunk with purged pages", A_FREE_CHECK,
              live_blk);

    /* The parent saw none of it. */
    CHECK(c->in_use == 2 && c->purged == n_want, "after the children: in_use %u purged %u",
          c->in_use, c->purged);
    CHECK(intact(blk[0], sc->size, 0) && intact(live_blk, sc->size, keep),
          "live blocks lost their data");
    CHECK_HEAP("misuse children");
    memalloc_free(live_blk);
    memalloc_free(blk[0]);
    memalloc_malloc_trim(0);
    CHECK_HEAP("freeing the misuse blocks");
    free(live);
    free(blk);
}

/* ---- 4. the slow free path of a chunk with purged pages -------------------- */

static void test_slow_free(unsigned cls)
{
    struct size_class *sc = &memalloc_classes[cls];
    const size_t cap = sc->capacity, size = sc->size;
    /* MALLOC_PERTURB_ only turns the hot path off (memalloc_tc points at memalloc_tc_none): the
     * slow paths still use this thread's cache, filling freed blocks. */
    struct tcache *t = tcache_current();
    const bool cached = t != NULL;
    fprintf(stderr, "slow free: class %u, size %zu, capacity %zu, thread cache %s, hot path %s\n",
            cls, size, cap, cached ? "on" : "off",
            memalloc_tc != &memalloc_tc_none ? "on" : "off");
    void **blk = xcalloc(cap, sizeof *blk);
    bool *live = xcalloc(cap, sizeof *live);

    struct chunk *c = NULL;
    for (size_t i = 0; i < cap; i++) {
        blk[i] = memalloc_malloc(size);
        if (!blk[i]) {
            CHECK(0, "memalloc_malloc(%zu) #%zu failed", size, i);
            exit(1);
        }
        if (i == 0)
            c = chunk_of(blk[0]);
        if (!c || blk[i] != block_at(c, i)) {
            CHECK(0, "memalloc_malloc #%zu gave %p, not block %zu of the class's first chunk",
                  i, blk[i], i);
            exit(1);
        }
        fill(blk[i], size, i);
        live[i] = true;
    }
    size_t k1 = 0, k2 = os_page() >= UNIT ? 1 : cap / 2;     /* see main */
    for (size_t i = 0; i < cap; i++)
        if (i != k1 && i != k2) {
            memalloc_free(blk[i]);
            live[i] = false;
        }
    memalloc_malloc_trim(0);    /* flushes the caches, then purges */
    CHECK(c->in_use == 2, "after malloc_trim: in_use %u, want the 2 blocks held", c->in_use);
    CHECK(c->purged > 0 && c->purged_mask != 0 && mask_ok(c), "after malloc_trim: purged %u mask set %u",
          c->purged, (unsigned)(c->purged_mask != 0));
    CHECK_HEAP("malloc_trim of a chunk filled by malloc");

    /* The free that the fast path must refuse. */
    void *l = blk[k2];
    memalloc_free(l);
    if (cached) {
        CHECK(c->in_use == 2 && chunk_block_live(c, l), "a block freed into the cache left its "
              "chunk: in_use %u", c->in_use);
        CHECK(t->bins[cls].count == 1 && t->bins[cls].head == l,
              "the freed block is not in this thread's bin (count %u)", t->bins[cls].count);
        if (option(OPT_PERTURB))
            CHECK(((unsigned char *)l)[size - 1] == (option(OPT_PERTURB) & 0xff),
                  "a block freed into the cache was not junk-filled");
    } else {
        CHECK(c->in_use == 1 && !chunk_block_live(c, l), "free without a cache: in_use %u, "
              "block still live %d", c->in_use, chunk_block_live(c, l));
    }
    CHECK_HEAP("slow-path free into a chunk with purged pages");

    void *q = memalloc_malloc(size);
    struct chunk *qc = q ? chunk_of(q) : NULL;
    CHECK(q && qc && qc->cls == cls && chunk_block_live(qc, q),
          "malloc after the slow-path free gave %p, not a live block of class %u", q, cls);
    if (cached)
        CHECK(q == l, "malloc did not take the cached block back: %p, want %p", q, (void *)l);
    if (q) {
        CHECK(memalloc_malloc_usable_size(q) == size, "usable size %zu, want %zu",
              memalloc_malloc_usable_size(q), size);
        memset(q, 0x77, size);
    }
    CHECK(intact(blk[k1], size, k1), "the other live block lost its data");
    CHECK(mask_ok(c), "purged %u with mask set %u", c->purged,
          (unsigned)(c->purged_mask != 0));
    CHECK_HEAP("malloc after the slow-path free");

    /* Allocate on until every purged page is back in use (refills take the
     * lowest free blocks of the chunk first), then free it all. */
    void **more = xcalloc(2 * cap, sizeof *more);
    size_t nmore = 0;
    while (c->purged && nmore < 2 * cap) {
        more[nmore] = memalloc_malloc(size);
        CHECK(more[nmore] != NULL, "memalloc_malloc(%zu) failed", size);
        if (!more[nmore])
            break;
        memset(more[nmore++], 0x55, size);
    }
    CHECK(c->purged == 0 && c->purged_mask == 0, "after %zu more mallocs: purged %u "
          "mask set %u carved %u", nmore, c->purged, (unsigned)(c->purged_mask != 0), c->carved);
    CHECK(intact(blk[k1], size, k1), "the other live block lost its data");
    CHECK_HEAP("unpurging through malloc");
    for (size_t i = 0; i < nmore; i++)
        memalloc_free(more[i]);
    free(more);
    memalloc_free(q);
    memalloc_free(blk[k1]);
    memalloc_malloc_trim(0);
    CHECK(sc->in_use == 0, "class in_use %zu after freeing all and trimming", sc->in_use);
    CHECK_HEAP("freeing the slow-path blocks");
    free(live);
    free(blk);
}

/* A page comes back into use: the free blocks that start on it get their
 * free key back, so freeing one of them again is still caught once the
 * page's mask bit has cleared.  (Found in review: without the re-keying the
 * second free went into the thread cache and the block was handed out
 * twice.) */
static void test_rekey(unsigned cls)
{
    struct size_class *sc = &memalloc_classes[cls];
    size_t cap = sc->capacity, size = sc->size;
    void **blk = xcalloc(cap, sizeof *blk);
    bool z;
    for (size_t i = 0; i < cap; i++) {
        blk[i] = chunk_alloc(cls, &z);
        if (!blk[i])
            exit(1);
    }
    struct chunk *c = NULL;
    void *meta;
    if (ptr_lookup(blk[0], &meta) == PTR_SMALL)
        c = meta;
    CHECK(c != NULL, "rekey: no chunk");
    if (!c)
        return;
    /* Keep the blocks that lie wholly on the header's kernel page, free
     * the rest. */
    size_t first = (os_page() - c->data_off) / size;
    for (size_t i = first; i < cap; i++)
        chunk_free(c, blk[i], "free");
    memalloc_malloc_trim(0);
    CHECK(c->purged > 0 && mask_ok(c), "rekey: setup purged %u", c->purged);
    void *taken = chunk_alloc(cls, &z);     /* the lowest free block: unpurges its page */
    CHECK(taken == blk[first], "rekey: took %p, want %p", taken, blk[first]);
    void *x = blk[first + 1];               /* freed before the purge, same page */
    CHECK(x && ((uintptr_t)x - (uintptr_t)c) / GRAIN == ((uintptr_t)taken - (uintptr_t)c) / GRAIN,
          "rekey: blocks %zu and %zu do not share a page", first, first + 1);
    CHECK(((void **)x)[1] == (void *)memalloc_free_key, "rekey: free block %p has no key back", x);
    EXPECT_ABORT("free again of a block whose purged page came back into use", A_FREE, x,
                 "free", "double free");
    CHECK_HEAP("re-keying a page that came back");
    chunk_free(c, taken, "free");
    for (size_t i = 0; i < first; i++)
        chunk_free(c, blk[i], "free");
    free(blk);
}

int main(void)
{
    void *p = memalloc_malloc(1);   /* lazy initialisation */
    memalloc_free(p);
    CHECK_HEAP("initialisation");
    if (!can_check_residency())
        fprintf(stderr, "note: residency and zero checks skipped%s\n",
                option(OPT_PURGE_LAZY) ? " (MEMALLOC_PURGE_LAZY)" : "");

    /* 1. One unit, blocks straddling pages; multi-page blocks; several
     * units.  (One unit means two with 64 KiB pages: see purgeable_units.) */
    const uint32_t one = purgeable_units();
    int a = pristine_class(1100, one);
    if (a < 0)
        return 77;
    /* Live blocks in the middle and at the end; with 64 KiB pages a live
     * block past the first page would leave the chunk nothing to purge. */
    const bool big = os_page() >= UNIT;
    size_t ca = memalloc_classes[a].capacity;
    test_trim((unsigned)a, (size_t[]){0, big ? 1 : ca / 2}, 2);
    int b = pristine_class(5000, one);
    if (b < 0)
        return 77;
    size_t cb = memalloc_classes[b].capacity;
    test_trim((unsigned)b, (size_t[]){1, big ? 2 : cb - 2}, 2);
    int m = pristine_class(20000, 3);
    if (m < 0)
        return 77;
    size_t cm = memalloc_classes[m].capacity;
    test_trim((unsigned)m, (size_t[]){cm - 1}, 1);

    /* 2. Passes, for small blocks and for blocks of a page or more. */
    int s = pristine_class(300, one);
    int g = pristine_class(os_page() + 1, one);
    if (s < 0 || g < 0)
        return 77;
    if (memalloc_classes[s].capacity >= 32)
        test_pass((unsigned)s);
    else
        fprintf(stderr, "note: no class with %u-unit chunks holds the 32 blocks the pass "
                "test needs\n", one);
    test_pass((unsigned)g);

    /* 3, 4: classes the thread caches serve. */
    int u = pristine_class(800, one);
    int w = pristine_class(600, one);
    if (w == u && u >= 0)
        w = pristine_class(memalloc_classes[u].size + 1, one);
    if (u < 0 || w < 0)
        return 77;
    test_misuse((unsigned)u);
    test_slow_free((unsigned)w);
    /* Re-keying needs two blocks starting in one grain: none of the
     * classes whose chunks span two units has blocks that small. */
    int k = pristine_class(64, one);
    if (k < 0)
        return 77;
    if (memalloc_classes[k].size * 2 <= GRAIN)
        test_rekey((unsigned)k);
    else
        fprintf(stderr, "note: re-keying not tested: no small class of %u-unit chunks\n", one);

    CHECK(madvise_calls > 0, "memalloc never called madvise");
    CHECK(madvise_misaligned == 0, "%zu of %zu madvise calls were not aligned to the %zu-byte "
          "page", madvise_misaligned, madvise_calls, os_page());
    CHECK_HEAP("the end");
    return check_report(__FILE__);
}
