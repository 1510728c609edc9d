/* Faasm's file helpers (faasm/files.h) for Ebb: C++. */
#ifndef FAASM_FILES_H
#define FAASM_FILES_H

#ifdef __cplusplus
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

namespace faasm {
/* The size of the file at path, or -1 if it cannot be read. */
inline long getFileLength(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) return -1;
    return (long)st.st_size;
}

/* The whole file at path as a NUL-terminated string (malloc'd), or nullptr if it cannot be read
 * or is empty. */
inline char *readFileToString(const char *path) {
    long len = getFileLength(path);
    if (len <= 0) return nullptr;
    FILE *f = fopen(path, "rb");
    if (f == nullptr) return nullptr;
    char *buf = static_cast<char *>(malloc((size_t)len + 1));
    size_t got = buf != nullptr ? fread(buf, 1, (size_t)len, f) : 0;
    fclose(f);
    if (got == 0) {
        free(buf);
        return nullptr;
    }
    buf[got] = '\0';
    return buf;
}
}  // namespace faasm
#endif

#endif
