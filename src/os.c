/*
 * os.c - the only file that talks to the system: the break and the
 * address-space reservation above it, the page size and madvise, the
 * clock, AT_RANDOM, the environment, error messages, locks, fork
 * registration and the background thread's start.
 *
 * Invariants: nothing here calls malloc or memalloc's other files;
 * messages are formatted into stack buffers and written with write(2).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <signal.h>
#include <sys/single_threaded.h>
#include <time.h>
#include <unistd.h>

#include "os.h"

/* The one seam for Valgrind: memcheck treats memory added to the break as
 * undefined, but the kernel hands it out zeroed and memalloc relies on that
 * (fresh chunk bitmaps, calloc skipping fresh pages). */
#if defined(__has_include)
#if __has_include(<valgrind/memcheck.h>)
#include <valgrind/memcheck.h>
#endif
#endif
#ifndef VALGRIND_MAKE_MEM_DEFINED
#define VALGRIND_MAKE_MEM_DEFINED(addr, len) ((void)(addr), (void)(len))
#endif
#ifndef RUNNING_ON_VALGRIND
#define RUNNING_ON_VALGRIND 0
#endif

/* ---- pages -------------------------------------------------------------- */

/* 4096 until os_init() runs; nothing is purged or page-aligned before. */
size_t memalloc_os_page HIDDEN = 4096;

/* The page size in force: the kernel's, or the build's MEMALLOC_FORCE_PAGE
 * (meson -Dpage_size=N) when that is bigger, so that the whole suite can
 * run as if on a 16 or 64 KiB kernel.  Below OS_PAGE_MIN or not a power of
 * two is not a page size Linux uses; aarch64 kernels use 4, 16 or 64 KiB. */
void os_init(void)
{
    size_t page = (size_t)getauxval(AT_PAGESZ);
    if (page == 0)
        page = (size_t)sysconf(_SC_PAGESIZE);
#ifdef MEMALLOC_FORCE_PAGE
    if (page < MEMALLOC_FORCE_PAGE)
        page = MEMALLOC_FORCE_PAGE;
#endif
    if (page < OS_PAGE_MIN || (page & (page - 1)) != 0)
        page = OS_PAGE_MIN;
    memalloc_os_page = page;
}

/* Give [from, from + len) back to the kernel, rounded inward to whole
 * pages: madvise needs an aligned start and rounds the length up, so an
 * unrounded range would zap live data sharing the last page.  Returns the
 * bytes given back (0 when no whole page fits or madvise failed, and on a
 * kernel whose pages are bigger than OS_PAGE_MAX, which purges nothing). */
size_t os_purge(void *from, size_t len, bool lazy)
{
    size_t page = os_page();
    uintptr_t a = ((uintptr_t)from + page - 1) & ~(page - 1);
    uintptr_t b = ((uintptr_t)from + len) & ~(page - 1);
    if (page > OS_PAGE_MAX || b <= a)
        return 0;
    if (madvise((void *)a, b - a, lazy ? MADV_FREE : MADV_DONTNEED) != 0)
        return 0;
    return b - a;
}

bool os_protect(void *from, size_t len, bool access)
{
    return mprotect(from, len, access ? PROT_READ | PROT_WRITE : PROT_NONE) == 0;
}

/* Only a hint: the kernel puts mappings where it likes, and valgrind's
 * brk grows into whatever lies above the break. */
void *os_reserve_none(size_t len, uintptr_t above)
{
    void *p = mmap((void *)above, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    if ((uintptr_t)p < above) {
        munmap(p, len);
        return NULL;
    }
    return p;
}

/* ---- the break and the reservation above it ------------------------------ */

/*
 * The address space right above the break is reserved with a PROT_NONE,
 * MAP_NORESERVE mapping: it obtains no memory (no RSS, no commit charge,
 * not counted in RLIMIT_DATA), but nobody else's mmap can land there.
 * Without it, a mapping placed at the break (V8's code range under a
 * non-PIE node, LuaJIT, JVMs) stops the heap for good, since sbrk is the
 * only source of memory.  To grow, the bottom slice of the reservation is
 * unmapped and sbrk moves into it; after a shrink the freed range is
 * reserved again.  The kernel wants one page between the break and the
 * next mapping, so the reservation starts a page above the break.
 *
 * The reservation covers RESERVE_BYTES (capped at an eighth of RLIMIT_AS,
 * which does count it) and is extended at its top by that much beyond
 * what a growth needs when the heap reaches it.  If something already sits
 * above the break (or above the top), a smaller reservation up to it is
 * taken, or none.
 *
 * Callers serialise: every call comes from heap.c with the heap lock held.
 */
#define RESERVE_BYTES ((size_t)4 << 30)
#define RESERVE_MIN ((size_t)1 << 20)
static uintptr_t res_lo, res_hi;    /* [res_lo, res_hi) is reserved; 0, 0: none */
static size_t res_step;             /* the first reservation's length: each extension's */
static bool res_tried, res_doubted; /* reserved once; asked once whether it blocks sbrk */
extern void *__sbrk(intptr_t delta);    /* glibc's, which our sbrk() wraps */

static inline uintptr_t page_up(uintptr_t a)
{
    return (a + os_page() - 1) & ~(os_page() - 1);
}

/* Reserve exactly [at, at + len) or nothing.  A kernel older than 4.17
 * treats MAP_FIXED_NOREPLACE as a hint, hence the address check. */
static bool reserve(uintptr_t at, size_t len)
{
    void *p = mmap((void *)at, len, PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
    if (p == MAP_FAILED)
        return false;
    if (p != (void *)at) {
        munmap(p, len);
        return false;
    }
    return true;
}

static void reserve_first(uintptr_t brk)
{
    res_tried = true;
    /* Valgrind keeps the client's break in a range of its own that a
     * mapping there would break for good; its break is small anyway.  Its
     * preloaded core library tells, in builds without its headers too. */
    const char *preload = getenv("LD_PRELOAD");
    if (RUNNING_ON_VALGRIND || (preload && strstr(preload, "vgpreload_")))
        return;
    size_t len = RESERVE_BYTES;
    struct rlimit rl;
    if (getrlimit(RLIMIT_AS, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        rl.rlim_cur / 8 < len)
        len = (size_t)(rl.rlim_cur / 8) & ~(os_page() - 1);
    uintptr_t at = page_up(brk) + os_page();
    for (; len >= RESERVE_MIN; len = (len / 2) & ~(os_page() - 1))
        if (reserve(at, len)) {
            res_lo = at;
            res_hi = at + len;
            res_step = len;
            return;
        }
}

/* Extend the reservation at its top by what a growth to `need` lacks plus
 * one step, or by less, down to just what it lacks. */
static void extend(uintptr_t need)
{
    size_t lack = page_up(need - res_hi);
    for (size_t len = lack + res_step; len >= lack; len = lack + ((len - lack) / 2 & ~(os_page() - 1))) {
        if (reserve(res_hi, len)) {
            res_hi += len;
            return;
        }
        if (len == lack)
            return;
    }
}

/* Before the break grows from cur by delta: move the bottom of the
 * reservation out of the way, extending it first if the growth reaches its
 * top.  [*from, returned) is what was unmapped, to take back on failure. */
static uintptr_t make_room(uintptr_t cur, size_t delta, uintptr_t *from)
{
    *from = res_lo;
    if (!res_lo || cur > (uintptr_t)PTRDIFF_MAX - delta)
        return res_lo;
    uintptr_t need = page_up(cur + delta) + os_page();
    if (need <= res_lo)
        return res_lo;
    if (need > res_hi)
        extend(need);
    uintptr_t cut = need < res_hi ? need : res_hi;
    munmap((void *)res_lo, cut - res_lo);
    res_lo = cut;
    if (res_lo == res_hi)
        res_lo = res_hi = 0;        /* used up: something sits right above it */
    return cut;
}

/* How much address space is reserved above the break now. */
size_t os_reserved(void)
{
    return res_hi - res_lo;
}

/* Reserve above the break now, if not done yet. */
void raw_reserve(void)
{
    if (!res_tried)
        reserve_first((uintptr_t)__sbrk(0));
}

/* Our sbrk, glibc's underneath (it keeps glibc's cached break right):
 * grows into the reservation, and reserves what a shrink gave back. */
void *raw_sbrk(intptr_t delta)
{
    uintptr_t cur = (uintptr_t)__sbrk(0), from = 0, cut = 0;
    if (delta > 0) {
        if (!res_tried)
            reserve_first(cur);
        cut = make_room(cur, (size_t)delta, &from);
    }
    void *old = __sbrk(delta);
    if (old == (void *)-1 && delta > 0) {
        if (from && from < cut && reserve(from, cut - from)) {
            if (!res_lo)
                res_hi = cut;
            res_lo = from;
        }
        /* Was the reservation itself in the way?  An emulator may keep a
         * limit of its own on the break, and a reservation placed inside
         * it blocks growth: then do without one.  Asked once: after that a
         * failure is the kernel's answer (RLIMIT_DATA, say). */
        uintptr_t lo = res_lo, hi = res_hi;
        if (lo && !res_doubted && munmap((void *)lo, hi - lo) == 0) {
            res_doubted = true;
            old = __sbrk(delta);
            if (old == (void *)-1 && reserve(lo, hi - lo))
                return old;
            res_lo = res_hi = 0;
        }
        if (old == (void *)-1)
            return old;
    }
    if (delta > 0) {
        VALGRIND_MAKE_MEM_DEFINED(old, (size_t)delta);
    } else if (delta < 0 && res_lo && old != (void *)-1) {
        uintptr_t want = page_up((uintptr_t)old + (uintptr_t)delta) + os_page();
        if (want < res_lo && reserve(want, res_lo - want))
            res_lo = want;
    }
    return old;
}
void *raw_break(void) { return __sbrk(0); }

/* ---- time, randomness, environment ------------------------------------------ */

/* The coarse clock is read from the vDSO without a system call; its few
 * milliseconds of resolution are plenty for purge delays. */
uint64_t os_now_ms(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC_COARSE, &ts) != 0)
        clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* A one-way mix of 64 bits (the splitmix64 finaliser): what memalloc
 * stores in free blocks must not give away AT_RANDOM's bytes, which glibc
 * uses as the stack canary and the pointer guard. */
static uint64_t mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Each call mixes in a counter, so that two secrets drawn from it differ. */
uint64_t os_random(void)
{
    static uint64_t calls;
    uint64_t half[2] = {0, 0};
    const void *rnd = (const void *)getauxval(AT_RANDOM);
    if (rnd)
        memcpy(half, rnd, sizeof half);     /* AT_RANDOM is not aligned */
    uint64_t n = __atomic_add_fetch(&calls, 1, __ATOMIC_RELAXED);
    return mix(half[0] ^ mix(half[1] ^ (uintptr_t)&calls) ^ mix(n));
}

/* The loader may call malloc before libc has set up the environment; then
 * there is none to read yet.  getenv never allocates. */
extern char **__environ;
bool os_env_ready(void) { return __environ != NULL; }
const char *os_getenv(const char *name) { return getenv(name); }

/* ---- messages ----------------------------------------------------------- */

size_t fmt_unsigned(char *buf, size_t v)
{
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        buf[i] = tmp[n - 1 - i];
    return n;
}

static size_t fmt_hex(char *buf, uintptr_t v)
{
    static const char digits[] = "0123456789abcdef";
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = digits[v & 15];
        v >>= 4;
    } while (v);
    buf[0] = '0';
    buf[1] = 'x';
    for (size_t i = 0; i < n; i++)
        buf[2 + i] = tmp[n - 1 - i];
    return n + 2;
}

static size_t append(char *buf, size_t at, size_t cap, const char *s)
{
    size_t len = strlen(s);
    if (at + len > cap)
        len = cap - at;
    memcpy(buf + at, s, len);
    return at + len;
}

/* Not a cancellation point (write(2) is one), as glibc's reports are not:
 * a thread with a cancel pending still prints the whole line. */
void message(const char *text)
{
    size_t len = strlen(text);
    int cancel_state;
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel_state);
    while (len > 0) {
        ssize_t w = write(STDERR_FILENO, text, len);
        if (w <= 0 && errno != EINTR)
            break;
        if (w > 0) {
            text += w;
            len -= (size_t)w;
        }
    }
    pthread_setcancelstate(cancel_state, NULL);
}

/* "memalloc: free(): double free 0x5555...": one line, then abort().  The
 * caller has released its locks, so a SIGABRT handler that allocates does
 * not deadlock. */
void fatal_pointer(const char *func, const char *what, const void *p)
{
    char buf[256];
    size_t n = append(buf, 0, sizeof buf - 24, "memalloc: ");
    n = append(buf, n, sizeof buf - 24, func);
    n = append(buf, n, sizeof buf - 24, "(): ");
    n = append(buf, n, sizeof buf - 24, what);
    buf[n++] = ' ';
    n += fmt_hex(buf + n, (uintptr_t)p);
    buf[n++] = '\n';
    buf[n] = '\0';
    message(buf);
    abort();
}

/* ---- locks, fork, threads ------------------------------------------------ */

/* Every allocator lock spins a little before it sleeps (glibc's adaptive
 * mutex): what it guards takes well under a microsecond, less than a futex
 * sleep and wake-up, so a thread that finds it taken is better off waiting
 * on the CPU. 
 * Initialising one allocates nothing. */
void lock_init(pthread_mutex_t *m)
{
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_settype(&a, PTHREAD_MUTEX_ADAPTIVE_NP);
    pthread_mutex_init(m, &a);
    pthread_mutexattr_destroy(&a);
}

/* glibc takes its stdio list lock after running the prepare handlers; the
 * prepare handler takes it first (init.c says why). */
extern void _IO_list_lock(void) __attribute__((weak));
extern void _IO_list_unlock(void) __attribute__((weak));
void os_stdio_lock(void) { if (_IO_list_lock) _IO_list_lock(); }
void os_stdio_unlock(void) { if (_IO_list_unlock) _IO_list_unlock(); }

bool os_single_threaded(void) { return __libc_single_threaded; }

void os_atfork(void (*prepare)(void), void (*parent)(void), void (*child)(void))
{
    pthread_atfork(prepare, parent, child);
}

/* A detached thread that takes no signal meant for the program: it
 * inherits the mask in force while it is created. */
bool os_thread_start(void *(*fn)(void *))
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    pthread_t t;
    bool ok = pthread_create(&t, &a, fn, NULL) == 0;
    pthread_attr_destroy(&a);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return ok;
}

void os_sleep_ms(uint64_t ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}
