/*
 * test_abi.c - the library's ABI: memalloc_get_stats fills as much of
 * the caller's structure as both know (an older, smaller structure gets
 * its fields and nothing past them; a newer, bigger one gets the rest
 * zeroed) and returns the size of its own; the version 0.1 entry point
 * (no size) is still there for programs linked against 0.1; the prefixed
 * API carries symbol versions while the standard names stay unversioned,
 * so that they can stand in for glibc's; memalloc_version matches the
 * header.  Both libraries (MEMALLOC_LIB, MEMALLOC_PREFIXED_LIB) are
 * dlopened, so neither is the process's malloc here.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "memalloc.h"
#include "check.h"

typedef size_t (*get_stats_fn)(struct memalloc_stats *, size_t);
typedef void (*get_stats_v01_fn)(struct memalloc_stats *);

/* Is `name` defined in h's object without a version?  Its dynamic symbol
 * table says so: version index 1 (global) for an unversioned symbol. */
static int unversioned(void *h, const char *name)
{
    struct link_map *map;
    if (dlinfo(h, RTLD_DI_LINKMAP, &map) != 0)
        return -1;
    const ElfW(Sym) *symtab = NULL;
    const char *strtab = NULL;
    const ElfW(Half) *versym = NULL;
    size_t nsyms = 0;
    for (const ElfW(Dyn) *d = map->l_ld; d->d_tag != DT_NULL; d++) {
        if (d->d_tag == DT_SYMTAB) symtab = (const void *)d->d_un.d_ptr;
        if (d->d_tag == DT_STRTAB) strtab = (const void *)d->d_un.d_ptr;
        if (d->d_tag == DT_VERSYM) versym = (const void *)d->d_un.d_ptr;
        if (d->d_tag == DT_HASH) nsyms = ((const Elf32_Word *)d->d_un.d_ptr)[1];
    }
    if (!symtab || !strtab || !versym)
        return -1;
    if (nsyms == 0)                 /* no DT_HASH: the string table follows the symbols */
        nsyms = (size_t)((const char *)strtab - (const char *)symtab) / sizeof *symtab;
    for (size_t i = 1; i < nsyms; i++)
        if (symtab[i].st_shndx != SHN_UNDEF && strcmp(strtab + symtab[i].st_name, name) == 0)
            return (versym[i] & 0x7fff) == 1;
    return -1;
}

static void check_lib(const char *path, int standard_names)
{
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        FAIL("dlopen(%s): %s", path, dlerror());
        return;
    }
    get_stats_fn now = (get_stats_fn)dlvsym(h, "memalloc_get_stats", "MEMALLOC_0.2");
    get_stats_v01_fn old = (get_stats_v01_fn)dlvsym(h, "memalloc_get_stats", "MEMALLOC_0.1");
    const char *(*version)(void) = (const char *(*)(void))dlvsym(h, "memalloc_version",
                                                                "MEMALLOC_0.2");
    void *(*m)(size_t) = (void *(*)(size_t))dlvsym(h, "memalloc_malloc", "MEMALLOC_0.1");
    CHECK(dlvsym(h, "memalloc_map", "MEMALLOC_0.3") != NULL, "%s: memalloc_map@MEMALLOC_0.3", path);
    CHECK(now && old && version && m, "%s: a versioned symbol is missing", path);
    if (!now || !old || !version || !m)
        return;
    CHECK(strcmp(version(), MEMALLOC_VERSION) == 0, "%s: version %s, header %s", path,
          version(), MEMALLOC_VERSION);
    void *keep = m(1000);           /* something to count */
    (void)keep;

    struct memalloc_stats full;
    CHECK(now(&full, sizeof full) == sizeof full, "%s: its own structure's size", path);
    /* (Its figures are compared, not required: a library loaded beside
     * another malloc, or under valgrind, may keep its heap elsewhere.) */
    CHECK(full.heap_peak >= full.heap_bytes, "%s: statistics inconsistent", path);

    /* An older caller, who knows the first three fields only. */
    struct memalloc_stats part;
    memset(&part, 0xa5, sizeof part);
    size_t small = offsetof(struct memalloc_stats, large_in_use);
    CHECK(now(&part, small) == sizeof part, "%s: size for a smaller caller", path);
    CHECK(part.heap_bytes == full.heap_bytes && part.small_in_use == full.small_in_use,
          "%s: a smaller caller's fields", path);
    const unsigned char *past = (const unsigned char *)&part + small;
    for (size_t i = 0; i < sizeof part - small; i++)
        if (past[i] != 0xa5) {
            FAIL("%s: wrote past a smaller caller's structure", path);
            break;
        }

    /* A newer caller, whose structure has grown. */
    struct { struct memalloc_stats s; size_t later[4]; } big;
    memset(&big, 0xa5, sizeof big);
    CHECK(now(&big.s, sizeof big) == sizeof big.s, "%s: size for a bigger caller", path);
    CHECK(big.later[0] == 0 && big.later[3] == 0, "%s: a newer caller's extra fields", path);

    struct memalloc_stats v01;
    memset(&v01, 0, sizeof v01);
    old(&v01);
    CHECK(v01.heap_bytes == full.heap_bytes, "%s: the 0.1 entry point", path);

    if (standard_names) {
        CHECK(unversioned(h, "malloc") == 1, "%s: malloc must be unversioned", path);
        CHECK(unversioned(h, "_Znwm") == 1, "%s: operator new must be unversioned", path);
    }
    CHECK(unversioned(h, "sbrk") == 1, "%s: sbrk must be unversioned", path);
    CHECK(unversioned(h, "memalloc_malloc") == 0, "%s: memalloc_malloc must be versioned",
          path);
}

int main(void)
{
    const char *lib = getenv("MEMALLOC_LIB"), *prefixed = getenv("MEMALLOC_PREFIXED_LIB");
    if (!lib || !prefixed) {
        fprintf(stderr, "test_abi: MEMALLOC_LIB and MEMALLOC_PREFIXED_LIB must be set\n");
        return 77;
    }
    check_lib(lib, 1);
    check_lib(prefixed, 0);
    return check_report("test_abi");
}
