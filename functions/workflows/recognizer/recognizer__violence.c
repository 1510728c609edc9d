/* recognizer's violence check (SWITCH): illegal when the image says "violence". */
#include "checks.h"

int main(void) { return post_illegal_if("img", "violence"); }
