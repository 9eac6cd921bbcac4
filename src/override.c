/*
 * override.c - the standard names.  Built only into libmemalloc (the
 * preload and drop-in library), never into libmemalloc-prefixed, so that a
 * program can use memalloc next to the system malloc.
 *
 * Every entry glibc's malloc exports is defined here, pvalloc included: a
 * missing one would let glibc's version run and hand us its pointers.
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <stdlib.h>

#include "memalloc.h"

#define EXPORT __attribute__((visibility("default")))

EXPORT void *malloc(size_t n) { return memalloc_malloc(n); }
EXPORT void free(void *p) { memalloc_free(p); }
EXPORT void cfree(void *p) { memalloc_free(p); }
EXPORT void *calloc(size_t nmemb, size_t size) { return memalloc_calloc(nmemb, size); }
EXPORT void *realloc(void *p, size_t n) { return memalloc_realloc(p, n); }
EXPORT void *reallocarray(void *p, size_t nmemb, size_t size)
{
    return memalloc_reallocarray(p, nmemb, size);
}
EXPORT int posix_memalign(void **memptr, size_t align, size_t n)
{
    return memalloc_posix_memalign(memptr, align, n);
}
EXPORT void *aligned_alloc(size_t align, size_t n) { return memalloc_aligned_alloc(align, n); }
EXPORT void *memalign(size_t align, size_t n) { return memalloc_memalign(align, n); }
EXPORT void *valloc(size_t n) { return memalloc_valloc(n); }
EXPORT void *pvalloc(size_t n) { return memalloc_pvalloc(n); }
EXPORT size_t malloc_usable_size(void *p) { return memalloc_malloc_usable_size(p); }
EXPORT int malloc_trim(size_t pad) { return memalloc_malloc_trim(pad); }
EXPORT void malloc_stats(void) { memalloc_malloc_stats(); }
EXPORT int mallopt(int param, int value) { return memalloc_mallopt(param, value); }

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
