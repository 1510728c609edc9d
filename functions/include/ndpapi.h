/* Near-data calls as AutoNDP's functions include them (`#include "ndpapi.h"`): the
 * `__faasmndp_*` host calls (declared in faasm/host_interface.h, AutoNDP's signatures) and
 * AutoNDP's two helpers. Written for Ebb; see docs/platform.md ("Objects"). */
#ifndef NDPAPI_H_INCLUDED
#define NDPAPI_H_INCLUDED 1

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "faasm/host_interface.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The object `name` as a read-only stream (mode "r"), or NULL when there is none. */
static inline FILE *faasmndp_fopen(const char *name, const char *mode) {
    uint32_t len = 0;
    uint8_t *data = __faasmndp_getMmap(name, (int32_t)strlen(name), 0, INT32_MAX, &len);
    return data == NULL ? NULL : fmemopen(data, len, mode);
}

#ifdef __cplusplus
}

/* Runs `f` (any callable returning int, e.g. a lambda with captures) as the near-data part of
 * the call, passing it through the one-argument form. */
template <class F>
int faasmndp_storageCallAndAwait(const char *keyPtr, uint32_t keyLen, F f) {
    struct Thunk {
        F f;
        static int run(int32_t self) { return reinterpret_cast<Thunk *>(static_cast<intptr_t>(self))->f(); }
    };
    Thunk thunk{static_cast<F &&>(f)};
    return __faasmndp_storageCallAndAwait1(keyPtr, keyLen, reinterpret_cast<FaasmNdpFuncPtr>(&Thunk::run),
                                           static_cast<int32_t>(reinterpret_cast<intptr_t>(&thunk)));
}
#endif

#endif
