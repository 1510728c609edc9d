/* wordcount's count block: the words of its piece of text (split on whitespace), counted, as
 * "word\tcount\n" lines (MERGE: one element of merge's `counts`). */
#include "ebb/flow.h"
#include "words.h"

int main(void) {
    int len = 0, out_len = 0;
    unsigned char *text = ebb_flow_fetch("file", &len);
    table t = {0};
    if (!text || add_words(&t, text, len) != 0) return 1;
    char *out = format_sorted(&t, &out_len);
    return out && ebb_flow_post("res", out, out_len) == 0 ? 0 : 1;
}
