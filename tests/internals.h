/*
 * internals.h - every internal header of src/, for the tests that reach
 * into memalloc's internals (linked with the static memalloc-internal).
 */
#ifndef MEMALLOC_TEST_INTERNALS_H
#define MEMALLOC_TEST_INTERNALS_H

#include "init.h"
#include "options.h"
#include "purge.h"
#include "tcache.h"

#endif
