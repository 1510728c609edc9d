/* Faasm's input helpers (faasm/input.h) for Ebb: C++. */
#ifndef FAASM_INPUT_H
#define FAASM_INPUT_H

#include "faasm/core.h"

#ifdef __cplusplus
#include <stdlib.h>
#include <string.h>

#include <string>

namespace faasm {
/* The input as a NUL-terminated string (in memory that lives until the call ends), or
 * defaultValue when the input is empty. */
inline const char *getStringInput(const char *defaultValue) {
    long size = faasmGetInputSize();
    if (size <= 0) return defaultValue;
    char *s = static_cast<char *>(malloc((size_t)size + 1));
    if (s == nullptr) return defaultValue;
    faasmGetInput(reinterpret_cast<uint8_t *>(s), size);
    s[size] = '\0';
    return s;
}

/* The input parsed as an integer ("0" when empty). */
inline int getIntInput() { return std::stoi(getStringInput("0")); }

/* Sets a NUL-terminated string as the output. */
inline void setStringOutput(const char *val) { faasmSetOutput(val, (long)strlen(val)); }

/* Parses the first `expected` space-separated integers of inStr into a new array (unparsed
 * entries are 0). */
inline int *parseStringToIntArray(const char *inStr, int expected) {
    int *out = new int[expected > 0 ? expected : 1]();
    const char *p = inStr;
    for (int i = 0; i < expected && *p != '\0'; i++) {
        char *end = nullptr;
        long v = strtol(p, &end, 10);
        if (end == p) break;
        out[i] = (int)v;
        p = end;
    }
    return out;
}
}  // namespace faasm
#endif

#endif
