/*
 * purge.h - giving pages back to the kernel: when a purge pass runs and
 * what it spares (purge.c).
 *
 * Invariants: called from the slow paths above, never with a lock held;
 * one pass at a time (memalloc_pass_running).
 */
#ifndef MEMALLOC_PURGE_H
#define MEMALLOC_PURGE_H

#include "os.h"

HIDDEN void purge_maybe(void);      /* after memory was freed */
HIDDEN bool purge_trim(size_t pad); /* malloc_trim: everything, now */
HIDDEN void purge_fork_child(void);
extern int memalloc_pass_running HIDDEN;    /* a pass is under way, atomic */

#endif /* MEMALLOC_PURGE_H */
