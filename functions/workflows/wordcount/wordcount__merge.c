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
        int len = 0;
        char *lines = (char *)ebb_flow_fetch_item("counts", k, &len);
        if (!lines) return 1;
        for (char *line = strtok(lines, "\n"); line; line = strtok(0, "\n")) {
            char *tab = strchr(line, '\t');
            if (!tab || add(&t, line, (int)(tab - line), atol(tab + 1)) != 0) return 1;
        }
        free(lines);
    }
    return post_sorted(&t, "res") == 0 ? 0 : 1;
}
