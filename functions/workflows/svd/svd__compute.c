/* svd's compute block: for its block B = U S V^T, posts S V^T (cols x cols). Stacked, these
 * have the singular values of the whole matrix (the U's are orthonormal), which merge takes. */
#include "ebb/flow.h"
#include "matrix.h"

int main(void) {
    char *text = (char *)ebb_flow_fetch("matrix", 0);
    matrix b;
    if (!text || parse_matrix(text, &b) != 0) return 1;
    double *v = jacobi(&b);
    if (!v) return 1;
    int n = b.cols;
    matrix svt = {n, n, calloc((size_t)n * (size_t)n, sizeof(double))};
    if (!svt.v) return 1;
    for (int j = 0; j < n; j++) {
        double s = column_norm(&b, j);
        for (int c = 0; c < n; c++) svt.v[j * n + c] = s * v[c * n + j];
    }
    int len;
    char *out = format_matrix(&svt, &len);
    return out && ebb_flow_post("res", out, len) == 0 ? 0 : 1;
}
