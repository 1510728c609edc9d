/* wordcount done as chained Faasm calls instead of a workflow (the baseline of
 * benches/workflow.rs): one chained call per line counts its words, the caller awaits them all
 * and merges. Same output as the wordcount workflow. */
#include "faasm/faasm.h"
#include "words.h"

static int count(void) {
    long n = faasmGetInputSize();
    unsigned char *text = malloc((size_t)n + 1);
    if (!text) return 1;
    faasmGetInput(text, n);
    table t = {0};
    int len = 0;
    if (add_words(&t, text, (int)n) != 0) return 1;
    char *out = format_sorted(&t, &len);
    if (!out) return 1;
    faasmSetOutput(out, len);
    return 0;
}

int main(void) {
    long n = faasmGetInputSize();
    unsigned char *text = malloc((size_t)n + 1);
    unsigned int *ids = malloc(sizeof(unsigned int) * ((size_t)n + 1));
    if (!text || !ids) return 1;
    faasmGetInput(text, n);
    int calls = 0, from = 0;
    for (int i = 0; i <= n; i++) {
        if (i == n || text[i] == '\n') {
            if (i > from) ids[calls++] = faasmChain(count, text + from, i - from);
            from = i + 1;
        }
    }
    table t = {0};
    for (int k = 0; k < calls; k++) {
        char *out = 0;
        int len = 0;
        if (faasmAwaitCallOutput(ids[k], &out, &len) != 0) return 1;
        char *lines = malloc((size_t)len + 1);
        if (!lines) return 1;
        memcpy(lines, out, (size_t)len);
        lines[len] = 0;
        if (add_lines(&t, lines) != 0) return 1;
        free(lines);
    }
    int len = 0;
    char *out = format_sorted(&t, &len);
    if (!out) return 1;
    faasmSetOutput(out, len);
    return 0;
}
