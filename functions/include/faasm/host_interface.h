/* Ebb's guest ABI: the host functions a function imports from module "env", with the names, C
 * types and wasm32 signatures of Faasm's host_interface.h (faasm/cpp). Written for Ebb; see
 * DESIGN.md and docs/platform.md. Every pointer and `long` is an i32 on wasm32.
 *
 * The last group is declared so that Faasm code using it compiles, but Ebb does not provide it:
 * a module importing any of those is refused at upload, naming the import. */
#ifndef FAASM_HOST_INTERFACE_H
#define FAASM_HOST_INTERFACE_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FAASM_IMPORT(name) __attribute__((import_module("env"), import_name(#name)))

/* ---- Input, output, chaining ---- */
FAASM_IMPORT(__faasm_read_input) long __faasm_read_input(unsigned char *buffer, long bufferLen);
FAASM_IMPORT(__faasm_write_output) void __faasm_write_output(const char *output, long outputLen);
FAASM_IMPORT(__faasm_chain_name)
unsigned int __faasm_chain_name(const char *name, const unsigned char *inputData, long inputDataSize);
FAASM_IMPORT(__faasm_chain_ptr)
unsigned int __faasm_chain_ptr(int (*funcPtr)(), const unsigned char *inputData, long inputDataSize);
FAASM_IMPORT(__faasm_await_call) int __faasm_await_call(unsigned int messageId);
FAASM_IMPORT(__faasm_await_call_output) int __faasm_await_call_output(unsigned int messageId, char **output, int *outputLen);
FAASM_IMPORT(__faasm_conf_flag) unsigned int __faasm_conf_flag(const char *key);
FAASM_IMPORT(__faasm_backtrace) void __faasm_backtrace(const int depth);

/* ---- State ---- */
FAASM_IMPORT(__faasm_read_state) long __faasm_read_state(const char *key, unsigned char *buffer, long bufferLen);
FAASM_IMPORT(__faasm_read_state_ptr) unsigned char *__faasm_read_state_ptr(const char *key, long totalLen);
FAASM_IMPORT(__faasm_write_state) void __faasm_write_state(const char *key, const unsigned char *data, long dataLen);
FAASM_IMPORT(__faasm_append_state) void __faasm_append_state(const char *key, const unsigned char *data, long dataLen);
FAASM_IMPORT(__faasm_read_appended_state)
void __faasm_read_appended_state(const char *key, unsigned char *data, long dataLen, long nElems);
FAASM_IMPORT(__faasm_clear_appended_state) void __faasm_clear_appended_state(const char *key);
FAASM_IMPORT(__faasm_write_state_offset)
void __faasm_write_state_offset(const char *key, long totalLen, long offset, const unsigned char *data, long dataLen);
FAASM_IMPORT(__faasm_write_state_from_file) unsigned int __faasm_write_state_from_file(const char *key, const char *filePath);
FAASM_IMPORT(__faasm_read_state_offset)
void __faasm_read_state_offset(const char *key, long totalLen, long offset, unsigned char *buffer, long bufferLen);
FAASM_IMPORT(__faasm_flag_state_dirty) void __faasm_flag_state_dirty(const char *key, long totalLen);
FAASM_IMPORT(__faasm_flag_state_offset_dirty)
void __faasm_flag_state_offset_dirty(const char *key, long totalLen, long offset, long dataLen);
FAASM_IMPORT(__faasm_read_state_offset_ptr)
unsigned char *__faasm_read_state_offset_ptr(const char *key, long totalLen, long offset, long len);
FAASM_IMPORT(__faasm_push_state) void __faasm_push_state(const char *key);
FAASM_IMPORT(__faasm_push_state_partial) void __faasm_push_state_partial(const char *key);
FAASM_IMPORT(__faasm_push_state_partial_mask) void __faasm_push_state_partial_mask(const char *key, const char *maskKey);
FAASM_IMPORT(__faasm_pull_state) void __faasm_pull_state(const char *key, long stateLen);
FAASM_IMPORT(__faasm_lock_state_read) void __faasm_lock_state_read(const char *key);
FAASM_IMPORT(__faasm_unlock_state_read) void __faasm_unlock_state_read(const char *key);
FAASM_IMPORT(__faasm_lock_state_write) void __faasm_lock_state_write(const char *key);
FAASM_IMPORT(__faasm_unlock_state_write) void __faasm_unlock_state_write(const char *key);

/* ---- Near-data calls: AutoNDP's names, C types and signatures (its ndpapi.h) ---- */
typedef int (*FaasmNdpFuncPtr)();
FAASM_IMPORT(__faasmndp_unmap) int32_t __faasmndp_unmap(uint8_t *buffer, int32_t length);
FAASM_IMPORT(__faasmndp_put)
int32_t __faasmndp_put(const char *keyPtr, uint32_t keyLen, const uint8_t *dataPtr, uint32_t dataLen);
FAASM_IMPORT(__faasmndp_getMmap)
uint8_t *__faasmndp_getMmap(const char *keyPtr, int32_t keyLen, int64_t offset, int64_t maxRequestedLen, uint32_t *outDataLenPtr);
FAASM_IMPORT(__faasmndp_storageCallAndAwait)
int __faasmndp_storageCallAndAwait(const char *keyPtr, uint32_t keyLen, FaasmNdpFuncPtr funcPtr);
FAASM_IMPORT(__faasmndp_storageCallAndAwait1)
int __faasmndp_storageCallAndAwait1(const char *keyPtr, uint32_t keyLen, FaasmNdpFuncPtr funcPtr, int32_t arg1);
FAASM_IMPORT(__faasmndp_storageCallAndAwait2)
int __faasmndp_storageCallAndAwait2(const char *keyPtr, uint32_t keyLen, FaasmNdpFuncPtr funcPtr, int32_t arg1, int32_t arg2);

/* ---- Not provided by Ebb (refused at upload; docs/platform.md says why) ---- */
FAASM_IMPORT(__faasm_get_py_user) void __faasm_get_py_user(unsigned char *buffer, long bufferLen);
FAASM_IMPORT(__faasm_get_py_func) void __faasm_get_py_func(unsigned char *buffer, long bufferLen);
FAASM_IMPORT(__faasm_get_py_entry) void __faasm_get_py_entry(unsigned char *buffer, long bufferLen);
FAASM_IMPORT(__faasm_chain_py) unsigned int __faasm_chain_py(const char *name, const unsigned char *inputData, long inputDataSize);
FAASM_IMPORT(__faasm_sm_reduce) void __faasm_sm_reduce(void *var, int varType, int reduceOp, int currentBatch);
FAASM_IMPORT(__faasm_sm_critical_local) void __faasm_sm_critical_local(void);
FAASM_IMPORT(__faasm_sm_critical_local_end) void __faasm_sm_critical_local_end(void);
FAASM_IMPORT(__faasm_migrate_point) void __faasm_migrate_point(void (*f)(int), int arg);
FAASM_IMPORT(__faasm_host_interface_test) void __faasm_host_interface_test(int testNum);
FAASM_IMPORT(__faasm_s3_get_num_buckets) int __faasm_s3_get_num_buckets(void);
FAASM_IMPORT(__faasm_s3_list_buckets) void __faasm_s3_list_buckets(void *bucketsBuffer, int *bucketsBufferLens);
FAASM_IMPORT(__faasm_s3_get_num_keys) int __faasm_s3_get_num_keys(const char *bucketName);
FAASM_IMPORT(__faasm_s3_get_num_keys_with_prefix) int __faasm_s3_get_num_keys_with_prefix(const char *bucketName, const char *prefix);
FAASM_IMPORT(__faasm_s3_list_keys) void __faasm_s3_list_keys(const char *bucketName, void *keysBuffer, int *keysBufferLens);
FAASM_IMPORT(__faasm_s3_list_keys_with_prefix)
void __faasm_s3_list_keys_with_prefix(const char *bucketName, const char *prefix, void *keysBuffer, int *keysBufferLens);
FAASM_IMPORT(__faasm_s3_add_key_bytes)
int __faasm_s3_add_key_bytes(const char *bucketName, const char *keyName, void *keyBuffer, int keyBufferLen, bool overwrite);
FAASM_IMPORT(__faasm_s3_get_key_bytes)
int __faasm_s3_get_key_bytes(const char *bucketName, const char *keyName, void *keyBuffer, int *keyBufferLen, bool tolerateMissing);

#ifdef __cplusplus
}
#endif

#endif
