/* Faasm's faasm/memory.h for Ebb. Faasm uses it to keep a `memory.grow` in every module (one
 * runtime shrinks modules without one); Ebb grows memory from the host either way, so it only
 * has to exist and compile. */
#ifndef FAASM_MEMORY_H
#define FAASM_MEMORY_H

#endif
