// workloads/bfs: breadth-first search over a random graph the zygote generates: 2^20 vertices
// with 16 out-edges each, in CSR form (68 MiB of initial state). A call searches from a source
// vertex up to a depth limit. Input: depth limit (1..64, default 64: the whole graph).
#include <string.h>
#include "workload.h"

#define V (1u << 20)
#define DEG 16
static uint32_t edges[V * DEG];
static int32_t depth[V];
static uint32_t queue[V];

FAASM_ZYGOTE() {
    for (uint32_t i = 0; i < V * DEG; i++) edges[i] = (uint32_t)(rng_next() % V);
    return 0;
}

int main(void) {
    int limit = (int)input_long(64, 1, 64);
    memset(depth, 0xff, sizeof depth);
    uint32_t head = 0, tail = 0;
    depth[0] = 0;
    queue[tail++] = 0;
    uint64_t depth_sum = 0;
    while (head < tail) {
        uint32_t u = queue[head++];
        depth_sum += (uint64_t)depth[u];
        if (depth[u] >= limit) continue;
        for (uint32_t e = u * DEG; e < (u + 1) * DEG; e++) {
            uint32_t t = edges[e];
            if (depth[t] < 0) {
                depth[t] = depth[u] + 1;
                queue[tail++] = t;
            }
        }
    }
    output_fmt("limit=%d reached=%u depth_sum=%llu", limit, tail, (unsigned long long)depth_sum);
    return 0;
}
