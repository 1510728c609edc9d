/* Faasm's umbrella header (faasm/faasm.h) for Ebb. */
#ifndef FAASM_FAASM_H
#define FAASM_FAASM_H

#include "faasm/core.h"

/* Faasm's entry macro: a function's main. */
#define FAASM_MAIN_FUNC() int main(int argc, char *argv[])

#endif
