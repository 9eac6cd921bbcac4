/*
 * footprint.c - does memory go back after a big structure is freed?  At
 * scale 3: 2 million blocks, mostly 8-256 bytes and one in a thousand
 * between 4 KiB and 1 MiB (about 1.4 GiB in all), each written, then all
 * freed in random order, without malloc_trim.  The free phase is that last
 * loop; the report adds what was requested and the RSS before the first
 * allocation, so "after" minus "start" is what the allocator kept.
 */
#include "wl.h"

int main(int argc, char **argv)
{
    double scale = wl_scale(argc, argv);
    size_t n = (size_t)(scale * (2000000 / 3.0));
    uint64_t r = 0xf007;
    void **p = wl_xmalloc(n * sizeof *p);
    size_t *size = wl_xmalloc(n * sizeof *size);
    double requested = 0;
    for (size_t i = 0; i < n; i++) {
        size[i] = wl_below(&r, 1000) == 0 ? 4096 + wl_below(&r, (size_t)1 << 20)
                                          : 8 + wl_below(&r, 249);
        requested += (double)size[i];
    }
    memset(p, 0xff, n * sizeof *p);     /* resident before the start mark */
    wl_mark_start(requested);
    for (size_t i = 0; i < n; i++) {
        p[i] = wl_xmalloc(size[i]);
        memset(p[i], (int)(i & 0x7f) | 1, size[i]);
    }
    for (size_t i = n - 1; i > 0; i--) {        /* Fisher-Yates */
        size_t j = wl_below(&r, i + 1);
        void *t = p[i];
        p[i] = p[j];
        p[j] = t;
    }
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++) {
        if (i == n / 2)
            wl_map();               /* WL_MAP=file.svg: the heap halfway */
        sum += ((unsigned char *)p[i])[0];
        free(p[i]);
    }
    wl_after_free();
    free(size);
    free(p);
    return wl_report("footprint", scale, sum);
}
