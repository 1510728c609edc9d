/* Ebb's guest ABI: the host functions a function imports from module "env", with Faasm's names
 * and wasm32 signatures (Faasm's host_interface.h). Written for Ebb; see DESIGN.md. */
#ifndef FAASM_HOST_INTERFACE_H
#define FAASM_HOST_INTERFACE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FAASM_IMPORT(name) __attribute__((import_module("env"), import_name(#name)))

FAASM_IMPORT(__faasm_read_input) int32_t __faasm_read_input(uint8_t *buffer, unsigned int bufferLen);
FAASM_IMPORT(__faasm_write_output) void __faasm_write_output(const uint8_t *output, unsigned int outputLen);
FAASM_IMPORT(__faasm_chain_name)
unsigned int __faasm_chain_name(const char *name, const uint8_t *inputData, unsigned int inputDataSize);
FAASM_IMPORT(__faasm_chain_ptr)
unsigned int __faasm_chain_ptr(int (*funcPtr)(void), const uint8_t *inputData, unsigned int inputDataSize);
FAASM_IMPORT(__faasm_await_call) int __faasm_await_call(unsigned int messageId);
FAASM_IMPORT(__faasm_await_call_output) int __faasm_await_call_output(unsigned int messageId, char **output, int *outputLen);
FAASM_IMPORT(__faasm_read_state) unsigned int __faasm_read_state(const char *key, uint8_t *buffer, long bufferLen);
FAASM_IMPORT(__faasm_write_state) void __faasm_write_state(const char *key, const uint8_t *data, long dataLen);
FAASM_IMPORT(__faasm_read_state_offset)
void __faasm_read_state_offset(const char *key, long totalLen, long offset, uint8_t *buffer, long bufferLen);
FAASM_IMPORT(__faasm_write_state_offset)
void __faasm_write_state_offset(const char *key, long totalLen, long offset, const uint8_t *data, long dataLen);
FAASM_IMPORT(__faasm_push_state) void __faasm_push_state(const char *key);
FAASM_IMPORT(__faasm_pull_state) void __faasm_pull_state(const char *key, long stateLen);
FAASM_IMPORT(__faasm_lock_state_read) void __faasm_lock_state_read(const char *key);
FAASM_IMPORT(__faasm_unlock_state_read) void __faasm_unlock_state_read(const char *key);
FAASM_IMPORT(__faasm_lock_state_write) void __faasm_lock_state_write(const char *key);
FAASM_IMPORT(__faasm_unlock_state_write) void __faasm_unlock_state_write(const char *key);

#ifdef __cplusplus
}
#endif

#endif
