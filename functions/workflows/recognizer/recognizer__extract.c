/* recognizer's text extraction: what follows "text:" in the image, to the end of its line. */
#include "checks.h"

int main(void) {
    char *img = (char *)ebb_flow_fetch("img", 0);
    if (!img || !ebb_flow_fetch("start_0", 0) || !ebb_flow_fetch("start_1", 0)) return 1;
    char *text = strstr(img, "text:");
    text = text ? text + 5 : img + strlen(img);
    int len = (int)strcspn(text, "\n");
    return ebb_flow_post("text", text, len) == 0 ? 0 : 1;
}
