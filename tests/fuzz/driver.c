/*
 * driver.c - the standalone driver for a fuzz target when it is not built
 * with -fsanitize=fuzzer: replays every corpus file or directory given,
 * then runs fresh inputs (random, or mutated corpus inputs) from a seeded
 * PRNG for --seconds S or --runs N.
 *
 *   driver [--seed N] [--seconds S] [--runs N] [--max-len L]
 *          [--artifacts DIR] [CORPUS_FILE_OR_DIR...]
 *
 * A fresh input is written to DIR/crash-<seed>-<n> before it runs and
 * removed once it passed, so when the target aborts (or the process is
 * killed on a hang) the input is already on disk as a regression input.
 * Exit status 0 when every input passed; the target aborts otherwise.
 * Under valgrind it skips (77): its simulated break is too small for
 * the big blocks the targets ask for.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The input running now, for the abort handler's one line. */
static char current[4096];

static void on_fatal(int sig)
{
    static const char pre[] = "driver: failing input: ";
    if (write(2, pre, sizeof pre - 1) < 0 || write(2, current, strlen(current)) < 0 ||
        write(2, "\n", 1) < 0) {
        /* nothing else to try */
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

static uint64_t rng_state;

static uint64_t rng(void)     /* xorshift64* */
{
    uint64_t x = rng_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* The corpus, kept for replay and as material for mutations. */
struct input {
    uint8_t *data;
    size_t size;
};
static struct input *corpus;
static size_t ncorpus, corpus_cap;

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "driver: out of memory\n");
        exit(2);
    }
    return p;
}

static int load_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "driver: %s: %s\n", path, strerror(errno));
        return -1;
    }
    size_t cap = 4096, len = 0;
    uint8_t *buf = xmalloc(cap);
    size_t got;
    while ((got = fread(buf + len, 1, cap - len, f)) > 0) {
        len += got;
        if (len == cap) {
            uint8_t *nb = realloc(buf, cap * 2);
            if (!nb) {
                fprintf(stderr, "driver: out of memory\n");
                exit(2);
            }
            buf = nb;
            cap *= 2;
        }
    }
    fclose(f);
    if (ncorpus == corpus_cap) {
        corpus_cap = corpus_cap ? corpus_cap * 2 : 64;
        struct input *nc = realloc(corpus, corpus_cap * sizeof *corpus);
        if (!nc) {
            fprintf(stderr, "driver: out of memory\n");
            exit(2);
        }
        corpus = nc;
    }
    corpus[ncorpus].data = buf;
    corpus[ncorpus].size = len;
    ncorpus++;
    /* Replay as we load: a failing file is named by the handler. */
    snprintf(current, sizeof current, "%s", path);
    LLVMFuzzerTestOneInput(buf, len);
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A directory's regular files, in name order (a stable replay order). */
static int load_path(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "driver: %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode))
        return load_file(path);
    DIR *d = opendir(path);
    if (!d) {
        fprintf(stderr, "driver: %s: %s\n", path, strerror(errno));
        return -1;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            char **nn = realloc(names, cap * sizeof *names);
            if (!nn) {
                fprintf(stderr, "driver: out of memory\n");
                exit(2);
            }
            names = nn;
        }
        names[n] = xmalloc(strlen(path) + strlen(e->d_name) + 2);
        sprintf(names[n], "%s/%s", path, e->d_name);
        n++;
    }
    closedir(d);
    qsort(names, n, sizeof *names, cmp_str);
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        if (stat(names[i], &st) == 0 && S_ISREG(st.st_mode) && load_file(names[i]) != 0)
            rc = -1;
        free(names[i]);
    }
    free(names);
    return rc;
}

/* A fresh input: random bytes, or a corpus input with a few mutations
 * (byte flips, random bytes, a copied run, a splice with another one). */
static size_t make_input(uint8_t *buf, size_t max_len)
{
    size_t len;
    if (ncorpus == 0 || rng() % 2 == 0) {
        /* Mostly short inputs; now and then a long one. */
        size_t lim = rng() % 4 == 0 ? max_len : (max_len < 256 ? max_len : 256);
        len = 1 + rng() % lim;
        for (size_t i = 0; i < len; i++)
            buf[i] = (uint8_t)rng();
        return len;
    }
    const struct input *a = &corpus[rng() % ncorpus];
    len = a->size < max_len ? a->size : max_len;
    memcpy(buf, a->data, len);
    unsigned muts = 1 + rng() % 8;
    for (unsigned m = 0; m < muts; m++) {
        switch (rng() % 5) {
        case 0:
            if (len)
                buf[rng() % len] ^= (uint8_t)(1u << (rng() % 8));
            break;
        case 1:
            if (len)
                buf[rng() % len] = (uint8_t)rng();
            break;
        case 2:             /* append random bytes */
            for (unsigned k = 1 + rng() % 16; k-- && len < max_len;)
                buf[len++] = (uint8_t)rng();
            break;
        case 3:             /* copy a run within the input */
            if (len > 2) {
                size_t from = rng() % len, to = rng() % len, n = 1 + rng() % (len / 2);
                if (from + n > len)
                    n = len - from;
                if (to + n > max_len)
                    n = max_len - to;
                memmove(buf + to, buf + from, n);
                if (to + n > len)
                    len = to + n;
            }
            break;
        default: {          /* splice: our head, another input's tail */
            const struct input *b = &corpus[rng() % ncorpus];
            size_t cut = len ? rng() % len : 0, from = b->size ? rng() % b->size : 0;
            size_t n = b->size - from;
            if (cut + n > max_len)
                n = max_len - cut;
            memcpy(buf + cut, b->data + from, n);
            len = cut + n;
            break;
        }
        }
    }
    return len ? len : 1;
}

static void usage(void)
{
    fprintf(stderr, "usage: driver [--seed N] [--seconds S] [--runs N] [--max-len L] "
                    "[--artifacts DIR] [CORPUS...]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *pre = getenv("LD_PRELOAD");
    if (pre && strstr(pre, "vgpreload")) {
        fprintf(stderr, "driver: skipped under valgrind (its simulated break is too small)\n");
        return 77;
    }
    uint64_t seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    double seconds = 0;
    unsigned long runs = 0;
    size_t max_len = 4096;
    const char *artifacts = ".";
    int first_path = argc;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 < argc && !strcmp(a, "--seed"))
            seed = strtoull(argv[++i], NULL, 0);
        else if (i + 1 < argc && !strcmp(a, "--seconds"))
            seconds = atof(argv[++i]);
        else if (i + 1 < argc && !strcmp(a, "--runs"))
            runs = strtoul(argv[++i], NULL, 0);
        else if (i + 1 < argc && !strcmp(a, "--max-len"))
            max_len = strtoul(argv[++i], NULL, 0);
        else if (i + 1 < argc && !strcmp(a, "--artifacts"))
            artifacts = argv[++i];
        else if (a[0] == '-')
            usage();
        else {
            first_path = i;
            break;
        }
    }
    if (max_len == 0)
        usage();
    signal(SIGABRT, on_fatal);
    signal(SIGSEGV, on_fatal);
    signal(SIGBUS, on_fatal);

    double t0 = now();
    for (int i = first_path; i < argc; i++)
        if (load_path(argv[i]) != 0)
            return 2;
    printf("driver: replayed %zu corpus inputs\n", ncorpus);
    fflush(stdout);
    if (seconds <= 0 && runs == 0)
        return 0;

    if (mkdir(artifacts, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "driver: %s: %s\n", artifacts, strerror(errno));
        return 2;
    }
    printf("driver: seed %llu\n", (unsigned long long)seed);
    fflush(stdout);
    rng_state = seed ? seed : 1;
    uint8_t *buf = xmalloc(max_len);
    unsigned long n = 0;
    double t1 = now();
    while ((runs == 0 || n < runs) && (seconds <= 0 || now() - t1 < seconds)) {
        size_t len = make_input(buf, max_len);
        snprintf(current, sizeof current, "%s/crash-%llu-%lu", artifacts,
                 (unsigned long long)seed, n);
        int fd = open(current, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0 || write(fd, buf, len) != (ssize_t)len || close(fd) != 0) {
            fprintf(stderr, "driver: cannot write %s: %s\n", current, strerror(errno));
            return 2;
        }
        LLVMFuzzerTestOneInput(buf, len);
        unlink(current);
        n++;
    }
    double t2 = now();
    printf("driver: executions %lu in %.1f s (seed %llu), corpus replay %.1f s\n", n, t2 - t1,
           (unsigned long long)seed, t1 - t0);
    free(buf);
    for (size_t i = 0; i < ncorpus; i++)
        free(corpus[i].data);
    free(corpus);
    return 0;
}
