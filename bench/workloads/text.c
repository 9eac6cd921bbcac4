/*
 * text.c - a string-heavy text processor: generate lines with a growing
 * string builder, split them into token strings, count words in a hash
 * table, rewrite each line (lowercase, substitutions) into new strings,
 * keep the rewritten document, then sort the vocabulary and format a
 * report.  The free phase drops the document, the table and the report.
 */
#include "wl.h"
#include <ctype.h>

struct sb { char *s; size_t len, cap; };

static void sb_put(struct sb *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t c = b->cap ? b->cap : 16;
        while (c < b->len + n + 1) c *= 2;
        char *p = realloc(b->s, c);
        if (!p) exit(2);
        b->s = p;
        b->cap = c;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = 0;
}

static char *xstrndup(const char *s, size_t n)
{
    char *p = wl_xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}

struct entry { struct entry *next; uint64_t hash; long count; char *word; };

#define BUCKETS 16384
static struct entry *table[BUCKETS];
static size_t nentries;

static void count(const char *w, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)w[i]) * 1099511628211ull;
    struct entry **pp = &table[h % BUCKETS];
    for (struct entry *e = *pp; e; e = e->next)
        if (e->hash == h && !strncmp(e->word, w, n) && !e->word[n]) { e->count++; return; }
    struct entry *e = wl_xmalloc(sizeof *e);
    e->hash = h;
    e->count = 1;
    e->word = xstrndup(w, n);
    e->next = *pp;
    *pp = e;
    nentries++;
}

static int by_count(const void *a, const void *b)
{
    const struct entry *x = *(struct entry *const *)a, *y = *(struct entry *const *)b;
    if (x->count != y->count) return x->count < y->count ? 1 : -1;
    return strcmp(x->word, y->word);
}

int main(int argc, char **argv)
{
    double scale = wl_scale(argc, argv);
    uint64_t r = 0x7e47, sum = 0;
    long lines = (long)(120000 * scale);
    char **doc = wl_xmalloc(sizeof(char *) * (size_t)(lines + 1));
    static const char *syll[] = {"ka", "to", "ri", "mel", "an", "dor", "us", "the", "qui",
                                 "ver", "so", "la", "pe", "nix", "ium", "st"};

    for (long l = 0; l < lines; l++) {
        /* generate a line word by word */
        struct sb line = {0};
        int words = 4 + (int)wl_below(&r, 20);
        for (int w = 0; w < words; w++) {
            int ns = 1 + (int)(wl_below(&r, 4) * wl_below(&r, 4) / 3);
            uint64_t z = wl_below(&r, 3000);      /* a Zipf-ish vocabulary */
            z = z * z / 3000;
            for (int s = 0; s < ns; s++) {
                const char *y = syll[(z >> (s * 4)) % 16];
                sb_put(&line, y, strlen(y));
            }
            if (w == 0) line.s[0] = (char)toupper((unsigned char)line.s[0]);
            sb_put(&line, w + 1 < words ? " " : ".", 1);
        }
        /* split into tokens */
        size_t ntok = 0, cap = 4;
        char **tok = wl_xmalloc(cap * sizeof *tok);
        for (char *p = line.s; *p;) {
            while (*p == ' ' || *p == '.') p++;
            char *q = p;
            while (*q && *q != ' ' && *q != '.') q++;
            if (q == p) break;
            if (ntok == cap) {
                cap *= 2;
                char **t = realloc(tok, cap * sizeof *t);
                if (!t) exit(2);
                tok = t;
            }
            tok[ntok++] = xstrndup(p, (size_t)(q - p));
            p = q;
        }
        /* normalise, count, and rewrite the line */
        struct sb out = {0};
        for (size_t i = 0; i < ntok; i++) {
            size_t n = strlen(tok[i]);
            char *low = xstrndup(tok[i], n);
            for (size_t k = 0; k < n; k++) low[k] = (char)tolower((unsigned char)low[k]);
            count(low, n);
            if (n > 6) {                      /* abbreviate long words */
                char *abbr = wl_xmalloc(8);
                snprintf(abbr, 8, "%.4s~%zu", low, n % 10);
                sb_put(&out, abbr, strlen(abbr));
                free(abbr);
            } else {
                sb_put(&out, low, n);
            }
            sb_put(&out, ",", 1);
            free(low);
            free(tok[i]);
        }
        free(tok);
        sum = sum * 31 + out.len + (unsigned char)out.s[0];
        doc[l] = out.s;                       /* the rewritten document stays */
        free(line.s);
    }

    /* report: the vocabulary sorted by frequency */
    struct entry **all = wl_xmalloc(nentries * sizeof *all);
    size_t k = 0;
    for (int b = 0; b < BUCKETS; b++)
        for (struct entry *e = table[b]; e; e = e->next) all[k++] = e;
    qsort(all, nentries, sizeof *all, by_count);
    char **report = wl_xmalloc(nentries * sizeof *report);
    for (size_t i = 0; i < nentries; i++) {
        size_t n = strlen(all[i]->word) + 24;
        report[i] = wl_xmalloc(n);
        snprintf(report[i], n, "%s %ld", all[i]->word, all[i]->count);
        sum = sum * 31 + (unsigned char)report[i][0] + (uint64_t)all[i]->count;
    }
    for (size_t i = 0; i < nentries; i++) {
        free(report[i]);
        free(all[i]->word);
        free(all[i]);
    }
    free(report);
    free(all);
    for (long l = 0; l < lines; l++) {
        sum += (unsigned char)doc[l][1];
        free(doc[l]);
    }
    free(doc);
    wl_after_free();
    return wl_report("text", scale, sum);
}
