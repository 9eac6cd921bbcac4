// test_cxx.cc - C++'s operator new and delete, exported by libmemalloc
// (src/operators.c): every variant reaches memalloc, failures throw
// std::bad_alloc (after the new-handler) or return nullptr (nothrow), aligned
// new aligns, and sized and aligned deletes free what they are given.
// Run again with MEMALLOC_HARDEN=1 (test_cxx_harden): everything above must
// hold there too, and a sized delete with the wrong size stops the process
// with one "size mismatch" line (forked children).
// Linked with libmemalloc, which comes before libstdc++ in the lookup order,
// as it does when preloaded.
#include <dlfcn.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <new>
#include <vector>

#include "memalloc.h"

static int failures;
#define CHECK(cond, ...)                                              \
    do {                                                              \
        if (!(cond)) {                                                \
            fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);           \
            fprintf(stderr, __VA_ARGS__);                             \
            fputc('\n', stderr);                                      \
            failures++;                                               \
        }                                                             \
    } while (0)

static const char *defined_in(void *fn)
{
    Dl_info info;
    return dladdr(fn, &info) && info.dli_fname ? info.dli_fname : "?";
}

// What the program calls is memalloc's: the symbols resolve into
// libmemalloc, and the blocks are memalloc's (its usable size aborts on
// anything else).
static void test_resolved(void)
{
    void *(*op_new)(size_t) = &::operator new;
    void (*op_delete)(void *) = &::operator delete;
    void *(*op_new_aligned)(size_t, std::align_val_t) = &::operator new;
    void (*op_delete_sized)(void *, size_t) = &::operator delete;
    void *fns[] = {(void *)op_new, (void *)op_delete, (void *)op_new_aligned,
                   (void *)op_delete_sized};
    for (void *f : fns)
        CHECK(strstr(defined_in(f), "libmemalloc") != nullptr,
              "an operator resolves into %s, not libmemalloc", defined_in(f));
    for (size_t n : {1, 16, 100, 5000, 40000, 200000}) {
        char *p = new char[n];
        memset(p, 1, n);
        CHECK(memalloc_malloc_usable_size(p) >= n, "new char[%zu]: usable %zu", n,
              memalloc_malloc_usable_size(p));
        delete[] p;
        int *q = new int(7);
        CHECK(*q == 7 && memalloc_malloc_usable_size(q) >= sizeof(int), "new int");
        delete q;
    }
    void *z = ::operator new(0);
    CHECK(z != nullptr, "operator new(0) returned nullptr");
    ::operator delete(z);
}

static size_t huge(void) { return SIZE_MAX / 2; }   // no allocator can serve it

static int handler_calls;
static void handler(void)
{
    handler_calls++;
    std::set_new_handler(nullptr);  // the retry then fails for good
}

static void test_failure(void)
{
    bool threw = false;
    try {
        void *p = ::operator new(huge());
        ::operator delete(p);
    } catch (const std::bad_alloc &) {
        threw = true;
    }
    CHECK(threw, "operator new(huge) did not throw std::bad_alloc");

    threw = false;
    try {
        void *p = ::operator new[](huge(), std::align_val_t(64));
        ::operator delete[](p, std::align_val_t(64));
    } catch (const std::bad_alloc &) {
        threw = true;
    }
    CHECK(threw, "aligned operator new[](huge) did not throw std::bad_alloc");

    CHECK(::operator new(huge(), std::nothrow) == nullptr, "nothrow new(huge) returned memory");
    CHECK(::operator new[](huge(), std::align_val_t(128), std::nothrow) == nullptr,
          "nothrow aligned new[](huge) returned memory");

    std::set_new_handler(handler);
    threw = false;
    try {
        void *p = ::operator new(huge());
        ::operator delete(p);
    } catch (const std::bad_alloc &) {
        threw = true;
    }
    CHECK(threw && handler_calls == 1, "with a new-handler: threw %d, handler ran %d times",
          threw, handler_calls);
}

struct alignas(256) Wide { char c[300]; };

static void test_aligned_and_sized(void)
{
    for (size_t al : {32, 64, 4096, 65536}) {
        void *p = ::operator new(100, std::align_val_t(al));
        CHECK(((uintptr_t)p & (al - 1)) == 0, "new(100, align %zu) gave %p", al, p);
        memset(p, 2, 100);
        ::operator delete(p, 100, std::align_val_t(al));
        void *q = ::operator new[](3 * al, std::align_val_t(al), std::nothrow);
        CHECK(q && ((uintptr_t)q & (al - 1)) == 0, "nothrow new[](align %zu) gave %p", al, q);
        ::operator delete[](q, std::align_val_t(al), std::nothrow);
    }
    Wide *w = new Wide[5];
    CHECK(((uintptr_t)w & 255) == 0, "new Wide[5] (alignas 256) gave %p", (void *)w);
    delete[] w;
    Wide *one = new Wide;
    CHECK(((uintptr_t)one & 255) == 0, "new Wide gave %p", (void *)one);
    delete one;                     // sized and aligned delete
    for (size_t n = 8; n < 100000; n = n * 3 / 2) {
        void *p = ::operator new(n);
        ::operator delete(p, n);    // sized
        void *a = ::operator new[](n);
        ::operator delete[](a, n);
        void *b = ::operator new(n, std::nothrow);
        ::operator delete(b, std::nothrow);
    }
    ::operator delete(nullptr);
    ::operator delete[](nullptr, std::align_val_t(64));
}

// The containers' allocations, through the operators, with memalloc's
// invariants checked afterwards.
static void test_containers(void)
{
    std::vector<std::vector<int>> v;
    for (int i = 0; i < 2000; i++) {
        v.emplace_back(i % 300, i);
        if (i % 3 == 0)
            v[i / 2].clear(), v[i / 2].shrink_to_fit();
    }
    long sum = 0;
    for (auto &x : v)
        for (int y : x)
            sum += y;
    CHECK(sum > 0, "containers lost their contents");
    v.clear();
    v.shrink_to_fit();
    CHECK(memalloc_check() == 0, "memalloc_check found damage");
}

// In a child, with stderr into a pipe: new n bytes (aligned to al if al),
// then the sized delete with size m.  The child must die of SIGABRT with
// one line naming operator delete, "size mismatch" and the pointer.
static void mismatch_case(size_t n, size_t m, size_t al)
{
    int fds[2];
    if (pipe(fds) != 0)
        return;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 2);
        close(fds[0]);
        void *p = al ? ::operator new(n, std::align_val_t(al)) : ::operator new(n);
        dprintf(fds[1], "%p|", p);
        if (al)
            ::operator delete(p, m, std::align_val_t(al));
        else
            ::operator delete(p, m);
        _exit(0);
    }
    close(fds[1]);
    char buf[512];
    size_t len = 0;
    ssize_t r;
    while (len < sizeof buf - 1 && (r = read(fds[0], buf + len, sizeof buf - 1 - len)) > 0)
        len += (size_t)r;
    buf[len] = '\0';
    close(fds[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    char *bar = strchr(buf, '|');
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT,
          "delete of new(%zu) with size %zu (align %zu) was not stopped", n, m, al);
    if (bar) {
        *bar = '\0';
        const char *line = bar + 1;
        CHECK(strstr(line, "memalloc: operator delete(): size mismatch") &&
              strstr(line, buf) && strchr(line, '\n') == line + strlen(line) - 1,
              "delete of new(%zu) with size %zu: want one size-mismatch line naming %s, got: %s",
              n, m, buf, line);
    }
}

static void test_hardened_mismatch(void)
{
    mismatch_case(24, 200, 0);      // another class
    mismatch_case(200, 24, 0);
    mismatch_case(100, 1000, 64);
    mismatch_case(300000, 300016, 0);   // a large block's recorded size
    mismatch_case(300000, 100, 0);
    mismatch_case(100, 300000, 0);
}

int main()
{
    // Under valgrind (its preload is in LD_PRELOAD) memcheck puts its own
    // operator new in place: there is nothing of memalloc's to test.
    const char *pre = getenv("LD_PRELOAD");
    if (pre && strstr(pre, "vgpreload"))
        return 77;
    test_resolved();
    test_failure();
    test_aligned_and_sized();
    test_containers();
    const char *h = getenv("MEMALLOC_HARDEN");
    if (h && strcmp(h, "1") == 0)
        test_hardened_mismatch();
    if (failures)
        fprintf(stderr, "test_cxx: %d failure(s)\n", failures);
    return failures ? 1 : 0;
}
