/* wordcount's count block: the words of its piece of text (split on whitespace), counted, as
 * "word\tcount\n" lines (MERGE: one element of merge's `counts`). */
#include <ctype.h>

#include "ebb/flow.h"
#include "words.h"

int main(void) {
    int len = 0;
    unsigned char *text = ebb_flow_fetch("file", &len);
    if (!text) return 1;
    table t = {0};
    for (int i = 0; i < len;) {
        while (i < len && isspace(text[i])) i++;
        int from = i;
        while (i < len && !isspace(text[i])) i++;
        if (i > from && add(&t, (const char *)text + from, i - from, 1) != 0) return 1;
    }
    return post_sorted(&t, "res") == 0 ? 0 : 1;
}
