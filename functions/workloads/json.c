// workloads/json: parses the first `records` objects of a JSON array the zygote generates
// (200 000 records, about 14 MiB of text) into a tree, sums a field and serialises the tree back,
// checking the result equals the source text. Input: records (1..200000, default 20000).
#include <string.h>
#include "workload.h"

#define RECORDS 200000
#define TEXT (16u << 20)
static char text[TEXT];
static uint32_t text_len;
static uint32_t record_end[RECORDS];

enum { OBJ, ARR, STR, NUM };
typedef struct { uint8_t type; uint32_t first, next, key, key_len, str, len; long long num; } Node;
#define NODES (RECORDS * 12)
static Node nodes[NODES];
static uint32_t node_count;
static char out[TEXT];
static uint32_t out_len;

FAASM_ZYGOTE() {
    static const char *tags[4] = {"red", "green", "blue", "gray"};
    uint32_t p = 0;
    text[p++] = '[';
    for (int r = 0; r < RECORDS; r++) {
        if (r) text[p++] = ',';
        p += (uint32_t)snprintf(text + p, TEXT - p, "{\"id\":%d,\"name\":\"item%d\",\"value\":%d,\"tags\":[\"%s\",\"%s\"]}", r, r,
                                (int)(rng_next() % 100000), tags[rng_next() % 4], tags[rng_next() % 4]);
        record_end[r] = p;
    }
    text[p++] = ']';
    text_len = p;
    return 0;
}

static uint32_t pos;

static uint32_t parse_value(void);

static uint32_t parse_string(uint32_t *len) {
    uint32_t start = ++pos;
    while (text[pos] != '"') pos++;
    *len = pos++ - start;
    return start;
}

static uint32_t parse_value(void) {
    uint32_t id = node_count++;
    Node *n = &nodes[id];
    memset(n, 0, sizeof *n);
    if (text[pos] == '{' || text[pos] == '[') {
        int obj = text[pos++] == '{';
        n->type = obj ? OBJ : ARR;
        uint32_t *link = &n->first;
        while (text[pos] != (obj ? '}' : ']')) {
            uint32_t key = 0, key_len = 0;
            if (obj) {
                key = parse_string(&key_len);
                pos++; // ':'
            }
            uint32_t child = parse_value();
            nodes[child].key = key;
            nodes[child].key_len = key_len;
            *link = child + 1;
            link = &nodes[child].next;
            if (text[pos] == ',') pos++;
        }
        pos++;
    } else if (text[pos] == '"') {
        n->type = STR;
        n->str = parse_string(&n->len);
    } else {
        n->type = NUM;
        n->num = strtoll(text + pos, NULL, 10);
        while (text[pos] == '-' || (text[pos] >= '0' && text[pos] <= '9')) pos++;
    }
    return id;
}

static void emit(const char *s, uint32_t n) {
    memcpy(out + out_len, s, n);
    out_len += n;
}

static void serialise(uint32_t id, int in_obj) {
    Node *n = &nodes[id];
    if (in_obj) {
        emit("\"", 1);
        emit(text + n->key, n->key_len);
        emit("\":", 2);
    }
    if (n->type == STR) {
        emit("\"", 1);
        emit(text + n->str, n->len);
        emit("\"", 1);
    } else if (n->type == NUM) {
        char buf[24];
        emit(buf, (uint32_t)snprintf(buf, sizeof buf, "%lld", n->num));
    } else {
        emit(n->type == OBJ ? "{" : "[", 1);
        for (uint32_t c = n->first; c; c = nodes[c - 1].next) {
            if (c != n->first) emit(",", 1);
            serialise(c - 1, n->type == OBJ);
        }
        emit(n->type == OBJ ? "}" : "]", 1);
    }
}

int main(void) {
    int records = (int)input_long(20000, 1, RECORDS);
    long long sum = 0;
    node_count = out_len = 0;
    pos = 1; // after '['
    for (int r = 0; r < records; r++) {
        uint32_t root = parse_value();
        for (uint32_t c = nodes[root].first; c; c = nodes[c - 1].next)
            if (nodes[c - 1].key_len == 5 && memcmp(text + nodes[c - 1].key, "value", 5) == 0) sum += nodes[c - 1].num;
        if (r) emit(",", 1);
        serialise(root, 0);
        pos++; // ','
    }
    int same = out_len == record_end[records - 1] - 1 && memcmp(out, text + 1, out_len) == 0;
    output_fmt("records=%d sum=%lld %s", records, sum, same ? "ok" : "MISMATCH");
    return same ? 0 : 1;
}
