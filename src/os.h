/*
 * os.h - the bottom layer: the only code that talks to the system.  The
 * break and the address-space reservation above it, the page size and
 * madvise, the clock, randomness, the environment, one-line messages and
 * abort, locks, fork handlers and the one thread memalloc may start.
 *
 * Invariants: nothing here calls malloc or any file of memalloc's above;
 * every call into the break comes with the heap lock held (heap.c).
 */
#ifndef MEMALLOC_OS_H
#define MEMALLOC_OS_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HIDDEN __attribute__((visibility("hidden")))
#define EXPORT __attribute__((visibility("default")))
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)
#define NOINLINE __attribute__((noinline))

/* ---- the break ------------------------------------------------------------ */

HIDDEN void *raw_sbrk(intptr_t delta);  /* glibc's sbrk, moving the reservation */
HIDDEN void *raw_break(void);           /* sbrk(0) */
HIDDEN size_t os_reserved(void);        /* bytes reserved above the break (heap lock) */
HIDDEN void raw_reserve(void);          /* reserve above the break, once */

/* ---- pages ------------------------------------------------------------------ */

#define OS_PAGE_MIN ((size_t)4 << 10)
#define OS_PAGE_MAX ((size_t)64 << 10)  /* bigger pages are never purged */
HIDDEN void os_init(void);
extern size_t memalloc_os_page HIDDEN;
/* The kernel's page size (or the build's forced one, if bigger): set by
 * os_init() before the first block is handed out. */
static inline size_t os_page(void) { return memalloc_os_page; }
HIDDEN size_t os_purge(void *from, size_t len, bool lazy);
/* The hardened mode's guards: whole pages of the heap made inaccessible, or
 * accessible again; false when the kernel refused (too many mappings). */
HIDDEN bool os_protect(void *from, size_t len, bool access);
/* Address space that holds no memory and never will (PROT_NONE), at or
 * above `above` (where the break can never grow), or NULL. */
HIDDEN void *os_reserve_none(size_t len, uintptr_t above);

/* ---- time, randomness, environment ------------------------------------------ */

HIDDEN uint64_t os_now_ms(void);        /* a coarse monotonic clock */
HIDDEN uint64_t os_random(void);        /* 64 bits from AT_RANDOM, mixed */
HIDDEN bool os_env_ready(void);         /* libc has set up the environment */
HIDDEN const char *os_getenv(const char *name);     /* only once it has */

/* ---- messages ------------------------------------------------------------------ */

HIDDEN void message(const char *text);
HIDDEN size_t fmt_unsigned(char *buf, size_t v);
/* "memalloc: free(): double free 0x...": one line on stderr, then abort(). */
HIDDEN _Noreturn void fatal_pointer(const char *func, const char *what, const void *p);

/* ---- locks, fork, threads ---------------------------------------------------------- */

HIDDEN void lock_init(pthread_mutex_t *m);
/* Take m; true when another thread held it, so that the taking waited (the
 * statistics count both: a proxy for how the locks scale).  A peek at
 * glibc's lock word, not a trylock: a failed trylock would be one more
 * atomic write on a contended line. */
static inline bool lock_take(pthread_mutex_t *m)
{
    bool held = __atomic_load_n(&m->__data.__lock, __ATOMIC_RELAXED) != 0;
    pthread_mutex_lock(m);
    return held;
}
HIDDEN void os_atfork(void (*prepare)(void), void (*parent)(void), void (*child)(void));
HIDDEN bool os_single_threaded(void);
HIDDEN void os_stdio_lock(void);        /* glibc's stdio list lock, for fork */
HIDDEN void os_stdio_unlock(void);
HIDDEN bool os_thread_start(void *(*fn)(void *));   /* detached, every signal blocked */
HIDDEN void os_sleep_ms(uint64_t ms);

#endif /* MEMALLOC_OS_H */
