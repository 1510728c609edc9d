// compat/runtime (C++): time, random, environment, argv and conf flags as Faasm gives them, and
// a C++ throw (input "throw"): it cannot unwind with this libc++, so the call ends with an error.
// Output: "mono=<1 if monotonic> epoch=<1 if after 2020> clock=<1 if clock() advances>
// rand=<1 if in range> env=<PYTHONHOME> argv0=<argv[0]> on=<flag> off=<flag> args=<argv[1..]>".
#include <stdlib.h>
#include <time.h>

#include <stdexcept>
#include <string>

#include "faasm/faasm.h"
#include "faasm/input.h"
#include "faasm/random.h"
#include "faasm/time.h"

int main(int argc, char *argv[]) {
    if (std::string(faasm::getStringInput("")) == "throw") throw std::runtime_error("thrown on purpose");
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    clock_t c0 = clock();
    struct timespec pause = {0, 2000000};
    nanosleep(&pause, nullptr);
    clock_gettime(CLOCK_MONOTONIC, &b);
    clock_t c1 = clock();
    bool mono = b.tv_sec > a.tv_sec || (b.tv_sec == a.tv_sec && b.tv_nsec > a.tv_nsec);
    bool epoch = faasm::getSecondsSinceEpoch() > 1577836800.0;
    bool inRange = true;
    for (int i = 0; i < 100; i++) {
        int r = faasm::randomInteger(3, 5);
        float f = faasm::randomFloat();
        inRange &= r >= 3 && r <= 5 && f >= 0.0f && f < 1.0f;
    }
    const char *home = getenv("PYTHONHOME");
    std::string out = "mono=" + std::to_string(mono) + " epoch=" + std::to_string(epoch) + " clock=" + std::to_string(c1 > c0) +
                      " rand=" + std::to_string(inRange) + " env=" + (home ? home : "-") + " argv0=" + (argc > 0 ? argv[0] : "-") +
                      " on=" + std::to_string(getConfFlag("ALWAYS_ON")) + " off=" + std::to_string(getConfFlag("ALWAYS_OFF")) + " args=";
    for (int i = 1; i < argc; i++) out += std::string(i > 1 ? "," : "") + argv[i];
    faasm::setStringOutput(out.c_str());
    return 0;
}
