// ndp/grep (C++): input "KEY TEXT": the lines of object KEY that contain TEXT, found near the
// data (through the one-argument storageCallAndAwait form, with a lambda); output "N\n" then
// the lines. Return 1 when there is no such object.
#include <string>
#include <string_view>
#include <vector>

#include "faasm/faasm.h"
#include "faasm/input.h"
#include "ndpapi.h"

int main() {
    long n = faasmGetInputSize();
    std::string in(n, '\0');
    faasmGetInput(reinterpret_cast<uint8_t *>(in.data()), n);
    size_t space = in.find(' ');
    if (space == std::string::npos) return 2;
    std::string key = in.substr(0, space), text = in.substr(space + 1);
    std::vector<std::string> lines;
    int rc = faasmndp_storageCallAndAwait(key.data(), key.size(), [&]() {
        uint32_t len = 0;
        const uint8_t *data = __faasmndp_getMmap(key.data(), (int32_t)key.size(), 0, INT32_MAX, &len);
        if (data == nullptr) return 1;
        std::string_view rest(reinterpret_cast<const char *>(data), len);
        while (!rest.empty()) {
            size_t end = rest.find('\n');
            std::string_view line = rest.substr(0, end);
            if (line.find(text) != std::string_view::npos) lines.emplace_back(line);
            rest = end == std::string_view::npos ? std::string_view() : rest.substr(end + 1);
        }
        return 0;
    });
    if (rc != 0) return rc;
    std::string out = std::to_string(lines.size()) + "\n";
    for (const auto &l : lines) out += l + "\n";
    faasmSetOutput(out.c_str(), out.size());
    return 0;
}
