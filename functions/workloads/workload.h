// Helpers shared by the workload functions: an integer input with a default and a range, a
// formatted output, and a small deterministic random generator.
#ifndef EBB_WORKLOAD_H
#define EBB_WORKLOAD_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include "faasm/faasm.h"

// The call's input as a decimal integer: `dflt` when empty, clamped to [lo, hi].
static inline long input_long(long dflt, long lo, long hi) {
    char buf[32] = {0};
    long n = faasmGetInputSize();
    if (n <= 0) return dflt;
    if (n > 31) n = 31;
    faasmGetInput((uint8_t *)buf, n);
    long v = strtol(buf, NULL, 10);
    return v < lo ? lo : v > hi ? hi : v;
}

static inline void output_fmt(const char *fmt, ...) {
    char out[256];
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(out, sizeof out, fmt, ap);
    va_end(ap);
    faasmSetOutput((const char *)out, len);
}

// xorshift64*: deterministic, so every instance builds the same initial state.
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static inline uint64_t rng_next(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

// FNV-1a over bytes, for output checksums.
static inline uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

#endif
