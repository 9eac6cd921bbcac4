/*
 * opcount.c - a preload shim for lock counting (bench/locks,
 * bench/mimalloc-bench.sh --locks): it owns the program's allocator entry
 * points, counts every call, forwards it to memalloc's prefixed API, and at
 * exit writes one line with the call count and memalloc's lock counts, so
 * that lock acquisitions can be read per 1,000 operations on any program.
 *
 *   LD_PRELOAD=build-release/bench/libopcount.so OPCOUNT_OUT=FILE prog
 *
 * The line goes to OPCOUNT_OUT (appended) or to stderr:
 *   opcount ops=N class_locks=N class_contended=N heap_locks=N heap_contended=N
 *
 * Invariants: the counters live in 64 slots a cache line each, a thread
 * taking the next slot at its first call, so that counting does not make
 * threads share a line (which would change the contention it measures);
 * threads beyond 64 share slots, hence the atomic add.  free(NULL) is not
 * an operation.  Timing runs never use this shim: it adds a call and an
 * atomic add to every operation.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "memalloc.h"

#define SLOTS 64
static struct { uint64_t n; char pad[56]; } slots[SLOTS] __attribute__((aligned(64)));
static unsigned next_slot;
static __thread int my_slot = -1;

static inline void count(void)
{
    if (__builtin_expect(my_slot < 0, 0))
        my_slot = (int)(__atomic_fetch_add(&next_slot, 1, __ATOMIC_RELAXED) % SLOTS);
    __atomic_fetch_add(&slots[my_slot].n, 1, __ATOMIC_RELAXED);
}

void *malloc(size_t n) { count(); return memalloc_malloc(n); }
void *calloc(size_t k, size_t n) { count(); return memalloc_calloc(k, n); }
void *realloc(void *p, size_t n) { count(); return memalloc_realloc(p, n); }
void *reallocarray(void *p, size_t k, size_t n) { count(); return memalloc_reallocarray(p, k, n); }
void *aligned_alloc(size_t a, size_t n) { count(); return memalloc_aligned_alloc(a, n); }
void *memalign(size_t a, size_t n) { count(); return memalloc_memalign(a, n); }
void *valloc(size_t n) { count(); return memalloc_valloc(n); }
void *pvalloc(size_t n) { count(); return memalloc_pvalloc(n); }
int posix_memalign(void **r, size_t a, size_t n) { count(); return memalloc_posix_memalign(r, a, n); }
size_t malloc_usable_size(void *p) { return memalloc_malloc_usable_size(p); }

void free(void *p)
{
    if (p)
        count();
    memalloc_free(p);
}
void cfree(void *p) { free(p); }

/* Written with write(2) into a stack buffer: stdio may be gone at exit. */
__attribute__((destructor)) static void report(void)
{
    uint64_t ops = 0;
    for (int i = 0; i < SLOTS; i++)
        ops += __atomic_load_n(&slots[i].n, __ATOMIC_RELAXED);
    struct memalloc_lock_stats s;
    memalloc_get_lock_stats(&s);
    char line[256];
    int len = snprintf(line, sizeof line,
                       "opcount ops=%llu class_locks=%llu class_contended=%llu "
                       "heap_locks=%llu heap_contended=%llu\n",
                       (unsigned long long)ops, (unsigned long long)s.class_locks,
                       (unsigned long long)s.class_contended, (unsigned long long)s.heap_locks,
                       (unsigned long long)s.heap_contended);
    if (len <= 0)
        return;
    const char *path = getenv("OPCOUNT_OUT");
    int fd = path ? open(path, O_WRONLY | O_CREAT | O_APPEND, 0644) : 2;
    if (fd < 0)
        return;
    ssize_t w = write(fd, line, (size_t)len < sizeof line ? (size_t)len : sizeof line - 1);
    (void)w;
    if (path)
        close(fd);
}
