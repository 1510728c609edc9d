// compat/fds (C): open files are the call's. Input "leak": opens /etc/hosts and leaves it open,
// output "fd=<n>" (the same n every call: nothing the previous call left is still open). Input
// "many": opens files until refused, output "opened=<n> errno=<name>" (bounded, and the runtime
// lives).
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>

#include "faasm/faasm.h"

int main(void) {
    char in[16] = {0};
    long n = faasmGetInputSize();
    faasmGetInput((uint8_t *)in, n < 15 ? n : 15);
    char out[128];
    int len;
    if (strcmp(in, "many") == 0) {
        int opened = 0;
        while (opened < 100000 && open("/etc/hosts", O_RDONLY) >= 0) opened++;
        len = snprintf(out, sizeof out, "opened=%d errno=%s", opened, errno == ENFILE ? "ENFILE" : errno == EMFILE ? "EMFILE" : strerror(errno));
    } else {
        len = snprintf(out, sizeof out, "fd=%d", open("/etc/hosts", O_RDONLY));
    }
    faasmSetOutput(out, len);
    return 0;
}
