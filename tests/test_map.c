/*
 * test_map.c - memalloc_map's picture of a heap with every kind of unit in
 * it: chunks of several classes, some full and some nearly empty, large
 * blocks, free space given back by malloc_trim and free space still
 * resident, and a gap where the program moved the break itself.
 *
 *   test_map SMALL.svg BIG.svg
 *
 * writes the small heap's picture to SMALL.svg and prints its heap_bytes
 * from memalloc_get_stats (taken with no allocation since the picture);
 * then grows the heap past 1 GiB and writes BIG.svg.  tests/map_check.py
 * runs it and reads both; MEMALLOC_MAP is tested there too.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "memalloc.h"

static int map_to(const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        perror(path);
        return 1;
    }
    int rc = memalloc_map(fd);
    close(fd);
    if (rc != 0) {
        perror("memalloc_map");
        return 1;
    }
    struct memalloc_stats st;
    memalloc_get_stats(&st, sizeof st);
    printf("%s %zu\n", path, st.heap_bytes);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: test_map SMALL.svg BIG.svg\n");
        return 2;
    }
    static void *small[3][4000];
    static const size_t sizes[3] = {24, 200, 3000};
    for (int k = 0; k < 3; k++)
        for (int i = 0; i < 4000; i++) {
            small[k][i] = memalloc_malloc(sizes[k]);
            memset(small[k][i], 1, sizes[k]);
        }
    for (int i = 0; i < 4000; i++)      /* the 200-byte chunks nearly empty */
        if (i % 16)
            memalloc_free(small[1][i]);
    void *large[4];
    for (int i = 0; i < 4; i++) {
        large[i] = memalloc_malloc((size_t)(i + 1) << 20);
        memset(large[i], 2, (size_t)(i + 1) << 20);
    }
    memalloc_free(large[1]);            /* free, between two large blocks */
    memalloc_malloc_trim(0);            /* ... and given back */
    memalloc_free(large[2]);            /* free, still resident */
    /* The program's own sbrk: memalloc goes on above it. */
    if (sbrk(100000) == (void *)-1)
        perror("sbrk");
    void *above[100];
    for (int i = 0; i < 100; i++)
        above[i] = memalloc_malloc(70000);
    (void)above;
    if (map_to(argv[1]))
        return 1;

    void *huge = memalloc_malloc((size_t)1 << 30);     /* untouched: costs no memory */
    for (int i = 0; i < 2000; i++)
        { void *volatile p = memalloc_malloc(100 + (size_t)i * 7); (void)p; }
    if (!huge || map_to(argv[2]))
        return 1;
    return 0;
}
