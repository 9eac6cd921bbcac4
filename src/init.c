/*
 * init.c - one-time initialisation, the reservation at load, and the fork
 * handlers that take every allocator lock around fork().
 *
 * Invariants: the first call of any entry point initialises, whichever
 * thread makes it, with no constructor needed; pthread_atfork, which may
 * itself call malloc, is called once the tables are ready.  The fork
 * handlers take the locks in the documented order (heap.h).
 */
#include "harden.h"
#include "init.h"
#include "options.h"
#include "purge.h"
#include "tcache.h"
#include "track.h"

int memalloc_init_state HIDDEN;

/* ---- fork --------------------------------------------------------------- */

/* glibc takes its stdio list lock after running the prepare handlers.  If we
 * took our locks first, a thread in getline() holding a FILE lock and
 * waiting in realloc for one of ours, plus a thread in fflush(NULL) holding
 * the list lock and waiting for that FILE, would deadlock the fork.  Taking
 * the (recursive) list lock first puts every lock in one global order. */
static bool fork_locked;

static void fork_prepare(void)
{
    /* A single-threaded process may be forking from a signal handler that
     * interrupted malloc: waiting for that malloc's lock would hang forever,
     * and nobody else can be holding one.  glibc skips its own malloc locks
     * in this case too. */
    fork_locked = !os_single_threaded();
    if (!fork_locked)
        return;
    os_stdio_lock();
    harden_fork_prepare();
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
    harden_fork_parent();
    os_stdio_unlock();
}

/* Only the forking thread exists in the child, so every lock is simply made
 * new; glibc resets its stdio list lock in the child itself. */
static void fork_child(void)
{
    purge_fork_child();
    if (!fork_locked)
        return;
    track_quiet_begin();
    heap_fork_child();
    chunk_fork_child();
    tcache_fork_child();
    harden_fork_child();
    track_quiet_end();
}

/* ---- initialisation ----------------------------------------------------- */

void init_slow(void)
{
    int expected = INIT_NONE;
    if (__atomic_compare_exchange_n(&memalloc_init_state, &expected, INIT_RUNNING, false,
                                    __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        os_init();
        bool env = options_load();  /* first: it fixes the hardened mode */
        classes_init();
        chunk_init();
        tcache_init();
        harden_init();
        __atomic_store_n(&memalloc_init_state, env ? INIT_READY : INIT_TABLES,
                         __ATOMIC_RELEASE);
        /* After the tables: pthread_atfork may call malloc, which must then
         * find the allocator ready rather than recurse into here. */
        os_atfork(fork_prepare, fork_parent, fork_child);
        return;
    }
    if (expected == INIT_TABLES) {
        /* Ready but for the environment: look for it again.  Two threads
         * racing here both read the same values. */
        if (options_load())
            __atomic_store_n(&memalloc_init_state, INIT_READY, __ATOMIC_RELEASE);
        return;
    }
    /* Another thread is filling the tables; that takes microseconds and
     * cannot block on anything of ours. */
    while (__atomic_load_n(&memalloc_init_state, __ATOMIC_ACQUIRE) < INIT_TABLES)
        ;
}

/* The reservation is best made when the library is loaded: the process is
 * still single-threaded then (unless dlopen loads us), so no other
 * allocator is growing the break while it is placed, and glibc's malloc,
 * finding the break blocked, takes its memory with mmap (from its first
 * call, unless a constructor that ran earlier used it already) instead of
 * racing memalloc on the break.  Not needed for correctness: the first
 * growth reserves otherwise. */
__attribute__((constructor)) static void reserve_at_load(void)
{
    ensure_init();
    heap_lock();
    raw_reserve();
    heap_unlock();
}
