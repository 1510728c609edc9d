// ndp/get (C): input "KEY": outputs the object KEY whole (read in place on its storage node,
// fetched elsewhere). Returns 1, with output "no such object", when there is none.
#include <stdint.h>
#include <stdlib.h>

#include "faasm/faasm.h"
#include "ndpapi.h"

int main(void) {
    long n = faasmGetInputSize();
    uint8_t *key = malloc((size_t)n + 1);
    faasmGetInput(key, n);
    uint32_t len = 0;
    const uint8_t *data = __faasmndp_getMmap((const char *)key, (int32_t)n, 0, INT32_MAX, &len);
    if (data == NULL) {
        faasmSetOutput((const uint8_t *)"no such object", 14);
        return 1;
    }
    faasmSetOutput(data, len);
    __faasmndp_unmap((uint8_t *)data, len);
    return 0;
}
