/* recognizer's translation: upper-cases the text. */
#include "checks.h"

int main(void) {
    int len = 0;
    unsigned char *text = ebb_flow_fetch("text", &len);
    if (!text) return 1;
    for (int i = 0; i < len; i++) text[i] = (unsigned char)toupper(text[i]);
    return ebb_flow_post("translated_text", text, len) == 0 ? 0 : 1;
}
