/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The RDMA backend of ebb.ko: one reliable connection per region to the memnode's queue pair, and
 * synchronous one-sided transfers between the region's pages and the memnode's registered region.
 * The caller (core.c) serialises every call on one connection (the region's lock).
 */
#ifndef EBB_RDMA_H
#define EBB_RDMA_H

#include <linux/mm_types.h>
#include <linux/types.h>

#include "include/uapi/ebb.h"

/* The most pages one ebb_rdma_io() moves. */
#define EBB_RDMA_MAX_PAGES 128

struct ebb_rdma;

/* Creates the connection's queue pair on `qp->device` port `qp->port` and fills its description. */
int ebb_rdma_create(struct ebb_rdma **out, struct ebb_rdma_qp *qp);
/* Connects to the memnode's queue pair (once). */
int ebb_rdma_connect(struct ebb_rdma *q, const struct ebb_rdma_peer *peer);
/* Sets where the region's pages are. */
int ebb_rdma_remote(struct ebb_rdma *q, const struct ebb_rdma_remote *remote);
/*
 * Reads (or with `write`, writes) — on `q`, which may be NULL (no queue pair yet: -ENOTCONN) — `n` ≤ EBB_RDMA_MAX_PAGES pages between `pages` and the remote's
 * pages first .. first + n - 1, and waits for every transfer. 0, or a negative errno: -ENOTCONN
 * (not connected, or broken by an earlier failure), -ERANGE (past the remote), -EIO (a failed
 * transfer), -ETIMEDOUT. After any failure but the first two the connection is broken for good.
 * If the device might still write into `pages` (its outstanding transfers could not be flushed),
 * `*in_use` is set: the caller must never free or reuse them.
 */
int ebb_rdma_io(struct ebb_rdma *q, u64 first, struct page **pages, unsigned int n, bool write, bool *in_use);
void ebb_rdma_destroy(struct ebb_rdma *q);

#endif
