/*
 * pipeline.c - a multi-threaded pipeline: two producers build messages, two
 * workers transform each into a new message and free the input, one sink
 * checks and frees the output while keeping a window of recent messages.
 * Five threads on few cores: almost every block is freed by a thread other
 * than the one that allocated it.
 */
#include "wl.h"
#include <pthread.h>

struct msg {
    struct msg *next;
    uint64_t seq;
    size_t len;
    char *tag;
    unsigned char *body;
};

struct queue {
    pthread_mutex_t m;
    pthread_cond_t nonempty, nonfull;
    struct msg *head, *tail;
    size_t n, cap;
    int producers;                  /* still running; 0 = closed */
};

#define PRODUCERS 2
#define WORKERS 2

static struct queue qa, qb;
static long per_producer;

static void q_init(struct queue *q, size_t cap, int producers)
{
    pthread_mutex_init(&q->m, NULL);
    pthread_cond_init(&q->nonempty, NULL);
    pthread_cond_init(&q->nonfull, NULL);
    q->head = q->tail = NULL;
    q->n = 0;
    q->cap = cap;
    q->producers = producers;
}

static void q_push(struct queue *q, struct msg *m)
{
    pthread_mutex_lock(&q->m);
    while (q->n >= q->cap) pthread_cond_wait(&q->nonfull, &q->m);
    m->next = NULL;
    if (q->tail) q->tail->next = m; else q->head = m;
    q->tail = m;
    q->n++;
    pthread_cond_signal(&q->nonempty);
    pthread_mutex_unlock(&q->m);
}

/* Takes up to 32 messages at once; NULL when closed and empty. */
static struct msg *q_pop_some(struct queue *q)
{
    pthread_mutex_lock(&q->m);
    while (!q->head && q->producers) pthread_cond_wait(&q->nonempty, &q->m);
    struct msg *first = q->head, *last = first;
    size_t k = first ? 1 : 0;
    while (last && last->next && k < 32) { last = last->next; k++; }
    if (first) {
        q->head = last->next;
        if (!q->head) q->tail = NULL;
        last->next = NULL;
        q->n -= k;
        pthread_cond_broadcast(&q->nonfull);
    }
    pthread_mutex_unlock(&q->m);
    return first;
}

static void q_close_one(struct queue *q)
{
    pthread_mutex_lock(&q->m);
    q->producers--;
    pthread_cond_broadcast(&q->nonempty);
    pthread_mutex_unlock(&q->m);
}

static struct msg *msg_new(uint64_t *r, uint64_t seq, size_t len)
{
    struct msg *m = wl_xmalloc(sizeof *m);
    m->seq = seq;
    m->len = len;
    m->body = wl_xmalloc(len);
    size_t tl = 8 + wl_below(r, 40);
    m->tag = wl_xmalloc(tl);
    memset(m->tag, 't', tl - 1);
    m->tag[tl - 1] = 0;
    return m;
}

static void msg_free(struct msg *m)
{
    free(m->tag);
    free(m->body);
    free(m);
}

static void *producer(void *arg)
{
    uint64_t r = 0x9a11 + (uintptr_t)arg;
    for (long i = 0; i < per_producer; i++) {
        struct msg *m = msg_new(&r, (uint64_t)i, wl_size(&r, 32, 4096));
        for (size_t k = 0; k < m->len; k++) m->body[k] = (unsigned char)(i + (long)k);
        q_push(&qa, m);
    }
    q_close_one(&qa);
    return NULL;
}

static void *worker(void *arg)
{
    uint64_t r = 0x3011 + (uintptr_t)arg;
    struct msg *batch;
    while ((batch = q_pop_some(&qa))) {
        for (struct msg *in = batch, *nx; in; in = nx) {
            nx = in->next;
            /* "decode": the output is half to twice the input's size */
            size_t len = in->len / 2 + (size_t)(in->seq * 2654435761u % (in->len * 3 / 2 + 1)) + 1;
            struct msg *out = msg_new(&r, in->seq, len);
            unsigned acc = 0;
            for (size_t k = 0; k < in->len; k++) acc += in->body[k];
            for (size_t k = 0; k < len; k++) out->body[k] = (unsigned char)(acc + k);
            msg_free(in);
            q_push(&qb, out);
        }
    }
    q_close_one(&qb);
    return NULL;
}

int main(int argc, char **argv)
{
    double scale = wl_scale(argc, argv);
    per_producer = (long)(100000 * scale);
    q_init(&qa, 1024, PRODUCERS);
    q_init(&qb, 1024, WORKERS);
    pthread_t th[PRODUCERS + WORKERS];
    for (int i = 0; i < PRODUCERS; i++)
        pthread_create(&th[i], NULL, producer, (void *)(uintptr_t)i);
    for (int i = 0; i < WORKERS; i++)
        pthread_create(&th[PRODUCERS + i], NULL, worker, (void *)(uintptr_t)i);

    /* the sink: keeps the last 4096 messages (a replay window) */
    enum { WINDOW = 4096 };
    struct msg **window = wl_xmalloc(WINDOW * sizeof *window);
    memset(window, 0, WINDOW * sizeof *window);
    uint64_t sum = 0, seen = 0;
    struct msg *batch;
    while ((batch = q_pop_some(&qb))) {
        for (struct msg *m = batch, *nx; m; m = nx) {
            nx = m->next;
            sum += m->body[m->len - 1] + m->len;
            struct msg **slot = &window[seen++ % WINDOW];
            if (*slot) msg_free(*slot);
            *slot = m;
        }
    }
    for (int i = 0; i < PRODUCERS + WORKERS; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < WINDOW; i++)
        if (window[i]) msg_free(window[i]);
    free(window);
    sum += seen;
    wl_after_free();
    return wl_report("pipeline", scale, sum);
}
