/* Matrices as text for the svd blocks: "rows cols\n" then the values, row by row, separated by
 * whitespace. One-sided Jacobi: rotates column pairs of M until they are orthogonal, so that
 * M V = U S (singular values: the column norms). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int rows, cols;
    double *v; /* row-major */
} matrix;

static inline int parse_matrix(const char *text, matrix *m) {
    char *end;
    m->rows = (int)strtol(text, &end, 10);
    m->cols = (int)strtol(end, &end, 10);
    if (m->rows < 0 || m->cols <= 0 || m->rows > 4096 || m->cols > 256) return -1;
    m->v = calloc((size_t)m->rows * (size_t)m->cols + 1, sizeof(double));
    if (!m->v) return -1;
    for (int i = 0; i < m->rows * m->cols; i++) {
        char *next;
        m->v[i] = strtod(end, &next);
        if (next == end) return -1;
        end = next;
    }
    return 0;
}

/* `m` as text in a malloc'ed buffer; its length in *len. */
static inline char *format_matrix(const matrix *m, int *len) {
    size_t size = 32 + (size_t)m->rows * (size_t)m->cols * 32;
    char *out = malloc(size);
    if (!out) return 0;
    size_t at = (size_t)snprintf(out, size, "%d %d\n", m->rows, m->cols);
    for (int r = 0; r < m->rows; r++) {
        for (int c = 0; c < m->cols; c++) at += (size_t)snprintf(out + at, size - at, "%.17g%c", m->v[r * m->cols + c], c + 1 == m->cols ? '\n' : ' ');
    }
    *len = (int)at;
    return out;
}

/* Orthogonalises the columns of `m` in place and returns V (cols x cols, row-major), or NULL. */
static inline double *jacobi(matrix *m) {
    int n = m->cols, rows = m->rows;
    double *v = calloc((size_t)n * (size_t)n, sizeof(double));
    if (!v) return 0;
    for (int i = 0; i < n; i++) v[i * n + i] = 1;
    for (int sweep = 0; sweep < 60; sweep++) {
        double off = 0;
        for (int p = 0; p < n; p++) {
            for (int q = p + 1; q < n; q++) {
                double a = 0, b = 0, g = 0;
                for (int r = 0; r < rows; r++) {
                    double x = m->v[r * n + p], y = m->v[r * n + q];
                    a += x * x;
                    b += y * y;
                    g += x * y;
                }
                if (fabs(g) <= 1e-15 * sqrt(a * b) || g == 0) continue;
                off = fmax(off, fabs(g) / sqrt(a * b));
                double zeta = (b - a) / (2 * g);
                double t = (zeta >= 0 ? 1 : -1) / (fabs(zeta) + sqrt(1 + zeta * zeta));
                double c = 1 / sqrt(1 + t * t), s = c * t;
                for (int r = 0; r < rows; r++) {
                    double x = m->v[r * n + p], y = m->v[r * n + q];
                    m->v[r * n + p] = c * x - s * y;
                    m->v[r * n + q] = s * x + c * y;
                }
                for (int r = 0; r < n; r++) {
                    double x = v[r * n + p], y = v[r * n + q];
                    v[r * n + p] = c * x - s * y;
                    v[r * n + q] = s * x + c * y;
                }
            }
        }
        if (off < 1e-15) break;
    }
    return v;
}

/* The norm of column `c` of `m` (a singular value once `jacobi` ran). */
static inline double column_norm(const matrix *m, int c) {
    double s = 0;
    for (int r = 0; r < m->rows; r++) s += m->v[r * m->cols + c] * m->v[r * m->cols + c];
    return sqrt(s);
}
