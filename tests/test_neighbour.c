/*
 * test_neighbour.c - memalloc's prefixed library next to glibc's malloc in
 * one threaded process.  Both move the break: glibc's sbrk reads and
 * updates its cached break with no lock, so two allocators growing and
 * trimming at once could be handed the same bytes, or one could shrink the
 * break under the other's blocks.  memalloc reserves the address space
 * above its heap, so glibc's sbrk fails there and glibc falls back to mmap,
 * which it is built to do.
 *
 * Each run is a fresh process (this program re-executed with --run): the
 * main thread mallocs, fills, checks and frees 100 KiB blocks with glibc
 * while a second thread does the same with 200 KiB blocks through
 * memalloc_malloc/memalloc_free.  A run passes when neither thread finds a
 * byte of its blocks changed and the process exits 0 (no crash).  100 runs.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "memalloc.h"
#include "check.h"

#define RUNS 100
#define ROUNDS 4000
#define LIVE 4

static atomic_int bad_blocks;

static void fill(unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i += 64)
        p[i] = (unsigned char)(seed + i / 64);
    p[n - 1] = (unsigned char)seed;
}

static bool intact(const unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i += 64)
        if (p[i] != (unsigned char)(seed + i / 64))
            return false;
    return p[n - 1] == (unsigned char)seed;
}

/* Keep LIVE blocks of n bytes, replacing one per round: the heap grows and
 * shrinks all the time, on both sides. */
static void churn(void *(*alloc)(size_t), void (*release)(void *), size_t n, unsigned salt)
{
    unsigned char *live[LIVE] = {0};
    unsigned seed[LIVE] = {0};
    for (unsigned r = 0; r < ROUNDS; r++) {
        unsigned k = r % LIVE;
        if (live[k]) {
            if (!intact(live[k], n, seed[k])) {
                fprintf(stderr, "%s: block %p changed\n", salt == 7 ? "memalloc" : "glibc",
                        (void *)live[k]);
                atomic_fetch_add(&bad_blocks, 1);
            }
            release(live[k]);
        }
        live[k] = alloc(n + (r % 7) * 4096);
        if (!live[k]) {
            fprintf(stderr, "%s: malloc(%zu) failed\n", salt == 7 ? "memalloc" : "glibc",
                    n + (r % 7) * 4096);
            atomic_fetch_add(&bad_blocks, 1);
            continue;
        }
        seed[k] = r * 31 + salt;
        fill(live[k], n, seed[k]);
    }
    for (unsigned k = 0; k < LIVE; k++)
        if (live[k]) {
            if (!intact(live[k], n, seed[k]))
                atomic_fetch_add(&bad_blocks, 1);
            release(live[k]);
        }
}

static void *memalloc_side(void *arg)
{
    (void)arg;
    churn(memalloc_malloc, memalloc_free, 200 * KiB, 7);
    return NULL;
}

static int one_run(void)
{
    pthread_t t;
    if (pthread_create(&t, NULL, memalloc_side, NULL) != 0)
        return 3;
    churn(malloc, free, 100 * KiB, 3);
    pthread_join(t, NULL);
    if (atomic_load(&bad_blocks)) {
        fprintf(stderr, "%d blocks changed or failed\n", atomic_load(&bad_blocks));
        return 2;
    }
    return memalloc_check() == 0 ? 0 : 4;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--run") == 0)
        return one_run();
    if (UNDER_VALGRIND())
        return 77;
    int failed = 0;
    for (int i = 0; i < RUNS; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            execl("/proc/self/exe", argv[0], "--run", (char *)NULL);
            _exit(127);
        }
        int status;
        if (pid < 0 || waitpid(pid, &status, 0) != pid) {
            CHECK(0, "could not run child %d", i);
            break;
        }
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            failed++;
            if (failed <= 3)
                CHECK(0, "run %d: %s %d", i, WIFSIGNALED(status) ? "killed by signal" : "exit",
                      WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
        }
    }
    CHECK(failed == 0, "%d of %d runs of glibc malloc beside memalloc_malloc failed", failed,
          RUNS);
    return check_report(__FILE__);
}
