/*
 * size_class.c - the table of small size classes: each block size, the
 * inverse used to turn a block offset into an index without a division,
 * and the table from request size to class.  Chunk geometry is chunk.c's.
 *
 * Invariants: sizes are multiples of 16 and strictly increasing;
 * size_to_class(n) is the smallest class whose size is >= n.
 */
#include "size_class.h"

struct size_class memalloc_classes[NUM_CLASSES] HIDDEN;

/* Entry i serves requests of 16 * i + 1 .. 16 * (i + 1) bytes: 16 bytes a
 * class up to 128, CLASS_OF_BIG above. */
#define CLASS_ENTRY(i) (uint8_t)(16u * ((i) + 1) <= 128 ? (i) : CLASS_OF_BIG(16u * ((i) + 1))),
#define CLASS_ENTRIES_4(i) CLASS_ENTRY(i) CLASS_ENTRY(i + 1) CLASS_ENTRY(i + 2) CLASS_ENTRY(i + 3)
#define CLASS_ENTRIES_16(i) CLASS_ENTRIES_4(i) CLASS_ENTRIES_4(i + 4) \
    CLASS_ENTRIES_4(i + 8) CLASS_ENTRIES_4(i + 12)
#define CLASS_ENTRIES_64(i) CLASS_ENTRIES_16(i) CLASS_ENTRIES_16(i + 16) \
    CLASS_ENTRIES_16(i + 32) CLASS_ENTRIES_16(i + 48)
#define CLASS_ENTRIES_256(i) CLASS_ENTRIES_64(i) CLASS_ENTRIES_64(i + 64) \
    CLASS_ENTRIES_64(i + 128) CLASS_ENTRIES_64(i + 192)
#define CLASS_ENTRIES_1024(i) CLASS_ENTRIES_256(i) CLASS_ENTRIES_256(i + 256) \
    CLASS_ENTRIES_256(i + 512) CLASS_ENTRIES_256(i + 768)

const uint8_t memalloc_class_of[CLASS_TABLE_MAX / 16] HIDDEN = {
    CLASS_ENTRIES_1024(0) CLASS_ENTRIES_1024(1024)
};
_Static_assert(CLASS_TABLE_MAX / 16 == 2048, "the table above has 2048 entries");

size_t class_size_formula(unsigned cls)
{
    if (cls < 8)
        return 16u * (cls + 1);
    size_t base = (size_t)64 << (cls / 8);
    return base + (base / 8) * (cls % 8 + 1);
}

/* Runs once, from init.c, before any class is used; the tables it fills
 * depend on nothing but constants, so a racing second call is harmless. */
void classes_init(void)
{
    for (unsigned c = 0; c < NUM_CLASSES; c++) {
        struct size_class *sc = &memalloc_classes[c];
        size_t size = class_size_formula(c);
        /* size = odd * 2^shift.  x * inv == x / odd modulo 2^64 whenever
         * odd divides x, and lands above (2^64 - 1) / odd otherwise
         * (Granlund and Montgomery); rotating right by shift does the
         * same for the power of two.  Newton's iteration doubles the
         * correct low bits of the inverse each step: 3 -> 6 -> ... -> 96. */
        unsigned shift = (unsigned)__builtin_ctzl(size);
        uint64_t odd = size >> shift, inv = odd;    /* right to 3 bits: odd*odd == 1 mod 8 */
        for (int i = 0; i < 5; i++)
            inv *= 2 - odd * inv;
        sc->size = (uint32_t)size;
        sc->shift = shift;
        sc->inv = inv;
    }
}
