/* Faasm's time helpers (faasm/time.h) for Ebb. */
#ifndef FAASM_TIME_H
#define FAASM_TIME_H

#include <stdio.h>
#include <sys/time.h>
#include <time.h>

/* Timings are on when WASM_PROF is 1 (as in Faasm) and print "TIME: name ms". */
#if WASM_PROF == 1 || __wasm__ != 1
#define FAASM_PROF_START(profVar) clock_t profVar = clock();
#define FAASM_PROF_END(profVar)                                                                    \
    float diff_##profVar = ((clock() - profVar) * 1000.0f) / CLOCKS_PER_SEC;                       \
    printf("TIME: %s %f\n", #profVar, diff_##profVar);
#else
#define FAASM_PROF_START(profVar)
#define FAASM_PROF_END(profVar)
#endif

#ifdef __cplusplus
namespace faasm {
/* Wall-clock seconds since the epoch, with microseconds. */
inline double getSecondsSinceEpoch() {
    struct timeval now;
    gettimeofday(&now, nullptr);
    return (double)now.tv_sec + (double)now.tv_usec / 1e6;
}
}  // namespace faasm
#endif

#endif
