/*
 * memalloc.h - the public, prefixed API of memalloc.
 *
 * Every function here behaves like its glibc namesake without the
 * "memalloc_" prefix.  Link libmemalloc-prefixed (pkg-config
 * memalloc-prefixed) to use memalloc next to the system malloc; link or
 * LD_PRELOAD libmemalloc (pkg-config memalloc) to replace malloc itself,
 * in which case these names stay available as well.
 */
#ifndef MEMALLOC_H
#define MEMALLOC_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define MEMALLOC_MALLOC_ATTR __attribute__((malloc, warn_unused_result))
#else
#define MEMALLOC_MALLOC_ATTR
#endif

void *memalloc_malloc(size_t size) MEMALLOC_MALLOC_ATTR;
void  memalloc_free(void *ptr);
void *memalloc_calloc(size_t nmemb, size_t size) MEMALLOC_MALLOC_ATTR;
void *memalloc_realloc(void *ptr, size_t size);
void *memalloc_reallocarray(void *ptr, size_t nmemb, size_t size);
int   memalloc_posix_memalign(void **memptr, size_t alignment, size_t size);
void *memalloc_aligned_alloc(size_t alignment, size_t size) MEMALLOC_MALLOC_ATTR;
void *memalloc_memalign(size_t alignment, size_t size) MEMALLOC_MALLOC_ATTR;
void *memalloc_valloc(size_t size) MEMALLOC_MALLOC_ATTR;
void *memalloc_pvalloc(size_t size) MEMALLOC_MALLOC_ATTR;
size_t memalloc_malloc_usable_size(void *ptr);

/* glibc's malloc.h extensions, with memalloc's own figures. */
int  memalloc_malloc_trim(size_t pad);
void memalloc_malloc_stats(void);
int  memalloc_mallopt(int param, int value);
/* glibc's XML shape; options must be 0 (else EINVAL is returned). */
int  memalloc_malloc_info(int options, FILE *fp);

struct memalloc_mallinfo2 {     /* same layout as glibc's struct mallinfo2 */
    size_t arena, ordblks, smblks, hblks, hblkhd, usmblks, fsmblks,
           uordblks, fordblks, keepcost;
};
struct memalloc_mallinfo {      /* same layout as glibc's struct mallinfo */
    int arena, ordblks, smblks, hblks, hblkhd, usmblks, fsmblks,
        uordblks, fordblks, keepcost;
};
struct memalloc_mallinfo2 memalloc_mallinfo2(void);
struct memalloc_mallinfo  memalloc_mallinfo(void);

/*
 * memalloc_check() walks every size class, chunk, free list and large
 * block and verifies the allocator's invariants.  It returns 0 when all
 * hold; otherwise it writes one line per broken invariant to stderr and
 * returns the number found.  It takes every lock, so it is slow: for tests
 * and fuzzing, not production.
 */
int memalloc_check(void);

/* Statistics as numbers, for tests and tools (see also MEMALLOC_STATS=1).
 * The structure only ever grows at its end: pass sizeof *out, and
 * memalloc_get_stats fills the fields this library knows, zeroes those of a
 * newer structure it does not, and returns the size of its own structure. */
struct memalloc_stats {
    size_t heap_bytes;          /* memalloc's part of the break now       */
    size_t heap_peak;           /* ... and its highest value              */
    size_t small_in_use;        /* bytes in small blocks handed out       */
    size_t large_in_use;        /* bytes in large blocks handed out       */
    size_t free_bytes;          /* held by memalloc, not handed out       */
    size_t released_sbrk;       /* given back with a negative sbrk, total */
    size_t chunks;              /* small-class chunks now                 */
    size_t large_blocks;        /* large blocks handed out now            */
    size_t released_madvise;    /* given back with madvise, total         */
    size_t small_held;          /* bytes of the small-class chunks now    */
    size_t cached_bytes;        /* small blocks in thread caches / parked */
};
size_t memalloc_get_stats(struct memalloc_stats *out, size_t size);

/* The heap as an SVG picture written to fd (0.3): a grid of 64 KiB units
 * from the heap base to the break, chunks coloured by class and shaded by
 * how full they are, large blocks, free units resident or given back,
 * other code's memory; the reservation above the break, a legend and the
 * totals of malloc_stats.  It calls no malloc and takes memalloc's locks as
 * memalloc_check() does (so not from a signal that interrupted memalloc
 * itself).  0, or -1 with errno set when a write failed.  MEMALLOC_MAP=file
 * writes one at exit. */
int memalloc_map(int fd);

/* The library's version, "MAJOR.MINOR.PATCH" (MEMALLOC_VERSION is the
 * header's). */
#define MEMALLOC_VERSION "0.3.0"
const char *memalloc_version(void);

/* How often memalloc's locks were taken, and how often a thread had to wait
 * for one that another thread held: what limits scaling, counted on any
 * machine.  Totals since the start. */
struct memalloc_lock_stats {
    uint64_t class_locks;       /* size-class locks taken                 */
    uint64_t class_contended;   /* ... of those, after waiting            */
    uint64_t heap_locks;        /* the heap-top lock taken                */
    uint64_t heap_contended;    /* ... of those, after waiting            */
};
void memalloc_get_lock_stats(struct memalloc_lock_stats *out);

#ifdef __cplusplus
}
#endif
#endif /* MEMALLOC_H */
