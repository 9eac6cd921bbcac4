/*
 * wl.h - what every whole-program workload shares: the scale argument, a
 * fixed-seed random generator, and the one JSON line each prints at the end
 * (wall and CPU time, peak RSS, RSS after its free phase, a checksum).
 * The workloads call plain malloc/free, so LD_PRELOAD picks the allocator.
 */
#ifndef WL_H
#define WL_H

#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static struct timespec wl_t0;
static double wl_rss_after_free_kb = -1;
static double wl_rss_start_kb = -1, wl_requested_kb = -1;

static inline uint64_t wl_rng(uint64_t *s)     /* xorshift64* */
{
    *s ^= *s >> 12; *s ^= *s << 25; *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

static inline size_t wl_below(uint64_t *s, size_t n)
{
    return (size_t)(wl_rng(s) % n);
}

/* Log-uniform in [lo, hi]: most requests small, a few large. */
static inline size_t wl_size(uint64_t *s, size_t lo, size_t hi)
{
    int lb = 63 - __builtin_clzll(lo), hb = 63 - __builtin_clzll(hi);
    size_t base = (size_t)1 << (lb + (int)wl_below(s, (size_t)(hb - lb + 1)));
    size_t n = base + wl_below(s, base);
    return n < lo ? lo : n > hi ? hi : n;
}

static inline void *wl_xmalloc(size_t n)
{
    void *p = malloc(n);
    if (!p) {
        fprintf(stderr, "out of memory (%zu bytes)\n", n);
        exit(2);
    }
    return p;
}

static inline double wl_scale(int argc, char **argv)
{
    double s = argc > 1 ? atof(argv[1]) : 1.0;
    if (!(s > 0)) {
        fprintf(stderr, "usage: %s [SCALE>0]\n", argv[0]);
        exit(2);
    }
    clock_gettime(CLOCK_MONOTONIC, &wl_t0);
    return s;
}

static inline double wl_status_kb(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double kb = 0;
    size_t n = strlen(key);
    if (!f) return 0;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, n)) { kb = atof(line + n); break; }
    fclose(f);
    return kb;
}

/* Optional: the RSS before the measured allocations start, and the bytes
 * they will request, for workloads that report footprint against both. */
static inline void wl_mark_start(double requested_bytes)
{
    wl_rss_start_kb = wl_status_kb("VmRSS:");
    wl_requested_kb = requested_bytes / 1024.0;
}

/* Call after the free phase: what the allocator kept resident.  With
 * WL_TRIM=1, after malloc_trim(0) (the allocator's best at that point);
 * with WL_IDLE_MS=N, after N ms of sleep (what it gives back while the
 * program is idle). */
static inline void wl_after_free(void)
{
    const char *trim = getenv("WL_TRIM"), *idle = getenv("WL_IDLE_MS");
    if (trim && atoi(trim))
        malloc_trim(0);
    if (idle && atoi(idle) > 0) {
        struct timespec ts = {atoi(idle) / 1000, (long)(atoi(idle) % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) != 0)
            ;
    }
    wl_rss_after_free_kb = wl_status_kb("VmRSS:");
}

/* With WL_MAP=file.svg under memalloc: a picture of the heap now
 * (memalloc_map, looked up so that the workloads still run on any
 * allocator).  README's heap picture is footprint's, halfway through its
 * free phase. */
static inline void wl_map(void)
{
    const char *path = getenv("WL_MAP");
    int (*map)(int) = path ? (int (*)(int))dlsym(RTLD_DEFAULT, "memalloc_map") : NULL;
    if (!map)
        return;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
        map(fd);
        close(fd);
    }
}

static inline int wl_report(const char *name, double scale, uint64_t checksum)
{
    struct timespec t1;
    struct rusage ru;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    getrusage(RUSAGE_SELF, &ru);
    double wall = (double)(t1.tv_sec - wl_t0.tv_sec) + (t1.tv_nsec - wl_t0.tv_nsec) * 1e-9;
    double cpu = (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec)
               + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
    if (wl_rss_after_free_kb < 0) wl_after_free();
    printf("{\"workload\": \"%s\", \"scale\": %g, \"wall_s\": %.6f, \"cpu_s\": %.6f, "
           "\"peak_rss_kb\": %.0f, \"rss_after_free_kb\": %.0f, ",
           name, scale, wall, cpu, wl_status_kb("VmHWM:"), wl_rss_after_free_kb);
    if (wl_rss_start_kb >= 0)
        printf("\"rss_start_kb\": %.0f, \"requested_kb\": %.0f, ", wl_rss_start_kb,
               wl_requested_kb);
    printf("\"checksum\": \"%016llx\"}\n", (unsigned long long)checksum);
    return fflush(stdout) == 0 ? 0 : 1;
}

#endif
