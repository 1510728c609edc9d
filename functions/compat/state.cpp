// compat/state (C++): Faasm state by value, offset, pointer (whole and offset), partial pushes
// (flagged ranges and a mask), appended elements and a state-backed array. Each step's result
// goes into the output as "name=value" words; the test reads the values back over HTTP too.
#include <cstdio>
#include <cstring>
#include <string>

#include "faasm/array.h"
#include "faasm/faasm.h"
#include "faasm/input.h"
#include "faasm/state.h"

static std::string out;
static void put(const char *name, long value) { out += std::string(name) + "=" + std::to_string(value) + " "; }

int main() {
    // By value and offset.
    const uint8_t v[6] = {1, 2, 3, 4, 5, 6};
    faasmWriteState("plain", v, 6);
    faasmWriteStateOffset("plain", 6, 2, BYTES(const_cast<char *>("\x09\x09")), 2);
    uint8_t got[6] = {0};
    put("size", faasmReadState("plain", got, 6));
    put("plain2", got[2]);
    uint8_t mid[2];
    faasmReadStateOffset("plain", 6, 3, mid, 2);
    put("off3", mid[0]);

    // Pointers: two reads give one mapping; writes show through it and reach other calls on push.
    uint8_t *a = faasmReadStatePtr("shared", 8);
    uint8_t *b = faasmReadStatePtr("shared", 8);
    put("same", a == b);
    for (int i = 0; i < 8; i++) a[i] = (uint8_t)(10 + i);
    put("seen", b[7]);
    uint8_t viaRead[8];
    faasmReadState("shared", viaRead, 8);
    put("readptr", viaRead[3]);
    faasmPushState("shared");
    uint8_t *off = faasmReadStateOffsetPtr("shared", 8, 4, 2);
    put("offptr", off[0]);

    // Partial push: only the flagged range goes.
    uint8_t *p = faasmReadStatePtr("partial", 4);
    p[0] = 7;
    p[3] = 8;
    faasmFlagStateOffsetDirty("partial", 4, 3, 1);
    faasmPushStatePartial("partial");

    // Masked push: only the bytes the mask selects go.
    uint8_t *m = faasmReadStatePtr("masked", 4);
    uint8_t *mask = faasmReadStatePtr("masked_mask", 4);
    for (int i = 0; i < 4; i++) m[i] = (uint8_t)(20 + i);
    mask[1] = 0xff;
    mask[2] = 0xff;
    faasmPushStatePartialMask("masked", "masked_mask");

    // Appended state.
    faasmClearAppendedState("log");
    for (int i = 1; i <= 3; i++) faasmAppendState("log", BYTES(&i), sizeof i);
    int elems[3] = {0};
    faasmReadAppendedState("log", BYTES(elems), sizeof elems, 3);
    put("appended", elems[0] + elems[1] * 10 + elems[2] * 100);

    // A state-backed array: written elements are flagged and pushed.
    faasm::AsyncArray<int> arr("arr", 4);
    arr.zero();
    arr[2] = 42;
    arr.push();

    out.pop_back();
    faasm::setStringOutput(out.c_str());
    return 0;
}
