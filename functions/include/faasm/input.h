/* Faasm's input helpers (faasm/input.h) for Ebb. */
#ifndef FAASM_INPUT_H
#define FAASM_INPUT_H

#include "faasm/core.h"

#ifdef __cplusplus
#include <string>
#include <vector>

namespace faasm {
/* The input as a string, or defaultValue when there is none. */
inline std::string getStringInput(const char *defaultValue) {
    long size = faasmGetInputSize();
    if (size <= 0) return std::string(defaultValue);
    std::vector<uint8_t> buf((size_t)size);
    faasmGetInput(buf.data(), size);
    return std::string(buf.begin(), buf.end());
}

/* The input parsed as an integer, or defaultValue. */
inline int getIntInput(int defaultValue) {
    std::string s = getStringInput("");
    return s.empty() ? defaultValue : std::stoi(s);
}

inline void setStringOutput(const std::string &s) { faasmSetOutput((const uint8_t *)s.data(), (long)s.size()); }
}  // namespace faasm
#endif

#endif
