// A command for `runtime run --repeat N`: the first run builds a 32 MiB table, every later run
// checksums it (on the same instance, whose memory persists between runs — and may have been
// offloaded to the memnode in between). Prints the checksum; exits 1 if it ever changes.
#include <stdint.h>
#include <stdio.h>

#define WORDS (32u << 20) / 4

static uint32_t table[WORDS];
static uint64_t first_sum;
static int runs;

static uint64_t checksum(void) {
    uint64_t sum = 0;
    for (uint32_t i = 0; i < WORDS; i++) sum = sum * 31 + table[i];
    return sum;
}

int main(void) {
    if (runs++ == 0) {
        for (uint32_t i = 0; i < WORDS; i++) table[i] = i * 2654435761u;
        first_sum = checksum();
        printf("run %d: built a %u MiB table, checksum %016llx\n", runs, (WORDS * 4) >> 20,
               (unsigned long long)first_sum);
        return 0;
    }
    uint64_t sum = checksum();
    printf("run %d: checksum %016llx %s\n", runs, (unsigned long long)sum, sum == first_sum ? "(same)" : "(CHANGED)");
    return sum == first_sum ? 0 : 1;
}
