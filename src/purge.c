/*
 * purge.c - everything about giving pages back: when a purge pass runs,
 * what it spares, and the optional background thread that runs passes
 * while the program sleeps.  Chunks and spans only count what became
 * purgeable (memalloc_chunk_noted, heap_dirt_mark()); a pass then asks
 * chunk.c and heap.c to sweep what nobody used for the delay.
 *
 * Policy:
 *   - a pass starts when the memory that became purgeable since the last
 *     one reaches the threshold (threshold_for), or once memory that a pass
 *     spared has stayed unused for the delay;
 *   - it purges what nobody used for MEMALLOC_PURGE_DELAY milliseconds
 *     (jemalloc's dirty_decay_ms, mimalloc's purge_delay), and spares the
 *     rest, which a program that shrinks and regrows is about to reuse;
 *     when nothing was allocated since the previous pass, the program is
 *     freeing for good, and the last of it would otherwise wait for a pass
 *     that may never come: only busy chunks are spared (chunk.c says which)
 *     - unless the pages that passes purged keep coming back into use, each
 *     paying a page fault, which is what a program that shrinks and
 *     regrows does (reusing());
 *   - with MEMALLOC_BACKGROUND=1 a thread, started at the first call here,
 *     runs a pass every half delay (10 ms to 1 s) while anything waits.
 * Invariants: one pass at a time (memalloc_pass_running); no lock is held
 * on entry; the pass takes one class lock at a time, then the heap lock.
 */
#include "purge.h"
#include "track.h"
#include "chunk.h"
#include "options.h"

int memalloc_pass_running HIDDEN;

static struct {
    size_t noted_at_pass;           /* memalloc_chunk_noted when the last pass began */
    size_t mark_at_pass;            /* heap_dirt_mark() then */
    size_t allocs_at_pass;          /* allocations counted then */
    size_t next_look;               /* atomic: pending worth a look at the threshold */
    size_t spared;                  /* atomic: bytes the last pass left for later */
    uint64_t due;                   /* atomic: when the oldest of them turns idle */
    int background;                 /* atomic: the thread was started */
} P;

/* Memory that became purgeable since the last pass: chunks that turned
 * sparse or were retired (chunk.c counts them) and the growth of the free
 * spans' dirt, so that a large block freed and taken again and again adds
 * nothing.  Read without locks: it only steers when passes run. */
static size_t pending_bytes(void)
{
    size_t chunks = __atomic_load_n(&memalloc_chunk_noted, __ATOMIC_RELAXED) - P.noted_at_pass;
    ptrdiff_t spans = (ptrdiff_t)(heap_dirt_mark() - P.mark_at_pass);
    return chunks + (spans > 0 ? (size_t)spans : 0);
}

/* Bytes the program holds, blocks in thread caches included. */
static size_t live_bytes(void)
{
    size_t live = __atomic_load_n(&memalloc_heap.st.large_in_use, __ATOMIC_RELAXED);
    for (unsigned c = 0; c < NUM_CLASSES; c++)
        live += __atomic_load_n(&memalloc_classes[c].in_use, __ATOMIC_RELAXED) *
                memalloc_classes[c].size;
    return live;
}

/* Allocations from the pools so far: batches, blocks and large blocks. */
static size_t allocs_so_far(void)
{
    size_t n = __atomic_load_n(&memalloc_heap.large_allocs, __ATOMIC_RELAXED);
    for (unsigned c = 0; c < NUM_CLASSES; c++)
        n += __atomic_load_n(&memalloc_classes[c].refills, __ATOMIC_RELAXED);
    return n;
}

/* Free memory that may wait for a pass: the option, or 1/N of the bytes in
 * use (MEMALLOC_PURGE_SHARE) up to 32 MiB if that is more, so that a big
 * heap that shrinks and regrows does not pay a madvise and fresh page
 * faults on every cycle.  Of what is in use, not of the heap: a program
 * that has freed nearly everything is held to the plain option. */
#define PURGE_SHARE_CAP ((size_t)32 << 20)
static size_t threshold_for(size_t live)
{
    size_t t = (size_t)option(OPT_PURGE_THRESHOLD);
    long div = option(OPT_PURGE_SHARE);
    if (div <= 0)
        return t;
    size_t share = live / (size_t)div;
    if (share > PURGE_SHARE_CAP)
        share = PURGE_SHARE_CAP;
    return share > t ? share : t;
}

/* What passes answer for starts from here: a pass or a trim just now. */
static void mark_pending(void)
{
    P.noted_at_pass = __atomic_load_n(&memalloc_chunk_noted, __ATOMIC_RELAXED);
    P.mark_at_pass = heap_dirt_mark();
    __atomic_store_n(&P.next_look, 0, __ATOMIC_RELAXED);
}

/* Do purged chunk pages come back into use?  A quarter or more of what
 * passes purged lately was handed out again; the totals halve every
 * 256 MiB purged, so old behaviour fades.  Called by the one thread
 * running a pass. */
static bool reusing(void)
{
    static size_t purged_seen, reused_seen, p, r;
    size_t purged = chunk_purged_bytes(), reused = chunk_reused_bytes();
    p += purged - purged_seen;
    r += reused - reused_seen;
    purged_seen = purged;
    reused_seen = reused;
    if (p > ((size_t)256 << 20)) {
        p /= 2;
        r /= 2;
    }
    return r > 0 && r >= p / 4;
}

/* One pass, unless another is under way.  The acquire here and the
 * release at the end hand the pass's own state (P's marks) from one pass
 * to the next, whichever threads run them. */
static void pass(uint64_t now)
{
    if (__atomic_exchange_n(&memalloc_pass_running, 1, __ATOMIC_ACQUIRE))
        return;
    /* What this pass answers for is marked first: what is freed while it
     * runs belongs to the next one and is not lost. */
    mark_pending();
    size_t allocs = allocs_so_far();
    uint64_t delay = (uint64_t)option(OPT_PURGE_DELAY);
    struct sweep sw = {.before = now, .idle = now > delay ? now - delay : 0,
                       .oldest = UINT64_MAX};
    if (allocs != P.allocs_at_pass || reusing())
        sw.before = sw.idle;
    P.allocs_at_pass = allocs;
    chunk_sweep(&sw);
    heap_sweep(&sw);
    P.mark_at_pass -= sw.cleaned;   /* what the sweep cleaned is no new dirt */
    /* The next pass comes when the oldest of what was spared turns idle,
     * but not sooner than a quarter delay from now: spared memory last
     * used at times spread over the delay must not cost a pass per free. */
    uint64_t due = sw.oldest + delay, soonest = now + delay / 4 + 1;
    __atomic_store_n(&P.due, due > soonest ? due : soonest, __ATOMIC_RELAXED);
    __atomic_store_n(&P.spared, sw.spared, __ATOMIC_RELAXED);
    __atomic_store_n(&memalloc_pass_running, 0, __ATOMIC_RELEASE);
}

/* ---- the background thread ---------------------------------------------- */

static void *background(void *arg)
{
    (void)arg;
    track_quiet_begin();            /* only memalloc's code runs on this thread */
    for (;;) {
        uint64_t half = (uint64_t)option(OPT_PURGE_DELAY) / 2;
        os_sleep_ms(half < 10 ? 10 : half > 1000 ? 1000 : half);
        if (pending_bytes() || __atomic_load_n(&P.spared, __ATOMIC_RELAXED) || chunk_listed())
            pass(os_now_ms());
    }
    return NULL;
}

/* pthread_create may call malloc, which may come back here: the flag is
 * set first, so that only one thread is ever started (per process: the
 * fork child starts its own). */
static NOINLINE void background_start(void)
{
    if (!__atomic_exchange_n(&P.background, 1, __ATOMIC_RELAXED))
        os_thread_start(background);
}

/* ---- entry points ---------------------------------------------------------- */

/* Called after memory was freed, with no lock held.  The threshold costs a
 * walk over the classes, so it is looked at again only when pending has
 * covered half the distance to it. */
void purge_maybe(void)
{
    if (unlikely(option(OPT_BACKGROUND)) && !__atomic_load_n(&P.background, __ATOMIC_RELAXED))
        background_start();
    size_t pending = pending_bytes();
    if (unlikely(pending >= __atomic_load_n(&P.next_look, __ATOMIC_RELAXED) &&
                 pending >= (size_t)option(OPT_PURGE_THRESHOLD))) {
        size_t threshold = threshold_for(live_bytes());
        if (pending >= threshold) {
            pass(os_now_ms());
            return;
        }
        __atomic_store_n(&P.next_look, pending + (threshold - pending) / 2 + GRAIN,
                         __ATOMIC_RELAXED);
    }
    if (unlikely(__atomic_load_n(&P.spared, __ATOMIC_RELAXED))) {
        uint64_t now = os_now_ms();
        if (now >= __atomic_load_n(&P.due, __ATOMIC_RELAXED))
            pass(now);
    }
}

/* malloc_trim, after the caller's thread cache went back: every parked
 * batch, every chunk's free pages, every spare chunk, the free top and the
 * free spans' pages. */
bool purge_trim(size_t pad)
{
    chunk_unpark_all();
    size_t before = chunk_purged_bytes();
    chunk_purge_everything();
    bool released = chunk_release_spares() > 0 || chunk_purged_bytes() != before;
    released |= heap_shrink(pad);
    struct sweep sw = {.before = UINT64_MAX, .oldest = UINT64_MAX};
    heap_sweep(&sw);
    if (!__atomic_exchange_n(&memalloc_pass_running, 1, __ATOMIC_ACQUIRE)) {
        mark_pending();             /* nothing is pending after all this */
        __atomic_store_n(&P.spared, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&memalloc_pass_running, 0, __ATOMIC_RELEASE);
    }
    return released || sw.purged > 0;
}

/* In a fork child only the forking thread exists: it runs no pass, not
 * even one the fork interrupted when a signal handler forked (the child
 * may never return into it), and it has no background thread until it
 * starts its own. */
void purge_fork_child(void)
{
    memalloc_pass_running = 0;
    P.background = 0;
}
