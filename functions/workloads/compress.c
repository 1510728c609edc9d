// workloads/compress: LZ77 compression (4-byte hash, 64 KiB window) of the first MiBs of a
// 128 MiB pseudo-text corpus the zygote generates, then decompression and a byte-exact check.
// Input: MiB to compress (1..128, default 4).
#include <string.h>
#include "workload.h"

#define CORPUS (128u << 20)
static uint8_t corpus[CORPUS];
static uint8_t packed[CORPUS + CORPUS / 64 + 64];
static uint8_t unpacked[CORPUS];
static uint32_t table[1 << 16];

static const char *words[16] = {"memory", "page", "fault", "node", "remote", "serverless", "function", "warm",
                                "cold", "offload", "prefetch", "the", "of", "a", "instance", "call"};

FAASM_ZYGOTE() {
    uint32_t i = 0;
    while (i < CORPUS) {
        const char *w = words[rng_next() % 16];
        while (*w && i < CORPUS) corpus[i++] = (uint8_t)*w++;
        if (i < CORPUS) corpus[i++] = (rng_next() % 12) ? ' ' : '\n';
    }
    return 0;
}

// Tokens: [literal count][literals][match length - 3, 0 = none][offset, 2 bytes if a match].
static uint32_t pack(const uint8_t *in, uint32_t n, uint8_t *out) {
    memset(table, 0, sizeof table);
    uint32_t o = 0, i = 0, lit = 0;
    while (i < n) {
        uint32_t len = 0, off = 0;
        if (i + 4 <= n) {
            uint32_t h = ((uint32_t)in[i] | in[i + 1] << 8 | in[i + 2] << 16 | (uint32_t)in[i + 3] << 24) * 2654435761u >> 16;
            uint32_t cand = table[h];
            table[h] = i + 1;
            if (cand && i + 1 - cand <= 65535) {
                cand--;
                while (i + len < n && len < 258 && in[cand + len] == in[i + len]) len++;
                off = i - cand;
            }
        }
        if (len >= 4 || lit == 255 || i + 1 == n) {
            if (len < 4) { i++; lit++; len = 0; }
            out[o++] = (uint8_t)lit;
            memcpy(out + o, in + i - lit, lit);
            o += lit;
            lit = 0;
            out[o++] = (uint8_t)(len ? len - 3 : 0);
            if (len) {
                out[o++] = (uint8_t)off;
                out[o++] = (uint8_t)(off >> 8);
                i += len;
            }
        } else {
            i++;
            lit++;
        }
    }
    return o;
}

static uint32_t unpack(const uint8_t *in, uint32_t n, uint8_t *out) {
    uint32_t i = 0, o = 0;
    while (i < n) {
        uint32_t lit = in[i++];
        memcpy(out + o, in + i, lit);
        i += lit;
        o += lit;
        uint32_t len = in[i++];
        if (len) {
            len += 3;
            uint32_t off = in[i] | (uint32_t)in[i + 1] << 8;
            i += 2;
            for (uint32_t k = 0; k < len; k++, o++) out[o] = out[o - off];
        }
    }
    return o;
}

int main(void) {
    uint32_t n = (uint32_t)input_long(4, 1, 128) << 20;
    uint32_t size = pack(corpus, n, packed);
    uint32_t back = unpack(packed, size, unpacked);
    int ok = back == n && memcmp(corpus, unpacked, n) == 0;
    output_fmt("in=%u out=%u %s", n, size, ok ? "ok" : "MISMATCH");
    return ok ? 0 : 1;
}
