// C++ exception entry points for wasm32 builds whose libc++abi has none (Debian's): a `throw`
// cannot unwind here, so it ends the call as an uncaught exception would — with a message naming
// the exception's type — instead of failing to link. `catch` blocks compile and never run.
#include <cstdio>
#include <cstdlib>
#include <typeinfo>

extern "C" {
void *__cxa_allocate_exception(size_t size) noexcept {
    void *p = calloc(1, size);
    if (p == nullptr) abort();
    return p;
}

void __cxa_free_exception(void *p) noexcept { free(p); }

[[noreturn]] void __cxa_throw(void *, std::type_info *type, void (*)(void *)) {
    fprintf(stderr, "terminate: a C++ exception of type %s was thrown; wasm32 libc++ here cannot unwind, so the call ends\n",
            type != nullptr ? type->name() : "?");
    abort();
}
}
