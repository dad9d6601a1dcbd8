/*
 * badring.c: deliberately bad Guests, for the Launcher's vring checks.
 *
 * Every device buffer the Guest offers passes through the Launcher's
 * get_vq_desc() (seed 004; devices/virtqueue.py), which must refuse anything
 * that would let a Guest reach outside its memory or loop the Launcher
 * forever, and die with one line.  Each mode here builds one such bad avail
 * ring or descriptor chain on a real, running queue and kicks it:
 *
 *   mode          queue         the Launcher should die with
 *   avail-jump    console tx    "Guest moved used index from A to B"
 *   head          console tx    "Guest says index N is available"
 *   next          console tx    "Desc next is N"
 *   loop-self     console tx    "Looped descriptor"
 *   loop-cycle    console tx    "Looped descriptor"
 *   addr-limit    console tx    "Invalid address ..." (a buffer at guest_limit)
 *   addr-wrap     console tx    "Invalid address ..." (address + length wraps)
 *   out-after-in  console tx    "Descriptor has out after in"
 *   tx-input      console tx    "Input buffers in output queue?"
 *   notify        (none)        "Bad NOTIFY ..." (past guest memory)
 *   blk-hdr       block         a 12-byte request header: "Bad iovec size"
 *   blk-cmd       block         a request with no status buffer: "Bad virtblk cmd"
 *   blk-loop      block         "Looped descriptor", found by the I/O worker
 *   blk-past-end  block         a write across the end: "Write past end"
 *
 * We write the rings directly, not through virtio.c: a bad ring is exactly
 * what a well-behaved vq_add_buf() refuses to build.  The console's transmit
 * queue is safe to take over because the Launcher serves it synchronously:
 * when the printk announcing the mode returns, the Host has consumed every
 * buffer on it, so its last_avail_idx equals avail->idx in memory.
 */
#include "kernel.h"
#include "lguest.h"
#include "virtio.h"
#include "blk.h"
#include "badring.h"

/* A vring found through the device page, as lg_find_vq() + vring_init()
 * lay it out: descriptors, then the avail ring, then (page aligned) used. */
struct rawq {
	struct vring_desc *desc;
	struct vring_avail *avail;
	unsigned int num;
	u32 pfn;
};

static struct lguest_vqconfig *vqconfigs(struct lguest_device_desc *d)
{
	return (struct lguest_vqconfig *)(d + 1);	/* right after the 5 bytes */
}

/* Queue index of the first device of this type; 0 if found. */
static int rawq_find(u8 type, unsigned int index, struct rawq *q)
{
	struct vdev v;
	struct lguest_vqconfig *c;

	if (virtio_find(type, 0, &v) != 0 || index >= v.desc->num_vq)
		return -1;
	c = vqconfigs(v.desc) + index;
	q->num = c->num;
	q->pfn = c->pfn;
	q->desc = __va(c->pfn << 12);
	q->avail = (struct vring_avail *)(q->desc + c->num);
	return 0;
}

/* Bytes of a legacy vring of num entries with 4096-byte alignment
 * (vring_size() in virtio_ring.h). */
static u32 vring_bytes(u32 num)
{
	u32 first = 16 * num + 2 * (3 + num);

	first = (first + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1);
	return first + 2 * 3 + 8 * num;
}

/*
 * guest_limit as the Launcher has it: the device page sits at the top of RAM
 * and get_pages() hands out the vrings above it in order, so the limit is the
 * end of the highest vring (or of the device page, if there are none).
 */
static u32 guest_limit(void)
{
	u8 *page = __va(max_pfn << 12), *p = page;
	u32 limit = (max_pfn + 1) << 12;

	while (p < page + PAGE_SIZE && p[0] != 0) {
		struct lguest_device_desc *d = (void *)p;
		struct lguest_vqconfig *c = vqconfigs(d);
		unsigned int i;

		for (i = 0; i < d->num_vq; i++) {
			u32 end = (c[i].pfn << 12) + vring_bytes(c[i].num);
			end = (end + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1);
			if (end > limit)
				limit = end;
		}
		p += sizeof(*d) + d->num_vq * sizeof(*c) + d->feature_len * 2 +
			d->config_len;
	}
	return limit;
}

/* Fill descriptor i. */
static void set_desc(struct rawq *q, unsigned int i, u64 addr, u32 len,
		     u16 flags, u16 next)
{
	q->desc[i].addr = addr;
	q->desc[i].len = len;
	q->desc[i].flags = flags;
	q->desc[i].next = next;
}

/* Make head available (as virtqueue_add's last step) and kick, as
 * lg_notify() does: NOTIFY with the vring's address. */
static void post_and_kick(struct rawq *q, u16 head)
{
	u16 idx = q->avail->idx;

	q->avail->ring[idx % q->num] = head;
	barrier();
	q->avail->idx = idx + 1;
	barrier();
	hcall(LHCALL_NOTIFY, q->pfn << 12, 0, 0, 0);
}

/* Data for the console buffers we post: harmless if ever printed. */
static char msg[] = "badring: the Launcher printed a bad buffer\n";

static int console_tx(struct rawq *q)
{
	if (rawq_find(VIRTIO_ID_CONSOLE, 1, q) != 0) {
		printk("lgbad: no console transmit queue to break\n");
		return -1;
	}
	return 0;
}

/* A block request header (struct virtio_blk_outhdr) and status byte. */
static struct {
	u32 type, ioprio;
	u64 sector;
	u8 status;
} __attribute__((aligned(8))) breq;

static int blk_started(struct rawq *q)
{
	if (!blk_queue() || rawq_find(VIRTIO_ID_BLOCK, 0, q) != 0) {
		printk("lgbad: no block device to break\n");
		return -1;
	}
	return 0;
}

int badring_run(const char *name)
{
	struct rawq q;
	u32 pa = __pa(msg), len = sizeof(msg) - 1;
	unsigned int h, h2;

	if (strcmp(name, "avail-jump") == 0) {
		u16 from;
		if (console_tx(&q))
			return 1;
		printk("lgbad avail-jump: console tx avail idx moved num+1 = "
		       "%u ahead\n", q.num + 1);
		/* Read it after the printk, whose own buffer moved it. */
		from = q.avail->idx;
		q.avail->idx = from + q.num + 1;
		barrier();
		hcall(LHCALL_NOTIFY, q.pfn << 12, 0, 0, 0);
	} else if (strcmp(name, "head") == 0) {
		if (console_tx(&q))
			return 1;
		printk("lgbad head: console tx avail entry names descriptor "
		       "%u (num=%u)\n", q.num + 7, q.num);
		post_and_kick(&q, q.num + 7);
	} else if (strcmp(name, "next") == 0) {
		if (console_tx(&q))
			return 1;
		h = q.num - 1;
		printk("lgbad next: console tx descriptor %u chains to %u "
		       "(num=%u)\n", h, q.num + 3, q.num);
		set_desc(&q, h, pa, len, VRING_DESC_F_NEXT, q.num + 3);
		post_and_kick(&q, h);
	} else if (strcmp(name, "loop-self") == 0) {
		if (console_tx(&q))
			return 1;
		h = q.num - 1;
		printk("lgbad loop-self: console tx descriptor %u chains to "
		       "itself\n", h);
		set_desc(&q, h, pa, 1, VRING_DESC_F_NEXT, h);
		post_and_kick(&q, h);
	} else if (strcmp(name, "loop-cycle") == 0) {
		if (console_tx(&q))
			return 1;
		h = q.num - 1;
		h2 = q.num - 2;
		printk("lgbad loop-cycle: console tx descriptors %u -> %u -> "
		       "%u\n", h, h2, h);
		set_desc(&q, h, pa, 1, VRING_DESC_F_NEXT, h2);
		set_desc(&q, h2, pa, 1, VRING_DESC_F_NEXT, h);
		post_and_kick(&q, h);
	} else if (strcmp(name, "addr-limit") == 0) {
		u32 limit = guest_limit();
		if (console_tx(&q))
			return 1;
		h = q.num - 1;
		printk("lgbad addr-limit: console tx buffer at guest_limit "
		       "0x%x\n", limit);
		set_desc(&q, h, limit, 1, 0, 0);
		post_and_kick(&q, h);
	} else if (strcmp(name, "addr-wrap") == 0) {
		/* A real address whose length carries it past 4 GiB, to land
		 * (in 32 bits) at 0x1000, well inside memory. */
		u32 wraplen = 0u - pa + 0x1000u;
		if (console_tx(&q))
			return 1;
		h = q.num - 1;
		printk("lgbad addr-wrap: console tx buffer at 0x%x, length 0x%x "
		       "(the end wraps to 0x1000)\n", pa, wraplen);
		set_desc(&q, h, pa, wraplen, 0, 0);
		post_and_kick(&q, h);
	} else if (strcmp(name, "out-after-in") == 0) {
		if (console_tx(&q))
			return 1;
		h = q.num - 1;
		h2 = q.num - 2;
		printk("lgbad out-after-in: console tx chain: writable %u, then "
		       "readable %u\n", h, h2);
		set_desc(&q, h, pa, len, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT,
			 h2);
		set_desc(&q, h2, pa, len, 0, 0);
		post_and_kick(&q, h);
	} else if (strcmp(name, "tx-input") == 0) {
		if (console_tx(&q))
			return 1;
		h = q.num - 1;
		printk("lgbad tx-input: a writable buffer on the console "
		       "transmit queue\n");
		set_desc(&q, h, pa, len, VRING_DESC_F_WRITE, 0);
		post_and_kick(&q, h);
	} else if (strcmp(name, "notify") == 0) {
		u32 limit = guest_limit();
		printk("lgbad notify: NOTIFY 0x%x, the first address past guest "
		       "memory\n", limit);
		hcall(LHCALL_NOTIFY, limit, 0, 0, 0);
	} else if (strcmp(name, "blk-hdr") == 0) {
		if (blk_started(&q))
			return 1;
		printk("lgbad blk-hdr: a block request with a 12-byte header\n");
		breq.type = 0;	/* a read of sector 0 */
		breq.sector = 0;
		set_desc(&q, 0, __pa(&breq), 12, VRING_DESC_F_NEXT, 1);
		set_desc(&q, 1, __pa(&breq.status), 1, VRING_DESC_F_WRITE, 0);
		post_and_kick(&q, 0);
	} else if (strcmp(name, "blk-cmd") == 0) {
		if (blk_started(&q))
			return 1;
		printk("lgbad blk-cmd: a block request with a header and no "
		       "status buffer\n");
		breq.type = 0;
		breq.sector = 0;
		set_desc(&q, 0, __pa(&breq), 16, 0, 0);
		post_and_kick(&q, 0);
	} else if (strcmp(name, "blk-loop") == 0) {
		if (blk_started(&q))
			return 1;
		printk("lgbad blk-loop: block descriptor 0 -> 1 -> 0\n");
		set_desc(&q, 0, __pa(&breq), 16, VRING_DESC_F_NEXT, 1);
		set_desc(&q, 1, __pa(&breq), 16, VRING_DESC_F_NEXT, 0);
		post_and_kick(&q, 0);
	} else if (strcmp(name, "blk-past-end") == 0) {
		char why[96];
		u64 cap = blk_capacity();
		u8 *buf;
		if (blk_started(&q))
			return 1;
		buf = alloc_pages(1);
		memset(buf, 0x5A, 1024);
		printk("lgbad blk-past-end: write 2 sectors at sector %llu of "
		       "%llu\n", cap - 1, cap);
		/* The Launcher should die before this completes. */
		if (!blk_write(cap - 1, buf, 2, why, sizeof(why)))
			printk("lgbad blk-past-end: %s\n", why);
	} else {
		return 0;
	}

	/* Still here?  The block worker reports asynchronously: give it time
	 * before we admit that nobody stopped us. */
	msleep(3000);
	printk("lgbad %s: the Launcher let us live\n", name);
	return 1;
}
