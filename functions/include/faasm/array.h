/* Faasm's state-backed array (faasm/array.h) for Ebb: C++. */
#ifndef FAASM_ARRAY_H
#define FAASM_ARRAY_H

#include <stddef.h>

#include "faasm/core.h"
#include "faasm/state.h"

#ifdef __cplusplus
namespace faasm {
/* nElems elements of T kept in state at key, used through a mapped pointer: an element written
 * through operator[] is flagged dirty, push() publishes the flagged ones. */
template <typename T>
class AsyncArray {
  public:
    AsyncArray(const char *keyIn, size_t nElemsIn) : key(keyIn), nElems(nElemsIn), bytesSize(nElemsIn * sizeof(T)), contents(nullptr) {}

    void zero() {
        faasm::zeroState(key, bytesSize);
        pullLazy();
    }

    T &operator[](int idx) {
        faasmFlagStateOffsetDirty(key, (long)bytesSize, (long)(idx * sizeof(T)), (long)sizeof(T));
        return contents[idx];
    }

    void pullLazy() { contents = reinterpret_cast<T *>(faasmReadStatePtr(key, (long)bytesSize)); }

    void pull() {
        faasmPullState(key, (long)bytesSize);
        pullLazy();
    }

    void push() { faasmPushStatePartial(key); }

    T *data() { return contents; }

  private:
    const char *key;
    size_t nElems;
    size_t bytesSize;
    T *contents;
};
}  // namespace faasm
#endif

#endif
