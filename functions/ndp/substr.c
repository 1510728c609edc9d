// ndp/substr (C): input "KEY OFFSET LEN": the LEN bytes of object KEY from byte OFFSET (fewer at
// its end), read near the data; output them. Return 1 when there is no such object.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "faasm/faasm.h"
#include "ndpapi.h"

static char key[128];
static long long offset, want;
static char *out;
static uint32_t out_len;

static int part(void) {
    uint32_t len = 0;
    const uint8_t *data = __faasmndp_getMmap(key, (int32_t)strlen(key), offset, want, &len);
    if (data == NULL) return 1;
    out = malloc(len + 1);
    memcpy(out, data, len);
    out_len = len;
    return 0;
}

int main(void) {
    char in[256] = {0};
    faasmGetInput((uint8_t *)in, sizeof in - 1);
    if (sscanf(in, "%127s %lld %lld", key, &offset, &want) != 3) return 2;
    int rc = __faasmndp_storageCallAndAwait(key, (uint32_t)strlen(key), part);
    if (rc != 0) return rc;
    faasmSetOutput(out, out_len);
    return 0;
}
