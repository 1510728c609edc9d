/* A word → count table for the wordcount blocks (linear search: the samples' texts are small). */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *word;
    long count;
} entry;

typedef struct {
    entry *e;
    int n, cap;
} table;

static inline int add(table *t, const char *w, int len, long c) {
    for (int i = 0; i < t->n; i++) {
        if ((int)strlen(t->e[i].word) == len && memcmp(t->e[i].word, w, (size_t)len) == 0) {
            t->e[i].count += c;
            return 0;
        }
    }
    if (t->n == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 64;
        entry *grown = realloc(t->e, (size_t)t->cap * sizeof(entry));
        if (!grown) return -1;
        t->e = grown;
    }
    char *copy = malloc((size_t)len + 1);
    if (!copy) return -1;
    memcpy(copy, w, (size_t)len);
    copy[len] = 0;
    t->e[t->n++] = (entry){copy, c};
    return 0;
}

static inline int by_word(const void *a, const void *b) { return strcmp(((const entry *)a)->word, ((const entry *)b)->word); }

/* The table as "word\tcount\n" lines sorted by word, in a malloc'ed buffer; its length in *len. */
static inline char *format_sorted(table *t, int *len) {
    qsort(t->e, (size_t)t->n, sizeof(entry), by_word);
    size_t size = 1;
    for (int i = 0; i < t->n; i++) size += strlen(t->e[i].word) + 24;
    char *out = malloc(size);
    if (!out) return 0;
    size_t at = 0;
    for (int i = 0; i < t->n; i++) at += (size_t)snprintf(out + at, size - at, "%s\t%ld\n", t->e[i].word, t->e[i].count);
    *len = (int)at;
    return out;
}

/* Adds "word\tcount\n" lines to the table. */
static inline int add_lines(table *t, char *lines) {
    for (char *line = strtok(lines, "\n"); line; line = strtok(0, "\n")) {
        char *tab = strchr(line, '\t');
        if (!tab || add(t, line, (int)(tab - line), atol(tab + 1)) != 0) return -1;
    }
    return 0;
}

/* Adds the whitespace-separated words of `text` to the table. */
static inline int add_words(table *t, const unsigned char *text, int len) {
    for (int i = 0; i < len;) {
        while (i < len && isspace(text[i])) i++;
        int from = i;
        while (i < len && !isspace(text[i])) i++;
        if (i > from && add(t, (const char *)text + from, i - from, 1) != 0) return -1;
    }
    return 0;
}
