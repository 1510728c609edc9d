// demo/reverse (C++): Faasm's C++ input helpers with Debian's wasm32 libc++.
#include <algorithm>
#include <string>
#include "faasm/faasm.h"
#include "faasm/input.h"

int main() {
    std::string s = faasm::getStringInput("hello");
    std::reverse(s.begin(), s.end());
    faasm::setStringOutput(s.c_str());
    return 0;
}
