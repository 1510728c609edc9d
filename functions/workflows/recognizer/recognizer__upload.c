/* recognizer's upload block: hands the uploaded image to the checks and the later blocks. */
#include "ebb/flow.h"

int main(void) {
    int len = 0;
    unsigned char *img = ebb_flow_fetch("start", &len);
    return img && ebb_flow_post("img", img, len) == 0 ? 0 : 1;
}
