// workloads/image: grayscale conversion and a 3x3 box blur over the first `rows` rows of a
// 4096 x 4096 RGBA image the zygote generates (64 MiB of initial state). Input: rows (3..4096,
// default 512).
#include "workload.h"

#define W 4096
#define H 4096
static uint32_t rgba[W * H];
static uint8_t gray[W * H], blur[W * H];

FAASM_ZYGOTE() {
    for (uint32_t y = 0; y < H; y++)
        for (uint32_t x = 0; x < W; x++) {
            uint32_t noise = (uint32_t)rng_next() & 0x0f0f0f;
            rgba[y * W + x] = ((x ^ y) & 0xff) | ((x * 3 & 0xff) << 8) | ((y * 5 & 0xff) << 16) | 0xff000000u;
            rgba[y * W + x] ^= noise;
        }
    return 0;
}

int main(void) {
    int rows = (int)input_long(512, 3, H);
    for (int i = 0; i < rows * W; i++) {
        uint32_t p = rgba[i];
        gray[i] = (uint8_t)((77 * (p & 0xff) + 150 * (p >> 8 & 0xff) + 29 * (p >> 16 & 0xff)) >> 8);
    }
    for (int y = 1; y < rows - 1; y++)
        for (int x = 1; x < W - 1; x++) {
            int s = 0;
            for (int dy = -1; dy <= 1; dy++)
                for (int dx = -1; dx <= 1; dx++) s += gray[(y + dy) * W + x + dx];
            blur[y * W + x] = (uint8_t)(s / 9);
        }
    output_fmt("rows=%d sum=%016llx", rows, (unsigned long long)fnv(14695981039346656037ull, blur, (size_t)rows * W));
    return 0;
}
