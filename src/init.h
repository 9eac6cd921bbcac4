/*
 * init.h - memalloc ready from the very first call (init.c): the tables,
 * the options once the environment exists, the fork handlers.
 */
#ifndef MEMALLOC_INIT_H
#define MEMALLOC_INIT_H

#include "os.h"

enum { INIT_NONE, INIT_RUNNING, INIT_TABLES, INIT_READY };
extern int memalloc_init_state HIDDEN;      /* atomic */
HIDDEN void init_slow(void);

/* Every slow path starts here: cheap once the options are loaded; until
 * then (the loader calls malloc before libc sets up the environment)
 * each call looks for the environment again. */
static inline void ensure_init(void)
{
    if (unlikely(__atomic_load_n(&memalloc_init_state, __ATOMIC_ACQUIRE) != INIT_READY))
        init_slow();
}

#endif /* MEMALLOC_INIT_H */
