/*
 * harden.h - the hardened mode (MEMALLOC_HARDEN=1, harden.c): canaries
 * after small blocks, blocks zeroed when freed and checked when handed
 * out again, a FIFO quarantine of freed small blocks in each thread, and
 * every small free decided by its chunk's live map.
 *
 * Invariants: the mode is chosen once, before the first block is handed
 * out, and never changes; in it the hot paths see the always-empty cache
 * (as they do for MALLOC_PERTURB_), so the default mode pays nothing for
 * the checks.
 */
#ifndef MEMALLOC_HARDEN_H
#define MEMALLOC_HARDEN_H

#include "chunk.h"
#include "options.h"

/* The last CANARY bytes of every small block handed out in hardened mode:
 * a request of n bytes takes the class of n + CANARY.  Four bytes, as
 * mimalloc's padding canary: with classes 16 bytes apart, a request lands
 * in the next class when its size leaves fewer than CANARY bytes free, so
 * a wider canary pushes more requests up (bench/MECHANISMS.md has the
 * figures), and a blind forgery already has one chance in 2^32. */
#define CANARY 4u

/* The mode's one switch: the option, set by the first options_load only. */
static inline bool hardened(void) { return option(OPT_HARDEN) != 0; }

HIDDEN void harden_init(void);
HIDDEN void harden_fork_prepare(void);      /* the quarantine's lock, for fork */
HIDDEN void harden_fork_parent(void);
HIDDEN void harden_fork_child(void);
/* Any request (align a power of two, at least ALIGNMENT): a block that
 * reads zero, or NULL with errno ENOMEM. */
HIDDEN void *harden_malloc(size_t n, size_t align);
/* Every free of a hardened process (p not NULL): checked, zeroed,
 * quarantined; misuse stops the process naming func.  errno is kept. */
HIDDEN void harden_free(void *p, const char *func);
/* The usable size of p, a small block of chunk c / a large block b / a
 * malloc(0) slot (then true), once it is vouched for: in use, canary or
 * tail intact; otherwise the process stops naming func. */
HIDDEN size_t harden_small_check(struct chunk *c, const void *p, const char *func);
HIDDEN size_t harden_large_check(const struct large_block *b, const void *p, const char *func);
HIDDEN bool harden_zero_owns(const void *p, bool free, const char *func);
HIDDEN void harden_flush(void);             /* the quarantine emptied (malloc_trim) */
/* C++'s sized delete: n (and the alignment, 0 for none) must be what the
 * block was allocated with, as far as its class or a large block's
 * recorded size can tell; otherwise a "size mismatch" stops the process. */
HIDDEN void harden_sized_delete(const void *p, size_t n, size_t align);

#endif /* MEMALLOC_HARDEN_H */
