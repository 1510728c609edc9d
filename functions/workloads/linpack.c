// workloads/linpack: solves a random dense n x n system A x = b by LU decomposition with partial
// pivoting in double precision (LINPACK's kernel) and checks the residual. Input: n (1..1500,
// default 300); the matrix takes 8 n^2 bytes (18 MiB at n = 1500).
#include <math.h>
#include "workload.h"

#define NMAX 1500
static double a[NMAX * NMAX], lu[NMAX * NMAX], x[NMAX], rhs[NMAX];
static int piv[NMAX];

int main(void) {
    int n = (int)input_long(300, 1, NMAX);
    rng_state = 0x1234567ull + (uint64_t)n;
    for (int i = 0; i < n * n; i++) a[i] = (double)(rng_next() % 2000) / 1000.0 - 1.0;
    for (int i = 0; i < n; i++) {
        a[i * n + i] += n; // diagonally dominant: well conditioned
        rhs[i] = 1.0;
    }
    for (int i = 0; i < n * n; i++) lu[i] = a[i];
    for (int k = 0; k < n; k++) {
        int p = k;
        for (int i = k + 1; i < n; i++)
            if (fabs(lu[i * n + k]) > fabs(lu[p * n + k])) p = i;
        piv[k] = p;
        if (p != k)
            for (int j = 0; j < n; j++) {
                double t = lu[k * n + j];
                lu[k * n + j] = lu[p * n + j];
                lu[p * n + j] = t;
            }
        for (int i = k + 1; i < n; i++) {
            double f = lu[i * n + k] /= lu[k * n + k];
            for (int j = k + 1; j < n; j++) lu[i * n + j] -= f * lu[k * n + j];
        }
    }
    for (int i = 0; i < n; i++) x[i] = rhs[i];
    for (int k = 0; k < n; k++) {
        double t = x[piv[k]];
        x[piv[k]] = x[k];
        x[k] = t;
    }
    for (int i = 0; i < n; i++)
        for (int j = 0; j < i; j++) x[i] -= lu[i * n + j] * x[j];
    for (int i = n - 1; i >= 0; i--) {
        for (int j = i + 1; j < n; j++) x[i] -= lu[i * n + j] * x[j];
        x[i] /= lu[i * n + i];
    }
    double resid = 0;
    for (int i = 0; i < n; i++) {
        double s = -rhs[i];
        for (int j = 0; j < n; j++) s += a[i * n + j] * x[j];
        resid = fmax(resid, fabs(s));
    }
    output_fmt("n=%d residual=%s", n, resid < 1e-9 ? "ok" : "BAD");
    return resid < 1e-9 ? 0 : 1;
}
