/* svd's start block: the matrix cut into blocks of up to ROWS rows, each one element of `matrix`
 * (FOREACH: one compute block each). */
#include "ebb/flow.h"
#include "matrix.h"

#define ROWS 2

int main(void) {
    char *text = (char *)ebb_flow_fetch("start", 0);
    matrix m;
    if (!text || parse_matrix(text, &m) != 0) return 1;
    for (int r = 0; r < m.rows; r += ROWS) {
        matrix part = {m.rows - r < ROWS ? m.rows - r : ROWS, m.cols, m.v + r * m.cols};
        int len;
        char *out = format_matrix(&part, &len);
        if (!out || ebb_flow_post("matrix", out, len) != 0) return 1;
        free(out);
    }
    return 0;
}
