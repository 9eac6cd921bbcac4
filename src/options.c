/*
 * options.c - the settings of options.h's table: in force from the first
 * call with their defaults, read once from the environment (MEMALLOC_*),
 * changed later only through mallopt (api.c, by option_set).
 *
 * Invariants: the environment is read with getenv only (it never
 * allocates) and only once it exists; a bad value keeps the default and
 * says so in one line.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>

#include "options.h"
#include "track.h"

struct option_desc {
    const char *env;
    long def, min, max;
};

#define OPTION_DESC(id, env, def, min, max) [id] = {env, def, min, max},
static const struct option_desc option_table[OPT_COUNT] = { OPTIONS(OPTION_DESC) };
#define OPTION_DEFAULT(id, env, def, min, max) [id] = def,
long memalloc_options[OPT_COUNT] HIDDEN = { OPTIONS(OPTION_DEFAULT) };

void option_set(enum option_id id, long value)
{
    __atomic_store_n(&memalloc_options[id], value, __ATOMIC_RELAXED);
}

/* Accepts decimal with an optional k/m/g suffix. */
static bool parse_value(const char *s, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s)
        return false;
    long mul = 1;
    switch (*end) {
    case 'k': case 'K': mul = 1L << 10; end++; break;
    case 'm': case 'M': mul = 1L << 20; end++; break;
    case 'g': case 'G': mul = 1L << 30; end++; break;
    }
    if (*end != '\0' || __builtin_mul_overflow(v, mul, out))
        return false;
    return true;
}

/* Before libc has set up the environment (the loader may call malloc that
 * early) the defaults hold and the caller asks again later.  The hardened
 * mode must cover every block or none, so MEMALLOC_HARDEN counts only when
 * the environment is there at the first call (on glibc it is): read later,
 * blocks handed out before would lack their canaries, and it is refused
 * aloud. */
bool options_load(void)
{
    static bool asked;              /* by the first call, under INIT_RUNNING */
    bool first = !asked;
    asked = true;
    if (!os_env_ready())
        return false;
    int saved = errno;
    for (int i = 0; i < OPT_COUNT; i++) {
        const struct option_desc *d = &option_table[i];
        memalloc_options[i] = d->def;
        const char *s = os_getenv(d->env);
        if (!s)
            continue;
        if (i == OPT_HARDEN && !first) {
            message("memalloc: warning: MEMALLOC_HARDEN ignored: blocks were handed out "
                    "before the environment could be read\n");
            continue;
        }
        long v;
        if (parse_value(s, &v) && v >= d->min && v <= d->max) {
            memalloc_options[i] = v;
        } else if (i != OPT_PERTURB) {
            /* glibc ignores a bad MALLOC_PERTURB_ silently; ours warn. */
            message("memalloc: warning: bad value for ");
            message(d->env);
            message(", using the default\n");
        }
    }
#if TRACKING
    /* Under memcheck or ASan (track.h) the tools do what these do, and
     * their fills would touch free blocks behind the tools' backs. */
    if (memalloc_options[OPT_HARDEN] || memalloc_options[OPT_PERTURB])
        message("memalloc: warning: MEMALLOC_HARDEN and MALLOC_PERTURB_ are off in "
                "memcheck and ASan builds\n");
    memalloc_options[OPT_HARDEN] = memalloc_options[OPT_PERTURB] = 0;
#endif
    errno = saved;
    return true;
}
