/* recognizer's mosaic block: the image with every letter and digit masked ('#'). */
#include "checks.h"

int main(void) {
    int len = 0;
    unsigned char *img = ebb_flow_fetch("img", &len);
    if (!img || !ebb_flow_fetch("start", 0)) return 1;
    for (int i = 0; i < len; i++) {
        if (isalnum(img[i])) img[i] = '#';
    }
    return ebb_flow_post("content", img, len) == 0 ? 0 : 1;
}
