/*
 * test_preload_api.c - the drop-in surface as a program sees it.  Not
 * linked with memalloc: the test table runs it with LD_PRELOAD of
 * libmemalloc.so (and builds it with -fno-builtin, so every call below
 * really goes through the dynamic symbol).
 *
 * Checks: every glibc malloc entry point resolves into libmemalloc.so;
 * malloc works before any constructor (.preinit_array); pointers that libc
 * allocates internally (strdup, getline, asprintf, open_memstream, realpath,
 * getcwd, scandir, glob, regcomp, fopen, opendir, threads, dlopen) can be
 * freed/realloc'ed and are memalloc's; glibc's corner cases (malloc(0)
 * unique, realloc(NULL, 0) non-NULL, realloc(p, 0) frees, 16-byte
 * alignment, posix_memalign/memalign/valloc/pvalloc rules, errno on
 * failure, free preserving errno); malloc_usable_size, malloc_trim,
 * mallopt, mallinfo2, malloc_stats and malloc_info report memalloc's own
 * figures.
 * Exit 0 on success, 1 on any failed check (one line each); running
 * without libmemalloc.so preloaded is a failure, since the table always
 * preloads it.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <malloc.h>
#include <pthread.h>
#include <regex.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

static int (*mem_check)(void);

/* ---- before any constructor --------------------------------------------- */

static char *pre_block;
static char *pre_dup;
static void pre_init(int argc, char **argv, char **envp)
{
    (void)argc, (void)argv, (void)envp;
    pre_block = malloc(1000);
    if (pre_block)
        memset(pre_block, 0x5a, 1000);
    pre_dup = strdup("preinit");
}
/* Runs before the constructors of every shared object, memalloc's included. */
__attribute__((section(".preinit_array"), used)) static void (*const pre_init_p)(int, char **,
                                                                                  char **) = pre_init;

/* ---- helpers ---------------------------------------------------------------- */

/* p's usable size through memalloc: aborts ("invalid pointer") if p is not
 * memalloc's, so calling it also proves where p came from. */
static void owned(const void *p, size_t atleast, const char *what)
{
    CHECK(p != NULL, "%s returned NULL", what);
    if (!p)
        return;
    CHECK(((uintptr_t)p & 15) == 0, "%s: %p is not 16-byte aligned", what, p);
    size_t u = malloc_usable_size((void *)p);
    CHECK(u >= atleast, "%s: malloc_usable_size %zu < %zu", what, u, atleast);
}

static void check_resolution(void)
{
    void *self = dlsym(RTLD_DEFAULT, "memalloc_check");
    if (!self) {
        fprintf(stderr, "FAIL: memalloc_check is not in the process: is libmemalloc.so "
                "preloaded? (LD_PRELOAD=%s)\n", getenv("LD_PRELOAD") ? getenv("LD_PRELOAD") : "");
        exit(1);
    }
    mem_check = (int (*)(void))self;
    Dl_info lib;
    CHECK(dladdr(self, &lib) != 0, "dladdr(memalloc_check) failed");
    static const char *const names[] = {
        "malloc", "free", "calloc", "realloc", "reallocarray", "posix_memalign",
        "aligned_alloc", "memalign", "valloc", "pvalloc", "malloc_usable_size",
        "malloc_trim", "mallopt", "mallinfo", "mallinfo2", "malloc_stats", "malloc_info", "cfree",
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        void *f = dlsym(RTLD_DEFAULT, names[i]);
        Dl_info info;
        CHECK(f && dladdr(f, &info) && info.dli_fbase == lib.dli_fbase,
              "%s does not resolve to memalloc (%s)", names[i],
              f && dladdr(f, &info) ? info.dli_fname : "not found");
    }
    CHECK(mem_check() == 0, "memalloc_check() != 0 at start");
}

/* ---- glibc semantics ------------------------------------------------------------ */

static volatile size_t huge = SIZE_MAX;
static void *(*volatile malloc_v)(size_t) = malloc;
static void *(*volatile calloc_v)(size_t, size_t) = calloc;
static void *(*volatile realloc_v)(void *, size_t) = realloc;
static void *(*volatile reallocarray_v)(void *, size_t, size_t) = reallocarray;

static void check_semantics(void)
{
    /* malloc(0): unique, non-NULL, freeable */
    void *z1 = malloc(0), *z2 = malloc(0);
    CHECK(z1 && z2 && z1 != z2, "malloc(0) must give unique non-NULL pointers (%p %p)", z1, z2);
    free(z1);
    free(z2);

    void *r = realloc(NULL, 0);
    CHECK(r != NULL, "realloc(NULL, 0) returned NULL");
    free(r);

    char *p = malloc(100);
    memset(p, 1, 100);
    CHECK(realloc_v(p, 0) == NULL, "realloc(p, 0) must free p and return NULL (glibc)");

    for (size_t n = 1; n <= 4096; n = n < 64 ? n + 1 : n * 2) {
        void *q = malloc(n);
        CHECK(q && ((uintptr_t)q & 15) == 0, "malloc(%zu) = %p not 16-byte aligned", n, q);
        free(q);
    }

    /* errno; the sizes and functions go through volatiles so that the
     * compiler neither warns about nor folds the impossible requests */
    errno = 0;
    CHECK(malloc_v(huge) == NULL && errno == ENOMEM, "malloc(SIZE_MAX): NULL/ENOMEM expected");
    errno = 0;
    CHECK(malloc_v(huge / 2) == NULL && errno == ENOMEM, "malloc(PTRDIFF_MAX): NULL/ENOMEM");
    errno = 0;
    CHECK(calloc_v(huge / 2, 3) == NULL && errno == ENOMEM, "calloc overflow: NULL/ENOMEM");
    char *keep = malloc(32);
    strcpy(keep, "still here");
    errno = 0;
    CHECK(reallocarray_v(keep, huge / 2, 3) == NULL && errno == ENOMEM,
          "reallocarray overflow: NULL/ENOMEM");
    CHECK(strcmp(keep, "still here") == 0, "reallocarray failure changed the block");
    errno = 0;
    CHECK(realloc_v(keep, huge - 4096) == NULL && errno == ENOMEM, "realloc huge: NULL/ENOMEM");
    CHECK(strcmp(keep, "still here") == 0, "failed realloc changed the block");
    errno = 1234;
    free(keep);
    CHECK(errno == 1234, "free changed errno to %d", errno);
    errno = 1234;
    free(malloc(300000));
    CHECK(errno == 1234, "malloc+free of a large block changed errno to %d", errno);

    /* calloc zeroes reused memory */
    for (size_t n = 1000; n <= 1 << 20; n *= 32) {
        unsigned char *d = malloc(n);
        memset(d, 0xab, n);
        free(d);
        unsigned char *c = calloc(1, n);
        size_t bad = n;
        for (size_t i = 0; c && i < n; i++)
            if (c[i]) {
                bad = i;
                break;
            }
        CHECK(c && bad == n, "calloc(1, %zu) byte %zu not zero", n, bad);
        free(c);
    }

    /* aligned allocation */
    void *m = (void *)0x1;
    CHECK(posix_memalign(&m, 3, 16) == EINVAL && m == (void *)0x1,
          "posix_memalign(align 3) must return EINVAL and leave *memptr");
    CHECK(posix_memalign(&m, sizeof(void *) / 2, 16) == EINVAL && m == (void *)0x1,
          "posix_memalign(align 4) must return EINVAL");
    CHECK(posix_memalign(&m, 64, huge - 100) == ENOMEM && m == (void *)0x1,
          "posix_memalign(huge) must return ENOMEM and leave *memptr");
    for (size_t a = 8; a <= 1 << 20; a *= 4) {
        void *q = NULL;
        CHECK(posix_memalign(&q, a, 100) == 0 && q && ((uintptr_t)q % a) == 0,
              "posix_memalign(%zu) = %p", a, q);
        owned(q, 100, "posix_memalign");
        free(q);
        q = aligned_alloc(a, a * 2);
        CHECK(q && ((uintptr_t)q % a) == 0, "aligned_alloc(%zu) = %p", a, q);
        free(q);
    }
    volatile size_t odd_align = 24;     /* not a constant: clang warns on one */
    void *ma = memalign(odd_align, 100);    /* rounded up to 32 */
    CHECK(ma && ((uintptr_t)ma % 32) == 0, "memalign(24) = %p not 32-aligned", ma);
    free(ma);
    long pg = sysconf(_SC_PAGESIZE);
    void *v = valloc(1);
    CHECK(v && ((uintptr_t)v % (uintptr_t)pg) == 0, "valloc(1) = %p not page aligned", v);
    free(v);
    void *pv = pvalloc(0);
    CHECK(pv && ((uintptr_t)pv % (uintptr_t)pg) == 0, "pvalloc(0) = %p not page aligned", pv);
    owned(pv, (size_t)pg, "pvalloc(0)");
    if (pv)
        memset(pv, 7, (size_t)pg);
    free(pv);
    pv = pvalloc((size_t)pg + 1);
    owned(pv, 2 * (size_t)pg, "pvalloc(page + 1)");
    if (pv)
        memset(pv, 7, 2 * (size_t)pg);
    free(pv);

    /* malloc_usable_size */
    CHECK(malloc_usable_size(NULL) == 0, "malloc_usable_size(NULL) != 0");
    char *u = malloc(100);
    size_t us = malloc_usable_size(u);
    CHECK(us >= 100, "malloc_usable_size(malloc(100)) = %zu", us);
    memset(u, 'u', us);             /* the whole usable size is ours */
    u = realloc(u, us + 5000);
    size_t i = 0;
    while (u && i < us && u[i] == 'u')
        i++;
    CHECK(u && i == us, "realloc lost the usable tail (byte %zu)", i);
    free(u);
    void (*cfree_p)(void *) = (void (*)(void *))dlsym(RTLD_DEFAULT, "cfree");
    CHECK(cfree_p != NULL, "cfree is not exported");
    if (cfree_p)
        cfree_p(malloc(10));
}

/* ---- libc's own allocations ---------------------------------------------------------- */

static int cmp_int(const void *a, const void *b)
{
    return *(const int *)a - *(const int *)b;
}

static void *thread_fn(void *arg)
{
    char *s = arg;
    char *t = malloc(4000);
    if (!t)
        return NULL;
    snprintf(t, 4000, "%s from a thread", s);
    free(s);                        /* a block of the main thread */
    return t;                       /* freed by the main thread */
}

static void check_libc_allocations(void)
{
    /* strdup & co. */
    char *s = strdup("hello");
    owned(s, 6, "strdup");
    s = realloc(s, 100000);
    CHECK(s && strcmp(s, "hello") == 0, "realloc of a strdup result lost its contents");
    free(s);
    s = strndup("abcdefgh", 3);
    owned(s, 4, "strndup");
    free(s);

    /* asprintf */
    char *a = NULL;
    CHECK(asprintf(&a, "%d-%s-%0500d", 42, "x", 7) > 0, "asprintf failed");
    owned(a, 505, "asprintf");
    a = realloc(a, 10);
    CHECK(a && strncmp(a, "42-x-", 5) == 0, "realloc of an asprintf result");
    free(a);

    /* getline on a FILE: libc grows the buffer with realloc */
    FILE *f = tmpfile();
    CHECK(f != NULL, "tmpfile failed");
    if (f) {
        for (int i = 0; i < 200; i++) {
            for (int k = 0; k < i * 37; k++)
                fputc('a' + k % 26, f);
            fputc('\n', f);
        }
        rewind(f);
        char *line = NULL;
        size_t cap = 0;
        ssize_t n;
        int lines = 0;
        while ((n = getline(&line, &cap, f)) >= 0) {
            CHECK(n == lines * 37 + 1, "getline length %zd on line %d", n, lines);
            lines++;
        }
        CHECK(lines == 200, "getline read %d lines", lines);
        owned(line, cap, "getline buffer");
        line = realloc(line, cap * 2);
        free(line);
        fclose(f);
    }

    /* open_memstream: libc reallocs, the caller frees */
    char *buf = NULL;
    size_t len = 0;
    FILE *ms = open_memstream(&buf, &len);
    CHECK(ms != NULL, "open_memstream failed");
    if (ms) {
        for (int i = 0; i < 20000; i++)
            fprintf(ms, "%d,", i);
        fclose(ms);
        owned(buf, len + 1, "open_memstream buffer");
        CHECK(len > 100000 && strncmp(buf, "0,1,2,", 6) == 0, "open_memstream content");
        free(buf);
    }

    /* realpath, getcwd */
    char *rp = realpath("/usr/../usr/./bin", NULL);
    owned(rp, 9, "realpath");
    CHECK(rp && strcmp(rp, "/usr/bin") == 0, "realpath result %s", rp ? rp : "(null)");
    free(rp);
    char *cwd = getcwd(NULL, 0);
    owned(cwd, 2, "getcwd(NULL, 0)");
    free(cwd);

    /* opendir/readdir/closedir and scandir (the caller frees the entries) */
    DIR *d = opendir("/usr/bin");
    CHECK(d != NULL, "opendir failed");
    int entries = 0;
    if (d) {
        while (readdir(d))
            entries++;
        closedir(d);
    }
    struct dirent **list = NULL;
    int n = scandir("/usr/bin", &list, NULL, alphasort);
    CHECK(n == entries, "scandir found %d entries, readdir %d", n, entries);
    for (int i = 0; i < n; i++) {
        if (i < 20)
            owned(list[i], 1, "scandir entry");
        free(list[i]);
    }
    free(list);

    /* glob */
    glob_t g;
    if (glob("/usr/lib/*", 0, NULL, &g) == 0) {
        CHECK(g.gl_pathc > 0, "glob found nothing");
        globfree(&g);
    }

    /* regex */
    regex_t re;
    CHECK(regcomp(&re, "^(a+)(b|c)*[0-9]{2,}$", REG_EXTENDED) == 0, "regcomp failed");
    CHECK(regexec(&re, "aaabcbc123", 0, NULL, 0) == 0, "regexec should match");
    regfree(&re);

    /* many FILEs */
    FILE *fs[64];
    for (int i = 0; i < 64; i++) {
        fs[i] = fopen("/dev/null", i % 2 ? "w" : "r");
        CHECK(fs[i] != NULL, "fopen /dev/null");
    }
    for (int i = 0; i < 64; i++)
        if (fs[i]) {
            if (i % 2)
                fprintf(fs[i], "%0*d\n", 5000, i);
            fclose(fs[i]);
        }

    /* qsort of a big array (glibc allocates a temporary buffer) */
    int cnt = 300000;
    int *arr = malloc(sizeof(int) * (size_t)cnt);
    for (int i = 0; i < cnt; i++)
        arr[i] = (int)((i * 7919u) % 1000003u);
    qsort(arr, (size_t)cnt, sizeof(int), cmp_int);
    int sorted = 1;
    for (int i = 1; i < cnt; i++)
        sorted &= arr[i - 1] <= arr[i];
    CHECK(sorted, "qsort result not sorted");
    free(arr);

    /* threads: TLS, stacks' bookkeeping, blocks crossing threads */
    pthread_t t[8];
    for (int i = 0; i < 8; i++)
        CHECK(pthread_create(&t[i], NULL, thread_fn, strdup("block")) == 0, "pthread_create");
    for (int i = 0; i < 8; i++) {
        void *res = NULL;
        pthread_join(t[i], &res);
        CHECK(res && strcmp(res, "block from a thread") == 0, "thread result");
        owned(res, 4000, "thread's block");
        free(res);
    }

    /* dlopen: the loader allocates with the preloaded malloc now */
    void *h = dlopen("libm.so.6", RTLD_NOW | RTLD_LOCAL);
    CHECK(h != NULL, "dlopen libm.so.6: %s", dlerror());
    if (h) {
        double (*cosp)(double) = (double (*)(double))dlsym(h, "cos");
        CHECK(cosp && cosp(0.0) == 1.0, "cos from a dlopen'ed libm");
        dlclose(h);
    }

    /* fork: the child allocates and exits cleanly */
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        char *c = malloc(500000);
        char *d = strdup("child");
        int ok = c && d && mem_check() == 0;
        free(c);
        free(d);
        _exit(ok ? 0 : 1);
    }
    int st = -1;
    CHECK(pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0,
          "forked child failed to allocate (status 0x%x)", st);
}

/* ---- the malloc.h extensions ----------------------------------------------------- */

static void check_extensions(void)
{
    struct mallinfo2 before = mallinfo2();
    char *big = malloc(4 << 20);
    memset(big, 1, 4 << 20);
    struct mallinfo2 during = mallinfo2();
    CHECK(during.uordblks >= before.uordblks + (4u << 20),
          "mallinfo2().uordblks did not grow by 4 MiB (%zu -> %zu)", before.uordblks,
          during.uordblks);
    CHECK(during.arena >= during.uordblks, "mallinfo2: arena %zu < uordblks %zu", during.arena,
          during.uordblks);
    free(big);
    struct mallinfo2 after = mallinfo2();
    CHECK(after.uordblks + (4u << 20) <= during.uordblks,
          "mallinfo2().uordblks did not drop after free (%zu -> %zu)", during.uordblks,
          after.uordblks);
    int t = malloc_trim(0);
    CHECK(t == 0 || t == 1, "malloc_trim returned %d", t);

    CHECK(mallopt(M_TRIM_THRESHOLD, 256 << 10) == 1, "mallopt(M_TRIM_THRESHOLD) rejected");
    CHECK(mallopt(M_TOP_PAD, 0) == 1, "mallopt(M_TOP_PAD) rejected");
    CHECK(mallopt(M_MMAP_THRESHOLD, 1 << 20) == 1, "mallopt(M_MMAP_THRESHOLD) rejected");
    CHECK(mallopt(-12345, 1) == 0, "mallopt(bogus) accepted");

    /* malloc_stats writes memalloc's report to stderr */
    char path[] = "/tmp/memalloc-stats-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0, "mkstemp failed");
    if (fd >= 0) {
        fflush(stderr);
        int saved = dup(2);
        dup2(fd, 2);
        malloc_stats();
        fflush(stderr);
        dup2(saved, 2);
        close(saved);
        char text[4096] = {0};
        ssize_t r = pread(fd, text, sizeof text - 1, 0);
        close(fd);
        unlink(path);
        CHECK(r > 0 && strstr(text, "memalloc statistics") != NULL,
              "malloc_stats() did not print memalloc's report");
    }

    /* malloc_info: glibc's XML with memalloc's heap.  The FILE gets a
     * buffer of our own, so that nothing allocates between the report and
     * mallinfo2. */
    FILE *f = tmpfile();
    CHECK(f != NULL, "tmpfile failed");
    if (f) {
        static char fbuf[4096], xml[64 * 1024];
        setvbuf(f, fbuf, _IOFBF, sizeof fbuf);
        CHECK(malloc_info(1, f) == EINVAL, "malloc_info(1, fp) != EINVAL");
        int r = malloc_info(0, f);
        struct mallinfo2 mi = mallinfo2();
        fflush(f);
        size_t n = (size_t)pread(fileno(f), xml, sizeof xml - 1, 0);
        xml[n < sizeof xml ? n : 0] = '\0';
        fclose(f);
        static const char cur[] = "<system type=\"current\" size=\"";
        const char *sys = strstr(xml, cur);
        size_t heap = sys ? strtoull(sys + strlen(cur), NULL, 10) : 0;
        CHECK(r == 0 && strncmp(xml, "<malloc version=\"1\">\n<heap nr=\"0\">", 32) == 0 &&
                  strstr(xml, "</malloc>\n") != NULL,
              "malloc_info(0, fp) = %d, output \"%.200s\"", r, xml);
        CHECK(heap == mi.arena && heap > 0,
              "malloc_info's heap is %zu bytes, memalloc's mallinfo2().arena %zu", heap, mi.arena);
    }
}

int main(void)
{
    check_resolution();

    CHECK(pre_block != NULL && pre_dup != NULL && strcmp(pre_dup, "preinit") == 0,
          "malloc/strdup from .preinit_array (before any constructor) failed");
    if (pre_block) {
        owned(pre_block, 1000, "malloc in .preinit_array");
        size_t i = 0;
        while (i < 1000 && (unsigned char)pre_block[i] == 0x5a)
            i++;
        CHECK(i == 1000, "the .preinit_array block changed at byte %zu", i);
    }
    free(pre_block);
    free(pre_dup);

    check_semantics();
    check_libc_allocations();
    check_extensions();

    CHECK(mem_check() == 0, "memalloc_check() != 0 at the end");
    if (check_report("test_preload_api"))
        return 1;
    printf("test_preload_api: all checks passed\n");
    return 0;
}
