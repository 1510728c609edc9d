// SPDX-License-Identifier: GPL-2.0
/*
 * ebb.ko: Ebb's kernel-assisted fault path. A misc device /dev/ebb; each open file is one region
 * whose shared mmap is filled in the kernel, in the fault handler, from the region's backend. The
 * ABI (ioctls, structs, error rules) is include/uapi/ebb.h.
 *
 * Pages and references. A region keeps two sparse arrays (xarrays) of pages it allocated: the
 * *resident* pages (what the mapping shows) and the DRAM backend's *stored* copies. Each holds one
 * reference per page; a mapped page has one more per PTE, taken by the fault core from the
 * reference our handler returns. Every page the module allocates is counted in `ebb_pages` and
 * uncounted when the module drops its own reference, so the count is 0 once every region is
 * closed (the guest suite checks it before rmmod).
 *
 * Locking. `region->lock` (a mutex: faults may sleep) guards both arrays and the counters. The
 * fault handler returns its page locked (VM_FAULT_LOCKED) and the fault core unlocks it only once
 * the PTE is set; eviction takes each page's lock before it drops the page, and unmaps it once
 * more if a fault mapped it meanwhile — so no PTE outlives the page's place in the region.
 * Dirty tracking costs a write nothing: there is no ->page_mkwrite (so no write notification),
 * pages are mapped writable, and a write sets its PTE's dirty bit; unmapping a page moves that bit
 * to the page's PG_dirty flag, which ebb_collect_dirty() and eviction fold into the dirty set.
 *
 * The RDMA backend (rdma.c) keeps no copies: a region's `held` bitmap says which pages the
 * memnode holds, and a fault reads the faulting page and its read-around neighbours that the
 * memnode holds in one transfer, under the region's lock.
 *
 * Each region has an inode of its own (a pseudo file system) so that unmap_mapping_range() reaches
 * only that region's mappings: every open of a misc device shares the device's inode otherwise.
 *
 * Images and bases (see the header). An image's stored pages never change and are never dropped
 * while it is open, and a based region holds its base's file, so a base's page looked up without
 * the base's lock stays valid. A based region keeps the base's pages it maps in its resident
 * array too, marked EBB_SHARED, with one plain reference each (they are the image's, counted in
 * `ebb_pages` once). Such a page is never mapped writable: a based region's mapping has
 * ->page_mkwrite, so the fault core maps read faults read-only, and a write to a shared page
 * (at its fault, or in ->page_mkwrite) replaces it with a private copy first. That costs a second
 * fault at the first write after a read, which is why only based regions have the method.
 */

#include <linux/bitmap.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/highmem.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mount.h>
#include <linux/mutex.h>
#include <linux/pagemap.h>
#include <linux/pseudo_fs.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/xarray.h>

#include "include/uapi/ebb.h"
#include "rdma.h"

#define EBB_FS_MAGIC 0x45424221 /* "EBB!" */

static const struct file_operations ebb_fops;
static atomic64_t ebb_pages = ATOMIC64_INIT(0);
static atomic64_t ebb_regions = ATOMIC64_INIT(0);
static struct vfsmount *ebb_mnt;

/* The mark of a resident entry that is the base's page, not the region's own. */
#define EBB_SHARED XA_MARK_1

struct ebb_region {
	struct mutex lock;
	struct inode *inode; /* the region's own address space */
	bool created;
	u64 pages;
	u32 backend;
	u32 readaround;
	u32 flags;            /* EBB_CREATE_* */
	struct file *base_file; /* a based region's base (holding the image open), or NULL */
	struct ebb_region *base;
	struct xarray resident;
	struct xarray stored;
	unsigned long *accessed; /* bitmaps of `pages` bits */
	unsigned long *dirty;
	/* The RDMA backend: its connection, the pages the memnode holds, one transfer's pages. */
	struct ebb_rdma *rdma;
	unsigned long *held;
	struct page **batch;
	struct ebb_counters c;   /* resident, stored, module_* are filled when read */
};

/* A new page, zeroed if `zero`: without it the caller overwrites every byte before anyone can
 * read it (a copy, a completed RDMA READ), or frees it unread. */
static struct page *ebb_alloc_page(bool zero)
{
	struct page *page = alloc_page(GFP_HIGHUSER | (zero ? __GFP_ZERO : 0));

	if (page)
		atomic64_inc(&ebb_pages);
	return page;
}

/* Drops the module's own reference to a page it allocated. */
static void ebb_put_page(struct page *page)
{
	/* The fault core marks written pages of a shared mapping dirty; they are ours, not the page
	 * cache's, and carry no writeback. */
	ClearPageDirty(page);
	put_page(page);
	atomic64_dec(&ebb_pages);
}

/* Drops a resident entry's reference: the region's own page, or (shared) the base's. */
static void ebb_put_resident(struct page *page, bool shared)
{
	if (shared)
		put_page(page);
	else
		ebb_put_page(page);
}

/* Puts a filled page in the resident set (or drops it); `shared`: the base's page. */
static int ebb_make_resident(struct ebb_region *r, u64 i, struct page *page, bool shared, u64 *counter)
{
	if (xa_is_err(xa_store(&r->resident, i, page, GFP_KERNEL))) {
		ebb_put_resident(page, shared);
		return -ENOMEM;
	}
	if (shared) {
		xa_set_mark(&r->resident, i, EBB_SHARED);
		r->c.shared++;
	}
	r->c.resident++;
	if (counter)
		(*counter)++;
	return 0;
}

/* The base's copy of page `i`, if the region has a base that holds it (see the top comment). */
static struct page *ebb_base_page(struct ebb_region *r, u64 i)
{
	return r->base && i < r->base->pages ? xa_load(&r->base->stored, i) : NULL;
}

/*
 * Makes page `i` (not resident) resident from the DRAM backend's copy, else from the base (its
 * page itself, or with `copy` a private copy of it), else as zeros.
 */
static int ebb_fill_local(struct ebb_region *r, u64 i, bool copy, u64 *counter)
{
	struct page *from = xa_load(&r->stored, i);
	struct page *base = from ? NULL : ebb_base_page(r, i);
	struct page *page;

	if (base && !copy) {
		get_page(base);
		r->c.fills_base++;
		return ebb_make_resident(r, i, base, true, counter);
	}
	page = ebb_alloc_page(!from && !base);
	if (!page)
		return -ENOMEM;
	if (from) {
		copy_highpage(page, from);
		r->c.fills_backend++;
	} else if (base) {
		copy_highpage(page, base);
		r->c.fills_base++;
		r->c.copied++;
	} else {
		r->c.fills_zero++;
	}
	return ebb_make_resident(r, i, page, false, counter);
}

/*
 * Replaces the shared resident page `old` at `i` with a private copy, and takes down the
 * mapping of `old` (a fault that returned it holds its lock until the PTE is set, as in
 * eviction). Returns the copy, or NULL (out of memory: nothing changed). Called with the lock held.
 */
static struct page *ebb_cow(struct ebb_region *r, u64 i, struct page *old)
{
	struct page *copy = ebb_alloc_page(false);

	if (!copy)
		return NULL;
	copy_highpage(copy, old);
	if (xa_is_err(xa_store(&r->resident, i, copy, GFP_KERNEL))) {
		ebb_put_page(copy);
		return NULL;
	}
	xa_clear_mark(&r->resident, i, EBB_SHARED);
	r->c.shared--;
	r->c.copied++;
	lock_page(old);
	unmap_mapping_range(r->inode->i_mapping, (loff_t)i << PAGE_SHIFT, PAGE_SIZE, 1);
	unlock_page(old);
	put_page(old);
	return copy;
}

/*
 * One transfer with the memnode (ebb_rdma_io), a failure counted as a backend error. The device
 * may still use the pages after a failure that sets *in_use: they must then never be freed or
 * reused. Called with the lock held (it serialises the region's connection).
 */
static int ebb_remote_io(struct ebb_region *r, u64 first, struct page **pages, unsigned int n, bool write, bool *in_use)
{
	int err = ebb_rdma_io(r->rdma, first, pages, n, write, in_use);

	if (err)
		r->c.backend_errors++;
	return err;
}

/* Drops the module's reference to n pages, unless a failed transfer left them to the device. */
static void ebb_put_pages(struct page **pages, unsigned int n, bool in_use)
{
	while (!in_use && n--)
		ebb_put_page(pages[n]);
}

/* Makes pages i .. i + n - 1 (none resident, all held by the memnode) resident in one transfer. */
static int ebb_fill_remote(struct ebb_region *r, u64 i, unsigned int n, u64 *counter)
{
	unsigned int k;
	bool in_use;
	int err;

	for (k = 0; k < n; k++) {
		r->batch[k] = ebb_alloc_page(false);
		if (!r->batch[k]) {
			ebb_put_pages(r->batch, k, false);
			return -ENOMEM;
		}
	}
	err = ebb_remote_io(r, i, r->batch, n, false, &in_use);
	if (err) {
		ebb_put_pages(r->batch, n, in_use);
		return err;
	}
	for (k = 0; k < n; k++) {
		r->c.fills_backend++;
		err = ebb_make_resident(r, i + k, r->batch[k], false, counter);
		if (err) {
			while (++k < n)
				ebb_put_page(r->batch[k]);
			return err;
		}
	}
	return 0;
}

/*
 * Makes the pages of first .. first + count - 1 that are not resident resident, in order, from the
 * backend, the base or as zeros; stops at the first failure. With `copy_first` the first page
 * takes a private copy of the base's (it is being written). Called with the lock held.
 */
static int ebb_fill(struct ebb_region *r, u64 first, u64 count, bool copy_first, u64 *counter)
{
	u64 i = first, end = first + count, j;
	int err;

	while (i < end) {
		if (xa_load(&r->resident, i)) {
			i++;
			continue;
		}
		if (r->held && test_bit(i, r->held)) {
			for (j = i + 1; j < end && j - i < EBB_RDMA_MAX_PAGES; j++)
				if (!test_bit(j, r->held) || xa_load(&r->resident, j))
					break;
			err = ebb_fill_remote(r, i, j - i, counter);
			i = j;
		} else {
			err = ebb_fill_local(r, i, copy_first && i == first, counter);
			i++;
		}
		if (err)
			return err;
	}
	return 0;
}

static vm_fault_t ebb_fault(struct vm_fault *vmf)
{
	struct ebb_region *r = vmf->vma->vm_file->private_data;
	bool write = vmf->flags & FAULT_FLAG_WRITE;
	u64 i = vmf->pgoff;
	u64 filled = 0;
	struct page *page;
	int err;

	if (i >= r->pages) {
		mutex_lock(&r->lock);
		r->c.sigbus++;
		mutex_unlock(&r->lock);
		return VM_FAULT_SIGBUS;
	}
	mutex_lock(&r->lock);
	page = xa_load(&r->resident, i);
	if (page) {
		r->c.faults_mapped++;
		if (write && xa_get_mark(&r->resident, i, EBB_SHARED)) {
			page = ebb_cow(r, i, page);
			if (!page) {
				mutex_unlock(&r->lock);
				return VM_FAULT_OOM;
			}
		}
	} else {
		/* The faulting page first; its neighbours are best effort (they fault on their own
		 * later if this stops short of them). */
		err = ebb_fill(r, i, min_t(u64, r->pages - i, 1 + r->readaround), write, &filled);
		page = xa_load(&r->resident, i);
		if (!page) {
			if (err != -ENOMEM)
				r->c.sigbus++;
			mutex_unlock(&r->lock);
			return err == -ENOMEM ? VM_FAULT_OOM : VM_FAULT_SIGBUS;
		}
		r->c.faults++;
		r->c.readaround += filled - 1;
	}
	set_bit(i, r->accessed);
	get_page(page); /* the PTE's reference */
	lock_page(page);
	mutex_unlock(&r->lock);
	vmf->page = page;
	return VM_FAULT_LOCKED;
}

/*
 * Fault-around maps nothing: every page's first access must reach ebb_fault, or the accessed set
 * would miss it. Having the method at all matters: since 6.7 the fault core calls ->fault under
 * the per-VMA lock only for mappings that have it (it takes that as the sign that ->fault needs
 * no mmap_lock, which ours does not); without it every fault was begun under the VMA lock,
 * abandoned, and begun again under mmap_lock.
 */
static vm_fault_t ebb_map_pages(struct vm_fault *vmf, pgoff_t start, pgoff_t end)
{
	return 0;
}

static const struct vm_operations_struct ebb_vm_ops = {
	.fault = ebb_fault,
	.map_pages = ebb_map_pages,
};

/*
 * A based region's first write to a page mapped read-only (and every write fault, after
 * ebb_fault): the base's page is replaced by a private copy and the access retried, which faults
 * the copy in writable; a page of the region's own is made writable as it is.
 */
static vm_fault_t ebb_page_mkwrite(struct vm_fault *vmf)
{
	struct ebb_region *r = vmf->vma->vm_file->private_data;
	struct page *page = vmf->page;
	u64 i = vmf->pgoff;

	mutex_lock(&r->lock);
	if (xa_load(&r->resident, i) != page) {
		/* Evicted, or copied, meanwhile (and unmapped under our lock): retry the access. */
		mutex_unlock(&r->lock);
		return VM_FAULT_NOPAGE;
	}
	if (xa_get_mark(&r->resident, i, EBB_SHARED)) {
		page = ebb_cow(r, i, page);
		mutex_unlock(&r->lock);
		return page ? VM_FAULT_NOPAGE : VM_FAULT_OOM;
	}
	lock_page(page);
	mutex_unlock(&r->lock);
	return VM_FAULT_LOCKED;
}

static const struct vm_operations_struct ebb_based_vm_ops = {
	.fault = ebb_fault,
	.map_pages = ebb_map_pages,
	.page_mkwrite = ebb_page_mkwrite,
};

/* An image's mapping (read-only): its stored pages themselves, which never change or go while
 * it is open; a page it does not hold is SIGBUS. */
static vm_fault_t ebb_image_fault(struct vm_fault *vmf)
{
	struct ebb_region *r = vmf->vma->vm_file->private_data;
	struct page *page = vmf->pgoff < r->pages ? xa_load(&r->stored, vmf->pgoff) : NULL;

	if (!page)
		return VM_FAULT_SIGBUS;
	get_page(page);
	lock_page(page);
	vmf->page = page;
	return VM_FAULT_LOCKED;
}

static const struct vm_operations_struct ebb_image_vm_ops = {
	.fault = ebb_image_fault,
	.map_pages = ebb_map_pages,
};

static int ebb_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct ebb_region *r = file->private_data;
	u64 len = vma_pages(vma);

	if (!READ_ONCE(r->created))
		return -EBADFD;
	if (!(vma->vm_flags & VM_SHARED))
		return -EINVAL; /* a private copy of a region's pages would escape its tracking */
	if (vma->vm_pgoff > r->pages || len > r->pages - vma->vm_pgoff)
		return -EINVAL;
	vm_flags_set(vma, VM_DONTEXPAND | VM_DONTDUMP);
	if (r->flags & EBB_CREATE_IMAGE) {
		if (vma->vm_flags & VM_WRITE)
			return -EACCES; /* an image never changes */
		vm_flags_clear(vma, VM_MAYWRITE);
		vma->vm_ops = &ebb_image_vm_ops;
	} else {
		vma->vm_ops = r->flags & EBB_CREATE_BASED ? &ebb_based_vm_ops : &ebb_vm_ops;
	}
	return 0;
}

static int ebb_open(struct inode *inode, struct file *file)
{
	struct ebb_region *r = kzalloc(sizeof(*r), GFP_KERNEL);

	if (!r)
		return -ENOMEM;
	r->inode = alloc_anon_inode(ebb_mnt->mnt_sb);
	if (IS_ERR(r->inode)) {
		int err = PTR_ERR(r->inode);

		kfree(r);
		return err;
	}
	mutex_init(&r->lock);
	xa_init(&r->resident);
	xa_init(&r->stored);
	file->f_mapping = r->inode->i_mapping;
	file->private_data = r;
	atomic64_inc(&ebb_regions);
	return 0;
}

static void ebb_free_all(struct xarray *xa)
{
	struct page *page;
	unsigned long i;

	xa_for_each(xa, i, page)
		ebb_put_resident(page, xa_get_mark(xa, i, EBB_SHARED));
	xa_destroy(xa);
}

/* The last reference to the file is gone: no mapping is left (each VMA holds the file). */
static int ebb_release(struct inode *inode, struct file *file)
{
	struct ebb_region *r = file->private_data;

	/* The queue pair goes first: after it, no device touches a page of the region. */
	ebb_rdma_destroy(r->rdma);
	ebb_free_all(&r->resident);
	ebb_free_all(&r->stored);
	if (r->base_file)
		fput(r->base_file);
	bitmap_free(r->accessed);
	bitmap_free(r->dirty);
	bitmap_free(r->held);
	kfree(r->batch);
	iput(r->inode);
	mutex_destroy(&r->lock);
	kfree(r);
	atomic64_dec(&ebb_regions);
	return 0;
}

static bool ebb_range_ok(struct ebb_region *r, u64 first, u64 count)
{
	return first <= r->pages && count <= r->pages - first;
}

static void ebb_unmap(struct ebb_region *r, u64 first, u64 count)
{
	if (count)
		unmap_mapping_range(r->inode->i_mapping, (loff_t)first << PAGE_SHIFT, (loff_t)count << PAGE_SHIFT, 1);
}

/*
 * Moves what was written to the resident pages first .. first + count - 1 into the dirty set.
 * There is no write notification (a write costs no fault: a page is mapped writable from its
 * first fault), so a write shows only as its PTE's dirty bit, which unmapping moves to the page's
 * PG_dirty flag: the range is unmapped first (its pages stay resident and refault at their next
 * access). A fault racing with this maps its page only after the check below, and its write is
 * collected the next time. Called with the lock held.
 */
static void ebb_collect_dirty(struct ebb_region *r, u64 first, u64 count)
{
	struct page *page;
	unsigned long i;

	if (!count)
		return;
	ebb_unmap(r, first, count);
	xa_for_each_range(&r->resident, i, page, first, first + count - 1)
		if (TestClearPageDirty(page))
			set_bit(i, r->dirty);
}

static long ebb_create(struct ebb_region *r, void __user *arg)
{
	struct ebb_create c;
	int k;

	if (copy_from_user(&c, arg, sizeof(c)))
		return -EFAULT;
	for (k = 0; k < ARRAY_SIZE(c.reserved); k++)
		if (c.reserved[k])
			return -EINVAL;
	if (c.reserved0 || (c.flags & ~(EBB_CREATE_IMAGE | EBB_CREATE_BASED)))
		return -EINVAL;
	if (c.pages == 0 || c.pages > EBB_MAX_PAGES || c.readaround > EBB_MAX_READAROUND)
		return -EINVAL;
	if (c.backend != EBB_BACKEND_DRAM && c.backend != EBB_BACKEND_RDMA)
		return -EINVAL;
	/* An image is a DRAM store and nothing else. */
	if ((c.flags & EBB_CREATE_IMAGE) && (c.backend != EBB_BACKEND_DRAM || (c.flags & EBB_CREATE_BASED)))
		return -EINVAL;
	mutex_lock(&r->lock);
	if (r->created) {
		mutex_unlock(&r->lock);
		return -EBUSY;
	}
	r->accessed = bitmap_zalloc(c.pages, GFP_KERNEL);
	r->dirty = bitmap_zalloc(c.pages, GFP_KERNEL);
	if (c.backend == EBB_BACKEND_RDMA) {
		r->held = bitmap_zalloc(c.pages, GFP_KERNEL);
		r->batch = kcalloc(EBB_RDMA_MAX_PAGES, sizeof(*r->batch), GFP_KERNEL);
	}
	if (!r->accessed || !r->dirty || (c.backend == EBB_BACKEND_RDMA && (!r->held || !r->batch))) {
		bitmap_free(r->accessed);
		bitmap_free(r->dirty);
		bitmap_free(r->held);
		kfree(r->batch);
		r->accessed = r->dirty = r->held = NULL;
		r->batch = NULL;
		mutex_unlock(&r->lock);
		return -ENOMEM;
	}
	r->pages = c.pages;
	r->backend = c.backend;
	r->readaround = c.readaround;
	r->flags = c.flags;
	WRITE_ONCE(r->created, true);
	mutex_unlock(&r->lock);
	return 0;
}

/* Marks page `i` held by the memnode. */
static void ebb_hold(struct ebb_region *r, u64 i)
{
	if (!test_and_set_bit(i, r->held))
		r->c.stored++;
}

/* The RDMA backend's EBB_IOC_STORE_*: up to EBB_STORE_BATCH pages per transfer through bounce
 * pages (user memory may fault, even on this region: never under the lock). */
#define EBB_STORE_BATCH 16
static long ebb_store_io_remote(struct ebb_region *r, struct ebb_pages_io *io, bool write)
{
	struct page *bounce[EBB_STORE_BATCH];
	unsigned int n, k, nb = 0;
	bool in_use = false;
	long err = 0;
	u64 done;

	for (; nb < min_t(u64, io->count, EBB_STORE_BATCH); nb++) {
		bounce[nb] = ebb_alloc_page(false);
		if (!bounce[nb]) {
			err = -ENOMEM;
			goto out;
		}
	}
	for (done = 0; done < io->count && !err; done += n) {
		u64 i = io->first + done;
		bool any = write;

		n = min_t(u64, io->count - done, EBB_STORE_BATCH);
		if (fatal_signal_pending(current)) {
			err = -EINTR;
			break;
		}
		for (k = 0; write && k < n && !err; k++)
			if (copy_from_user(page_address(bounce[k]), u64_to_user_ptr(io->buf + (done + k) * PAGE_SIZE), PAGE_SIZE))
				err = -EFAULT;
		if (err)
			break;
		mutex_lock(&r->lock);
		for (k = 0; !write && k < n; k++)
			any |= test_bit(i + k, r->held);
		if (any)
			err = ebb_remote_io(r, i, bounce, n, write, &in_use);
		for (k = 0; !err && k < n; k++) {
			struct page *base;

			if (write) {
				ebb_hold(r, i + k);
			} else if (!test_bit(i + k, r->held)) {
				/* What a page the memnode lacks reads as: the base's, or zeros. */
				base = ebb_base_page(r, i + k);
				if (base)
					copy_highpage(bounce[k], base);
				else
					clear_highpage(bounce[k]);
			}
		}
		mutex_unlock(&r->lock);
		for (k = 0; !write && !err && k < n; k++)
			if (copy_to_user(u64_to_user_ptr(io->buf + (done + k) * PAGE_SIZE), page_address(bounce[k]), PAGE_SIZE))
				err = -EFAULT;
	}
out:
	ebb_put_pages(bounce, nb, in_use);
	return err;
}

/* Copies pages between the backend and user memory, one page at a time through a bounce page:
 * user memory may itself fault (even on this region), which must not happen under the lock. */
static long ebb_store_io(struct ebb_region *r, void __user *arg, bool write)
{
	struct ebb_pages_io io;
	struct page *page;
	void *bounce;
	long err = 0;
	u64 k;

	if (copy_from_user(&io, arg, sizeof(io)))
		return -EFAULT;
	if (!ebb_range_ok(r, io.first, io.count))
		return -EINVAL;
	if (r->backend == EBB_BACKEND_RDMA)
		return ebb_store_io_remote(r, &io, write);
	bounce = kmalloc(PAGE_SIZE, GFP_KERNEL);
	if (!bounce)
		return -ENOMEM;
	for (k = 0; k < io.count && !err; k++) {
		void __user *at = u64_to_user_ptr(io.buf + k * PAGE_SIZE);
		u64 i = io.first + k;

		if (fatal_signal_pending(current)) {
			err = -EINTR;
			break;
		}
		if (write) {
			if (copy_from_user(bounce, at, PAGE_SIZE)) {
				err = -EFAULT;
				break;
			}
			mutex_lock(&r->lock);
			page = xa_load(&r->stored, i);
			if (page) {
				/* An image's pages never change: based regions map them. */
				if (!(r->flags & EBB_CREATE_IMAGE))
					memcpy_to_page(page, 0, bounce, PAGE_SIZE);
			} else {
				/* Filled before it is published: based regions look it up unlocked. */
				page = ebb_alloc_page(false);
				if (!page) {
					err = -ENOMEM;
				} else {
					memcpy_to_page(page, 0, bounce, PAGE_SIZE);
					if (xa_is_err(xa_store(&r->stored, i, page, GFP_KERNEL))) {
						ebb_put_page(page);
						err = -ENOMEM;
					} else {
						r->c.stored++;
					}
				}
			}
			mutex_unlock(&r->lock);
		} else {
			mutex_lock(&r->lock);
			page = xa_load(&r->stored, i);
			if (!page)
				page = ebb_base_page(r, i);
			if (page)
				memcpy_from_page(bounce, page, 0, PAGE_SIZE);
			else
				memset(bounce, 0, PAGE_SIZE);
			mutex_unlock(&r->lock);
			if (copy_to_user(at, bounce, PAGE_SIZE))
				err = -EFAULT;
		}
	}
	kfree(bounce);
	return err;
}

/* Called with the lock held. */
static int ebb_writeback(struct ebb_region *r, u64 i, struct page *page)
{
	struct page *copy;
	bool in_use;
	int err;

	if (r->backend == EBB_BACKEND_RDMA) {
		err = ebb_remote_io(r, i, &page, 1, true, &in_use);
		if (err) {
			if (in_use) {
				/* The device may still read it: it must outlive the region. */
				get_page(page);
				atomic64_inc(&ebb_pages);
			}
			return err;
		}
		ebb_hold(r, i);
		r->c.written_back++;
		return 0;
	}
	copy = xa_load(&r->stored, i);

	if (!copy) {
		copy = ebb_alloc_page(false);
		if (!copy)
			return -ENOMEM;
		if (xa_is_err(xa_store(&r->stored, i, copy, GFP_KERNEL))) {
			ebb_put_page(copy);
			return -ENOMEM;
		}
		r->c.stored++;
	}
	copy_highpage(copy, page);
	r->c.written_back++;
	return 0;
}

/* EBB_EVICT_FORGET: drops the backend's copies of pages first .. first + count - 1 (count > 0).
 * Called with the lock held. */
static void ebb_forget(struct ebb_region *r, u64 first, u64 count)
{
	unsigned long i = first;
	struct page *page;

	if (r->held) {
		for_each_set_bit_from(i, r->held, first + count) {
			clear_bit(i, r->held);
			r->c.stored--;
		}
		return;
	}
	xa_for_each_range(&r->stored, i, page, first, first + count - 1) {
		xa_erase(&r->stored, i);
		r->c.stored--;
		ebb_put_page(page);
	}
}

static long ebb_evict(struct ebb_region *r, void __user *arg)
{
	const u32 both = EBB_EVICT_WRITEBACK | EBB_EVICT_FORGET;
	struct ebb_range rg;
	struct page *page;
	unsigned long i;
	long err = 0;

	if (copy_from_user(&rg, arg, sizeof(rg)))
		return -EFAULT;
	if (rg.reserved || (rg.flags & ~both) || (rg.flags & both) == both || !ebb_range_ok(r, rg.first, rg.count))
		return -EINVAL;
	if (r->flags & EBB_CREATE_IMAGE)
		return -EINVAL; /* an image's pages never go while it is open */
	if (!rg.count)
		return 0;
	mutex_lock(&r->lock);
	ebb_unmap(r, rg.first, rg.count);
	xa_for_each_range(&r->resident, i, page, rg.first, rg.first + rg.count - 1) {
		/* The base's page: clean (never mapped writable), and not ours to free. */
		bool shared = xa_get_mark(&r->resident, i, EBB_SHARED);

		/* A fault that returned this page before we took the lock maps it under the page
		 * lock: once we hold that lock, the PTE is set, and is taken down here. */
		lock_page(page);
		if (page_mapped(page))
			ebb_unmap(r, i, 1);
		if (!shared && TestClearPageDirty(page))
			set_bit(i, r->dirty);
		if ((rg.flags & EBB_EVICT_WRITEBACK) && test_bit(i, r->dirty)) {
			err = ebb_writeback(r, i, page);
			if (err) {
				unlock_page(page);
				break; /* the page stays resident, nothing is lost */
			}
		}
		/* The sets describe resident pages: an evicted one leaves both. */
		clear_bit(i, r->dirty);
		clear_bit(i, r->accessed);
		xa_erase(&r->resident, i);
		r->c.resident--;
		if (shared)
			r->c.shared--;
		unlock_page(page);
		ebb_put_resident(page, shared);
		r->c.evicted++;
	}
	if (rg.flags & EBB_EVICT_FORGET)
		ebb_forget(r, rg.first, rg.count);
	mutex_unlock(&r->lock);
	return err;
}

/* EBB_IOC_SET_BASE; see the header. */
static long ebb_set_base(struct ebb_region *r, void __user *arg)
{
	struct ebb_region *base = NULL;
	struct file *file = NULL, *old;
	struct ebb_base b;
	struct page *page;
	unsigned long i;
	bool image = false;

	if (copy_from_user(&b, arg, sizeof(b)))
		return -EFAULT;
	if ((b.flags & ~EBB_BASE_KEEP) || b.reserved || b.fd < -1 || !(r->flags & EBB_CREATE_BASED))
		return -EINVAL;
	if (b.fd >= 0) {
		file = fget(b.fd);
		if (!file)
			return -EBADF;
		base = file->f_op == &ebb_fops ? file->private_data : NULL;
		if (base) {
			mutex_lock(&base->lock);
			image = base->created && (base->flags & EBB_CREATE_IMAGE);
			mutex_unlock(&base->lock);
		}
		if (!base || !image) {
			fput(file);
			return -EINVAL;
		}
	}
	mutex_lock(&r->lock);
	/* The old base's pages become copies of the region's own, or go (clean: nothing is lost),
	 * as an eviction would drop them. */
	xa_for_each_marked(&r->resident, i, page, EBB_SHARED) {
		if (b.flags & EBB_BASE_KEEP) {
			if (!ebb_cow(r, i, page)) {
				mutex_unlock(&r->lock);
				if (file)
					fput(file);
				return -ENOMEM; /* the base stays; what was copied is the region's */
			}
			continue;
		}
		lock_page(page);
		ebb_unmap(r, i, 1);
		unlock_page(page);
		xa_erase(&r->resident, i);
		clear_bit(i, r->accessed);
		clear_bit(i, r->dirty);
		r->c.resident--;
		r->c.shared--;
		r->c.evicted++;
		put_page(page);
	}
	old = r->base_file;
	r->base_file = file;
	r->base = base;
	mutex_unlock(&r->lock);
	if (old)
		fput(old);
	return 0;
}

static long ebb_prefetch(struct ebb_region *r, void __user *arg)
{
	struct ebb_range rg;
	long err = 0;
	u64 i;

	if (copy_from_user(&rg, arg, sizeof(rg)))
		return -EFAULT;
	if (rg.flags || rg.reserved || !ebb_range_ok(r, rg.first, rg.count) || (r->flags & EBB_CREATE_IMAGE))
		return -EINVAL;
	mutex_lock(&r->lock);
	for (i = rg.first; i < rg.first + rg.count && !err; i += EBB_RDMA_MAX_PAGES) {
		err = ebb_fill(r, i, min_t(u64, rg.first + rg.count - i, EBB_RDMA_MAX_PAGES), false, &r->c.prefetched);
		if (need_resched()) {
			mutex_unlock(&r->lock);
			cond_resched();
			mutex_lock(&r->lock);
		}
	}
	mutex_unlock(&r->lock);
	return err;
}

static long ebb_bitmap_read(struct ebb_region *r, void __user *arg, bool dirty)
{
	struct ebb_bitmap b;
	unsigned long *set;
	u64 *out;
	u64 words, k;
	long err = 0;

	if (copy_from_user(&b, arg, sizeof(b)))
		return -EFAULT;
	if ((b.flags & ~EBB_BITMAP_RESET) || b.reserved || !ebb_range_ok(r, b.first, b.count))
		return -EINVAL;
	words = DIV_ROUND_UP(b.count, 64);
	out = kvcalloc(words ? words : 1, sizeof(u64), GFP_KERNEL);
	if (!out)
		return -ENOMEM;
	mutex_lock(&r->lock);
	if (dirty)
		ebb_collect_dirty(r, b.first, b.count);
	set = dirty ? r->dirty : r->accessed;
	for (k = 0; k < b.count; k++)
		if (test_bit(b.first + k, set))
			out[k / 64] |= 1ULL << (k % 64);
	if (b.flags & EBB_BITMAP_RESET) {
		/* Unmapped, the pages refault (cheaply: they stay resident) at their next access,
		 * which is how the accessed set sees them again; a write after it sets a dirty bit
		 * that the next collection finds. (A dirty set's range is unmapped already.) */
		if (!dirty)
			ebb_unmap(r, b.first, b.count);
		bitmap_clear(set, b.first, b.count);
	}
	mutex_unlock(&r->lock);
	if (copy_to_user(u64_to_user_ptr(b.bitmap), out, words * sizeof(u64)))
		err = -EFAULT;
	kvfree(out);
	return err;
}

static long ebb_counters_read(struct ebb_region *r, void __user *arg)
{
	struct ebb_counters c;

	mutex_lock(&r->lock);
	c = r->c;
	mutex_unlock(&r->lock);
	c.module_pages = atomic64_read(&ebb_pages);
	c.module_regions = atomic64_read(&ebb_regions);
	return copy_to_user(arg, &c, sizeof(c)) ? -EFAULT : 0;
}

/* EBB_IOC_RDMA_*: the RDMA backend's connection and remote. */
static long ebb_rdma_ioctl(struct ebb_region *r, unsigned int cmd, void __user *p)
{
	struct ebb_rdma_remote remote;
	struct ebb_rdma_peer peer;
	struct ebb_rdma_qp qp;
	long err;

	if (r->backend != EBB_BACKEND_RDMA)
		return -EINVAL;
	switch (cmd) {
	case EBB_IOC_RDMA_QP:
		if (copy_from_user(&qp, p, sizeof(qp)))
			return -EFAULT;
		mutex_lock(&r->lock);
		err = r->rdma ? -EBUSY : ebb_rdma_create(&r->rdma, &qp);
		mutex_unlock(&r->lock);
		if (!err && copy_to_user(p, &qp, sizeof(qp)))
			err = -EFAULT;
		return err;
	case EBB_IOC_RDMA_CONNECT:
		if (copy_from_user(&peer, p, sizeof(peer)))
			return -EFAULT;
		mutex_lock(&r->lock);
		err = r->rdma ? ebb_rdma_connect(r->rdma, &peer) : -ENOTCONN;
		mutex_unlock(&r->lock);
		return err;
	default:
		if (copy_from_user(&remote, p, sizeof(remote)))
			return -EFAULT;
		mutex_lock(&r->lock);
		err = r->rdma ? ebb_rdma_remote(r->rdma, &remote) : -ENOTCONN;
		if (!err && (remote.flags & EBB_RDMA_POPULATED)) {
			u64 n = min_t(u64, r->pages, remote.len / EBB_PAGE_SIZE);

			bitmap_set(r->held, 0, n);
			r->c.stored = bitmap_weight(r->held, r->pages);
		}
		mutex_unlock(&r->lock);
		return err;
	}
}

static long ebb_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct ebb_region *r = file->private_data;
	void __user *p = (void __user *)arg;
	u32 version = EBB_ABI_VERSION;

	switch (cmd) {
	case EBB_IOC_VERSION:
		return copy_to_user(p, &version, sizeof(version)) ? -EFAULT : 0;
	case EBB_IOC_CREATE:
		return ebb_create(r, p);
	case EBB_IOC_COUNTERS:
		return ebb_counters_read(r, p);
	case EBB_IOC_STORE_WRITE:
	case EBB_IOC_STORE_READ:
	case EBB_IOC_EVICT:
	case EBB_IOC_PREFETCH:
	case EBB_IOC_ACCESSED:
	case EBB_IOC_DIRTY:
	case EBB_IOC_RDMA_QP:
	case EBB_IOC_RDMA_CONNECT:
	case EBB_IOC_RDMA_REMOTE:
	case EBB_IOC_SET_BASE:
		break;
	default:
		return -ENOTTY;
	}
	if (!READ_ONCE(r->created))
		return -EBADFD;
	switch (cmd) {
	case EBB_IOC_RDMA_QP:
	case EBB_IOC_RDMA_CONNECT:
	case EBB_IOC_RDMA_REMOTE:
		return ebb_rdma_ioctl(r, cmd, p);
	case EBB_IOC_STORE_WRITE:
		return ebb_store_io(r, p, true);
	case EBB_IOC_STORE_READ:
		return ebb_store_io(r, p, false);
	case EBB_IOC_EVICT:
		return ebb_evict(r, p);
	case EBB_IOC_PREFETCH:
		return ebb_prefetch(r, p);
	case EBB_IOC_SET_BASE:
		return ebb_set_base(r, p);
	case EBB_IOC_ACCESSED:
		return ebb_bitmap_read(r, p, false);
	default:
		return ebb_bitmap_read(r, p, true);
	}
}

static const struct file_operations ebb_fops = {
	.owner = THIS_MODULE,
	.open = ebb_open,
	.release = ebb_release,
	.mmap = ebb_mmap,
	.unlocked_ioctl = ebb_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.llseek = noop_llseek,
};

static struct miscdevice ebb_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = EBB_DEVICE_NAME,
	.fops = &ebb_fops,
	.mode = 0600,
};

static int ebb_init_fs_context(struct fs_context *fc)
{
	return init_pseudo(fc, EBB_FS_MAGIC) ? 0 : -ENOMEM;
}

/* No .owner: the mount would hold a reference to the module, which could then never be unloaded
 * (it is mounted at load and unmounted at unload; the region files pin the module meanwhile). */
static struct file_system_type ebb_fs_type = {
	.name = "ebb_regions",
	.init_fs_context = ebb_init_fs_context,
	.kill_sb = kill_anon_super,
};

static int __init ebb_init(void)
{
	int err;

	ebb_mnt = kern_mount(&ebb_fs_type);
	if (IS_ERR(ebb_mnt))
		return PTR_ERR(ebb_mnt);
	err = misc_register(&ebb_misc);
	if (err) {
		kern_unmount(ebb_mnt);
		return err;
	}
	pr_info("ebb: /dev/%s ready (ABI %d)\n", EBB_DEVICE_NAME, EBB_ABI_VERSION);
	return 0;
}

static void __exit ebb_exit(void)
{
	misc_deregister(&ebb_misc);
	kern_unmount(ebb_mnt);
	/* Every region is closed (the module could not be unloaded otherwise): no page is left. */
	if (atomic64_read(&ebb_pages))
		pr_err("ebb: leak: %lld pages still held at unload\n", (long long)atomic64_read(&ebb_pages));
	else
		pr_info("ebb: unloaded, no pages held\n");
}

module_init(ebb_init);
module_exit(ebb_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Ebb: linear-memory faults served in the kernel");
