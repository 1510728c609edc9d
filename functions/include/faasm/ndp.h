/* Faasm's near-data calls under the SDK's own name: the same as AutoNDP's `ndpapi.h` (the
 * `__faasmndp_*` host calls and its helpers), which functions written against AutoNDP include. */
#ifndef FAASM_NDP_H_INCLUDED
#define FAASM_NDP_H_INCLUDED 1

#include "ndpapi.h"

#endif
