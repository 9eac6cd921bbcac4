/*
 * options.c - options and statistics: the one table of MEMALLOC_* settings
 * (read once from the environment), mallopt, mallinfo, malloc_stats,
 * malloc_info, malloc_trim and the report printed at exit with
 * MEMALLOC_STATS=1.
 *
 * Invariants: options are read with getenv only (it never allocates) and
 * only once the environment exists; a bad value keeps the default and, with
 * MEMALLOC_VERBOSE=1, says so in one line.  Statistics are read under the
 * locks that guard them, one lock at a time.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "memalloc.h"
#include "tcache.h"

#define EXPORT __attribute__((visibility("default")))

struct option_desc {
    const char *env;
    long def, min, max;
};

/* The whole table of settings.  MALLOC_PERTURB_ is glibc's name, honoured
 * because `meson test` and glibc users expect it to junk-fill memory. */
static const struct option_desc option_table[OPT_COUNT] = {
    [OPT_TRIM_THRESHOLD] = {"MEMALLOC_TRIM_THRESHOLD", 128 << 10, 0, PTRDIFF_MAX},
    [OPT_TOP_PAD]        = {"MEMALLOC_TOP_PAD", 0, 0, PTRDIFF_MAX},
    [OPT_STATS]          = {"MEMALLOC_STATS", 0, 0, 1},
    [OPT_VERBOSE]        = {"MEMALLOC_VERBOSE", 0, 0, 1},
    [OPT_PERTURB]        = {"MALLOC_PERTURB_", 0, 0, 255},
    [OPT_TCACHE]         = {"MEMALLOC_TCACHE", 1, 0, 1},
    [OPT_PURGE_THRESHOLD] = {"MEMALLOC_PURGE_THRESHOLD", 2 << 20, 0, PTRDIFF_MAX},
    [OPT_PURGE_LAZY]     = {"MEMALLOC_PURGE_LAZY", 0, 0, 1},
    [OPT_PURGE_SHARE]    = {"MEMALLOC_PURGE_SHARE", 16, 0, 1 << 20},
    [OPT_RETAIN_MAX]     = {"MEMALLOC_RETAIN_MAX", 32 << 20, 0, PTRDIFF_MAX},
    [OPT_PURGE_DECAY]    = {"MEMALLOC_PURGE_DECAY", 0, 0, 1 << 20},
};

/* The defaults hold from the first call, before the environment is read. */
long memalloc_options[OPT_COUNT] HIDDEN = {
    [OPT_TRIM_THRESHOLD] = 128 << 10,
    [OPT_TCACHE] = 1,
    [OPT_PURGE_THRESHOLD] = 2 << 20,
    [OPT_PURGE_SHARE] = 16,
    [OPT_RETAIN_MAX] = 32 << 20,
    [OPT_PURGE_DECAY] = 0,
};

extern char **__environ;

/* Accepts decimal with an optional k/m/g suffix. */
static bool parse_value(const char *s, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s)
        return false;
    long mul = 1;
    switch (*end) {
    case 'k': case 'K': mul = 1L << 10; end++; break;
    case 'm': case 'M': mul = 1L << 20; end++; break;
    case 'g': case 'G': mul = 1L << 30; end++; break;
    }
    if (*end != '\0' || __builtin_mul_overflow(v, mul, out))
        return false;
    return true;
}

bool memalloc_options_loaded HIDDEN;

/* The loader may call malloc before libc has set up the environment; then
 * the defaults hold until a later slow path finds the environment. */
void options_load(void)
{
    if (!__environ)
        return;
    memalloc_options_loaded = true;
    int saved = errno;
    for (int i = 0; i < OPT_COUNT; i++) {
        const struct option_desc *d = &option_table[i];
        memalloc_options[i] = d->def;
        const char *s = getenv(d->env);
        if (!s)
            continue;
        long v;
        if (parse_value(s, &v) && v >= d->min && v <= d->max) {
            memalloc_options[i] = v;
        } else if (i != OPT_PERTURB) {
            /* glibc ignores a bad MALLOC_PERTURB_ silently; ours warn. */
            message("memalloc: warning: bad value for ");
            message(d->env);
            message(", using the default\n");
        }
    }
    errno = saved;
}

/* ---- glibc's malloc.h extensions ------------------------------------------- */

EXPORT int memalloc_mallopt(int param, int value)
{
    ensure_init();
    switch (param) {
    /* As in glibc, setting either one by hand turns off the threshold that
     * follows the size of freed large blocks.  A negative threshold
     * (mallopt(3): -1) turns automatic trimming off, malloc_trim still
     * works; a negative pad is no pad.  Both return 1 for any value. */
    case M_TRIM_THRESHOLD:
        memalloc_options[OPT_TRIM_THRESHOLD] = value < 0 ? PTRDIFF_MAX : value;
        memalloc_options[OPT_RETAIN_MAX] = 0;
        return 1;
    case M_TOP_PAD:
        memalloc_options[OPT_TOP_PAD] = value < 0 ? 0 : value;
        memalloc_options[OPT_RETAIN_MAX] = 0;
        return 1;
    case M_PERTURB:
        memalloc_options[OPT_PERTURB] = value & 0xff;
        return 1;
    case M_MXFAST: case M_MMAP_THRESHOLD: case M_MMAP_MAX: case M_CHECK_ACTION:
    case M_ARENA_TEST: case M_ARENA_MAX:
        return 1;                   /* accepted; nothing here they could tune */
    default:
        return 0;
    }
}

EXPORT int memalloc_malloc_trim(size_t pad)
{
    ensure_init();
    if (tcache_current())
        tcache_flush_all(tcache_current());
    chunk_unpark_all();
    size_t before = chunk_purged_bytes();
    chunk_purge_everything();
    int released = chunk_release_spares() > 0 || chunk_purged_bytes() != before;
    released |= heap_trim(pad);
    return released;
}

/* One class as the statistics see it.  "In use" for the pool covers blocks
 * in thread caches and parked batches; the program holds the rest. */
struct class_snap {
    size_t size, pool_in_use, peak, chunks, parked, cached, program;
};

static void class_snapshot(unsigned c, struct class_snap *s)
{
    struct size_class *sc = &memalloc_classes[c];
    pthread_mutex_lock(&sc->lock);
    s->size = sc->size;
    s->pool_in_use = sc->in_use;
    s->peak = sc->peak;
    s->chunks = sc->chunks;
    s->parked = chunk_parked_blocks(c);
    pthread_mutex_unlock(&sc->lock);
    s->cached = tcache_cached_blocks(c);
    size_t held = s->parked + s->cached;
    s->program = s->pool_in_use > held ? s->pool_in_use - held : 0;
}

static size_t chunk_bytes(unsigned c)
{
    return (size_t)memalloc_classes[c].units * UNIT;
}

EXPORT void memalloc_get_stats(struct memalloc_stats *out)
{
    ensure_init();
    struct heap_stats h;
    size_t small = 0, chunks = 0, held = 0, cached = 0;
    for (unsigned c = 0; c < NUM_CLASSES; c++) {
        struct class_snap s;
        class_snapshot(c, &s);
        chunks += s.chunks;
        held += s.chunks * chunk_bytes(c);
        small += s.program * s.size;
        cached += (s.cached + s.parked) * s.size;
    }
    heap_get_stats(&h);
    out->heap_bytes = h.heap_bytes;
    out->heap_peak = h.heap_peak;
    out->small_in_use = small;
    out->large_in_use = h.large_in_use;
    out->free_bytes = h.free_bytes;
    out->released_sbrk = h.released_sbrk;
    out->chunks = chunks;
    out->large_blocks = h.large_blocks;
    out->released_madvise = h.released_madvise;
    out->small_held = held;
    out->cached_bytes = cached;
}

/* glibc's fields with memalloc's figures: arena is the heap, ordblks the
 * small-class chunks, hblks/hblkhd the large blocks, usmblks the peak heap,
 * fsmblks the free small blocks sitting in thread caches, uordblks what the
 * program holds, fordblks the rest of the heap, keepcost the free spans
 * that malloc_trim could give back now. */
EXPORT struct memalloc_mallinfo2 memalloc_mallinfo2(void)
{
    struct memalloc_stats st;
    memalloc_get_stats(&st);
    struct memalloc_mallinfo2 mi = {0};
    mi.arena = st.heap_bytes;
    mi.ordblks = st.chunks;
    mi.hblks = st.large_blocks;
    mi.hblkhd = st.large_in_use;
    mi.usmblks = st.heap_peak;
    mi.fsmblks = st.cached_bytes;
    mi.uordblks = st.small_in_use + st.large_in_use;
    mi.fordblks = st.heap_bytes > mi.uordblks ? st.heap_bytes - mi.uordblks : 0;
    mi.keepcost = st.free_bytes;
    return mi;
}

static int clamp_int(size_t v) { return v > 0x7fffffff ? 0x7fffffff : (int)v; }

EXPORT struct memalloc_mallinfo memalloc_mallinfo(void)
{
    struct memalloc_mallinfo2 m2 = memalloc_mallinfo2();
    struct memalloc_mallinfo mi = {
        clamp_int(m2.arena), clamp_int(m2.ordblks), clamp_int(m2.smblks),
        clamp_int(m2.hblks), clamp_int(m2.hblkhd), clamp_int(m2.usmblks),
        clamp_int(m2.fsmblks), clamp_int(m2.uordblks), clamp_int(m2.fordblks),
        clamp_int(m2.keepcost),
    };
    return mi;
}

/* ---- malloc_info ---------------------------------------------------------------- */

/*
 * glibc's XML with memalloc's figures, for the one heap: <sizes> has a line
 * per class with free blocks (free in its chunks, in thread caches or
 * parked), from and to both the block size; "fast" counts the blocks in
 * thread caches and parked batches, "rest" the other free blocks of the
 * classes plus the free space between large blocks (bytes only: it has no
 * block count); "system" is the heap now and at its peak, "mmap" is 0.
 * Every figure is taken first, under the locks one at a time; stdio, which
 * may call malloc, runs with no lock held.
 */
EXPORT int memalloc_malloc_info(int options, FILE *fp)
{
    if (options != 0)
        return EINVAL;              /* glibc's result, errno untouched */
    ensure_init();
    struct { size_t size, count; } free_of[NUM_CLASSES];
    size_t fast_n = 0, fast_bytes = 0, rest_n = 0, rest_bytes = 0;
    for (unsigned c = 0; c < NUM_CLASSES; c++) {
        struct class_snap s;
        class_snapshot(c, &s);
        size_t blocks = s.chunks * memalloc_classes[c].capacity;
        size_t in_chunks = blocks > s.pool_in_use ? blocks - s.pool_in_use : 0;
        free_of[c].size = s.size;
        free_of[c].count = in_chunks + s.cached + s.parked;
        fast_n += s.cached + s.parked;
        fast_bytes += (s.cached + s.parked) * s.size;
        rest_n += in_chunks;
        rest_bytes += in_chunks * s.size;
    }
    struct heap_stats h;
    heap_get_stats(&h);
    rest_bytes += h.free_bytes;

    fputs("<malloc version=\"1\">\n<heap nr=\"0\">\n<sizes>\n", fp);
    for (unsigned c = 0; c < NUM_CLASSES; c++)
        if (free_of[c].count)
            fprintf(fp, "  <size from=\"%zu\" to=\"%zu\" total=\"%zu\" count=\"%zu\"/>\n",
                    free_of[c].size, free_of[c].size, free_of[c].size * free_of[c].count,
                    free_of[c].count);
    fputs("</sizes>\n", fp);
    for (int level = 0; level < 2; level++) {
        fprintf(fp, "<total type=\"fast\" count=\"%zu\" size=\"%zu\"/>\n"
                    "<total type=\"rest\" count=\"%zu\" size=\"%zu\"/>\n",
                fast_n, fast_bytes, rest_n, rest_bytes);
        if (level == 1)
            fputs("<total type=\"mmap\" count=\"0\" size=\"0\"/>\n", fp);
        fprintf(fp, "<system type=\"current\" size=\"%zu\"/>\n"
                    "<system type=\"max\" size=\"%zu\"/>\n"
                    "<aspace type=\"total\" size=\"%zu\"/>\n"
                    "<aspace type=\"mprotect\" size=\"%zu\"/>\n",
                h.heap_bytes, h.heap_peak, h.heap_bytes, h.heap_bytes);
        fputs(level == 0 ? "</heap>\n" : "</malloc>\n", fp);
    }
    return 0;
}

/* ---- the report ---------------------------------------------------------------- */

static void line(const char *label, size_t v)
{
    char buf[96];
    size_t n = strlen(label);
    memcpy(buf, label, n);
    n += fmt_unsigned(buf + n, v);
    buf[n++] = '\n';
    buf[n] = '\0';
    message(buf);
}

static size_t put_cols(char *buf, const size_t *v, const size_t *width, int cols)
{
    size_t n = 0;
    for (int i = 0; i < cols; i++) {
        char num[24];
        size_t len = fmt_unsigned(num, v[i]);
        while (len++ < width[i])
            buf[n++] = ' ';
        n += fmt_unsigned(buf + n, v[i]);
    }
    buf[n++] = '\n';
    buf[n] = '\0';
    return n;
}

/* Per class: block size, blocks the program holds and the class's peak
 * (blocks out of the pool, caches included), chunks, the bytes those chunks
 * take against the bytes of the blocks the program holds, and the blocks
 * sitting in thread caches or parked.  Requested sizes are not recorded
 * (small blocks carry no header), so "in use KiB" counts whole blocks: the
 * rounding to a class costs at most 12.5% above 128 bytes. */
void stats_print(void)
{
    static const size_t width[8] = {5, 9, 10, 10, 8, 10, 11, 9};
    message("memalloc statistics\n"
            "class     size    in use      peak  chunks  held KiB  in use KiB   cached\n");
    size_t held = 0, used = 0, cached = 0, parked = 0, cached_bytes = 0;
    for (unsigned c = 0; c < NUM_CLASSES; c++) {
        struct class_snap s;
        class_snapshot(c, &s);
        if (s.chunks == 0 && s.peak == 0)
            continue;
        size_t v[8] = {c, s.size, s.program, s.peak, s.chunks, s.chunks * chunk_bytes(c) >> 10,
                       s.program * s.size >> 10, s.cached + s.parked};
        char buf[128];
        put_cols(buf, v, width, 8);
        message(buf);
        held += s.chunks * chunk_bytes(c);
        used += s.program * s.size;
        cached += s.cached;
        parked += s.parked;
        cached_bytes += (s.cached + s.parked) * s.size;
    }
    struct heap_stats h;
    heap_get_stats(&h);
    line("small bytes held:      ", held);
    line("small bytes in use:    ", used);
    line("thread caches:         ", tcache_count());
    line("blocks in caches:      ", cached);
    line("blocks parked:         ", parked);
    line("bytes cached + parked: ", cached_bytes);
    line("heap bytes now:        ", h.heap_bytes);
    line("heap bytes at peak:    ", h.heap_peak);
    line("large blocks in use:   ", h.large_blocks);
    line("large bytes in use:    ", h.large_in_use);
    line("free bytes in heap:    ", h.free_bytes);
    line("returned with sbrk:    ", h.released_sbrk);
    line("returned with madvise: ", h.released_madvise);
    line("segments:              ", h.segments);
}

EXPORT void memalloc_malloc_stats(void)
{
    ensure_init();
    stats_print();
}

/* Not needed for correctness, only for the report: runs at exit. */
__attribute__((destructor)) static void stats_at_exit(void)
{
    if (memalloc_initialized && option(OPT_STATS))
        stats_print();
}
