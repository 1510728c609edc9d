/* The recognizer's stand-ins for its image models: deterministic checks on the image's bytes.
 * An "image" is text; it is "adult" or "violent" if it contains those words, its extracted text
 * is what follows "text:" (to the end of the line), and a translation upper-cases it. */
#include <ctype.h>
#include <string.h>

#include "ebb/flow.h"

/* Posts the SWITCH output `illegal` as True when `needle` occurs in input `input`. */
static inline int post_illegal_if(const char *input, const char *needle) {
    char *img = (char *)ebb_flow_fetch(input, 0);
    if (!img) return 1;
    const char *verdict = strstr(img, needle) ? "True" : "False";
    free(img);
    return ebb_flow_post("illegal", verdict, (int)strlen(verdict)) == 0 ? 0 : 1;
}
