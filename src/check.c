/*
 * check.c - memalloc_check(): stop the world (every class lock, then the
 * heap lock, in the documented order) and verify every invariant that
 * heap.c, chunk.c and tcache.c state.  Every walker lives here, so the
 * production files hold no checking code.  For tests and fuzzers; far too
 * slow for production use.
 */
#include <string.h>

#include "init.h"
#include "memalloc.h"
#include "tcache.h"
#include "track.h"

#define H memalloc_heap

/* ---- chunks -------------------------------------------------------------- */

static int chunk_complain(const char *what, const struct chunk *c)
{
    char buf[160];
    size_t n = 0;
    const char *parts[] = {"memalloc_check: chunk of class ", NULL};
    memcpy(buf, parts[0], strlen(parts[0]));
    n = strlen(parts[0]);
    n += fmt_unsigned(buf + n, c->cls);
    buf[n++] = ':';
    buf[n++] = ' ';
    size_t len = strlen(what);
    memcpy(buf + n, what, len);
    n += len;
    buf[n++] = '\n';
    buf[n] = '\0';
    message(buf);
    return 1;
}

/* Blocks and chunks seen per class during one memalloc_check() walk. */
static size_t seen_blocks[NUM_CLASSES], seen_chunks[NUM_CLASSES];

static void chunk_check_begin(void)
{
    memset(seen_blocks, 0, sizeof seen_blocks);
    memset(seen_chunks, 0, sizeof seen_chunks);
}

static int chunk_check_end(void)
{
    int bad = 0;
    for (unsigned cls = 0; cls < NUM_CLASSES; cls++) {
        const struct size_class *sc = &memalloc_classes[cls];
        for (unsigned i = 0; i < sc->parked; i++) {
            unsigned n = 0;
            for (void **q = sc->parked_list[i]; q && link_plausible(q); q = link_reveal(q, q[0])) {
                void *meta;
                if (++n > sc->parked_count[i] || ptr_lookup(q, &meta) != PTR_SMALL ||
                    ((struct chunk *)meta)->cls != cls || !chunk_block_live(meta, q)) {
                    struct chunk dummy = {.cls = cls};
                    bad += chunk_complain("parked batch holds a bad block", &dummy);
                    break;
                }
            }
            if (n != sc->parked_count[i]) {
                struct chunk dummy = {.cls = cls};
                bad += chunk_complain("parked batch count is wrong", &dummy);
            }
        }
        if (seen_blocks[cls] != sc->in_use || seen_chunks[cls] != sc->chunks) {
            struct chunk dummy = {.cls = cls};
            bad += chunk_complain("class totals differ from its chunks", &dummy);
        }
    }
    return bad;
}

/* Called by heap_check with every class lock and the heap lock held. */
static int chunk_check(struct chunk *c)
{
    if (c->cls >= NUM_CLASSES)
        return chunk_complain("class out of range", c);
    const struct size_class *sc = &memalloc_classes[c->cls];
    seen_blocks[c->cls] += c->in_use;
    seen_chunks[c->cls]++;
    int bad = 0;
    if (c->s.units != sc->units || c->size != sc->size || c->capacity != sc->capacity ||
        c->data_off != sc->data_off || c->blocks != (uintptr_t)c + sc->data_off ||
        c->inv != sc->inv || c->shift != sc->shift ||
        c->bin != c->cls * TBIN_BYTES)
        bad += chunk_complain("header disagrees with its class", c);
    if (c->in_use > c->carved || c->carved > c->capacity)
        return bad + chunk_complain("counts out of range", c);
    size_t bits = 0;
    for (size_t i = 0; i < CHUNK_MAX_BLOCKS / 64; i++)
        bits += (size_t)__builtin_popcountll(c->used_map[i]);
    if (bits != c->in_use)
        bad += chunk_complain("bitmap population differs from in_use", c);
    for (size_t i = c->carved; i < c->capacity; i++)
        if (bit_get(c->used_map, i))
            return bad + chunk_complain("block past carved in use", c);
    for (size_t w = 0; w < c->hint; w++)
        if (c->used_map[w] != ~(uint64_t)0)
            bad += chunk_complain("free block below the hint", c);
    size_t purged = 0;
    for (size_t pg = 0; pg < c->s.units * (UNIT / GRAIN); pg++) {
        if (!bit_get(c->purged_map, pg))
            continue;
        purged++;
        size_t lo = (pg * GRAIN - c->data_off) / c->size;
        size_t hi = ((pg + 1) * GRAIN - 1 - c->data_off) / c->size;
        if (hi >= c->capacity)
            hi = c->capacity - 1;
        if (pg * GRAIN < c->data_off || (lo <= hi && !chunk_all_free(c, lo, hi)))
            bad += chunk_complain("purged page holds a block in use", c);
    }
    if (purged != c->purged)
        bad += chunk_complain("purged page count is wrong", c);
    if (c->purged_mask != chunk_purged_mask(c))
        bad += chunk_complain("fast-path mask disagrees with the purged pages", c);
    bool on_list = false;
    for (const struct chunk *q = sc->cand; q; q = q->cand_next)
        if (q == c)
            on_list = true;
    if (on_list != (c->listed != 0))
        bad += chunk_complain("candidate list membership wrong", c);
    bool on_partial = false;
    for (const struct chunk *q = sc->partial; q; q = q->next)
        if (q == c)
            on_partial = true;
    bool is_spare = sc->spare == c;
    if (is_spare && c->in_use != 0)
        bad += chunk_complain("spare chunk holds blocks", c);
    if (!is_spare && on_partial != (c->in_use < c->capacity))
        bad += chunk_complain("partial list membership wrong", c);
    if (!is_spare && c->in_use == 0)
        bad += chunk_complain("empty chunk neither spare nor released", c);
    return bad;
}

/* ---- the heap -------------------------------------------------------------- */

static int complain(const char *what, const void *where)
{
    char buf[160];
    size_t n = 0;
    const char *head = "memalloc_check: ";
    memcpy(buf, head, strlen(head));
    n = strlen(head);
    size_t len = strlen(what);
    if (len > 100)
        len = 100;
    memcpy(buf + n, what, len);
    n += len;
    buf[n++] = ' ';
    buf[n++] = '@';
    n += fmt_unsigned(buf + n, (uintptr_t)where - memalloc_heap_base);
    buf[n++] = '\n';
    buf[n] = '\0';
    message(buf);
    return 1;
}

static int heap_check(void)
{
    int bad = 0;
    size_t free_spans = 0, free_bytes = 0, large = 0, large_bytes = 0;
    if (!memalloc_heap_base || H.end < memalloc_heap_base)
        return 0;                   /* no segment yet */
    size_t end_u = unit_index(H.end);
    const struct span *prev = NULL;
    for (size_t u = 0; u < end_u;) {
        uint8_t m = memalloc_unit_map[u];
        if (m == MAP_NONE) {            /* another party's memory, or a pad */
            if (prev && !(prev->flags & SPAN_SEG_END))
                bad += complain("segment ends without SEG_END", prev);
            prev = NULL;
            u++;
            continue;
        }
        struct span *s = (struct span *)unit_addr(u);
        if (m != MAP_SPAN && m != MAP_SMALL)
            bad += complain("map points into the middle of a chunk", s);
        if (s->units == 0 || u + s->units > end_u)
            return bad + complain("span size out of range", s);
        if (s->prev_units != (prev ? prev->units : 0))
            bad += complain("prev_units does not match", s);
        switch (s->kind) {
        case SPAN_FREE:
            if (prev && prev->kind == SPAN_FREE)
                bad += complain("two free spans adjacent", s);
            free_spans++;
            free_bytes += span_bytes(s);
            break;
        case SPAN_LARGE: {
            const struct large_block *b = (const struct large_block *)s;
            if (b->user_off < LARGE_HDR || b->user_off > UNIT ||
                b->user_off + b->requested > span_bytes(s))
                bad += complain("large block header inconsistent", s);
            large++;
            large_bytes += span_bytes(s);
            break;
        }
        case SPAN_CHUNK:
            bad += chunk_check((struct chunk *)s);
            break;
        default:
            return bad + complain("unknown span kind", s);
        }
        for (size_t k = 1; k < s->units; k++) {
            uint8_t want = s->kind == SPAN_CHUNK ? (uint8_t)(MAP_SMALL | k) : MAP_NONE;
            if (memalloc_unit_map[u + k] != want) {
                bad += complain("map disagrees with span interior", s);
                break;
            }
        }
        bool last = u + s->units == end_u;
        if (last && s != H.top && !(s->flags & SPAN_SEG_END))
            bad += complain("top span is not the highest span", s);
        prev = (s->flags & SPAN_SEG_END) ? NULL : s;
        u += s->units;
    }
    size_t binned = 0, binned_bytes = 0, dirty = 0;
    for (unsigned b = 0; b < NUM_BINS; b++)
        for (struct free_span *f = H.bins[b]; f; f = f->next) {
            if (f->s.kind != SPAN_FREE || heap_bin_of(f->s.units) != b)
                bad += complain("bin holds a wrong span", f);
            if (f->dirty > span_bytes(&f->s))
                bad += complain("free span more dirty than big", f);
            dirty += f->dirty;
            binned++;
            binned_bytes += span_bytes(&f->s);
            if (binned > free_spans + 1)
                return bad + complain("bin list longer than free spans (cycle?)", f);
        }
    if (binned != free_spans || binned_bytes != free_bytes || free_bytes != H.st.free_bytes)
        bad += complain("free spans and bins disagree", (void *)memalloc_heap_base);
    size_t listed = 0;
    for (struct free_span *f = H.dirty; f && listed <= binned; f = f->dirty_next) {
        listed++;
        if (f->s.kind != SPAN_FREE || f->dirty == 0)
            bad += complain("dirty list holds a clean or used span", f);
    }
    size_t dirty_spans = 0;
    for (unsigned b = 0; b < NUM_BINS; b++)
        for (struct free_span *f = H.bins[b]; f; f = f->next)
            dirty_spans += f->dirty != 0;
    if (listed != dirty_spans)
        bad += complain("dirty list length differs from the dirty spans", (void *)memalloc_heap_base);
    if (dirty != H.dirty_free)
        bad += complain("dirty free total disagrees with the spans", (void *)memalloc_heap_base);
    if (large != H.st.large_blocks || large_bytes != H.st.large_in_use)
        bad += complain("large block statistics disagree", (void *)memalloc_heap_base);
    if (H.top && (uintptr_t)H.top + span_bytes(H.top) != H.end)
        bad += complain("top span does not end at the heap end", H.top);
    for (size_t u = end_u; u < unit_index(memalloc_heap_limit); u++)
        if (memalloc_unit_map[u] != MAP_NONE)
            return bad + complain("map entry above the heap end", (void *)unit_addr(u));
    return bad;
}

/* ---- the thread cache --------------------------------------------------------- */

/* The calling thread's cache: counts match the lists, every block is a
 * valid in-use block of the bin's class.  Other threads' caches are moving
 * under us and are not walked. */
static int tcache_check_own(void)
{
    struct tcache *t = tcache_current();
    int bad = 0;
    if (!t)
        return 0;
    for (unsigned c = 0; c < NUM_CLASSES; c++) {
        uint32_t n = 0;
        for (void **p = t->bins[c].head; p; p = link_reveal(p, p[0])) {
            void *meta;
            if (++n > t->bins[c].max || ptr_lookup(p, &meta) != PTR_SMALL ||
                ((struct chunk *)meta)->cls != c || p[1] != (void *)memalloc_free_key ||
                !chunk_block_live(meta, p)) {
                message("memalloc_check: thread cache holds a bad block\n");
                bad++;
                break;
            }
        }
        if (n != t->bins[c].count) {
            message("memalloc_check: thread cache count is wrong\n");
            bad++;
        }
    }
    return bad;
}

/* ---- the walk ---------------------------------------------------------------- */

EXPORT int memalloc_check(void)
{
    ensure_init();
    track_quiet_begin();            /* it reads memalloc's headers and free blocks */
    for (unsigned c = 0; c < NUM_CLASSES; c++)
        pthread_mutex_lock(&memalloc_classes[c].lock);
    heap_lock();
    chunk_check_begin();
    int bad = heap_check();
    bad += chunk_check_end();
    bad += tcache_check_own();
    heap_unlock();
    for (unsigned c = NUM_CLASSES; c-- > 0;)
        pthread_mutex_unlock(&memalloc_classes[c].lock);
    track_quiet_end();
    return bad;
}
