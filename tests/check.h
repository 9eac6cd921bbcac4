/*
 * check.h - what the C test programs share: the failure counter and the
 * CHECK / FAIL reporting macros, check_report() for main's exit status,
 * KiB / MiB, UNDER_VALGRIND(), the xorshift generator, and the fork-child
 * helpers (wait_child, read_all, CHILD_HOW, exec_self, rerun_without_perturb,
 * run_captured, abort_line_ok) and test_scaled().  With
 * memalloc.h included first it adds CHECK_HEAP and stats().  Test-specific
 * patterns, helpers and limits stay in the test files.
 *
 * Include after the system headers (with _GNU_SOURCE defined first).
 * Define CHECK_MAX_FAILURES before including to make CHECK give up (exit 1)
 * after that many failures.
 */
#ifndef MEMALLOC_TESTS_CHECK_H
#define MEMALLOC_TESTS_CHECK_H

#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- the page size ------------------------------------------------------- */

/* The page size memalloc works with: the kernel's, or the bigger one the
 * build forces (meson -Dpage_size=N passes MEMALLOC_FORCE_PAGE to tests
 * too), for valloc, pvalloc and purge expectations. */
static inline size_t page_in_force(void)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
#ifdef MEMALLOC_FORCE_PAGE
    if (page < MEMALLOC_FORCE_PAGE)
        page = MEMALLOC_FORCE_PAGE;
#endif
    return page;
}

/* ---- failures -------------------------------------------------------------- */

/* Failed checks so far; atomic, since threaded tests report from any thread. */
static atomic_int failures;

#ifdef CHECK_MAX_FAILURES
#define CHECK_GIVE_UP_()                                                      \
    do {                                                                      \
        if (atomic_load(&failures) >= CHECK_MAX_FAILURES) {                   \
            fprintf(stderr, "%s: too many failures, giving up\n", __FILE__);  \
            exit(1);                                                          \
        }                                                                     \
    } while (0)
#else
#define CHECK_GIVE_UP_() ((void)0)
#endif

/* One "file:line: FAIL: message" line per failed condition. */
#define CHECK(cond, ...)                                                      \
    do {                                                                      \
        if (!(cond)) {                                                        \
            fprintf(stderr, "%s:%d: FAIL: ", __FILE__, __LINE__);             \
            fprintf(stderr, __VA_ARGS__);                                     \
            fputc('\n', stderr);                                              \
            failures++;                                                       \
            CHECK_GIVE_UP_();                                                 \
        }                                                                     \
    } while (0)

/* For threaded stress tests: a "FAIL: message" line, the first 30 only. */
#define FAIL(...)                                                             \
    do {                                                                      \
        if (atomic_fetch_add(&failures, 1) < 30) {                            \
            fprintf(stderr, "FAIL: " __VA_ARGS__);                            \
            fputc('\n', stderr);                                              \
        }                                                                     \
    } while (0)

/* main's verdict: 0, or 1 after "NAME: N check(s) failed" on stderr. */
static inline int check_report(const char *name)
{
    int n = atomic_load(&failures);
    if (n) {
        fprintf(stderr, "%s: %d check(s) failed\n", name, n);
        return 1;
    }
    return 0;
}

/* ---- sizes and environment ----------------------------------------------------- */

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define UNDER_VALGRIND() (RUNNING_ON_VALGRIND != 0)
#endif
#endif
#ifndef UNDER_VALGRIND
#define UNDER_VALGRIND() 0
#endif

/* xorshift64* */
static inline uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* calloc from the C library the test links with (glibc's when the test
 * uses the prefixed API), or exit: the test's own bookkeeping. */
static inline void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n, size);
    if (!p) {
        fprintf(stderr, "out of memory for the test's own bookkeeping\n");
        exit(1);
    }
    return p;
}

/* ---- iteration counts ------------------------------------------------------------ */

/* n scaled by MEMALLOC_TEST_SCALE, a factor in (0, 1] (default 1), and at
 * least min.  The stress tests (threads, fork) take their loop counts from
 * here so that emulated runs, some ten times slower (tests/run --aarch64
 * runs them under qemu-user), fit in CI's time; each test still does every
 * kind of step, only fewer times.  Another value is ignored with a note. */
static inline long test_scaled(long n, long min)
{
    static double scale = -1;
    if (scale < 0) {
        const char *s = getenv("MEMALLOC_TEST_SCALE");
        char *end = NULL;
        double v = s && *s ? strtod(s, &end) : 1;
        if (s && *s && (*end || !(v > 0 && v <= 1))) {
            fprintf(stderr, "MEMALLOC_TEST_SCALE=%s is not a factor in (0, 1]: ignored\n", s);
            v = 1;
        }
        scale = v;
    }
    long k = (long)((double)n * scale);
    return k < min ? min : k;
}

/* ---- forked children ------------------------------------------------------------ */

/* waitpid, retried on EINTR; the child's status. */
static inline int wait_child(pid_t pid)
{
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    return st;
}

/* The two arguments for "child %s %d": how a child ended, and with what. */
#define CHILD_HOW(st)                                                         \
    (WIFSIGNALED(st) ? "died of signal" : "exited with"),                     \
        (WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st))

/* execv(path, argv) for a test that runs itself again, optionally with
 * LD_PRELOAD=preload.  Under an exe wrapper (meson test names it in
 * MESON_EXE_WRAPPER for cross builds) the new program must start through
 * the wrapper too: qemu-user cannot execve a guest binary by itself
 * without binfmt_misc.  qemu gets the preload as -E, for the guest only:
 * in the environment the host's loader would try to preload the guest's
 * library into qemu and complain.  Words of the wrapper are split at
 * spaces (meson quotes none in our cross file).  Returns only on failure. */
static inline void exec_self(const char *path, char **argv, const char *preload)
{
    const char *wrap = getenv("MESON_EXE_WRAPPER");
    if (!wrap || !*wrap) {
        if (preload)
            setenv("LD_PRELOAD", preload, 1);
        execv(path, argv);
        return;
    }
    static char words[1024], env_arg[4096], self[4096];
    char *args[64];
    size_t n = 0, argc = 0;
    while (argv[argc])
        argc++;
    snprintf(words, sizeof words, "%s", wrap);
    for (char *w = strtok(words, " "); w && n < 32; w = strtok(NULL, " "))
        args[n++] = w;
    const char *base = strrchr(args[0], '/');
    base = base ? base + 1 : args[0];
    if (preload && strncmp(base, "qemu-", 5) == 0) {
        snprintf(env_arg, sizeof env_arg, "LD_PRELOAD=%s", preload);
        args[n++] = "-E";
        args[n++] = env_arg;
    } else if (preload) {
        setenv("LD_PRELOAD", preload, 1);
    }
    /* The guest's /proc/self/exe is the test (qemu emulates the link);
     * the wrapper would open its own. */
    if (strcmp(path, "/proc/self/exe") == 0) {
        ssize_t len = readlink(path, self, sizeof self - 1);
        if (len <= 0)
            return;
        self[len] = '\0';
        path = self;
    }
    args[n++] = (char *)path;
    for (size_t i = 1; i < argc && n < 63; i++)
        args[n++] = argv[i];
    args[n] = NULL;
    execvp(args[0], args);
}

/* MALLOC_PERTURB_ (meson test sets it) keeps memalloc's inline fast path
 * off, so a test that wants both paths runs itself again, re-executed
 * without it, once its own run is done (not under valgrind, where
 * /proc/self/exe is valgrind's own tool).  Returns the second run's 0 or 77 (skip), or
 * 1 after a line on stderr naming name; 0 when there is nothing to rerun. */
static inline int rerun_without_perturb(const char *name, char **argv)
{
    const char *pert = getenv("MALLOC_PERTURB_");
    if (!pert || !*pert || atoi(pert) == 0 || UNDER_VALGRIND())
        return 0;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "%s: fork: %s\n", name, strerror(errno));
        return 1;
    }
    if (pid == 0) {
        unsetenv("MALLOC_PERTURB_");
        exec_self("/proc/self/exe", argv, NULL);
        fprintf(stderr, "%s: re-exec without MALLOC_PERTURB_: %s\n", name, strerror(errno));
        _exit(127);
    }
    int st = wait_child(pid);
    if (WIFEXITED(st) && (WEXITSTATUS(st) == 0 || WEXITSTATUS(st) == 77))
        return WEXITSTATUS(st);
    fprintf(stderr, "%s: the run without MALLOC_PERTURB_ %s %d\n", name, CHILD_HOW(st));
    return 1;
}

/* Read fd until EOF (retrying EINTR) or size - 1 bytes, into a
 * NUL-terminated buf; the length read. */
static inline size_t read_all(int fd, char *buf, size_t size)
{
    size_t len = 0;
    while (len < size - 1) {
        ssize_t r = read(fd, buf + len, size - 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        len += (size_t)r;
    }
    buf[len] = '\0';
    return len;
}

/* Fork; in the child, with core dumps off and stderr into a pipe, call
 * act(a, p) and exit 0.  The child's stderr lands in out (NUL-terminated,
 * *len bytes); the result is its wait status, or -1 if it never ran. */
static inline int run_captured(void (*act)(int, void *), int a, void *p, char *out,
                               size_t size, size_t *len)
{
    int fds[2];
    *len = 0;
    out[0] = '\0';
    if (pipe(fds) != 0)
        return -1;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    if (pid == 0) {
        struct rlimit no_core = {0, 0};
        setrlimit(RLIMIT_CORE, &no_core);
        close(fds[0]);
        dup2(fds[1], 2);
        close(fds[1]);
        act(a, p);
        _exit(0);                   /* survived: the parent judges that */
    }
    close(fds[1]);
    *len = read_all(fds[0], out, size);
    close(fds[0]);
    /* qemu-user adds a line of its own to the stderr of a guest that dies
     * of a signal ("qemu: uncaught target signal 6 (Aborted) - core
     * dumped", even with core dumps off): it is not the child's. */
    static const char qemu_line[] = "qemu: uncaught target signal ";
    char *q = strstr(out, qemu_line);
    if (q && (q == out || q[-1] == '\n') && strchr(q, '\n') == out + *len - 1) {
        *q = '\0';
        *len = (size_t)(q - out);
    }
    return wait_child(pid);
}

/* Is out (len bytes) one line with "memalloc:", func and the pointer p
 * (not as the prefix of a longer number)? */
static inline int abort_line_ok(const char *out, size_t len, const char *func, const void *p)
{
    char ptr[32];
    snprintf(ptr, sizeof ptr, "%p", p);
    size_t newlines = 0;
    for (size_t i = 0; i < len; i++)
        newlines += out[i] == '\n';
    int has_ptr = 0;
    for (const char *s = out; (s = strstr(s, ptr)) != NULL; s++) {
        char next = s[strlen(ptr)];
        if (!((next >= '0' && next <= '9') || (next >= 'a' && next <= 'f') ||
              (next >= 'A' && next <= 'F'))) {
            has_ptr = 1;
            break;
        }
    }
    return newlines == 1 && len > 0 && out[len - 1] == '\n' && strstr(out, "memalloc:") &&
           strstr(out, func) && has_ptr;
}

/* ---- with memalloc.h ---------------------------------------------------------------- */

#ifdef MEMALLOC_H
#define CHECK_HEAP(phase)                                                     \
    do {                                                                      \
        int bad_ = memalloc_check();                                          \
        CHECK(bad_ == 0, "memalloc_check() == %d after %s", bad_, phase);     \
    } while (0)

static inline struct memalloc_stats stats(void)
{
    struct memalloc_stats st;
    memalloc_get_stats(&st, sizeof st);
    return st;
}
#endif

#endif
