/*
 * test_reserve.c - the address-space reservation above the heap, read from
 * /proc/self/maps: a PROT_NONE mapping that starts one page above the
 * break (the gap the kernel wants) whenever memalloc's heap is on top.
 *   - at start, and after a small growth;
 *   - after one growth of 9 GiB, more than twice the first reservation
 *     (it is extended past what the growth needed, not used up);
 *   - after that block is freed and the heap shrinks (the freed range is
 *     reserved again);
 *   - in a run under RLIMIT_AS at 8 GiB: the reservation takes at most an
 *     eighth of it, grows by no more than that at a time, and a 4 GiB mmap
 *     of the program's own still fits after the heap grew by 1.2 GiB.
 * The big block is address space: only its first and last pages are
 * touched.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include "memalloc.h"
#include "check.h"

/* The mapping that starts right above the break's gap page: its size if
 * it is PROT_NONE, 0 if there is none. */
static size_t reservation(void)
{
    size_t page = page_in_force();     /* memalloc's gap is one of its pages */
    uintptr_t brk = (uintptr_t)sbrk(0);
    uintptr_t want = ((brk + page - 1) & ~(page - 1)) + page;
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    size_t size = 0;
    while (f && fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) == 3 && lo == want &&
            strcmp(perms, "---p") == 0)
            size = hi - lo;
    }
    if (f)
        fclose(f);
    return size;
}

/* Run again (--limited) under an 8 GiB RLIMIT_AS, so that memalloc makes
 * its reservation under the limit from the start. */
static int limited(void)
{
    size_t first = reservation();
    CHECK(first > 0 && first <= (size_t)1 << 30, "with RLIMIT_AS at 8 GiB the first "
          "reservation is %zu MiB, want at most an eighth", first >> 20);
    char *b = memalloc_malloc((size_t)1200 << 20);
    CHECK(b != NULL, "malloc(1.2 GiB) under an 8 GiB RLIMIT_AS failed");
    if (b)
        b[0] = 1;
    size_t r = reservation();
    CHECK(r <= first + ((size_t)1 << 30), "with RLIMIT_AS at 8 GiB the reservation grew to "
          "%zu MiB", r >> 20);
    void *m = mmap(NULL, (size_t)4 << 30, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    CHECK(m != MAP_FAILED, "a 4 GiB mmap of the program's own did not fit under RLIMIT_AS "
          "8 GiB beside memalloc's heap and reservation (%zu MiB)", r >> 20);
    return check_report("test_reserve --limited");
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--limited") == 0)
        return limited();
    if (UNDER_VALGRIND())
        return 77;
    void *p = memalloc_malloc(100);
    CHECK(reservation() >= ((size_t)1 << 30), "no reservation of at least 1 GiB above the "
          "break at start (%zu MiB)", reservation() >> 20);
    char *big = memalloc_malloc((size_t)9 << 30);
    if (!big) {
        fprintf(stderr, "note: malloc(9 GiB) failed here (overcommit?): skipped\n");
        return 77;
    }
    big[0] = 1;
    big[((size_t)9 << 30) - 1] = 1;
    CHECK(reservation() > 0, "no reservation above the break after a 9 GiB growth");
    memalloc_free(big);
    CHECK(reservation() >= ((size_t)1 << 30), "no reservation above the break after the "
          "9 GiB block went back (%zu MiB)", reservation() >> 20);
    memalloc_free(p);

    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        struct rlimit rl;
        getrlimit(RLIMIT_AS, &rl);
        rl.rlim_cur = (rlim_t)8 << 30;
        if (setrlimit(RLIMIT_AS, &rl) != 0)
            _exit(77);
        char *args[] = {argv[0], "--limited", NULL};
        exec_self("/proc/self/exe", args, NULL);
        _exit(127);
    }
    int st = wait_child(pid);
    CHECK(WIFEXITED(st) && (WEXITSTATUS(st) == 0 || WEXITSTATUS(st) == 77),
          "the run under RLIMIT_AS: %s %d", CHILD_HOW(st));
    CHECK_HEAP("the end");
    return check_report(__FILE__);
}
