/*
 * api_tracked.c - in memcheck and ASan builds (track.h), the entry points that
 * hand out, take back or look at blocks: each calls api.c's own (its
 * untracked_* names there) and tells the tool what became of the block.
 * Empty in every other build.
 *
 * Invariants: memalloc's code runs inside track_quiet_begin/end, the
 * program's outside; a block is described as free (FREELIKE, poisoned)
 * before memalloc takes it back, and as the program's only once memalloc
 * is done with it; realloc always moves the block (as valgrind's own
 * does), so that a stale pointer to the old one is reported.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>

#include "memalloc.h"
#include "os.h"
#include "standard_names.h"
#include "track.h"

#if TRACKING

HIDDEN void *untracked_memalloc_malloc(size_t n);
HIDDEN void untracked_memalloc_free(void *p);
HIDDEN int untracked_memalloc_posix_memalign(void **memptr, size_t align, size_t n);
HIDDEN void *untracked_memalloc_aligned_alloc(size_t align, size_t n);
HIDDEN void *untracked_memalloc_memalign(size_t align, size_t n);
HIDDEN void *untracked_memalloc_valloc(size_t n);
HIDDEN void *untracked_memalloc_pvalloc(size_t n);
HIDDEN size_t untracked_memalloc_malloc_usable_size(void *p);
HIDDEN int untracked_memalloc_malloc_trim(size_t pad);
HIDDEN size_t api_usable(void *p, const char *func);
HIDDEN size_t api_block_bytes(const void *p);

/* p, just handed out for n bytes, becomes the program's. */
static void *handed(void *p, size_t n, int zeroed)
{
    if (p) {
        track_quiet_begin();
        size_t bytes = api_block_bytes(p);
        track_quiet_end();
        track_alloc(p, n, bytes, zeroed);
    }
    return p;
}

/* p, about to be freed, is no longer the program's; then memalloc frees it. */
static void take_back(void *p)
{
    track_quiet_begin();
    size_t bytes = api_block_bytes(p);
    track_quiet_end();
    if (bytes)                      /* else no block: free reports it */
        track_free(p, bytes);
    track_quiet_begin();
    untracked_memalloc_free(p);
    track_quiet_end();
}

#define QUIET(call) ({ track_quiet_begin(); __typeof__(call) r_ = (call); track_quiet_end(); r_; })

EXPORT void *memalloc_malloc(size_t n)
{
    return handed(QUIET(untracked_memalloc_malloc(n)), n, 0);
}

EXPORT void memalloc_free(void *p)
{
    if (p) {
        int saved = errno;
        take_back(p);
        errno = saved;
    }
}

EXPORT void *memalloc_calloc(size_t nmemb, size_t size)
{
    size_t n;
    if (__builtin_mul_overflow(nmemb, size, &n)) {
        errno = ENOMEM;
        return NULL;
    }
    void *p = memalloc_malloc(n);
    if (p)
        memset(p, 0, n);            /* the program's already: the tools see it defined */
    return p;
}

EXPORT void *memalloc_realloc(void *p, size_t n)
{
    if (!p)
        return memalloc_malloc(n);
    if (n == 0) {
        memalloc_free(p);
        return NULL;
    }
    size_t old = QUIET(api_usable(p, "realloc"));
    void *q = memalloc_malloc(n);
    if (!q)
        return NULL;                /* errno is ENOMEM; p is untouched */
    track_open(p, old);             /* its slack too: freed next */
    track_quiet_begin();
    memcpy(q, p, old < n ? old : n);
    track_quiet_end();
    memalloc_free(p);
    return q;
}

EXPORT void *memalloc_reallocarray(void *p, size_t nmemb, size_t size)
{
    size_t n;
    if (__builtin_mul_overflow(nmemb, size, &n)) {
        errno = ENOMEM;
        return NULL;
    }
    return memalloc_realloc(p, n);
}

EXPORT int memalloc_posix_memalign(void **memptr, size_t align, size_t n)
{
    int rc = QUIET(untracked_memalloc_posix_memalign(memptr, align, n));
    if (rc == 0)
        handed(*memptr, n, 0);
    return rc;
}

EXPORT void *memalloc_aligned_alloc(size_t align, size_t n)
{
    return handed(QUIET(untracked_memalloc_aligned_alloc(align, n)), n, 0);
}

EXPORT void *memalloc_memalign(size_t align, size_t n)
{
    return handed(QUIET(untracked_memalloc_memalign(align, n)), n, 0);
}

EXPORT void *memalloc_valloc(size_t n)
{
    return handed(QUIET(untracked_memalloc_valloc(n)), n, 0);
}

EXPORT void *memalloc_pvalloc(size_t n)
{
    void *p = QUIET(untracked_memalloc_pvalloc(n));
    return handed(p, p ? QUIET(untracked_memalloc_malloc_usable_size(p)) : 0, 0);
}

EXPORT size_t memalloc_malloc_usable_size(void *p)
{
    size_t n = QUIET(untracked_memalloc_malloc_usable_size(p));
    if (n)                          /* the program may use all of it now */
        track_usable(p, n);
    return n;
}

EXPORT int memalloc_malloc_trim(size_t pad)
{
    return QUIET(untracked_memalloc_malloc_trim(pad));
}

#ifdef MEMALLOC_STANDARD_NAMES
STANDARD_NAMES();                   /* as api.c makes them in other builds */
#endif

#endif /* TRACKING */
