/*
 * platform.c - the only file that talks to the system: the break, error
 * messages, one-time initialisation and the fork handlers.
 *
 * Invariants: nothing here calls malloc while an allocator lock is held;
 * messages are formatted into stack buffers and written with write(2);
 * initialisation needs no constructor and tolerates being re-entered from
 * pthread_atfork (which may itself call malloc).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/single_threaded.h>
#include <unistd.h>

#include "internal.h"
#include "tcache.h"

/* The one seam for Valgrind: memcheck treats memory added to the break as
 * undefined, but the kernel hands it out zeroed and memalloc relies on that
 * (fresh chunk bitmaps, calloc skipping fresh pages). */
#if defined(__has_include)
#if __has_include(<valgrind/memcheck.h>)
#include <valgrind/memcheck.h>
#endif
#endif
#ifndef VALGRIND_MAKE_MEM_DEFINED
#define VALGRIND_MAKE_MEM_DEFINED(addr, len) ((void)(addr), (void)(len))
#endif

void *raw_sbrk(intptr_t delta)
{
    void *old = sbrk(delta);
    if (delta > 0 && old != (void *)-1)
        VALGRIND_MAKE_MEM_DEFINED(old, (size_t)delta);
    return old;
}
void *raw_break(void) { return sbrk(0); }

/* ---- messages ----------------------------------------------------------- */

size_t fmt_unsigned(char *buf, size_t v)
{
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        buf[i] = tmp[n - 1 - i];
    return n;
}

static size_t fmt_hex(char *buf, uintptr_t v)
{
    static const char digits[] = "0123456789abcdef";
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = digits[v & 15];
        v >>= 4;
    } while (v);
    buf[0] = '0';
    buf[1] = 'x';
    for (size_t i = 0; i < n; i++)
        buf[2 + i] = tmp[n - 1 - i];
    return n + 2;
}

static size_t append(char *buf, size_t at, size_t cap, const char *s)
{
    size_t len = strlen(s);
    if (at + len > cap)
        len = cap - at;
    memcpy(buf + at, s, len);
    return at + len;
}

/* Not a cancellation point (write(2) is one), as glibc's reports are not:
 * a thread with a cancel pending still prints the whole line. */
void message(const char *text)
{
    size_t len = strlen(text);
    int cancel_state;
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel_state);
    while (len > 0) {
        ssize_t w = write(STDERR_FILENO, text, len);
        if (w <= 0 && errno != EINTR)
            break;
        if (w > 0) {
            text += w;
            len -= (size_t)w;
        }
    }
    pthread_setcancelstate(cancel_state, NULL);
}

/* "memalloc: free(): double free 0x5555...": one line, then abort().  The
 * caller has released its locks, so a SIGABRT handler that allocates does
 * not deadlock. */
void fatal_pointer(const char *func, const char *what, const void *p)
{
    char buf[256];
    size_t n = append(buf, 0, sizeof buf - 24, "memalloc: ");
    n = append(buf, n, sizeof buf - 24, func);
    n = append(buf, n, sizeof buf - 24, "(): ");
    n = append(buf, n, sizeof buf - 24, what);
    buf[n++] = ' ';
    n += fmt_hex(buf + n, (uintptr_t)p);
    buf[n++] = '\n';
    buf[n] = '\0';
    message(buf);
    abort();
}

/* ---- fork --------------------------------------------------------------- */

/* glibc takes its stdio list lock after running the prepare handlers.  If we
 * took our locks first, a thread in getline() holding a FILE lock and
 * waiting in realloc for one of ours, plus a thread in fflush(NULL) holding
 * the list lock and waiting for that FILE, would deadlock the fork.  Taking
 * the (recursive) list lock first puts every lock in one global order. */
extern void _IO_list_lock(void) __attribute__((weak));
extern void _IO_list_unlock(void) __attribute__((weak));

static bool fork_locked;

static void fork_prepare(void)
{
    /* A single-threaded process may be forking from a signal handler that
     * interrupted malloc: waiting for that malloc's lock would hang forever,
     * and nobody else can be holding one.  glibc skips its own malloc locks
     * in this case too. */
    fork_locked = !__libc_single_threaded;
    if (!fork_locked)
        return;
    if (_IO_list_lock)
        _IO_list_lock();
    tcache_list_lock();
    for (unsigned c = 0; c < NUM_CLASSES; c++)
        pthread_mutex_lock(&memalloc_classes[c].lock);
    heap_lock();
}

static void fork_parent(void)
{
    if (!fork_locked)
        return;
    heap_unlock();
    for (unsigned c = NUM_CLASSES; c-- > 0;)
        pthread_mutex_unlock(&memalloc_classes[c].lock);
    tcache_list_unlock();
    if (_IO_list_unlock)
        _IO_list_unlock();
}

/* Only the forking thread exists in the child, so every lock is simply made
 * new; glibc resets its stdio list lock in the child itself. */
static void fork_child(void)
{
    if (!fork_locked)
        return;
    for (unsigned c = 0; c < NUM_CLASSES; c++)
        lock_init(&memalloc_classes[c].lock);
    heap_lock_reinit();
    tcache_fork_child();
}

/* ---- initialisation ----------------------------------------------------- */

/* Every allocator lock spins a little before it sleeps (glibc's adaptive
 * mutex): what it guards takes well under a microsecond, less than a futex
 * sleep and wake-up, so a thread that finds it taken is better off waiting
 * on the CPU.  bench/micro's producer/consumer, whose threads meet on the
 * class locks, runs in 0.7-0.8 of the time it takes with plain mutexes.
 * Initialising one allocates nothing. */
void lock_init(pthread_mutex_t *m)
{
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_settype(&a, PTHREAD_MUTEX_ADAPTIVE_NP);
    pthread_mutex_init(m, &a);
    pthread_mutexattr_destroy(&a);
}

int memalloc_initialized HIDDEN;
static int init_state;              /* 0 not started, 1 running, 2 done */

void lazy_init(void)
{
    int expected = 0;
    if (__atomic_compare_exchange_n(&init_state, &expected, 1, false,
                                    __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        for (unsigned c = 0; c < NUM_CLASSES; c++)
            lock_init(&memalloc_classes[c].lock);
        classes_init();
        options_load();
        tcache_init();
        __atomic_store_n(&init_state, 2, __ATOMIC_RELEASE);
        __atomic_store_n(&memalloc_initialized, 1, __ATOMIC_RELEASE);
        /* After the flag: pthread_atfork may call malloc, which must then
         * find the allocator ready rather than recurse into here. */
        pthread_atfork(fork_prepare, fork_parent, fork_child);
        return;
    }
    /* Another thread is filling the tables; that takes microseconds and
     * cannot block on anything of ours. */
    while (__atomic_load_n(&init_state, __ATOMIC_ACQUIRE) != 2)
        ;
}
