/*
 * fuzz_threads.c - the multi-threaded churn fuzz target: the input's bytes,
 * dealt round-robin to NTHREADS threads, drive malloc / calloc / realloc /
 * free through memalloc_* on each thread's own slots, and hand blocks to
 * other threads through a shared, mutex-protected handoff array, so many
 * frees (and reallocs) are cross-thread.  Every block carries a pattern
 * that is verified before it is freed or moved and whenever it changes
 * hands.  Half-way through its stream, thread 0 forks: the child (only
 * that thread survives in it) verifies and frees the handoff array and its
 * own blocks, runs a few hundred more ops, checks memalloc_check() and
 * _exit(0)s; the parent checks the child's status.
 *
 * Timing between threads is not reproducible, so neither is a failure in
 * every detail: a failing input is a strong hint, not always a replay.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <memalloc.h>

#include "fuzz_common.h"

#define NTHREADS 4
#define OWN 32              /* each thread's own slots */
#define HANDOFF 64          /* the shared array */
#define CHILD_OPS 300

struct blk {
    uint8_t *p;
    size_t n;               /* bytes the pattern covers (<= usable) */
    unsigned tag;
};

static pthread_mutex_t handoff_lock = PTHREAD_MUTEX_INITIALIZER;
static struct blk handoff[HANDOFF];

struct worker {
    pthread_t tid;
    int id;
    const uint8_t *data;
    size_t size;
    struct blk own[OWN];
    unsigned gen;
    int forked;             /* thread 0: the fork happened */
};

static pthread_barrier_t start;

static void check_blk(const struct blk *b, const char *when)
{
    if (!b->p)
        return;
    size_t bad = verify_block(b->p, b->tag, b->n, b->n);
    if (bad != (size_t)-1)
        fuzz_fail("block %p (%zu bytes) corrupted at offset %zu %s: 0x%02x, want 0x%02x",
                  (void *)b->p, b->n, bad, when, b->p[bad], pat_byte(b->tag, bad));
}

static void free_blk(struct blk *b, const char *when)
{
    if (!b->p)
        return;
    check_blk(b, when);
    memalloc_free(b->p);
    b->p = NULL;
}

/* Sizes for churn: mostly small classes, now and then a large block. */
static size_t size_from(uint8_t a, uint8_t b)
{
    switch (a % 8) {
    case 0: return b % 64;
    case 1: case 2: case 3: return 16 + (size_t)b * 8;
    case 4: case 5: return (size_t)b * 128;                     /* to 32 KiB */
    case 6: return ((size_t)b << 9) + 1;                        /* to 128 KiB */
    default: return ((size_t)128 << 10) + ((size_t)b << 12);    /* large, to ~1.1 MiB */
    }
}

/* A new block of n bytes for b, checked and filled. */
static void new_blk(struct blk *b, size_t n, int zeroed, unsigned tag)
{
    void *p = zeroed ? memalloc_calloc(1, n) : memalloc_malloc(n);
    if (!p)
        fuzz_fail("%s(%zu) failed, errno %d", zeroed ? "calloc" : "malloc", n, errno);
    if ((uintptr_t)p % 16)
        fuzz_fail("%p is not 16-aligned", p);
    size_t u = memalloc_malloc_usable_size(p);
    if (u < n)
        fuzz_fail("usable size %zu < requested %zu", u, n);
    if (zeroed) {
        size_t nz = check_zero(p, n);
        if (nz != (size_t)-1)
            fuzz_fail("calloc(%zu) = %p not zero at offset %zu", n, p, nz);
    }
    b->p = p;
    b->n = n;
    b->tag = tag & 0xff;
    fill_block(b->p, b->tag, n);
}

/* realloc b to n bytes: the old prefix must survive. */
static void realloc_blk(struct blk *b, size_t n)
{
    check_blk(b, "before realloc");
    if (n == 0)
        n = 1;              /* realloc(p, 0) frees: tested by fuzz_ops */
    uint8_t *q = memalloc_realloc(b->p, n);
    if (!q)
        fuzz_fail("realloc(%p, %zu) failed, errno %d", (void *)b->p, n, errno);
    size_t keep = b->n < n ? b->n : n;
    size_t bad = verify_block(q, b->tag, b->n, keep);
    if (bad != (size_t)-1)
        fuzz_fail("realloc(%p, %zu) -> %p lost the old contents at offset %zu",
                  (void *)b->p, n, (void *)q, bad);
    b->p = q;
    b->n = n;
    fill_block(q, b->tag, n);
}

/* Swap b with handoff slot h: what comes in is verified. */
static void swap_handoff(struct blk *b, unsigned h)
{
    pthread_mutex_lock(&handoff_lock);
    struct blk in = handoff[h];
    handoff[h] = *b;
    pthread_mutex_unlock(&handoff_lock);
    *b = in;
    check_blk(b, "taken from the handoff array");
}

/* The forked child: one thread, other threads' caches unreachable. */
static void child_run(struct worker *w)
{
    for (unsigned h = 0; h < HANDOFF; h++)
        free_blk(&handoff[h], "in the child, from the handoff array");
    for (unsigned k = 0; k < OWN; k++)
        free_blk(&w->own[k], "in the child");
    uint64_t s = 0x1234567ull + w->size;
    for (unsigned k = 0; k < CHILD_OPS; k++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        unsigned i = (unsigned)(s >> 33) % OWN;
        uint8_t a = (uint8_t)(s >> 20), b = (uint8_t)(s >> 12);
        if (!w->own[i].p)
            new_blk(&w->own[i], size_from(a, b), a & 1, k);
        else if (a % 3 == 0)
            realloc_blk(&w->own[i], size_from(b, a));
        else
            free_blk(&w->own[i], "in the child");
    }
    int bad = memalloc_check();
    if (bad)
        fuzz_fail("in the forked child: memalloc_check() == %d", bad);
    for (unsigned k = 0; k < OWN; k++)
        free_blk(&w->own[k], "at the child's end");
    bad = memalloc_check();
    if (bad)
        fuzz_fail("in the forked child, all freed: memalloc_check() == %d", bad);
}

static void do_fork(struct worker *w)
{
    /* Holding the handoff lock across fork keeps the array consistent for
     * the child; memalloc's own locks are its fork handlers' business. */
    pthread_mutex_lock(&handoff_lock);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        fuzz_fail("fork: %s", strerror(errno));
    if (pid == 0) {
        pthread_mutex_unlock(&handoff_lock);
        child_run(w);
        _exit(0);
    }
    pthread_mutex_unlock(&handoff_lock);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        fuzz_fail("forked child %s %d", WIFSIGNALED(st) ? "died of signal" : "exited with",
                  WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
    w->forked = 1;
}

static void *work(void *arg)
{
    struct worker *w = arg;
    pthread_barrier_wait(&start);
    /* This thread's bytes: every NTHREADS-th, from its id on. */
    size_t nbytes = w->size > (size_t)w->id ? (w->size - (size_t)w->id + NTHREADS - 1) / NTHREADS : 0;
    size_t pos = 0;
#define NEXT() (pos < nbytes ? w->data[w->id + NTHREADS * pos++] : 0)
    while (pos < nbytes) {
        if (w->id == 0 && !w->forked && nbytes >= 8 && pos >= nbytes / 2)
            do_fork(w);
        uint8_t op = NEXT(), x = NEXT(), y = NEXT();
        struct blk *b = &w->own[x % OWN];
        switch (op % 8) {
        case 0: case 1:
            free_blk(b, "before reuse");
            new_blk(b, size_from(y, op), 0, w->id * 64 + w->gen++);
            break;
        case 2:
            free_blk(b, "before reuse");
            new_blk(b, size_from(y, op), 1, w->id * 64 + w->gen++);
            break;
        case 3:
            free_blk(b, "before free");
            break;
        case 4:
            if (b->p)
                realloc_blk(b, size_from(y, x));
            break;
        case 5: case 6:
            /* Give ours, take what was there: frees of taken blocks are
             * cross-thread ones. */
            swap_handoff(b, y % HANDOFF);
            if (op & 0x80)
                free_blk(b, "after a handoff");
            else if (op & 0x40 && b->p)
                realloc_blk(b, size_from(op, y));
            break;
        default:
            for (unsigned k = 0; k < OWN; k++)
                check_blk(&w->own[k], "in a sweep");
            if (op & 0x10) {
                int bad = memalloc_check();
                if (bad)
                    fuzz_fail("memalloc_check() == %d while threads run", bad);
            }
            break;
        }
    }
#undef NEXT
    return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct worker workers[NTHREADS];
    fuzz_name = "fuzz_threads";
    fuzz_pat_init();
    pthread_barrier_init(&start, NULL, NTHREADS);
    for (int t = 0; t < NTHREADS; t++) {
        memset(&workers[t], 0, sizeof workers[t]);
        workers[t].id = t;
        workers[t].data = data;
        workers[t].size = size;
        int rc = pthread_create(&workers[t].tid, NULL, work, &workers[t]);
        if (rc)
            fuzz_fail("pthread_create: %s", strerror(rc));
    }
    for (int t = 0; t < NTHREADS; t++)
        pthread_join(workers[t].tid, NULL);
    pthread_barrier_destroy(&start);
    /* The threads are gone, their caches returned: free what they left,
     * from this thread. */
    for (int t = 0; t < NTHREADS; t++)
        for (unsigned k = 0; k < OWN; k++)
            free_blk(&workers[t].own[k], "left by an exited thread");
    for (unsigned h = 0; h < HANDOFF; h++)
        free_blk(&handoff[h], "left in the handoff array");
    int bad = memalloc_check();
    if (bad)
        fuzz_fail("memalloc_check() == %d after the threads", bad);
    return 0;
}
