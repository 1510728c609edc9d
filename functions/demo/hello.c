// demo/hello: the smallest function.
#include <string.h>
#include "faasm/faasm.h"

int main(void) {
    const char *msg = "Hello from Ebb!";
    faasmSetOutput((const char *)msg, (long)strlen(msg));
    return 0;
}
