// demo/state: a counter in the user's state, incremented under the state's write lock.
#include <stdio.h>
#include "faasm/faasm.h"

int main(void) {
    const char *key = "counter";
    faasmLockStateWrite(key);
    uint32_t count = 0;
    if (faasmReadStateSize(key) == sizeof count) faasmReadState(key, (uint8_t *)&count, sizeof count);
    count++;
    faasmWriteState(key, (const uint8_t *)&count, sizeof count);
    faasmPushState(key);
    faasmUnlockStateWrite(key);
    char out[32];
    int len = snprintf(out, sizeof out, "counter=%u", count);
    faasmSetOutput((const char *)out, len);
    return 0;
}
