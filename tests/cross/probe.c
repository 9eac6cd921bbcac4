/*
 * tests/cross/probe.c - measures what the emulated aarch64 machine gives an
 * sbrk-only allocator: how far the break can grow, whether an address-space
 * reservation hinted right above the break lands there and can be traded
 * for heap (munmap its bottom slice, then sbrk into it), and the page size
 * and madvise rules the guest sees.  It prints facts; in cross builds the
 * `layout` suite runs `brk 1024` and `reserve` as tests (exit 1 when the
 * break has less than the cap, or the reservation misses its hint).
 *
 *   probe brk [CAP_MIB]   grow the break in 1 MiB steps until sbrk fails
 *                         or CAP_MIB (default 16384) is reached
 *   probe reserve         the hinted PROT_NONE reservation, munmap + sbrk
 *   probe pages           AT_PAGESZ, sysconf, madvise alignment and zeroing
 *
 * Build: aarch64-linux-gnu-gcc -O1 [-no-pie] tests/cross/probe.c -o probe
 * Run:   [QEMU_PAGESIZE=16384] qemu-aarch64 -L /usr/aarch64-linux-gnu ./probe brk
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <unistd.h>

#define MIB ((size_t)1 << 20)
#define GIB ((size_t)1 << 30)

static uintptr_t page;

static uintptr_t align_up(uintptr_t x, uintptr_t a) { return (x + a - 1) & ~(a - 1); }

/* The first mapping that starts at or above addr, from /proc/self/maps
 * (qemu-user shows the guest's own view there). */
static void print_mapping_above(const char *what, uintptr_t addr)
{
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512], best[512] = "";
    unsigned long lo, hi, best_lo = ~0ul;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "%lx-%lx", &lo, &hi) == 2 && lo >= addr && lo < best_lo) {
            best_lo = lo;
            snprintf(best, sizeof best, "%s", line);
        }
    if (f)
        fclose(f);
    if (addr == 0)
        return;
    if (best_lo == ~0ul)
        printf("%s: nothing mapped above %#lx\n", what, (unsigned long)addr);
    else
        printf("%s: %#lx above the break (%.1f MiB): %s", what, best_lo,
               (double)(best_lo - addr) / MIB, best);
}

static int probe_brk(size_t cap_mib)
{
    /* fopen's buffer comes from glibc's malloc, which moves the break:
     * let it do so before the break is read. */
    print_mapping_above("warm-up", 0);
    char *start = sbrk(0);
    printf("executable at %p, initial break %p\n", (void *)probe_brk, (void *)start);
    print_mapping_above("next mapping", (uintptr_t)start);
    size_t got = 0;
    while (got < cap_mib && sbrk((intptr_t)MIB) != (void *)-1)
        got++;
    int err = errno;
    /* Touch the last MiB: the break really is usable memory up there. */
    if (got)
        memset((char *)sbrk(0) - MIB, 1, MIB);
    if (got >= cap_mib)
        printf("heap room: at least %zu MiB (stopped at the cap)\n", got);
    else
        printf("heap room: %zu MiB (sbrk failed: %s)\n", got, strerror(err));
    sbrk(-(intptr_t)(got * MIB));
    return got >= cap_mib ? 0 : 1;      /* as a test: the cap is what is needed */
}

static int probe_reserve(void)
{
    char *brk0 = sbrk(0);
    char *hint = (char *)align_up((uintptr_t)brk0, page) + page;
    size_t len = GIB, slice = 16 * MIB;
    char *r = mmap(hint, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (r == MAP_FAILED) {
        printf("reservation: mmap failed: %s\n", strerror(errno));
        return 1;
    }
    printf("reservation: hint %p, got %p: %s\n", (void *)hint, (void *)r,
           r == hint ? "at the hint" : "ELSEWHERE");
    if (r != hint)
        return 1;

    /* With the reservation in place the break must not grow into it. */
    void *p = sbrk((intptr_t)slice);
    printf("sbrk(16 MiB) into the intact reservation: %s\n",
           p == (void *)-1 ? "refused (as it should be)" : "ALLOWED");
    int ok = p == (void *)-1;
    if (p != (void *)-1)
        sbrk(-(intptr_t)slice);

    /* Trade the bottom slice for heap, twice: the break ends one page below
     * what is left of the reservation (the kernel wants that gap). */
    for (int round = 0; round < 2; round++) {
        char *b = sbrk(0);
        char *bottom = r + round * slice;
        int u = munmap(bottom, slice);
        p = sbrk((intptr_t)slice);
        int used = p != (void *)-1;
        if (used)
            memset(p, 0xa5, slice);
        printf("round %d: munmap(%p, 16 MiB) = %d, sbrk(16 MiB) from %p: %s\n", round,
               (void *)bottom, u, (void *)b, used ? "ok, written" : strerror(errno));
        ok &= u == 0 && used;
    }
    /* What is left of the reservation still starts where it should. */
    char *rest = r + 2 * slice;
    print_mapping_above("rest of the reservation", (uintptr_t)sbrk(0));
    void *again = mmap(rest, page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    printf("a hint inside the rest is %s\n", again == rest ? "GIVEN (rest is gone?)" : "refused: rest still reserved");
    if (again != MAP_FAILED && again != rest)
        munmap(again, page);

    /* Does the break refuse to grow flush against the reservation (the
     * kernel keeps one page between brk and the next mapping)? */
    munmap(rest, slice);
    p = sbrk((intptr_t)(slice + page));
    printf("sbrk(slice + page), ending flush against the reservation: %s\n",
           p == (void *)-1 ? "refused (kernel rule: a page of gap)" : "allowed (no gap rule)");
    return ok ? 0 : 1;
}

static void try_madvise(const char *what, char *base, size_t off, size_t len)
{
    memset(base, 0x5a, 4 * 65536);
    errno = 0;
    int rc = madvise(base + off, len, MADV_DONTNEED);
    int err = errno;
    /* Which 4 KiB pieces read back as zero? */
    char zeroed[64 + 1];
    for (int i = 0; i < 64; i++)
        zeroed[i] = base[i * 4096] == 0 ? 'z' : '.';
    zeroed[64] = 0;
    printf("madvise(%s, +%#zx, %zu, DONTNEED) = %d%s%s\n  4 KiB pieces zeroed (z): %s\n",
           what, off, len, rc, rc ? " errno " : "", rc ? strerror(err) : "", zeroed);
}

static int probe_pages(void)
{
    printf("getauxval(AT_PAGESZ) = %lu, sysconf(_SC_PAGESIZE) = %ld, getpagesize() = %d\n",
           getauxval(AT_PAGESZ), sysconf(_SC_PAGESIZE), getpagesize());
    /* 256 KiB of anonymous memory aligned to 64 KiB. */
    char *raw = mmap(NULL, 8 * 65536, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *m = (char *)align_up((uintptr_t)raw, 65536);
    printf("mmap(NULL, 512 KiB) = %p (aligned to %lu)\n", (void *)raw,
           (unsigned long)((uintptr_t)raw & -(uintptr_t)raw));
    try_madvise("mmap", m, 4096, 4096);
    try_madvise("mmap", m, 16384, 4096);
    try_madvise("mmap", m, 16384, 16384);
    try_madvise("mmap", m, 65536, 65536);
    /* The heap: memalloc purges pages of sbrk memory and relies on
     * MADV_DONTNEED reading back as zeroes. */
    char *b = sbrk(0);
    char *h = (char *)align_up((uintptr_t)b, 65536);
    if (sbrk((intptr_t)(h - b) + 4 * 65536) == (void *)-1) {
        printf("sbrk failed\n");
        return 1;
    }
    try_madvise("heap", h, 4096, 4096);
    try_madvise("heap", h, 16384, 4096);
    try_madvise("heap", h, 16384, 16384);
    try_madvise("heap", h, 65536, 65536);
    return 0;
}

int main(int argc, char **argv)
{
    page = (uintptr_t)getauxval(AT_PAGESZ);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 2 && !strcmp(argv[1], "brk"))
        return probe_brk(argc >= 3 ? strtoul(argv[2], NULL, 0) : 16384);
    if (argc >= 2 && !strcmp(argv[1], "reserve"))
        return probe_reserve();
    if (argc >= 2 && !strcmp(argv[1], "pages"))
        return probe_pages();
    fprintf(stderr, "usage: probe brk [CAP_MIB] | reserve | pages\n");
    return 2;
}
