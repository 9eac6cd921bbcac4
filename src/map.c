/*
 * map.c - memalloc_map(fd): a picture of the heap as SVG, and the one that
 * MEMALLOC_MAP=file writes at exit.  The address range from the heap base
 * to the break is drawn as a grid of 64 KiB units, a row of `cols` units
 * each: chunks coloured by their class (blue for the smallest, red for
 * the biggest) and darker the fuller they are, large blocks, free units
 * still resident or given back (asked of the kernel with mincore), and the
 * units between segments that are not memalloc's (alignment pads and
 * other code's sbrk); below it, the reservation above the break, a
 * legend, and the totals malloc_stats prints.
 *
 * Invariants: nothing here calls malloc or stdio (a signal handler or a
 * debugger may call it): the text goes out through a static buffer and
 * write(2), which is why one memalloc_map runs at a time.  The totals are
 * read first, one lock at a time, as memalloc_get_stats reads them; then
 * the walk holds every class lock and the heap lock, taken in the order
 * memalloc_check takes them.  Every rectangle of the grid that is
 * memalloc's says how many bytes it stands for (data-bytes): they add up
 * to heap_bytes of the statistics read under the same locks.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "init.h"
#include "memalloc.h"
#include "tcache.h"
#include "track.h"

#define H memalloc_heap

/* ---- output: a static buffer, written out with write(2) ------------------------ */

static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;  /* one map at a time */
static char out_buf[16384];
static size_t out_len;
static int out_fd, out_err;

static void flush_out(void)
{
    for (size_t done = 0; done < out_len && !out_err;) {
        ssize_t n = write(out_fd, out_buf + done, out_len - done);
        if (n > 0)
            done += (size_t)n;
        else if (n < 0 && errno != EINTR)
            out_err = errno;
    }
    out_len = 0;
}

static void put(const char *s)
{
    for (size_t len = strlen(s); len;) {
        if (out_len == sizeof out_buf)
            flush_out();
        size_t n = sizeof out_buf - out_len < len ? sizeof out_buf - out_len : len;
        memcpy(out_buf + out_len, s, n);
        out_len += n;
        s += n;
        len -= n;
    }
}

static void put_num(size_t v)
{
    char b[24];
    b[fmt_unsigned(b, v)] = '\0';
    put(b);
}

/* XML text: the program's name may hold anything. */
static void put_text(const char *s)
{
    char one[2] = {0, 0};
    for (; *s; s++) {
        switch (*s) {
        case '<': put("&lt;"); break;
        case '>': put("&gt;"); break;
        case '&': put("&amp;"); break;
        case '"': put("&quot;"); break;
        default:
            one[0] = (unsigned char)*s < 0x20 ? '?' : *s;
            put(one);
        }
    }
}

/* A byte count the way a reader takes it in: 12 KiB, 3.4 MiB, 1.0 GiB. */
static void put_bytes(size_t v)
{
    static const char *const units[] = {" B", " KiB", " MiB", " GiB", " TiB"};
    unsigned k = 0;
    size_t whole = v, tenths = 0;
    while (whole >= 1024 && k < 4) {
        tenths = (whole % 1024) * 10 / 1024;
        whole /= 1024;
        k++;
    }
    put_num(whole);
    if (k && whole < 100) {
        put(".");
        put_num(tenths);
    }
    put(units[k]);
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

static size_t cols, cell;

/* Units [u, u + n) as one rectangle per row they cross, of one kind. */
static void put_units(size_t u, size_t n, const char *cls, const char *fill, bool ours,
                      const char *title)
{
    while (n) {
        size_t col = u % cols, run = cols - col < n ? cols - col : n;
        put("<rect class=\"");
        put(cls);
        put("\" x=\"");
        put_num(LEFT + col * cell);
        put("\" y=\"");
        put_num(TOP + u / cols * cell);
        put("\" width=\"");
        put_num(run * cell);
        put("\" height=\"");
        put_num(cell);
        put("\" fill=\"");
        put(fill);
        if (ours) {
            put("\" data-bytes=\"");
            put_num(run * UNIT);
        }
        if (title) {
            put("\"><title>");
            put(title);
            put("</title></rect>\n");
        } else {
            put("\"/>\n");
        }
        u += run;
        n -= run;
    }
}

/* A free span: runs of units with some page resident, and of units given
 * back whole, as the kernel tells (mincore; a refusal draws it resident). */
static void put_free(size_t u0, size_t n)
{
    size_t page = os_page(), per_unit = UNIT / page;
    unsigned char vec[UNIT / 4096];
    size_t run_start = u0;
    int run_state = -1;
    for (size_t u = u0; u <= u0 + n; u++) {
        int state = 0;
        if (u < u0 + n) {
            state = 1;
            if (mincore((void *)unit_addr(u), UNIT, vec) == 0) {
                state = 0;
                for (size_t i = 0; i < per_unit; i++)
                    state |= vec[i] & 1;
            }
        }
        if (u == u0 + n || (run_state >= 0 && state != run_state)) {
            if (run_state >= 0)
                put_units(run_start, u - run_start, run_state ? "free-resident" : "free-returned",
                          run_state ? FILL_FREE_RESIDENT : FILL_FREE_RETURNED, true, NULL);
            run_start = u;
        }
        run_state = state;
    }
}

static void put_chunk(size_t u, size_t n, const struct chunk *c)
{
    struct sbuf fill = {.n = 0}, title = {.n = 0};
    chunk_fill(&fill, c->cls, c->in_use, c->capacity);
    sb_num(&title, c->size);
    sb_str(&title, "-byte blocks: ");
    sb_num(&title, c->in_use);
    sb_str(&title, " of ");
    sb_num(&title, c->capacity);
    sb_str(&title, " in use or cached");
    put_units(u, n, "chunk", fill.s, true, title.s);
}

static void put_large(size_t u, size_t n, const struct large_block *b)
{
    struct sbuf title = {.n = 0};
    bool held = b->s.flags & SPAN_HELD;
    sb_str(&title, held ? "freed large block of " : "large block of ");
    sb_num(&title, b->requested);
    sb_str(&title, " bytes");
    put_units(u, n, held ? "held" : "large", held ? FILL_HELD : FILL_LARGE, true, title.s);
}

/* The walk, with every lock held: spans tile each segment, and units that
 * start no span between segments are somebody else's. */
static void walk(size_t end_u)
{
    size_t top_u = H.end >= memalloc_heap_base ? unit_index(H.end) : 0;
    for (size_t u = 0; u < end_u;) {
        if (u >= top_u || memalloc_unit_map[u] == MAP_NONE) {
            size_t n = 1;
            while (u + n < end_u && (u + n >= top_u || memalloc_unit_map[u + n] == MAP_NONE))
                n++;
            put_units(u, n, "gap", FILL_GAP, false, NULL);
            u += n;
            continue;
        }
        const struct span *s = (const struct span *)unit_addr(u);
        size_t n = s->units;
        if (n == 0 || u + n > top_u)
            n = 1;                  /* memalloc_check says what is wrong */
        switch (s->kind) {
        case SPAN_CHUNK:
            put_chunk(u, n, (const struct chunk *)s);
            break;
        case SPAN_LARGE:
            put_large(u, n, (const struct large_block *)s);
            break;
        default:
            put_free(u, n);
            break;
        }
        u += n;
    }
}

/* ---- the rest of the picture -------------------------------------------------------- */

/* UTC "2026-12-03 13:40:00" from the clock, without the time zone's files. */
static void put_time(void)
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
            put("0");
        put_num((size_t)parts[i]);
        put(seps[i]);
    }
}

static void put_legend_item(size_t x, size_t y, const char *fill, const char *label)
{
    put("<rect x=\"");
    put_num(x);
    put("\" y=\"");
    put_num(y);
    put("\" width=\"14\" height=\"14\" stroke=\"#999\" fill=\"");
    put(fill);
    put("\"/><text x=\"");
    put_num(x + 20);
    put("\" y=\"");
    put_num(y + 12);
    put("\">");
    put(label);
    put("</text>\n");
}

static size_t put_total(size_t x, size_t y, const char *label, size_t v, bool bytes)
{
    put("<text x=\"");
    put_num(x);
    put("\" y=\"");
    put_num(y);
    put("\">");
    put(label);
    put(": ");
    if (bytes)
        put_bytes(v);
    else
        put_num(v);
    put("</text>\n");
    return y + 18;
}

/* Below the grid: the reservation, the legend and the totals. */
static void put_footer(size_t y, const struct memalloc_stats *st, size_t reserved, size_t span)
{
    /* The reservation to scale against the heap's range, as a strip. */
    size_t total = span + reserved, heap_w = total ? WIDTH * span / total : WIDTH;
    if (heap_w < 2)
        heap_w = 2;
    put("<text x=\"");
    put_num(LEFT);
    put("\" y=\"");
    put_num(y + 14);
    put("\">address space: the heap's range ");
    put_bytes(span);
    put(", reserved above the break (PROT_NONE, no memory) ");
    put_bytes(reserved);
    put("</text>\n");
    y += 22;
    put("<rect class=\"range\" x=\"");
    put_num(LEFT);
    put("\" y=\"");
    put_num(y);
    put("\" width=\"");
    put_num(heap_w);
    put("\" height=\"10\" fill=\"#1f78b4\"/>\n");
    if (reserved) {
        put("<rect class=\"reserved\" x=\"");
        put_num(LEFT + heap_w);
        put("\" y=\"");
        put_num(y);
        put("\" width=\"");
        put_num(heap_w < WIDTH ? WIDTH - heap_w : 1);
        put("\" height=\"10\" fill=\"none\" stroke=\"#1f78b4\" stroke-dasharray=\"4 2\"/>\n");
    }
    y += 28;

    size_t ly = y, x2 = LEFT + 380;
    put("<g class=\"legend\">\n");
    put("<text x=\"");
    put_num(LEFT);
    put("\" y=\"");
    put_num(ly + 12);
    put("\">chunks by class (darker: fuller)</text>\n");
    static const unsigned samples[] = {0, 8, 16, 24, 32, 40, 48, NUM_CLASSES - 1};
    for (unsigned i = 0; i < sizeof samples / sizeof samples[0]; i++) {
        unsigned c = samples[i] < NUM_CLASSES ? samples[i] : NUM_CLASSES - 1;
        size_t x = LEFT + i * 44, yy = ly + 20;
        put("<rect x=\"");
        put_num(x);
        put("\" y=\"");
        put_num(yy);
        put("\" width=\"14\" height=\"14\" fill=\"");
        struct sbuf fill = {.n = 0};
        chunk_fill(&fill, c, 2, 3);
        put(fill.s);
        put("\"/><text x=\"");
        put_num(x);
        put("\" y=\"");
        put_num(yy + 28);
        put("\" font-size=\"10\">");
        put_bytes(memalloc_classes[c].size);
        put("</text>\n");
    }
    ly += 64;
    put_legend_item(LEFT, ly, FILL_LARGE, "large block");
    put_legend_item(LEFT, ly + 20, FILL_HELD, "large block, freed, in the hardened quarantine");
    put_legend_item(LEFT, ly + 40, FILL_FREE_RESIDENT, "free, pages resident");
    put_legend_item(LEFT, ly + 60, FILL_FREE_RETURNED, "free, given back to the kernel");
    put_legend_item(LEFT, ly + 80, FILL_GAP, "not memalloc's: alignment pad or another sbrk");
    put("</g>\n<g class=\"totals\">\n");
    size_t ty = y + 12;
    ty = put_total(x2 + 200, ty, "heap bytes now", st->heap_bytes, true);
    ty = put_total(x2 + 200, ty, "heap bytes at peak", st->heap_peak, true);
    ty = put_total(x2 + 200, ty, "small bytes in use", st->small_in_use, true);
    ty = put_total(x2 + 200, ty, "bytes cached + parked", st->cached_bytes, true);
    ty = put_total(x2 + 200, ty, "small-class chunks", st->chunks, false);
    ty = put_total(x2 + 200, ty, "large blocks in use", st->large_blocks, false);
    ty = put_total(x2 + 200, ty, "large bytes in use", st->large_in_use, true);
    ty = put_total(x2 + 200, ty, "free bytes in heap", st->free_bytes, true);
    ty = put_total(x2 + 200, ty, "returned with sbrk", st->released_sbrk, true);
    put_total(x2 + 200, ty, "returned with madvise", st->released_madvise, true);
    put("</g>\n");
}

/* Address labels down the left: every row when there are few, else every
 * eighth. */
static void put_axis(size_t rows)
{
    size_t step = rows <= 16 ? 1 : 8;
    for (size_t r = 0; r < rows; r += step) {
        put("<text class=\"axis\" x=\"");
        put_num(LEFT - 6);
        put("\" y=\"");
        put_num(TOP + r * cell + (cell < 12 ? cell : 12));
        put("\" text-anchor=\"end\" font-size=\"11\">+");
        put_bytes(r * cols * UNIT);
        put("</text>\n");
    }
}

EXPORT int memalloc_map(int fd)
{
    ensure_init();
    struct memalloc_stats st;
    memalloc_get_stats(&st, sizeof st);     /* one lock at a time, before the walk's */

    pthread_mutex_lock(&out_lock);
    track_quiet_begin();            /* it reads memalloc's headers */
    out_fd = fd;
    out_err = 0;
    out_len = 0;
    for (unsigned c = 0; c < NUM_CLASSES; c++)
        pthread_mutex_lock(&memalloc_classes[c].lock);
    heap_lock();

    uintptr_t brk = (uintptr_t)raw_break(), end = H.end > brk ? H.end : brk;
    size_t end_u = memalloc_heap_base && end > memalloc_heap_base
                       ? (end - memalloc_heap_base + UNIT - 1) >> UNIT_SHIFT : 0;
    if (end_u > MAP_UNITS)
        end_u = MAP_UNITS;
    /* About twice as wide as high, a power of two of units a row, and
     * cells of at least 4 pixels: 100 KiB is a row of big cells, 1 GiB
     * 256 x 64 cells of 4 pixels. */
    cols = 8;
    while (cols < 256 && cols * cols < 2 * end_u)
        cols *= 2;
    cell = WIDTH / cols;
    size_t rows = end_u ? (end_u + cols - 1) / cols : 1;
    size_t grid_h = rows * cell, height = TOP + grid_h + 260;

    put("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        "<svg xmlns=\"http://www.w3.org/2000/svg\" font-family=\"sans-serif\" font-size=\"13\" width=\"");
    put_num(LEFT + WIDTH + 24);
    put("\" height=\"");
    put_num(height);
    put("\" data-heap-bytes=\"");
    put_num(H.st.heap_bytes);
    put("\" data-unit=\"");
    put_num(UNIT);
    put("\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<title>memalloc heap map</title>\n"
        "<text x=\"");
    put_num(LEFT);
    put("\" y=\"26\" font-size=\"18\" font-weight=\"bold\">memalloc heap of ");
    put_text(program_invocation_short_name ? program_invocation_short_name : "?");
    put(" (pid ");
    put_num((size_t)getpid());
    put("), ");
    put_time();
    put("</text>\n<text x=\"");
    put_num(LEFT);
    put("\" y=\"48\">from the heap base 0x");
    char hex[17];
    for (int i = 0; i < 16; i++)
        hex[i] = "0123456789abcdef"[(memalloc_heap_base >> (60 - 4 * i)) & 15];
    hex[16] = '\0';
    put(hex);
    put(" to the break: ");
    put_num(end_u);
    put(" units of 64 KiB, ");
    put_num(cols);
    put(" a row</text>\n<g class=\"grid\" stroke=\"white\" stroke-width=\"");
    put(cell >= 8 ? "1" : "0");
    put("\">\n");
    walk(end_u);
    put("</g>\n");
    put_axis(rows);
    size_t heap_bytes = H.st.heap_bytes, reserved = os_reserved();

    heap_unlock();
    for (unsigned c = NUM_CLASSES; c-- > 0;)
        pthread_mutex_unlock(&memalloc_classes[c].lock);

    st.heap_bytes = heap_bytes;     /* the figure the grid adds up to */
    put_footer(TOP + grid_h + 16, &st, reserved, end_u * UNIT);
    put("</svg>\n");
    flush_out();
    int err = out_err;
    track_quiet_end();
    pthread_mutex_unlock(&out_lock);
    if (err) {
        errno = err;
        return -1;
    }
    return 0;
}

/* MEMALLOC_MAP=file: the picture at exit, after the program's own exit
 * handlers (a destructor of this library). */
__attribute__((destructor)) static void map_at_exit(void)
{
    if (__atomic_load_n(&memalloc_init_state, __ATOMIC_ACQUIRE) != INIT_READY)
        return;
    const char *path = os_getenv("MEMALLOC_MAP");
    if (!path || !*path)
        return;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        message("memalloc: MEMALLOC_MAP: cannot open the file\n");
        return;
    }
    if (memalloc_map(fd) != 0)
        message("memalloc: MEMALLOC_MAP: cannot write the file\n");
    close(fd);
}
