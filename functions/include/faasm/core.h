/* Faasm's C API (faasm/core.h): the names, types and semantics of faasm/cpp's libfaasm, written
 * for Ebb over the host interface. Header-only: a function needs no library beyond wasi-libc.
 *
 * C++ callers of AutoNDP's fork (which takes `const uint8_t *` output) compile too: C++ gets an
 * overload for it. */
#ifndef FAASM_CORE_H
#define FAASM_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "faasm/host_interface.h"
#include "faasm/memory.h"

#ifdef __cplusplus
#define BYTES(arr) reinterpret_cast<uint8_t *>(arr)
#else
#define BYTES(arr) ((uint8_t *)(arr))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* A function of this module that can be chained by pointer. */
typedef int (*FaasmFuncPtr)();

/* ---- Input and output ---- */

/* The size of this call's input in bytes; zero if none. */
static inline long faasmGetInputSize(void) { return __faasm_read_input(0, 0); }

/* Copies up to bufferLen bytes of the input into buffer. */
static inline void faasmGetInput(uint8_t *buffer, long bufferLen) { __faasm_read_input(buffer, bufferLen); }

/* Sets this call's output (replacing any earlier output). */
static inline void faasmSetOutput(const char *newOutput, long outputLen) { __faasm_write_output(newOutput, outputLen); }

/* ---- Chaining ---- */

/* Calls another function of the same user; returns the call's id. */
static inline unsigned int faasmChainNamed(const char *name, const uint8_t *inputData, long inputDataSize) {
    return __faasm_chain_name(name, inputData, inputDataSize);
}

/* Runs funcPtr in another instance of this function, from its initial state; returns the id. */
static inline unsigned int faasmChain(FaasmFuncPtr funcPtr, const uint8_t *inputData, long inputDataSize) {
    return __faasm_chain_ptr(funcPtr, inputData, inputDataSize);
}

/* Waits for a chained call; returns its return code (non-zero if it failed). */
static inline unsigned int faasmAwaitCall(unsigned int callId) { return (unsigned int)__faasm_await_call(callId); }

/* Waits for a chained call and gets its output, placed by the host in fresh memory. */
static inline unsigned int faasmAwaitCallOutput(unsigned int messageId, char **output, int *outputLen) {
    return (unsigned int)__faasm_await_call_output(messageId, output, outputLen);
}

/* Chains funcPtr nFuncs times with inputData (a string) and waits for all of them: 0 if every
 * call returned 0, else 1. */
static inline unsigned int faasmChainBatch(FaasmFuncPtr funcPtr, const char *inputData, int nFuncs) {
    if (nFuncs <= 0) return 0;
    long len = (long)strlen(inputData);
    unsigned int ids[nFuncs];
    for (int i = 0; i < nFuncs; i++) ids[i] = faasmChain(funcPtr, (const uint8_t *)inputData, len);
    unsigned int failed = 0;
    for (int i = 0; i < nFuncs; i++) failed |= faasmAwaitCall(ids[i]) != 0;
    return failed;
}

/* ---- State ---- */

/* The size of the value at key (0 if there is none). */
static inline size_t faasmReadStateSize(const char *key) { return (size_t)__faasm_read_state(key, 0, 0); }

/* Copies up to bufferLen bytes of the value into buffer; returns the value's full size. */
static inline long faasmReadState(const char *key, unsigned char *buffer, long bufferLen) {
    return __faasm_read_state(key, buffer, bufferLen);
}

/* The value (created zeroed with totalLen bytes if missing) mapped into this function's memory:
 * reads and writes go straight to it; push publishes the writes. The same key gives the same
 * pointer for the rest of the call. */
static inline uint8_t *faasmReadStatePtr(const char *key, long totalLen) { return __faasm_read_state_ptr(key, totalLen); }

/* Copies bufferLen bytes at offset of the totalLen-byte value into buffer. */
static inline void faasmReadStateOffset(const char *key, long totalLen, long offset, uint8_t *buffer, long bufferLen) {
    __faasm_read_state_offset(key, totalLen, offset, buffer, bufferLen);
}

/* A pointer to offset in the totalLen-byte value mapped as by faasmReadStatePtr. */
static inline uint8_t *faasmReadStateOffsetPtr(const char *key, long fullLen, long offset, long len) {
    return __faasm_read_state_offset_ptr(key, fullLen, offset, len);
}

/* Replaces the value at key. */
static inline void faasmWriteState(const char *key, const uint8_t *data, long dataLen) { __faasm_write_state(key, data, dataLen); }

/* Writes dataLen bytes at offset of the totalLen-byte value (created zeroed if missing). */
static inline void faasmWriteStateOffset(const char *key, long totalLen, long offset, const uint8_t *data, long dataLen) {
    __faasm_write_state_offset(key, totalLen, offset, data, dataLen);
}

/* Appends one element to the append-only value at key. */
static inline void faasmAppendState(const char *key, const uint8_t *data, long dataLen) { __faasm_append_state(key, data, dataLen); }

/* Copies the first nElems appended elements, one after another, into buffer (bufferLen bytes). */
static inline void faasmReadAppendedState(const char *key, uint8_t *buffer, long bufferLen, long nElems) {
    __faasm_read_appended_state(key, buffer, bufferLen, nElems);
}

/* Drops every appended element of key. */
static inline void faasmClearAppendedState(const char *key) { __faasm_clear_appended_state(key); }

/* Writes the whole of a file of this function's filesystem to key; returns its size. */
static inline unsigned long faasmWriteStateFromFile(const char *key, const char *filePath) {
    return __faasm_write_state_from_file(key, filePath);
}

/* Marks the whole mapped value (or a range of it) as written: faasmPushStatePartial sends those. */
static inline void faasmFlagStateDirty(const char *key, long totalLen) { __faasm_flag_state_dirty(key, totalLen); }
static inline void faasmFlagStateOffsetDirty(const char *key, long totalLen, long offset, long len) {
    __faasm_flag_state_offset_dirty(key, totalLen, offset, len);
}

/* Publishes the mapped value: whole, only its flagged ranges, or only the bytes whose byte in
 * the mapped value of maskKey is non-zero. */
static inline void faasmPushState(const char *key) { __faasm_push_state(key); }
static inline void faasmPushStatePartial(const char *key) { __faasm_push_state_partial(key); }
static inline void faasmPushStatePartialMask(const char *key, const char *maskKey) { __faasm_push_state_partial_mask(key, maskKey); }

/* Refreshes the mapped value from the store. */
static inline void faasmPullState(const char *key, long stateLen) { __faasm_pull_state(key, stateLen); }

/* Read and write locks on a key; held by this call, released when it ends at the latest. */
static inline void faasmLockStateRead(const char *key) { __faasm_lock_state_read(key); }
static inline void faasmUnlockStateRead(const char *key) { __faasm_unlock_state_read(key); }
static inline void faasmLockStateWrite(const char *key) { __faasm_lock_state_write(key); }
static inline void faasmUnlockStateWrite(const char *key) { __faasm_unlock_state_write(key); }

/* ---- Runtime ---- */

/* 1 or 0: whether the runtime's configuration flag is on ("ALWAYS_ON" is, "ALWAYS_OFF" is not). */
static inline unsigned int getConfFlag(const char *key) { return __faasm_conf_flag(key); }

/* Asks the runtime to log a backtrace of this call (depth frames at most). */
static inline void faasmBacktrace(const int depth) { __faasm_backtrace(depth); }

/* The init phase: runs once per function; the memory it leaves is every call's starting point.
 * Use as `FAASM_ZYGOTE() { ...; return 0; }`. Exported by its attribute: no linker flag. */
#ifdef __cplusplus
#define FAASM_EXTERN_C extern "C"
#else
#define FAASM_EXTERN_C
#endif
#define FAASM_ZYGOTE() FAASM_EXTERN_C __attribute__((export_name("_faasm_zygote"))) int _faasm_zygote(void)

#ifndef __cplusplus
/* AutoNDP's fork of the SDK takes the output as bytes: C callers of either form compile. */
#define faasmSetOutput(newOutput, outputLen) faasmSetOutput((const char *)(newOutput), (outputLen))
#endif

#ifdef __cplusplus
}

/* AutoNDP's fork of the SDK takes the output as bytes. */
static inline void faasmSetOutput(const uint8_t *newOutput, long outputLen) {
    __faasm_write_output(reinterpret_cast<const char *>(newOutput), outputLen);
}
#endif

#endif
