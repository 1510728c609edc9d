// compat/disk (C): what a user's functions write to their files is bounded (the runtime's
// --max-files-per-user / --max-file-entries-per-user). Input "write N": N KiB to /tmp/blob
// (replacing it), 1 KiB per write; "files N": up to N new empty files /tmp/fI; "clean": both
// removed. Output: "done=<KiB written, or files made> edquot=<1 if a write was refused with
// EDQUOT>".
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "faasm/faasm.h"

int main(void) {
    char in[32] = {0};
    faasmGetInput((uint8_t *)in, sizeof in - 1);
    int n = 0, done = 0, err = 0;
    char path[32];
    if (sscanf(in, "write %d", &n) == 1) {
        int fd = open("/tmp/blob", O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0) return 1;
        char kib[1024];
        memset(kib, 'x', sizeof kib);
        for (; done < n; done++) {
            if (write(fd, kib, sizeof kib) != (ssize_t)sizeof kib) {
                err = errno;
                break;
            }
        }
        close(fd);
    } else if (sscanf(in, "files %d", &n) == 1) {
        for (; done < n; done++) {
            snprintf(path, sizeof path, "/tmp/f%d", done);
            int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
            if (fd < 0) {
                err = errno;
                break;
            }
            close(fd);
        }
    } else if (strcmp(in, "clean") == 0) {
        unlink("/tmp/blob");
        for (int i = 0; i < 1000; i++) {
            snprintf(path, sizeof path, "/tmp/f%d", i);
            unlink(path);
        }
    } else {
        return 2;
    }
    char out[64];
    int len = snprintf(out, sizeof out, "done=%d edquot=%d", done, err == EDQUOT);
    faasmSetOutput(out, len);
    return 0;
}
