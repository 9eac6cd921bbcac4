/*
 * size_class.c - the table of small size classes: block size, chunk size,
 * block alignment and the reciprocal used to turn a block offset into an
 * index without a division.
 *
 * Invariants: sizes are multiples of 16 and strictly increasing;
 * size_to_class(n) is the smallest class whose size is >= n; every block
 * of class c is aligned to classes[c].align (at least 16).
 */
#include "internal.h"

struct size_class memalloc_classes[NUM_CLASSES] HIDDEN;

const uint8_t memalloc_class_of_small[(128 >> 4) + 1] HIDDEN = {
    0, 0, 1, 2, 3, 4, 5, 6, 7,
};

size_t class_size_formula(unsigned cls)
{
    if (cls < 8)
        return 16u * (cls + 1);
    size_t base = (size_t)64 << (cls / 8);
    return base + (base / 8) * (cls % 8 + 1);
}

static size_t lowest_bit(size_t v) { return v & -v; }

static size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

/* Runs once, from lazy_init(), before any class is used; the tables it fills
 * depend on nothing but constants, so a racing second call is harmless. */
void classes_init(void)
{
    for (unsigned c = 0; c < NUM_CLASSES; c++) {
        struct size_class *sc = &memalloc_classes[c];
        size_t size = class_size_formula(c);
        /* Blocks of power-of-two classes get their natural alignment (up to a
         * page) by starting the data area at a multiple of it; that is what
         * lets small aligned requests stay in the classes. */
        size_t natural = lowest_bit(size) < PAGE ? lowest_bit(size) : PAGE;
        size_t data_off = round_up(CHUNK_HDR_SIZE, natural < 64 ? 64 : natural);
        size_t units = (data_off + size * CHUNK_MIN_BLOCKS + UNIT - 1) / UNIT;
        size_t capacity = (units * UNIT - data_off) / size;
        if (capacity > CHUNK_MAX_BLOCKS)
            capacity = CHUNK_MAX_BLOCKS;
        size_t align = lowest_bit(size) < lowest_bit(data_off) ? lowest_bit(size)
                                                              : lowest_bit(data_off);
        sc->size = (uint32_t)size;
        sc->units = (uint32_t)units;
        sc->align = (uint32_t)align;
        sc->data_off = (uint32_t)data_off;
        sc->capacity = (uint32_t)capacity;
        /* m = ceil(2^40 / size) gives floor(off * m / 2^40) == off / size
         * for every off < 2^40 / size: the error term off * (m - 2^40/size)
         * / 2^40 stays below 1/size.  Chunks are below 2^21 bytes and
         * size at most 2^17, so every offset qualifies. */
        sc->div_mul = (((uint64_t)1 << 40) + size - 1) / size;
    }
}
