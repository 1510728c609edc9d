// demo/echo: the output is the input.
#include <stdlib.h>
#include "faasm/faasm.h"

int main(void) {
    long size = faasmGetInputSize();
    uint8_t *buf = malloc(size > 0 ? (size_t)size : 1);
    faasmGetInput(buf, size);
    faasmSetOutput(buf, size);
    return 0;
}
