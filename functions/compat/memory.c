// compat/memory (C): a 2 MiB array on the stack (Faasm's toolchain gives 4 MiB), anonymous
// mmap/munmap (the emulated mman), a big heap block, and printf of a long double.
// Output: "stack=<sum> mmap=<byte> heap=<byte> ld=<formatted>".
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "faasm/faasm.h"

static long stackSum(void) {
    volatile unsigned char big[2 << 20];
    long sum = 0;
    for (size_t i = 0; i < sizeof big; i += 4096) big[i] = 1;
    for (size_t i = 0; i < sizeof big; i += 4096) sum += big[i];
    return sum;
}

int main(void) {
    long stack = stackSum();
    size_t len = 1 << 20;
    unsigned char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return 1;
    m[len - 1] = 7;
    int mapped = m[len - 1] + m[0];
    if (munmap(m, len) != 0) return 2;
    unsigned char *h = malloc(64 << 20);
    if (h == NULL) return 3;
    memset(h, 3, 64 << 20);
    int heap = h[(64 << 20) - 1];
    free(h);
    long double ld = 1.0L / 3.0L;
    char out[256];
    int n = snprintf(out, sizeof out, "stack=%ld mmap=%d heap=%d ld=%.20Lf", stack, mapped, heap, ld);
    faasmSetOutput(out, n);
    return 0;
}
