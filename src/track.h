/*
 * track.h - what Valgrind's memcheck (-Dvalgrind=true) or AddressSanitizer
 * (-Db_sanitize=address) is told about memalloc's memory, so that they
 * report a program's use after free, overflow and (memcheck) leaks in
 * memalloc's blocks as they do in glibc's.  In every other build each
 * hook is empty and costs nothing.
 *
 * memcheck: a block handed out is a MALLOCLIKE block of the size asked
 * for, a freed one FREELIKE (inaccessible); every span memalloc takes for
 * a chunk or a large block starts inaccessible, headers included, so the
 * program may touch nothing but its blocks.  memalloc's own code runs with
 * memcheck's error reports turned off (track_quiet_begin/end, which nest):
 * it reads and writes free blocks' links and its headers.
 * ASan: memalloc's sources are built without instrumentation; a block
 * handed out is unpoisoned for the size asked for and poisoned from there
 * to its end (the slack), a freed one poisoned whole, as are a new chunk's
 * blocks.  Memory memalloc takes back for itself, or gives back to the
 * kernel, is unpoisoned first: libc's memset and memcpy, which ASan
 * checks, may run on it, and whatever is mapped there later is not ours.
 *
 * Invariants: the hooks only describe memory, they never change it; the
 * API wrappers (api_tracked.c) call the allocation hooks outside memalloc's
 * locks; the hardened mode and MALLOC_PERTURB_ are off in these builds
 * (options.c): their fills and checks read and write free blocks through
 * libc, and the tools already do their job.
 */
#ifndef MEMALLOC_TRACK_H
#define MEMALLOC_TRACK_H

#include <stddef.h>

#if defined(MEMALLOC_VALGRIND)
#include <valgrind/memcheck.h>
#define TRACKING 1
#define track_quiet_begin() VALGRIND_DISABLE_ERROR_REPORTING
#define track_quiet_end() VALGRIND_ENABLE_ERROR_REPORTING
static inline void track_alloc(void *p, size_t n, size_t usable, int zeroed)
{
    (void)usable;
    VALGRIND_MALLOCLIKE_BLOCK(p, n, 0, zeroed);
}
static inline void track_free(void *p, size_t usable)
{
    (void)usable;
    VALGRIND_FREELIKE_BLOCK(p, 0);
}
static inline void track_span_taken(void *p, size_t len) { VALGRIND_MAKE_MEM_NOACCESS(p, len); }
static inline void track_chunk_blocks(void *p, size_t len) { (void)p; (void)len; }
static inline void track_internal(void *p, size_t len) { (void)p; (void)len; }
static inline void track_released(void *p, size_t len) { (void)p; (void)len; }
/* Bytes memalloc reads on the program's behalf (realloc's copy). */
static inline void track_open(void *p, size_t len) { (void)p; (void)len; }
/* malloc_usable_size said the block has `usable` bytes: they are the
 * program's to use from now on (the slack after the size it asked for,
 * still inaccessible, becomes accessible and undefined). */
static inline void track_usable(void *p, size_t usable)
{
    track_quiet_begin();
    char *first = (char *)VALGRIND_CHECK_MEM_IS_ADDRESSABLE(p, usable);
    track_quiet_end();
    if (first)
        VALGRIND_MAKE_MEM_UNDEFINED(first, (size_t)((char *)p + usable - first));
}

#elif defined(MEMALLOC_ASAN)
/* The functions, not the ASAN_ macros: those are empty in code built
 * without instrumentation, as memalloc's is. */
#include <sanitizer/asan_interface.h>
#define TRACKING 1
#define track_quiet_begin() ((void)0)
#define track_quiet_end() ((void)0)
static inline void track_alloc(void *p, size_t n, size_t usable, int zeroed)
{
    (void)zeroed;
    __asan_poison_memory_region(p, usable);
    __asan_unpoison_memory_region(p, n);
}
static inline void track_free(void *p, size_t usable) { __asan_poison_memory_region(p, usable); }
static inline void track_span_taken(void *p, size_t len) { __asan_unpoison_memory_region(p, len); }
static inline void track_chunk_blocks(void *p, size_t len) { __asan_poison_memory_region(p, len); }
static inline void track_internal(void *p, size_t len) { __asan_unpoison_memory_region(p, len); }
static inline void track_released(void *p, size_t len) { __asan_unpoison_memory_region(p, len); }
static inline void track_open(void *p, size_t len) { __asan_unpoison_memory_region(p, len); }
static inline void track_usable(void *p, size_t usable) { __asan_unpoison_memory_region(p, usable); }

#else
#define TRACKING 0
#define track_quiet_begin() ((void)0)
#define track_quiet_end() ((void)0)
static inline void track_span_taken(void *p, size_t len) { (void)p; (void)len; }
static inline void track_chunk_blocks(void *p, size_t len) { (void)p; (void)len; }
static inline void track_internal(void *p, size_t len) { (void)p; (void)len; }
static inline void track_released(void *p, size_t len) { (void)p; (void)len; }
#endif

#endif /* MEMALLOC_TRACK_H */
