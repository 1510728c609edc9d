/* Faasm's random helpers (faasm/random.h) for Ebb: C++ (<random>, seeded from WASI's random_get). */
#ifndef FAASM_RANDOM_H
#define FAASM_RANDOM_H

#ifdef __cplusplus
#include <stddef.h>

#include <algorithm>
#include <random>
#include <string>

namespace faasm {
/* The generator every helper draws from, seeded once per instance. */
inline std::mt19937 &randomEngine() {
    static std::mt19937 engine{std::random_device{}()};
    return engine;
}

/* A uniform integer in [iStart, iEnd]. */
inline int randomInteger(int iStart, int iEnd) { return std::uniform_int_distribution<int>(iStart, iEnd)(randomEngine()); }

/* A uniform float in [0, 1). */
inline float randomFloat() { return std::uniform_real_distribution<float>(0.0f, 1.0f)(randomEngine()); }

inline void shuffleArray(int *arrayIn, size_t arrayLen) { std::shuffle(arrayIn, arrayIn + arrayLen, randomEngine()); }

/* 0..rangeLen-1 in random order, in a new array. */
inline int *randomIntRange(int rangeLen) {
    int *range = new int[rangeLen > 0 ? rangeLen : 1];
    for (int i = 0; i < rangeLen; i++) range[i] = i;
    shuffleArray(range, (size_t)(rangeLen > 0 ? rangeLen : 0));
    return range;
}

/* len random letters and digits. */
inline std::string randomString(int len) {
    static const char chars[] = "123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    std::uniform_int_distribution<int> pick(0, (int)sizeof(chars) - 2);
    std::string s;
    for (int i = 0; i < len; i++) s.push_back(chars[pick(randomEngine())]);
    return s;
}
}  // namespace faasm
#endif

#endif
