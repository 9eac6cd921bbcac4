/*
 * test_fork_pass.c - a fork child never inherits "a purge pass is running".
 * A single-threaded program that forks from a signal handler which
 * interrupted a pass may never return into that pass in the child (it may
 * siglongjmp out, or just carry on in the handler); if the child kept the
 * flag, no pass would ever run in it again and it would keep everything it
 * frees.  glibc's fork runs memalloc's handlers without taking the locks
 * when the process is single-threaded, which is that case.
 *
 * The interrupted pass is simulated: the flag is set by hand (this test
 * links memalloc's internals), then the process forks.  In the child, frees
 * in the middle of the heap, with passes due on every free, must give
 * memory back with madvise.  The parent, still "in a pass", must not run
 * one: that shows the flag is what stops passes.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internals.h"
#include "memalloc.h"
#include "check.h"

/* Free 256 KiB blocks below a pinned one; with no delay each pass purges
 * what the frees left. */
static size_t madvised_by_frees(void)
{
    struct memalloc_stats before, after;
    memalloc_get_stats(&before, sizeof before);
    void *b[8];
    for (int i = 0; i < 8; i++) {
        b[i] = memalloc_malloc(256 * KiB);
        if (b[i])
            memset(b[i], 1, 256 * KiB);
    }
    void *pin = memalloc_malloc(256 * KiB);
    for (int i = 0; i < 8; i++) {
        memalloc_free(b[i]);
        memalloc_free(memalloc_malloc(64));
    }
    memalloc_get_stats(&after, sizeof after);
    memalloc_free(pin);
    return after.released_madvise - before.released_madvise;
}

int main(void)
{
    memalloc_free(memalloc_malloc(1));          /* initialise */
    memalloc_options[OPT_PURGE_THRESHOLD] = 0;  /* a pass on every free */
    memalloc_options[OPT_PURGE_SHARE] = 0;
    memalloc_options[OPT_PURGE_DELAY] = 0;
    CHECK(madvised_by_frees() > 0, "setup: the frees gave nothing back with madvise");

    __atomic_store_n(&memalloc_pass_running, 1, __ATOMIC_RELEASE);
    pid_t pid = fork();
    if (pid == 0)
        _exit(madvised_by_frees() > 0 ? 0 : 3);
    int st = 0;
    CHECK(pid > 0 && waitpid(pid, &st, 0) == pid, "fork or wait failed");
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the fork child (%s %d) ran no purge pass: it "
          "inherited the parent's running pass", CHILD_HOW(st));
    CHECK(madvised_by_frees() == 0, "a pass ran while one was marked running");
    __atomic_store_n(&memalloc_pass_running, 0, __ATOMIC_RELEASE);
    CHECK(madvised_by_frees() > 0, "no pass ran after the flag was cleared");
    CHECK_HEAP("the end");
    return check_report(__FILE__);
}
