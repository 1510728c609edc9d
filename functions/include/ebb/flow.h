/*
 * Ebb's workflow data ABI: a block of a DataFlower-style workflow reads its named inputs and
 * posts its named outputs (DataFlower's store.fetch([...]) / store.post(name, value)).
 *
 *   input_datas  NORMAL  one value          ebb_flow_fetch(name, &len)
 *                LIST    its elements       ebb_flow_count(name), ebb_flow_fetch_item(name, i, &len)
 *   output_datas NORMAL  one value          ebb_flow_post(name, data, len) (a later post replaces it)
 *                MERGE   this instance's element of the destination's LIST: the same call
 *                FOREACH a list: each post appends one element; each element starts one
 *                        instance of the destination block (no post: zero elements)
 *
 * Large values (64 KiB and up) are handed over as pages, not copied: write an output into a
 * buffer from ebb_flow_buffer(len) and post it from the buffer's start, and the post seals its
 * pages where they are; ebb_flow_fetch maps such a value's pages into its (page-aligned) buffer
 * copy-on-write. Either side may write its copy afterwards: the other never sees it. Anything
 * else is copied, with the same result.
 *
 * VIRTUAL.CNT (a FOREACH's element count, as decimal text) is posted by the runtime; a block
 * that takes it as an input reads it like any other. A block that does not post an output
 * that has destinations fails the workflow (a SWITCH block's condition outputs excepted).
 * These calls work only in a call made by a workflow (POST /w/...): elsewhere they trap.
 */
#ifndef EBB_FLOW_H
#define EBB_FLOW_H

#include <stdlib.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EBB_IMPORT(name) __attribute__((import_module("env"), import_name(name)))

/* Elements of input `name`: 1 for a NORMAL input, n for a LIST; -1 if the block has none. */
EBB_IMPORT("__ebb_flow_count") int __ebb_flow_count(const char *name);
/* Copies up to `len` bytes of element `index` of input `name` to `buf`; returns how many, or
 * with len 0 the element's size; -1 if there is no such input or element. */
EBB_IMPORT("__ebb_flow_fetch") int __ebb_flow_fetch(const char *name, int index, unsigned char *buf, int len);
/* Posts `len` bytes to output `name`; 0, or -1 if the block declares no such output. */
EBB_IMPORT("__ebb_flow_post") int __ebb_flow_post(const char *name, const unsigned char *data, int len);
/* Makes [buf, buf+len) — whole pages never touched — an output buffer whose pages a post from
 * `buf` hands over; 0, or -1 (the range stays ordinary memory, and posts from it copy). */
EBB_IMPORT("__ebb_flow_buffer") int __ebb_flow_buffer(unsigned char *buf, int len);

/* Values from this size up go by pages. */
#define EBB_FLOW_PAGES 65536
#define EBB_FLOW_PAGE 4096

/* `n` bytes from malloc, page-aligned when large (so that pages can be mapped there). */
static inline unsigned char *ebb_flow_alloc_(size_t n) {
    if (n < EBB_FLOW_PAGES) return (unsigned char *)malloc(n);
    return (unsigned char *)aligned_alloc(EBB_FLOW_PAGE, (n + EBB_FLOW_PAGE - 1) / EBB_FLOW_PAGE * EBB_FLOW_PAGE);
}

static inline int ebb_flow_count(const char *name) { return __ebb_flow_count(name); }

/* Element `index` of input `name` in a malloc'ed, NUL-terminated buffer (free it); its size in
 * *len. NULL if there is none. */
static inline unsigned char *ebb_flow_fetch_item(const char *name, int index, int *len) {
    int n = __ebb_flow_fetch(name, index, 0, 0);
    if (n < 0) return 0;
    unsigned char *buf = ebb_flow_alloc_((size_t)n + 1);
    if (!buf) return 0;
    if (n > 0) __ebb_flow_fetch(name, index, buf, n);
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

/* A NORMAL input's value (see ebb_flow_fetch_item). */
static inline unsigned char *ebb_flow_fetch(const char *name, int *len) { return ebb_flow_fetch_item(name, 0, len); }

static inline int ebb_flow_post(const char *name, const void *data, int len) {
    return __ebb_flow_post(name, (const unsigned char *)data, len);
}

/* A buffer of `len` bytes (free it) to write an output into and post from its start: from
 * EBB_FLOW_PAGES up, its pages are handed over instead of copied. NULL if out of memory. */
static inline void *ebb_flow_buffer(int len) {
    if (len < 0) return 0;
    unsigned char *buf = ebb_flow_alloc_((size_t)len);
    if (buf && len >= EBB_FLOW_PAGES)
        __ebb_flow_buffer(buf, (len + EBB_FLOW_PAGE - 1) / EBB_FLOW_PAGE * EBB_FLOW_PAGE);
    return buf;
}

#ifdef __cplusplus
}
#endif

#endif
