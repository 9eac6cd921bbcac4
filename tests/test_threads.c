/*
 * test_threads.c - multi-threaded stress through the prefixed API.
 *
 *   phase 1  four threads each malloc/calloc/realloc/free their own blocks
 *            (8 B .. 300 KiB), every block filled with a pattern that is
 *            verified before realloc and free; a fifth thread meanwhile
 *            calls memalloc_malloc_trim, memalloc_get_stats and
 *            memalloc_check (lock-order stress).
 *   phase 2  producers fill blocks (small and large) and pass them through a
 *            bounded queue to consumers, which verify, sometimes realloc,
 *            and free them: every free is a cross-thread free.
 *   phase 3  3000 short-lived threads in waves of 4; each allocates and
 *            frees a few blocks and leaves two for the main thread to free.
 *            Afterwards, with everything freed and memalloc_malloc_trim(0)
 *            called, nothing is in use and the heap is no more than 8 MiB
 *            above where it was before the churn.
 *   after each phase: memalloc_check() == 0 and, after a trim, no small or
 *   large bytes in use.
 *
 * With MALLOC_PERTURB_ set (meson test does) the whole run is repeated in a
 * re-executed copy without it, since junk filling keeps memalloc off its
 * thread-cache fast path.
 * Bounded iteration counts only, scaled down by MEMALLOC_TEST_SCALE (see
 * check.h) for emulated runs; a watchdog alarm turns a hang into a
 * failure.  Exit 0 on success, 1 on any failed check.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "memalloc.h"
#include "check.h"

#define MIN_SIZE 8
#define MAX_SIZE (300u << 10)
#define WATCHDOG_S 120           /* per run; there may be two */

/* ---- helpers ------------------------------------------------------------- */

/* Log-uniform over 8 B .. 300 KiB, so that small classes, the biggest
 * classes and large blocks are all hit often. */
static size_t random_size(uint64_t *s)
{
    unsigned bits = 3 + (unsigned)(rng_next(s) % 16);      /* 8 .. 2^18 */
    size_t n = ((size_t)1 << bits) + rng_next(s) % ((size_t)1 << bits);
    if (n > MAX_SIZE)
        n = MAX_SIZE;
    if (n < MIN_SIZE)
        n = MIN_SIZE;
    return n;
}

static inline uint64_t pat_word(uint64_t seed, size_t i)
{
    return (seed ^ (i * 0x9E3779B97F4A7C15ULL)) + i;
}

static void fill(void *p, size_t n, uint64_t seed)
{
    uint64_t *w = p;
    size_t words = n / 8;
    for (size_t i = 0; i < words; i++)
        w[i] = pat_word(seed, i);
    unsigned char *b = p;
    for (size_t i = words * 8; i < n; i++)
        b[i] = (unsigned char)(seed >> (i & 7) * 8);
}

/* Returns the offset of the first wrong byte, or (size_t)-1 if all are right. */
static size_t verify(const void *p, size_t n, uint64_t seed)
{
    const uint64_t *w = p;
    size_t words = n / 8;
    for (size_t i = 0; i < words; i++)
        if (w[i] != pat_word(seed, i))
            return i * 8;
    const unsigned char *b = p;
    for (size_t i = words * 8; i < n; i++)
        if (b[i] != (unsigned char)(seed >> (i & 7) * 8))
            return i;
    return (size_t)-1;
}

static int check_block(const char *who, const void *p, size_t n, uint64_t seed)
{
    size_t bad = verify(p, n, seed);
    if (bad != (size_t)-1) {
        FAIL("%s: block %p of %zu bytes corrupted at offset %zu", who, p, n, bad);
        return 0;
    }
    return 1;
}

static void check_new(const char *who, const void *p, size_t n)
{
    if (((uintptr_t)p & 15) != 0)
        FAIL("%s: %p (size %zu) is not 16-byte aligned", who, p, n);
    size_t u = memalloc_malloc_usable_size((void *)p);
    if (u < n)
        FAIL("%s: usable size %zu < requested %zu", who, u, n);
}

/* Trim, then require an empty, consistent allocator. */
static void check_quiet(const char *phase)
{
    int bad = memalloc_check();
    if (bad != 0)
        FAIL("%s: memalloc_check() reported %d broken invariants", phase, bad);
    memalloc_malloc_trim(0);
    struct memalloc_stats st;
    memalloc_get_stats(&st, sizeof st);
    if (st.small_in_use != 0)
        FAIL("%s: small_in_use = %zu after freeing everything", phase, st.small_in_use);
    if (st.large_in_use != 0 || st.large_blocks != 0)
        FAIL("%s: large_in_use = %zu, large_blocks = %zu after freeing everything",
             phase, st.large_in_use, st.large_blocks);
    bad = memalloc_check();
    if (bad != 0)
        FAIL("%s: memalloc_check() after trim reported %d", phase, bad);
}

static void watchdog(int sig)
{
    (void)sig;
    static const char msg[] = "FAIL: test_threads: watchdog expired, a thread is hung "
                              "(deadlock in the allocator?)\n";
    ssize_t r = write(2, msg, sizeof msg - 1);
    (void)r;
    _exit(1);
}

static void start_thread(pthread_t *t, void *(*fn)(void *), void *arg)
{
    int e = pthread_create(t, NULL, fn, arg);
    if (e != 0) {
        fprintf(stderr, "FAIL: pthread_create: %s\n", strerror(e));
        exit(1);
    }
}

/* ---- phase 1: private blocks --------------------------------------------- */

#define P1_THREADS 4
#define P1_SLOTS 192
#define P1_ITERS 100000
static long p1_iters;                   /* scaled in main */

struct slot {
    unsigned char *p;
    size_t n;
    uint64_t seed;
};

static atomic_int p1_running;

static void *p1_worker(void *arg)
{
    unsigned id = (unsigned)(uintptr_t)arg;
    uint64_t rng = 0x1234567ULL * (id + 1) | 1;
    static __thread struct slot slots[P1_SLOTS];
    char who[32];
    snprintf(who, sizeof who, "phase1 thread %u", id);

    for (long it = 0; it < p1_iters; it++) {
        struct slot *s = &slots[rng_next(&rng) % P1_SLOTS];
        unsigned op = (unsigned)(rng_next(&rng) % 8);
        if (s->p) {
            check_block(who, s->p, s->n, s->seed);
            if (op < 2) {
                /* realloc: the common prefix must survive */
                size_t n2 = random_size(&rng);
                unsigned char *q = memalloc_realloc(s->p, n2);
                if (!q) {
                    FAIL("%s: realloc(%zu -> %zu) returned NULL", who, s->n, n2);
                    continue;
                }
                size_t keep = s->n < n2 ? s->n : n2;
                /* verify the kept prefix against the old pattern */
                check_block(who, q, keep & ~(size_t)7, s->seed);
                check_new(who, q, n2);
                s->p = q;
                s->n = n2;
                s->seed = rng_next(&rng);
                fill(q, n2, s->seed);
            } else {
                memalloc_free(s->p);
                s->p = NULL;
            }
        } else {
            size_t n = random_size(&rng);
            unsigned char *p;
            if (op == 0) {
                p = memalloc_calloc(1, n);
                if (p) {
                    for (size_t i = 0; i < n; i++)
                        if (p[i] != 0) {
                            FAIL("%s: calloc(1, %zu) byte %zu is 0x%02x", who, n, i, p[i]);
                            break;
                        }
                }
            } else {
                p = memalloc_malloc(n);
            }
            if (!p) {
                FAIL("%s: allocation of %zu bytes returned NULL (errno %d)", who, n, errno);
                continue;
            }
            check_new(who, p, n);
            s->p = p;
            s->n = n;
            s->seed = rng_next(&rng);
            fill(p, n, s->seed);
        }
    }
    for (int i = 0; i < P1_SLOTS; i++) {
        if (slots[i].p) {
            check_block(who, slots[i].p, slots[i].n, slots[i].seed);
            memalloc_free(slots[i].p);
            slots[i].p = NULL;
        }
    }
    atomic_fetch_sub(&p1_running, 1);
    return NULL;
}

/* Takes every lock now and then while the workers run. */
static void *p1_meddler(void *arg)
{
    (void)arg;
    unsigned n = 0;
    while (atomic_load(&p1_running) > 0) {
        struct memalloc_stats st;
        memalloc_get_stats(&st, sizeof st);
        if (st.heap_bytes > st.heap_peak)
            FAIL("phase1: heap_bytes %zu > heap_peak %zu", st.heap_bytes, st.heap_peak);
        memalloc_malloc_trim(0);
        (void)memalloc_mallinfo2();
        if (n % 4 == 0) {
            int bad = memalloc_check();
            if (bad)
                FAIL("phase1: memalloc_check() during the run reported %d", bad);
        }
        n++;
        usleep(2000);
    }
    return NULL;
}

static void phase1(void)
{
    pthread_t t[P1_THREADS], m;
    atomic_store(&p1_running, P1_THREADS);
    for (unsigned i = 0; i < P1_THREADS; i++)
        start_thread(&t[i], p1_worker, (void *)(uintptr_t)i);
    start_thread(&m, p1_meddler, NULL);
    for (unsigned i = 0; i < P1_THREADS; i++)
        pthread_join(t[i], NULL);
    pthread_join(m, NULL);
    check_quiet("phase1");
}

/* ---- phase 2: producer / consumer ------------------------------------------ */

#define P2_PRODUCERS 2
#define P2_CONSUMERS 2
#define P2_PER_PRODUCER 100000
static long p2_per_producer;            /* scaled in main */
#define QCAP 64

struct item {
    unsigned char *p;
    size_t n;
    uint64_t seed;
};

static struct {
    pthread_mutex_t lock;
    pthread_cond_t not_empty, not_full;
    struct item ring[QCAP];
    unsigned head, count;
} q = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER,
       {{0}}, 0, 0};

static atomic_long p2_consumed;

static void q_put(struct item it)
{
    pthread_mutex_lock(&q.lock);
    while (q.count == QCAP)
        pthread_cond_wait(&q.not_full, &q.lock);
    q.ring[(q.head + q.count) % QCAP] = it;
    q.count++;
    pthread_cond_signal(&q.not_empty);
    pthread_mutex_unlock(&q.lock);
}

static struct item q_get(void)
{
    pthread_mutex_lock(&q.lock);
    while (q.count == 0)
        pthread_cond_wait(&q.not_empty, &q.lock);
    struct item it = q.ring[q.head];
    q.head = (q.head + 1) % QCAP;
    q.count--;
    pthread_cond_signal(&q.not_full);
    pthread_mutex_unlock(&q.lock);
    return it;
}

static void *p2_producer(void *arg)
{
    unsigned id = (unsigned)(uintptr_t)arg;
    uint64_t rng = 0xabcdef12345ULL * (id + 3) | 1;
    char who[32];
    snprintf(who, sizeof who, "phase2 producer %u", id);
    for (long i = 0; i < p2_per_producer; i++) {
        size_t n;
        unsigned r = (unsigned)(rng_next(&rng) % 64);
        if (r == 0)
            n = (128u << 10) + rng_next(&rng) % (MAX_SIZE - (128u << 10));  /* large */
        else if (r < 8)
            n = random_size(&rng);
        else
            n = MIN_SIZE + rng_next(&rng) % 1024;                            /* small */
        unsigned char *p = memalloc_malloc(n);
        if (!p) {
            FAIL("%s: malloc(%zu) returned NULL", who, n);
            continue;
        }
        check_new(who, p, n);
        struct item it = {p, n, rng_next(&rng)};
        fill(p, n, it.seed);
        q_put(it);
    }
    return NULL;
}

static void *p2_consumer(void *arg)
{
    unsigned id = (unsigned)(uintptr_t)arg;
    uint64_t rng = 0x55aa55aa1ULL * (id + 7) | 1;
    char who[32];
    snprintf(who, sizeof who, "phase2 consumer %u", id);
    for (;;) {
        struct item it = q_get();
        if (!it.p)
            break;
        check_block(who, it.p, it.n, it.seed);
        if (rng_next(&rng) % 8 == 0) {
            /* realloc a block another thread allocated */
            size_t n2 = random_size(&rng);
            unsigned char *p = memalloc_realloc(it.p, n2);
            if (!p) {
                FAIL("%s: realloc(%zu -> %zu) returned NULL", who, it.n, n2);
                continue;
            }
            size_t keep = it.n < n2 ? it.n : n2;
            check_block(who, p, keep & ~(size_t)7, it.seed);
            fill(p, n2, it.seed ^ 1);
            check_block(who, p, n2, it.seed ^ 1);
            it.p = p;
        }
        memalloc_free(it.p);
        atomic_fetch_add(&p2_consumed, 1);
    }
    return NULL;
}

static void phase2(void)
{
    pthread_t prod[P2_PRODUCERS], cons[P2_CONSUMERS];
    for (unsigned i = 0; i < P2_CONSUMERS; i++)
        start_thread(&cons[i], p2_consumer, (void *)(uintptr_t)i);
    for (unsigned i = 0; i < P2_PRODUCERS; i++)
        start_thread(&prod[i], p2_producer, (void *)(uintptr_t)i);
    for (unsigned i = 0; i < P2_PRODUCERS; i++)
        pthread_join(prod[i], NULL);
    for (unsigned i = 0; i < P2_CONSUMERS; i++)
        q_put((struct item){NULL, 0, 0});
    for (unsigned i = 0; i < P2_CONSUMERS; i++)
        pthread_join(cons[i], NULL);
    long want = (long)P2_PRODUCERS * p2_per_producer;
    if (atomic_load(&p2_consumed) != want && atomic_load(&failures) == 0)
        FAIL("phase2: %ld blocks consumed, expected %ld", atomic_load(&p2_consumed), want);
    check_quiet("phase2");
}

/* ---- phase 3: thread churn ---------------------------------------------------- */

#define P3_THREADS 3000             /* at most; scaled in main */
#define P3_WAVE 4
#define P3_LEFT 2

static struct item leftovers[P3_THREADS][P3_LEFT];
static unsigned p3_threads;                 /* a multiple of P3_WAVE */

static void *p3_thread(void *arg)
{
    unsigned id = (unsigned)(uintptr_t)arg;
    uint64_t rng = (0x9e3779b9ULL * (id + 11)) | 1;
    char who[32];
    snprintf(who, sizeof who, "phase3 thread %u", id);
    struct item mine[6];
    for (int i = 0; i < 6; i++) {
        size_t n;
        if (i == 5 && id % 16 == 0)
            n = (128u << 10) + rng_next(&rng) % (MAX_SIZE - (128u << 10));  /* large */
        else
            n = MIN_SIZE + rng_next(&rng) % 2048;
        mine[i].p = memalloc_malloc(n);
        mine[i].n = n;
        mine[i].seed = rng_next(&rng);
        if (!mine[i].p) {
            FAIL("%s: malloc(%zu) returned NULL", who, n);
            continue;
        }
        fill(mine[i].p, n, mine[i].seed);
    }
    /* a little private churn */
    for (int i = 0; i < 32; i++) {
        size_t n = MIN_SIZE + rng_next(&rng) % 4096;
        unsigned char *p = memalloc_malloc(n);
        if (!p) {
            FAIL("%s: malloc(%zu) returned NULL", who, n);
            continue;
        }
        fill(p, n, (uint64_t)i);
        check_block(who, p, n, (uint64_t)i);
        memalloc_free(p);
    }
    /* free four, leave two (one of them possibly large) to the main thread */
    for (int i = 0; i < 4; i++) {
        if (mine[i].p) {
            check_block(who, mine[i].p, mine[i].n, mine[i].seed);
            memalloc_free(mine[i].p);
        }
    }
    leftovers[id][0] = mine[4];
    leftovers[id][1] = mine[5];
    return NULL;
}

static void free_leftovers(unsigned from, unsigned to)
{
    for (unsigned id = from; id < to; id++)
        for (int k = 0; k < P3_LEFT; k++) {
            struct item *it = &leftovers[id][k];
            if (it->p) {
                check_block("phase3 main", it->p, it->n, it->seed);
                memalloc_free(it->p);
                it->p = NULL;
            }
        }
}

static void phase3(void)
{
    memalloc_malloc_trim(0);
    struct memalloc_stats before, after;
    memalloc_get_stats(&before, sizeof before);

    for (unsigned base = 0; base < p3_threads; base += P3_WAVE) {
        pthread_t t[P3_WAVE];
        for (unsigned i = 0; i < P3_WAVE; i++)
            start_thread(&t[i], p3_thread, (void *)(uintptr_t)(base + i));
        for (unsigned i = 0; i < P3_WAVE; i++)
            pthread_join(t[i], NULL);
        /* Free the leftovers of the even waves at once and keep the odd
         * waves' until the end, so blocks of dead threads stay live a while. */
        if ((base / P3_WAVE) % 2 == 0)
            free_leftovers(base, base + P3_WAVE);
    }
    free_leftovers(0, p3_threads);

    check_quiet("phase3");
    memalloc_get_stats(&after, sizeof after);
    if (after.heap_bytes > before.heap_bytes + (8u << 20))
        FAIL("phase3: heap grew from %zu to %zu bytes over the thread churn "
             "(more than 8 MiB) with nothing in use", before.heap_bytes, after.heap_bytes);
}

int main(int argc, char **argv)
{
    (void)argc;
    signal(SIGALRM, watchdog);
    alarm(WATCHDOG_S);

    const char *pert = getenv("MALLOC_PERTURB_");
    printf("test_threads: MALLOC_PERTURB_=%s\n", pert ? pert : "(unset)");
    p1_iters = test_scaled(P1_ITERS, 1000);
    p2_per_producer = test_scaled(P2_PER_PRODUCER, 1000);
    p3_threads = (unsigned)test_scaled(P3_THREADS / P3_WAVE, 8) * P3_WAVE;
    phase1();
    phase2();
    phase3();

    if (check_report("test_threads"))
        return 1;
    printf("test_threads: all phases passed\n");
    return rerun_without_perturb(__FILE__, argv);
}
