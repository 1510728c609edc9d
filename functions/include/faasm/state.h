/* Faasm's state helpers (faasm/state.h) for Ebb: C++. */
#ifndef FAASM_STATE_H
#define FAASM_STATE_H

#include <stddef.h>

#include "faasm/core.h"

#define BIT_MASK_8 0b11111111
#define BIT_MASK_32 0b11111111111111111111111111111111

#ifdef __cplusplus
#include <vector>

namespace faasm {
/* Sets the mask bits of the idx-th double of a mask array of unsigned ints (two per double). */
inline void maskDouble(unsigned int *maskArray, unsigned long idx) {
    maskArray[2 * idx] |= BIT_MASK_32;
    maskArray[2 * idx + 1] |= BIT_MASK_32;
}

/* Writes stateLen zero bytes to key and publishes them. */
inline void zeroState(const char *key, size_t stateLen) {
    std::vector<uint8_t> zeros(stateLen, 0);
    faasmWriteState(key, zeros.data(), (long)stateLen);
    faasmPushState(key);
}
}  // namespace faasm
#endif

#endif
