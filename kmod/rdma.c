// SPDX-License-Identifier: GPL-2.0
/*
 * ebb.ko's RDMA backend: a region's pages on a memnode, moved by one-sided READ and WRITE on a
 * reliable connection of the module's own (kernel verbs; no rdma_cm: the memnode's control plane
 * exchanges queue pair descriptions over its TCP protocol, which user space speaks for us).
 *
 * A transfer is synchronous: the caller posts its work requests (neighbouring pages share one, up
 * to EBB_RDMA_SGE scatter entries) and polls the completion queue until every one has completed,
 * or until the connection's timeout passes without progress. On a failure the queue pair is moved
 * to the error state, which makes the device flush what is outstanding; only once every posted
 * request has completed (or been flushed) may the pages be freed. The connection stays broken.
 *
 * The memnode's side needs nothing new: to it this queue pair is one more client's, in the
 * protection domain of the identity whose control connection asked for it.
 */

#include <linux/delay.h>
#include <linux/in.h>
#include <linux/inet.h>
#include <linux/jiffies.h>
#include <linux/ktime.h>
#include <linux/random.h>
#include <linux/slab.h>
#include <net/ipv6.h>
#include <net/net_namespace.h>
#include <rdma/ib_addr.h>
#include <rdma/ib_cache.h>
#include <rdma/ib_verbs.h>

#include "rdma.h"

/* Scatter entries per work request: 16 pages (64 KiB), as the user-space transport's requests. */
#define EBB_RDMA_SGE 16
#define EBB_RDMA_WRS (EBB_RDMA_MAX_PAGES / EBB_RDMA_SGE)
/* After a failure, how long the device gets to flush what is outstanding. */
#define EBB_RDMA_FLUSH_MS 5000
/* How long a transfer's completion is polled for in a busy loop before the poller sleeps between
 * polls: far above a hardware READ's few microseconds, so that only a slow device (soft-RoCE,
 * whose own work needs the CPU this loop would spin on) sees the sleeps. */
#define EBB_RDMA_SPIN_NS (50 * NSEC_PER_USEC)

struct ebb_rdma {
	struct ib_device *dev;
	struct ib_pd *pd;
	struct ib_cq *cq;
	struct ib_qp *qp;
	u32 port;
	u32 gid_index;
	union ib_gid gid;
	u32 psn;
	enum ib_mtu mtu; /* the port's active MTU */
	bool roce;
	bool connected;
	bool broken;
	unsigned int sge; /* scatter entries per request: min(EBB_RDMA_SGE, the device's) */
	unsigned long timeout; /* jiffies */
	u64 addr, len;
	u32 rkey;
	/* One transfer's requests and their DMA addresses (calls are serialised by the caller). */
	struct ib_rdma_wr wr[EBB_RDMA_WRS];
	struct ib_sge sgl[EBB_RDMA_MAX_PAGES];
	u64 dma[EBB_RDMA_MAX_PAGES];
	struct ib_wc wc[EBB_RDMA_WRS];
};

/* The port's first RoCE v2 GID holding an IPv4 address (the memnode routes to it). */
static int ebb_rdma_roce_gid(struct ebb_rdma *q, int table_len)
{
	const struct ib_gid_attr *ga;
	int i;

	for (i = 0; i < table_len; i++) {
		ga = rdma_get_gid_attr(q->dev, q->port, i);
		if (IS_ERR(ga))
			continue;
		if (ga->gid_type == IB_GID_TYPE_ROCE_UDP_ENCAP && ipv6_addr_v4mapped((struct in6_addr *)ga->gid.raw)) {
			q->gid = ga->gid;
			q->gid_index = i;
			rdma_put_gid_attr(ga);
			return 0;
		}
		rdma_put_gid_attr(ga);
	}
	return -EADDRNOTAVAIL;
}

int ebb_rdma_create(struct ebb_rdma **out, struct ebb_rdma_qp *info)
{
	struct ib_qp_init_attr init = {};
	struct ib_port_attr port;
	struct ib_qp_attr attr = {};
	struct ebb_rdma *q;
	int err;

	if (info->reserved || info->port == 0 || strnlen(info->device, sizeof(info->device)) == sizeof(info->device))
		return -EINVAL;
	q = kzalloc(sizeof(*q), GFP_KERNEL);
	if (!q)
		return -ENOMEM;
	q->dev = ib_device_get_by_name(info->device, RDMA_DRIVER_UNKNOWN);
	if (!q->dev) {
		kfree(q);
		return -ENODEV;
	}
	q->port = info->port;
	err = -EINVAL;
	if (!rdma_is_port_valid(q->dev, q->port))
		goto put;
	err = ib_query_port(q->dev, q->port, &port);
	if (err)
		goto put;
	q->roce = rdma_protocol_roce(q->dev, q->port);
	if (q->roce)
		err = ebb_rdma_roce_gid(q, port.gid_tbl_len);
	else
		err = rdma_query_gid(q->dev, q->port, 0, &q->gid);
	if (err)
		goto put;
	q->sge = min_t(unsigned int, EBB_RDMA_SGE, q->dev->attrs.max_send_sge);
	if (q->dev->attrs.max_sge_rd)
		q->sge = min_t(unsigned int, q->sge, q->dev->attrs.max_sge_rd);
	q->pd = ib_alloc_pd(q->dev, 0);
	if (IS_ERR(q->pd)) {
		err = PTR_ERR(q->pd);
		goto put;
	}
	q->cq = ib_alloc_cq(q->dev, q, EBB_RDMA_WRS + 1, 0, IB_POLL_DIRECT);
	if (IS_ERR(q->cq)) {
		err = PTR_ERR(q->cq);
		goto pd;
	}
	init.qp_type = IB_QPT_RC;
	init.send_cq = q->cq;
	init.recv_cq = q->cq;
	init.sq_sig_type = IB_SIGNAL_ALL_WR;
	init.cap.max_send_wr = EBB_RDMA_WRS;
	init.cap.max_recv_wr = 1;
	init.cap.max_send_sge = q->sge;
	init.cap.max_recv_sge = 1;
	q->qp = ib_create_qp(q->pd, &init);
	if (IS_ERR(q->qp)) {
		err = PTR_ERR(q->qp);
		goto cq;
	}
	attr.qp_state = IB_QPS_INIT;
	attr.pkey_index = 0;
	attr.port_num = q->port;
	attr.qp_access_flags = 0; /* it only asks: nothing reaches this side's memory */
	err = ib_modify_qp(q->qp, &attr, IB_QP_STATE | IB_QP_PKEY_INDEX | IB_QP_PORT | IB_QP_ACCESS_FLAGS);
	if (err)
		goto qp;
	q->psn = get_random_u32() & 0xffffff;
	info->qpn = q->qp->qp_num;
	info->psn = q->psn;
	info->lid = port.lid;
	q->mtu = port.active_mtu;
	info->mtu = port.active_mtu;
	memcpy(info->gid, q->gid.raw, sizeof(info->gid));
	*out = q;
	return 0;
qp:
	ib_destroy_qp(q->qp);
cq:
	ib_free_cq(q->cq);
pd:
	ib_dealloc_pd(q->pd);
put:
	ib_device_put(q->dev);
	kfree(q);
	return err;
}

struct ebb_resolve {
	struct completion done;
	int status;
};

static void ebb_rdma_resolved(int status, struct sockaddr *src, struct rdma_dev_addr *addr, void *context)
{
	struct ebb_resolve *r = context;

	r->status = status;
	complete(&r->done);
}

/*
 * The peer's Ethernet address, from its GID's IPv4 address: kernel users of the verbs hand
 * ib_modify_qp() a resolved address vector (the core resolves it only for user space).
 */
static int ebb_rdma_dmac(struct ebb_rdma *q, const union ib_gid *dgid, unsigned int timeout_ms, u8 *dmac)
{
	struct sockaddr_in src = { .sin_family = AF_INET }, dst = { .sin_family = AF_INET };
	struct rdma_dev_addr da = { .net = &init_net };
	struct ebb_resolve r;
	int err;

	if (!ipv6_addr_v4mapped((const struct in6_addr *)dgid->raw))
		return -EADDRNOTAVAIL;
	memcpy(&src.sin_addr.s_addr, &q->gid.raw[12], 4);
	memcpy(&dst.sin_addr.s_addr, &dgid->raw[12], 4);
	init_completion(&r.done);
	/* The resolver calls back exactly once: resolved, failed, or after timeout_ms. */
	err = rdma_resolve_ip((struct sockaddr *)&src, (struct sockaddr *)&dst, &da, timeout_ms, ebb_rdma_resolved, false, &r);
	if (err)
		return err;
	wait_for_completion(&r.done);
	if (r.status)
		return r.status;
	memcpy(dmac, da.dst_dev_addr, ETH_ALEN);
	return 0;
}

/* The verbs' local ACK timeout exponent (4.096 µs × 2^n) covering `ms`, within 12 .. 24. */
static u8 ebb_rdma_ack_exponent(unsigned int ms)
{
	u64 ns = (u64)ms * NSEC_PER_MSEC;
	u8 n = 12;

	while (n < 24 && (4096ULL << n) < ns)
		n++;
	return n;
}

int ebb_rdma_connect(struct ebb_rdma *q, const struct ebb_rdma_peer *peer)
{
	struct ib_qp_attr attr = {};
	union ib_gid dgid;
	int err;

	if (peer->reserved || peer->timeout_ms == 0 || peer->timeout_ms > 600000 || peer->mtu < IB_MTU_256 || peer->mtu > IB_MTU_4096)
		return -EINVAL;
	if (q->connected || q->broken)
		return -EISCONN;
	memcpy(dgid.raw, peer->gid, sizeof(dgid.raw));
	attr.qp_state = IB_QPS_RTR;
	attr.path_mtu = min_t(u32, peer->mtu, q->mtu);
	attr.dest_qp_num = peer->qpn;
	attr.rq_psn = peer->psn;
	attr.max_dest_rd_atomic = 1;
	attr.min_rnr_timer = 12;
	attr.ah_attr.type = rdma_ah_find_type(q->dev, q->port);
	rdma_ah_set_port_num(&attr.ah_attr, q->port);
	rdma_ah_set_sl(&attr.ah_attr, 0);
	if (q->roce) {
		rdma_ah_set_grh(&attr.ah_attr, &dgid, 0, q->gid_index, 64, 0);
		err = ebb_rdma_dmac(q, &dgid, peer->timeout_ms, attr.ah_attr.roce.dmac);
		if (err)
			return err;
	} else {
		rdma_ah_set_dlid(&attr.ah_attr, peer->lid);
	}
	err = ib_modify_qp(q->qp, &attr,
			   IB_QP_STATE | IB_QP_AV | IB_QP_PATH_MTU | IB_QP_DEST_QPN | IB_QP_RQ_PSN |
				   IB_QP_MAX_DEST_RD_ATOMIC | IB_QP_MIN_RNR_TIMER);
	if (err)
		return err;
	memset(&attr, 0, sizeof(attr));
	attr.qp_state = IB_QPS_RTS;
	/* A request is resent after a quarter of the bound without an acknowledgement (7 tries): a
	 * lost packet is recovered within it, a slow peer is not flooded (as in user space). */
	attr.timeout = ebb_rdma_ack_exponent(peer->timeout_ms / 4);
	attr.retry_cnt = 7;
	attr.rnr_retry = 7;
	attr.sq_psn = q->psn;
	/* Every request of one transfer may be an outstanding READ at once (the memnode's queue
	 * pair takes up to 16: memnode/src/rdma/verbs.rs). */
	attr.max_rd_atomic = clamp_t(u32, q->dev->attrs.max_qp_init_rd_atom, 1, EBB_RDMA_WRS);
	err = ib_modify_qp(q->qp, &attr,
			   IB_QP_STATE | IB_QP_TIMEOUT | IB_QP_RETRY_CNT | IB_QP_RNR_RETRY | IB_QP_SQ_PSN |
				   IB_QP_MAX_QP_RD_ATOMIC);
	if (err)
		return err;
	q->timeout = msecs_to_jiffies(peer->timeout_ms);
	q->connected = true;
	return 0;
}

int ebb_rdma_remote(struct ebb_rdma *q, const struct ebb_rdma_remote *remote)
{
	if ((remote->flags & ~EBB_RDMA_POPULATED) || remote->len % EBB_PAGE_SIZE || remote->addr + remote->len < remote->addr)
		return -EINVAL;
	q->addr = remote->addr;
	q->len = remote->len;
	q->rkey = remote->rkey;
	return 0;
}

/* Polls until `want` completions have arrived or `deadline` passes; failed ones set *failed. */
static unsigned int ebb_rdma_poll(struct ebb_rdma *q, unsigned int want, unsigned long deadline, bool *failed)
{
	u64 spin_end = ktime_get_ns() + EBB_RDMA_SPIN_NS;
	unsigned int got = 0;
	int n, k;

	while (got < want) {
		n = ib_poll_cq(q->cq, ARRAY_SIZE(q->wc), q->wc);
		if (n < 0) {
			*failed = true;
			break;
		}
		for (k = 0; k < n; k++)
			if (q->wc[k].status != IB_WC_SUCCESS)
				*failed = true;
		got += n;
		if (n)
			continue;
		if (time_after(jiffies, deadline))
			break;
		if (ktime_get_ns() < spin_end)
			cpu_relax();
		else
			usleep_range(5, 10);
	}
	return got;
}

int ebb_rdma_io(struct ebb_rdma *q, u64 first, struct page **pages, unsigned int n, bool write, bool *in_use)
{
	enum dma_data_direction dir = write ? DMA_TO_DEVICE : DMA_FROM_DEVICE;
	const struct ib_send_wr *bad = NULL;
	unsigned int k, w, nwr, posted, done;
	bool failed = false;
	int err = 0;

	*in_use = false;
	if (!q || !q->connected || q->broken)
		return -ENOTCONN;
	if (n == 0 || n > EBB_RDMA_MAX_PAGES)
		return -EINVAL;
	if (first + n > q->len / EBB_PAGE_SIZE)
		return -ERANGE;
	for (k = 0; k < n; k++) {
		q->dma[k] = ib_dma_map_page(q->dev, pages[k], 0, PAGE_SIZE, dir);
		if (ib_dma_mapping_error(q->dev, q->dma[k])) {
			while (k--)
				ib_dma_unmap_page(q->dev, q->dma[k], PAGE_SIZE, dir);
			return -ENOMEM;
		}
		q->sgl[k].addr = q->dma[k];
		q->sgl[k].length = PAGE_SIZE;
		q->sgl[k].lkey = q->pd->local_dma_lkey;
	}
	nwr = DIV_ROUND_UP(n, q->sge);
	for (w = 0; w < nwr; w++) {
		struct ib_rdma_wr *wr = &q->wr[w];

		memset(wr, 0, sizeof(*wr));
		wr->wr.wr_id = w;
		wr->wr.sg_list = &q->sgl[w * q->sge];
		wr->wr.num_sge = min(q->sge, n - w * q->sge);
		wr->wr.opcode = write ? IB_WR_RDMA_WRITE : IB_WR_RDMA_READ;
		wr->wr.send_flags = IB_SEND_SIGNALED;
		wr->wr.next = w + 1 < nwr ? &q->wr[w + 1].wr : NULL;
		wr->remote_addr = q->addr + (first + (u64)w * q->sge) * EBB_PAGE_SIZE;
		wr->rkey = q->rkey;
	}
	posted = nwr;
	if (ib_post_send(q->qp, &q->wr[0].wr, &bad)) {
		/* The requests before `bad` went out and will complete. */
		posted = 0;
		while (posted < nwr && &q->wr[posted].wr != bad)
			posted++;
		failed = true;
	}
	done = ebb_rdma_poll(q, posted, jiffies + q->timeout, &failed);
	if (done < posted && !failed)
		err = -ETIMEDOUT;
	else if (failed)
		err = -EIO;
	if (err) {
		struct ib_qp_attr attr = { .qp_state = IB_QPS_ERR };

		q->broken = true;
		/* In the error state the device flushes every outstanding request with an error
		 * completion; until it has, it may still write into the pages. */
		ib_modify_qp(q->qp, &attr, IB_QP_STATE);
		done += ebb_rdma_poll(q, posted - done, jiffies + msecs_to_jiffies(EBB_RDMA_FLUSH_MS), &failed);
		if (done < posted) {
			pr_err("ebb: an RDMA transfer was neither completed nor flushed: its %u pages are never freed\n", n);
			*in_use = true;
			return err;
		}
	}
	for (k = 0; k < n; k++)
		ib_dma_unmap_page(q->dev, q->dma[k], PAGE_SIZE, dir);
	return err;
}

void ebb_rdma_destroy(struct ebb_rdma *q)
{
	if (!q)
		return;
	ib_destroy_qp(q->qp);
	ib_free_cq(q->cq);
	ib_dealloc_pd(q->pd);
	ib_device_put(q->dev);
	kfree(q);
}
