/*
 * test_misuse.c - bad pointers abort with one clear line.  Each misuse runs
 * in a forked child whose stderr goes to a pipe: double free (small, small
 * with neighbours in use, large pinned, large on top), free of a stack
 * pointer, a global, a pointer from glibc's malloc, interior pointers (p+16
 * of a small block, p+4096 and p+64 KiB of a large one), misaligned p+1, a
 * never-handed-out block of a chunk, wild pointers inside the heap range,
 * and realloc / malloc_usable_size of such pointers.  The child must die of
 * SIGABRT having written exactly one line that holds "memalloc:", the
 * function's name with "()" and the pointer as %p prints it.  free(NULL)
 * and the like must not abort.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "memalloc.h"
#include "check.h"

enum action {
    A_FREE,             /* free(p) */
    A_DOUBLE_FREE,      /* free(p); free(p) */
    A_FREE_THEN_REALLOC,/* free(p); realloc(p, 10) */
    A_FREE_THEN_USABLE, /* free(p); malloc_usable_size(p) */
    A_REALLOC,          /* realloc(p, 100) */
    A_REALLOC_BIG,      /* realloc(p, 1 MiB) */
    A_USABLE,           /* malloc_usable_size(p) */
    A_LINK_ZERO,        /* free(q); free(p); p[0] = 0; malloc twice */
    A_LINK_POINTER,     /* the same, writing a heap pointer into p[0] */
};

static const char *const func_of[] = {
    [A_FREE] = "free()", [A_DOUBLE_FREE] = "free()", [A_FREE_THEN_REALLOC] = "realloc()",
    [A_FREE_THEN_USABLE] = "malloc_usable_size()", [A_REALLOC] = "realloc()",
    [A_REALLOC_BIG] = "realloc()", [A_USABLE] = "malloc_usable_size()",
    [A_LINK_ZERO] = "malloc()", [A_LINK_POINTER] = "malloc()",
};

static void corrupt_link(void *p, void *value);

static void act(enum action a, void *p)
{
    void *volatile r = NULL;
    switch (a) {
    case A_LINK_ZERO:
        corrupt_link(p, NULL);
        break;
    case A_LINK_POINTER:
        corrupt_link(p, p);
        break;
    case A_FREE:
        memalloc_free(p);
        break;
    case A_DOUBLE_FREE:
        memalloc_free(p);
        memalloc_free(p);
        break;
    case A_FREE_THEN_REALLOC:
        memalloc_free(p);
        r = memalloc_realloc(p, 10);
        break;
    case A_FREE_THEN_USABLE:
        memalloc_free(p);
        r = (void *)memalloc_malloc_usable_size(p);
        break;
    case A_REALLOC:
        r = memalloc_realloc(p, 100);
        break;
    case A_REALLOC_BIG:
        r = memalloc_realloc(p, 1 << 20);
        break;
    case A_USABLE:
        r = (void *)memalloc_malloc_usable_size(p);
        break;
    }
    (void)r;
}

/* A use-after-free write over the link of the block on top of a thread
 * cache bin: the next malloc of the class must stop, naming the block,
 * rather than return whatever the program wrote. */
static void corrupt_link(void *p, void *value)
{
    void *q = memalloc_malloc(64);
    memalloc_free(q);
    memalloc_free(p);
    *(void *volatile *)p = value;
    void *volatile r = memalloc_malloc(64);
    r = memalloc_malloc(64);
    (void)r;
}

static void act_any(int a, void *p) { act((enum action)a, p); }

/* Run the misuse in a child; `p` is the pointer that must be reported (for a
 * double free, the block freed twice). */
static void expect_abort(const char *what, enum action a, void *p, int line)
{
    char out[1024];
    size_t len;
    int st = run_captured(act_any, (int)a, p, out, sizeof out, &len);
    if (!(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT)) {
        fprintf(stderr, "%s:%d: FAIL: %s (%s %p): child %s %d, not SIGABRT; stderr: \"%s\"\n",
                __FILE__, line, what, func_of[a], p, CHILD_HOW(st), out);
        failures++;
        return;
    }
    if (!abort_line_ok(out, len, func_of[a], p)) {
        fprintf(stderr, "%s:%d: FAIL: %s: message \"%s\" should be one line with "
                "\"memalloc:\", \"%s\" and %p\n", __FILE__, line, what, out, func_of[a], p);
        failures++;
    }
}

#define EXPECT_ABORT(what, a, p) expect_abort(what, a, p, __LINE__)

static char global_buf[256] __attribute__((aligned(64)));

int main(void)
{
    /* Harmless calls first: none of these may abort. */
    memalloc_free(NULL);
    void *r0 = memalloc_realloc(NULL, 0);
    memalloc_free(r0);
    CHECK(memalloc_malloc_usable_size(NULL) == 0, "malloc_usable_size(NULL) != 0");

    /* Blocks the misuses work on, set up in the parent so the child has the
     * same addresses. */
    void *small = memalloc_malloc(100);           /* class 112: p+16 is interior */
    void *small2 = memalloc_malloc(100);
    void *neigh[8];
    for (int i = 0; i < 8; i++)
        neigh[i] = memalloc_malloc(100);
    void *large = memalloc_malloc(300 * KiB);
    void *pin = memalloc_malloc(200 * KiB);       /* keeps `large` below the top */
    void *gap = memalloc_malloc(400 * KiB);
    void *pin2 = memalloc_malloc(1000 * KiB);
    void *top = memalloc_malloc(500 * KiB);       /* the highest block */
    if (!small || !small2 || !large || !pin || !gap || !pin2 || !top) {
        fprintf(stderr, "%s:%d: FAIL: setup allocation failed\n", __FILE__, __LINE__);
        return 1;
    }
    memalloc_free(gap);                           /* a free span in the middle */
    char *glibc_block = malloc(64);               /* glibc's malloc, on purpose */
    char stack_buf[64] __attribute__((aligned(64)));
    memset(stack_buf, 0, sizeof stack_buf);

    /* double free */
    EXPECT_ABORT("double free of a small block", A_DOUBLE_FREE, small);
    EXPECT_ABORT("double free of a small block with neighbours", A_DOUBLE_FREE, neigh[3]);
    EXPECT_ABORT("double free of a pinned large block", A_DOUBLE_FREE, large);
    EXPECT_ABORT("double free of the top large block", A_DOUBLE_FREE, top);
    EXPECT_ABORT("realloc after free (large)", A_FREE_THEN_REALLOC, large);
    EXPECT_ABORT("malloc_usable_size after free (large)", A_FREE_THEN_USABLE, large);
    EXPECT_ABORT("free of a freed block in a free span", A_FREE, gap);
    /* A freed small block sits in the thread cache, where its chunk still
     * counts it as in use: realloc and usable-size must still notice. */
    EXPECT_ABORT("realloc after free (small, cached)", A_FREE_THEN_REALLOC, small2);
    EXPECT_ABORT("malloc_usable_size after free (small, cached)", A_FREE_THEN_USABLE, small2);

    /* overwritten free-list links (only thread caches keep lists) */
    const char *tc = getenv("MEMALLOC_TCACHE");
    if (!tc || strcmp(tc, "0") != 0) {
        void *linked = memalloc_malloc(64);
        EXPECT_ABORT("a zero written over a cached block's link", A_LINK_ZERO, linked);
        EXPECT_ABORT("a heap pointer written over a cached block's link", A_LINK_POINTER, linked);
        memalloc_free(linked);
    }

    /* pointers memalloc never handed out */
    void *bad[] = {
        stack_buf, stack_buf + 16, global_buf, global_buf + 16, glibc_block,
        (char *)small + 16, (char *)small + 1, (char *)small + 8,
        (char *)small2 + 112 * 400,                /* a block never carved */
        (char *)large + 16, (char *)large + 4096, (char *)large + 1,
        (char *)large + 64 * KiB, (char *)large - 64, (char *)large + 64 * KiB - 64,
        (char *)pin2 + 3 * 64 * KiB + 48, (char *)pin2 - 64 + 5 * 64 * KiB,
        (char *)gap - 64 + 2 * 64 * KiB, (char *)gap + 64 * KiB + 32,
    };
    static const char *const bad_name[] = {
        "stack pointer", "stack pointer + 16", "global", "global + 16", "glibc malloc block",
        "small + 16 (interior)", "small + 1 (misaligned)", "small + 8 (misaligned)",
        "never-carved block of a chunk",
        "large + 16 (interior)", "large + 4096 (interior)", "large + 1 (misaligned)",
        "large + 64 KiB (interior, unit boundary)", "large - 64 (its header)",
        "large + 64 KiB - 64 (interior)",
        "wild: inside a large block's third unit", "wild: unit boundary inside a large block",
        "wild: unit boundary inside a free span", "wild: inside a free span",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        EXPECT_ABORT(bad_name[i], A_FREE, bad[i]);
        EXPECT_ABORT(bad_name[i], A_REALLOC, bad[i]);
        EXPECT_ABORT(bad_name[i], A_REALLOC_BIG, bad[i]);
        EXPECT_ABORT(bad_name[i], A_USABLE, bad[i]);
    }

    /* The parent is untouched by all that: its blocks are still good. */
    memalloc_free(small);
    memalloc_free(small2);
    for (int i = 0; i < 8; i++)
        memalloc_free(neigh[i]);
    memalloc_free(large);
    memalloc_free(pin);
    memalloc_free(pin2);
    memalloc_free(top);
    free(glibc_block);
    int bad_count = memalloc_check();
    CHECK(bad_count == 0, "memalloc_check() == %d at the end", bad_count);
    return check_report("test_misuse");
}
