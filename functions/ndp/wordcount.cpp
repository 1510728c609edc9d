// ndp/wordcount (C++, AutoNDP's style): counts the words (runs of bytes above ' ') of the object
// named by the input. The scan runs as the near-data part of the call
// (`__faasmndp_storageCallAndAwait`), reading the object in place (`__faasmndp_getMmap`); the
// caller sorts and prints "word\tcount\n" lines. Returns 1 when the object does not exist.
#include <stdio.h>
#include <string.h>

#include <algorithm>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "faasm/faasm.h"
#include "faasm/input.h"
#include "ndpapi.h"

static std::string key;
static std::map<std::string, unsigned> counts;

static int scan() {
    uint32_t len = 0;
    const uint8_t *data = __faasmndp_getMmap(key.data(), (int32_t)key.size(), 0, INT32_MAX, &len);
    if (data == nullptr) return 1;
    std::string_view rest(reinterpret_cast<const char *>(data), len);
    while (!rest.empty()) {
        size_t start = 0;
        while (start < rest.size() && static_cast<unsigned char>(rest[start]) <= ' ') start++;
        size_t end = start;
        while (end < rest.size() && static_cast<unsigned char>(rest[end]) > ' ') end++;
        if (end > start) counts[std::string(rest.substr(start, end - start))]++;
        rest = rest.substr(end);
    }
    return 0;
}

int main() {
    long n = faasmGetInputSize();
    std::vector<uint8_t> in(n);
    faasmGetInput(in.data(), n);
    key.assign(in.begin(), in.end());
    int rc = __faasmndp_storageCallAndAwait(key.data(), (uint32_t)key.size(), &scan);
    if (rc != 0) {
        faasm::setStringOutput("no such object");
        return rc;
    }
    std::string out;
    for (const auto &[word, count] : counts) out += word + "\t" + std::to_string(count) + "\n";
    faasmSetOutput(out.c_str(), out.size());
    return 0;
}
