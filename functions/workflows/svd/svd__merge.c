/* svd's merge block: stacks every compute block's S V^T (its LIST `res`) and posts the singular
 * values of the stack — those of the whole matrix — largest first, "%.6f" separated by spaces. */
#include "ebb/flow.h"
#include "matrix.h"

static int descending(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x < y) - (x > y);
}

int main(void) {
    int k = ebb_flow_count("res");
    if (k <= 0) return ebb_flow_post("res", "", 0) == 0 ? 0 : 1;
    matrix all = {0, 0, 0};
    for (int i = 0; i < k; i++) {
        char *text = (char *)ebb_flow_fetch_item("res", i, 0);
        matrix part;
        if (!text || parse_matrix(text, &part) != 0) return 1;
        if (i == 0) {
            all.cols = part.cols;
            all.v = calloc((size_t)k * (size_t)part.rows * (size_t)part.cols, sizeof(double));
            if (!all.v) return 1;
        }
        if (part.cols != all.cols) return 1;
        memcpy(all.v + all.rows * all.cols, part.v, sizeof(double) * (size_t)part.rows * (size_t)part.cols);
        all.rows += part.rows;
        free(text);
    }
    if (!jacobi(&all)) return 1;
    double *s = calloc((size_t)all.cols, sizeof(double));
    if (!s) return 1;
    for (int c = 0; c < all.cols; c++) s[c] = column_norm(&all, c);
    qsort(s, (size_t)all.cols, sizeof(double), descending);
    char out[256 * 24];
    int at = 0;
    for (int c = 0; c < all.cols; c++) at += snprintf(out + at, sizeof out - (size_t)at, c ? " %.6f" : "%.6f", s[c]);
    return ebb_flow_post("res", out, at) == 0 ? 0 : 1;
}
