// ndp/wordcount (C++, AutoNDP's style): counts the words (runs of bytes above ' ') of the object
// named by the input. The scan runs as the near-data part of the call
// (`__faasmndp_storageCallAndAwait`), reading the object in place (`__faasmndp_getMmap`); the
// caller sorts and prints "word\tcount\n" lines. Returns 1 when the object does not exist.
#include <stdio.h>
#include <string.h>

#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

#include "faasm/faasm.h"
#include "faasm/input.h"
#include "ndpapi.h"

static std::string key;

// Word counts in an open-addressing table (FNV-1a), looked up by the bytes in place: only a word
// seen for the first time is copied. (std::map<std::string> would allocate a string per word.)
class Counts {
  public:
    void add(std::string_view w) {
        if ((words_.size() + 1) * 2 > slots_.size()) grow();
        size_t mask = slots_.size() - 1;
        for (size_t i = hash(w) & mask;; i = (i + 1) & mask) {
            int32_t s = slots_[i];
            if (s < 0) {
                slots_[i] = (int32_t)words_.size();
                words_.emplace_back(std::string(w), 1u);
                return;
            }
            if (words_[s].first == w) {
                words_[s].second++;
                return;
            }
        }
    }
    // The words and their counts, sorted by word.
    std::vector<std::pair<std::string, unsigned>> sorted() const {
        auto out = words_;
        std::sort(out.begin(), out.end());
        return out;
    }

  private:
    static uint32_t hash(std::string_view w) {
        uint32_t h = 2166136261u;
        for (unsigned char c : w) h = (h ^ c) * 16777619u;
        return h;
    }
    void grow() {
        slots_.assign(slots_.empty() ? 1024 : slots_.size() * 2, -1);
        size_t mask = slots_.size() - 1;
        for (size_t s = 0; s < words_.size(); s++) {
            size_t i = hash(words_[s].first) & mask;
            while (slots_[i] >= 0) i = (i + 1) & mask;
            slots_[i] = (int32_t)s;
        }
    }
    std::vector<std::pair<std::string, unsigned>> words_;
    std::vector<int32_t> slots_;
};

static Counts counts;

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
        if (end > start) counts.add(rest.substr(start, end - start));
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
    for (const auto &[word, count] : counts.sorted()) out += word + "\t" + std::to_string(count) + "\n";
    faasmSetOutput(out.c_str(), out.size());
    return 0;
}
