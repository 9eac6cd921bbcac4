/*
 * test_glibc.c - corners where memalloc follows glibc 2.36 exactly, each
 * checked against what glibc's documentation or glibc itself does:
 * mallopt(M_TRIM_THRESHOLD, -1) turning automatic trimming off and
 * mallopt(M_TOP_PAD, negative) meaning no pad, both returning 1; every
 * power-of-two alignment from 2^4 to 2^63 with size 1 and with impossible
 * sizes through memalign, aligned_alloc and posix_memalign (ENOMEM, never
 * EINVAL; compared with the system malloc, glibc, when the test runs on it
 * without a sanitizer or valgrind); posix_memalign leaving errno at ENOMEM;
 * malloc_stats and the fatal messages written whole by a thread with a
 * cancel pending; realloc(p, 0) keeping errno even when the free inside it
 * calls a failing madvise; malloc_info's XML (well-formed, memalloc's
 * figures, EINVAL for options != 0, no allocator lock held around stdio);
 * malloc_trim with a huge pad keeping the heap.  Anything that changes
 * options, installs a seccomp filter or may abort runs in a forked child.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "memalloc.h"
#include "check.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SANITIZED 1
#endif
#endif
#ifndef SANITIZED
#define SANITIZED 0
#endif

/* Values and functions the compiler cannot see through. */
static volatile size_t v_size_max = SIZE_MAX;

/* Run fn in a forked child (no core dumps); its failed checks make it exit 1. */
static void in_child(const char *name, void (*fn)(void))
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        CHECK(0, "%s: fork: %s", name, strerror(errno));
        return;
    }
    if (pid == 0) {
        struct rlimit no_core = {0, 0};
        setrlimit(RLIMIT_CORE, &no_core);
        atomic_store(&failures, 0);         /* the child's own verdict */
        fn();
        fflush(NULL);
        _exit(atomic_load(&failures) ? 1 : 0);
    }
    int st = wait_child(pid);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s: child %s %d", name, CHILD_HOW(st));
}

/* ---- 1. mallopt(M_TRIM_THRESHOLD, -1), mallopt(M_TOP_PAD, negative) ---------------- */

static void trim_disabled_child(void)
{
    memalloc_malloc_trim(0);
    CHECK(memalloc_mallopt(M_TRIM_THRESHOLD, -1) == 1, "mallopt(M_TRIM_THRESHOLD, -1) != 1");
    struct memalloc_stats s0 = stats();
    void *p = memalloc_malloc(4 * MiB);
    CHECK(p != NULL, "malloc(4 MiB)");
    memalloc_free(p);
    struct memalloc_stats s1 = stats();
    CHECK(s1.released_sbrk == s0.released_sbrk,
          "trimming disabled, yet freeing 4 MiB on top gave %zu bytes back with sbrk",
          s1.released_sbrk - s0.released_sbrk);
    CHECK(s1.heap_bytes >= s0.heap_bytes + 4 * MiB,
          "trimming disabled, yet the heap is %zu bytes after freeing 4 MiB (was %zu)",
          s1.heap_bytes, s0.heap_bytes);
    /* Any negative value is "off", as the (size_t) cast makes it in glibc. */
    CHECK(memalloc_mallopt(M_TRIM_THRESHOLD, -2) == 1, "mallopt(M_TRIM_THRESHOLD, -2) != 1");
    p = memalloc_malloc(6 * MiB);
    memalloc_free(p);
    CHECK(stats().released_sbrk == s0.released_sbrk, "M_TRIM_THRESHOLD -2 still trims");
    /* malloc_trim still works. */
    int t = memalloc_malloc_trim(0);
    struct memalloc_stats s2 = stats();
    CHECK(t == 1, "malloc_trim(0) with trimming disabled returned %d", t);
    CHECK(s2.released_sbrk >= s0.released_sbrk + 6 * MiB,
          "malloc_trim(0) with trimming disabled gave back only %zu bytes",
          s2.released_sbrk - s0.released_sbrk);
    CHECK_HEAP("trim threshold -1");

    /* A negative top pad is no pad: the break comes back to where it was. */
    CHECK(memalloc_mallopt(M_TRIM_THRESHOLD, 128 << 10) == 1, "mallopt(M_TRIM_THRESHOLD, 128K)");
    CHECK(memalloc_mallopt(M_TOP_PAD, -5) == 1, "mallopt(M_TOP_PAD, -5) != 1");
    char *before = sbrk(0);
    p = memalloc_malloc(1 * MiB);
    CHECK(p != NULL && (char *)sbrk(0) >= before + 1 * MiB, "malloc(1 MiB) did not grow the break");
    memalloc_free(p);
    CHECK((char *)sbrk(0) == before, "M_TOP_PAD -5: the break stays %td bytes above the start",
          (char *)sbrk(0) - before);
    CHECK(memalloc_mallopt(M_TOP_PAD, INT32_MIN) == 1, "mallopt(M_TOP_PAD, INT_MIN) != 1");
    p = memalloc_malloc(1 * MiB);
    memalloc_free(p);
    CHECK((char *)sbrk(0) == before, "M_TOP_PAD INT_MIN: the break stays %td bytes above the start",
          (char *)sbrk(0) - before);
    CHECK_HEAP("negative top pad");
}

/* ---- 2, 3. huge alignments and impossible sizes ------------------------------------ */

enum { F_MEMALIGN, F_ALIGNED_ALLOC, F_POSIX_MEMALIGN, F_COUNT };
static const char *const fname[F_COUNT] = {"memalign", "aligned_alloc", "posix_memalign"};

struct outcome {
    int ok;         /* a block came back */
    int err;        /* errno afterwards (posix_memalign: its result) */
    int errno_after;/* posix_memalign: errno afterwards */
    int untouched;  /* posix_memalign: *memptr left alone on failure */
};

typedef void *(*memalign_fn)(size_t, size_t);
typedef int (*posix_fn)(void **, size_t, size_t);
typedef void (*free_fn)(void *);

struct api {
    memalign_fn memalign, aligned_alloc;
    posix_fn posix_memalign;
    free_fn free;
};

static struct api mem_api = {memalloc_memalign, memalloc_aligned_alloc,
                             memalloc_posix_memalign, memalloc_free};
/* The C library the test runs on: this test links libmemalloc-prefixed. */
static struct api sys_api = {memalign, aligned_alloc, posix_memalign, free};

static struct outcome try_one(const struct api *volatile api, int f, size_t align, size_t n)
{
    struct outcome o = {0, 0, 0, 1};
    void *p = NULL;
    errno = 0;
    if (f == F_POSIX_MEMALIGN) {
        void *sentinel = (void *)0x1230;
        p = sentinel;
        o.err = api->posix_memalign(&p, align, n);
        o.errno_after = errno;
        o.ok = o.err == 0;
        o.untouched = p == sentinel;
        if (!o.ok)
            p = NULL;
    } else {
        p = f == F_MEMALIGN ? api->memalign(align, n) : api->aligned_alloc(align, n);
        o.err = errno;
        o.ok = p != NULL;
    }
    if (p && (align & (align - 1)) == 0 && ((uintptr_t)p & (align - 1)) != 0)
        o.ok = -1;          /* misaligned */
    if (p)
        api->free(p);
    return o;
}

/* The system malloc is glibc's unless a sanitizer or valgrind replaced it. */
/* Not under an emulator's exe wrapper either: qemu-user's mmap loses its
 * free guest address space after glibc's impossible requests. */
static int compare_with_libc(void)
{
    return !SANITIZED && !UNDER_VALGRIND() && !getenv("MESON_EXE_WRAPPER");
}

/* One request through one entry point: memalloc's outcome must be `want_ok`
 * (1 a block, 0 ENOMEM, -1 either: the machine's memory decides) and, when
 * it must fail and the system malloc is glibc's, agree with glibc. */
static void expect_pow2(int f, unsigned k, size_t n, int want_ok)
{
    size_t align = (size_t)1 << k;
    struct outcome m = try_one(&mem_api, f, align, n);
    CHECK(m.ok != -1, "%s(2^%u, %#zx): misaligned result", fname[f], k, n);
    if (want_ok == 1)
        CHECK(m.ok == 1, "%s(2^%u, %#zx) failed (errno / result %d)", fname[f], k, n, m.err);
    if (want_ok == 0)
        CHECK(m.ok == 0, "%s(2^%u, %#zx) succeeded", fname[f], k, n);
    if (!m.ok) {
        CHECK(m.err == ENOMEM, "%s(2^%u, %#zx): %s %d, expected ENOMEM", fname[f], k, n,
              f == F_POSIX_MEMALIGN ? "result" : "errno", m.err);
        if (f == F_POSIX_MEMALIGN) {
            CHECK(m.errno_after == ENOMEM, "posix_memalign(2^%u, %#zx) failed with errno %d, "
                  "glibc leaves ENOMEM", k, n, m.errno_after);
            CHECK(m.untouched, "posix_memalign(2^%u, %#zx) failed but changed *memptr", k, n);
        }
    }
    /* Only where both must fail: glibc honours MALLOC_PERTURB_ too, and
     * filling what it trims off a 16 GiB aligned block takes minutes. */
    if (!compare_with_libc() || want_ok != 0)
        return;
    struct outcome g = try_one(&sys_api, f, align, n);
    CHECK(!g.ok, "glibc's %s(2^%u, %#zx) succeeded: the expectation is wrong", fname[f], k, n);
    if (!g.ok && !m.ok) {
        CHECK(m.err == g.err, "%s(2^%u, %#zx): memalloc %d, glibc %d", fname[f], k, n, m.err,
              g.err);
        if (f == F_POSIX_MEMALIGN)
            CHECK(m.errno_after == g.errno_after && m.untouched == g.untouched,
                  "posix_memalign(2^%u, %#zx): errno %d / *memptr %s, glibc errno %d / %s", k, n,
                  m.errno_after, m.untouched ? "kept" : "changed", g.errno_after,
                  g.untouched ? "kept" : "changed");
    }
}

static void test_huge_alignments(void)
{
    size_t smax = v_size_max;
    for (unsigned k = 4; k < 64; k++) {
        size_t a = (size_t)1 << k;
        /* Size 1: up to 4 MiB every machine (and valgrind's small break)
         * has room; from 2^47 no 47-bit address space does; in between the
         * machine's memory decides, and failure must still be ENOMEM. */
        int want = k <= 22 ? 1 : k >= 47 ? 0 : -1;
        /* Under an emulator's exe wrapper (qemu-user zero-fills the break
         * it hands back) such blocks would cost real memory: skip them. */
        if (want == -1 && getenv("MESON_EXE_WRAPPER"))
            continue;
        const size_t impossible[] = {smax, smax - a + 1, smax / 2 + 1, smax / 2,
                                     smax / 2 - a + 1, smax / 4};
        for (int f = 0; f < F_COUNT; f++) {
            expect_pow2(f, k, 1, want);
            for (size_t i = 0; i < sizeof impossible / sizeof impossible[0]; i++)
                expect_pow2(f, k, impossible[i], 0);
        }
    }
    /* memalign rounds other alignments up: up to 2^63 that is ENOMEM,
     * above it EINVAL; posix_memalign refuses them all with EINVAL and
     * leaves errno alone. */
    static const struct { size_t align; int memalign_errno; } odd[] = {
        {((size_t)1 << 62) + 1, ENOMEM}, {SIZE_MAX / 2, ENOMEM},
        {SIZE_MAX / 2 + 2, EINVAL}, {SIZE_MAX, EINVAL},
    };
    for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) {
        for (int big = 0; big < 2; big++) {
            size_t n = big ? smax : 1;
            struct outcome m = try_one(&mem_api, F_MEMALIGN, odd[i].align, n);
            CHECK(!m.ok && m.err == odd[i].memalign_errno, "memalign(%#zx, %#zx): %s, errno %d, "
                  "expected %d", odd[i].align, n, m.ok ? "a block" : "NULL", m.err,
                  odd[i].memalign_errno);
            void *sentinel = (void *)0x1230, *p = sentinel;
            errno = EDOM;
            int rc = memalloc_posix_memalign(&p, odd[i].align, n);
            CHECK(rc == EINVAL && errno == EDOM && p == sentinel,
                  "posix_memalign(%#zx, %#zx) = %d, errno %d, *memptr %s", odd[i].align, n, rc,
                  errno, p == sentinel ? "kept" : "changed");
            if (compare_with_libc()) {
                struct outcome g = try_one(&sys_api, F_MEMALIGN, odd[i].align, n);
                CHECK(!g.ok && g.err == m.err, "memalign(%#zx, %#zx): memalloc errno %d, glibc %d",
                      odd[i].align, n, m.err, g.err);
                g = try_one(&sys_api, F_POSIX_MEMALIGN, odd[i].align, n);
                struct outcome mp = try_one(&mem_api, F_POSIX_MEMALIGN, odd[i].align, n);
                CHECK(g.err == mp.err && g.errno_after == mp.errno_after,
                      "posix_memalign(%#zx, %#zx): memalloc %d / errno %d, glibc %d / errno %d",
                      odd[i].align, n, mp.err, mp.errno_after, g.err, g.errno_after);
            }
        }
    }
    CHECK_HEAP("huge alignments");
}

static void test_posix_memalign_errno(void)
{
    void *sentinel = (void *)0x1230, *p = sentinel;
    errno = 0;
    int rc = memalloc_posix_memalign(&p, 64, v_size_max);
    CHECK(rc == ENOMEM && errno == ENOMEM && p == sentinel,
          "posix_memalign(64, SIZE_MAX) = %d, errno %d (glibc: ENOMEM, ENOMEM)", rc, errno);
    errno = EDOM;
    rc = memalloc_posix_memalign(&p, (size_t)1 << 20, v_size_max - 100);
    CHECK(rc == ENOMEM && errno == ENOMEM && p == sentinel,
          "posix_memalign(1 MiB, SIZE_MAX - 100) = %d, errno %d", rc, errno);
    errno = EDOM;
    rc = memalloc_posix_memalign(&p, 24, 100);
    CHECK(rc == EINVAL && errno == EDOM && p == sentinel,
          "posix_memalign(24, 100) = %d, errno %d: EINVAL leaves errno alone", rc, errno);
}

/* ---- 4. cancellation ---------------------------------------------------------------- */

static volatile int returned;

static void *stats_thread(void *arg)
{
    (void)arg;
    pthread_setcanceltype(PTHREAD_CANCEL_DEFERRED, NULL);
    pthread_cancel(pthread_self());         /* pending from here on */
    memalloc_malloc_stats();
    returned = 1;
    pthread_testcancel();
    return NULL;
}

static void *double_free_thread(void *arg)
{
    pthread_setcanceltype(PTHREAD_CANCEL_DEFERRED, NULL);
    memalloc_free(arg);
    pthread_cancel(pthread_self());
    memalloc_free(arg);                     /* aborts */
    returned = 1;
    pthread_testcancel();
    return NULL;
}

/* In the child made by run_captured: run the thread, then say how it ended
 * (exit 0: cancelled after its call returned; 3: cancelled inside it). */
static void cancel_act(int which, void *p)
{
    pthread_t t;
    returned = 0;
    if (pthread_create(&t, NULL, which ? double_free_thread : stats_thread, p) != 0)
        _exit(4);
    void *res = NULL;
    pthread_join(t, &res);
    _exit(returned && res == PTHREAD_CANCELED ? 0 : 3);
}

static void test_cancellation(void)
{
    static char out[64 * 1024];
    size_t len;
    void *keep = memalloc_malloc(1000);     /* a class row in the report */
    int st = run_captured(cancel_act, 0, NULL, out, sizeof out, &len);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0,
          "malloc_stats with a cancel pending: child %s %d (3: cancelled inside the report)",
          CHILD_HOW(st));
    CHECK(strstr(out, "memalloc statistics") != NULL && strstr(out, "segments:") != NULL &&
              len > 0 && out[len - 1] == '\n',
          "malloc_stats with a cancel pending printed %zu bytes, not the whole report", len);
    memalloc_free(keep);

    void *blocks[2] = {memalloc_malloc(100), memalloc_malloc(300 * KiB)};
    for (int i = 0; i < 2; i++) {
        st = run_captured(cancel_act, 1, blocks[i], out, sizeof out, &len);
        CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT,
              "double free (%s) with a cancel pending: child %s %d, not SIGABRT; stderr \"%s\"",
              i ? "large" : "small", CHILD_HOW(st), out);
        CHECK(abort_line_ok(out, len, "free()", blocks[i]),
              "double free (%s) with a cancel pending: message \"%s\"", i ? "large" : "small", out);
    }
    memalloc_free(blocks[0]);
    memalloc_free(blocks[1]);
}

/* ---- 5. realloc(p, 0) keeps errno ------------------------------------------------- */

#define DENIED_ERRNO EXDEV

/* madvise fails with EXDEV from here on; false if seccomp is not available. */
static int deny_madvise(void)
{
    struct sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_madvise, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (DENIED_ERRNO & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {sizeof code / sizeof code[0], code};
    return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 &&
           prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0;
}

/* Two 3 MiB blocks under a pinned top: freeing the first starts a purge
 * pass, which spares it; realloc(second, 0) frees the second with nothing
 * allocated since, and that pass purges both with madvise.  Exit status:
 * 0 errno kept, 1 errno changed, 2 no madvise happened inside realloc,
 * 77 no seccomp. */
static void realloc_zero_scenario(int deny)
{
    void *a = memalloc_malloc(3 * MiB), *b = memalloc_malloc(3 * MiB);
    void *pin = memalloc_malloc(256 * KiB);
    if (!a || !b || !pin)
        _exit(5);
    memalloc_free(a);
    if (deny && !deny_madvise())
        _exit(77);
    size_t before = stats().released_madvise;
    errno = EILSEQ;
    void *r = memalloc_realloc(b, 0);
    int e = errno;
    size_t after = stats().released_madvise;
    if (r != NULL)
        _exit(6);
    if (!deny)
        _exit(after > before ? 0 : 2);
    if (e != EILSEQ)
        fprintf(stderr, "realloc(p, 0) changed errno to %d (%s)\n", e, strerror(e));
    _exit(e == EILSEQ ? 0 : 1);
}

static int scenario_status(int deny)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0)
        realloc_zero_scenario(deny);
    int st = pid > 0 ? wait_child(pid) : -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void test_realloc_zero_errno(void)
{
    /* The plain case: nothing inside fails. */
    void *p = memalloc_malloc(100);
    errno = ERANGE;
    CHECK(memalloc_realloc(p, 0) == NULL && errno == ERANGE, "realloc(small, 0): errno %d", errno);
    p = memalloc_malloc(300 * KiB);
    errno = ERANGE;
    CHECK(memalloc_realloc(p, 0) == NULL && errno == ERANGE, "realloc(large, 0): errno %d", errno);

    /* A failing madvise inside the free. */
    if (SANITIZED || UNDER_VALGRIND())
        return;
    int calib = scenario_status(0);
    if (calib != 0) {
        fprintf(stderr, "test_glibc: note: realloc(p, 0) ran no madvise (status %d); the "
                "failing-madvise case is not exercised\n", calib);
        CHECK(calib == 2, "realloc(p, 0) scenario without a filter: status %d", calib);
        return;
    }
    int st = scenario_status(1);
    if (st == 77) {
        fprintf(stderr, "test_glibc: note: no seccomp; the failing-madvise case is skipped\n");
        return;
    }
    CHECK(st == 0, "realloc(p, 0) whose free saw madvise fail: status %d (1: errno changed)", st);
}

/* ---- 6. malloc_info --------------------------------------------------------------- */

/* A minimal XML check: tags balance, attributes are name="value", only
 * white space between tags.  Collects what the test compares. */
struct info {
    int ok, heaps, sizes, malloc_version;
    size_t heap_current, heap_max, top_current, sum_total, sum_count;
    size_t fast_n, fast_size, rest_n, rest_size, mmap_n;
    int sizes_sorted, sizes_consistent, has_1024;
};

static const char *attr(const char *tag, const char *name, char *val, size_t cap)
{
    char key[32];
    snprintf(key, sizeof key, " %s=\"", name);
    const char *s = strstr(tag, key);
    if (!s)
        return NULL;
    s += strlen(key);
    const char *e = strchr(s, '"');
    if (!e || (size_t)(e - s) >= cap)
        return NULL;
    memcpy(val, s, (size_t)(e - s));
    val[e - s] = '\0';
    return val;
}

static size_t num_attr(const char *tag, const char *name, int *ok)
{
    char v[32];
    if (!attr(tag, name, v, sizeof v) || !v[0] || strspn(v, "0123456789") != strlen(v)) {
        *ok = 0;
        return 0;
    }
    return strtoull(v, NULL, 10);
}

static int attrs_well_formed(const char *s)
{
    /* s: after the name, up to but excluding ">" or "/>". */
    while (*s) {
        if (*s != ' ')
            return 0;
        while (*s == ' ')
            s++;
        if (!*s)
            return 1;
        size_t n = strspn(s, "abcdefghijklmnopqrstuvwxyz");
        if (n == 0 || s[n] != '=' || s[n + 1] != '"')
            return 0;
        const char *e = strchr(s + n + 2, '"');
        if (!e || memchr(s + n + 2, '<', (size_t)(e - s - n - 2)))
            return 0;
        s = e + 1;
    }
    return 1;
}

static struct info parse_info(const char *xml)
{
    struct info in;
    memset(&in, 0, sizeof in);
    in.ok = 1;
    in.sizes_sorted = in.sizes_consistent = 1;
    char stack[8][16];
    int depth = 0, roots = 0;
    size_t last_size = 0;
    const char *s = xml;
    while (*s && in.ok) {
        if (*s != '<') {
            if (*s != ' ' && *s != '\n')
                in.ok = 0;
            s++;
            continue;
        }
        const char *e = strchr(s, '>');
        if (!e || (size_t)(e - s) > 200) {
            in.ok = 0;
            break;
        }
        char tag[256];
        memcpy(tag, s + 1, (size_t)(e - s - 1));
        tag[e - s - 1] = '\0';
        s = e + 1;
        int closing = tag[0] == '/';
        size_t tl = strlen(tag);
        int empty = tl > 0 && tag[tl - 1] == '/';
        if (empty)
            tag[--tl] = '\0';
        const char *name = tag + closing;
        size_t nl = strspn(name, "abcdefghijklmnopqrstuvwxyz");
        if (nl == 0 || nl >= 16 || (closing && (empty || name[nl])) ||
            !attrs_well_formed(name + nl)) {
            in.ok = 0;
            break;
        }
        char nm[16];
        memcpy(nm, name, nl);
        nm[nl] = '\0';
        if (closing) {
            if (depth == 0 || strcmp(stack[depth - 1], nm) != 0)
                in.ok = 0;
            else
                depth--;
            continue;
        }
        if (depth == 0)
            roots++;
        const char *parent = depth ? stack[depth - 1] : "";
        char v[32];
        if (!strcmp(nm, "malloc") && depth == 0) {
            in.malloc_version = attr(tag, "version", v, sizeof v) && !strcmp(v, "1");
        } else if (!strcmp(nm, "heap")) {
            in.heaps++;
        } else if (!strcmp(nm, "size") && !strcmp(parent, "sizes")) {
            int ok = 1;
            size_t from = num_attr(tag, "from", &ok), to = num_attr(tag, "to", &ok);
            size_t total = num_attr(tag, "total", &ok), count = num_attr(tag, "count", &ok);
            in.sizes++;
            if (!ok || from != to || count == 0 || total != from * count)
                in.sizes_consistent = 0;
            if (from <= last_size)
                in.sizes_sorted = 0;
            last_size = from;
            in.sum_total += total;
            in.sum_count += count;
            in.has_1024 |= from == 1024;
        } else if (!strcmp(nm, "system") && attr(tag, "type", v, sizeof v)) {
            int ok = 1;
            size_t size = num_attr(tag, "size", &ok);
            in.ok &= ok;
            if (!strcmp(parent, "heap") && !strcmp(v, "current"))
                in.heap_current = size;
            if (!strcmp(parent, "heap") && !strcmp(v, "max"))
                in.heap_max = size;
            if (!strcmp(parent, "malloc") && !strcmp(v, "current"))
                in.top_current = size;
        } else if (!strcmp(nm, "total") && !strcmp(parent, "heap") &&
                   attr(tag, "type", v, sizeof v)) {
            int ok = 1;
            size_t count = num_attr(tag, "count", &ok), size = num_attr(tag, "size", &ok);
            in.ok &= ok;
            if (!strcmp(v, "fast")) {
                in.fast_n = count;
                in.fast_size = size;
            } else if (!strcmp(v, "rest")) {
                in.rest_n = count;
                in.rest_size = size;
            }
        } else if (!strcmp(nm, "total") && !strcmp(parent, "malloc") &&
                   attr(tag, "type", v, sizeof v) && !strcmp(v, "mmap")) {
            in.mmap_n = 1;
        }
        if (!empty) {
            if (depth == 8)
                in.ok = 0;
            else
                strcpy(stack[depth++], nm);
        }
    }
    if (depth != 0 || roots != 1)
        in.ok = 0;
    return in;
}

static char *slurp(FILE *f, size_t *len)
{
    fflush(f);
    long n = ftell(f);
    char *buf = xcalloc(1, n > 0 ? (size_t)n + 1 : 1);
    rewind(f);
    *len = n > 0 ? fread(buf, 1, (size_t)n, f) : 0;
    buf[*len] = '\0';
    return buf;
}

/* python3's own XML parser agrees it is well-formed and finds the heap's
 * size; -1 when there is no python3. */
static long long python_heap_size(const char *xml)
{
    if (system("command -v python3 >/dev/null 2>&1") != 0)
        return -1;
    char path[] = "/tmp/memalloc-info-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0)
        return -1;
    size_t len = strlen(xml);
    if (write(fd, xml, len) != (ssize_t)len) {
        close(fd);
        unlink(path);
        return -1;
    }
    close(fd);
    char cmd[512];
    snprintf(cmd, sizeof cmd,
             "python3 -c 'import sys, xml.etree.ElementTree as E\n"
             "r = E.parse(sys.argv[1]).getroot()\n"
             "assert r.tag == \"malloc\" and r.get(\"version\") == \"1\"\n"
             "print(r.find(\"heap\").find(\"system[@type=\\\"current\\\"]\").get(\"size\"))' %s",
             path);
    FILE *p = popen(cmd, "r");
    long long v = -2;
    if (p) {
        if (fscanf(p, "%lld", &v) != 1)
            v = -2;
        if (pclose(p) != 0)
            v = -2;
    }
    unlink(path);
    return v;
}

/* A FILE whose every write allocates and frees through memalloc and reads
 * its statistics: it deadlocks (and the alarm fires) if malloc_info calls
 * stdio with any allocator lock held. */
static ssize_t busy_write(void *cookie, const char *buf, size_t n)
{
    (void)cookie, (void)buf;
    void *a = memalloc_malloc(100), *b = memalloc_malloc(300 * KiB);
    memalloc_free(a);
    memalloc_free(b);
    struct memalloc_stats st;
    memalloc_get_stats(&st, sizeof st);
    return (ssize_t)n;
}

static void info_lock_child(void)
{
    alarm(10);
    cookie_io_functions_t io = {NULL, busy_write, NULL, NULL};
    FILE *f = fopencookie(NULL, "w", io);
    CHECK(f != NULL, "fopencookie");
    if (!f)
        return;
    setvbuf(f, NULL, _IONBF, 0);
    CHECK(memalloc_malloc_info(0, f) == 0, "malloc_info into an allocating FILE");
    fclose(f);
}

static void test_malloc_info(void)
{
    errno = EDOM;
    CHECK(memalloc_malloc_info(1, stdout) == EINVAL && errno == EDOM,
          "malloc_info(1, fp) must return EINVAL and leave errno (glibc)");
    CHECK(memalloc_malloc_info(-1, stdout) == EINVAL, "malloc_info(-1, fp) != EINVAL");

    void *small[40], *big = memalloc_malloc(400 * KiB);
    for (int i = 0; i < 40; i++)
        small[i] = memalloc_malloc(i < 20 ? 1000 : 40);
    for (int i = 0; i < 40; i += 2)
        memalloc_free(small[i]);

    FILE *f = tmpfile();
    CHECK(f != NULL, "tmpfile");
    if (!f)
        return;
    CHECK(memalloc_malloc_info(0, f) == 0, "malloc_info(0, fp) != 0");
    struct memalloc_stats st = stats();
    size_t len;
    char *xml = slurp(f, &len);
    fclose(f);
    struct info in = parse_info(xml);
    CHECK(in.ok, "malloc_info output is not well-formed XML:\n%s", xml);
    CHECK(in.malloc_version, "no <malloc version=\"1\"> root");
    CHECK(in.heaps == 1, "%d <heap> elements, expected 1", in.heaps);
    CHECK(in.heap_current == st.heap_bytes, "<heap>'s system current %zu != heap_bytes %zu",
          in.heap_current, st.heap_bytes);
    CHECK(in.top_current == st.heap_bytes, "total system current %zu != heap_bytes %zu",
          in.top_current, st.heap_bytes);
    CHECK(in.heap_max == st.heap_peak, "<heap>'s system max %zu != heap_peak %zu", in.heap_max,
          st.heap_peak);
    CHECK(in.sizes > 0 && in.sizes_consistent && in.sizes_sorted,
          "<sizes>: %d lines, consistent %d, sorted %d", in.sizes, in.sizes_consistent,
          in.sizes_sorted);
    CHECK(in.has_1024, "<sizes> has no line for the 1024-byte class, which has free blocks");
    CHECK(in.fast_n + in.rest_n == in.sum_count, "fast %zu + rest %zu blocks != <sizes> %zu",
          in.fast_n, in.rest_n, in.sum_count);
    CHECK(in.fast_size + in.rest_size == in.sum_total + st.free_bytes,
          "fast %zu + rest %zu bytes != <sizes> %zu + free heap %zu", in.fast_size, in.rest_size,
          in.sum_total, st.free_bytes);
    CHECK(in.fast_size == st.cached_bytes, "fast size %zu != cached_bytes %zu", in.fast_size,
          st.cached_bytes);
    CHECK(in.mmap_n == 1, "no <total type=\"mmap\"> in the totals");
    long long py = python_heap_size(xml);
    CHECK(py == -1 || py == (long long)st.heap_bytes,
          "python3's xml.etree: heap size %lld (-2: not well-formed), heap_bytes %zu", py,
          st.heap_bytes);
    free(xml);

    for (int i = 1; i < 40; i += 2)
        memalloc_free(small[i]);
    memalloc_free(big);
    in_child("malloc_info with an allocating FILE", info_lock_child);
    CHECK_HEAP("malloc_info");
}

/* ---- 7. malloc_trim(huge pad) ------------------------------------------------------ */

static void trim_huge_pad_child(void)
{
    CHECK(memalloc_mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1, "mallopt(M_TRIM_THRESHOLD, 1 GiB)");
    memalloc_malloc_trim(0);
    void *p = memalloc_malloc(2 * MiB);
    CHECK(p != NULL, "malloc(2 MiB)");
    memalloc_free(p);
    struct memalloc_stats s0 = stats();
    const size_t pads[] = {SIZE_MAX, SIZE_MAX - 1, SIZE_MAX - 65534, SIZE_MAX / 2, 3 * MiB};
    for (size_t i = 0; i < sizeof pads / sizeof pads[0]; i++) {
        memalloc_malloc_trim(pads[i]);
        struct memalloc_stats s1 = stats();
        CHECK(s1.heap_bytes == s0.heap_bytes && s1.released_sbrk == s0.released_sbrk,
              "malloc_trim(%#zx) shrank the heap from %zu to %zu bytes", pads[i], s0.heap_bytes,
              s1.heap_bytes);
    }
    memalloc_malloc_trim(0);
    CHECK(stats().released_sbrk >= s0.released_sbrk + 2 * MiB, "malloc_trim(0) gave back %zu bytes",
          stats().released_sbrk - s0.released_sbrk);
    CHECK_HEAP("malloc_trim huge pad");
}

int main(void)
{
    /* glibc's malloc (the C library's, which this test also uses) takes its
     * piece of the break first, so that memalloc's heap stays on top. */
    free(malloc(1));
    in_child("mallopt(M_TRIM_THRESHOLD, -1)", trim_disabled_child);
    in_child("malloc_trim(huge pad)", trim_huge_pad_child);
    test_huge_alignments();
    test_posix_memalign_errno();
    test_cancellation();
    test_realloc_zero_errno();
    test_malloc_info();
    CHECK_HEAP("end");
    return check_report("test_glibc");
}
