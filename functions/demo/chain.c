// demo/chain: chains two calls — one to a function of this module by pointer (run in another
// instance, from the initial state), one to demo/echo by name — awaits both and joins outputs.
#include <stdio.h>
#include <string.h>
#include "faasm/faasm.h"

static int shout(void) {
    char in[64] = {0};
    long n = faasmGetInputSize();
    if (n > 63) n = 63;
    faasmGetInput((uint8_t *)in, n);
    char out[80];
    int len = snprintf(out, sizeof out, "shout(%s)", in);
    faasmSetOutput((const char *)out, len);
    return 0;
}

int main(void) {
    unsigned int a = faasmChain(shout, (const uint8_t *)"a", 1);
    unsigned int b = faasmChainNamed("echo", (const uint8_t *)"b", 1);
    char *out_a = 0, *out_b = 0;
    int len_a = 0, len_b = 0;
    unsigned int rc_a = faasmAwaitCallOutput(a, &out_a, &len_a);
    unsigned int rc_b = faasmAwaitCallOutput(b, &out_b, &len_b);
    char result[256];
    int len = snprintf(result, sizeof result, "chain: %.*s + %.*s", len_a, out_a, len_b, out_b);
    faasmSetOutput((const char *)result, len);
    return rc_a == 0 && rc_b == 0 ? 0 : 1;
}
