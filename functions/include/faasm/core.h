/* Faasm's C API (faasm/core.h), implemented for Ebb over the host interface. Header-only: a
 * function needs no library beyond wasi-libc. */
#ifndef FAASM_CORE_H
#define FAASM_CORE_H

#include <stddef.h>
#include <stdint.h>

#include "faasm/host_interface.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef int (*FaasmFuncPtr)(void);

/* The size of this call's input. */
static inline long faasmGetInputSize(void) { return __faasm_read_input(0, 0); }

/* Copies up to bufferLen bytes of the input into buffer. */
static inline void faasmGetInput(uint8_t *buffer, long bufferLen) {
    __faasm_read_input(buffer, (unsigned int)bufferLen);
}

/* Sets this call's output (replacing any earlier output). */
static inline void faasmSetOutput(const uint8_t *newOutput, long outputLen) {
    __faasm_write_output(newOutput, (unsigned int)outputLen);
}

/* Calls another function of the same user; returns the call's id. */
static inline unsigned int faasmChainNamed(const char *name, const uint8_t *inputData, long inputDataSize) {
    return __faasm_chain_name(name, inputData, (unsigned int)inputDataSize);
}

/* Runs funcPtr in another instance of this function, from its initial state. */
static inline unsigned int faasmChain(FaasmFuncPtr funcPtr, const uint8_t *inputData, long inputDataSize) {
    return __faasm_chain_ptr(funcPtr, inputData, (unsigned int)inputDataSize);
}

/* Waits for a chained call; returns its return code (non-zero if it failed). */
static inline unsigned int faasmAwaitCall(unsigned int messageId) { return (unsigned int)__faasm_await_call(messageId); }

/* Waits for a chained call and gets its output, placed by the host in fresh memory. */
static inline unsigned int faasmAwaitCallOutput(unsigned int messageId, char **output, int *outputLen) {
    return (unsigned int)__faasm_await_call_output(messageId, output, outputLen);
}

static inline long faasmReadStateSize(const char *key) { return (long)__faasm_read_state(key, 0, 0); }
static inline long faasmReadState(const char *key, uint8_t *buffer, long bufferLen) {
    return (long)__faasm_read_state(key, buffer, bufferLen);
}
static inline void faasmReadStateOffset(const char *key, long totalLen, long offset, uint8_t *buffer, long bufferLen) {
    __faasm_read_state_offset(key, totalLen, offset, buffer, bufferLen);
}
static inline void faasmWriteState(const char *key, const uint8_t *data, long dataLen) {
    __faasm_write_state(key, data, dataLen);
}
static inline void faasmWriteStateOffset(const char *key, long totalLen, long offset, const uint8_t *data, long dataLen) {
    __faasm_write_state_offset(key, totalLen, offset, data, dataLen);
}
static inline void faasmPushState(const char *key) { __faasm_push_state(key); }
static inline void faasmPullState(const char *key, long stateLen) { __faasm_pull_state(key, stateLen); }
static inline void faasmLockStateRead(const char *key) { __faasm_lock_state_read(key); }
static inline void faasmUnlockStateRead(const char *key) { __faasm_unlock_state_read(key); }
static inline void faasmLockStateWrite(const char *key) { __faasm_lock_state_write(key); }
static inline void faasmUnlockStateWrite(const char *key) { __faasm_unlock_state_write(key); }

#ifdef __cplusplus
}
#endif

#endif
