/*
 * server.c - a request-serving process: a working set of session objects of
 * mixed sizes with a heavy-tailed lifetime (most live for a few ticks, a few
 * for very long), per-request scratch buffers, and session payloads resized
 * with realloc.  The free phase drops every session at shutdown.
 */
#include "wl.h"

struct session {
    uint64_t id, expires;
    size_t slot;                    /* index in the live array */
    char *name;
    char *payload;
    size_t plen;
    char *attrs[8];
    int nattrs;
    struct session *next;           /* in its timing-wheel bucket */
};

#define WHEEL 4096

static struct session *wheel[WHEEL];
static struct session **live;
static size_t nlive, live_cap;
static uint64_t sum;

static char *dup_rand(uint64_t *r, size_t lo, size_t hi)
{
    size_t n = lo + wl_below(r, hi - lo + 1);
    char *s = wl_xmalloc(n + 1);
    for (size_t i = 0; i < n; i++) s[i] = (char)('a' + (i * 7 + n) % 26);
    s[n] = 0;
    return s;
}

static uint64_t lifetime(uint64_t *r)
{
    uint64_t u = wl_below(r, 100);
    if (u < 70) return 1 + wl_below(r, 100);           /* bounced visitors */
    if (u < 95) return 100 + wl_below(r, 2000);        /* ordinary sessions */
    return 2000 + wl_below(r, 50000);                  /* logged-in users */
}

static void session_new(uint64_t *r, uint64_t now, uint64_t id)
{
    struct session *s = wl_xmalloc(sizeof *s);
    s->id = id;
    s->expires = now + lifetime(r);
    s->name = dup_rand(r, 8, 48);
    s->plen = wl_size(r, 64, 16384);
    s->payload = wl_xmalloc(s->plen);
    memset(s->payload, (int)(id & 0xff), s->plen);
    s->nattrs = (int)wl_below(r, 9);
    for (int i = 0; i < s->nattrs; i++) s->attrs[i] = dup_rand(r, 4, 40);
    uint64_t b = s->expires % WHEEL;
    s->next = wheel[b];
    wheel[b] = s;
    if (nlive == live_cap) {
        live_cap = live_cap ? live_cap * 2 : 1024;
        struct session **nl = realloc(live, live_cap * sizeof *live);
        if (!nl) exit(2);
        live = nl;
    }
    s->slot = nlive;
    live[nlive++] = s;
}

static void session_free(struct session *s)
{
    sum += (unsigned char)s->payload[s->plen / 2] + s->plen;
    live[s->slot] = live[--nlive];
    live[s->slot]->slot = s->slot;
    for (int i = 0; i < s->nattrs; i++) free(s->attrs[i]);
    free(s->payload);
    free(s->name);
    free(s);
}

static void serve(uint64_t *r, uint64_t now, uint64_t *next_id)
{
    /* scratch: the request, its parsed headers, the response */
    size_t qlen = wl_size(r, 128, 8192);
    char *req = wl_xmalloc(qlen);
    memset(req, 'q', qlen);
    char *hdr[12];
    int nh = 3 + (int)wl_below(r, 10);
    for (int i = 0; i < nh; i++) hdr[i] = dup_rand(r, 6, 80);

    if (nlive == 0 || wl_below(r, 100) < 30) {
        session_new(r, now, (*next_id)++);
    } else {
        struct session *s = live[wl_below(r, nlive)];
        size_t n = wl_below(r, 4) == 0 ? wl_size(r, 64, 16384) : s->plen;
        if (n != s->plen) {
            char *p = realloc(s->payload, n);
            if (!p) exit(2);
            if (n > s->plen) memset(p + s->plen, 1, n - s->plen);
            s->payload = p;
            s->plen = n;
        }
        sum += (unsigned char)s->payload[0];
    }

    size_t rlen = wl_size(r, 256, 65536);
    char *resp = wl_xmalloc(rlen);
    memset(resp, 'r', rlen);
    sum += (unsigned char)resp[rlen - 1] + (unsigned char)req[0] + (unsigned char)hdr[nh - 1][0];
    free(resp);
    for (int i = 0; i < nh; i++) free(hdr[i]);
    free(req);
}

int main(int argc, char **argv)
{
    double scale = wl_scale(argc, argv);
    uint64_t r = 0x5e55105, next_id = 1;
    uint64_t ticks = (uint64_t)(20000 * scale);

    for (uint64_t now = 0; now < ticks; now++) {
        for (int q = 0; q < 8; q++) serve(&r, now, &next_id);
        struct session **pp = &wheel[now % WHEEL];
        while (*pp) {
            struct session *s = *pp;
            if (s->expires <= now) {
                *pp = s->next;
                session_free(s);
            } else {
                pp = &s->next;
            }
        }
    }
    sum += nlive;
    for (int b = 0; b < WHEEL; b++)             /* shutdown: the free phase */
        while (wheel[b]) {
            struct session *s = wheel[b];
            wheel[b] = s->next;
            session_free(s);
        }
    free(live);
    wl_after_free();
    return wl_report("server", scale, sum);
}
