// ndp/put (C): input "KEY DATA": stores DATA as the object KEY on this storage node. Output:
// "stored N" (N bytes), or "refused" (return 1).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "faasm/faasm.h"
#include "ndpapi.h"

int main(void) {
    long n = faasmGetInputSize();
    char *in = calloc((size_t)n + 1, 1);
    faasmGetInput((uint8_t *)in, n);
    char *space = strchr(in, ' ');
    if (space == NULL) return 2;
    uint32_t key_len = (uint32_t)(space - in), data_len = (uint32_t)(n - key_len - 1);
    char out[32];
    int rc = __faasmndp_put(in, key_len, (const uint8_t *)space + 1, data_len);
    int len = rc == 0 ? snprintf(out, sizeof out, "stored %u", data_len) : snprintf(out, sizeof out, "refused");
    faasmSetOutput(out, len);
    return rc == 0 ? 0 : 1;
}
