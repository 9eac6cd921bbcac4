/*
 * test_harden.c - the hardened mode (MEMALLOC_HARDEN=1, which meson sets
 * for this test; run by hand without it, it re-executes itself with it).  Each misuse
 * runs in a forked child that must die of SIGABRT having written one line
 * naming the function, the kind and the pointer: a small block overflowed
 * by 1 and by 8 bytes past its usable size (caught at free, realloc and
 * malloc_usable_size), a double free after the program wrote over the
 * freed block, a plain double free, a write into a freed block at its
 * start, middle or last byte (caught when the block is handed out again,
 * from the cache or, after malloc_trim, from its chunk); for large blocks an overflow
 * within the last page (caught at free) and a double free, and, killed by
 * SIGSEGV at the access itself, an overflow into the guard page, a read or
 * a write after free; through malloc(0), any access (SIGSEGV) and a double
 * free.  Alongside: freed blocks read as
 * zeroes, fresh blocks read as zeroes even where the memory held data,
 * writes up to the usable size are fine, alignment holds, a request takes
 * the class of its size and the 4-byte canary, every block of a full chunk
 * has its own live byte, a freed block is reused after exactly the
 * quarantine's bound of later frees, malloc_trim empties the quarantine,
 * free leaves errno alone, M_PERTURB changes nothing, and a thread's
 * quarantine goes back at its exit.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "memalloc.h"
#include "check.h"

enum misuse { OVF1_FREE, OVF8_FREE, OVF1_REALLOC, OVF1_USABLE, OVF_ALIGNED,
              DOUBLE_FREE, DOUBLE_FREE_WRITTEN, DOUBLE_FREE_REUSED_NEIGHBOUR,
              WRITE_AFTER_FREE, WRITE_AFTER_FREE_MID, WRITE_AFTER_FREE_LAST,
              WRITE_AFTER_FREE_CHUNK,
              /* large blocks */
              LARGE_OVF_TAIL, LARGE_OVF_GUARD, LARGE_READ_AFTER_FREE, LARGE_WRITE_AFTER_FREE,
              LARGE_DOUBLE_FREE,
              /* malloc(0) */
              ZERO_READ, ZERO_WRITE, ZERO_DOUBLE_FREE };

static const struct { const char *name, *func, *kind; } cases[] = {
    [OVF1_FREE] = {"1-byte overflow", "free()", "overflow"},
    [OVF8_FREE] = {"8-byte overflow", "free()", "overflow"},
    [OVF1_REALLOC] = {"overflow seen by realloc", "realloc()", "overflow"},
    [OVF1_USABLE] = {"overflow seen by malloc_usable_size", "malloc_usable_size()", "overflow"},
    [OVF_ALIGNED] = {"overflow of an aligned block", "free()", "overflow"},
    [DOUBLE_FREE] = {"double free", "free()", "double free"},
    [DOUBLE_FREE_WRITTEN] = {"double free after writing the freed block", "free()", "double free"},
    [DOUBLE_FREE_REUSED_NEIGHBOUR] = {"double free with the neighbours busy", "free()",
                                      "double free"},
    [WRITE_AFTER_FREE] = {"write after free, seen when the block is reused", "malloc()",
                          "write after free"},
    [WRITE_AFTER_FREE_MID] = {"write after free into the middle", "malloc()", "write after free"},
    [WRITE_AFTER_FREE_LAST] = {"write after free into the last byte", "malloc()",
                               "write after free"},
    [WRITE_AFTER_FREE_CHUNK] = {"write after free, the block back in its chunk", "malloc()",
                                "write after free"},
    /* A NULL func: the access itself must fault (SIGSEGV), no message. */
    [LARGE_OVF_TAIL] = {"large block overflowed within its last page", "free()", "overflow"},
    [LARGE_OVF_GUARD] = {"large block overflowed into its guard page", NULL, NULL},
    [LARGE_READ_AFTER_FREE] = {"read of a freed large block", NULL, NULL},
    [LARGE_WRITE_AFTER_FREE] = {"write into a freed large block", NULL, NULL},
    [LARGE_DOUBLE_FREE] = {"double free of a large block", "free()", "double free"},
    [ZERO_READ] = {"read through malloc(0)", NULL, NULL},
    [ZERO_WRITE] = {"write through malloc(0)", NULL, NULL},
    [ZERO_DOUBLE_FREE] = {"double free of malloc(0)", "free()", "double free"},
};

/* Where WRITE_AFTER_FREE_MID writes: in the middle, at byte 3 of the
 * 8-byte lane mid_lane (0-3) of a 32-byte line, so that every lane of a
 * vector check is tried (run_case sets it before each fork). */
static int mid_lane;
static size_t mid_offset(size_t u)
{
    return 16 + (((u - 16) / 2) & ~(size_t)31) + 8 * (size_t)mid_lane + 3;
}

static void misuse(int which, void *arg)
{
    size_t n = (size_t)(uintptr_t)arg;
    char *volatile p = which == OVF_ALIGNED ? memalloc_aligned_alloc(64, n) : memalloc_malloc(n);
    char *volatile keep = memalloc_malloc(n);   /* a neighbour in use */
    size_t u = memalloc_malloc_usable_size(p);
    fprintf(stdout, "%p\n", (void *)p);     /* the parent reads the pointer here */
    fflush(stdout);
    switch (which) {
    case OVF1_FREE: case OVF_ALIGNED:
        p[u] ^= 1;
        memalloc_free(p);
        break;
    case OVF8_FREE:
        memset(p + u, 'A', 8);
        memalloc_free(p);
        break;
    case OVF1_REALLOC:
        p[u] ^= 0x80;
        p = memalloc_realloc(p, 2 * n + 64);
        break;
    case OVF1_USABLE:
        p[u] ^= 0x10;
        (void)memalloc_malloc_usable_size(p);
        break;
    case DOUBLE_FREE:
        memalloc_free(p);
        memalloc_free(p);
        break;
    case DOUBLE_FREE_WRITTEN:
        memalloc_free(p);
        memset(p, 0, n);            /* wipes anything a free may keep in the block */
        memalloc_free(p);
        break;
    case DOUBLE_FREE_REUSED_NEIGHBOUR:
        memalloc_free(p);
        for (int i = 0; i < 100; i++) {
            void *volatile other = memalloc_malloc(n);
            (void)other;
        }
        memalloc_free(p);
        break;
    case LARGE_OVF_TAIL:
        p[n] ^= 1;                  /* p is volatile-written: free must not see through it */
        memalloc_free(p);
        break;
    case LARGE_OVF_GUARD:
        /* The block's last page ends where the guard starts. */
        p[(n + page_in_force() - 1) / page_in_force() * page_in_force()] = 1;
        break;
    case LARGE_READ_AFTER_FREE: case ZERO_READ:
        if (which == LARGE_READ_AFTER_FREE)
            memalloc_free(p);
        fprintf(stdout, "%d\n", p[0]);
        break;
    case LARGE_WRITE_AFTER_FREE: case ZERO_WRITE:
        if (which == LARGE_WRITE_AFTER_FREE)
            memalloc_free(p);
        p[n / 2] = 1;
        break;
    case LARGE_DOUBLE_FREE: case ZERO_DOUBLE_FREE:
        memalloc_free(p);
        memalloc_free(p);
        break;
    case WRITE_AFTER_FREE: case WRITE_AFTER_FREE_MID: case WRITE_AFTER_FREE_LAST:
        memalloc_free(p);
        p[which == WRITE_AFTER_FREE ? 20 : which == WRITE_AFTER_FREE_MID ? mid_offset(u) : u - 1] = 1;
        /* Churn the class until p is out of the quarantine and handed out. */
        for (int i = 0; i < 20000; i++) {
            void *q = memalloc_malloc(n);
            memalloc_free(q);
        }
        break;
    case WRITE_AFTER_FREE_CHUNK: {
        /* malloc_trim sends p back to its chunk (out of the quarantine and
         * the cache, its page perhaps given back); a batch then takes it
         * out again, which must not pass it for a block never handed out.
         * The blocks taken are kept: the child dies. */
        memalloc_free(p);
        memalloc_malloc_trim(0);
        p[20] = 1;
        size_t count = n <= 4096 ? 8192 : ((size_t)16 << 20) / n;
        for (size_t i = 0; i < count; i++) {
            void *volatile q = memalloc_malloc(n);
            (void)q;
        }
        break;
    }
    }
    (void)keep;
}

/* misuse() prints the pointer on stdout before it acts, so the child runs
 * with stdout into a pipe too. */
static void run_case(int which, size_t n)
{
    int out[2];
    if (pipe(out) != 0) {
        FAIL("pipe");
        return;
    }
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(out[0]);
        dup2(out[1], 1);
        char err[1024];
        size_t len;
        int st = run_captured(misuse, which, (void *)(uintptr_t)n, err, sizeof err, &len);
        /* Report to the parent: status, then the stderr line. */
        dprintf(1, "%d\n%s", st, err);
        _exit(0);
    }
    close(out[1]);
    char buf[2048];
    size_t len = read_all(out[0], buf, sizeof buf);
    close(out[0]);
    wait_child(pid);
    void *p = NULL;
    int st = 0, off = 0;
    if (sscanf(buf, "%p\n%d\n%n", &p, &st, &off) < 2) {
        FAIL("%s (%zu bytes): no report from the child: %s", cases[which].name, n, buf);
        return;
    }
    const char *line = buf + off;
    size_t line_len = len - (size_t)off;
    if (!cases[which].func) {
        CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV, "%s (%zu bytes): child %s %d",
              cases[which].name, n, CHILD_HOW(st));
        return;
    }
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT, "%s (%zu bytes): child %s %d",
          cases[which].name, n, CHILD_HOW(st));
    CHECK(abort_line_ok(line, line_len, cases[which].func, p) && strstr(line, cases[which].kind),
          "%s (%zu bytes): want one line with %s, \"%s\" and %p; got: %s", cases[which].name, n,
          cases[which].func, cases[which].kind, p, line);
}

static int all_zero(const unsigned char *p, size_t from, size_t to)
{
    for (size_t i = from; i < to; i++)
        if (p[i])
            return 0;
    return 1;
}

static void test_zeroes(void)
{
    static const size_t sizes[] = {1, 8, 24, 100, 500, 4000, 30000, 100000};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t n = sizes[k];
        /* Dirty a run of blocks, free them, take them again: zeroes. */
        unsigned char *v[64];
        const int count = UNDER_VALGRIND() ? 8 : 64;     /* valgrind's break is 8 MiB */
        for (int i = 0; i < count; i++) {
            v[i] = memalloc_malloc(n);
            if (!v[i]) {
                FAIL("malloc(%zu) failed", n);
                return;
            }
            size_t u = memalloc_malloc_usable_size(v[i]);
            CHECK(u >= n, "usable %zu < %zu", u, n);
            memset(v[i], 0xa5, u);  /* up to the usable size is allowed */
        }
        for (int i = 0; i < count; i += 2) {
            size_t u = memalloc_malloc_usable_size(v[i]);
            memalloc_free(v[i]);
            /* The freed block reads as zeroes (its second word may hold the
             * free key that marks free blocks). */
            CHECK(all_zero(v[i], 0, 8) && all_zero(v[i], 16, u),
                  "freed %zu-byte block %p holds old data", n, (void *)v[i]);
        }
        for (int i = 0; i < count; i += 2) {
            v[i] = memalloc_malloc(n);
            CHECK(all_zero(v[i], 0, n), "fresh %zu-byte block %p is not zeroed", n, (void *)v[i]);
        }
        for (int i = 0; i < count; i++)
            memalloc_free(v[i]);
    }
}

static void test_alignment(void)
{
    for (size_t al = 16; al <= 8192; al *= 2) {
        char *p = memalloc_aligned_alloc(al, al);
        CHECK(p && ((uintptr_t)p & (al - 1)) == 0, "aligned_alloc(%zu) gave %p", al, (void *)p);
        size_t u = memalloc_malloc_usable_size(p);
        CHECK(u >= al, "aligned_alloc(%zu): usable %zu", al, u);
        memset(p, 1, u);
        memalloc_free(p);
    }
    char *r = memalloc_malloc(10);
    memset(r, 7, 10);
    for (size_t n = 20; n < 300000; n = n * 3 / 2) {
        r = memalloc_realloc(r, n);
        CHECK(r && r[0] == 7 && r[9] == 7, "realloc chain lost data at %zu", n);
        memset(r + 10, 0, n - 10);
    }
    memalloc_free(r);
    CHECK_HEAP("the hardened run");
}

/* A request takes the smallest class that holds it and the 4-byte
 * canary: 28 bytes fit a 32-byte block, 29 take the next (48), and the
 * usable size is the class less the canary. */
static void test_canary_class(void)
{
    static const struct { size_t n, usable; } want[] = {
        {1, 12}, {12, 12}, {13, 28}, {28, 28}, {29, 44}, {44, 44}, {45, 60}, {124, 124},
    };
    for (size_t k = 0; k < sizeof want / sizeof want[0]; k++) {
        void *p = memalloc_malloc(want[k].n);
        size_t u = memalloc_malloc_usable_size(p);
        CHECK(u == want[k].usable, "malloc(%zu): usable %zu, want %zu", want[k].n, u,
              want[k].usable);
        memalloc_free(p);
    }
}

/* Every block of a chunk has a live byte of its own, the last ones
 * included: thousands of blocks of the smallest class and of a middle
 * one, written up to their usable size, freed without one taken for a
 * double free, and the heap consistent. */
static void test_full_chunks(void)
{
    static void *v[9000];
    static const struct { size_t n; int count; } runs[] = { {8, 9000}, {200, 1000} };
    for (size_t r = 0; r < sizeof runs / sizeof runs[0]; r++) {
        for (int i = 0; i < runs[r].count; i++) {
            v[i] = memalloc_malloc(runs[r].n);
            if (!v[i]) {
                FAIL("malloc(%zu) failed", runs[r].n);
                return;
            }
            memset(v[i], 0xff, memalloc_malloc_usable_size(v[i]));
        }
        for (int i = 0; i < runs[r].count; i++)
            memalloc_free(v[i]);
    }
    CHECK_HEAP("after filling whole chunks");
}

/* A freed block is handed out again only once MEMALLOC_QUARANTINE_BLOCKS
 * (1024 by default) blocks have been freed after it, and then at once
 * (the cache is LIFO): the ring holds exactly its bound.  In a thread of
 * its own, whose ring starts empty. */
#define Q_DEFAULT_BLOCKS 1024
static void *depth_main(void *arg)
{
    int *reused_at = arg;
    void *p = memalloc_malloc(24);
    memalloc_free(p);
    for (int i = 0; i <= Q_DEFAULT_BLOCKS + 64 && *reused_at < 0; i++) {
        void *q = memalloc_malloc(24);
        if (q == p)
            *reused_at = i;         /* after i frees */
        memalloc_free(q);
    }
    return NULL;
}

static void test_quarantine_depth(void)
{
    int reused_at = -1;
    pthread_t t;
    CHECK(pthread_create(&t, NULL, depth_main, &reused_at) == 0, "pthread_create");
    pthread_join(t, NULL);
    CHECK(reused_at == Q_DEFAULT_BLOCKS, "a freed block was handed out again after %d frees, "
          "want %d", reused_at, Q_DEFAULT_BLOCKS);
}

/* Freed blocks wait in the quarantine (still in use for their chunks)
 * until malloc_trim hands them all back. */
static void test_quarantine_trim(void)
{
    memalloc_malloc_trim(0);        /* what earlier tests left in it */
    size_t before = stats().small_in_use;
    void *v[100];
    for (int i = 0; i < 100; i++)
        v[i] = memalloc_malloc(200);
    for (int i = 0; i < 100; i++)
        memalloc_free(v[i]);
    size_t held = stats().small_in_use;
    CHECK(held > before, "freed blocks did not wait in the quarantine (%zu, %zu)", before, held);
    memalloc_malloc_trim(0);
    size_t after = stats().small_in_use;
    CHECK(after <= before, "malloc_trim left %zu bytes in use, %zu before", after, before);
}

/* While test_errno runs, the system calls a free may make (a purge's
 * madvise, a large block's mprotect, the clock) succeed and then set
 * errno, as any libc function may: free must not let it show.  Defined
 * here, they stand in for libc's in memalloc too. */
static volatile int clobber_errno;
int madvise(void *addr, size_t len, int advice)
{
    long r = syscall(SYS_madvise, addr, len, advice);
    if (clobber_errno)
        errno = 7777;
    return (int)r;
}

int mprotect(void *addr, size_t len, int prot)
{
    long r = syscall(SYS_mprotect, addr, len, prot);
    if (clobber_errno)
        errno = 7777;
    return (int)r;
}

int clock_gettime(clockid_t clock, struct timespec *ts)
{
    long r = syscall(SYS_clock_gettime, clock, ts);
    if (clobber_errno)
        errno = 7777;
    return (int)r;
}

/* free leaves errno alone, for every kind of block, on a thread's first
 * free (which makes its quarantine) as on later ones, and on frees that
 * push many blocks out of the quarantine. */
static void *errno_main(void *arg)
{
    (void)arg;
    static const size_t sizes[] = {24, 300, 4096, 100000, 600000, 0};
    for (int round = 0; round < 3; round++)
        for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
            void *p = memalloc_malloc(sizes[k]);
            errno = 4242;
            memalloc_free(p);
            CHECK(errno == 4242, "free of a %zu-byte block set errno to %d", sizes[k], errno);
        }
    void *v[3000];
    for (int i = 0; i < 3000; i++)
        v[i] = memalloc_malloc(48);
    errno = 4343;
    for (int i = 0; i < 3000; i++)
        memalloc_free(v[i]);
    CHECK(errno == 4343, "3000 frees set errno to %d", errno);
    return NULL;
}

static void test_errno(void)
{
    pthread_t t;
    clobber_errno = 1;
    errno_main(NULL);
    CHECK(pthread_create(&t, NULL, errno_main, NULL) == 0, "pthread_create");
    pthread_join(t, NULL);
    clobber_errno = 0;
    memalloc_malloc_trim(0);        /* the quarantined large blocks back (valgrind's break is small) */
}

/* mallopt(M_PERTURB) is accepted and ignored in this mode: junk in freed
 * blocks would be taken for writes after free. */
static void test_perturb(void)
{
    CHECK(memalloc_mallopt(M_PERTURB, 0x55) == 1, "mallopt(M_PERTURB) refused");
    void *v[64];
    for (int round = 0; round < 100; round++) {
        for (int i = 0; i < 64; i++)
            v[i] = memalloc_malloc(16 + 48 * (size_t)i);
        for (int i = 0; i < 64; i++)
            memalloc_free(v[i]);
    }
    unsigned char *p = memalloc_malloc(200);
    CHECK(p != NULL, "malloc(200) after M_PERTURB: %s", strerror(errno));
    if (p)
        CHECK(all_zero(p, 0, 200), "a block after M_PERTURB does not read zero");
    memalloc_free(p);
    memalloc_mallopt(M_PERTURB, 0);
}

/* Each thread's quarantine is its own and goes back when the thread
 * exits: blocks freed by threads (their own and the main thread's) are
 * not held once the threads are joined. */
#define T_THREADS 4
#define T_BLOCKS 400
static void *t_main(void *arg)
{
    void **given = arg, *v[T_BLOCKS];
    for (int i = 0; i < T_BLOCKS; i++) {
        v[i] = memalloc_malloc(200);
        memset(v[i], 1, 200);
    }
    for (int i = 0; i < T_BLOCKS; i++) {
        memalloc_free(v[i]);
        memalloc_free(given[i]);    /* a block the main thread allocated */
    }
    return NULL;
}

static void test_threads(void)
{
    memalloc_malloc_trim(0);
    size_t before = stats().small_in_use;
    static void *given[T_THREADS][T_BLOCKS];
    pthread_t t[T_THREADS];
    for (int k = 0; k < T_THREADS; k++)
        for (int i = 0; i < T_BLOCKS; i++)
            given[k][i] = memalloc_malloc(300);
    for (int k = 0; k < T_THREADS; k++)
        CHECK(pthread_create(&t[k], NULL, t_main, given[k]) == 0, "pthread_create");
    for (int k = 0; k < T_THREADS; k++)
        pthread_join(t[k], NULL);
    memalloc_malloc_trim(0);
    size_t after = stats().small_in_use;
    /* Held, the threads' frees would be 4 x 400 x (208 + 304) bytes. */
    CHECK(after < before + (64 << 10), "blocks freed by exited threads still held: %zu, %zu before",
          after, before);
    CHECK_HEAP("after the threads");
}

/* malloc(0): distinct pointers, usable size 0, each freed once, realloc
 * out of one; a large block's bytes up to its size are the program's
 * (the guard starts after them), and realloc keeps them. */
static void test_zero_size(void)
{
    void *v[100];
    for (int i = 0; i < 100; i++) {
        v[i] = memalloc_malloc(0);
        CHECK(v[i] != NULL, "malloc(0) gave NULL");
        for (int j = 0; j < i; j++)
            CHECK(v[i] != v[j], "malloc(0) gave %p twice", v[i]);
        CHECK(memalloc_malloc_usable_size(v[i]) == 0, "malloc(0) usable size");
    }
    char *r = memalloc_realloc(v[0], 100);  /* from a slot to a block */
    CHECK(r != NULL, "realloc of malloc(0)");
    memset(r, 1, 100);
    memalloc_free(r);
    for (int i = 1; i < 100; i++)
        memalloc_free(v[i]);
    char *big = memalloc_malloc(300000);
    CHECK(big && memalloc_malloc_usable_size(big) == 300000, "large usable size");
    memset(big, 7, 300000);         /* every byte up to the size is writable */
    big = memalloc_realloc(big, 700000);
    CHECK(big && big[0] == 7 && big[299999] == 7, "large realloc lost data");
    memalloc_free(big);
}

int main(int argc, char **argv)
{
    (void)argc;
    const char *h = getenv("MEMALLOC_HARDEN");
    if ((!h || strcmp(h, "1") != 0) && UNDER_VALGRIND())
        return 77;                  /* /proc/self/exe is valgrind's tool */
    if (!h || strcmp(h, "1") != 0) {
        setenv("MEMALLOC_HARDEN", "1", 1);
        exec_self("/proc/self/exe", argv, NULL);
        FAIL("re-exec with MEMALLOC_HARDEN=1");
        return check_report("test_harden");
    }
    static const size_t sizes[] = {24, 100, 4096, 20000, 100000};
    for (int which = OVF1_FREE; which <= WRITE_AFTER_FREE_CHUNK; which++)
        for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++)
            run_case(which, sizes[k]);
    for (mid_lane = 1; mid_lane < 4; mid_lane++)        /* lane 0 ran above */
        for (size_t k = 1; k < sizeof sizes / sizeof sizes[0]; k++)
            run_case(WRITE_AFTER_FREE_MID, sizes[k]);
    static const size_t large[] = {200003, 600000};    /* one ends mid-page, one on a page */
    for (int which = LARGE_OVF_TAIL; which <= LARGE_DOUBLE_FREE; which++)
        for (size_t k = 0; k < sizeof large / sizeof large[0]; k++)
            if (which != LARGE_OVF_TAIL || large[k] % page_in_force())
                run_case(which, large[k]);
    for (int which = ZERO_READ; which <= ZERO_DOUBLE_FREE; which++)
        run_case(which, 0);
    test_zero_size();
    test_zeroes();
    test_alignment();
    test_canary_class();
    test_full_chunks();
    test_quarantine_depth();
    test_quarantine_trim();
    test_perturb();
    test_errno();
    test_threads();
    return check_report("test_harden");
}
