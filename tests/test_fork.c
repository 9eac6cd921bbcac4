/*
 * test_fork.c - fork() with memalloc as the process's malloc.
 *
 * The test table links this program with libmemalloc-prefixed, so it
 * re-executes itself once per scenario with LD_PRELOAD=$MEMALLOC_LIB (the
 * drop-in library), where malloc, getline's realloc and stdio's buffers
 * are all memalloc's:
 *
 *   deadlock  glibc's tst-malloc-fork-deadlock pattern: threads loop
 *             getline() (realloc under a FILE lock), fflush(NULL) (the
 *             stdio list lock, then every FILE lock), fopen/fprintf/fclose
 *             and malloc/free, while the main thread forks 200 times; each
 *             child mallocs, frees, printf()s, fflush()es and _exit()s.
 *   sigfork   glibc's tst-mallocfork2 pattern: a single-threaded process
 *             loops malloc/free while another process sends it SIGUSR1;
 *             the handler forks and waits for the child.  A child whose
 *             fork did not interrupt the allocator also allocates, frees
 *             every block it inherited and runs memalloc_check().
 *   heavy     fork while three threads hold ~60 MB of blocks and keep
 *             churning; each child verifies and frees every block it
 *             inherited, allocates and frees heavily (small and large),
 *             and requires memalloc_check() == 0; the parent keeps working
 *             afterwards and its heap must check clean too.
 *
 * MEMALLOC_TEST_SCALE (see check.h) scales the numbers of forks,
 * iterations and child operations down for emulated runs.
 * With MALLOC_PERTURB_ set (meson test does), the threaded scenarios run a
 * second time without it, so that the thread caches' fast path is used.
 * A hang is turned into a failure by alarm() watchdogs in every process
 * (and a per-scenario timeout in the launcher).  Exit 0 when all pass, 77
 * when MEMALLOC_LIB is unset (or under a sanitizer, which cannot sit under
 * a preloaded malloc), 1 on failure with one line per failed check.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define UNDER_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define UNDER_SANITIZER 1
#endif
#endif

#define SCENARIO_TIMEOUT_S 110      /* launcher: per scenario */
#define WATCHDOG_S 90               /* inside a scenario */
#define CHILD_WATCHDOG_S 30         /* inside a forked child */

/* ---- async-signal-safe reporting ------------------------------------------ */

static void put(const char *s)
{
    size_t n = strlen(s);
    while (n) {
        ssize_t w = write(2, s, n);
        if (w <= 0) {
            if (w < 0 && errno == EINTR)
                continue;
            return;
        }
        s += w;
        n -= (size_t)w;
    }
}

static void put_num(long v)
{
    char buf[24];
    int i = sizeof buf;
    buf[--i] = '\0';
    int neg = v < 0;
    unsigned long u = neg ? -(unsigned long)v : (unsigned long)v;
    do {
        buf[--i] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (neg)
        buf[--i] = '-';
    put(buf + i);
}

/* ---- the watchdog ------------------------------------------------------------- */

static const char *volatile wd_scenario = "test_fork";
static const char *volatile wd_stage = "start-up";
static volatile long wd_index = -1;
static volatile pid_t wd_child;

static void watchdog(int sig)
{
    (void)sig;
    put("FAIL: ");
    put(wd_scenario);
    put(": watchdog expired during ");
    put(wd_stage);
    if (wd_index >= 0) {
        put(" #");
        put_num(wd_index);
    }
    put(" (deadlock?)\n");
    if (wd_child > 0)
        kill(wd_child, SIGKILL);
    _exit(1);
}

static void arm_watchdog(unsigned seconds)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = watchdog;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGALRM, &sa, NULL);
    alarm(seconds);
}

/* ---- shared helpers ------------------------------------------------------------- */

/* Log-uniform 8 B .. 2^(top_bits+1) */
static size_t random_size(uint64_t *s, unsigned top_bits)
{
    unsigned bits = 3 + (unsigned)(rng_next(s) % (top_bits - 2));
    return ((size_t)1 << bits) + rng_next(s) % ((size_t)1 << bits);
}

/* A block that describes itself: 32-byte header, then a pattern. */
#define BLK_MAGIC 0x6d656d616c6c6f63ULL
struct blk {
    uint64_t magic;
    uint64_t size;          /* whole block, header included */
    uint64_t seed;
    uint64_t check;         /* magic ^ size ^ seed */
};

static inline uint64_t pat_word(uint64_t seed, size_t i)
{
    return (seed ^ (i * 0x9E3779B97F4A7C15ULL)) + i;
}

static struct blk *blk_new(size_t size, uint64_t seed)
{
    if (size < sizeof(struct blk))
        size = sizeof(struct blk);
    struct blk *b = malloc(size);
    if (!b)
        return NULL;
    b->magic = BLK_MAGIC;
    b->size = size;
    b->seed = seed;
    b->check = BLK_MAGIC ^ size ^ seed;
    uint64_t *w = (uint64_t *)(b + 1);
    size_t words = (size - sizeof *b) / 8;
    for (size_t i = 0; i < words; i++)
        w[i] = pat_word(seed, i);
    return b;
}

/* 0 if intact, else a short description of what is wrong.  The contents
 * only: this part calls nothing in the allocator. */
static const char *blk_bad_contents(const struct blk *b)
{
    if (((uintptr_t)b & 15) != 0)
        return "misaligned";
    if (b->magic != BLK_MAGIC || b->check != (BLK_MAGIC ^ b->size ^ b->seed))
        return "header overwritten";
    const uint64_t *w = (const uint64_t *)(b + 1);
    size_t words = (b->size - sizeof *b) / 8;
    for (size_t i = 0; i < words; i++)
        if (w[i] != pat_word(b->seed, i))
            return "contents changed";
    return NULL;
}

/* ... and the allocator's view of it. */
static const char *blk_bad(const struct blk *b)
{
    const char *bad = blk_bad_contents(b);
    if (!bad && malloc_usable_size((void *)b) < b->size)
        bad = "has a usable size below the requested size";
    return bad;
}

/* Wait for a child under the watchdog; returns 1 if it exited with 0. */
static int reap(pid_t pid, const char *what, long index)
{
    int st;
    wd_child = pid;
    pid_t r;
    do
        r = waitpid(pid, &st, 0);
    while (r < 0 && errno == EINTR);
    wd_child = 0;
    if (r != pid) {
        FAIL("%s: waitpid for child #%ld: %s", what, index, strerror(errno));
        return 0;
    }
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
        return 1;
    if (WIFEXITED(st))
        FAIL("%s: child #%ld exited with status %d", what, index, WEXITSTATUS(st));
    else
        FAIL("%s: child #%ld killed by signal %d (%s)", what, index, WTERMSIG(st),
             strsignal(WTERMSIG(st)));
    return 0;
}

/* The preloaded library, found again so that the test knows malloc is
 * memalloc's and can call its memalloc_check (this program also links
 * libmemalloc-prefixed, whose copy would check the wrong heap). */
static int (*lib_check)(void);

static int verify_preloaded(const char *lib)
{
    void *h = dlopen(lib, RTLD_NOW | RTLD_NOLOAD);
    if (!h) {
        FAIL("%s is not loaded: LD_PRELOAD did not take effect (%s)", lib, dlerror());
        return 0;
    }
    static const char *const names[] = {"malloc", "free", "calloc", "realloc"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        void *ours = dlsym(h, names[i]), *seen = dlsym(RTLD_DEFAULT, names[i]);
        if (!ours || ours != seen) {
            FAIL("%s() does not resolve to %s", names[i], lib);
            return 0;
        }
    }
    lib_check = (int (*)(void))dlsym(h, "memalloc_check");
    if (!lib_check) {
        FAIL("%s does not export memalloc_check", lib);
        return 0;
    }
    return 1;
}

/* ---- scenario 1: tst-malloc-fork-deadlock ---------------------------------------- */

#define DL_FORKS 200
static atomic_int dl_stop;
static atomic_long dl_progress[6];

static FILE *make_lines(unsigned seed)
{
    FILE *f = tmpfile();
    if (!f) {
        FAIL("deadlock: tmpfile: %s", strerror(errno));
        exit(1);
    }
    uint64_t r = seed | 1;
    for (int i = 0; i < 1500; i++) {
        size_t len = 1 + (size_t)(rng_next(&r) % (i % 10 == 0 ? 20000 : 600));
        for (size_t k = 0; k < len; k++)
            fputc('a' + (int)(k % 26), f);
        fputc('\n', f);
    }
    rewind(f);
    return f;
}

static void *dl_getline(void *arg)
{
    int id = (int)(intptr_t)arg;
    FILE *f = make_lines(0x1000u + (unsigned)id);
    while (!atomic_load_explicit(&dl_stop, memory_order_relaxed)) {
        /* A fresh buffer every line: getline grows it with realloc while it
         * holds the FILE lock. */
        char *line = NULL;
        size_t cap = 0;
        ssize_t n = getline(&line, &cap, f);
        if (n < 0)
            rewind(f);
        else if (line[n - 1] != '\n' || (n > 1 && line[0] != 'a'))
            FAIL("deadlock: getline returned a corrupted line");
        free(line);
        atomic_fetch_add_explicit(&dl_progress[id], 1, memory_order_relaxed);
    }
    fclose(f);
    return NULL;
}

static void *dl_fflush(void *arg)
{
    int id = (int)(intptr_t)arg;
    while (!atomic_load_explicit(&dl_stop, memory_order_relaxed)) {
        fflush(NULL);
        atomic_fetch_add_explicit(&dl_progress[id], 1, memory_order_relaxed);
        /* The stdio list lock is not fair: without a pause this loop would
         * starve fork(), which waits for it, for seconds at a time. */
        struct timespec ts = {0, 20000};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

static void *dl_fopen(void *arg)
{
    int id = (int)(intptr_t)arg;
    unsigned i = 0;
    while (!atomic_load_explicit(&dl_stop, memory_order_relaxed)) {
        FILE *f = fopen("/dev/null", "w");
        if (!f) {
            FAIL("deadlock: fopen(/dev/null): %s", strerror(errno));
            break;
        }
        char *s = NULL;
        if (asprintf(&s, "%0*u", (int)(i % 3000), i) < 0)
            s = NULL;
        fprintf(f, "%u %s\n", i, s ? s : "");
        free(s);
        fclose(f);
        i++;
        atomic_fetch_add_explicit(&dl_progress[id], 1, memory_order_relaxed);
    }
    return NULL;
}

static void *dl_malloc(void *arg)
{
    int id = (int)(intptr_t)arg;
    uint64_t r = 0x77u + (unsigned)id;
    struct blk *keep[64] = {0};
    while (!atomic_load_explicit(&dl_stop, memory_order_relaxed)) {
        unsigned k = (unsigned)(rng_next(&r) % 64);
        if (keep[k]) {
            const char *bad = blk_bad(keep[k]);
            if (bad)
                FAIL("deadlock: malloc thread: block %p %s", (void *)keep[k], bad);
            free(keep[k]);
        }
        keep[k] = blk_new(random_size(&r, 18), rng_next(&r));
        if (!keep[k])
            FAIL("deadlock: malloc returned NULL");
        atomic_fetch_add_explicit(&dl_progress[id], 1, memory_order_relaxed);
    }
    for (int k = 0; k < 64; k++)
        free(keep[k]);
    return NULL;
}

static int scenario_deadlock(void)
{
    pthread_t t[6];
    void *(*fn[6])(void *) = {dl_getline, dl_getline, dl_fflush, dl_fopen, dl_malloc, dl_malloc};
    for (int i = 0; i < 6; i++)
        if (pthread_create(&t[i], NULL, fn[i], (void *)(intptr_t)i) != 0) {
            FAIL("deadlock: pthread_create failed");
            return 1;
        }
    /* Let every thread get going before the first fork. */
    for (int i = 0; i < 6; i++) {
        wd_stage = "thread start";
        while (atomic_load(&dl_progress[i]) == 0)
            usleep(1000);
    }

    const long forks = test_scaled(DL_FORKS, 20);
    for (long i = 0; i < forks; i++) {
        wd_stage = "fork() in the parent (prepare handlers)";
        wd_index = i;
        pid_t pid = fork();
        if (pid < 0) {
            FAIL("deadlock: fork #%ld: %s", i, strerror(errno));
            break;
        }
        if (pid == 0) {
            alarm(CHILD_WATCHDOG_S);
            wd_stage = "the child's malloc/printf";
            void *p = malloc(100);
            void *q = malloc(300000);
            char *s = strdup("child");
            if (!p || !q || !s)
                _exit(2);
            memset(p, 1, 100);
            memset(q, 2, 300000);
            free(p);
            free(q);
            printf("%s %ld\n", s, i);
            fflush(stdout);
            fflush(NULL);
            free(s);
            if (i % 25 == 0 && lib_check() != 0)
                _exit(3);
            _exit(0);
        }
        wd_stage = "waiting for a forked child";
        if (!reap(pid, "deadlock", i))
            break;
        /* A short pause now and then lets the threads get deep into their
         * loops between forks. */
        if (i % 8 == 0)
            usleep(500);
    }
    wd_stage = "joining the threads";
    wd_index = -1;
    atomic_store(&dl_stop, 1);
    for (int i = 0; i < 6; i++)
        pthread_join(t[i], NULL);
    wd_stage = "memalloc_check in the parent";
    int bad = lib_check();
    if (bad)
        FAIL("deadlock: memalloc_check() in the parent reported %d", bad);
    return 0;
}

/* ---- scenario 2: fork from a signal handler ------------------------------------------ */

#define SF_OBJECTS 257
#define SF_ITERS 60000L
#define SF_MAX_SIGNALS 20000

static struct blk *sf_objects[SF_OBJECTS];
static volatile sig_atomic_t sf_in_alloc;
static volatile sig_atomic_t sf_handled, sf_handled_in_alloc, sf_error;

static void sf_child_work(int thorough)
{
    /* The allocator was idle when the signal came: the child must be able
     * to use it and everything inherited must be intact.  Freeing all of
     * it copies the whole heap, so only now and then. */
    for (int k = 0; thorough && k < SF_OBJECTS; k++) {
        if (sf_objects[k]) {
            if (blk_bad(sf_objects[k]))
                _exit(4);
            free(sf_objects[k]);
        }
    }
    for (int k = 0; k < 64; k++) {
        void *p = malloc((size_t)k * 997 + (k % 8 == 0 ? 200000 : 1));
        if (!p)
            _exit(5);
        memset(p, k, 64);
        free(p);
    }
    if (lib_check() != 0)
        _exit(6);
}

static void sf_handler(int sig)
{
    (void)sig;
    int saved = errno;
    int interrupted = sf_in_alloc;
    const char *stage = wd_stage;
    wd_stage = "fork() in the SIGUSR1 handler";
    pid_t pid = fork();
    if (pid < 0) {
        sf_error = 1;
        errno = saved;
        return;
    }
    if (pid == 0) {
        /* Calling malloc here after a fork that interrupted malloc would be
         * async-signal-unsafe; glibc's test just exits in that case. */
        if (!interrupted)
            sf_child_work(sf_handled % 16 == 0);
        _exit(0);
    }
    int st;
    wd_stage = interrupted ? "the SIGUSR1 handler's wait for its child (fork interrupted malloc)"
                           : "the SIGUSR1 handler's wait for its child";
    wd_child = pid;
    pid_t r;
    do
        r = waitpid(pid, &st, 0);
    while (r < 0 && errno == EINTR);
    wd_child = 0;
    wd_stage = stage;
    if (r != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        put("FAIL: sigfork: the child forked in the signal handler ");
        if (r != pid)
            put("could not be waited for");
        else if (WIFEXITED(st)) {
            put("exited with status ");
            put_num(WEXITSTATUS(st));
        } else {
            put("was killed by signal ");
            put_num(WTERMSIG(st));
        }
        put(interrupted ? " (fork interrupted malloc/free)\n" : "\n");
        sf_error = 1;
    }
    sf_handled++;
    if (interrupted)
        sf_handled_in_alloc++;
    errno = saved;
}

static int scenario_sigfork(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = sf_handler;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGUSR1, &sa, NULL) != 0) {
        FAIL("sigfork: sigaction: %s", strerror(errno));
        return 1;
    }

    pid_t parent = getpid();
    pid_t sender = fork();
    if (sender < 0) {
        FAIL("sigfork: fork of the signal sender: %s", strerror(errno));
        return 1;
    }
    if (sender == 0) {
        signal(SIGUSR1, SIG_IGN);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        uint64_t r = 99;
        /* Until the main loop is done and kills us (bounded anyway). */
        for (int i = 0; i < SF_MAX_SIGNALS; i++) {
            if (getppid() != parent || kill(parent, SIGUSR1) != 0)
                _exit(0);
            struct timespec ts = {0, 300000 + (long)(rng_next(&r) % 1500000)};
            nanosleep(&ts, NULL);
        }
        _exit(0);
    }

    uint64_t r = 1;
    long forks = 0;
    const long iters = test_scaled(SF_ITERS, 5000);
    for (long it = 0; it < iters && !sf_error; it++) {
        unsigned slot = (unsigned)(rng_next(&r) % SF_OBJECTS);
        size_t size = rng_next(&r) % 32 == 0 ? 130000 + rng_next(&r) % 200000
                                             : rng_next(&r) % 32768;
        uint64_t seed = rng_next(&r);
        /* Outside sf_in_alloc the allocator is idle: check contents only. */
        if (sf_objects[slot] && blk_bad_contents(sf_objects[slot])) {
            FAIL("sigfork: block %p corrupted", (void *)sf_objects[slot]);
            break;
        }
        /* Occasionally fork here too, so that signals also land in fork(). */
        if (it % 500 == 499) {
            wd_stage = "a fork() in the main loop";
            wd_index = forks;
            pid_t pid = fork();
            if (pid == 0)
                _exit(0);
            if (pid < 0 || !reap(pid, "sigfork main-loop fork", forks))
                break;
            forks++;
            wd_stage = "the malloc/free loop";
            wd_index = -1;
        }
        struct blk *old = sf_objects[slot];
        sf_objects[slot] = NULL;
        sf_in_alloc = 1;
        atomic_signal_fence(memory_order_seq_cst);
        free(old);
        struct blk *b = blk_new(size, seed);
        atomic_signal_fence(memory_order_seq_cst);
        sf_in_alloc = 0;
        if (!b) {
            FAIL("sigfork: malloc(%zu) returned NULL", size);
            break;
        }
        sf_objects[slot] = b;
    }
    kill(sender, SIGKILL);
    waitpid(sender, NULL, 0);
    signal(SIGUSR1, SIG_IGN);
    if (sf_error)
        FAIL("sigfork: a fork in the signal handler failed (see above)");
    if (sf_handled == 0)
        FAIL("sigfork: no SIGUSR1 was handled: the test did not test anything");
    fprintf(stderr, "sigfork: %d signals handled, %d of them interrupted malloc/free; "
            "%ld forks in the main loop\n", (int)sf_handled, (int)sf_handled_in_alloc, forks);
    for (int k = 0; k < SF_OBJECTS; k++) {
        if (sf_objects[k] && blk_bad(sf_objects[k]))
            FAIL("sigfork: block %p corrupted at the end", (void *)sf_objects[k]);
        free(sf_objects[k]);
    }
    int bad = lib_check();
    if (bad)
        FAIL("sigfork: memalloc_check() reported %d", bad);
    return 0;
}

/* ---- scenario 3: fork while threads hold lots of memory ---------------------------------- */

#define HV_THREADS 3
#define HV_SLOTS 300
#define HV_FORKS 16
#define HV_CHILD_OPS 5000

static _Atomic(struct blk *) hv_slots[HV_THREADS][HV_SLOTS];
static atomic_int hv_ready, hv_stop;

static size_t hv_size(uint64_t *r)
{
    unsigned k = (unsigned)(rng_next(r) % 100);
    if (k < 2)
        return (1u << 20) + rng_next(r) % (3u << 20);     /* 1..4 MiB */
    if (k < 15)
        return (128u << 10) + rng_next(r) % (384u << 10);  /* large */
    return random_size(r, 16);                              /* small */
}

static void *hv_worker(void *arg)
{
    int id = (int)(intptr_t)arg;
    uint64_t r = 0xfeedu + (unsigned)id * 7919u;
    for (int k = 0; k < HV_SLOTS; k++) {
        struct blk *b = blk_new(hv_size(&r), rng_next(&r));
        if (!b)
            FAIL("heavy: malloc returned NULL");
        atomic_store_explicit(&hv_slots[id][k], b, memory_order_release);
    }
    atomic_fetch_add(&hv_ready, 1);
    while (!atomic_load_explicit(&hv_stop, memory_order_relaxed)) {
        unsigned k = (unsigned)(rng_next(&r) % HV_SLOTS);
        /* Unpublish before touching a block, publish only when complete:
         * a child forked at any moment finds only whole blocks. */
        struct blk *b = atomic_exchange_explicit(&hv_slots[id][k], NULL, memory_order_acq_rel);
        if (b) {
            const char *bad = blk_bad(b);
            if (bad)
                FAIL("heavy: worker %d: block %p %s", id, (void *)b, bad);
            if (rng_next(&r) % 4 == 0) {
                size_t n = hv_size(&r);
                struct blk *c = realloc(b, n < sizeof *c ? sizeof *c : n);
                if (!c) {
                    FAIL("heavy: realloc returned NULL");
                    free(b);
                    continue;
                }
                free(c);
            } else {
                free(b);
            }
        }
        b = blk_new(hv_size(&r), rng_next(&r));
        if (!b)
            FAIL("heavy: malloc returned NULL");
        atomic_store_explicit(&hv_slots[id][k], b, memory_order_release);
    }
    return NULL;
}

static void hv_child(long index)
{
    alarm(CHILD_WATCHDOG_S);
    wd_stage = "a forked child's work";
    /* Everything the other threads had published is intact and can be
     * freed here, although the threads that allocated it do not exist. */
    for (int id = 0; id < HV_THREADS; id++)
        for (int k = 0; k < HV_SLOTS; k++) {
            struct blk *b = atomic_load(&hv_slots[id][k]);
            if (!b)
                continue;
            const char *bad = blk_bad(b);
            if (bad) {
                fprintf(stderr, "FAIL: heavy: child #%ld: inherited block %p %s\n", index,
                        (void *)b, bad);
                _exit(2);
            }
            free(b);
        }
    /* Heavy private churn, small and large. */
    static struct blk *mine[512];
    uint64_t r = 0x5eedu + (uint64_t)index;
    const long ops = test_scaled(HV_CHILD_OPS, 500);
    for (long op = 0; op < ops; op++) {
        unsigned k = (unsigned)(rng_next(&r) % 512);
        if (mine[k]) {
            const char *bad = blk_bad(mine[k]);
            if (bad) {
                fprintf(stderr, "FAIL: heavy: child #%ld: block %p %s\n", index,
                        (void *)mine[k], bad);
                _exit(3);
            }
            free(mine[k]);
        }
        size_t n = rng_next(&r) % 64 == 0 ? (1u << 20) + rng_next(&r) % (1u << 20)
                                          : random_size(&r, 17);
        mine[k] = blk_new(n, rng_next(&r));
        if (!mine[k]) {
            fprintf(stderr, "FAIL: heavy: child #%ld: malloc returned NULL\n", index);
            _exit(4);
        }
    }
    for (int k = 0; k < 512; k++)
        free(mine[k]);
    int bad = lib_check();
    if (bad) {
        fprintf(stderr, "FAIL: heavy: child #%ld: memalloc_check() reported %d\n", index, bad);
        _exit(5);
    }
    malloc_trim(0);
    bad = lib_check();
    if (bad) {
        fprintf(stderr, "FAIL: heavy: child #%ld: memalloc_check() after malloc_trim "
                "reported %d\n", index, bad);
        _exit(6);
    }
    _exit(0);
}

static void *hv_after(void *arg)
{
    (void)arg;
    uint64_t r = 4242;
    for (int i = 0; i < 2000; i++) {
        struct blk *b = blk_new(hv_size(&r), rng_next(&r));
        if (!b || blk_bad(b)) {
            FAIL("heavy: allocation in a thread created after the forks failed");
            return NULL;
        }
        free(b);
    }
    return NULL;
}

static int scenario_heavy(void)
{
    pthread_t t[HV_THREADS];
    for (int i = 0; i < HV_THREADS; i++)
        if (pthread_create(&t[i], NULL, hv_worker, (void *)(intptr_t)i) != 0) {
            FAIL("heavy: pthread_create failed");
            return 1;
        }
    wd_stage = "the workers' first allocations";
    while (atomic_load(&hv_ready) < HV_THREADS)
        usleep(1000);

    const long forks = test_scaled(HV_FORKS, 2);
    for (long i = 0; i < forks; i++) {
        wd_stage = "fork() in the parent";
        wd_index = i;
        pid_t pid = fork();
        if (pid < 0) {
            FAIL("heavy: fork #%ld: %s", i, strerror(errno));
            break;
        }
        if (pid == 0)
            hv_child(i);
        wd_stage = "waiting for a forked child";
        if (!reap(pid, "heavy", i))
            break;
    }
    wd_index = -1;
    wd_stage = "the parent's work after the forks";
    atomic_store(&hv_stop, 1);
    for (int i = 0; i < HV_THREADS; i++)
        pthread_join(t[i], NULL);
    for (int id = 0; id < HV_THREADS; id++)
        for (int k = 0; k < HV_SLOTS; k++) {
            struct blk *b = atomic_load(&hv_slots[id][k]);
            if (!b)
                continue;
            const char *bad = blk_bad(b);
            if (bad)
                FAIL("heavy: parent: block %p %s after the forks", (void *)b, bad);
            free(b);
        }
    pthread_t a;
    if (pthread_create(&a, NULL, hv_after, NULL) != 0)
        FAIL("heavy: pthread_create after the forks failed");
    else
        pthread_join(a, NULL);
    int bad = lib_check();
    if (bad)
        FAIL("heavy: memalloc_check() in the parent reported %d", bad);
    return 0;
}

/* ---- the launcher ------------------------------------------------------------------------------ */

static int run_scenario(const char *name)
{
    wd_scenario = name;
    arm_watchdog(WATCHDOG_S);
    const char *lib = getenv("MEMALLOC_LIB");
    if (!lib || !verify_preloaded(lib))
        return 1;
    if (strcmp(name, "deadlock") == 0)
        scenario_deadlock();
    else if (strcmp(name, "sigfork") == 0)
        scenario_sigfork();
    else if (strcmp(name, "heavy") == 0)
        scenario_heavy();
    else {
        FAIL("unknown scenario %s", name);
        return 1;
    }
    return atomic_load(&failures) ? 1 : 0;
}

static volatile sig_atomic_t launcher_alarm;
static void launcher_alarm_handler(int sig)
{
    (void)sig;
    launcher_alarm = 1;
}

static int launch(const char *self, const char *lib, const char *name, int no_perturb)
{
    pid_t pid = fork();
    if (pid < 0) {
        FAIL("fork: %s", strerror(errno));
        return 0;
    }
    if (pid == 0) {
        setpgid(0, 0);
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0)
            dup2(devnull, 1);
        if (no_perturb)
            unsetenv("MALLOC_PERTURB_");
        char *args[] = {(char *)self, "--scenario", (char *)name, NULL};
        exec_self(self, args, lib);
        fprintf(stderr, "FAIL: exec %s: %s\n", self, strerror(errno));
        _exit(127);
    }
    setpgid(pid, pid);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = launcher_alarm_handler;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGALRM, &sa, NULL);      /* no SA_RESTART: waitpid gets EINTR */
    launcher_alarm = 0;
    alarm(SCENARIO_TIMEOUT_S);
    int st;
    pid_t r;
    do
        r = waitpid(pid, &st, 0);
    while (r < 0 && errno == EINTR && !launcher_alarm);
    alarm(0);
    if (r != pid) {
        kill(-pid, SIGKILL);
        waitpid(pid, &st, 0);
        FAIL("%s: still running after %d s, killed (a fork or a child deadlocked)", name,
             SCENARIO_TIMEOUT_S);
        return 0;
    }
    /* Whatever the scenario forked and left behind goes too. */
    kill(-pid, SIGKILL);
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
        printf("ok %s%s\n", name, no_perturb ? " (without MALLOC_PERTURB_)" : "");
        return 1;
    }
    if (WIFEXITED(st))
        FAIL("%s: exited with status %d", name, WEXITSTATUS(st));
    else
        FAIL("%s: killed by signal %d (%s)", name, WTERMSIG(st), strsignal(WTERMSIG(st)));
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 3 && strcmp(argv[1], "--scenario") == 0)
        return run_scenario(argv[2]);

    const char *lib = getenv("MEMALLOC_LIB");
    if (!lib || !*lib) {
        printf("skip: MEMALLOC_LIB is not set\n");
        return 77;
    }
#ifdef UNDER_SANITIZER
    printf("skip: a sanitizer runtime cannot run under a preloaded malloc\n");
    return 77;
#endif
    if (access(lib, R_OK) != 0) {
        fprintf(stderr, "FAIL: MEMALLOC_LIB=%s: %s\n", lib, strerror(errno));
        return 1;
    }
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) {
        fprintf(stderr, "FAIL: readlink /proc/self/exe: %s\n", strerror(errno));
        return 1;
    }
    self[n] = '\0';

    static const char *const scenarios[] = {"deadlock", "sigfork", "heavy"};
    int ok = 1;
    for (size_t i = 0; i < sizeof scenarios / sizeof scenarios[0]; i++)
        ok &= launch(self, lib, scenarios[i], 0);
    /* meson test sets MALLOC_PERTURB_, which keeps memalloc off its thread
     * cache fast path: run the threaded scenarios once more without it. */
    const char *pert = getenv("MALLOC_PERTURB_");
    if (pert && *pert && atoi(pert) != 0) {
        ok &= launch(self, lib, "deadlock", 1);
        ok &= launch(self, lib, "heavy", 1);
    }
    return ok ? 0 : 1;
}
