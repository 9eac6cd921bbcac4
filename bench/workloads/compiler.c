/*
 * compiler.c - a compiler's allocation pattern: per translation unit, build
 * a syntax tree of many small nodes, lower it to an instruction list with
 * realloc-grown operand arrays, delete dead instructions, then free the
 * whole unit at once.  An interned symbol table and one summary per
 * function outlive the units.  The free phase drops those at exit.
 */
#include "wl.h"

struct node {
    int kind, nkids;
    char *ident;
    struct node *kids[];
};

struct insn {
    struct insn *next;
    int op, nops, cap;
    int *ops;
    char text[];                    /* a short mnemonic, variable length */
};

struct sym {
    struct sym *next;
    uint64_t hash;
    char name[];
};

#define SYMTAB 65536
static struct sym *symtab[SYMTAB];
static uint64_t sum;

static const char *intern(uint64_t *r)
{
    char buf[32];
    int n = 2 + (int)wl_below(r, 14);
    uint64_t v = wl_below(r, 50000), h = v * 0x9e3779b97f4a7c15ull + (uint64_t)n;
    for (int i = 0; i < n; i++) buf[i] = (char)('a' + (v >> (i % 8) * 2) % 26);
    buf[n] = 0;
    struct sym **pp = &symtab[h % SYMTAB];
    for (struct sym *s = *pp; s; s = s->next)
        if (s->hash == h) return s->name;
    struct sym *s = wl_xmalloc(sizeof *s + (size_t)n + 1);
    s->hash = h;
    memcpy(s->name, buf, (size_t)n + 1);
    s->next = *pp;
    *pp = s;
    return s->name;
}

static struct node *build(uint64_t *r, int depth, size_t *budget)
{
    int nk = 0;
    if (depth < 12 && *budget > 0) nk = (int)wl_below(r, depth < 3 ? 6 : 4);
    struct node *n = wl_xmalloc(sizeof *n + (size_t)nk * sizeof n->kids[0]);
    n->kind = (int)wl_below(r, 40);
    n->nkids = nk;
    n->ident = NULL;
    if (wl_below(r, 10) < 3) {
        const char *s = intern(r);
        size_t len = strlen(s);
        n->ident = wl_xmalloc(len + 1);
        memcpy(n->ident, s, len + 1);
    }
    if (*budget) (*budget)--;
    for (int i = 0; i < nk; i++) n->kids[i] = build(r, depth + 1, budget);
    return n;
}

static struct insn *lower(uint64_t *r, struct node *n, struct insn *tail)
{
    for (int i = 0; i < n->nkids; i++) tail = lower(r, n->kids[i], tail);
    size_t tl = 4 + wl_below(r, 24);
    struct insn *in = wl_xmalloc(sizeof *in + tl);
    memset(in->text, 'i', tl);
    in->op = n->kind;
    in->nops = 0;
    in->cap = 0;
    in->ops = NULL;
    for (int k = 0; k < n->nkids + 1 + (int)wl_below(r, 3); k++) {
        if (in->nops == in->cap) {
            in->cap = in->cap ? in->cap * 2 : 2;
            int *o = realloc(in->ops, (size_t)in->cap * sizeof *o);
            if (!o) exit(2);
            in->ops = o;
        }
        in->ops[in->nops++] = k;
    }
    in->next = NULL;
    tail->next = in;
    return in;
}

static void free_tree(struct node *n)
{
    for (int i = 0; i < n->nkids; i++) free_tree(n->kids[i]);
    if (n->ident) sum += (unsigned char)n->ident[0];
    free(n->ident);
    free(n);
}

int main(int argc, char **argv)
{
    double scale = wl_scale(argc, argv);
    uint64_t r = 0xc0de;
    int units = (int)(30 * scale);
    if (units < 1) units = 1;
    char **summaries = wl_xmalloc(sizeof(char *) * (size_t)units * 64);
    size_t nsum = 0;

    for (int u = 0; u < units; u++) {
        struct insn head = {0};
        struct insn *tail = &head;
        for (int f = 0; f < 64; f++) {              /* functions of this unit */
            size_t budget = 200 + wl_below(&r, 800);
            struct node *tree = build(&r, 0, &budget);
            tail = lower(&r, tree, tail);
            free_tree(tree);
            summaries[nsum] = wl_xmalloc(16 + wl_below(&r, 200));
            summaries[nsum++][0] = (char)f;
        }
        /* dead-code elimination: unlink and free about a third */
        for (struct insn *p = &head; p->next;) {
            if (wl_below(&r, 3) == 0) {
                struct insn *d = p->next;
                p->next = d->next;
                sum += (uint64_t)d->nops;
                free(d->ops);
                free(d);
            } else {
                p = p->next;
            }
        }
        /* code emitted: the unit goes away at once */
        for (struct insn *p = head.next, *nx; p; p = nx) {
            nx = p->next;
            sum += (uint64_t)p->op + (unsigned char)p->text[0];
            free(p->ops);
            free(p);
        }
    }
    for (size_t i = 0; i < nsum; i++) {
        sum += (unsigned char)summaries[i][0];
        free(summaries[i]);
    }
    free(summaries);
    for (int b = 0; b < SYMTAB; b++)
        for (struct sym *s = symtab[b], *nx; s; s = nx) {
            nx = s->next;
            sum += s->hash;
            free(s);
        }
    wl_after_free();
    return wl_report("compiler", scale, sum);
}
