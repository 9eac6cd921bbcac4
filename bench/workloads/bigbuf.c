/*
 * bigbuf.c - big buffers, as a program reading files or images does: a
 * loop allocates a buffer of 5 to 25 MiB, zeroes it, writes one byte per
 * page into it, reads it back and frees it, with up to two such buffers
 * alive at a time.  What it measures is what the allocator does with a
 * big block (a fresh mapping each time, or memory kept and reused) and how
 * fast it hands back zeroed memory.  The free phase frees the last one.
 */
#include "wl.h"

int main(int argc, char **argv)
{
    double scale = wl_scale(argc, argv);
    long n = (long)(scale * 60);
    uint64_t r = 0xb16b, sum = 0;
    unsigned char *keep = NULL;
    size_t keep_n = 0;
    for (long i = 0; i < n; i++) {
        size_t len = ((size_t)5 << 20) + wl_below(&r, (size_t)20 << 20);
        unsigned char *p = wl_xmalloc(len);
        memset(p, 0, len);
        for (size_t off = 0; off < len; off += 4096)
            p[off] = (unsigned char)(off >> 12);
        for (size_t off = 0; off < len; off += 4096)
            sum += p[off];
        if (i % 3 == 0) {           /* one in three lives on beside the next */
            free(keep);
            keep = p;
            keep_n = len;
        } else {
            free(p);
        }
    }
    sum += keep_n;
    free(keep);
    wl_after_free();
    return wl_report("bigbuf", scale, sum);
}
