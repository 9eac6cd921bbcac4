/*
 * test_tcache.c - the thread caches' give-back mechanisms (src/tcache.c) and
 * the chunk policies they rely on (src/chunk.c), read through the internal
 * structures: struct tbin / struct tcache (tcache_current()) and struct
 * size_class.  Every phase uses size classes nothing else in the process has
 * touched, so the class counters can be compared exactly.
 *
 *   spare     a class with two empty chunks keeps the lower one as its spare,
 *             whichever empties first (once through chunk_free, once through
 *             chunk_free_batch); the other goes back to the heap and its
 *             blocks stop looking small.
 *   reuse     a thread fills six chunks of class A through malloc, frees
 *             everything and exits: A keeps one chunk (the lowest, as spare)
 *             and nothing parked; class B, allocated next, builds a chunk
 *             where one of A's chunks used to be.
 *   collapse  in a fresh thread, 100000 mallocs of 48 bytes then frees of
 *             all but 100, with no refill of the class in between: the bin
 *             ends COLLAPSED (flushed == 0xffff) with max == bin_max/8
 *             clamped to 1..8 and count <= max, nothing is parked, the
 *             class's in_use is exactly the blocks still held plus those in
 *             the bin, and it keeps no chunk beyond the ones those blocks sit
 *             in and the spare.  A malloc that refills the bin restores its
 *             normal limit (16 KiB of blocks, 2..64).  The thread's exit
 *             leaves the class empty.
 *   wanted    a bin collapsed the same way returns to its normal limit at its
 *             next fill once another thread has refilled the class.
 *   exit      a thread that churns a few classes leaves blocks in its bins;
 *             its exit parks each bin whole for the next refill or returns
 *             it (in_use back to where it was, apart from parked batches)
 *             and frees the cache itself.
 *   lockstep  a producer and a consumer thread take turns: 24 rounds in
 *             which the producer mallocs 64 blocks (refilling the class at
 *             least once) and the consumer frees them (one flush of its bin
 *             each); the consumer's bin never collapses, not even after one
 *             more batch with no refill (collapsing takes COLLAPSE_BATCHES
 *             of those in a row), but does collapse after 19 more.
 *   pipe      a producer thread mallocs 60000 blocks and hands them through
 *             a 64-slot queue to a consumer thread that frees them (and
 *             gets its cache at its first free): the
 *             consumer's bin (it never refills) must never collapse, at any
 *             point, since the producer keeps refilling the class (it lags
 *             by at most one batch); no block is lost.
 *   growth    a thread that churns one class (mallocs more than its bin
 *             holds, then frees them all, eight times) grows that bin to its
 *             cap (64 KiB of blocks); one that churns 40 classes grows its
 *             bins by more than nothing and at most 256 KiB in all.
 * memalloc_check() == 0 after every phase.  With MALLOC_PERTURB_ set (meson
 * test sets it) frees take tcache_free_slow, not the inline hot path, so the
 * whole run is repeated in a re-executed copy without it (not under
 * valgrind).  Under valgrind the block counts are smaller: its simulated
 * break holds about 8 MiB.
 * Exit 0 on success, 1 on a failed check, 77 if a class was already used.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internals.h"
#include "memalloc.h"

#define CHECK_MAX_FAILURES 100      /* CHECK gives up after that many */
#include "check.h"

#define COLLAPSED_MARK 0xffff       /* tbin.flushed of a collapsed bin (tcache.c) */
#define WATCHDOG_S 60

/* ---- helpers ----------------------------------------------------------------- */

static struct chunk *chunk_of(const void *p)
{
    void *meta = NULL;
    return ptr_lookup(p, &meta) == PTR_SMALL ? meta : NULL;
}


/* What tcache.c's bin_max and bin_collapsed compute, from their definition:
 * 16 KiB of blocks, 2..64; an eighth of that, 1..8. */
static unsigned normal_max(unsigned cls)
{
    if (memalloc_classes[cls].size > TC_MAX_SIZE)
        return 1;
    size_t n = ((size_t)16 << 10) / memalloc_classes[cls].size;
    return n < 2 ? 2 : n > 64 ? 64 : (unsigned)n;
}

static unsigned collapsed_max(unsigned cls)
{
    unsigned n = normal_max(cls) / 8;
    return n < 1 ? 1 : n > 8 ? 8 : n;
}

/* A class's counters, read under its lock. */
struct class_view {
    size_t in_use, chunks, parked;
    uint32_t refills;
    struct chunk *spare;
};

static struct class_view view(unsigned cls)
{
    struct size_class *sc = &memalloc_classes[cls];
    struct class_view v;
    pthread_mutex_lock(&sc->lock);
    v.in_use = sc->in_use;
    v.chunks = sc->chunks;
    v.parked = chunk_parked_blocks(cls);
    v.refills = sc->refills;
    v.spare = sc->spare;
    pthread_mutex_unlock(&sc->lock);
    return v;
}

static bool pristine(unsigned cls)
{
    const struct size_class *sc = &memalloc_classes[cls];
    return sc->chunks == 0 && sc->in_use == 0 && !sc->partial && !sc->spare && !sc->parked &&
           sc->refills == 0;
}

/* The class of `size`, which must be untouched so far and must not be the
 * class the caches themselves live in; else the test cannot count exactly. */
static unsigned fresh_class(size_t size)
{
    unsigned cls = size_to_class(size);
    if (!pristine(cls) || cls == size_to_class(sizeof(struct tcache))) {
        fprintf(stderr, "%s: class %u (%zu bytes) already used, cannot test with it\n",
                __FILE__, cls, size);
        exit(77);
    }
    return cls;
}

static void run_thread(void *(*fn)(void *), void *arg)
{
    pthread_t t;
    int e = pthread_create(&t, NULL, fn, arg);
    if (e) {
        fprintf(stderr, "%s: pthread_create: %s\n", __FILE__, strerror(e));
        exit(1);
    }
    pthread_join(t, NULL);
}

/* Two threads on the same argument, the consumer started first; joined. */
static void run_pair(void *(*consumer)(void *), void *(*producer)(void *), void *arg)
{
    pthread_t tp, tc;
    if (pthread_create(&tc, NULL, consumer, arg) || pthread_create(&tp, NULL, producer, arg)) {
        fprintf(stderr, "%s: pthread_create failed\n", __FILE__);
        exit(1);
    }
    pthread_join(tp, NULL);
    pthread_join(tc, NULL);
}

static void *xmalloc_block(size_t size)
{
    void *p = memalloc_malloc(size);
    if (!p) {
        fprintf(stderr, "%s: memalloc_malloc(%zu) failed\n", __FILE__, size);
        exit(1);
    }
    memset(p, 0x5a, 16);
    return p;
}

/* Chunks that hold blocks of cls now: those of list[0..n) and those in bin b. */
static size_t chunks_holding(void **list, size_t n, const struct tbin *b)
{
    enum { MAXC = 64 };
    struct chunk *seen[MAXC];
    size_t k = 0;
    const void *q = b ? b->head : NULL;
    for (size_t i = 0; i < n || q; i++) {
        const void *p;
        if (i < n) {
            p = list[i];
        } else {
            p = q;
            q = link_reveal(q, ((void *const *)q)[0]);
        }
        struct chunk *c = chunk_of(p);
        size_t j = 0;
        while (j < k && seen[j] != c)
            j++;
        if (j == k && k < MAXC)
            seen[k++] = c;
    }
    return k;
}

/* ---- spare: the lowest empty chunk stays ------------------------------------ */

/* Fill exactly two chunks of a fresh class through chunk_alloc_batch. */
static void **fill_two_chunks(unsigned cls, struct chunk **lo, struct chunk **hi)
{
    struct size_class *sc = &memalloc_classes[cls];
    size_t cap = sc->capacity, got = 0;
    void **p = xcalloc(2 * cap, sizeof *p);
    while (got < 2 * cap) {
        void *list;
        unsigned n = chunk_alloc_batch(cls, &list, (unsigned)(2 * cap - got));
        CHECK(n > 0, "chunk_alloc_batch(%u) gave nothing", cls);
        if (!n)
            exit(1);
        for (void **q = list; q && got < 2 * cap; q = link_reveal(q, q[0]))
            p[got++] = q;
    }
    struct chunk *a = chunk_of(p[0]), *b = chunk_of(p[2 * cap - 1]);
    CHECK(a && b && a != b && sc->chunks == 2, "class %u: 2 x %zu blocks in %zu chunk(s)", cls,
          cap, sc->chunks);
    CHECK(a && a->in_use == cap && b && b->in_use == cap, "the two chunks are not full");
    if (!a || !b || a == b)
        exit(1);
    *lo = a < b ? a : b;
    *hi = a < b ? b : a;
    return p;
}

/* Free every block of p[0..n) that lies in chunk c: one by one with
 * chunk_free, or as one list through chunk_free_batch(park = false). */
static void empty_chunk(unsigned cls, void **p, size_t n, struct chunk *c, bool batch)
{
    void *list = NULL;
    unsigned count = 0;
    for (size_t i = 0; i < n; i++) {
        if (!p[i] || chunk_of(p[i]) != c)
            continue;
        if (batch) {
            *(void **)p[i] = link_hide(p[i], list);
            list = p[i];
            count++;
        } else {
            chunk_free(c, p[i], "free");
        }
        p[i] = NULL;
    }
    if (batch)
        chunk_free_batch(cls, list, count, false);
}

static void spare_order(unsigned cls, bool low_first, bool batch)
{
    struct size_class *sc = &memalloc_classes[cls];
    struct chunk *lo, *hi;
    void **p = fill_two_chunks(cls, &lo, &hi);
    size_t n = 2 * (size_t)sc->capacity;
    const void *hi_block = (char *)hi + hi->data_off;
    fprintf(stderr, "spare: class %u (%u B), chunks %p < %p, emptying the %s first%s\n", cls,
            sc->size, (void *)lo, (void *)hi, low_first ? "lower" : "higher",
            batch ? " (batches)" : "");

    struct chunk *first = low_first ? lo : hi;
    empty_chunk(cls, p, n, first, batch);
    CHECK(sc->spare == first, "class %u: the only empty chunk %p is not the spare (%p)", cls,
          (void *)first, (void *)sc->spare);
    CHECK(sc->chunks == 2 && sc->in_use == sc->capacity,
          "class %u after emptying one chunk: chunks %zu in_use %zu", cls, sc->chunks,
          sc->in_use);
    CHECK_HEAP("emptying the first of two chunks");

    empty_chunk(cls, p, n, low_first ? hi : lo, batch);
    CHECK(sc->spare == lo, "class %u: spare %p is not the lower empty chunk %p (other %p)", cls,
          (void *)sc->spare, (void *)lo, (void *)hi);
    CHECK(sc->chunks == 1 && sc->in_use == 0, "class %u after emptying both: chunks %zu in_use %zu",
          cls, sc->chunks, sc->in_use);
    CHECK(chunk_of(hi_block) == NULL, "a block of the retired higher chunk still looks small");
    CHECK(chunk_of((char *)lo + lo->data_off) == lo, "the spare's blocks no longer map to it");
    CHECK_HEAP("emptying both chunks");
    free(p);
}

static void test_spare(void)
{
    spare_order(fresh_class(512), false, false);
    spare_order(fresh_class(1024), true, true);
}

/* ---- reuse: an emptied chunk of class A becomes a chunk of class B ---------- */

#define REUSE_CHUNKS 6

struct reuse_ctx {
    unsigned cls;
    struct chunk *chunks[REUSE_CHUNKS + 2];
    size_t nchunks;
};

static void *reuse_thread(void *arg)
{
    struct reuse_ctx *x = arg;
    const struct size_class *sc = &memalloc_classes[x->cls];
    size_t n = REUSE_CHUNKS * (size_t)sc->capacity;
    void **p = xcalloc(n, sizeof *p);
    for (size_t i = 0; i < n; i++)
        p[i] = xmalloc_block(sc->size);
    /* The chunks of the blocks held and of those the last refill left in
     * the bin (they may have opened one chunk more). */
    struct tcache *t = tcache_current();
    const void *q = t ? t->bins[x->cls].head : NULL;
    for (size_t i = 0; i < n || q; i++) {
        struct chunk *c;
        if (i < n) {
            c = chunk_of(p[i]);
        } else {
            c = chunk_of(q);
            q = link_reveal(q, ((void *const *)q)[0]);
        }
        size_t j = 0;
        while (j < x->nchunks && x->chunks[j] != c)
            j++;
        if (j == x->nchunks && j < REUSE_CHUNKS + 2)
            x->chunks[x->nchunks++] = c;
    }
    for (size_t i = 0; i < n; i++)
        memalloc_free(p[i]);
    free(p);
    return NULL;
}

static void test_reuse(void)
{
    struct reuse_ctx x = {.cls = fresh_class(256)};
    unsigned cls_b = fresh_class(4096);
    const struct size_class *sa = &memalloc_classes[x.cls], *sb = &memalloc_classes[cls_b];
    CHECK(sa->units == sb->units, "classes %u and %u differ in chunk units (%u, %u)", x.cls,
          cls_b, sa->units, sb->units);
    run_thread(reuse_thread, &x);
    /* Something above A's chunks, so that they are free space in the middle
     * of the heap rather than a top that a negative sbrk gives back. */
    void *blocker = memalloc_malloc(SMALL_MAX + UNIT);
    CHECK(blocker != NULL, "large malloc failed");

    CHECK(x.nchunks >= REUSE_CHUNKS && x.nchunks <= REUSE_CHUNKS + 1,
          "%zu x %u blocks of class %u (and a bin) took %zu chunks", (size_t)REUSE_CHUNKS,
          sa->capacity,
          x.cls, x.nchunks);
    struct chunk *lowest = x.chunks[0];
    for (size_t j = 1; j < x.nchunks; j++)
        if (x.chunks[j] < lowest)
            lowest = x.chunks[j];
    struct class_view a = view(x.cls);
    fprintf(stderr, "reuse: class %u had %zu chunks; after the thread: in_use %zu parked %zu "
            "chunks %zu\n", x.cls, x.nchunks, a.in_use, a.parked, a.chunks);
    CHECK(a.in_use == 0 && a.parked == 0,
          "class %u after its thread freed everything and exited: in_use %zu parked %zu", x.cls,
          a.in_use, a.parked);
    CHECK(a.chunks == 1 && a.spare == lowest,
          "class %u keeps %zu chunk(s), spare %p; want 1, the lowest %p", x.cls, a.chunks,
          (void *)a.spare, (void *)lowest);
    for (size_t j = 0; j < x.nchunks; j++)
        if (x.chunks[j] != lowest)
            CHECK(chunk_of((char *)x.chunks[j] + sa->data_off) == NULL,
                  "retired chunk %p of class %u still maps its blocks", (void *)x.chunks[j],
                  x.cls);
    CHECK_HEAP("class A freed by its thread");

    /* Class B, chunk by chunk: it takes the best free fit first, so within
     * as many chunks as there are free units (plus one for the top), one
     * must sit where an A chunk was. */
    struct memalloc_stats st;
    memalloc_get_stats(&st, sizeof st);
    size_t limit = st.free_bytes / UNIT + REUSE_CHUNKS + 2;
    size_t cap_b = sb->capacity, nb = 0;
    void **pb = xcalloc(limit * cap_b, sizeof *pb);
    struct chunk *hit = NULL;
    for (size_t k = 0; k < limit && !hit; k++) {
        struct chunk *c = NULL;
        for (size_t i = 0; i < cap_b; i++) {
            bool z;
            pb[nb] = chunk_alloc(cls_b, &z);
            CHECK(pb[nb] != NULL, "chunk_alloc(%u) failed", cls_b);
            if (!pb[nb])
                break;
            c = chunk_of(pb[nb++]);
        }
        for (size_t j = 0; c && j < x.nchunks; j++)
            if (c == x.chunks[j] && c != lowest)
                hit = c;
    }
    fprintf(stderr, "reuse: class %u built %zu chunk(s); %s\n", cls_b, sb->chunks,
            hit ? "one sits on a former class A chunk" : "none on a former class A chunk");
    CHECK(hit != NULL, "no chunk of class %u (%zu chunks) was built where class %u's retired "
          "chunks were", cls_b, sb->chunks, x.cls);
    if (hit) {
        CHECK(hit->s.kind == SPAN_CHUNK && hit->cls == cls_b && hit->size == sb->size &&
              hit->capacity == sb->capacity,
              "reused chunk header: kind %#x cls %u size %u capacity %u", hit->s.kind, hit->cls,
              hit->size, hit->capacity);
        CHECK(hit->in_use == cap_b, "reused chunk in_use %u, want %zu", hit->in_use, cap_b);
    }
    CHECK(sa->spare == lowest, "class %u's spare changed while class %u grew", x.cls, cls_b);
    CHECK_HEAP("class B on class A's chunks");
    for (size_t i = 0; i < nb; i++) {
        struct chunk *c = chunk_of(pb[i]);
        if (c)
            chunk_free(c, pb[i], "free");
    }
    free(pb);
    memalloc_free(blocker);
    CHECK(sb->in_use == 0 && sb->chunks == 1, "class %u after freeing: in_use %zu chunks %zu",
          cls_b, sb->in_use, sb->chunks);
    CHECK_HEAP("freeing class B");
}

/* ---- collapse: a bin that only frees ----------------------------------------- */

#define KEEP 100                    /* blocks still held when the bin is inspected */

struct collapse_ctx {
    unsigned cls;
    size_t n;
    bool own_refill;                /* restore by this thread's malloc, else another's */
    pthread_barrier_t *bar;         /* with the other thread's helper */
};

/* Malloc x->n blocks, free all but KEEP, and check that the bin collapsed
 * and the class gave its chunks back.  Returns the blocks; p[n-KEEP..n)
 * are still held. */
static void **malloc_then_free(const struct collapse_ctx *x, struct tcache **tp)
{
    unsigned cls = x->cls;
    size_t size = memalloc_classes[cls].size, n = x->n;
    void **p = xcalloc(n, sizeof *p);
    for (size_t i = 0; i < n; i++)
        p[i] = xmalloc_block(size);
    struct tcache *t = tcache_current();
    *tp = t;
    CHECK(t != NULL, "no thread cache after %zu mallocs", n);
    if (!t)
        exit(1);
    struct tbin *b = &t->bins[cls];
    CHECK(b->max == normal_max(cls) && b->flushed != COLLAPSED_MARK,
          "class %u bin after mallocs only: max %u (want %u) flushed %#x", cls, b->max,
          normal_max(cls), b->flushed);
    struct class_view v0 = view(cls);
    CHECK(v0.in_use >= n, "class %u in_use %zu below the %zu blocks held", cls, v0.in_use, n);

    for (size_t i = 0; i < n - KEEP; i++) {
        memalloc_free(p[i]);
        p[i] = NULL;
    }
    struct class_view v = view(cls);
    fprintf(stderr, "collapse: class %u (%zu B): %zu blocks freed; bin count %u max %u flushed "
            "%#x; class in_use %zu parked %zu chunks %zu (had %zu)\n", cls, size, n - KEEP,
            b->count, b->max, b->flushed, v.in_use, v.parked, v.chunks, v0.chunks);
    CHECK(v.refills == v0.refills, "class %u refilled %u time(s) while only freeing", cls,
          v.refills - v0.refills);
    CHECK(b->flushed == COLLAPSED_MARK, "class %u bin did not collapse: flushed %#x max %u", cls,
          b->flushed, b->max);
    CHECK(b->max == collapsed_max(cls), "collapsed bin max %u, want %u", b->max,
          collapsed_max(cls));
    CHECK(b->count <= b->max, "collapsed bin holds %u blocks, max %u", b->count, b->max);
    CHECK(v.parked == 0, "class %u still parks %zu blocks after a bin collapsed", cls, v.parked);
    CHECK(v.in_use == KEEP + b->count,
          "class %u in_use %zu, want the %d blocks held + %u cached: chunks were not given back",
          cls, v.in_use, KEEP, b->count);
    size_t holding = chunks_holding(p + (n - KEEP), KEEP, b);
    CHECK(v.chunks == holding + (v.spare != NULL),
          "class %u keeps %zu chunks; want the %zu holding blocks + %d spare", cls, v.chunks,
          holding, v.spare != NULL);
    CHECK_HEAP("a bin collapsed");
    return p;
}

static void free_rest(void **p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            memalloc_free(p[i]);
    free(p);
}

static void *collapse_thread(void *arg)
{
    struct collapse_ctx *x = arg;
    unsigned cls = x->cls;
    size_t size = memalloc_classes[cls].size;
    struct tcache *t;
    void **p = malloc_then_free(x, &t);
    struct tbin *b = &t->bins[cls];

    if (x->own_refill) {
        /* malloc until the bin runs dry and refills from the class. */
        uint32_t r0 = view(cls).refills;
        void *extra[16];
        size_t m = 0;
        while (m < 16 && view(cls).refills == r0)
            extra[m++] = xmalloc_block(size);
        CHECK(view(cls).refills != r0, "%zu mallocs of a collapsed bin caused no refill", m);
        CHECK(m <= (size_t)collapsed_max(cls) + 1,
              "%zu mallocs before the refill, but the bin held at most %u", m,
              collapsed_max(cls));
        CHECK(b->max == normal_max(cls) && b->flushed == 0,
              "after its own refill the bin has max %u flushed %#x; want max %u flushed 0",
              b->max, b->flushed, normal_max(cls));
        /* The next class has the same normal limit, and this thread never
         * used it: its bin still has the limit it was created with. */
        unsigned next = cls + 1;
        if (normal_max(next) == normal_max(cls) && t->bins[next].count == 0 &&
            t->bins[next].flushed == 0)
            CHECK(b->max == t->bins[next].max, "restored max %u differs from an unused bin's %u",
                  b->max, t->bins[next].max);
        CHECK_HEAP("refilling a collapsed bin");
        for (size_t i = 0; i < m; i++)
            memalloc_free(extra[i]);
    } else {
        /* Another thread refills the class; the next time this bin fills
         * it must see that and return to its normal limit. */
        pthread_barrier_wait(x->bar);           /* collapsed: go ahead */
        pthread_barrier_wait(x->bar);           /* the helper has refilled */
        for (size_t i = x->n - KEEP; i < x->n; i++) {
            memalloc_free(p[i]);
            p[i] = NULL;
        }
        fprintf(stderr, "wanted: after another thread's refill and %d frees: bin count %u max "
                "%u flushed %#x\n", KEEP, b->count, b->max, b->flushed);
        CHECK(b->flushed != COLLAPSED_MARK && b->max == normal_max(cls),
              "class %u bin still collapsed after another thread refilled the class: max %u "
              "flushed %#x (want max %u)", cls, b->max, b->flushed, normal_max(cls));
        CHECK_HEAP("un-collapsing on another thread's refill");
    }
    free_rest(p, x->n);
    return NULL;
}

struct helper_ctx {
    unsigned cls;
    uint32_t refills_before, refills_after;
};

static void *refill_helper(void *arg)
{
    struct helper_ctx *h = arg;
    h->refills_before = view(h->cls).refills;
    void *q = xmalloc_block(memalloc_classes[h->cls].size);
    h->refills_after = view(h->cls).refills;
    memalloc_free(q);
    return NULL;
}

/* The chunks that the class's parked batches hold blocks of. */
static size_t parked_chunks(unsigned cls)
{
    struct size_class *sc = &memalloc_classes[cls];
    struct chunk *seen[64];
    size_t n = 0;
    pthread_mutex_lock(&sc->lock);
    for (unsigned i = 0; i < sc->parked; i++)
        for (void **q = sc->parked_list[i]; q; q = link_reveal(q, q[0])) {
            struct chunk *c = chunk_of(q);
            size_t j = 0;
            while (j < n && seen[j] != c)
                j++;
            if (j == n && n < 64)
                seen[n++] = c;
        }
    pthread_mutex_unlock(&sc->lock);
    return n;
}

static void test_collapse(void)
{
    size_t n = UNDER_VALGRIND() ? 20000 : 100000;

    struct collapse_ctx own = {.cls = fresh_class(48), .n = n, .own_refill = true};
    run_thread(collapse_thread, &own);
    struct class_view v = view(own.cls);
    CHECK(v.in_use == v.parked, "class %u after its thread exited: in_use %zu parked %zu",
          own.cls, v.in_use, v.parked);
    CHECK(v.chunks <= 1 + parked_chunks(own.cls), "class %u keeps %zu chunks with nothing in "
          "use, %zu of them holding parked blocks", own.cls, v.chunks, parked_chunks(own.cls));
    CHECK_HEAP("the collapsing thread exited");

    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, 2);
    struct collapse_ctx other = {.cls = fresh_class(64), .n = 4000, .bar = &bar};
    pthread_t t;
    if (pthread_create(&t, NULL, collapse_thread, &other)) {
        fprintf(stderr, "%s: pthread_create failed\n", __FILE__);
        exit(1);
    }
    pthread_barrier_wait(&bar);
    struct helper_ctx h = {.cls = other.cls};
    run_thread(refill_helper, &h);
    CHECK(h.refills_after != h.refills_before, "the helper's malloc did not refill class %u",
          other.cls);
    pthread_barrier_wait(&bar);
    pthread_join(t, NULL);
    pthread_barrier_destroy(&bar);
    v = view(other.cls);
    CHECK(v.in_use == v.parked, "class %u after both threads exited: in_use %zu parked %zu",
          other.cls, v.in_use, v.parked);
    CHECK_HEAP("the un-collapsed thread exited");
}

/* ---- exit: a thread's cached blocks go back ----------------------------------- */

static const size_t exit_sizes[] = {112, 320, 2048, 6144};
#define EXIT_CLASSES (sizeof exit_sizes / sizeof exit_sizes[0])

struct exit_ctx {
    unsigned cls[EXIT_CLASSES], churn;
    struct class_view before[EXIT_CLASSES], inside[EXIT_CLASSES];
    uint32_t cached[EXIT_CLASSES];
};

static void *exit_thread(void *arg)
{
    struct exit_ctx *x = arg;
    void *p[64];
    /* Each class: as many blocks as its bin holds at first, malloc'd and
     * freed three times; they all end up in the bin (a refill brings half a
     * bin, so the bin may have grown once), none parked. */
    for (size_t k = 0; k < EXIT_CLASSES; k++) {
        size_t size = memalloc_classes[x->cls[k]].size, m = normal_max(x->cls[k]);
        for (int round = 0; round < 3; round++) {
            for (size_t i = 0; i < m; i++)
                p[i] = xmalloc_block(size);
            for (size_t i = 0; i < m; i++)
                memalloc_free(p[i]);
        }
    }
    /* One class churned hard enough to flush and park batches. */
    size_t csize = memalloc_classes[x->churn].size;
    void **q = xcalloc(1000, sizeof *q);
    for (int round = 0; round < 20; round++) {
        for (size_t i = 0; i < 1000; i++)
            q[i] = xmalloc_block(csize);
        for (size_t i = 0; i < 1000; i++)
            memalloc_free(q[i]);
    }
    free(q);
    struct tcache *t = tcache_current();
    CHECK(t != NULL, "no thread cache in the exiting thread");
    for (size_t k = 0; k < EXIT_CLASSES && t; k++) {
        x->inside[k] = view(x->cls[k]);
        x->cached[k] = t->bins[x->cls[k]].count;
        CHECK(x->cached[k] > 0 && x->cached[k] <= t->bins[x->cls[k]].max &&
                  x->inside[k].parked == 0,
              "class %u bin holds %u blocks (max %u), %zu parked", x->cls[k], x->cached[k],
              t->bins[x->cls[k]].max, x->inside[k].parked);
        CHECK(x->inside[k].in_use == x->before[k].in_use + x->cached[k],
              "class %u in_use %zu inside the thread, want %zu + %u cached", x->cls[k],
              x->inside[k].in_use, x->before[k].in_use, x->cached[k]);
    }
    CHECK(t && t->bins[x->churn].count > 0, "the churned class's bin is empty");
    CHECK_HEAP("before the thread exits");
    return NULL;
}

static void test_exit(void)
{
    struct exit_ctx x;
    memset(&x, 0, sizeof x);
    for (size_t k = 0; k < EXIT_CLASSES; k++) {
        x.cls[k] = fresh_class(exit_sizes[k]);
        x.before[k] = view(x.cls[k]);
    }
    x.churn = fresh_class(160);
    unsigned tc_cls = size_to_class(sizeof(struct tcache));
    struct class_view own0 = view(tc_cls);

    run_thread(exit_thread, &x);
    for (size_t k = 0; k < EXIT_CLASSES; k++) {
        struct class_view v = view(x.cls[k]);
        /* Its own refills make every class "wanted": the exit parks the
         * bins whole for the next thread's refill, or returns them. */
        CHECK(v.in_use == x.before[k].in_use + v.parked && v.parked <= x.cached[k],
              "class %u after the thread exited: in_use %zu (was %zu, %u were cached) parked %zu",
              x.cls[k], v.in_use, x.before[k].in_use, x.cached[k], v.parked);
        CHECK(v.chunks <= 1 + parked_chunks(x.cls[k]), "class %u keeps %zu chunks with nothing "
              "in use", x.cls[k], v.chunks);
    }
    struct class_view c = view(x.churn);
    fprintf(stderr, "exit: churned class %u: in_use %zu parked %zu chunks %zu\n", x.churn,
            c.in_use, c.parked, c.chunks);
    CHECK(c.in_use == c.parked, "churned class %u after exit: in_use %zu but only %zu parked",
          x.churn, c.in_use, c.parked);
    struct class_view own = view(tc_cls);
    CHECK(own.in_use == own0.in_use, "class %u of the caches themselves: in_use %zu, was %zu",
          tc_cls, own.in_use, own0.in_use);
    CHECK_HEAP("a thread's exit");
}

/* ---- pipe: producer / consumer ------------------------------------------------- */

#define QCAP 64

struct pipe_ctx {
    unsigned cls;
    size_t n;
    pthread_mutex_t lock;
    pthread_cond_t not_empty, not_full;
    void *q[QCAP];
    size_t head, tail;              /* monotonic: tail - head items queued */
    /* the consumer's findings */
    size_t collapsed_seen, frees;
    uint32_t end_max, end_flushed, end_count;
    uint32_t refills_seen;
};

static void *producer(void *arg)
{
    struct pipe_ctx *x = arg;
    size_t size = memalloc_classes[x->cls].size;
    for (size_t i = 0; i < x->n; i++) {
        void *p = xmalloc_block(size);
        pthread_mutex_lock(&x->lock);
        while (x->tail - x->head == QCAP)
            pthread_cond_wait(&x->not_full, &x->lock);
        x->q[x->tail++ % QCAP] = p;
        pthread_cond_signal(&x->not_empty);
        pthread_mutex_unlock(&x->lock);
    }
    return NULL;
}

static void *consumer(void *arg)
{
    struct pipe_ctx *x = arg;
    /* A thread that only frees gets its cache at its first free, and
     * from then on caches what it frees. */
    CHECK(tcache_current() == NULL, "the consumer has a cache before it did anything");
    struct tcache *t = NULL;
    uint32_t r0 = view(x->cls).refills;
    for (size_t i = 0; i < x->n; i++) {
        pthread_mutex_lock(&x->lock);
        while (x->tail == x->head)
            pthread_cond_wait(&x->not_empty, &x->lock);
        void *p = x->q[x->head++ % QCAP];
        pthread_cond_signal(&x->not_full);
        pthread_mutex_unlock(&x->lock);
        memalloc_free(p);
        if (x->frees++ == 0) {
            t = tcache_current();
            CHECK(t != NULL, "the consumer has no thread cache after its first free");
        }
        if (t && t->bins[x->cls].flushed == COLLAPSED_MARK)
            x->collapsed_seen++;
    }
    if (t) {
        x->end_max = t->bins[x->cls].max;
        x->end_flushed = t->bins[x->cls].flushed;
        x->end_count = t->bins[x->cls].count;
    }
    x->refills_seen = view(x->cls).refills - r0;
    CHECK_HEAP("the consumer's last free");
    return NULL;
}

static void test_pipe(void)
{
    static struct pipe_ctx x;
    x.cls = fresh_class(96);
    x.n = UNDER_VALGRIND() ? 10000 : 60000;
    pthread_mutex_init(&x.lock, NULL);
    pthread_cond_init(&x.not_empty, NULL);
    pthread_cond_init(&x.not_full, NULL);
    run_pair(consumer, producer, &x);
    fprintf(stderr, "pipe: class %u, %zu blocks: %u refills; consumer bin count %u max %u "
            "flushed %#x, seen collapsed after %zu of its frees\n", x.cls, x.n, x.refills_seen,
            x.end_count, x.end_max, x.end_flushed, x.collapsed_seen);
    CHECK(x.refills_seen > 0, "the producer never refilled class %u", x.cls);
    CHECK(x.end_flushed != COLLAPSED_MARK,
          "the consumer's bin of class %u ended collapsed (max %u) although the producer keeps "
          "refilling the class", x.cls, x.end_max);
    CHECK(x.collapsed_seen == 0,
          "the consumer's bin of class %u was collapsed after %zu of its %zu frees", x.cls,
          x.collapsed_seen, x.frees);
    struct class_view v = view(x.cls);
    CHECK(v.in_use == v.parked, "class %u after both threads exited: in_use %zu parked %zu",
          x.cls, v.in_use, v.parked);
    CHECK_HEAP("the producer and the consumer exited");
}

/* ---- lockstep: only consecutive batches without a refill collapse ------------- */

#define LS_BATCH 64                 /* the consumer's flush batch: half its grown bin */
#define LS_ROUNDS 24
#define LS_STASH (20 * LS_BATCH)

struct lockstep_ctx {
    unsigned cls;
    pthread_barrier_t bar;
    void *slot[LS_BATCH];
    void *stash[LS_STASH];
    uint32_t refills[LS_ROUNDS];    /* class refills during each producer round */
    int first_collapsed;            /* first round the consumer's bin was collapsed, or -1 */
    uint32_t one_flushed, one_max;  /* consumer's bin after one batch with no refill */
    uint32_t end_flushed, end_max, end_count;
    size_t end_parked;
};

/* Each round: LS_BATCH mallocs, which refill the class at least once (a bin
 * never keeps LS_BATCH blocks across a round), then the consumer frees them. */
static void *ls_producer(void *arg)
{
    struct lockstep_ctx *x = arg;
    size_t size = memalloc_classes[x->cls].size;
    for (size_t i = 0; i < LS_STASH; i++)
        x->stash[i] = xmalloc_block(size);
    for (int r = 0; r < LS_ROUNDS; r++) {
        uint32_t r0 = view(x->cls).refills;
        for (size_t i = 0; i < LS_BATCH; i++)
            x->slot[i] = xmalloc_block(size);
        x->refills[r] = view(x->cls).refills - r0;
        pthread_barrier_wait(&x->bar);
        pthread_barrier_wait(&x->bar);
    }
    pthread_barrier_wait(&x->bar);          /* the consumer's last lockstep batch */
    return NULL;
}

static void *ls_consumer(void *arg)
{
    struct lockstep_ctx *x = arg;
    memalloc_free(xmalloc_block(16));       /* this thread's cache */
    struct tcache *t = tcache_current();
    CHECK(t != NULL, "the lockstep consumer has no cache");
    if (!t)
        exit(1);
    struct tbin *b = &t->bins[x->cls];
    x->first_collapsed = -1;
    for (int r = 0; r < LS_ROUNDS; r++) {
        pthread_barrier_wait(&x->bar);
        for (size_t i = 0; i < LS_BATCH; i++)
            memalloc_free(x->slot[i]);
        if (b->flushed == COLLAPSED_MARK && x->first_collapsed < 0)
            x->first_collapsed = r;
        pthread_barrier_wait(&x->bar);
    }
    /* One batch more, while the producer does nothing: the class was
     * refilled during each of the last LS_ROUNDS batches but not this one. */
    pthread_barrier_wait(&x->bar);
    for (size_t i = 0; i < LS_BATCH; i++)
        memalloc_free(x->stash[i]);
    x->one_flushed = b->flushed;
    x->one_max = b->max;
    /* Nobody refills any more: after COLLAPSE_BATCHES batches more it must
     * collapse. */
    for (size_t i = LS_BATCH; i < LS_STASH; i++)
        memalloc_free(x->stash[i]);
    x->end_flushed = b->flushed;
    x->end_max = b->max;
    x->end_count = b->count;
    x->end_parked = view(x->cls).parked;
    CHECK_HEAP("the lockstep consumer's last free");
    return NULL;
}

static void test_lockstep(void)
{
    static struct lockstep_ctx x;
    x.cls = fresh_class(128);
    CHECK(normal_max(x.cls) == LS_BATCH, "class %u bin limit %u, the test assumes %d", x.cls,
          normal_max(x.cls), LS_BATCH);
    pthread_barrier_init(&x.bar, NULL, 2);
    run_pair(ls_consumer, ls_producer, &x);
    pthread_barrier_destroy(&x.bar);
    int no_refill = -1;
    for (int r = 0; r < LS_ROUNDS; r++)
        if (x.refills[r] == 0 && no_refill < 0)
            no_refill = r;
    fprintf(stderr, "lockstep: class %u: %d rounds of %d, consumer bin collapsed in round %d; "
            "after one batch without a refill: max %u flushed %#x; at the end: count %u max %u "
            "flushed %#x parked %zu\n", x.cls, LS_ROUNDS, LS_BATCH, x.first_collapsed,
            x.one_max, x.one_flushed, x.end_count, x.end_max, x.end_flushed, x.end_parked);
    CHECK(no_refill < 0, "the producer's round %d did not refill class %u", no_refill, x.cls);
    CHECK(x.first_collapsed < 0, "the consumer's bin collapsed in round %d although every round "
          "refilled the class", x.first_collapsed);
    CHECK(x.one_flushed != COLLAPSED_MARK,
          "the consumer's bin collapsed after a single batch without a refill of the class "
          "(the %d before it each saw one); it takes %d in a row", LS_ROUNDS, 16);
    CHECK(x.end_flushed == COLLAPSED_MARK && x.end_max == collapsed_max(x.cls) &&
              x.end_count <= x.end_max,
          "after %d batches with no refill the bin is not collapsed: count %u max %u flushed %#x",
          LS_STASH / LS_BATCH - 1, x.end_count, x.end_max, x.end_flushed);
    CHECK(x.end_parked == 0, "class %u parks %zu blocks after the bin collapsed", x.cls,
          x.end_parked);
    struct class_view v = view(x.cls);
    CHECK(v.in_use == v.parked && v.parked == 0,
          "class %u after both threads exited: in_use %zu parked %zu", x.cls, v.in_use, v.parked);
    CHECK_HEAP("the lockstep threads exited");
}

/* ---- main ------------------------------------------------------------------------ */

/* ---- growth: bins grow while churned, within a per-thread cap --------------- */

#define GROWTH_CAP_BYTES ((size_t)256 << 10)   /* THREAD_GROWTH_BYTES (tcache.c) */

static unsigned cap_max(unsigned cls)   /* bin_cap: 64 KiB of blocks, 2..1024 */
{
    size_t n = ((size_t)64 << 10) / memalloc_classes[cls].size;
    return n < 2 ? 2 : n > 1024 ? 1024 : (unsigned)n;
}

/* Rounds of: malloc more blocks of each class than its bin holds (the bin
 * runs dry and refills), then free them all (it overflows): each round lets
 * every bin double once, as far as the caps allow. */
static void churn(const size_t *sizes, size_t nsizes, int rounds)
{
    enum { MOST = 1100 };
    void **p = xcalloc(MOST, sizeof *p);
    for (int r = 0; r < rounds; r++)
        for (size_t k = 0; k < nsizes; k++) {
            unsigned cls = size_to_class(sizes[k]);
            size_t n = cap_max(cls) + cap_max(cls) / 2;
            if (n > MOST)
                n = MOST;
            for (size_t i = 0; i < n; i++)
                p[i] = xmalloc_block(sizes[k]);
            for (size_t i = 0; i < n; i++)
                memalloc_free(p[i]);
        }
    free(p);
}

static size_t grown(const struct tcache *t)
{
    size_t n = 0;
    for (unsigned c = 0; c < NUM_CLASSES; c++)
        if (t->bins[c].max > normal_max(c))
            n += (size_t)(t->bins[c].max - normal_max(c)) * memalloc_classes[c].size;
    return n;
}

static void *growth_one_thread(void *arg)
{
    (void)arg;
    const size_t size = 64;
    churn(&size, 1, 8);
    const struct tcache *t = tcache_current();
    unsigned cls = size_to_class(size);
    CHECK(t && t->bins[cls].max == cap_max(cls),
          "one churned class: bin limit %u, want its cap %u", t ? t->bins[cls].max : 0,
          cap_max(cls));
    return NULL;
}

static void *growth_many_thread(void *arg)
{
    (void)arg;
    size_t sizes[40];
    for (size_t k = 0; k < 40; k++)
        sizes[k] = 16 + k * 26;     /* 16 .. 1030 bytes: about 40 classes */
    churn(sizes, 40, 8);
    const struct tcache *t = tcache_current();
    CHECK(t != NULL, "no cache after churning");
    if (!t)
        return NULL;
    size_t g = grown(t), over = 0;
    for (unsigned c = 0; c < NUM_CLASSES; c++)
        over += t->bins[c].max > cap_max(c);
    CHECK(g > 0 && g <= GROWTH_CAP_BYTES,
          "40 churned classes grew their bins by %zu bytes in all, want 1..%zu", g,
          GROWTH_CAP_BYTES);
    CHECK(over == 0, "%zu bins past their cap", over);
    return NULL;
}

static void test_growth(void)
{
    run_thread(growth_one_thread, NULL);
    run_thread(growth_many_thread, NULL);
    CHECK_HEAP("growth");
}

static void watchdog(int sig)
{
    (void)sig;
    static const char msg[] = "FAIL: test_tcache: watchdog expired (a thread is hung?)\n";
    ssize_t r = write(2, msg, sizeof msg - 1);
    (void)r;
    _exit(1);
}

int main(int argc, char **argv)
{
    (void)argc;
    signal(SIGALRM, watchdog);
    alarm(WATCHDOG_S);
    const char *pert = getenv("MALLOC_PERTURB_");
    fprintf(stderr, "test_tcache: MALLOC_PERTURB_=%s\n", pert ? pert : "(unset)");

    void *p = memalloc_malloc(1);   /* lazy initialisation, the main thread's cache */
    memalloc_free(p);
    CHECK(tcache_current() != NULL, "the main thread has no cache after a malloc");
    CHECK_HEAP("initialisation");

    test_spare();
    test_reuse();
    test_collapse();
    test_exit();
    test_lockstep();
    test_pipe();
    test_growth();              /* last: it touches many classes */

    if (check_report(__FILE__))
        return 1;
    return rerun_without_perturb(__FILE__, argv);
}
