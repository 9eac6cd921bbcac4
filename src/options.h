/*
 * options.h - the one table of settings: each option's environment name,
 * default and range, written once (OPTIONS below); the enum, the defaults
 * in force before the environment is read and the parser all come from it.
 *
 * Invariants: options hold their defaults from the very first call; the
 * environment is read once it exists (options_load), then only mallopt
 * changes them.
 */
#ifndef MEMALLOC_OPTIONS_H
#define MEMALLOC_OPTIONS_H

#include "os.h"

/* X(id, environment name, default, min, max).  MALLOC_PERTURB_ is glibc's
 * name, honoured because `meson test` and glibc users expect it to
 * junk-fill memory. */
#define OPTIONS(X) \
    X(OPT_TRIM_THRESHOLD, "MEMALLOC_TRIM_THRESHOLD", 128 << 10, 0, PTRDIFF_MAX) \
        /* free top space that triggers a shrink */ \
    X(OPT_TOP_PAD, "MEMALLOC_TOP_PAD", 0, 0, PTRDIFF_MAX) \
        /* free top space kept after a shrink */ \
    X(OPT_STATS, "MEMALLOC_STATS", 0, 0, 1)             /* print statistics at exit */ \
    X(OPT_VERBOSE, "MEMALLOC_VERBOSE", 0, 0, 1)         /* warn about bad values etc. */ \
    X(OPT_PERTURB, "MALLOC_PERTURB_", 0, 0, 255)        /* glibc's junk byte */ \
    X(OPT_TCACHE, "MEMALLOC_TCACHE", 1, 0, 1)           /* per-thread caches on */ \
    X(OPT_PURGE_THRESHOLD, "MEMALLOC_PURGE_THRESHOLD", 2 << 20, 0, PTRDIFF_MAX) \
        /* free bytes that start a purge pass */ \
    X(OPT_PURGE_LAZY, "MEMALLOC_PURGE_LAZY", 0, 0, 1)   /* MADV_FREE, not DONTNEED */ \
    X(OPT_PURGE_SHARE, "MEMALLOC_PURGE_SHARE", 16, 0, 1 << 20) \
        /* passes at least live/N apart (0: off) */ \
    X(OPT_PURGE_DELAY, "MEMALLOC_PURGE_DELAY", 1000, 0, 1L << 40) \
        /* ms memory stays unused before a pass purges it */ \
    X(OPT_BACKGROUND, "MEMALLOC_BACKGROUND", 0, 0, 1)   /* a purging thread */ \
    X(OPT_RETAIN_MAX, "MEMALLOC_RETAIN_MAX", 32 << 20, 0, PTRDIFF_MAX) \
        /* cap of the top space kept after big frees */ \
    X(OPT_HARDEN, "MEMALLOC_HARDEN", 0, 0, 1)           /* hardened mode (harden.h) */ \
    X(OPT_QUARANTINE_BLOCKS, "MEMALLOC_QUARANTINE_BLOCKS", 1024, 0, 1 << 16) \
        /* hardened mode: freed small blocks a thread holds back from reuse ... */ \
    X(OPT_QUARANTINE_BYTES, "MEMALLOC_QUARANTINE_BYTES", 256 << 10, 0, PTRDIFF_MAX) \
        /* ... and their bytes at most */

#define OPTION_ID(id, env, def, min, max) id,
enum option_id { OPTIONS(OPTION_ID) OPT_COUNT };
#undef OPTION_ID

extern long memalloc_options[OPT_COUNT] HIDDEN;
static inline long option(enum option_id id) { return memalloc_options[id]; }
HIDDEN void option_set(enum option_id id, long value);
HIDDEN bool options_load(void);     /* false: no environment yet */

#endif /* MEMALLOC_OPTIONS_H */
