/*
 * fuzz_common.h - what the fuzz targets share: the one-line failure report
 * (fuzz_fail, then abort), the byte reader that turns an input into
 * choices, and the content patterns: fill a block with bytes derived from
 * its tag, verify it in full (small blocks) or at sampled offsets (big
 * ones), check calloc zeroes.
 *
 * A pattern byte depends on the tag and the offset only, so writing it
 * twice is harmless: after a realloc the whole new block is simply filled
 * again once its preserved prefix has been verified.
 */
#ifndef MEMALLOC_FUZZ_COMMON_H
#define MEMALLOC_FUZZ_COMMON_H

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Blocks up to this many usable bytes are written and verified in full
 * (every small class, 128 KiB, fits); bigger ones at sampled offsets. */
#define FULL_MAX ((size_t)160 << 10)
/* Sampled offsets: the first and last 64 bytes and every SAMPLE_STRIDE-th
 * byte, a stride below 4096 so that every page of the block is looked at
 * (a page zapped by a wrong purge reads back as zeroes). */
#define SAMPLE_EDGE 64
#define SAMPLE_STRIDE 4093

/* The pattern: PAT_LEN pseudo-random bytes; tag t starts at t * 257, so
 * two blocks with different tags differ at almost every offset. */
#define PAT_LEN (FULL_MAX + 256 * 257)
static uint8_t fuzz_pat[PAT_LEN];
static int fuzz_pat_ready;

static void fuzz_pat_init(void)
{
    if (fuzz_pat_ready)
        return;
    uint64_t s = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < PAT_LEN; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        /* never 0: a block zeroed behind our back must not verify */
        fuzz_pat[i] = (uint8_t)((s >> 24) % 255 + 1);
    }
    fuzz_pat_ready = 1;
}

static inline uint8_t pat_byte(unsigned tag, size_t i)
{
    return fuzz_pat[((size_t)tag * 257 + i) % PAT_LEN];
}

/* Print "NAME: FAIL: ..." as one line and abort: the fuzzer (or the
 * driver's handler) keeps the input. */
static const char *fuzz_name = "fuzz";
__attribute__((noreturn, format(printf, 1, 2))) static void fuzz_fail(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = snprintf(buf, sizeof buf, "%s: FAIL: ", fuzz_name);
    if (n < 0)
        n = 0;
    vsnprintf(buf + n, sizeof buf - (size_t)n, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s\n", buf);
    abort();
}

/* ---- the input as a stream of choices ------------------------------------ */

struct reader {
    const uint8_t *data;
    size_t size, pos;
};

/* Zero once the input is used up (the caller's loop stops at the end). */
static inline uint8_t rd_u8(struct reader *r)
{
    return r->pos < r->size ? r->data[r->pos++] : 0;
}

static inline unsigned rd_u16(struct reader *r)
{
    unsigned lo = rd_u8(r);
    return lo | (unsigned)rd_u8(r) << 8;
}

static inline uint32_t rd_u24(struct reader *r)
{
    uint32_t lo = rd_u16(r);
    return lo | (uint32_t)rd_u8(r) << 16;
}

/* ---- fill and verify ---------------------------------------------------------- */

static inline int sampled(size_t len) { return len > FULL_MAX; }

/* The sampled offsets of a len-byte block, in order; returns the next
 * offset after i, or len when done.  Start with i = 0. */
static inline size_t sample_next(size_t len, size_t i)
{
    if (i + 1 < SAMPLE_EDGE)
        return i + 1;
    if (i + 1 >= len - SAMPLE_EDGE)
        return i + 1;
    size_t next = (i / SAMPLE_STRIDE + 1) * SAMPLE_STRIDE;
    return next < len - SAMPLE_EDGE ? next : len - SAMPLE_EDGE;
}

/* Write the pattern for tag over a len-byte block (all of it, or the
 * sampled offsets). */
static void fill_block(uint8_t *p, unsigned tag, size_t len)
{
    if (!sampled(len)) {
        memcpy(p, fuzz_pat + (size_t)tag * 257, len);
        return;
    }
    for (size_t i = 0; i < len; i = sample_next(len, i))
        p[i] = pat_byte(tag, i);
}

/* The first offset below limit where the pattern written for a len-byte
 * block is not intact, or (size_t)-1. */
static size_t verify_block(const uint8_t *p, unsigned tag, size_t len, size_t limit)
{
    if (limit > len)
        limit = len;
    if (!sampled(len)) {
        const uint8_t *want = fuzz_pat + (size_t)tag * 257;
        if (memcmp(p, want, limit) == 0)
            return (size_t)-1;
        for (size_t i = 0; i < limit; i++)
            if (p[i] != want[i])
                return i;
        return (size_t)-1;
    }
    for (size_t i = 0; i < limit; i = sample_next(len, i))
        if (p[i] != pat_byte(tag, i))
            return i;
    return (size_t)-1;
}

/* The first non-zero offset in the first n bytes (all, or sampled), or
 * (size_t)-1. */
static size_t check_zero(const uint8_t *p, size_t n)
{
    if (!sampled(n)) {
        for (size_t i = 0; i < n; i++)
            if (p[i])
                return i;
        return (size_t)-1;
    }
    for (size_t i = 0; i < n; i = sample_next(n, i))
        if (p[i])
            return i;
    return (size_t)-1;
}

#endif
