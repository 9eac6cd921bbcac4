/*
 * override.c - the standard names.  Built only into libmemalloc (the
 * preload and drop-in library), never into libmemalloc-prefixed, so that a
 * program can use memalloc next to the system malloc.
 *
 * Every entry glibc's malloc exports is defined, pvalloc included: a
 * missing one would let glibc's version run and hand us its pointers.
 * Those implemented in api.c (malloc, free, calloc, realloc and the aligned
 * ones) are aliases made there, so that they cost no extra jump; the rest,
 * implemented in options.c or returning glibc's own structures, are here.
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>

#include "memalloc.h"

#define EXPORT __attribute__((visibility("default")))

EXPORT int malloc_trim(size_t pad) { return memalloc_malloc_trim(pad); }
EXPORT void malloc_stats(void) { memalloc_malloc_stats(); }
EXPORT int mallopt(int param, int value) { return memalloc_mallopt(param, value); }
EXPORT int malloc_info(int options, FILE *fp) { return memalloc_malloc_info(options, fp); }

EXPORT struct mallinfo2 mallinfo2(void)
{
    struct memalloc_mallinfo2 m = memalloc_mallinfo2();
    struct mallinfo2 r = {m.arena, m.ordblks, m.smblks, m.hblks, m.hblkhd, m.usmblks,
                          m.fsmblks, m.uordblks, m.fordblks, m.keepcost};
    return r;
}

EXPORT struct mallinfo mallinfo(void)
{
    struct memalloc_mallinfo m = memalloc_mallinfo();
    struct mallinfo r = {m.arena, m.ordblks, m.smblks, m.hblks, m.hblkhd, m.usmblks,
                         m.fsmblks, m.uordblks, m.fordblks, m.keepcost};
    return r;
}
