/*
 * test_track.c - programs with one bug each in memalloc's blocks, for
 * tests/track_check.py to run under memcheck (a -Dvalgrind=true build) or
 * as an ASan program (a -Db_sanitize=address build), which must report
 * the bug and name the block:
 *   uaf       reads byte 8 of a freed 100-byte block
 *   overflow  reads the byte just past a 100-byte block
 *   leak      drops the only pointer to a 77-byte block (memcheck only)
 *   std-uaf   uaf through malloc and free, for the build linked with
 *             libmemalloc (memcheck only, told to leave memalloc's malloc
 *             in place: --soname-synonyms=somalloc=nouserintercepts)
 *   clean     uses every entry point, threads, realloc, memalloc_check,
 *             writes a block up to malloc_usable_size,
 *             the statistics and memalloc_map, and must draw no report:
 *             memalloc's own reads of its free blocks and headers are not
 *             the program's.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "memalloc.h"

static void *volatile keep;

static void *churn(void *arg)
{
    void *v[500];
    for (int round = 0; round < 20; round++) {
        for (int i = 0; i < 500; i++) {
            v[i] = memalloc_malloc((size_t)(16 + (i * 37 + round) % 3000));
            memset(v[i], i, 16);
        }
        for (int i = 0; i < 500; i += 2)
            v[i] = memalloc_realloc(v[i], (size_t)(i % 7) * 500 + 1);
        for (int i = 0; i < 500; i++)
            memalloc_free(v[i]);
    }
    return arg;
}

static int clean(void)
{
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, churn, NULL);
    churn(NULL);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    char *c = memalloc_calloc(100, 10);
    int sum = 0;
    for (int i = 0; i < 1000; i++)
        sum += c[i];
    memalloc_free(c);
    void *a = NULL;
    if (memalloc_posix_memalign(&a, 4096, 5000) != 0)
        return 1;
    memset(a, 1, 5000);
    memalloc_free(a);
    a = memalloc_aligned_alloc(64, 640);
    memset(a, 2, 640);
    memalloc_free(a);
    char *big = memalloc_malloc(600 << 10);     /* a large block (valgrind's break is small) */
    if (!big)
        return 1;
    memset(big, 3, 600 << 10);
    big = memalloc_realloc(big, 100);
    sum += big[99];
    memalloc_free(big);
    if (memalloc_malloc_usable_size(NULL) != 0 || memalloc_check() != 0)
        return 1;
    char *u = memalloc_malloc(100);     /* all of its usable size is the program's */
    size_t un = memalloc_malloc_usable_size(u);
    memset(u, 4, un);
    sum += u[un - 1];
    memalloc_free(u);
    struct memalloc_stats st;
    memalloc_get_stats(&st, sizeof st);
    memalloc_malloc_trim(0);
    int fd = open("/dev/null", O_WRONLY);
    memalloc_map(fd);
    close(fd);
    printf("clean %d %d\n", sum, st.heap_bytes > 0);
    return 0;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "clean";
    setvbuf(stdout, NULL, _IONBF, 0);   /* the block's address out before the bug */
    bool std = strcmp(mode, "std-uaf") == 0;
    if (std || strcmp(mode, "uaf") == 0) {
        /* volatile: the compiler's use-after-free warning on malloc/free */
        char *volatile p = std ? malloc(100) : memalloc_malloc(100);
        memset(p, 7, 100);
        printf("block %p\n", (void *)p);
        if (std)
            free(p);
        else
            memalloc_free(p);
        printf("read %d\n", ((volatile char *)p)[8]);
        return 0;
    }
    if (strcmp(mode, "overflow") == 0) {
        char *p = memalloc_malloc(100);
        memset(p, 7, 100);
        printf("block %p\n", (void *)p);
        printf("read %d\n", ((volatile char *)p)[100]);
        memalloc_free(p);
        return 0;
    }
    if (strcmp(mode, "leak") == 0) {
        keep = memalloc_malloc(77);
        memset(keep, 1, 77);
        keep = NULL;
        return 0;
    }
    return clean();
}
