/*
 * operators.c - C++'s global operator new and operator delete, every
 * variant (plain, array, nothrow, sized, aligned), so that a C++ program's
 * allocations reach memalloc without libstdc++'s operator new in between
 * (which only calls malloc).  Built only into libmemalloc, like override.c.
 *
 * Written in C under their Itanium-ABI names (the same on x86-64 and
 * aarch64, where size_t and std::align_val_t are both unsigned long), so
 * that the library needs neither a C++ compiler nor libstdc++.  What only
 * libstdc++ can do, running the new-handler and throwing std::bad_alloc,
 * is reached through weak references: every program that calls operator
 * new has libstdc++ loaded, and if it somehow has not, a failed new stops
 * the process with a message instead of throwing.  An exception thrown from
 * here unwinds through this file's frames with the unwind tables that gcc
 * emits by default on both targets.
 *
 * Invariants: a throwing new never returns NULL; a nothrow new returns NULL
 * only when the allocation failed and no new-handler is installed; a delete
 * of NULL does nothing; a sized delete's size is checked in hardened mode
 * only (one predictable branch in the default mode).
 */
#define _GNU_SOURCE
#include <stddef.h>
#include <stdlib.h>

#include "harden.h"
#include "memalloc.h"

typedef void (*new_handler)(void);
extern new_handler cxx_get_new_handler(void) __asm__("_ZSt15get_new_handlerv") __attribute__((weak));
extern void cxx_throw_bad_alloc(void) __asm__("_ZSt17__throw_bad_allocv")
    __attribute__((weak, noreturn));

/* An allocation failed: run the program's new-handler, which may free
 * memory (true: try again), or report failure (false). */
static bool retry_after_handler(void)
{
    new_handler h = cxx_get_new_handler ? cxx_get_new_handler() : NULL;
    if (!h)
        return false;
    h();                            /* may throw, or exit */
    return true;
}

static NOINLINE void *new_failed(size_t n, size_t align, bool nothrow)
{
    for (;;) {
        if (!retry_after_handler())
            break;
        void *p = align ? memalloc_memalign(align, n) : memalloc_malloc(n);
        if (p)
            return p;
    }
    if (nothrow)
        return NULL;
    if (cxx_throw_bad_alloc)
        cxx_throw_bad_alloc();
    message("memalloc: operator new: out of memory and no std::bad_alloc to throw\n");
    abort();
}

static inline void *new_plain(size_t n, bool nothrow)
{
    void *p = memalloc_malloc(n);
    return likely(p != NULL) ? p : new_failed(n, 0, nothrow);
}

static inline void *new_aligned(size_t n, size_t align, bool nothrow)
{
    void *p = memalloc_memalign(align, n);
    return likely(p != NULL) ? p : new_failed(n, align, nothrow);
}

static inline void delete_sized(void *p, size_t n, size_t align)
{
    if (unlikely(hardened()) && p)
        harden_sized_delete(p, n, align);
    memalloc_free(p);
}

#define OP(ret, name, sym, params, body) \
    EXPORT ret name params __asm__(sym); \
    EXPORT ret name params body

/* new, new[] */
OP(void *, op_new, "_Znwm", (size_t n), { return new_plain(n, false); })
OP(void *, op_new_array, "_Znam", (size_t n), { return new_plain(n, false); })
OP(void *, op_new_nothrow, "_ZnwmRKSt9nothrow_t", (size_t n, const void *nt),
   { (void)nt; return new_plain(n, true); })
OP(void *, op_new_array_nothrow, "_ZnamRKSt9nothrow_t", (size_t n, const void *nt),
   { (void)nt; return new_plain(n, true); })
OP(void *, op_new_aligned, "_ZnwmSt11align_val_t", (size_t n, size_t al),
   { return new_aligned(n, al, false); })
OP(void *, op_new_array_aligned, "_ZnamSt11align_val_t", (size_t n, size_t al),
   { return new_aligned(n, al, false); })
OP(void *, op_new_aligned_nothrow, "_ZnwmSt11align_val_tRKSt9nothrow_t",
   (size_t n, size_t al, const void *nt), { (void)nt; return new_aligned(n, al, true); })
OP(void *, op_new_array_aligned_nothrow, "_ZnamSt11align_val_tRKSt9nothrow_t",
   (size_t n, size_t al, const void *nt), { (void)nt; return new_aligned(n, al, true); })

/* delete, delete[]: plain, sized, nothrow, aligned, aligned and sized,
 * aligned and nothrow */
OP(void, op_delete, "_ZdlPv", (void *p), { memalloc_free(p); })
OP(void, op_delete_array, "_ZdaPv", (void *p), { memalloc_free(p); })
OP(void, op_delete_sized, "_ZdlPvm", (void *p, size_t n), { delete_sized(p, n, 0); })
OP(void, op_delete_array_sized, "_ZdaPvm", (void *p, size_t n), { delete_sized(p, n, 0); })
OP(void, op_delete_nothrow, "_ZdlPvRKSt9nothrow_t", (void *p, const void *nt),
   { (void)nt; memalloc_free(p); })
OP(void, op_delete_array_nothrow, "_ZdaPvRKSt9nothrow_t", (void *p, const void *nt),
   { (void)nt; memalloc_free(p); })
OP(void, op_delete_aligned, "_ZdlPvSt11align_val_t", (void *p, size_t al),
   { (void)al; memalloc_free(p); })
OP(void, op_delete_array_aligned, "_ZdaPvSt11align_val_t", (void *p, size_t al),
   { (void)al; memalloc_free(p); })
OP(void, op_delete_sized_aligned, "_ZdlPvmSt11align_val_t", (void *p, size_t n, size_t al),
   { delete_sized(p, n, al); })
OP(void, op_delete_array_sized_aligned, "_ZdaPvmSt11align_val_t", (void *p, size_t n, size_t al),
   { delete_sized(p, n, al); })
OP(void, op_delete_aligned_nothrow, "_ZdlPvSt11align_val_tRKSt9nothrow_t",
   (void *p, size_t al, const void *nt), { (void)al; (void)nt; memalloc_free(p); })
OP(void, op_delete_array_aligned_nothrow, "_ZdaPvSt11align_val_tRKSt9nothrow_t",
   (void *p, size_t al, const void *nt), { (void)al; (void)nt; memalloc_free(p); })
