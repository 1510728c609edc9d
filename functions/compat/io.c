// compat/io (C): input and output as a Faasm C function does it, with both output forms (Faasm's
// `const char *`, AutoNDP's `const uint8_t *`). Output: "in=<input> len=<n>".
#include <stdio.h>
#include <stdlib.h>

#include "faasm/faasm.h"

int main(void) {
    long n = faasmGetInputSize();
    uint8_t *in = malloc((size_t)n + 1);
    faasmGetInput(in, n);
    in[n] = 0;
    char out[256];
    int len = snprintf(out, sizeof out, "in=%s len=%ld", (char *)in, n);
    if (n > 0 && in[0] == 'b') {
        faasmSetOutput((const uint8_t *)out, len);
    } else {
        faasmSetOutput(out, len);
    }
    return 0;
}
