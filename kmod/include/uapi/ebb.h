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
 * Every ioctl takes page indexes (not bytes) and fails with EINVAL on a range outside the region,
 * EINVAL on reserved fields or flags that are not zero, ENOTTY on an unknown request, and EBADFD
 * (a region not created yet) before EBB_IOC_CREATE.
 */
#ifndef _UAPI_LINUX_EBB_H
#define _UAPI_LINUX_EBB_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define EBB_DEVICE_NAME "ebb"
#define EBB_ABI_VERSION 1
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
	__u64 reserved[4]; /* zero (the RDMA backend's peer and keys will live here) */
};

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
 * are unmapped (they stay resident), so that later accesses refault and are seen again. */
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
	__u64 stored;        /* the region's pages in the DRAM backend now */
	__u64 module_pages;  /* pages the whole module holds now; 0 once every region is closed */
	__u64 module_regions; /* regions open now */
};

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

#endif /* _UAPI_LINUX_EBB_H */
