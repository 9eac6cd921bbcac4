/*
 * heap.c - the heap top: the break, the segments it is made of, the spans
 * that tile them, free space and large blocks.  Everything here runs under
 * the one heap-top lock.
 *
 * Invariants (check.c walks them):
 *   - every unit from the heap base to the top segment's end belongs to
 *     exactly one span, or to memory someone else took with sbrk (map NONE);
 *   - a span's prev_units is its lower neighbour's size, 0 for the first
 *     span of a segment; the last span of a non-top segment has SEG_END;
 *   - no two free spans are adjacent: freeing coalesces at once;
 *   - every free span is in exactly one bin, the one for floor(log2(units));
 *   - `top` is the highest span of the top segment and ends at `end`, which
 *     is where we last left the break.  We only move the break when sbrk(0)
 *     still equals `end`; otherwise other code owns what lies above.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>

#include "heap.h"
#include "track.h"
#include "options.h"

uint8_t memalloc_unit_map[MAP_UNITS] HIDDEN;
uintptr_t memalloc_heap_base HIDDEN;
uintptr_t memalloc_heap_limit HIDDEN;

static pthread_mutex_t heap_mutex = PTHREAD_ADAPTIVE_MUTEX_INITIALIZER_NP;

struct heap_state memalloc_heap HIDDEN;
#define H memalloc_heap             /* this file's own state, short */

void heap_lock(void)
{
    bool waited = lock_take(&heap_mutex);
    H.st.locks++;
    H.st.contended += waited;
}
void heap_unlock(void) { pthread_mutex_unlock(&heap_mutex); }
/* In a fork child only the forking thread exists; the lock it took in the
 * prepare handler is made new. */
void heap_fork_child(void) { lock_init(&heap_mutex); }

/* ---- span helpers ------------------------------------------------------- */

static inline struct span *span_after(const struct span *s)
{
    if (s == H.top || (s->flags & SPAN_SEG_END))
        return NULL;
    return (struct span *)((char *)s + span_bytes(s));
}

static inline struct span *span_before(const struct span *s)
{
    if (s->prev_units == 0)
        return NULL;
    return (struct span *)((char *)s - (s->prev_units << UNIT_SHIFT));
}

static inline void fix_next_prev(struct span *s)
{
    struct span *n = span_after(s);
    if (n)
        n->prev_units = s->units;
}

static void dirty_add(struct free_span *f)
{
    f->dirty_prev = NULL;
    f->dirty_next = H.dirty;
    if (f->dirty_next)
        f->dirty_next->dirty_prev = f;
    H.dirty = f;
}

static void dirty_del(struct free_span *f)
{
    if (f->dirty_prev)
        f->dirty_prev->dirty_next = f->dirty_next;
    else
        H.dirty = f->dirty_next;
    if (f->dirty_next)
        f->dirty_next->dirty_prev = f->dirty_prev;
}

/* A binned span is on the dirty list exactly when its dirty count is not
 * zero, so that a purge pass visits only spans that hold something. */
static void bin_insert(struct span *s)
{
    struct free_span *f = (struct free_span *)s;
    unsigned b = heap_bin_of(s->units);
    f->prev = NULL;
    f->next = H.bins[b];
    if (f->next)
        f->next->prev = f;
    H.bins[b] = f;
    H.st.free_bytes += span_bytes(s);
    H.dirty_free += f->dirty;
    if (f->dirty)
        dirty_add(f);
}

static void bin_remove(struct span *s)
{
    struct free_span *f = (struct free_span *)s;
    if (f->prev)
        f->prev->next = f->next;
    else
        H.bins[heap_bin_of(s->units)] = f->next;
    if (f->next)
        f->next->prev = f->prev;
    H.st.free_bytes -= span_bytes(s);
    H.dirty_free -= f->dirty;
    if (f->dirty)
        dirty_del(f);
}

/* Best fit inside the first bin that can hold `units`; any span of a higher
 * bin is big enough, and the lowest address among equals wins so that the
 * top of the heap stays free to shrink. */
static struct span *bin_find(size_t units)
{
    for (unsigned b = heap_bin_of(units); b < NUM_BINS; b++) {
        struct free_span *best = NULL;
        for (struct free_span *f = H.bins[b]; f; f = f->next) {
            if (f->s.units < units)
                continue;
            if (!best || f->s.units < best->s.units ||
                (f->s.units == best->s.units && f < best))
                best = f;
        }
        if (best)
            return &best->s;
    }
    return NULL;
}

static void map_set(const struct span *s, uint8_t v)
{
    memalloc_unit_map[unit_index((uintptr_t)s)] = v;
}

/* Cut s down to `units`; the rest becomes a span of its own (returned, not
 * yet free: the caller decides).  s keeps its kind. */
static struct span *split(struct span *s, size_t units)
{
    struct span *rest = (struct span *)((char *)s + (units << UNIT_SHIFT));
    rest->kind = SPAN_LARGE;        /* not free until the caller says so */
    rest->units = s->units - units;
    rest->prev_units = units;
    rest->flags = s->flags;
    s->flags &= ~SPAN_SEG_END;
    s->units = units;
    if (H.top == s)
        H.top = rest;
    fix_next_prev(rest);
    map_set(rest, MAP_SPAN);
    return rest;
}

/* ---- the break ---------------------------------------------------------- */

static void publish_end(void)
{
    if (H.end > memalloc_heap_limit)
        __atomic_store_n(&memalloc_heap_limit, H.end, __ATOMIC_RELEASE);
    size_t bytes = H.st.heap_bytes;
    if (bytes > H.st.heap_peak)
        H.st.heap_peak = bytes;
}

/* Once per process, with MEMALLOC_VERBOSE=1: the break would not move.  The
 * usual causes are RLIMIT_DATA and a mapping placed right above the heap
 * (V8 puts its code range near the executable, which can be there); sbrk is
 * memalloc's only source of memory, so the request fails with ENOMEM. */
static void warn_sbrk_failed(uintptr_t at)
{
    static bool warned;
    if (warned || !option(OPT_VERBOSE))
        return;
    warned = true;
    char buf[160];
    const char *head = "memalloc: sbrk cannot grow the heap past 0x";
    size_t n = strlen(head);
    memcpy(buf, head, n);
    for (int shift = 60; shift >= 0; shift -= 4)
        if ((at >> shift) || shift == 0 || n > strlen(head))
            buf[n++] = "0123456789abcdef"[(at >> shift) & 15];
    const char *tail = " (ENOMEM: RLIMIT_DATA, or a mapping above the break)\n";
    memcpy(buf + n, tail, strlen(tail) + 1);
    message(buf);
}

/* New memory from the break is readable and writable, except where
 * valgrind's brk hands it out with the protection of the pages below it:
 * a hardened large block's guard pages may end at the break. */
static void break_grown(void *from, size_t bytes)
{
    if (option(OPT_HARDEN))
        os_protect(from, bytes, true);
}

/* Extend the top segment by `bytes` in place.  Only when the break is still
 * where we left it: otherwise the memory above `end` is someone else's. */
static bool extend_top(size_t bytes)
{
    if (!H.top || raw_break() != (void *)H.end)
        return false;
    if (bytes > (size_t)PTRDIFF_MAX ||
        unit_index(H.end) + (bytes >> UNIT_SHIFT) > MAP_UNITS)
        return false;
    void *old = raw_sbrk((intptr_t)bytes);
    if (old == (void *)-1) {
        warn_sbrk_failed(H.end);
        return false;
    }
    if (old != (void *)H.end) {
        /* Another thread moved the break between our two calls: give the
         * odd piece back if we still can, and fail this attempt. */
        if (raw_break() == (char *)old + bytes)
            raw_sbrk(-(intptr_t)bytes);
        return false;
    }
    break_grown(old, bytes);
    H.end += bytes;
    H.st.heap_bytes += bytes;
    return true;
}

/* Start a new top segment of `units` units at the next unit boundary above
 * the break.  Used for the first growth, after the top segment emptied,
 * and when other code moved the break. */
static struct span *new_segment(size_t units)
{
    uintptr_t cur = (uintptr_t)raw_break();
    if (cur == (uintptr_t)-1)
        return NULL;
    uintptr_t aligned = (cur + UNIT - 1) & ~(UNIT - 1);
    size_t pad = aligned - cur;
    size_t bytes = units << UNIT_SHIFT;
    if (memalloc_heap_base == 0)
        memalloc_heap_base = aligned;
    if (aligned < memalloc_heap_base || bytes > (size_t)PTRDIFF_MAX - pad ||
        unit_index(aligned) + units > MAP_UNITS)
        return NULL;
    void *old = raw_sbrk((intptr_t)(pad + bytes));
    if (old == (void *)-1) {
        warn_sbrk_failed(cur);
        return NULL;
    }
    if ((uintptr_t)old != cur) {
        if (raw_break() == (char *)old + pad + bytes)
            raw_sbrk(-(intptr_t)(pad + bytes));
        return NULL;
    }
    if (H.top) {
        /* The old top segment is closed for good; its free space stays in
         * the bins and is still used. */
        H.top->flags |= SPAN_SEG_END;
    }
    break_grown(old, pad + bytes);
    H.seg_pad = pad;
    H.end = aligned + bytes;
    H.st.heap_bytes += bytes;
    H.st.segments++;
    struct span *s = (struct span *)aligned;
    s->units = units;
    s->prev_units = 0;
    s->flags = 0;
    H.top = s;
    map_set(s, MAP_SPAN);
    publish_end();
    return s;
}

/* sbrk and brk for the rest of the program (api.c exports them): the space above the
 * break is reserved (os.c), so glibc's own sbrk would fail there; this one
 * makes room the same way memalloc does, under the heap lock, so that a
 * program's sbrk never races memalloc's.  What it hands out becomes a gap
 * between memalloc's segments that memalloc never touches. */
void *heap_sbrk(intptr_t delta)
{
    heap_lock();
    void *old = raw_sbrk(delta);
    heap_unlock();
    return old;
}

void *heap_brk(void *addr)
{
    heap_lock();
    void *old = raw_sbrk((intptr_t)((uintptr_t)addr - (uintptr_t)raw_break()));
    heap_unlock();
    return old;
}

/* Give the top span (free) back to the kernel, keeping `keep` bytes.  All
 * reads of the span's header happen before the sbrk that may unmap it. */
static bool shrink_top(size_t keep)
{
    struct span *s = H.top;
    if (!s || s->kind != SPAN_FREE || raw_break() != (void *)H.end)
        return false;
    size_t keep_units = (keep >> UNIT_SHIFT) + ((keep & (UNIT - 1)) != 0);  /* no wrap */
    if (s->units <= keep_units)
        return false;
    size_t release = (s->units - keep_units) << UNIT_SHIFT;
    bool whole_segment = keep_units == 0 && s->prev_units == 0;
    size_t extra = whole_segment ? H.seg_pad : 0;
    struct span *below = span_before(s);
    bin_remove(s);
    track_released((char *)H.end - release - extra, release + extra);
    if (raw_sbrk(-(intptr_t)(release + extra)) == (void *)-1) {
        bin_insert(s);
        return false;
    }
    H.end -= release + extra;
    H.st.heap_bytes -= release;
    H.st.released_sbrk += release + extra;
    if (keep_units) {
        struct free_span *f = (struct free_span *)s;
        s->units = keep_units;
        if (f->dirty > span_bytes(s))
            f->dirty = span_bytes(s);
        bin_insert(s);
    } else {
        map_set(s, MAP_NONE);
        H.top = whole_segment ? NULL : below;
    }
    return true;
}

/*
 * Free space on top is given back once it reaches the trim threshold.  Like
 * glibc's, the threshold follows the programs's large blocks: freeing one of
 * B bytes raises it to 2B (capped by MEMALLOC_RETAIN_MAX), so a program that
 * keeps allocating and freeing a big buffer reuses the same pages instead of
 * paying a round trip through sbrk and fresh page faults every time.  What
 * this keeps is bounded by twice the largest such block, and
 * mallopt(M_TRIM_THRESHOLD) or malloc_trim(0) bring back the plain rule.
 */
static size_t trim_threshold(void)
{
    size_t t = (size_t)option(OPT_TRIM_THRESHOLD);
    size_t cap = (size_t)option(OPT_RETAIN_MAX);
    size_t r = H.retain < cap ? H.retain : cap;
    return r > t ? r : t;
}

/* Give the pages of dirty free spans last used at or before sw->before
 * back with madvise, keeping each span's header page; they read as zero
 * afterwards. */
void heap_sweep(struct sweep *sw)
{
    bool lazy = option(OPT_PURGE_LAZY) != 0;
    heap_lock();
    for (struct free_span *f = H.dirty, *next; f; f = next) {
        next = f->dirty_next;
        size_t len = span_bytes(&f->s) - os_page();
        if (len == 0)
            continue;
        if (f->dirty_since > sw->before) {
            sw->spared += f->dirty;
            if (f->dirty_since < sw->oldest)
                sw->oldest = f->dirty_since;
            continue;
        }
        size_t done = os_purge((char *)f + os_page(), len, lazy);
        if (done == len) {
            H.st.released_madvise += len;
            sw->purged += len;
            sw->cleaned += f->dirty;
            H.dirty_free -= f->dirty;
            f->dirty = 0;
            dirty_del(f);
        }
    }
    heap_unlock();
}

/* Merged dirt is as old as its oldest part, so it is purged no later. */
static void merge_dirt(struct free_span *into, const struct free_span *from)
{
    if (from->dirty && (!into->dirty || from->dirty_since < into->dirty_since))
        into->dirty_since = from->dirty_since;
    into->dirty += from->dirty;
}

/* Mark s free with `dirty` of its bytes possibly resident, merge it with
 * free neighbours, and either file it in a bin or, when it ends up on top
 * and big enough, give it back to the kernel.  Free space in the middle is
 * purged once the dirty total passes the purge threshold. */
static void release_locked(struct span *s, size_t dirty, uint64_t since)
{
    struct free_span *f = (struct free_span *)s;
    s->kind = SPAN_FREE;
    f->dirty = dirty;
    f->dirty_since = since;
    struct span *n = span_after(s);
    if (n && n->kind == SPAN_FREE) {
        bin_remove(n);
        s->units += n->units;
        s->flags |= n->flags & SPAN_SEG_END;
        merge_dirt(f, (struct free_span *)n);
        map_set(n, MAP_NONE);
        if (H.top == n)
            H.top = s;
    }
    struct span *p = span_before(s);
    if (p && p->kind == SPAN_FREE) {
        bin_remove(p);
        p->units += s->units;
        p->flags |= s->flags & SPAN_SEG_END;
        merge_dirt((struct free_span *)p, f);
        map_set(s, MAP_NONE);
        if (H.top == s)
            H.top = p;
        s = p;
    }
    fix_next_prev(s);
    map_set(s, MAP_SPAN);
    bin_insert(s);
    if (s == H.top && span_bytes(s) >= trim_threshold())
        shrink_top((size_t)option(OPT_TOP_PAD));
}

/* Bytes of a free span about to be reused that may hold old data: all of
 * it, unless it was purged with MADV_DONTNEED, which leaves only the header
 * page (MADV_FREE pages may come back with their old contents). */
static size_t purged_dirty(const struct span *s)
{
    if (((const struct free_span *)s)->dirty || option(OPT_PURGE_LAZY))
        return span_bytes(s);
    return os_page() < span_bytes(s) ? os_page() : span_bytes(s);
}

/* A span that was in use is all dirty. */
static void release_used(struct span *s)
{
    release_locked(s, span_bytes(s), os_now_ms());
}

static size_t pad_units(void)
{
    return ((size_t)option(OPT_TOP_PAD) + UNIT - 1) >> UNIT_SHIFT;
}

/*
 * A span of exactly `units` units, taken from free space or from new memory
 * at the top.  *dirty is how many bytes from its start may hold old data
 * (the rest came from the kernel and reads as zero).
 */
static struct span *alloc_locked(size_t units, size_t *dirty)
{
    struct span *s = bin_find(units);
    uint64_t since = 0;             /* of the dirt a split leaves free */
    if (s) {
        bin_remove(s);
        *dirty = purged_dirty(s);
        since = ((struct free_span *)s)->dirty_since;
    } else if (H.top && H.top->kind == SPAN_FREE &&
               extend_top((units - H.top->units) << UNIT_SHIFT)) {
        s = H.top;
        bin_remove(s);
        *dirty = purged_dirty(s);
        since = ((struct free_span *)s)->dirty_since;
        s->units = units;
    } else if (H.top && H.top->kind != SPAN_FREE &&
               extend_top((units + pad_units()) << UNIT_SHIFT)) {
        /* Grown by the top pad beyond the need, as glibc does, so that a
         * run of small growths takes fewer trips through sbrk; the extra
         * stays free (and untouched) on top. */
        size_t got = units + pad_units();
        s = (struct span *)(H.end - (got << UNIT_SHIFT));
        s->units = got;
        s->prev_units = H.top->units;
        s->flags = 0;
        H.top = s;
        map_set(s, MAP_SPAN);
        *dirty = 0;
    } else {
        s = new_segment(units);
        if (!s)
            return NULL;
        *dirty = 0;
    }
    publish_end();
    s->kind = SPAN_LARGE;           /* before splitting: the rest must not merge back */
    if (s->units > units) {
        /* The rest stays as idle as the span was: its age goes with it. */
        size_t used = units << UNIT_SHIFT;
        size_t rest_dirty = *dirty > used ? *dirty - used : 0;
        release_locked(split(s, units), rest_dirty, since);
    }
    track_span_taken(s, span_bytes(s));
    return s;
}

/* ---- spans for chunks (chunk.c) ---------------------------------------- */


struct span *heap_alloc_span(size_t units, bool *fresh)
{
    size_t dirty;
    heap_lock();
    struct span *s = alloc_locked(units, &dirty);
    heap_unlock();
    *fresh = s && dirty == 0;
    return s;
}

/* A span given back by chunk.c, which has cleared its map entries beyond
 * the first unit, `dirty` of its bytes possibly resident (its purged pages
 * are not).  Any nonzero amount makes the whole span count as dirty for
 * calloc; the amount steers purge passes. */
void heap_free_span(struct span *s, size_t dirty)
{
    heap_lock();
    dirty = dirty ? dirty : GRAIN;
    release_locked(s, dirty, os_now_ms());
    H.chunk_dirt += dirty;          /* chunk.c counted it already */
    heap_unlock();
}

/* ---- large blocks -------------------------------------------------------- */

static size_t user_offset(size_t align)
{
    if (align <= LARGE_HDR)
        return LARGE_HDR;
    return align < UNIT ? align : UNIT;
}

void *large_alloc(size_t size, size_t align, size_t *dirty_user)
{
    size_t off = user_offset(align);
    size_t slack = align > UNIT ? align - UNIT : 0;
    if (size > (size_t)PTRDIFF_MAX - off - slack - UNIT) {
        errno = ENOMEM;
        return NULL;
    }
    /* At least one byte past the user pointer, or a unit-aligned pointer
     * would sit on the next span's first unit. */
    size_t units = (off + (size ? size : 1) + UNIT - 1) >> UNIT_SHIFT;
    size_t dirty;

    heap_lock();
    struct span *s = alloc_locked(units + (slack >> UNIT_SHIFT), &dirty);
    if (!s) {
        heap_unlock();
        errno = ENOMEM;
        return NULL;
    }
    if (slack) {
        /* Put the user pointer on the alignment with the header one unit
         * below it; free the units in front and behind. */
        uintptr_t user = ((uintptr_t)s + UNIT + align - 1) & ~(align - 1);
        size_t front = (user - UNIT - (uintptr_t)s) >> UNIT_SHIFT;
        if (front) {
            struct span *b = split(s, front);
            b->kind = SPAN_LARGE;
            release_used(s);
            dirty = dirty > (front << UNIT_SHIFT) ? dirty - (front << UNIT_SHIFT) : 0;
            s = b;
        }
        if (s->units > units)
            release_used(split(s, units));
    }
    struct large_block *b = (struct large_block *)s;
    b->s.kind = SPAN_LARGE;
    b->user_off = off;
    b->requested = size;
    map_set(s, MAP_SPAN);
    H.st.large_in_use += span_bytes(s);
    H.large_allocs++;
    H.st.large_blocks++;
    heap_unlock();
    *dirty_user = dirty > off ? dirty - off : 0;
    return (char *)b + off;
}

size_t large_usable(const struct large_block *b)
{
    return span_bytes(&b->s) - b->user_off;
}

/* Is b the large block at p?  Heap lock held; unlocks and stops if not.
 * Re-read under the lock: a racing free may have merged this header into
 * a free neighbour already. */
static void large_vouch(const struct large_block *b, const void *p, const char *func)
{
    if (memalloc_unit_map[unit_index((uintptr_t)b)] != MAP_SPAN ||
        b->s.kind != SPAN_LARGE || (const char *)b + b->user_off != (const char *)p) {
        bool was_free = b->s.kind == SPAN_FREE;
        heap_unlock();
        fatal_pointer(func, was_free ? "double free" : "invalid pointer", p);
    }
}

void large_hold(struct large_block *b, const void *p, const char *func)
{
    heap_lock();
    large_vouch(b, p, func);
    bool held = b->s.flags & SPAN_HELD;
    b->s.flags |= SPAN_HELD;
    heap_unlock();
    if (held)
        fatal_pointer(func, "double free", p);
}

void large_free(struct large_block *b, const void *p, const char *func)
{
    heap_lock();
    large_vouch(b, p, func);
    b->s.flags &= SPAN_SEG_END;     /* the hardened mode's marks end here */
    H.st.large_in_use -= span_bytes(&b->s);
    H.st.large_blocks--;
    if (2 * span_bytes(&b->s) > H.retain)
        H.retain = 2 * span_bytes(&b->s);
    release_used(&b->s);
    heap_unlock();
}

/* Grow or shrink b without moving it: shrink by freeing whole units at its
 * end, grow into a free neighbour or by moving the break when b is on top. */
bool large_resize_in_place(struct large_block *b, size_t size)
{
    if (size > (size_t)PTRDIFF_MAX - b->user_off - UNIT)
        return false;
    size_t units = (b->user_off + (size ? size : 1) + UNIT - 1) >> UNIT_SHIFT;
    bool ok = true;

    heap_lock();
    size_t before = span_bytes(&b->s);
    if (units < b->s.units) {
        release_used(split(&b->s, units));
    } else if (units > b->s.units) {
        size_t need = units - b->s.units;
        struct span *n = span_after(&b->s);
        if (n && n->kind == SPAN_FREE && n->units < need && n == H.top &&
            extend_top((need - n->units) << UNIT_SHIFT)) {
            bin_remove(n);
            n->units = need;
            bin_insert(n);
        }
        if (n && n->kind == SPAN_FREE && n->units >= need) {
            bin_remove(n);
            map_set(n, MAP_NONE);
            b->s.units += n->units;
            b->s.flags |= n->flags & SPAN_SEG_END;
            if (H.top == n)
                H.top = &b->s;
            fix_next_prev(&b->s);
            if (b->s.units > units)
                release_used(split(&b->s, units));
        } else if (!n && H.top == &b->s && extend_top(need << UNIT_SHIFT)) {
            b->s.units = units;
        } else {
            ok = false;
        }
        publish_end();
    }
    if (ok) {
        b->requested = size;
        H.st.large_in_use += span_bytes(&b->s);
        H.st.large_in_use -= before;
    }
    heap_unlock();
    return ok;
}

/* ---- trimming and statistics ------------------------------------------- */

/* malloc_trim: give back the free top, keeping pad bytes. */
bool heap_shrink(size_t pad)
{
    heap_lock();
    bool released = shrink_top(pad);
    heap_unlock();
    return released;
}

void heap_get_stats(struct heap_stats *st)
{
    heap_lock();
    *st = H.st;
    heap_unlock();
}
