/* Faasm's print helpers (faasm/print.h) for Ebb: C++. */
#ifndef FAASM_PRINT_H
#define FAASM_PRINT_H

#include <stdio.h>

#ifdef __cplusplus
#include <stddef.h>

#include <iostream>

namespace faasm {
/* Prints the size elements of data on one line, space-separated. */
template <typename T>
void printArray(T *data, size_t size) {
    for (size_t i = 0; i < size; i++) std::cout << data[i] << (i + 1 < size ? " " : "");
    std::cout << std::endl;
}
}  // namespace faasm
#endif

#endif
