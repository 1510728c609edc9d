// demo/statescan: reads one byte of every 4 KiB page of the state value "big" (its size given
// by the host: `faasmReadState` with no buffer), either through a pointer to the value's pages
// (input "ptr": `faasmReadStatePtr`, nothing copied) or by copying it into the heap first (input
// "copy": `faasmReadState`, what a function without pointers does). Output: the bytes' sum.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "faasm/faasm.h"

int main(void) {
    char in[8] = {0};
    faasmGetInput((uint8_t *)in, sizeof in - 1);
    long size = faasmReadState("big", NULL, 0);
    if (size <= 0) return 1;
    const uint8_t *v;
    uint8_t *copy = NULL;
    if (strcmp(in, "ptr") == 0) {
        v = faasmReadStatePtr("big", size);
    } else {
        copy = malloc((size_t)size);
        if (copy == NULL) return 2;
        faasmReadState("big", copy, size);
        v = copy;
    }
    unsigned long sum = 0;
    for (long i = 0; i < size; i += 4096) sum += v[i];
    free(copy);
    char out[32];
    int len = snprintf(out, sizeof out, "%lu", sum);
    faasmSetOutput(out, len);
    return 0;
}
