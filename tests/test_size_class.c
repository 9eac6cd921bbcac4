/*
 * test_size_class.c - the size-class table (src/size_class.c).
 *
 * Checks, for the table that lazy initialisation built:
 *   - every class's size equals class_size_formula(); sizes are multiples of
 *     16, strictly increasing, from 16 up to SMALL_MAX;
 *   - size_to_class(n) is the smallest class with size >= n for every n in
 *     0..SMALL_MAX (against a brute-force search);
 *   - the rounding waste (size - n) / n is at most 1/8 for every n > 128;
 *   - align is a power of two >= 16 that divides UNIT and every block offset
 *     of the chunk; power-of-two classes have align == min(size, 4096); a
 *     real block of every class (from chunk_alloc) is so aligned;
 *   - chunk geometry: capacity * size + data_off <= units * UNIT, the header
 *     fits below data_off, capacity <= CHUNK_MAX_BLOCKS, units fit the unit
 *     map's chunk encoding, and capacity >= CHUNK_MIN_BLOCKS;
 *   - block_number() gives the block number for every offset of a block
 *     start and a number above 2^46 for every other offset of the chunk
 *     (header included) and for far-away multiples of the size.
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "internals.h"
#include "memalloc.h"

#define CHECK_MAX_FAILURES 100      /* CHECK gives up after that many */
#include "check.h"

static bool is_pow2(size_t x) { return x && !(x & (x - 1)); }

static void check_sizes(void)
{
    for (unsigned c = 0; c < NUM_CLASSES; c++) {
        size_t size = memalloc_classes[c].size;
        CHECK(size == class_size_formula(c), "class %u: size %zu != formula %zu", c, size,
              class_size_formula(c));
        CHECK(size % 16 == 0, "class %u: size %zu is not a multiple of 16", c, size);
        if (c > 0)
            CHECK(size > memalloc_classes[c - 1].size,
                  "class %u: size %zu not above class %u's %u", c, size, c - 1,
                  memalloc_classes[c - 1].size);
    }
    CHECK(memalloc_classes[0].size == 16, "class 0 has size %u, want 16",
          memalloc_classes[0].size);
    CHECK(memalloc_classes[NUM_CLASSES - 1].size == SMALL_MAX,
          "last class has size %u, want SMALL_MAX %zu", memalloc_classes[NUM_CLASSES - 1].size,
          SMALL_MAX);
}

static void check_mapping(void)
{
    unsigned want = 0;              /* brute force, kept monotone */
    for (size_t n = 0; n <= SMALL_MAX; n++) {
        while (want < NUM_CLASSES && memalloc_classes[want].size < n)
            want++;
        /* the same answer from an independent linear search, now and then */
        if (n % 997 == 0 || n <= 300) {
            unsigned lin = 0;
            while (lin < NUM_CLASSES && class_size_formula(lin) < n)
                lin++;
            CHECK(lin == want, "n=%zu: brute-force searches disagree (%u vs %u)", n, lin, want);
        }
        unsigned got = size_to_class(n);
        if (got != want) {
            CHECK(got == want, "size_to_class(%zu) = %u (size %zu), want %u (size %u)", n, got,
                  got < NUM_CLASSES ? class_size_formula(got) : 0, want,
                  memalloc_classes[want].size);
            continue;
        }
        size_t size = memalloc_classes[got].size;
        if (n > 128)
            CHECK((size - n) * 8 <= n, "n=%zu: class size %zu wastes %.2f%% > 12.5%%", n, size,
                  100.0 * (double)(size - n) / (double)n);
    }
}

static void check_geometry(void)
{
    for (unsigned c = 0; c < NUM_CLASSES; c++) {
        const struct size_class *sc = &memalloc_classes[c];
        size_t size = sc->size, align = sc->align, off = sc->data_off;
        size_t bytes = (size_t)sc->units * UNIT;

        CHECK(align >= ALIGNMENT && is_pow2(align), "class %u (size %zu): align %zu", c, size,
              align);
        CHECK(UNIT % align == 0, "class %u: align %zu does not divide UNIT", c, align);
        if (is_pow2(size)) {
            size_t want = size < CLASS_ALIGN_MAX ? size : CLASS_ALIGN_MAX;
            CHECK(align == want, "class %u: power-of-two size %zu has align %zu, want %zu", c,
                  size, align, want);
        }
        CHECK(off >= CHUNK_HDR_SIZE, "class %u: data_off %zu overlaps the %zu-byte header", c,
              off, (size_t)CHUNK_HDR_SIZE);
        CHECK(sc->units >= 1 && sc->units <= MAP_SMALL_MAX_K + 1,
              "class %u: %u units do not fit the unit map's chunk encoding", c, sc->units);
        CHECK(sc->capacity >= 1 && sc->capacity <= CHUNK_MAX_BLOCKS,
              "class %u: capacity %u outside 1..%zu", c, sc->capacity, (size_t)CHUNK_MAX_BLOCKS);
        CHECK((size_t)sc->capacity * size + off <= bytes,
              "class %u: %u blocks of %zu at offset %zu overflow %u units", c, sc->capacity, size,
              off, sc->units);
        /* No room for one more block, unless the bitmap is what limits it. */
        CHECK(sc->capacity == CHUNK_MAX_BLOCKS || ((size_t)sc->capacity + 1) * size + off > bytes,
              "class %u: capacity %u leaves room for another block of %zu", c, sc->capacity, size);
        CHECK(sc->capacity >= CHUNK_MIN_BLOCKS,
              "class %u (size %zu, %u units, data_off %zu): capacity %u < CHUNK_MIN_BLOCKS %d",
              c, size, sc->units, off, sc->capacity, CHUNK_MIN_BLOCKS);
        for (size_t i = 0; i < sc->capacity; i++)
            if ((off + i * size) % align != 0) {
                CHECK(0, "class %u: block %zu at offset %zu not aligned to %zu", c, i,
                      off + i * size, align);
                break;
            }
    }
}

/* A real block of every class (its first and second) is aligned to align. */
static void check_real_blocks(void)
{
    for (unsigned c = 0; c < NUM_CLASSES; c++) {
        const struct size_class *sc = &memalloc_classes[c];
        bool z;
        void *p = chunk_alloc(c, &z);
        void *q = chunk_alloc(c, &z);
        CHECK(p && q, "class %u: chunk_alloc failed", c);
        if (!p || !q)
            continue;
        CHECK((uintptr_t)p % sc->align == 0 && (uintptr_t)q % sc->align == 0,
              "class %u: blocks %p %p not aligned to %u", c, p, q, sc->align);
        void *meta = NULL;
        CHECK(ptr_lookup(p, &meta) == PTR_SMALL && ((struct chunk *)meta)->cls == c,
              "class %u: ptr_lookup does not find the block's chunk", c);
        if (!meta)
            continue;
        chunk_free(meta, q, "free");
        chunk_free(meta, p, "free");
        /* Keep the heap small (valgrind's brk is limited). */
        chunk_release_spares();
    }
    CHECK(memalloc_check() == 0, "memalloc_check failed after one block of every class");
}

static void check_block_number(void)
{
    for (unsigned c = 0; c < NUM_CLASSES; c++) {
        const struct size_class *sc = &memalloc_classes[c];
        struct chunk ch = {.inv = sc->inv, .shift = (uint8_t)sc->shift};
        const uint64_t size = sc->size, span = (uint64_t)sc->units * UNIT;
        int bad = 0;
        /* Every offset from block 0 that a pointer into the chunk can have,
         * the header's negative ones included (they wrap): a block start
         * gives its number, anything else a number no chunk reaches. */
        for (int64_t off = -(int64_t)sc->data_off; off < (int64_t)span && bad < 3; off++) {
            uint64_t got = block_number(&ch, (uintptr_t)off);
            bool start = off >= 0 && off % (int64_t)size == 0;
            if (start ? got != (uint64_t)off / size : got < ((uint64_t)1 << 46)) {
                CHECK(0, "class %u (size %" PRIu64 "): offset %" PRId64 " gives %" PRIu64
                      ", want %s", c, size, off, got, start ? "its block number" : "above 2^46");
                bad++;
            }
        }
        /* Far away in both directions: what a wild pointer gives. */
        for (uint64_t k = 1; k < 4096 && bad < 3; k++) {
            uint64_t far = k * size << 21;  /* a multiple of size beyond any chunk */
            if (block_number(&ch, (uintptr_t)far) < ((uint64_t)1 << 20) ||
                block_number(&ch, (uintptr_t)-far) < ((uint64_t)1 << 20)) {
                CHECK(0, "class %u: a far multiple of the size looks like a block", c);
                bad++;
            }
        }
    }
}

int main(void)
{
    void *p = memalloc_malloc(1);  /* lazy initialisation */
    memalloc_free(p);
    /* A block kept to the end holds the heap's first chunk, so releasing
     * spares never empties the whole heap. */
    void *keep = memalloc_malloc(1);
    if (memalloc_classes[0].size == 0) {
        fprintf(stderr, "%s: class table not initialised after malloc\n", __FILE__);
        return 1;
    }
    /* classes_init() is idempotent: a second run must not change a thing. */
    struct size_class before = memalloc_classes[NUM_CLASSES / 2];
    classes_init();
    struct size_class after = memalloc_classes[NUM_CLASSES / 2];
    CHECK(before.size == after.size && before.units == after.units &&
          before.capacity == after.capacity && before.inv == after.inv && before.shift == after.shift,
          "classes_init() changed the table on a second run");

    /* Class locks spin before they sleep (chunk_init makes them adaptive). */
    for (unsigned c = 0; c < NUM_CLASSES; c++)
        CHECK(memalloc_classes[c].lock.__data.__kind == PTHREAD_MUTEX_ADAPTIVE_NP,
              "class %u: lock kind %d, want adaptive", c, memalloc_classes[c].lock.__data.__kind);

    check_sizes();
    check_mapping();
    check_geometry();
    check_real_blocks();
    check_block_number();
    memalloc_free(keep);

    return check_report(__FILE__);
}
