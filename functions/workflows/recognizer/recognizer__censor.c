/* recognizer's censor (SWITCH): the translated text is illegal when it says "FORBIDDEN"; else it
 * goes to the caller as `text`. */
#include "checks.h"

int main(void) {
    int len = 0;
    unsigned char *text = ebb_flow_fetch("text", &len);
    if (!text || ebb_flow_post("text", text, len) != 0) return 1;
    return post_illegal_if("text", "FORBIDDEN");
}
