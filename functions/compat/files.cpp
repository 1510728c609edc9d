// compat/files (C++): the function's own filesystem (a file written in its root and read back,
// Faasm's /etc/hosts), a shared file under faasm://, and a file written to state.
// Output: "own=<content> hosts=<first field> shared=<content> state=<size>".
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <string>

#include "faasm/faasm.h"
#include "faasm/files.h"
#include "faasm/input.h"

static bool writeFile(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (f == nullptr) return false;
    fputs(text, f);
    return fclose(f) == 0;
}

int main() {
    if (!writeFile("/notes.txt", "own file")) return 1;
    char *own = faasm::readFileToString("notes.txt");
    char *hosts = faasm::readFileToString("/etc/hosts");
    mkdir("faasm://dir", 0755);
    if (!writeFile("faasm://dir/shared.txt", "shared file")) return 2;
    char *shared = faasm::readFileToString("faasm://dir/shared.txt");
    unsigned long size = faasmWriteStateFromFile("from_file", "/notes.txt");
    if (own == nullptr || hosts == nullptr || shared == nullptr) return 3;
    std::string h(hosts);
    std::string out = std::string("own=") + own + " hosts=" + h.substr(0, h.find('\t')) + " shared=" + shared +
                      " state=" + std::to_string(size);
    faasm::setStringOutput(out.c_str());
    return 0;
}
