// workloads/model: a small dense "model" whose weights the zygote builds: 8 layers of
// 2048 x 2048 floats (128 MiB of initial state). A call runs an input vector through the first
// `layers` layers (matrix-vector product + ReLU). Input: layers (1..8, default 8).
#include "workload.h"

#define D 2048
#define LAYERS 8
static float w[LAYERS][D * D];
static float v[2][D];

FAASM_ZYGOTE() {
    for (int l = 0; l < LAYERS; l++)
        for (int i = 0; i < D * D; i++) w[l][i] = ((float)(rng_next() % 2001) - 1000.0f) / (1000.0f * 45.0f);
    return 0;
}

int main(void) {
    int layers = (int)input_long(LAYERS, 1, LAYERS);
    for (int i = 0; i < D; i++) v[0][i] = (float)(i % 17) / 17.0f;
    for (int l = 0; l < layers; l++) {
        const float *in = v[l & 1];
        float *out = v[(l + 1) & 1];
        for (int r = 0; r < D; r++) {
            const float *row = &w[l][r * D];
            float s = 0;
            for (int k = 0; k < D; k++) s += row[k] * in[k];
            out[r] = s > 0 ? s : 0;
        }
    }
    output_fmt("layers=%d out=%016llx", layers, (unsigned long long)fnv(14695981039346656037ull, v[layers & 1], sizeof v[0]));
    return 0;
}
