/*
 * test_background.c - memory back from an idle program (src/purge.c).
 * Purge passes run on allocator calls, so a program that frees and then
 * goes quiet keeps what the last pass spared; MEMALLOC_BACKGROUND=1 starts
 * a thread, at the first free that could need it, that applies the delay
 * while the program sleeps.  The test runs itself with
 * MEMALLOC_PURGE_DELAY=200:
 *   - with the thread: no thread before the first free, one after;
 *     about 1 MiB of blocks that the program keeps, then 96 MiB more (most
 *     of them small, some large) are written and freed in random order
 *     while the program keeps allocating (so that every pass spares what
 *     it freed), then the program sleeps: within twice the delay its resident memory is at
 *     most what it had before plus what it still holds plus 8 MiB (more
 *     with pages above 16 KiB, which pin more around each block);
 *   - in a fork child of that process, which has no thread until its own
 *     first free starts one, the same again: its thread gives back what
 *     the passes spared (its resident memory also counts pages shared
 *     with the parent, so the bound is not checked there);
 *   - without the thread (MEMALLOC_BACKGROUND=0, the default) the same
 *     program keeps what the passes spared, and no thread ever starts: the
 *     scenario needs it.
 * Each run also checks memalloc's own count of what it purged while the
 * program slept: at least 32 MiB with the thread, nothing without.
 * Scheduling on a loaded machine is given a second interval of grace
 * before a check fails.  Not under valgrind (its break holds 8 MiB); no
 * fork child under qemu-user, which cannot start a thread there.
 */
#define _GNU_SOURCE
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "memalloc.h"
#include "check.h"

#define DELAY_MS 200

static size_t rss_bytes(void)
{
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
            resident = 0;
        fclose(f);
    }
    return (size_t)resident * (size_t)sysconf(_SC_PAGESIZE);
}

static int threads_now(void)
{
    char line[256];
    int n = -1;
    FILE *f = fopen("/proc/self/status", "r");
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "Threads: %d", &n) == 1)
            break;
    if (f)
        fclose(f);
    return n;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

/* Blocks of 16..2015 bytes, or one in a thousand of 256 KiB. */
static size_t some_size(uint64_t *rng)
{
    return rng_next(rng) % 1000 == 0 ? 256 * KiB : 16 + rng_next(rng) % 2000;
}

/* Keep 1024 blocks (what the program goes on holding), fill 96 MiB more,
 * free all of that in random order with an allocation every 64 frees, go
 * idle.  Returns the bytes still held. */
static size_t churn_then_idle(void **keep, size_t *nkeep)
{
    size_t total = 96 * MiB, n = 0, cap = 400000, held = 0;
    void **blk = xcalloc(cap, sizeof *blk);
    size_t *size = xcalloc(cap, sizeof *size);
    uint64_t rng = 0x1234567;
    for (*nkeep = 0; *nkeep < 1024; (*nkeep)++) {
        size_t s = some_size(&rng);
        keep[*nkeep] = memalloc_malloc(s);
        CHECK(keep[*nkeep] != NULL, "malloc(%zu) failed", s);
        if (!keep[*nkeep])
            break;
        memset(keep[*nkeep], 0x5a, s);
        held += s;
    }
    for (size_t bytes = 0; bytes < total && n < cap; n++) {
        size_t s = some_size(&rng);
        blk[n] = memalloc_malloc(s);
        CHECK(blk[n] != NULL, "malloc(%zu) failed", s);
        if (!blk[n])
            break;
        memset(blk[n], 0x5a, s);
        size[n] = s;
        bytes += s;
    }
    for (size_t i = n; i-- > 1;) {          /* shuffle */
        size_t j = rng_next(&rng) % (i + 1);
        void *t = blk[i];
        blk[i] = blk[j];
        blk[j] = t;
        size_t u = size[i];
        size[i] = size[j];
        size[j] = u;
    }
    for (size_t i = 0; i < n; i++) {
        memalloc_free(blk[i]);
        if (i % 64 == 1) {                  /* keeps allocating from the pools, */
            void *a = memalloc_malloc(40 * KiB);    /* past what the 40 KiB bin */
            void *b = memalloc_malloc(40 * KiB);    /* holds: passes spare */
            memalloc_free(a);
            memalloc_free(b);
        }
    }
    free(blk);
    free(size);
    return held;
}

/* Resident memory after idling twice the delay, or after twice more if
 * the first look fails (a busy machine may run the thread late). */
static size_t idle_rss(size_t limit)
{
    sleep_ms(2 * DELAY_MS);
    size_t rss = rss_bytes();
    if (rss > limit) {
        sleep_ms(2 * DELAY_MS);
        rss = rss_bytes();
    }
    return rss;
}

/* fork_child: the process is a fork child, whose resident memory at the
 * start counts pages it shares with its parent: there the check is that
 * its own thread gave back memory while it idled. */
static int base_threads;            /* at the start: qemu-user counts its own */

static bool emulated(void)
{
    const char *wrap = getenv("MESON_EXE_WRAPPER");
    return wrap && *wrap;
}

static size_t madvised(void)
{
    struct memalloc_stats st;
    memalloc_get_stats(&st, sizeof st);
    return st.released_madvise;
}

/* The purges while idle are counted by memalloc's statistics everywhere;
 * resident memory is checked natively only: under qemu-user it is the
 * emulator's (its code cache, host pages). */
static void scenario(const char *who, bool background, bool fork_child)
{
    void *keep[1024];
    size_t nkeep, before = rss_bytes();
    int threads0 = threads_now();
    size_t held = churn_then_idle(keep, &nkeep);
    size_t busy = rss_bytes(), madv0 = madvised();
    /* Every block still held or cached pins its page: pages above 16 KiB
     * (64 KiB on some aarch64 kernels) pin proportionally more. */
    size_t page = page_in_force(), slack = 8 * MiB;
    if (page > 16 * KiB)
        slack = slack / (16 * KiB) * page;
    size_t limit = before + held + slack;
    size_t rss = idle_rss(emulated() ? 0 : limit);
    size_t idle_purged = madvised() - madv0;
    bool rss_ok = !emulated();
    fprintf(stderr, "%s: before %zu KiB, after the frees %zu KiB, idle %zu KiB (%zu KiB purged "
            "while idle); holds %zu KiB; threads %d -> %d\n", who, before >> 10, busy >> 10,
            rss >> 10, idle_purged >> 10, held >> 10, threads0, threads_now());
    if (background) {
        CHECK(idle_purged >= 32 * MiB, "%s: only %zu KiB purged while idle", who,
              idle_purged >> 10);
        CHECK(threads_now() == (fork_child ? threads0 : base_threads) + 1,
              "%s: %d threads, had %d", who, threads_now(), threads0);
    } else {
        CHECK(idle_purged == 0, "%s: %zu KiB purged while idle without the thread", who,
              idle_purged >> 10);
        CHECK(threads_now() == threads0, "%s: a thread started without MEMALLOC_BACKGROUND",
              who);
    }
    if (rss_ok && fork_child)
        CHECK(rss + MiB <= busy, "%s: idle for twice the delay, resident %zu KiB, was %zu KiB "
              "after the frees", who, rss >> 10, busy >> 10);
    else if (rss_ok && background)
        CHECK(rss <= limit, "%s: idle for twice the delay, resident %zu KiB, more than %zu KiB "
              "before + %zu KiB held + %zu MiB", who, rss >> 10, before >> 10, held >> 10,
              slack >> 20);
    else if (rss_ok)
        CHECK(rss > limit, "%s: without the background thread, resident %zu KiB is already "
              "within %zu KiB: the scenario does not need the thread", who, rss >> 10,
              limit >> 10);
    for (size_t i = 0; i < nkeep; i++)
        memalloc_free(keep[i]);
}

int main(int argc, char **argv)
{
    (void)argc;
    if (UNDER_VALGRIND())
        return 77;
    const char *bg = getenv("MEMALLOC_BACKGROUND");
    if (!bg) {                              /* the options are read at load */
        setenv("MEMALLOC_PURGE_DELAY", "200", 1);
        unsetenv("MALLOC_PERTURB_");
        for (int with = 1; with >= 0; with--) {
            setenv("MEMALLOC_BACKGROUND", with ? "1" : "0", 1);
            fflush(NULL);
            pid_t pid = fork();
            if (pid == 0) {
                exec_self("/proc/self/exe", argv, NULL);
                _exit(127);
            }
            int st = wait_child(pid);
            CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the run with MEMALLOC_BACKGROUND=%d "
                  "%s %d", with, CHILD_HOW(st));
        }
        return check_report(__FILE__);
    }
    bool background = strcmp(bg, "1") == 0;
    base_threads = threads_now();
    scenario(background ? "background" : "no thread", background, false);
    /* qemu-user cannot start a thread in the fork child of a threaded
     * guest (it asserts in its vCPU set-up): no fork under emulation. */
    if (background && !emulated()) {
        fflush(NULL);
        pid_t pid = fork();
        if (pid == 0) {
            CHECK(threads_now() == 1, "the fork child has %d threads", threads_now());
            base_threads = 1;
            scenario("fork child", true, true);
            _exit(check_report("fork child") == 0 ? 0 : 1);
        }
        int st = wait_child(pid);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the fork child %s %d", CHILD_HOW(st));
    }
    return check_report(__FILE__);
}
