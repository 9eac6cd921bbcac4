/*
 * test_oom.c - sbrk failing under RLIMIT_DATA (set at start to the data
 * already mapped, VmData, plus 8 MiB).  Small and large requests each
 * allocate until NULL: errno must be ENOMEM, every earlier block must still
 * hold its pattern, freeing half must make allocation work again; a failing
 * realloc leaves its block intact; failing calloc / aligned requests report
 * ENOMEM; memalloc_check() is 0 throughout and everything can be freed.
 * Not run under valgrind (real rlimits).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "memalloc.h"
#include "check.h"

#define HEADROOM (8 * MiB)

/* VmData in bytes, read without allocating. */
static size_t vm_data(void)
{
    char buf[8192];
    int fd = open("/proc/self/status", O_RDONLY);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    char *s = strstr(buf, "VmData:");
    if (!s)
        return 0;
    return (size_t)strtoull(s + 7, NULL, 10) * 1024;
}

static unsigned char pat(size_t i, size_t k) { return (unsigned char)(k * 131u + i * 7u + 1u); }

static void fill(void *p, size_t n, size_t k)
{
    unsigned char *c = p;
    for (size_t i = 0; i < n; i += 61)
        c[i] = pat(i, k);
    c[n - 1] = pat(n - 1, k);
}

static int intact(const void *p, size_t n, size_t k)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i += 61)
        if (c[i] != pat(i, k))
            return 0;
    return c[n - 1] == pat(n - 1, k);
}

/* Room for the pointers: HEADROOM / 16 is the most 16-byte blocks that fit;
 * sized for the smallest request used below. */
#define MAXP (HEADROOM / 64 + 4096)
static void *blocks[MAXP];

/* Allocate `size` until NULL; returns how many. */
static size_t exhaust(size_t size, const char *what)
{
    size_t n = 0;
    for (;;) {
        if (n == MAXP) {
            CHECK(0, "%s: %zu blocks of %zu without running out: is the limit in force?", what,
                  n, size);
            return n;
        }
        errno = 0;
        void *p = memalloc_malloc(size);
        if (!p) {
            CHECK(errno == ENOMEM, "%s: malloc(%zu) failed with errno %d, not ENOMEM", what,
                  size, errno);
            break;
        }
        fill(p, size, n);
        blocks[n++] = p;
    }
    CHECK(n > 0, "%s: not even one block of %zu fits", what, size);
    return n;
}

static void verify_all(size_t n, size_t size, const char *what, size_t step)
{
    size_t bad = 0;
    for (size_t i = 0; i < n; i += step)
        if (blocks[i] && !intact(blocks[i], size, i))
            bad++;
    CHECK(bad == 0, "%s: %zu of %zu blocks lost their contents", what, bad, n);
}

static void run_phase(size_t size, const char *what)
{
    size_t n = exhaust(size, what);
    verify_all(n, size, what, 1);
    CHECK_HEAP(what);

    /* Still out of memory: a second try fails cleanly too. */
    errno = 0;
    void *again = memalloc_malloc(size);
    if (again) {
        /* a chunk may have had room; fine, but then keep it */
        blocks[n] = again;
        fill(again, size, n);
        n++;
    } else {
        CHECK(errno == ENOMEM, "%s: repeated failure errno %d", what, errno);
    }
    errno = 0;
    void *huge = memalloc_malloc(64 * MiB);
    CHECK(huge == NULL && errno == ENOMEM, "%s: malloc(64 MiB) when full = %p errno %d", what,
          huge, errno);
    errno = 0;
    void *zc = memalloc_calloc(1, 32 * MiB);
    CHECK(zc == NULL && errno == ENOMEM, "%s: calloc(1, 32 MiB) when full = %p errno %d", what,
          zc, errno);
    errno = 0;
    void *al = memalloc_aligned_alloc(1 * MiB, 4 * MiB);
    CHECK(al == NULL && errno == ENOMEM, "%s: aligned_alloc(1 MiB, 4 MiB) when full = %p errno %d",
          what, al, errno);
    void *sentinel = (void *)0x5550, *mp = sentinel;
    int rc = memalloc_posix_memalign(&mp, 2 * MiB, 4 * MiB);
    CHECK(rc == ENOMEM && mp == sentinel, "%s: posix_memalign when full rc %d, *memptr %s", what,
          rc, mp == sentinel ? "unchanged" : "changed");
    CHECK_HEAP(what);

    /* A realloc that cannot be satisfied leaves its block alone. */
    size_t victim = n / 2;
    size_t usable = memalloc_malloc_usable_size(blocks[victim]);
    errno = 0;
    void *r = memalloc_realloc(blocks[victim], 16 * MiB);
    CHECK(r == NULL && errno == ENOMEM, "%s: realloc to 16 MiB when full = %p errno %d", what,
          r, errno);
    CHECK(intact(blocks[victim], size, victim), "%s: failed realloc corrupted its block", what);
    CHECK(memalloc_malloc_usable_size(blocks[victim]) == usable,
          "%s: failed realloc changed the usable size", what);
    /* the top block: realloc first tries to grow it in place at the break */
    errno = 0;
    r = memalloc_realloc(blocks[n - 1], size + 8 * MiB);
    CHECK(r == NULL && errno == ENOMEM, "%s: realloc of the last block = %p errno %d", what, r,
          errno);
    CHECK(intact(blocks[n - 1], size, n - 1), "%s: failed realloc of the last block corrupted it",
          what);
    CHECK_HEAP(what);

    /* Free every other block: the same requests work again. */
    size_t freed = 0;
    for (size_t i = 0; i < n; i += 2) {
        memalloc_free(blocks[i]);
        blocks[i] = NULL;
        freed++;
    }
    verify_all(n, size, what, 1);
    size_t again_ok = 0;
    for (size_t i = 0; i < n; i += 2) {
        void *p = memalloc_malloc(size);
        if (!p)
            break;
        fill(p, size, i);
        blocks[i] = p;
        again_ok++;
    }
    CHECK(again_ok >= freed - 1 && again_ok > 0,
          "%s: after freeing %zu blocks only %zu allocations of %zu succeeded", what, freed,
          again_ok, size);
    verify_all(n, size, what, 1);
    CHECK_HEAP(what);

    for (size_t i = 0; i < n; i++)
        memalloc_free(blocks[i]);
    memalloc_malloc_trim(0);
    CHECK_HEAP(what);
}

int main(void)
{
    /* Start the allocator (and glibc's stdio) before measuring. */
    void *warm = memalloc_malloc(1);
    memalloc_free(warm);
    memalloc_malloc_trim(0);
    fprintf(stderr, "%s", "");

    size_t data = vm_data();
    if (data == 0) {
        fprintf(stderr, "test_oom: cannot read VmData; skipping\n");
        return 77;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_DATA, &rl) != 0)
        return 77;
    rl.rlim_cur = data + HEADROOM;
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_cur > rl.rlim_max)
        return 77;
    if (setrlimit(RLIMIT_DATA, &rl) != 0) {
        fprintf(stderr, "test_oom: setrlimit(RLIMIT_DATA) failed; skipping\n");
        return 77;
    }
    char *brk0 = sbrk(0);

    run_phase(200, "small 200 B");
    run_phase(3000, "small 3000 B");
    run_phase(100 * KiB, "small 100 KiB");
    run_phase(256 * KiB, "large 256 KiB");
    run_phase(1 * MiB + 1000, "large 1 MiB");

    /* Mixed: small blocks fill what large requests left. */
    size_t nl = exhaust(512 * KiB, "mixed large");
    size_t ns = 0;
    for (;;) {
        if (nl + ns == MAXP)
            break;
        errno = 0;
        void *p = memalloc_malloc(64);
        if (!p) {
            CHECK(errno == ENOMEM, "mixed: small malloc failed with errno %d", errno);
            break;
        }
        fill(p, 64, nl + ns);
        blocks[nl + ns] = p;
        ns++;
    }
    for (size_t i = 0; i < nl; i++)
        CHECK(intact(blocks[i], 512 * KiB, i), "mixed: large block %zu corrupted", i);
    for (size_t i = nl; i < nl + ns; i++)
        CHECK(intact(blocks[i], 64, i), "mixed: small block %zu corrupted", i);
    CHECK_HEAP("mixed");
    for (size_t i = 0; i < nl + ns; i++)
        memalloc_free(blocks[i]);
    memalloc_malloc_trim(0);
    CHECK_HEAP("mixed, freed");
    CHECK((char *)sbrk(0) == brk0, "after everything is freed the break is %+td from the start",
          (char *)sbrk(0) - brk0);

    /* and it all works again */
    void *p = memalloc_malloc(2 * MiB);
    CHECK(p != NULL, "malloc(2 MiB) after the OOM phases");
    memalloc_free(p);
    CHECK_HEAP("end");
    return check_report("test_oom");
}
