// workloads/matmul: C = A x B on the top-left n x n corner of two 1024 x 1024 float matrices
// that the zygote builds (8 MiB of initial state). Input: n (1..1024, default 256).
#include "workload.h"

#define NMAX 1024
static float a[NMAX * NMAX], b[NMAX * NMAX], c[NMAX * NMAX];

FAASM_ZYGOTE() {
    for (int i = 0; i < NMAX * NMAX; i++) {
        a[i] = (float)(rng_next() % 1000) / 1000.0f;
        b[i] = (float)(rng_next() % 1000) / 1000.0f;
    }
    return 0;
}

int main(void) {
    int n = (int)input_long(256, 1, NMAX);
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) c[i * NMAX + j] = 0;
        for (int k = 0; k < n; k++) {
            float aik = a[i * NMAX + k];
            for (int j = 0; j < n; j++) c[i * NMAX + j] += aik * b[k * NMAX + j];
        }
    }
    double trace = 0;
    for (int i = 0; i < n; i++) trace += c[i * NMAX + i];
    output_fmt("n=%d trace=%.3f", n, trace);
    return 0;
}
