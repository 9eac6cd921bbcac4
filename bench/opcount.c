/*
 * opcount.c - a preload shim for lock counting (bench/locks,
 * bench/mimalloc-bench.sh --locks): it owns the program's allocator entry
 * points, counts every call, forwards it to memalloc's prefixed API, and at
 * exit writes one line with the call count and memalloc's lock counts, so
 * that lock acquisitions can be read per 1,000 operations on any program.
 *
 *   LD_PRELOAD=build-release/bench/libopcount.so OPCOUNT_OUT=FILE prog
 *
 * C++'s operator new and delete are counted too.
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
#include <dlfcn.h>
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

/* C++'s operators.  libmemalloc exports its own (src/operators.c), but as
 * this shim's dependency it comes after libstdc++ in the lookup order, so
 * the program would get libstdc++'s, whose array forms call the plain ones
 * again: each operator here counts once, then calls libmemalloc's own,
 * looked up in libmemalloc itself at its first call (not RTLD_NEXT, which
 * finds libstdc++'s).  A delete of NULL is not an operation, as for free. */
static void *memalloc_symbol(const char *name)
{
    static void *lib;
    void *h = __atomic_load_n(&lib, __ATOMIC_RELAXED);
    Dl_info info;
    if (!h && dladdr((void *)memalloc_malloc, &info) && info.dli_fname) {
        h = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
        __atomic_store_n(&lib, h, __ATOMIC_RELAXED);
    }
    void *f = h ? dlsym(h, name) : NULL;
    if (!f)
        abort();                    /* not libmemalloc: nothing to count */
    return f;
}
#define NEXT(sym) \
    static __typeof__(&sym) next; \
    __typeof__(&sym) f = __atomic_load_n(&next, __ATOMIC_RELAXED); \
    if (!f) \
        __atomic_store_n(&next, f = (__typeof__(&sym))memalloc_symbol(#sym), __ATOMIC_RELAXED)
#define NEW(sym, params, args) \
    void *sym params; \
    void *sym params { NEXT(sym); count(); return f args; }
#define DELETE(sym, params, args) \
    void sym params; \
    void sym params { NEXT(sym); if (p) count(); f args; }

typedef const void *nothrow_ref;    /* const std::nothrow_t & */
NEW(_Znwm, (size_t n), (n))
NEW(_Znam, (size_t n), (n))
NEW(_ZnwmRKSt9nothrow_t, (size_t n, nothrow_ref t), (n, t))
NEW(_ZnamRKSt9nothrow_t, (size_t n, nothrow_ref t), (n, t))
NEW(_ZnwmSt11align_val_t, (size_t n, size_t a), (n, a))
NEW(_ZnamSt11align_val_t, (size_t n, size_t a), (n, a))
NEW(_ZnwmSt11align_val_tRKSt9nothrow_t, (size_t n, size_t a, nothrow_ref t), (n, a, t))
NEW(_ZnamSt11align_val_tRKSt9nothrow_t, (size_t n, size_t a, nothrow_ref t), (n, a, t))
DELETE(_ZdlPv, (void *p), (p))
DELETE(_ZdaPv, (void *p), (p))
DELETE(_ZdlPvm, (void *p, size_t n), (p, n))
DELETE(_ZdaPvm, (void *p, size_t n), (p, n))
DELETE(_ZdlPvRKSt9nothrow_t, (void *p, nothrow_ref t), (p, t))
DELETE(_ZdaPvRKSt9nothrow_t, (void *p, nothrow_ref t), (p, t))
DELETE(_ZdlPvSt11align_val_t, (void *p, size_t a), (p, a))
DELETE(_ZdaPvSt11align_val_t, (void *p, size_t a), (p, a))
DELETE(_ZdlPvmSt11align_val_t, (void *p, size_t n, size_t a), (p, n, a))
DELETE(_ZdaPvmSt11align_val_t, (void *p, size_t n, size_t a), (p, n, a))
DELETE(_ZdlPvSt11align_val_tRKSt9nothrow_t, (void *p, size_t a, nothrow_ref t), (p, a, t))
DELETE(_ZdaPvSt11align_val_tRKSt9nothrow_t, (void *p, size_t a, nothrow_ref t), (p, a, t))

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
