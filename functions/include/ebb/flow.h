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

static inline int ebb_flow_count(const char *name) { return __ebb_flow_count(name); }

/* Element `index` of input `name` in a malloc'ed, NUL-terminated buffer (free it); its size in
 * *len. NULL if there is none. */
static inline unsigned char *ebb_flow_fetch_item(const char *name, int index, int *len) {
    int n = __ebb_flow_fetch(name, index, 0, 0);
    if (n < 0) return 0;
    unsigned char *buf = (unsigned char *)malloc((size_t)n + 1);
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

#ifdef __cplusplus
}
#endif

#endif
