/* wordcount's start block: each non-empty line of the text is one element of `file` (FOREACH:
 * one count block per line). */
#include "ebb/flow.h"

int main(void) {
    int len = 0;
    unsigned char *text = ebb_flow_fetch("start", &len);
    if (!text) return 1;
    int from = 0;
    for (int i = 0; i <= len; i++) {
        if (i == len || text[i] == '\n') {
            if (i > from && ebb_flow_post("file", text + from, i - from) != 0) return 1;
            from = i + 1;
        }
    }
    free(text);
    return 0;
}
