/* recognizer's adult check (SWITCH): illegal when the image says "adult". */
#include "checks.h"

int main(void) { return post_illegal_if("img", "adult"); }
