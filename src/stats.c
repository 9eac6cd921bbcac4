/*
 * stats.c - statistics: memalloc_get_stats, mallinfo and mallinfo2,
 * malloc_info's XML, malloc_stats and the report printed at exit with
 * MEMALLOC_STATS=1.
 *
 * Invariants: every figure is read under the lock that guards it, one lock
 * at a time; stdio, which may call malloc, runs with no lock held.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "init.h"
#include "memalloc.h"
#include "options.h"
#include "tcache.h"
#include "track.h"

/* One class as the statistics see it.  "In use" for the pool covers blocks
 * in thread caches and parked batches; the program holds the rest. */
struct class_snap {
    size_t size, pool_in_use, peak, chunks, parked, cached, program;
    uint64_t locks, contended;
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
    s->locks = sc->locks;
    s->contended = sc->contended;
    pthread_mutex_unlock(&sc->lock);
    track_quiet_begin();            /* the caches are memalloc's memory */
    s->cached = tcache_cached_blocks(c);
    track_quiet_end();
    size_t held = s->parked + s->cached;
    s->program = s->pool_in_use > held ? s->pool_in_use - held : 0;
}

static size_t chunk_bytes(unsigned c)
{
    return (size_t)memalloc_classes[c].units * UNIT;
}

static void get_stats(struct memalloc_stats *out)
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
    h.released_madvise += chunk_purged_bytes();
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

/* The caller's structure may be older (smaller) or newer (bigger) than
 * this library's: the fields both know are filled, a newer caller's extra
 * ones zeroed, and the caller learns how much this library knows. */
EXPORT size_t memalloc_get_stats(struct memalloc_stats *out, size_t size)
{
    struct memalloc_stats s;
    get_stats(&s);
    if (size > sizeof s) {
        memset((char *)out + sizeof s, 0, size - sizeof s);
        size = sizeof s;
    }
    memcpy(out, &s, size);
    return sizeof s;
}

/* memalloc_get_stats as version 0.1 had it, without the size, for the
 * programs linked against that version (an unversioned reference binds to
 * the oldest version): its structure is this one's first eleven fields,
 * which is all of this one so far. */
void stats_get_v0_1(struct memalloc_stats *out);
__asm__(".symver stats_get_v0_1, memalloc_get_stats@MEMALLOC_0.1");
EXPORT void stats_get_v0_1(struct memalloc_stats *out)
{
    get_stats(out);
}

EXPORT const char *memalloc_version(void)
{
    return MEMALLOC_VERSION;
}

EXPORT void memalloc_get_lock_stats(struct memalloc_lock_stats *out)
{
    ensure_init();
    struct memalloc_lock_stats r = {0};
    for (unsigned c = 0; c < NUM_CLASSES; c++) {
        struct class_snap s;
        class_snapshot(c, &s);
        r.class_locks += s.locks;
        r.class_contended += s.contended;
    }
    struct heap_stats h;
    heap_get_stats(&h);
    r.heap_locks = h.locks;
    r.heap_contended = h.contended;
    *out = r;
}

/* glibc's fields with memalloc's figures: arena is the heap, ordblks the
 * small-class chunks, hblks/hblkhd the large blocks, usmblks the peak heap,
 * fsmblks the free small blocks sitting in thread caches, uordblks what the
 * program holds, fordblks the rest of the heap, keepcost the free spans
 * that malloc_trim could give back now. */
EXPORT struct memalloc_mallinfo2 memalloc_mallinfo2(void)
{
    struct memalloc_stats st;
    memalloc_get_stats(&st, sizeof st);
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
static void stats_print(void)
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
    h.released_madvise += chunk_purged_bytes();
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
    struct memalloc_lock_stats l;
    memalloc_get_lock_stats(&l);
    line("class locks taken:     ", l.class_locks);
    line("  after a wait:        ", l.class_contended);
    line("heap lock taken:       ", l.heap_locks);
    line("  after a wait:        ", l.heap_contended);
}

EXPORT void memalloc_malloc_stats(void)
{
    ensure_init();
    stats_print();
}

/* Not needed for correctness, only for the report: runs at exit. */
__attribute__((destructor)) static void stats_at_exit(void)
{
    if (__atomic_load_n(&memalloc_init_state, __ATOMIC_ACQUIRE) >= INIT_TABLES && option(OPT_STATS))
        stats_print();
}
