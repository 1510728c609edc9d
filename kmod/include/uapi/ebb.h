/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * Ebb's kernel module: the device ABI. This header is the one source of truth; the runtime mirrors
 * it once (runtime/src/kmod/uapi.rs), and a test compiles this file and checks every size and
 * constant against the mirror.
 *
 * Each open of /dev/ebb is one region, empty until EBB_IOC_CREATE gives it a size and a backend.
 * A shared mmap of the file (offset 0 .. size) is the region's memory: a fault on a page that is
 * not resident is filled in the kernel from the backend (the region's copy of its pages; a page
 * the backend lacks reads as zeros) and, with read-around, its next pages are made resident
 * beside it (not mapped: their first touch is a cheap fault, so the accessed set stays exact).
 *
 *   open ─► EBB_IOC_CREATE ─► mmap(MAP_SHARED) ─► faults ─► EBB_IOC_EVICT / PREFETCH / ...
 *                                                          ─► close (after munmap): all freed
 *
 * The RDMA backend's pages are a memnode's registered region, read and written with one-sided
 * verbs on a reliable connection the module owns. User space keeps the control plane (it talks to
 * the memnode): it asks the module for a queue pair, hands the memnode its description and the
 * memnode's answer back, and tells the module where the region is:
 *
 *   EBB_IOC_CREATE(RDMA) ─► EBB_IOC_RDMA_QP ─► (memnode: RdmaConnect) ─► EBB_IOC_RDMA_CONNECT
 *                        ─► EBB_IOC_RDMA_REMOTE (again whenever the memnode re-keys the region)
 *
 * A page the backend holds (written through the module, or every page of a remote given with
 * EBB_RDMA_POPULATED) is read from the memnode; any other page reads as zeros without a round
 * trip. A transfer that fails or outlasts the connection's timeout breaks the connection for good:
 * the fault that needed it gets SIGBUS, and so does every later one that needs the memnode.
 *
 * Every ioctl takes page indexes (not bytes) and fails with EINVAL on a range outside the region,
 * EINVAL on reserved fields or flags that are not zero, ENOTTY on an unknown request, and EBADFD
 * (a region not created yet) before EBB_IOC_CREATE.
 */
#ifndef _UAPI_LINUX_EBB_H
#define _UAPI_LINUX_EBB_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define EBB_DEVICE_NAME "ebb"
#define EBB_ABI_VERSION 3
#define EBB_PAGE_SIZE 4096
/* The largest region: 16 GiB. */
#define EBB_MAX_PAGES (1ULL << 22)
/* The most pages one fault makes resident beside the faulting one. */
#define EBB_MAX_READAROUND 64

/* Where a region's pages live when they are not resident. */
#define EBB_BACKEND_DRAM 1 /* a page store inside the module: the in-kernel twin of `local` */
#define EBB_BACKEND_RDMA 2 /* the memnode's registered region, read with kernel verbs */

/* EBB_IOC_CREATE: gives the region its size and backend (once). */
struct ebb_create {
	__u64 pages;      /* 1 .. EBB_MAX_PAGES */
	__u32 backend;    /* EBB_BACKEND_* */
	__u32 readaround; /* 0 .. EBB_MAX_READAROUND */
	__u32 flags;      /* EBB_CREATE_* */
	__u32 reserved0;  /* zero */
	__u64 reserved[3]; /* zero */
};

/*
 * Images and bases: one copy of a function's initial state shared by all its instances.
 *
 * An *image* (EBB_CREATE_IMAGE, DRAM backend) is a region whose store is written once per page:
 * EBB_IOC_STORE_WRITE fills the pages it does not hold and leaves the others as they are (a page
 * of an initial state never changes), and nothing else changes it (EBB_IOC_EVICT and
 * EBB_IOC_PREFETCH are refused). Its mapping is read-only and shows the stored pages themselves
 * (no copy); touching a page it does not hold is SIGBUS.
 *
 * A *based* region (EBB_CREATE_BASED) may take an image as its base (EBB_IOC_SET_BASE). A fault
 * on a page that is neither resident nor in the region's own store then reads the base's page
 * if the base holds it: a read maps the base's page itself, read-only (shared by every region
 * with that base, counted once); a write, or a later write to such a page, maps a private copy
 * instead (copy-on-write). The region's own store comes first, so EBB_EVICT_FORGET (drop the
 * store's copy) is how a page goes back to reading the base. Unlike other regions, a based
 * region's pages are mapped read-only at a read and made writable by a second fault at the
 * first write after it.
 */
#define EBB_CREATE_IMAGE (1U << 0)
#define EBB_CREATE_BASED (1U << 1)

/* EBB_IOC_SET_BASE: `fd` (an open image region) becomes the region's base, or none with -1.
 * The old base's pages the region has mapped are dropped (they are clean), or with
 * EBB_BASE_KEEP replaced by copies of the region's own, resident and clean (counted in `copied`).
 * The region's own pages stay. */
struct ebb_base {
	__s32 fd;
	__u32 flags;    /* EBB_BASE_* */
	__u64 reserved; /* zero */
};
#define EBB_BASE_KEEP (1U << 0)

/* A run of pages: EBB_IOC_EVICT, EBB_IOC_PREFETCH. */
struct ebb_range {
	__u64 first;
	__u64 count;
	__u32 flags; /* EBB_EVICT_* for EBB_IOC_EVICT, zero otherwise */
	__u32 reserved;
};

/* EBB_IOC_EVICT: dirty pages are copied to the backend before they are dropped. Without it they
 * are dropped as they are, and the next touch sees the backend's copy (a reset). Either way an
 * evicted page leaves the accessed and dirty sets. */
#define EBB_EVICT_WRITEBACK (1U << 0)
/* EBB_IOC_EVICT: the backend's copies of the range's pages are dropped too (DRAM: freed; RDMA:
 * the memnode's are no longer read), so the pages read as the base's, or as zeros, next.
 * Not with EBB_EVICT_WRITEBACK. */
#define EBB_EVICT_FORGET (1U << 1)

/* EBB_IOC_STORE_WRITE / EBB_IOC_STORE_READ: the backend's copy of pages, to and from `buf`
 * (count * EBB_PAGE_SIZE bytes). Resident pages are not changed by a write: they read the new
 * bytes once evicted. */
struct ebb_pages_io {
	__u64 first;
	__u64 count;
	__u64 buf;
};

/* EBB_IOC_ACCESSED / EBB_IOC_DIRTY: bit i of `bitmap` (an array of ceil(count / 64) __u64s at
 * that user address) tells whether page first + i was accessed (faulted in: read or written) or
 * written since the set was last reset. With EBB_BITMAP_RESET the set is cleared and the pages
 * are unmapped (they stay resident), so that later accesses refault and are seen again. Reading
 * the dirty set unmaps the range's pages either way: a write costs no fault, and is seen by the
 * dirty bit of its page-table entry, which unmapping collects. */
struct ebb_bitmap {
	__u64 first;
	__u64 count;
	__u64 bitmap;
	__u32 flags;
	__u32 reserved;
};
#define EBB_BITMAP_RESET (1U << 0)

/* EBB_IOC_COUNTERS: the region's counters, and the module's pages and regions now. */
struct ebb_counters {
	__u64 faults;        /* faults the handler filled (zero or backend) */
	__u64 faults_mapped; /* faults on pages already resident (read-around, prefetch, resets) */
	__u64 fills_zero;    /* pages made resident as zeros (the backend lacked them) */
	__u64 fills_backend; /* pages made resident from the backend */
	__u64 readaround;    /* of the fills: pages filled beside a faulting one */
	__u64 prefetched;    /* of the fills: pages filled by EBB_IOC_PREFETCH */
	__u64 evicted;       /* resident pages dropped */
	__u64 written_back;  /* dirty pages copied to the backend before they were dropped */
	__u64 sigbus;        /* faults answered with SIGBUS (past the region, or the backend failed) */
	__u64 resident;      /* the region's resident pages now */
	__u64 stored;        /* pages the backend holds now (DRAM: copies in the module; RDMA: on the memnode) */
	__u64 module_pages;  /* pages the whole module holds now; 0 once every region is closed */
	__u64 module_regions; /* regions open now */
	__u64 backend_errors; /* transfers with the backend that failed (RDMA: error, timeout) */
	__u64 shared;        /* of the resident pages: the base's own, mapped read-only */
	__u64 fills_base;    /* pages made resident from the base (shared or copied) */
	__u64 copied;        /* base pages copied for a write (copy-on-write), or kept (EBB_BASE_KEEP) */
};

/* EBB_IOC_RDMA_QP: creates the region's queue pair (RDMA backend, once) on port `port` of RDMA
 * device `device` and describes it, for the memnode. The source GID is the port's first RoCE v2
 * IPv4 one on Ethernet, index 0 on InfiniBand. */
struct ebb_rdma_qp {
	char device[64]; /* in: NUL-terminated, e.g. "rxe0", "mlx4_0" */
	__u32 port;      /* in: 1 .. */
	__u32 qpn;       /* out: queue pair number */
	__u32 psn;       /* out: first packet sequence number */
	__u16 lid;       /* out: the port's LID (0 on RoCE) */
	__u16 mtu;       /* out: the port's active MTU code (1 = 256 .. 5 = 4096) */
	__u8 gid[16];    /* out: the source GID */
	__u64 reserved;  /* zero */
};

/* EBB_IOC_RDMA_CONNECT: connects the queue pair to the memnode's (once). */
struct ebb_rdma_peer {
	__u32 qpn;
	__u32 psn;
	__u16 lid;
	__u16 mtu;
	__u32 timeout_ms; /* 1 .. 600000: the most one transfer may take (also paces retries) */
	__u8 gid[16];
	__u64 reserved;   /* zero */
};

/* EBB_IOC_RDMA_REMOTE: where the region's pages are (page i at addr + i * EBB_PAGE_SIZE, under
 * rkey), replacing any earlier remote. */
struct ebb_rdma_remote {
	__u64 addr;
	__u64 len;   /* bytes, a multiple of EBB_PAGE_SIZE; pages past it cannot be held */
	__u32 rkey;
	__u32 flags; /* EBB_RDMA_POPULATED */
};
/* Every page of the remote holds data (the backend holds the first len / EBB_PAGE_SIZE pages). */
#define EBB_RDMA_POPULATED (1U << 0)

#define EBB_IOC_MAGIC 0xEB
#define EBB_IOC_VERSION _IOR(EBB_IOC_MAGIC, 0, __u32)
#define EBB_IOC_CREATE _IOW(EBB_IOC_MAGIC, 1, struct ebb_create)
#define EBB_IOC_STORE_WRITE _IOW(EBB_IOC_MAGIC, 2, struct ebb_pages_io)
#define EBB_IOC_STORE_READ _IOW(EBB_IOC_MAGIC, 3, struct ebb_pages_io)
#define EBB_IOC_EVICT _IOW(EBB_IOC_MAGIC, 4, struct ebb_range)
#define EBB_IOC_PREFETCH _IOW(EBB_IOC_MAGIC, 5, struct ebb_range)
#define EBB_IOC_ACCESSED _IOW(EBB_IOC_MAGIC, 6, struct ebb_bitmap)
#define EBB_IOC_DIRTY _IOW(EBB_IOC_MAGIC, 7, struct ebb_bitmap)
#define EBB_IOC_COUNTERS _IOR(EBB_IOC_MAGIC, 8, struct ebb_counters)
#define EBB_IOC_RDMA_QP _IOWR(EBB_IOC_MAGIC, 9, struct ebb_rdma_qp)
#define EBB_IOC_RDMA_CONNECT _IOW(EBB_IOC_MAGIC, 10, struct ebb_rdma_peer)
#define EBB_IOC_RDMA_REMOTE _IOW(EBB_IOC_MAGIC, 11, struct ebb_rdma_remote)
#define EBB_IOC_SET_BASE _IOW(EBB_IOC_MAGIC, 12, struct ebb_base)

#endif /* _UAPI_LINUX_EBB_H */
