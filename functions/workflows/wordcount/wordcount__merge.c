/* wordcount's merge block: the sum of every count block's counts (its LIST `counts`), as
 * "word\tcount\n" lines sorted by word. Checks that it got VIRTUAL.CNT elements. */
#include "ebb/flow.h"
#include "words.h"

int main(void) {
    unsigned char *cnt = ebb_flow_fetch("VIRTUAL.CNT", 0);
    int n = ebb_flow_count("counts");
    if (!cnt || n < 0 || atoi((const char *)cnt) != n) return 2;
    table t = {0};
    for (int k = 0; k < n; k++) {
        char *lines = (char *)ebb_flow_fetch_item("counts", k, 0);
        if (!lines || add_lines(&t, lines) != 0) return 1;
        free(lines);
    }
    int len = 0;
    char *out = format_sorted(&t, &len);
    return out && ebb_flow_post("res", out, len) == 0 ? 0 : 1;
}
