/*
 * map.c - memalloc_map(fd): a picture of the heap as SVG, and the one that
 * MEMALLOC_MAP=file writes at exit.  The address range from the heap base
 * to the break is drawn as a grid of 64 KiB units, a row of `o->cols` units
 * each: chunks coloured by their class (blue for the smallest, red for
 * the biggest) and darker the fuller they are, large blocks, free units
 * still resident or given back (asked of the kernel with mincore), and the
 * units between segments that are not memalloc's (alignment pads and
 * other code's sbrk); below it, the reservation above the break, a
 * legend, and the totals malloc_stats prints.
 *
 * Invariants: nothing here calls malloc or stdio (a debugger may call it,
 * or a signal handler that did not interrupt memalloc): the text goes out
 * through a buffer on the stack and write(2).  The totals are read first,
 * one lock at a time, as memalloc_get_stats reads them; then the walk
 * copies up to RUNS spans at a time with every class lock and the heap
 * lock held (taken as memalloc_check takes them), and draws and writes
 * them after letting go: no write ever waits with a lock held.  Every
 * rectangle of the grid that is memalloc's says how many bytes it stands
 * for (data-bytes): in a heap that did not change meanwhile they add up to
 * heap_bytes, which the first pass reads.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "init.h"
#include "memalloc.h"
#include "tcache.h"
#include "track.h"

#define H memalloc_heap

/* ---- output: a buffer in the caller's frame, written out with write(2) -------- */

/* One picture being written: everything lives in the caller's frame
 * (about 14 KiB), so that maps drawn at once on several threads, or in a
 * child forked while another thread drew, share nothing. */
#define RUNS 256
struct out {
    int fd, err;
    size_t len;
    size_t cols, cell;              /* the grid's geometry */
    char buf[4096];
};

static void flush_out(struct out *o)
{
    for (size_t done = 0; done < o->len && !o->err;) {
        ssize_t n = write(o->fd, o->buf + done, o->len - done);
        if (n > 0)
            done += (size_t)n;
        else if (n == 0)
            o->err = EIO;          /* no progress: do not spin */
        else if (errno != EINTR)
            o->err = errno;
    }
    o->len = 0;
}

static void put(struct out *o, const char *s)
{
    for (size_t len = strlen(s); len;) {
        if (o->len == sizeof o->buf)
            flush_out(o);
        size_t n = sizeof o->buf - o->len < len ? sizeof o->buf - o->len : len;
        memcpy(o->buf + o->len, s, n);
        o->len += n;
        s += n;
        len -= n;
    }
}

static void put_num(struct out *o, size_t v)
{
    char b[24];
    b[fmt_unsigned(b, v)] = '\0';
    put(o, b);
}

/* XML text: the program's name may hold anything; what is not printable
 * ASCII becomes '?' (the file says UTF-8, and a name need not be). */
static void put_text(struct out *o, const char *s)
{
    char one[2] = {0, 0};
    for (; *s; s++) {
        switch (*s) {
        case '<': put(o, "&lt;"); break;
        case '>': put(o, "&gt;"); break;
        case '&': put(o, "&amp;"); break;
        case '"': put(o, "&quot;"); break;
        default:
            one[0] = (unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f ? '?' : *s;
            put(o, one);
        }
    }
}

/* A byte count the way a reader takes it in: 12 KiB, 3.4 MiB, 1.0 GiB. */
static void put_bytes(struct out *o, size_t v)
{
    static const char *const units[] = {" B", " KiB", " MiB", " GiB", " TiB"};
    unsigned k = 0;
    size_t whole = v, tenths = 0;
    while (whole >= 1024 && k < 4) {
        tenths = (whole % 1024) * 10 / 1024;
        whole /= 1024;
        k++;
    }
    put_num(o, whole);
    if (k && whole < 100) {
        put(o, ".");
        put_num(o, tenths);
    }
    put(o, units[k]);
}

/* ---- short strings (a fill, a tooltip) built on the stack ------------------- */

struct sbuf {
    char s[96];
    size_t n;
};

static void sb_str(struct sbuf *b, const char *s)
{
    size_t len = strlen(s);
    if (len > sizeof b->s - 1 - b->n)
        len = sizeof b->s - 1 - b->n;
    memcpy(b->s + b->n, s, len);
    b->n += len;
    b->s[b->n] = '\0';
}

static void sb_num(struct sbuf *b, size_t v)
{
    char t[24];
    t[fmt_unsigned(t, v)] = '\0';
    sb_str(b, t);
}

/* ---- colours ------------------------------------------------------------------ */

/* A chunk: hue by class, from blue (the smallest) to red (the biggest);
 * lightness by how full it is, from pale (empty) to dark (full). */
static void chunk_fill(struct sbuf *b, unsigned cls, size_t in_use, size_t capacity)
{
    sb_str(b, "hsl(");
    sb_num(b, 240 - 240 * cls / (NUM_CLASSES - 1));
    sb_str(b, ",70%,");
    sb_num(b, 88 - (capacity ? 55 * in_use / capacity : 0));
    sb_str(b, "%)");
}

#define FILL_LARGE "#6a3d9a"
#define FILL_HELD "#cab2d6"           /* a large block in the hardened quarantine */
#define FILL_FREE_RESIDENT "#b2df8a"
#define FILL_FREE_RETURNED "#f4f4f4"
#define FILL_GAP "#555555"

/* ---- the grid ----------------------------------------------------------------- */

#define WIDTH 1024u                 /* of the grid, in pixels */
#define LEFT 96u                    /* the address axis */
#define TOP 64u                     /* the title */

/* Units [u, u + n) as one rectangle per row they cross, of one kind. */
static void put_units(struct out *o, size_t u, size_t n, const char *cls, const char *fill,
                      bool ours, const char *title)
{
    while (n) {
        size_t col = u % o->cols, run = o->cols - col < n ? o->cols - col : n;
        put(o, "<rect class=\"");
        put(o, cls);
        put(o, "\" x=\"");
        put_num(o, LEFT + col * o->cell);
        put(o, "\" y=\"");
        put_num(o, TOP + u / o->cols * o->cell);
        put(o, "\" width=\"");
        put_num(o, run * o->cell);
        put(o, "\" height=\"");
        put_num(o, o->cell);
        put(o, "\" fill=\"");
        put(o, fill);
        if (ours) {
            put(o, "\" data-bytes=\"");
            put_num(o, run * UNIT);
        }
        if (title) {
            put(o, "\"><title>");
            put(o, title);
            put(o, "</title></rect>\n");
        } else {
            put(o, "\"/>\n");
        }
        u += run;
        n -= run;
    }
}

/* A free span: runs of units with some page resident, and of units given
 * back whole, as the kernel tells (mincore). */
static void put_free(struct out *o, size_t u0, size_t n)
{
    size_t page = os_page(), per_unit = UNIT / page;
    unsigned char vec[UNIT / 4096];
    size_t run_start = u0;
    int run_state = -1;
    for (size_t u = u0; u <= u0 + n; u++) {
        int state = 0;
        if (u < u0 + n) {
            /* Asked after the walk let go of the locks: memory given back
             * to the kernel since then is drawn so. */
            if (mincore((void *)unit_addr(u), UNIT, vec) == 0) {
                state = 0;
                for (size_t i = 0; i < per_unit; i++)
                    state |= vec[i] & 1;
            }
        }
        if (u == u0 + n || (run_state >= 0 && state != run_state)) {
            if (run_state >= 0)
                put_units(o, run_start, u - run_start, run_state ? "free-resident" : "free-returned",
                          run_state ? FILL_FREE_RESIDENT : FILL_FREE_RETURNED, true, NULL);
            run_start = u;
        }
        run_state = state;
    }
}

/* ---- the walk: snapshots under the locks, drawn outside them ----------------- */

/* One run of units as the walk saw it.  The walk copies at most RUNS of
 * these under the locks, then lets go of them to draw (and write) what it
 * copied: a write to a pipe that this process itself reads must never
 * wait with memalloc's locks held.  A heap with more runs than that is
 * drawn in several passes; between two of them it may have changed. */
enum run_kind { RUN_GAP, RUN_CHUNK, RUN_LARGE, RUN_HELD, RUN_FREE };
struct run {
    uint32_t u, n;                  /* units [u, u + n) */
    uint32_t kind, cls, in_use, capacity, size;
    size_t requested;
};

static void put_run(struct out *o, const struct run *r)
{
    struct sbuf fill = {.n = 0}, title = {.n = 0};
    switch (r->kind) {
    case RUN_GAP:
        put_units(o, r->u, r->n, "gap", FILL_GAP, false, NULL);
        return;
    case RUN_FREE:
        put_free(o, r->u, r->n);
        return;
    case RUN_CHUNK:
        chunk_fill(&fill, r->cls, r->in_use, r->capacity);
        sb_num(&title, r->size);
        sb_str(&title, "-byte blocks: ");
        sb_num(&title, r->in_use);
        sb_str(&title, " of ");
        sb_num(&title, r->capacity);
        sb_str(&title, " in use or cached");
        put_units(o, r->u, r->n, "chunk", fill.s, true, title.s);
        return;
    default:
        sb_str(&title, r->kind == RUN_HELD ? "freed large block of " : "large block of ");
        sb_num(&title, r->requested);
        sb_str(&title, " bytes");
        put_units(o, r->u, r->n, r->kind == RUN_HELD ? "held" : "large",
                  r->kind == RUN_HELD ? FILL_HELD : FILL_LARGE, true, title.s);
    }
}

static void lock_all(void)
{
    for (unsigned c = 0; c < NUM_CLASSES; c++)
        pthread_mutex_lock(&memalloc_classes[c].lock);
    heap_lock();
}

static void unlock_all(void)
{
    heap_unlock();
    for (unsigned c = NUM_CLASSES; c-- > 0;)
        pthread_mutex_unlock(&memalloc_classes[c].lock);
}

/* Copies the runs from unit `from` on, up to end_u or RUNS of them, with
 * every lock held: spans tile each segment, and units that start no span
 * between segments are somebody else's.  Returns how many; *next is where
 * the next pass starts. */
static size_t snapshot(struct run *runs, size_t from, size_t end_u, size_t *next)
{
    size_t k = 0, u = from;
    lock_all();
    size_t top_u = H.end >= memalloc_heap_base ? unit_index(H.end) : 0;
    while (u < end_u && k < RUNS) {
        struct run *r = &runs[k++];
        *r = (struct run){.u = (uint32_t)u, .kind = RUN_GAP};
        if (u >= top_u || memalloc_unit_map[u] == MAP_NONE) {
            size_t n = 1;
            while (u + n < end_u && (u + n >= top_u || memalloc_unit_map[u + n] == MAP_NONE))
                n++;
            r->n = (uint32_t)n;
            u += n;
            continue;
        }
        const struct span *s = (const struct span *)unit_addr(u);
        size_t n = s->units;
        if (n == 0 || u + n > top_u)
            n = 1;                  /* memalloc_check says what is wrong */
        r->n = (uint32_t)n;
        if (s->kind == SPAN_CHUNK) {
            const struct chunk *c = (const struct chunk *)s;
            r->kind = RUN_CHUNK;
            r->cls = c->cls;
            r->in_use = c->in_use;
            r->capacity = c->capacity;
            r->size = c->size;
        } else if (s->kind == SPAN_LARGE) {
            r->kind = (s->flags & SPAN_HELD) ? RUN_HELD : RUN_LARGE;
            r->requested = ((const struct large_block *)s)->requested;
        } else {
            r->kind = RUN_FREE;
        }
        u += n;
    }
    unlock_all();
    *next = u;
    return k;
}

/* ---- the rest of the picture -------------------------------------------------------- */

/* UTC "2026-12-03 13:40:00" from the clock, without the time zone's files. */
static void put_time(struct out *o)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    long long secs = ts.tv_sec, days = secs / 86400, rem = secs % 86400;
    /* Howard Hinnant's civil_from_days. */
    long long z = days + 719468, era = (z >= 0 ? z : z - 146096) / 146097;
    long long doe = z - era * 146097;
    long long yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    long long doy = doe - (365 * yoe + yoe / 4 - yoe / 100), mp = (5 * doy + 2) / 153;
    long long d = doy - (153 * mp + 2) / 5 + 1, m = mp < 10 ? mp + 3 : mp - 9;
    long long y = yoe + era * 400 + (m <= 2);
    long long parts[] = {y, m, d, rem / 3600, rem % 3600 / 60, rem % 60};
    static const char *const seps[] = {"-", "-", " ", ":", ":", " UTC"};
    for (int i = 0; i < 6; i++) {
        if (i && parts[i] < 10)
            put(o, "0");
        put_num(o, (size_t)parts[i]);
        put(o, seps[i]);
    }
}

static void put_legend_item(struct out *o, size_t x, size_t y, const char *fill, const char *label)
{
    put(o, "<rect x=\"");
    put_num(o, x);
    put(o, "\" y=\"");
    put_num(o, y);
    put(o, "\" width=\"14\" height=\"14\" stroke=\"#999\" fill=\"");
    put(o, fill);
    put(o, "\"/><text x=\"");
    put_num(o, x + 20);
    put(o, "\" y=\"");
    put_num(o, y + 12);
    put(o, "\">");
    put(o, label);
    put(o, "</text>\n");
}

static size_t put_total(struct out *o, size_t x, size_t y, const char *label, size_t v, bool bytes)
{
    put(o, "<text x=\"");
    put_num(o, x);
    put(o, "\" y=\"");
    put_num(o, y);
    put(o, "\">");
    put(o, label);
    put(o, ": ");
    if (bytes)
        put_bytes(o, v);
    else
        put_num(o, v);
    put(o, "</text>\n");
    return y + 18;
}

/* Below the grid: the reservation, the legend and the totals. */
static void put_footer(struct out *o, size_t y, const struct memalloc_stats *st, size_t reserved, size_t span)
{
    /* The reservation to scale against the heap's range, as a strip. */
    size_t total = span + reserved, heap_w = total ? WIDTH * span / total : WIDTH;
    if (heap_w < 2)
        heap_w = 2;
    put(o, "<text x=\"");
    put_num(o, LEFT);
    put(o, "\" y=\"");
    put_num(o, y + 14);
    put(o, "\">address space: the heap's range ");
    put_bytes(o, span);
    put(o, ", reserved above the break (PROT_NONE, no memory) ");
    put_bytes(o, reserved);
    put(o, "</text>\n");
    y += 22;
    put(o, "<rect class=\"range\" x=\"");
    put_num(o, LEFT);
    put(o, "\" y=\"");
    put_num(o, y);
    put(o, "\" width=\"");
    put_num(o, heap_w);
    put(o, "\" height=\"10\" fill=\"#1f78b4\"/>\n");
    if (reserved) {
        put(o, "<rect class=\"reserved\" x=\"");
        put_num(o, LEFT + heap_w);
        put(o, "\" y=\"");
        put_num(o, y);
        put(o, "\" width=\"");
        put_num(o, heap_w < WIDTH ? WIDTH - heap_w : 1);
        put(o, "\" height=\"10\" fill=\"none\" stroke=\"#1f78b4\" stroke-dasharray=\"4 2\"/>\n");
    }
    y += 28;

    size_t ly = y, x2 = LEFT + 380;
    put(o, "<g class=\"legend\">\n");
    put(o, "<text x=\"");
    put_num(o, LEFT);
    put(o, "\" y=\"");
    put_num(o, ly + 12);
    put(o, "\">chunks by class (darker: fuller)</text>\n");
    static const unsigned samples[] = {0, 8, 16, 24, 32, 40, 48, NUM_CLASSES - 1};
    for (unsigned i = 0; i < sizeof samples / sizeof samples[0]; i++) {
        unsigned c = samples[i] < NUM_CLASSES ? samples[i] : NUM_CLASSES - 1;
        size_t x = LEFT + i * 44, yy = ly + 20;
        put(o, "<rect x=\"");
        put_num(o, x);
        put(o, "\" y=\"");
        put_num(o, yy);
        put(o, "\" width=\"14\" height=\"14\" fill=\"");
        struct sbuf fill = {.n = 0};
        chunk_fill(&fill, c, 2, 3);
        put(o, fill.s);
        put(o, "\"/><text x=\"");
        put_num(o, x);
        put(o, "\" y=\"");
        put_num(o, yy + 28);
        put(o, "\" font-size=\"10\">");
        put_bytes(o, memalloc_classes[c].size);
        put(o, "</text>\n");
    }
    ly += 64;
    put_legend_item(o, LEFT, ly, FILL_LARGE, "large block");
    put_legend_item(o, LEFT, ly + 20, FILL_HELD, "large block, freed, in the hardened quarantine");
    put_legend_item(o, LEFT, ly + 40, FILL_FREE_RESIDENT, "free, pages resident");
    put_legend_item(o, LEFT, ly + 60, FILL_FREE_RETURNED, "free, given back to the kernel");
    put_legend_item(o, LEFT, ly + 80, FILL_GAP, "not memalloc's: alignment pad or another sbrk");
    put(o, "</g>\n<g class=\"totals\">\n");
    size_t ty = y + 12;
    ty = put_total(o, x2 + 200, ty, "heap bytes now", st->heap_bytes, true);
    ty = put_total(o, x2 + 200, ty, "heap bytes at peak", st->heap_peak, true);
    ty = put_total(o, x2 + 200, ty, "small bytes in use", st->small_in_use, true);
    ty = put_total(o, x2 + 200, ty, "bytes cached + parked", st->cached_bytes, true);
    ty = put_total(o, x2 + 200, ty, "small-class chunks", st->chunks, false);
    ty = put_total(o, x2 + 200, ty, "large blocks in use", st->large_blocks, false);
    ty = put_total(o, x2 + 200, ty, "large bytes in use", st->large_in_use, true);
    ty = put_total(o, x2 + 200, ty, "free bytes in heap", st->free_bytes, true);
    ty = put_total(o, x2 + 200, ty, "returned with sbrk", st->released_sbrk, true);
    put_total(o, x2 + 200, ty, "returned with madvise", st->released_madvise, true);
    put(o, "</g>\n");
}

/* Address labels down the left: every row when there are few, else every
 * eighth. */
static void put_axis(struct out *o, size_t rows)
{
    size_t step = rows <= 16 ? 1 : 8;
    for (size_t r = 0; r < rows; r += step) {
        put(o, "<text class=\"axis\" x=\"");
        put_num(o, LEFT - 6);
        put(o, "\" y=\"");
        put_num(o, TOP + r * o->cell + (o->cell < 12 ? o->cell : 12));
        put(o, "\" text-anchor=\"end\" font-size=\"11\">+");
        put_bytes(o, r * o->cols * UNIT);
        put(o, "</text>\n");
    }
}

EXPORT int memalloc_map(int fd)
{
    ensure_init();
    struct memalloc_stats st;
    memalloc_get_stats(&st, sizeof st);     /* one lock at a time, before the walk's */
    struct out out = {.fd = fd}, *o = &out;
    struct run runs[RUNS];
    track_quiet_begin();            /* it reads memalloc's headers */
    /* The geometry and the figures the grid adds up to, under the locks. */
    lock_all();
    size_t heap_bytes = H.st.heap_bytes, reserved = os_reserved();
    uintptr_t brk = (uintptr_t)raw_break(), end = H.end > brk ? H.end : brk;
    size_t end_u = memalloc_heap_base && end > memalloc_heap_base
                       ? (end - memalloc_heap_base + UNIT - 1) >> UNIT_SHIFT : 0;
    if (end_u > MAP_UNITS)
        end_u = MAP_UNITS;
    unlock_all();
    /* About twice as wide as high, a power of two of units a row, and
     * cells of at least 4 pixels: 100 KiB is a row of big cells, 1 GiB
     * 256 x 64 cells of 4 pixels. */
    o->cols = 8;
    while (o->cols < 256 && o->cols * o->cols < 2 * end_u)
        o->cols *= 2;
    o->cell = WIDTH / o->cols;
    size_t rows = end_u ? (end_u + o->cols - 1) / o->cols : 1;
    size_t grid_h = rows * o->cell, height = TOP + grid_h + 260;

    put(o, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        "<svg xmlns=\"http://www.w3.org/2000/svg\" font-family=\"sans-serif\" font-size=\"13\" width=\"");
    put_num(o, LEFT + WIDTH + 24);
    put(o, "\" height=\"");
    put_num(o, height);
    put(o, "\" data-heap-bytes=\"");
    put_num(o, heap_bytes);
    put(o, "\" data-unit=\"");
    put_num(o, UNIT);
    put(o, "\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<title>memalloc heap map</title>\n"
        "<text x=\"");
    put_num(o, LEFT);
    put(o, "\" y=\"26\" font-size=\"18\" font-weight=\"bold\">memalloc heap of ");
    put_text(o, program_invocation_short_name ? program_invocation_short_name : "?");
    put(o, " (pid ");
    put_num(o, (size_t)getpid());
    put(o, "), ");
    put_time(o);
    put(o, "</text>\n<text x=\"");
    put_num(o, LEFT);
    put(o, "\" y=\"48\">from the heap base 0x");
    char hex[17];
    for (int i = 0; i < 16; i++)
        hex[i] = "0123456789abcdef"[(memalloc_heap_base >> (60 - 4 * i)) & 15];
    hex[16] = '\0';
    put(o, hex);
    put(o, " to the break: ");
    put_num(o, end_u);
    put(o, " units of 64 KiB, ");
    put_num(o, o->cols);
    put(o, " a row</text>\n<g class=\"grid\" stroke=\"white\" stroke-width=\"");
    put(o, o->cell >= 8 ? "1" : "0");
    put(o, "\">\n");
    for (size_t u = 0; u < end_u;) {
        size_t n = snapshot(runs, u, end_u, &u);
        for (size_t i = 0; i < n; i++)
            put_run(o, &runs[i]);
    }
    put(o, "</g>\n");
    put_axis(o, rows);
    st.heap_bytes = heap_bytes;     /* the figure the grid adds up to */
    put_footer(o, TOP + grid_h + 16, &st, reserved, end_u * UNIT);
    put(o, "</svg>\n");
    flush_out(o);
    track_quiet_end();
    if (o->err) {
        errno = o->err;
        return -1;
    }
    return 0;
}

/* MEMALLOC_MAP=file: the picture at exit, after the program's own exit
 * handlers (a destructor of this library).  The variable passes to child
 * processes, which exit too: each writes FILE.PID and renames it to FILE,
 * so the file is always one whole picture, the last process's to exit
 * (the program itself, when it waits for its children). */
__attribute__((destructor)) static void map_at_exit(void)
{
    if (__atomic_load_n(&memalloc_init_state, __ATOMIC_ACQUIRE) != INIT_READY)
        return;
    const char *path = os_getenv("MEMALLOC_MAP");
    static char tmp[4096 + 24];
    size_t len = path ? strlen(path) : 0;
    if (!len || len > 4096)
        return;
    memcpy(tmp, path, len);
    tmp[len] = '.';
    tmp[len + 1 + fmt_unsigned(tmp + len + 1, (size_t)getpid())] = '\0';
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        message("memalloc: MEMALLOC_MAP: cannot open the file\n");
        return;
    }
    int rc = memalloc_map(fd);
    if (close(fd) != 0 || rc != 0 || rename(tmp, path) != 0) {
        message("memalloc: MEMALLOC_MAP: cannot write the file\n");
        unlink(tmp);
    }
}
