// compat/counter (C): a counter kept in state through a pointer and pushed only when the input
// says "push". Calls of one user on one node map the same pages of the value (Faasm's local
// tier), so each call sees the previous one's increment whether or not it was pushed; the global
// value (`GET /s/…`) changes only on a push. Output: the count after this call's increment.
#include <stdio.h>
#include <string.h>

#include "faasm/faasm.h"

int main(void) {
    uint8_t *c = faasmReadStatePtr("counter", 4);
    uint32_t n;
    memcpy(&n, c, sizeof n);
    n++;
    memcpy(c, &n, sizeof n);
    char in[8] = {0};
    faasmGetInput((uint8_t *)in, sizeof in - 1);
    if (strcmp(in, "push") == 0) {
        faasmPushState("counter");
    }
    char out[16];
    int len = snprintf(out, sizeof out, "%u", n);
    faasmSetOutput(out, len);
    return 0;
}
