/* Faasm's comparison helpers (faasm/compare.h) for Ebb: C++. */
#ifndef FAASM_COMPARE_H
#define FAASM_COMPARE_H

#include "faasm/print.h"

#ifdef __cplusplus
namespace faasm {
/* Whether the first len elements of a and b are equal; prints both arrays when they are not. */
template <typename T>
bool compareArrays(T *a, T *b, int len) {
    for (int i = 0; i < len; i++) {
        if (!(a[i] == b[i])) {
            printf("Arrays differ at %i\n", i);
            printArray(a, (size_t)len);
            printArray(b, (size_t)len);
            return false;
        }
    }
    return true;
}
}  // namespace faasm
#endif

#endif
