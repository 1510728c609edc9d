// demo/bigtable: the zygote builds a 64 MiB table (the function's initial state); each call
// checksums it. With the input "scribble" the call then overwrites the whole table — which the
// next call must not see (every call starts from the initial state); with "quarter" the call
// checksums only the table's first quarter (a call that needs part of the state).
#include <stdio.h>
#include <string.h>
#include "faasm/faasm.h"

#define WORDS ((64u << 20) / 4)
static uint32_t table[WORDS];

FAASM_ZYGOTE() {
    for (uint32_t i = 0; i < WORDS; i++) table[i] = i * 2654435761u + 12345u;
    return 0;
}

int main(void) {
    char in[16] = {0};
    long n = faasmGetInputSize();
    if (n > 15) n = 15;
    faasmGetInput((uint8_t *)in, n);
    uint32_t words = strcmp(in, "quarter") == 0 ? WORDS / 4 : WORDS;
    uint64_t sum = 0;
    for (uint32_t i = 0; i < words; i++) sum = sum * 1099511628211ull + table[i];
    char out[64];
    int len = snprintf(out, sizeof out, "checksum=%016llx", (unsigned long long)sum);
    faasmSetOutput((const char *)out, len);
    if (strcmp(in, "scribble") == 0) memset(table, 0xAB, sizeof table);
    return 0;
}
