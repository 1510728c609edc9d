// compat/chain (C++): chaining by name (compat/io) and by pointer, a batch, and awaiting outputs.
// Output: "name=<io's output> ptr=<square's output> batch=<rc> bad=<rc of a failing call>".
#include <cstdio>
#include <cstdlib>
#include <string>

#include "faasm/faasm.h"
#include "faasm/input.h"

// Squares its integer input.
int square() {
    int x = faasm::getIntInput();
    std::string out = std::to_string(x * x);
    faasmSetOutput(out.c_str(), (long)out.size());
    return 0;
}

// Succeeds only on input "ok".
int strict() { return std::string(faasm::getStringInput("")) == "ok" ? 0 : 1; }

int main() {
    std::string input = "chained";
    unsigned int byName = faasmChainNamed("io", reinterpret_cast<const uint8_t *>(input.data()), (long)input.size());
    unsigned int byPtr = faasmChain(square, BYTES(const_cast<char *>("12")), 2);
    char *nameOut = nullptr, *ptrOut = nullptr;
    int nameLen = 0, ptrLen = 0;
    unsigned int rcName = faasmAwaitCallOutput(byName, &nameOut, &nameLen);
    unsigned int rcPtr = faasmAwaitCallOutput(byPtr, &ptrOut, &ptrLen);
    unsigned int batch = faasmChainBatch(strict, "ok", 3);
    unsigned int bad = faasmAwaitCall(faasmChain(strict, BYTES(const_cast<char *>("no")), 2));
    if (rcName != 0 || rcPtr != 0) return 1;
    std::string out = "name=" + std::string(nameOut, nameLen) + " ptr=" + std::string(ptrOut, ptrLen) +
                      " batch=" + std::to_string(batch) + " bad=" + std::to_string(bad);
    faasm::setStringOutput(out.c_str());
    return 0;
}
