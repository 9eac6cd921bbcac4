/*
 * test_chunk.c - chunk carving at the class-pool level (src/chunk.c),
 * through chunk_alloc / chunk_free directly (not malloc, which may sit
 * behind a per-thread cache).
 *
 * For a one-unit class and a multi-unit class, each untouched so far:
 *   - a class's first chunk is carved in address order from data_off, its
 *     blocks found through ptr_lookup (PTR_SMALL, meta == the chunk) and
 *     zero (zeroed flag set) when the chunk is fresh sbrk memory;
 *   - the (capacity+1)-th block comes from a second chunk;
 *   - in_use / carved / class counters and the partial list move as they
 *     should; the lowest free block is reused first and reports zeroed ==
 *     false;
 *   - an emptied chunk becomes the class's spare; when a second chunk
 *     empties, the lower of the two stays the spare and the other goes
 *     back to the heap (its span turns SPAN_FREE or is merged or released)
 *     and its blocks stop looking small; the spare is reused before the
 *     heap is asked again, and a chunk built on recycled heap memory does
 *     not claim its blocks are zeroed.
 * Also ptr_lookup's PTR_BAD for pointers below the heap base, at or above
 * the limit, and misaligned, and PTR_LARGE for a large block's user pointer.
 * And, in a forked child, a chunk on its class's partial list whose header
 * was overwritten (in_use past capacity, as when other code writes over it)
 * makes the next refill of the class stop with one line naming malloc and
 * the chunk instead of looping or handing out garbage.
 * memalloc_check() == 0 after every phase.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internals.h"
#include "memalloc.h"

#define CHECK_MAX_FAILURES 100      /* CHECK gives up after that many */
#include "check.h"

static bool on_partial(const struct size_class *sc, const struct chunk *c)
{
    for (const struct chunk *q = sc->partial; q; q = q->next)
        if (q == c)
            return true;
    return false;
}

static struct chunk *chunk_of(const void *p)
{
    void *meta = NULL;
    return ptr_lookup(p, &meta) == PTR_SMALL ? meta : NULL;
}

static bool all_zero(const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i])
            return false;
    return true;
}

/* The first class of at least min_size that nobody has used yet. */
static int pristine_class(size_t min_size, uint32_t min_units)
{
    for (unsigned c = size_to_class(min_size); c < NUM_CLASSES; c++) {
        const struct size_class *sc = &memalloc_classes[c];
        if (sc->units >= min_units && sc->chunks == 0 && !sc->partial && !sc->spare &&
            sc->in_use == 0)
            return (int)c;
    }
    return -1;
}

static void free_block(void *p)
{
    struct chunk *c = chunk_of(p);
    CHECK(c != NULL, "block %p is not found as a small block before its free", p);
    if (c)
        chunk_free(c, p, "free");
}

static void test_class(unsigned cls)
{
    struct size_class *sc = &memalloc_classes[cls];
    const size_t size = sc->size, cap = sc->capacity;
    void **p = calloc(cap, sizeof *p);    /* glibc's malloc: the test's own */
    if (!p) {
        fprintf(stderr, "%s: out of memory\n", __FILE__);
        exit(1);
    }
    fprintf(stderr, "class %u: size %zu, %u unit(s), capacity %zu\n", cls, size, sc->units, cap);

    /* ---- phase 1: fill the first chunk ---------------------------------- */
    struct memalloc_stats st;
    memalloc_get_stats(&st, sizeof st);
    bool expect_fresh = st.free_bytes == 0;   /* nothing to recycle: new sbrk memory */
    size_t chunks0 = sc->chunks;
    struct chunk *c1 = NULL;
    for (size_t i = 0; i < cap; i++) {
        bool z = false;
        p[i] = chunk_alloc(cls, &z);
        CHECK(p[i] != NULL, "chunk_alloc(%u) #%zu returned NULL", cls, i);
        if (!p[i])
            exit(1);
        if (i == 0) {
            c1 = (struct chunk *)((char *)p[0] - sc->data_off);
            CHECK(((uintptr_t)c1 & (UNIT - 1)) == 0,
                  "first block %p is not data_off %u above a unit boundary", p[0], sc->data_off);
            CHECK(c1->s.kind == SPAN_CHUNK && c1->cls == cls && c1->capacity == cap &&
                  c1->s.units == sc->units,
                  "chunk header at %p wrong (kind %#x cls %u cap %u units %zu)", (void *)c1,
                  c1->s.kind, c1->cls, c1->capacity, c1->s.units);
            CHECK(sc->chunks == chunks0 + 1, "class chunks %zu, want %zu", sc->chunks,
                  chunks0 + 1);
            if (expect_fresh)
                CHECK(c1->fresh, "chunk from new sbrk memory not marked fresh");
        } else {
            CHECK(p[i] == (char *)p[0] + i * size,
                  "block #%zu at %p, want %p (carving not in address order)", i, p[i],
                  (void *)((char *)p[0] + i * size));
        }
        CHECK(chunk_of(p[i]) == c1, "ptr_lookup(block #%zu) does not give its chunk", i);
        CHECK(z == (bool)c1->fresh, "block #%zu: zeroed=%d but chunk fresh=%u", i, z, c1->fresh);
        if (z)
            CHECK(all_zero(p[i], size), "block #%zu claims zeroed but holds data", i);
        CHECK(c1->in_use == i + 1 && c1->carved == i + 1,
              "after %zu allocations: in_use %u carved %u", i + 1, c1->in_use, c1->carved);
        CHECK(sc->in_use == i + 1, "class in_use %zu, want %zu", sc->in_use, i + 1);
        CHECK(on_partial(sc, c1) == (i + 1 < cap), "after %zu of %zu blocks: on partial list %d",
              i + 1, cap, on_partial(sc, c1));
        memset(p[i], (int)(i & 0xff) | 1, size);
    }
    for (size_t i = 0; i < cap; i++) {
        const unsigned char *b = p[i];
        if (b[0] != ((i & 0xff) | 1) || b[size - 1] != ((i & 0xff) | 1)) {
            CHECK(0, "block #%zu was overwritten by a neighbour", i);
            break;
        }
    }
    CHECK(sc->peak >= cap, "class peak %zu below %zu", sc->peak, cap);
    CHECK_HEAP("filling the first chunk");

    /* Interior and misaligned pointers into a small block. */
    CHECK(ptr_lookup((char *)p[0] + 1, &(void *){0}) == PTR_BAD, "p+1 is not PTR_BAD");
    CHECK(ptr_lookup((char *)p[0] + 8, &(void *){0}) == PTR_BAD, "p+8 is not PTR_BAD");

    /* ---- phase 2: the (capacity+1)-th block needs a second chunk ------- */
    bool z = false;
    void *q0 = chunk_alloc(cls, &z);
    struct chunk *c2 = q0 ? chunk_of(q0) : NULL;
    CHECK(c2 != NULL && c2 != c1, "block #%zu did not come from a new chunk", cap);
    if (!c2)
        exit(1);
    CHECK(q0 == (char *)c2 + c2->data_off, "first block of the second chunk at offset %td",
          (char *)q0 - (char *)c2);
    CHECK(c2->in_use == 1 && c2->carved == 1, "second chunk in_use %u carved %u", c2->in_use,
          c2->carved);
    CHECK(sc->chunks == chunks0 + 2, "class chunks %zu, want %zu", sc->chunks, chunks0 + 2);
    CHECK(on_partial(sc, c2) && !on_partial(sc, c1), "partial list wrong after the second chunk");
    CHECK(sc->in_use == cap + 1, "class in_use %zu, want %zu", sc->in_use, cap + 1);
    CHECK(z == (bool)c2->fresh, "second chunk: zeroed=%d, fresh=%u", z, c2->fresh);
    CHECK_HEAP("opening a second chunk");

    /* ---- phase 3: lowest block first ------------------------------------- */
    size_t a = 1, b = cap - 2;        /* two blocks of the full chunk */
    free_block(p[a]);
    CHECK(c1->in_use == cap - 1 && c1->carved == cap, "after a free: in_use %u carved %u",
          c1->in_use, c1->carved);
    CHECK(on_partial(sc, c1), "a chunk with a freed block is not on the partial list");
    free_block(p[b]);
    CHECK(c1->in_use == cap - 2, "after two frees: in_use %u", c1->in_use);
    CHECK(sc->in_use == cap - 1, "class in_use %zu, want %zu", sc->in_use, cap - 1);
    CHECK_HEAP("freeing two blocks");
    void *r1 = chunk_alloc(cls, &z);
    CHECK(r1 == p[a], "reuse: got %p, want the lowest free block %p", r1, p[a]);
    CHECK(!z, "a reused block claims to be zeroed");
    void *r2 = chunk_alloc(cls, &z);
    CHECK(r2 == p[b], "reuse: got %p, want the other freed block %p", r2, p[b]);
    CHECK(!z, "a reused block claims to be zeroed");
    CHECK(c1->in_use == cap && c1->carved == cap && !on_partial(sc, c1),
          "chunk refilled: in_use %u carved %u on_partial %d", c1->in_use, c1->carved,
          on_partial(sc, c1));
    void *q1 = chunk_alloc(cls, &z);
    CHECK(q1 == (char *)q0 + size, "next block %p, want the second chunk's next carve %p", q1,
          (void *)((char *)q0 + size));
    CHECK(c2->carved == 2, "second chunk carved %u, want 2", c2->carved);
    free_block(q1);
    CHECK(c2->in_use == 1 && c2->carved == 2, "second chunk in_use %u carved %u", c2->in_use,
          c2->carved);
    CHECK_HEAP("lowest-first reuse");

    /* ---- phase 4: the first emptied chunk becomes the spare ------------- */
    CHECK(sc->spare == NULL, "pristine class already has a spare");
    void *q0_again = chunk_alloc(cls, &z);        /* q1's slot: the lowest free */
    CHECK(q0_again == q1, "reuse in second chunk: got %p, want %p", q0_again, q1);
    free_block(q0_again);
    free_block(q0);
    CHECK(c2->in_use == 0, "second chunk in_use %u after freeing all", c2->in_use);
    CHECK(sc->spare == c2, "emptied chunk is not the class's spare");
    CHECK(!on_partial(sc, c2), "the spare is on the partial list");
    CHECK(sc->chunks == chunks0 + 2, "class chunks %zu after keeping a spare, want %zu",
          sc->chunks, chunks0 + 2);
    CHECK(chunk_of(q0) == c2, "the spare's map entries were cleared");
    CHECK_HEAP("emptying the second chunk");

    /* ---- phase 5: of two empty chunks the lower stays, the other goes --- */
    struct chunk *kept = c1 < c2 ? c1 : c2, *gone = c1 < c2 ? c2 : c1;
    uint32_t kept_carved = kept->carved;
    uintptr_t gone_addr = (uintptr_t)gone;
    size_t gone_unit = unit_index(gone_addr);
    const void *gone_block = gone == c1 ? p[0] : q0;
    for (size_t i = 0; i < cap; i++) {
        if (i == cap - 1) {
            CHECK(c1->in_use == 1 && chunk_of(p[i]) == c1, "before the last free: in_use %u",
                  c1->in_use);
        }
        free_block(p[i]);
    }
    CHECK(sc->chunks == chunks0 + 1, "class chunks %zu after retiring one, want %zu", sc->chunks,
          chunks0 + 1);
    CHECK(sc->spare == kept, "the spare is not the lower of the two empty chunks");
    CHECK(sc->in_use == 0, "class in_use %zu, want 0", sc->in_use);
    uint8_t m = memalloc_unit_map[gone_unit];
    bool gone_free_span = false;
    if (m == MAP_SPAN) {
        CHECK(((struct span *)gone_addr)->kind == SPAN_FREE,
              "retired chunk's span has kind %#x, want SPAN_FREE",
              ((struct span *)gone_addr)->kind);
        gone_free_span = ((struct span *)gone_addr)->kind == SPAN_FREE;
    } else {
        CHECK(m == MAP_NONE, "retired chunk's first unit has map %#x, want SPAN or NONE", m);
    }
    for (size_t k = 1; k < sc->units; k++)
        CHECK(memalloc_unit_map[gone_unit + k] == MAP_NONE,
              "retired chunk's unit %zu still mapped %#x", k, memalloc_unit_map[gone_unit + k]);
    CHECK(chunk_of(gone_block) == NULL, "a block of the retired chunk still looks small");
    CHECK_HEAP("retiring one of two empty chunks");

    /* ---- phase 6: the spare is used before the heap -------------------- */
    void *s0 = chunk_alloc(cls, &z);
    CHECK(s0 == (char *)kept + kept->data_off, "after retiring: got %p, want the spare's first block %p",
          s0, (void *)((char *)kept + kept->data_off));
    CHECK(sc->spare == NULL && on_partial(sc, kept), "taking the spare: spare %p on_partial %d",
          (void *)sc->spare, on_partial(sc, kept));
    CHECK(!z, "a reused block of the spare claims to be zeroed");
    CHECK(sc->chunks == chunks0 + 1, "class chunks %zu, want %zu", sc->chunks, chunks0 + 1);
    /* Fill the spare: its never-carved blocks keep the chunk's freshness. */
    void **s = calloc(cap + 1, sizeof *s);
    if (!s)
        exit(1);
    s[0] = s0;
    for (size_t i = 1; i < cap; i++) {
        s[i] = chunk_alloc(cls, &z);
        CHECK(s[i] && chunk_of(s[i]) == kept, "block %zu of the refilled spare is elsewhere", i);
        if (i >= kept_carved)
            CHECK(z == (bool)kept->fresh, "refilled spare block %zu: zeroed %d fresh %u", i, z,
                  kept->fresh);
        else
            CHECK(!z, "refilled spare block %zu was handed out before but claims zeroed", i);
        if (z && s[i])
            CHECK(all_zero(s[i], size), "never-carved block %zu of the spare not zero", i);
    }
    CHECK(kept->in_use == cap && !on_partial(sc, kept), "refilled spare: in_use %u", kept->in_use);
    /* One more: a third chunk, from recycled heap memory if the retired
     * chunk's span stayed a free span (it was not below the top given back
     * with sbrk) and is the best fit, which must not claim to be zeroed. */
    s[cap] = chunk_alloc(cls, &z);
    struct chunk *c3 = s[cap] ? chunk_of(s[cap]) : NULL;
    CHECK(c3 != NULL && c3 != kept, "block beyond the refilled spare not in a new chunk");
    if (c3 && (uintptr_t)c3 == gone_addr && gone_free_span) {
        CHECK(!c3->fresh && !z, "chunk rebuilt on recycled memory: fresh %u, zeroed %d",
              c3->fresh, z);
    } else if (gone_free_span && c3) {
        fprintf(stderr, "note: new chunk at %p, not on the retired chunk's span %p\n",
                (void *)c3, (void *)gone_addr);
    }
    CHECK_HEAP("reusing the spare and opening a third chunk");

    for (size_t i = 0; i <= cap; i++)
        free_block(s[i]);
    CHECK(sc->in_use == 0 && sc->spare != NULL, "after freeing all: in_use %zu spare %p",
          sc->in_use, (void *)sc->spare);
    CHECK(sc->chunks == chunks0 + 1, "one spare should remain: chunks %zu, want %zu",
          sc->chunks, chunks0 + 1);
    CHECK_HEAP("freeing every block of the class");
    free(s);
    free(p);
}

static void corrupt_then_alloc(int cls, void *arg)
{
    struct chunk *c = arg;
    c->in_use = c->capacity + 5;    /* what a stray write might leave */
    bool zeroed;
    chunk_alloc((unsigned)cls, &zeroed);
}

static void test_corrupt_header(unsigned cls)
{
    bool zeroed;
    void *p = chunk_alloc(cls, &zeroed);   /* its chunk is on the partial list */
    void *meta = NULL;
    CHECK(p && ptr_lookup(p, &meta) == PTR_SMALL && memalloc_classes[cls].partial == meta,
          "class %u: the block's chunk should head the partial list", cls);
    char out[512];
    size_t len;
    int st = run_captured(corrupt_then_alloc, (int)cls, meta, out, sizeof out, &len);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT && abort_line_ok(out, len, "malloc", meta) &&
              strstr(out, "heap corruption"),
          "overwritten chunk header: child %s %d, stderr \"%s\"", CHILD_HOW(st), out);
    chunk_free(meta, p, "free");
    CHECK_HEAP("corrupt header (in the child only)");
}

static void test_lookup(void)
{
    void *meta = NULL;
    bool z;
    int cls = pristine_class(64, 1);
    if (cls < 0)
        cls = (int)size_to_class(64);
    void *p = chunk_alloc((unsigned)cls, &z);
    CHECK(p != NULL, "chunk_alloc failed");
    uintptr_t base = memalloc_heap_base;
    uintptr_t limit = __atomic_load_n(&memalloc_heap_limit, __ATOMIC_ACQUIRE);
    CHECK(base != 0 && limit > base, "heap base %#lx limit %#lx", (unsigned long)base,
          (unsigned long)limit);
    CHECK(ptr_lookup((void *)(base - ALIGNMENT), &meta) == PTR_BAD, "base-16 not PTR_BAD");
    CHECK(ptr_lookup((void *)(base - UNIT), &meta) == PTR_BAD, "base-UNIT not PTR_BAD");
    CHECK(ptr_lookup(NULL, &meta) == PTR_BAD, "NULL not PTR_BAD");
    CHECK(ptr_lookup((void *)limit, &meta) == PTR_BAD, "the limit itself not PTR_BAD");
    CHECK(ptr_lookup((void *)(limit + UNIT + 64), &meta) == PTR_BAD, "limit+UNIT not PTR_BAD");
    CHECK(ptr_lookup(&meta, &meta) == PTR_BAD, "a stack address not PTR_BAD");
    CHECK(ptr_lookup((char *)p + 1, &meta) == PTR_BAD, "p+1 not PTR_BAD");
    CHECK(ptr_lookup((char *)p + 4, &meta) == PTR_BAD, "p+4 not PTR_BAD");
    /* A one-unit class: the chunk is the block's unit. */
    CHECK(memalloc_classes[cls].units != 1 ||
              (ptr_lookup(p, &meta) == PTR_SMALL && (uintptr_t)meta == ((uintptr_t)p & ~(UNIT - 1))),
          "small block not PTR_SMALL with its chunk");

    void *l = memalloc_malloc(SMALL_MAX + 1);
    CHECK(l != NULL, "large malloc failed");
    if (l) {
        meta = NULL;
        CHECK(ptr_lookup(l, &meta) == PTR_LARGE, "large block's pointer not PTR_LARGE");
        struct large_block *b = meta;
        CHECK(b == (void *)((char *)l - LARGE_HDR), "large block meta %p, want %p", meta,
              (void *)((char *)l - LARGE_HDR));
        if (b == (void *)((char *)l - LARGE_HDR))
            CHECK(b->s.kind == SPAN_LARGE && b->user_off == LARGE_HDR &&
                  b->requested == SMALL_MAX + 1,
                  "large header: kind %#x user_off %zu requested %zu", b->s.kind, b->user_off,
                  b->requested);
        CHECK(ptr_lookup((char *)l + 1, &meta) == PTR_BAD, "large p+1 not PTR_BAD");
        memalloc_free(l);
        CHECK(ptr_lookup(l, &meta) != PTR_LARGE || ((struct span *)meta)->kind != SPAN_LARGE,
              "freed large block still looks like a live large block");
    }
    if (p) {
        struct chunk *c = chunk_of(p);
        if (c)
            chunk_free(c, p, "free");
    }
    CHECK_HEAP("pointer lookups");
}

int main(void)
{
    void *p = memalloc_malloc(1);  /* lazy initialisation */
    memalloc_free(p);
    CHECK_HEAP("initialisation");

    /* A one-unit class with a few dozen blocks per chunk, then one whose
     * chunks span several units (blocks beyond the first unit are found
     * through MAP_SMALL | k). */
    int c_small = pristine_class(1000, 1);
    int c_multi = pristine_class(20000, 3);
    if (c_small < 0 || c_multi < 0) {
        fprintf(stderr, "%s: no untouched class to test with\n", __FILE__);
        return 77;
    }
    test_class((unsigned)c_small);
    test_class((unsigned)c_multi);
    test_lookup();
    test_corrupt_header((unsigned)c_small);

    return check_report(__FILE__);
}
