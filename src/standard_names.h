/*
 * standard_names.h - malloc, free and the rest as aliases of memalloc's
 * entry points, in libmemalloc only: api.c makes them, or api_tracked.c in
 * memcheck and ASan builds, where its wrappers are the entry points.
 * Aliases, not wrappers: malloc is memalloc_malloc, one symbol, so the hot
 * path pays no extra jump.  override.c has the names whose memalloc_
 * versions live elsewhere.
 */
#ifndef MEMALLOC_STANDARD_NAMES_H
#define MEMALLOC_STANDARD_NAMES_H

#include "memalloc.h"
#include "os.h"

#if defined(__has_attribute)
#if __has_attribute(copy)
#define COPY_ATTRIBUTES(ours) __attribute__((copy(ours)))
#endif
#endif
#ifndef COPY_ATTRIBUTES
#define COPY_ATTRIBUTES(ours)
#endif
#define STANDARD_NAME(name, ours) \
    EXPORT extern __typeof__(ours) name __attribute__((alias(#ours))) COPY_ATTRIBUTES(ours)

/* In the file that defines the memalloc_ entry points named here. */
#define STANDARD_NAMES()                                        \
    STANDARD_NAME(malloc, memalloc_malloc);                     \
    STANDARD_NAME(free, memalloc_free);                         \
    STANDARD_NAME(cfree, memalloc_free);                        \
    STANDARD_NAME(calloc, memalloc_calloc);                     \
    STANDARD_NAME(realloc, memalloc_realloc);                   \
    STANDARD_NAME(reallocarray, memalloc_reallocarray);         \
    STANDARD_NAME(posix_memalign, memalloc_posix_memalign);     \
    STANDARD_NAME(aligned_alloc, memalloc_aligned_alloc);       \
    STANDARD_NAME(memalign, memalloc_memalign);                 \
    STANDARD_NAME(valloc, memalloc_valloc);                     \
    STANDARD_NAME(pvalloc, memalloc_pvalloc);                   \
    STANDARD_NAME(malloc_usable_size, memalloc_malloc_usable_size)

#endif /* MEMALLOC_STANDARD_NAMES_H */
