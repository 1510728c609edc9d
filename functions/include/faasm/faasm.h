/* Faasm's umbrella header (faasm/faasm.h) for Ebb. */
#ifndef FAASM_FAASM_H
#define FAASM_FAASM_H

#include "faasm/core.h"

#ifdef __cplusplus
#define FAASM_EXTERN_C extern "C"
#else
#define FAASM_EXTERN_C
#endif

/* The init phase: runs once per function; the memory it leaves is every call's starting point.
 * Use as `FAASM_ZYGOTE() { ...; return 0; }`. */
#define FAASM_ZYGOTE() FAASM_EXTERN_C __attribute__((export_name("_faasm_zygote"))) int _faasm_zygote(void)

/* Faasm's entry macro: a function's main. */
#define FAASM_MAIN_FUNC() int main(int argc, char *argv[])

#endif
