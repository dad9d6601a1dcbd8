/*
 * blk.c: our Guest's virtio block driver and its test modes.
 *
 * The Host side is the Launcher's block device (seed 004: setup_block_file,
 * service_io; ours is devices/block.py with its I/O worker process).  This is
 * the Guest side, a much smaller cousin of Linux's drivers/block/virtio_blk.c:
 *
 *   device type 2, one virtqueue of requests;
 *   config space: capacity (u64 @0, in 512-byte sectors), seg_max (u32 @12,
 *                 valid when feature SEG_MAX (bit 2) is offered);
 *   a request is one descriptor chain:
 *     [16-byte out header {u32 type, u32 ioprio, u64 sector}]  readable
 *     [data segments ...]              readable (write) or writable (read)
 *     [1-byte status]                  writable: 0 OK, 1 IOERR, 2 UNSUPP
 *
 * The header and the status each get a descriptor of their own, because the
 * Launcher checks their sizes exactly (seed 004's convert(): "Bad iovec size").
 *
 * Completion is by interrupt only: the queue's IRQ handler (blk_done) takes
 * every used buffer off the used ring and counts it, as virtblk_done() does.
 * Whoever queued a request sleeps (wait_for_interrupt) until it is marked
 * done.  Nothing ever polls the used ring, so a lost interrupt shows up as a
 * request that never completes (and a watchdog, blk_sleep(), turns that into
 * a FAIL instead of a hang).
 */
#include "kernel.h"
#include "virtio.h"
#include "tests.h"
#include "blk.h"
#include "lguest.h"

#define SECTOR_SIZE 512u

/* Request types (virtio_blk.h VIRTIO_BLK_T_*) and status values. */
#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_T_GET_ID 8
#define VIRTIO_BLK_S_OK 0
#define VIRTIO_BLK_S_IOERR 1
#define VIRTIO_BLK_S_UNSUPP 2
#define VIRTIO_BLK_ID_BYTES 20	/* GET_ID answers this many, NUL padded */

/* Feature bits we understand. */
#define VIRTIO_BLK_F_SEG_MAX 2
#define VIRTIO_BLK_F_FLUSH 9

/* Config space offsets (struct virtio_blk_config). */
#define BLK_CFG_CAPACITY 0	/* u64 sectors */
#define BLK_CFG_SEG_MAX 12	/* u32 */

/* The most data segments we ever put in one request. */
#define BLK_MAXSEG 4
/* How long a request may take before we call it lost (ns). */
#define BLK_TIMEOUT_NS (5ull * 1000000000ull)
/* The watchdog: a one-shot clock event this far ahead, re-armed at most
 * every BLK_REARM_NS while we keep sleeping (ns). */
#define BLK_WATCHDOG_NS 2000000000u
#define BLK_REARM_NS 500000000ull

/* struct virtio_blk_outhdr: 16 bytes, the first descriptor of a request. */
struct blk_outhdr {
	u32 type;
	u32 ioprio;
	u64 sector;
};

/* One request in flight.  The token we hand vq_add_buf is its address. */
struct blk_req {
	struct blk_outhdr hdr;	/* the Host reads this (8-byte aligned) */
	u8 status;		/* the Host writes this: 0xFF until it does */
	volatile u8 done;	/* set by blk_done() */
	u8 busy;		/* owned by a caller (queued or about to be) */
	u8 nseg;
	u32 len;		/* used length the Host reported */
	/* For the callers' bookkeeping: */
	u8 *buf;		/* data buffer (direct-mapped, so __pa works) */
	u32 nsect;		/* sectors of data */
	u32 slot, version;	/* blk-stress: which slot, what it wrote */
} __attribute__((aligned(8)));

/* The driver: one device, set up once and shared by every mode. */
static struct {
	int state;		/* 0 not tried yet, 1 up, -1 no device */
	struct vdev vdev;
	struct vq *vq;
	u32 features;		/* the ones we accepted */
	u64 capacity;		/* sectors */
	u32 seg_max;		/* data segments allowed per request (>= 1) */
	volatile u32 irqs;	/* calls of blk_done() */
	volatile u32 completions;	/* used buffers taken off the ring */
	u32 queued;		/* requests handed to the Host */
	u8 *arena;		/* BLK_ARENA_PAGES of data buffers */
} blk;

#define BLK_ARENA_PAGES 512	/* 2 MiB of buffers, carved up by each mode */
#define BLK_NREQ 64		/* request structures: more than the ring holds */
static struct blk_req reqs[BLK_NREQ];

/* The virtqueue callback: runs in the IRQ handler, interrupts disabled.
 * Like virtblk_done(): take every used buffer off the ring. */
static void blk_done(struct vq *vq)
{
	struct blk_req *r;
	u32 len;

	blk.irqs++;
	while ((r = vq_get_buf(vq, &len)) != NULL) {
		r->len = len;
		r->done = 1;
		blk.completions++;
	}
}

/* Find and start the device, as virtio_dev_probe() + virtblk_probe() would:
 * reset, ACKNOWLEDGE, DRIVER, features, the queue, DRIVER_OK.  0 if up. */
int blk_init(void)
{
	u32 offered;

	if (blk.state)
		return blk.state > 0 ? 0 : -1;
	blk.state = -1;
	if (virtio_find(VIRTIO_ID_BLOCK, 0, &blk.vdev) != 0)
		return -1;

	virtio_reset(&blk.vdev);
	virtio_set_status(&blk.vdev, VIRTIO_CONFIG_S_ACKNOWLEDGE);
	virtio_set_status(&blk.vdev, VIRTIO_CONFIG_S_ACKNOWLEDGE |
			  VIRTIO_CONFIG_S_DRIVER);

	offered = virtio_get_features(&blk.vdev);
	blk.features = offered & ((1u << VIRTIO_BLK_F_SEG_MAX) |
				  (1u << VIRTIO_BLK_F_FLUSH));
	virtio_finalize_features(&blk.vdev, blk.features);

	virtio_get_config(&blk.vdev, BLK_CFG_CAPACITY, &blk.capacity, 8);
	blk.seg_max = 1;
	if (blk.features & (1u << VIRTIO_BLK_F_SEG_MAX))
		virtio_get_config(&blk.vdev, BLK_CFG_SEG_MAX, &blk.seg_max, 4);
	if (blk.seg_max == 0)
		blk.seg_max = 1;

	blk.arena = alloc_pages(BLK_ARENA_PAGES);
	blk.vq = virtio_find_vq(&blk.vdev, 0, blk_done);
	if (!blk.vq || !blk.arena) {
		virtio_set_status(&blk.vdev, VIRTIO_CONFIG_S_FAILED);
		return -1;
	}
	virtio_set_status(&blk.vdev, VIRTIO_CONFIG_S_ACKNOWLEDGE |
			  VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_DRIVER_OK);
	blk.state = 1;
	return 0;
}

struct vq *blk_queue(void)
{
	return blk_init() == 0 ? blk.vq : NULL;
}

u64 blk_capacity(void)
{
	return blk_init() == 0 ? blk.capacity : 0;
}

/* A free request structure, marked busy; NULL when all are taken. */
static struct blk_req *blk_get_req(void)
{
	unsigned int i;

	for (i = 0; i < BLK_NREQ; i++)
		if (!reqs[i].busy) {
			reqs[i].busy = 1;
			return &reqs[i];
		}
	return NULL;
}

static void blk_put_req(struct blk_req *r)
{
	r->busy = 0;
}

/*
 * Put one request on the ring (no kick): header, nseg data segments cut from
 * r->buf (r->nsect sectors), status.  As virtblk_add_req(): the data is
 * readable for a write, writable for a read.  Interrupts must be off (the IRQ
 * handler also works the ring).  0, or -1 if the ring is full.
 */
static int blk_add(struct blk_req *r, u32 type, u64 sector, unsigned int nseg)
{
	struct sg sg[BLK_MAXSEG + 2];
	u32 bytes = type == VIRTIO_BLK_T_GET_ID ? VIRTIO_BLK_ID_BYTES :
		r->nsect * SECTOR_SIZE;
	u32 off = 0;
	unsigned int i, n = 0;

	r->hdr.type = type;
	r->hdr.ioprio = 0;
	r->hdr.sector = sector;
	r->status = 0xFF;
	r->done = 0;
	r->len = 0;
	if (bytes == 0)
		nseg = 0;
	r->nseg = nseg;

	sg[n].addr = &r->hdr;
	sg[n++].len = sizeof(r->hdr);
	/* Split the data into nseg pieces; the last takes the remainder. */
	for (i = 0; i < nseg; i++) {
		u32 piece = (i == nseg - 1) ? bytes - off : bytes / nseg;
		sg[n].addr = r->buf + off;
		sg[n++].len = piece;
		off += piece;
	}
	sg[n].addr = &r->status;
	sg[n++].len = 1;

	if (type == VIRTIO_BLK_T_OUT)
		return vq_add_buf(blk.vq, sg, 1 + nseg, 1, r);
	return vq_add_buf(blk.vq, sg, 1, nseg + 1, r);
}

/*
 * Sleeping.  Only the queue's interrupt wakes us for a completion, so if the
 * Host lost one we would sleep for ever.  Rather than hang, we keep a
 * watchdog: the clock event (IRQ 0, whose handler the core owns) armed a
 * couple of seconds ahead while we sleep, so every wait notices when it has
 * gone on too long.  Re-arming costs a hypercall, hence at most twice a
 * second; blk_watchdog_off() cancels it when a mode is done.
 */
static u64 watchdog_armed_at;

static void blk_sleep(void)
{
	u64 now = now_ns();

	/* With the periodic tick running (lghz=), IRQ 0 is its own and wakes
	 * us often enough: no watchdog needed. */
	if (!ticking() &&
	    (!watchdog_armed_at || now - watchdog_armed_at > BLK_REARM_NS)) {
		hcall(LHCALL_SET_CLOCKEVENT, BLK_WATCHDOG_NS, 0, 0, 0);
		watchdog_armed_at = now ? now : 1;
	}
	/* Interrupts are off: the HALT is made with them off and the Host
	 * enables them as it wakes us (lguest_safe_halt), so a completion
	 * that came in after the caller's last look is not missed. */
	wait_for_interrupt();
}

static void blk_watchdog_off(void)
{
	if (watchdog_armed_at) {
		hcall(LHCALL_SET_CLOCKEVENT, 0, 0, 0, 0);
		watchdog_armed_at = 0;
	}
}

/* Sleep until *done is set (by blk_done, from the interrupt).  Interrupts
 * are disabled on return.  -1 after BLK_TIMEOUT_NS: lost. */
static int blk_wait(volatile u8 *done)
{
	u64 deadline = now_ns() + BLK_TIMEOUT_NS;

	for (;;) {
		irq_disable();
		if (*done)
			return 0;
		if (now_ns() > deadline)
			return -1;
		blk_sleep();
	}
}

/* Sleep until blk_done() has taken at least one more buffer than before.
 * Interrupts off on entry and on return.  -1 after BLK_TIMEOUT_NS. */
static int blk_wait_progress(u32 before)
{
	u64 deadline = now_ns() + BLK_TIMEOUT_NS;

	while (blk.completions == before) {
		if (now_ns() > deadline)
			return -1;
		blk_sleep();
		irq_disable();
	}
	return 0;
}

/* Why a request failed, for a test's "why". */
static int blk_check(struct blk_req *r, const char *what, char *why,
		     size_t whylen)
{
	if (r->status != VIRTIO_BLK_S_OK) {
		snprintf(why, whylen, "%s of sector %llu: status %u", what,
			 r->hdr.sector, r->status);
		return 0;
	}
	/* The Host says how much it wrote into our buffers: for a read that
	 * is the data plus the status byte (service_io's wlen). */
	if (r->hdr.type == VIRTIO_BLK_T_IN &&
	    r->len != r->nsect * SECTOR_SIZE + 1) {
		snprintf(why, whylen, "%s of sector %llu: used len %u, want %u",
			 what, r->hdr.sector, r->len,
			 r->nsect * SECTOR_SIZE + 1);
		return 0;
	}
	return 1;
}

/* One request, start to finish: queue, kick, sleep until its interrupt. */
static int blk_sync(struct blk_req *r, u32 type, u64 sector, const char *what,
		    char *why, size_t whylen)
{
	u32 flags = irq_save();
	int ok;

	if (blk_add(r, type, sector, 1) != 0) {
		irq_restore(flags);
		snprintf(why, whylen, "%s: ring full", what);
		return 0;
	}
	blk.queued++;
	vq_kick(blk.vq);
	ok = blk_wait(&r->done) == 0;
	blk_watchdog_off();
	irq_restore(flags);
	if (!ok) {
		snprintf(why, whylen, "%s of sector %llu: no completion "
			 "(lost interrupt?)", what, sector);
		return 0;
	}
	return blk_check(r, what, why, whylen);
}

/* One synchronous data request of nsect sectors at sector, into or out of
 * buf (direct-mapped memory). */
static int blk_rw(u32 type, u64 sector, void *buf, u32 nsect, char *why,
		  size_t whylen)
{
	struct blk_req *r;
	int ok;

	if (blk_init() != 0) {
		snprintf(why, whylen, "no virtio block device");
		return 0;
	}
	r = blk_get_req();
	r->buf = buf;
	r->nsect = nsect;
	ok = blk_sync(r, type, sector, type == VIRTIO_BLK_T_IN ? "read" : "write",
		      why, whylen);
	blk_put_req(r);
	return ok;
}

/* Read nsect sectors at sector into buf. */
int blk_read(u64 sector, void *buf, u32 nsect, char *why, size_t whylen)
{
	return blk_rw(VIRTIO_BLK_T_IN, sector, buf, nsect, why, whylen);
}

/* Write nsect sectors from buf at sector. */
int blk_write(u64 sector, void *buf, u32 nsect, char *why, size_t whylen)
{
	return blk_rw(VIRTIO_BLK_T_OUT, sector, buf, nsect, why, whylen);
}

/* A FLUSH: no data, just the header and the status (virtblk's REQ_FLUSH). */
static int blk_flush(char *why, size_t whylen)
{
	struct blk_req *r = blk_get_req();
	int ok;

	r->buf = NULL;
	r->nsect = 0;
	ok = blk_sync(r, VIRTIO_BLK_T_FLUSH, 0, "flush", why, whylen);
	blk_put_req(r);
	return ok;
}

/* GET_ID: the disk's serial number, up to 20 bytes (a NUL-terminated copy
 * in serial[21]). */
static int blk_get_id(char *serial, char *why, size_t whylen)
{
	struct blk_req *r = blk_get_req();
	int ok;

	r->buf = blk.arena;
	r->nsect = 0;
	memset(blk.arena, 0, VIRTIO_BLK_ID_BYTES);
	ok = blk_sync(r, VIRTIO_BLK_T_GET_ID, 0, "get-id", why, whylen);
	blk_put_req(r);
	memcpy(serial, blk.arena, VIRTIO_BLK_ID_BYTES);
	serial[VIRTIO_BLK_ID_BYTES] = '\0';
	return ok;
}

/* ---- Streaming: many requests in flight over a range, in disk order ---- */

/* Called for each chunk: fill it before a write, or check it after a read.
 * Returns 0 (with why filled in) to stop. */
typedef int (*blk_chunk_fn)(u8 *buf, u64 sector, u32 nsect, void *arg,
			    char *why, size_t whylen);

/*
 * Read or write sectors [first, first + count) in chunks of chunk sectors,
 * with up to depth requests in flight; chunks are handed to fn in disk order
 * (a read's chunk once it has completed, a write's before it is queued).
 * depth * chunk sectors must fit in the arena.
 */
static int blk_stream(u32 type, u64 first, u64 count, u32 chunk,
		      unsigned int depth, blk_chunk_fn fn, void *arg,
		      char *why, size_t whylen)
{
	struct blk_req *slot[32];
	u64 next = first, end = first + count;	/* next chunk to queue */
	unsigned int head = 0, tail = 0;	/* slot ring: queued [tail, head) */
	unsigned int i;
	int ok = 1;
	u32 flags;

	if (depth > ARRAY_SIZE(slot))
		depth = ARRAY_SIZE(slot);
	for (i = 0; i < depth; i++) {
		slot[i] = blk_get_req();
		slot[i]->buf = blk.arena + i * chunk * SECTOR_SIZE;
	}

	flags = irq_save();
	while (ok && (next < end || tail != head)) {
		/* Queue chunks while there are free slots. */
		int kicked = 0;
		while (next < end && head - tail < depth) {
			struct blk_req *r = slot[head % depth];
			r->nsect = (end - next < chunk) ? (u32)(end - next) : chunk;
			if (type == VIRTIO_BLK_T_OUT) {
				irq_restore(flags);
				ok = fn(r->buf, next, r->nsect, arg, why, whylen);
				flags = irq_save();
				if (!ok)
					break;
			}
			if (blk_add(r, type, next, 1) != 0)
				break;	/* ring full: wait for some */
			blk.queued++;
			next += r->nsect;
			head++;
			kicked = 1;
		}
		if (kicked)
			vq_kick(blk.vq);
		if (!ok)
			break;
		if (tail == head) {
			/* Nothing of ours in flight, yet no room: a chain of
			 * three can't fit in an empty ring. */
			snprintf(why, whylen, "ring refuses a request with "
				 "nothing in flight");
			ok = 0;
			break;
		}
		/* Wait for the oldest, then hand it over in order. */
		if (blk_wait(&slot[tail % depth]->done) != 0) {
			snprintf(why, whylen, "%s of sector %llu: no completion "
				 "(lost interrupt?)",
				 type == VIRTIO_BLK_T_IN ? "read" : "write",
				 slot[tail % depth]->hdr.sector);
			ok = 0;
			break;
		}
		{
			struct blk_req *r = slot[tail % depth];
			ok = blk_check(r, type == VIRTIO_BLK_T_IN ? "read" :
				       "write", why, whylen);
			if (ok && type == VIRTIO_BLK_T_IN) {
				irq_restore(flags);
				ok = fn(r->buf, r->hdr.sector, r->nsect, arg,
					why, whylen);
				flags = irq_save();
			}
			tail++;
		}
	}
	/* On failure, still wait for what we queued: the buffers are ours. */
	while (tail != head) {
		if (blk_wait(&slot[tail % depth]->done) != 0)
			break;
		tail++;
	}
	blk_watchdog_off();
	irq_restore(flags);
	for (i = 0; i < depth; i++)
		blk_put_req(slot[i]);
	return ok;
}

/* ---- blk-read: the CRC-32 of the whole disk ---- */

static int crc_chunk(u8 *buf, u64 sector, u32 nsect, void *arg, char *why,
		     size_t whylen)
{
	u32 *crc = arg;

	(void)sector; (void)why; (void)whylen;
	*crc = crc32_update(*crc, buf, nsect * SECTOR_SIZE);
	return 1;
}

int test_blk_read(char *why, size_t whylen)
{
	u32 crc = 0;

	if (blk_init() != 0) {
		snprintf(why, whylen, "no virtio block device");
		return 0;
	}
	/* 64 KiB requests, eight in flight. */
	if (!blk_stream(VIRTIO_BLK_T_IN, 0, blk.capacity, 128, 8, crc_chunk,
			&crc, why, whylen))
		return 0;
	printk("blk-read: crc32=%08x sectors=%llu\n", crc, blk.capacity);
	return 1;
}

/* ---- blk-write: a known pattern over lgblk=A:B, flushed and read back ---- */

/* Parse lgblk=A:B into [a, b) within the disk; 0 with why if it can't. */
static int blk_range(u64 *a, u64 *b, char *why, size_t whylen)
{
	char val[48];
	char *end;

	if (!cmdline_get("lgblk", val, sizeof(val))) {
		snprintf(why, whylen, "needs lgblk=A:B on the command line");
		return 0;
	}
	*a = simple_strtoul(val, &end, 0);
	if (*end != ':') {
		snprintf(why, whylen, "lgblk=%s is not A:B", val);
		return 0;
	}
	*b = simple_strtoul(end + 1, &end, 0);
	if (*end || *a >= *b || *b > blk.capacity) {
		snprintf(why, whylen, "lgblk=%s: want A < B <= %llu", val,
			 blk.capacity);
		return 0;
	}
	return 1;
}

/* Sector s of the blk-write pattern: byte i = (s * 31 + i) & 0xFF, then the
 * first 8 bytes replaced by s as a little-endian u64. */
static void write_pattern(u8 *p, u64 s)
{
	u32 i, base = (u32)s * 31;

	for (i = 0; i < SECTOR_SIZE; i++)
		p[i] = (u8)(base + i);
	memcpy(p, &s, 8);	/* x86 is little-endian */
}

static int fill_chunk(u8 *buf, u64 sector, u32 nsect, void *arg, char *why,
		      size_t whylen)
{
	u32 i;

	(void)arg; (void)why; (void)whylen;
	for (i = 0; i < nsect; i++)
		write_pattern(buf + i * SECTOR_SIZE, sector + i);
	return 1;
}

static int verify_chunk(u8 *buf, u64 sector, u32 nsect, void *arg, char *why,
			size_t whylen)
{
	u8 want[SECTOR_SIZE];
	u32 i, j;

	(void)arg;
	for (i = 0; i < nsect; i++) {
		u8 *got = buf + i * SECTOR_SIZE;
		write_pattern(want, sector + i);
		if (memcmp(got, want, SECTOR_SIZE) == 0)
			continue;
		for (j = 0; got[j] == want[j]; j++)
			;
		snprintf(why, whylen, "sector %llu byte %u reads %02x, wrote "
			 "%02x", sector + i, j, got[j], want[j]);
		return 0;
	}
	return 1;
}

int test_blk_write(char *why, size_t whylen)
{
	u64 a, b;

	if (blk_init() != 0) {
		snprintf(why, whylen, "no virtio block device");
		return 0;
	}
	if (!blk_range(&a, &b, why, whylen))
		return 0;
	if (!(blk.features & (1u << VIRTIO_BLK_F_FLUSH))) {
		snprintf(why, whylen, "the Host offers no FLUSH (feature %u)",
			 VIRTIO_BLK_F_FLUSH);
		return 0;
	}
	if (!blk_stream(VIRTIO_BLK_T_OUT, a, b - a, 128, 8, fill_chunk, NULL,
			why, whylen))
		return 0;
	if (!blk_flush(why, whylen))
		return 0;
	if (!blk_stream(VIRTIO_BLK_T_IN, a, b - a, 128, 8, verify_chunk, NULL,
			why, whylen))
		return 0;
	printk("blk-write: sectors=%llu:%llu verified\n", a, b);
	return 1;
}

/* ---- blk-stress: the ring kept full of mixed, verified requests ---- */

/* xorshift32: cheap randomness for picking sectors. */
static u32 rng_state = 0x2545F491;
static u32 rng(void)
{
	u32 x = rng_state;

	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	return rng_state = x;
}

#define STRESS_SLOT 8		/* sectors per slot: requests never overlap */
#define STRESS_MAX_SECTORS 65536u	/* sectors tracked (32 MiB) */

/* Word k of sector s as version v of the stress pattern wrote it. */
static inline u32 stress_word(u32 s, u32 v, u32 k)
{
	if (k == 0)
		return s;
	if (k == 1)
		return v;
	return (s * 2654435761u) ^ (v * 40503u) ^ (k * 0x9E3779B9u);
}

struct stress {
	u64 a;			/* first sector of the range */
	u32 nsect;		/* sectors in the range (tracked) */
	u32 nslots;
	u8 *slot_busy;		/* one byte per slot: a request owns it */
	u32 *version;		/* per sector: 0 unknown, else who wrote it */
	u32 next_version;
	u32 requests, errors, verified, inflight, inflight_max;
	char *why;
	size_t whylen;
};

static void stress_error(struct stress *st, const char *what,
			 struct blk_req *r, u32 detail)
{
	if (st->errors++ == 0)
		snprintf(st->why, st->whylen, "%s at sector %llu (%u)", what,
			 r->hdr.sector, detail);
}

/* A completed stress request: check it and record what is now on disk. */
static void stress_complete(struct stress *st, struct blk_req *r)
{
	u32 i, k, s0 = (u32)(r->hdr.sector - st->a);
	char why[8];

	if (!blk_check(r, "", why, sizeof(why))) {
		stress_error(st, "bad status or used length", r,
			     r->status == VIRTIO_BLK_S_OK ? r->len : r->status);
	} else if (r->hdr.type == VIRTIO_BLK_T_OUT) {
		for (i = 0; i < r->nsect; i++)
			st->version[s0 + i] = r->version;
	} else {
		for (i = 0; i < r->nsect; i++) {
			u32 v = st->version[s0 + i];
			u32 *w = (u32 *)(r->buf + i * SECTOR_SIZE);
			u32 s = (u32)r->hdr.sector + i;
			if (!v)
				continue;	/* never written: unknown */
			for (k = 0; k < SECTOR_SIZE / 4; k++)
				if (w[k] != stress_word(s, v, k))
					break;
			if (k < SECTOR_SIZE / 4) {
				stress_error(st, "read back wrong data", r, k);
				break;
			}
			st->verified++;
		}
	}
	st->slot_busy[r->slot] = 0;
	st->inflight--;
	blk_put_req(r);
}

/* Queue one random request on a free slot.  0 if no slot, request or ring
 * room is left (the ring is full).  Interrupts are off. */
static int stress_queue_one(struct stress *st)
{
	struct blk_req *r;
	u32 slot, tries, first, len, s, k, i, nseg;
	int write;

	slot = rng() % st->nslots;
	for (tries = 0; tries < st->nslots; tries++) {
		if (!st->slot_busy[slot])
			break;
		if (++slot == st->nslots)
			slot = 0;
	}
	if (tries == st->nslots)
		return 0;
	r = blk_get_req();
	if (!r)
		return 0;

	/* A random stretch inside the slot, in 1..3 segments. */
	first = slot * STRESS_SLOT;
	len = st->nsect - first < STRESS_SLOT ? st->nsect - first : STRESS_SLOT;
	i = rng() % len;		/* offset into the slot */
	first += i;
	len = 1 + rng() % (len - i);
	nseg = 1 + rng() % 3;
	if (nseg > blk.seg_max)
		nseg = blk.seg_max;
	if (nseg > len)
		nseg = len;

	r->slot = slot;
	r->nsect = len;
	r->buf = blk.arena + (u32)(r - reqs) * STRESS_SLOT * SECTOR_SIZE;
	write = rng() & 1;
	if (write) {
		r->version = ++st->next_version;
		for (i = 0; i < len; i++) {
			u32 *w = (u32 *)(r->buf + i * SECTOR_SIZE);
			s = (u32)st->a + first + i;
			for (k = 0; k < SECTOR_SIZE / 4; k++)
				w[k] = stress_word(s, r->version, k);
		}
	} else {
		memset(r->buf, 0xAA, len * SECTOR_SIZE);
	}
	if (blk_add(r, write ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN,
		    st->a + first, nseg) != 0) {
		blk_put_req(r);
		if (write)
			st->next_version--;
		return 0;
	}
	st->slot_busy[slot] = 1;
	st->requests++;
	blk.queued++;
	if (++st->inflight > st->inflight_max)
		st->inflight_max = st->inflight;
	return 1;
}

/* Hand every request blk_done() has marked done to stress_complete(). */
static void stress_reap(struct stress *st)
{
	unsigned int i;

	for (i = 0; i < BLK_NREQ; i++)
		if (reqs[i].busy && reqs[i].done)
			stress_complete(st, &reqs[i]);
}

int test_blk_stress(char *why, size_t whylen)
{
	struct stress st;
	u64 a, b, deadline, t0;
	u32 secs = 2, irqs0, done0, queued0, flags, ticks0;
	u64 chatter_ns = 0, next_chatter;
	char val[16];
	unsigned int pages;

	if (blk_init() != 0) {
		snprintf(why, whylen, "no virtio block device");
		return 0;
	}
	if (!blk_range(&a, &b, why, whylen))
		return 0;
	if (cmdline_get("lgstress_secs", val, sizeof(val)))
		secs = simple_strtoul(val, NULL, 0);

	memset(&st, 0, sizeof(st));
	st.a = a;
	st.nsect = b - a > STRESS_MAX_SECTORS ? STRESS_MAX_SECTORS : (u32)(b - a);
	st.nslots = (st.nsect + STRESS_SLOT - 1) / STRESS_SLOT;
	st.why = why;
	st.whylen = whylen;
	/* One page-rounded allocation for the slot map and the versions. */
	pages = (st.nslots + st.nsect * 4 + PAGE_SIZE - 1) / PAGE_SIZE;
	st.version = alloc_pages(pages);
	if (!st.version) {
		snprintf(why, whylen, "out of memory for %u pages", pages);
		return 0;
	}
	st.slot_busy = (u8 *)(st.version + st.nsect);
	rng_state ^= (u32)now_ns();

	irqs0 = blk.irqs;
	done0 = blk.completions;
	queued0 = blk.queued;
	t0 = now_ns();
	deadline = t0 + (u64)secs * 1000000000ull;

	if (cmdline_get("lgchatter", val, sizeof(val)))
		chatter_ns = simple_strtoul(val, NULL, 0) * 1000000ull;
	next_chatter = t0 + chatter_ns;
	ticks0 = ticks;

	flags = irq_save();
	while (now_ns() < deadline && st.errors == 0) {
		int n = 0;
		/* lgchatter=MS: a progress line every MS milliseconds, so console
		 * output flows while the disk is busy (the stress run of issue 8). */
		if (chatter_ns && now_ns() >= next_chatter) {
			printk("blk-stress: t=%ums requests=%u inflight=%u ticks=%u\n",
			       (u32)((now_ns() - t0) / 1000000), st.requests,
			       st.inflight, ticks - ticks0);
			next_chatter += chatter_ns;
		}
		/* Fill the ring (or the slots), one kick for the lot. */
		while (stress_queue_one(&st))
			n++;
		if (n)
			vq_kick(blk.vq);
		if (st.inflight == 0)
			continue;
		/* Sleep until something completes, then take it all. */
		if (blk_wait_progress(blk.completions) != 0)
			break;		/* the drain below reports it */
		stress_reap(&st);
	}
	/* Drain: every request we queued must come back by interrupt. */
	{
		stress_reap(&st);
		while (st.inflight && blk_wait_progress(blk.completions) == 0)
			stress_reap(&st);
	}
	blk_watchdog_off();
	irq_restore(flags);

	printk("blk-stress: requests=%u errors=%u irqs=%u verified=%u "
	       "inflight_max=%u ticks=%u\n", st.requests, st.errors,
	       blk.irqs - irqs0, st.verified, st.inflight_max, ticks - ticks0);
	if (st.inflight) {
		snprintf(why, whylen, "%u of %u requests never completed "
			 "(lost interrupt?)", st.inflight, st.requests);
		return 0;
	}
	if (blk.completions - done0 != blk.queued - queued0) {
		snprintf(why, whylen, "%u completions for %u requests",
			 blk.completions - done0, blk.queued - queued0);
		return 0;
	}
	if (st.errors)
		return 0;	/* why is filled in by stress_error() */
	if (st.requests == 0) {
		snprintf(why, whylen, "no requests in %u s", secs);
		return 0;
	}
	return 1;
}

/* ---- blk-bench: throughput and IOPS ---- */

static int null_chunk(u8 *buf, u64 sector, u32 nsect, void *arg, char *why,
		      size_t whylen)
{
	(void)buf; (void)sector; (void)nsect; (void)why; (void)whylen;
	++*(u32 *)arg;
	return 1;
}

/* Random 4 KiB reads with depth in flight for about ns; returns IOPS or -1. */
static int bench_rand4k(unsigned int depth, u64 ns, char *why, size_t whylen)
{
	struct blk_req *slot[32];
	u64 t0 = now_ns(), t, n4k = blk.capacity / 8;
	u32 done = 0, flags;
	unsigned int i, inflight = 0;
	int ok = 1;

	for (i = 0; i < depth; i++) {
		slot[i] = blk_get_req();
		slot[i]->buf = blk.arena + i * 4096;
		slot[i]->nsect = 8;
		slot[i]->done = 1;
		slot[i]->hdr.type = 0xFFFFFFFF;	/* "not queued yet" */
	}
	flags = irq_save();
	for (;;) {
		int kick = 0;
		t = now_ns();
		for (i = 0; i < depth; i++) {
			struct blk_req *r = slot[i];
			if (!r->done)
				continue;
			if (r->hdr.type != 0xFFFFFFFF) {
				inflight--;
				done++;
				if (!blk_check(r, "bench read", why, whylen))
					ok = 0;
				r->hdr.type = 0xFFFFFFFF;
			}
			if (ok && t - t0 < ns) {
				if (blk_add(r, VIRTIO_BLK_T_IN,
					    (u64)(rng() % (u32)n4k) * 8, 1) != 0)
					break;
				blk.queued++;
				inflight++;
				kick = 1;
			}
		}
		if (kick)
			vq_kick(blk.vq);
		if (!inflight)
			break;
		if (blk_wait_progress(blk.completions) != 0) {
			snprintf(why, whylen, "%u reads in flight, none completed "
				 "(lost interrupt?)", inflight);
			ok = 0;
			break;
		}
	}
	blk_watchdog_off();
	irq_restore(flags);
	t = now_ns() - t0;
	for (i = 0; i < depth; i++)
		blk_put_req(slot[i]);
	if (!ok)
		return -1;
	return t ? (int)((u64)done * 1000000000ull / t) : 0;
}

/* Sequential 64 KiB reads of sectors [0, sectors) with depth in flight,
 * repeated until at least min_ns has passed; *tenths gets tenths of MB/s. */
static int bench_seq64k(u64 sectors, unsigned int depth, u64 min_ns,
			u64 *tenths, u32 *chunks, char *why, size_t whylen)
{
	u64 t0 = now_ns(), t, bytes = 0;

	do {
		if (!blk_stream(VIRTIO_BLK_T_IN, 0, sectors, 128, depth,
				null_chunk, chunks, why, whylen))
			return 0;
		bytes += sectors * SECTOR_SIZE;
		t = now_ns() - t0;
	} while (t < min_ns);
	/* bytes/ns is GB/s; times 10^4 gives tenths of MB/s. */
	*tenths = t ? bytes * 10000ull / t : 0;
	return 1;
}

int test_blk_bench(char *why, size_t whylen)
{
	u64 sectors, ns = 1000000000ull, seq1, seq32;
	u32 chunks = 0;
	int qd1, qd32;
	char val[16];

	if (blk_init() != 0) {
		snprintf(why, whylen, "no virtio block device");
		return 0;
	}
	if (blk.capacity < 8) {
		snprintf(why, whylen, "disk too small (%llu sectors)",
			 blk.capacity);
		return 0;
	}
	if (cmdline_get("lgbench_secs", val, sizeof(val)))
		ns = (u64)simple_strtoul(val, NULL, 0) * 1000000000ull;

	/* Sequential 64 KiB reads over (up to 64 MiB of) the disk, one at a
	 * time and then 32 in flight (readahead's way), pass after pass for at
	 * least a quarter of the time asked for. */
	sectors = blk.capacity > 131072 ? 131072 : blk.capacity;
	if (!bench_seq64k(sectors, 1, ns / 4, &seq1, &chunks, why, whylen) ||
	    !bench_seq64k(sectors, 32, ns / 4, &seq32, &chunks, why, whylen))
		return 0;

	qd1 = bench_rand4k(1, ns, why, whylen);
	if (qd1 < 0)
		return 0;
	qd32 = bench_rand4k(32, ns, why, whylen);
	if (qd32 < 0)
		return 0;
	printk("blk-bench: seq64k_mbs=%u.%u seq64k_qd32_mbs=%u.%u "
	       "rand4k_qd1_iops=%d rand4k_qd32_iops=%d\n",
	       (u32)(seq1 / 10), (u32)(seq1 % 10), (u32)(seq32 / 10),
	       (u32)(seq32 % 10), qd1, qd32);
	return 1;
}

/* ---- The demo: the ext2 superblock of /dev/vda ---- */

/* struct ext2_super_block offsets we print (the superblock is at byte 1024). */
#define EXT2_SB_OFFSET 1024
#define EXT2_BLOCKS_COUNT 4	/* u32 */
#define EXT2_LOG_BLOCK_SIZE 24	/* u32: block size = 1024 << n */
#define EXT2_MAGIC_OFF 56	/* u16 */
#define EXT2_VOLUME_NAME 120	/* char[16] */
#define EXT2_SUPER_MAGIC 0xEF53

void blk_demo(void)
{
	char why[96];
	u8 *sb;
	char label[VIRTIO_BLK_ID_BYTES + 1];	/* serial, then volume name */
	u32 blocks, log;
	u16 magic;

	if (blk_init() != 0) {
		printk("/dev/vda: no virtio block device\n");
		return;
	}
	if (blk.capacity < 4) {
		printk("/dev/vda: %llu sectors: too small for ext2\n",
		       blk.capacity);
		return;
	}
	if (blk_get_id(label, why, sizeof(why)))
		printk("/dev/vda: serial %s, %llu sectors (%llu KiB)\n",
		       label[0] ? label : "<none>", blk.capacity,
		       blk.capacity / 2);
	else
		printk("/dev/vda: %s\n", why);
	/* Sectors 2 and 3 hold the superblock. */
	if (!blk_read(EXT2_SB_OFFSET / SECTOR_SIZE, blk.arena, 2, why,
		      sizeof(why))) {
		printk("/dev/vda: %s\n", why);
		return;
	}
	sb = blk.arena;
	memcpy(&magic, sb + EXT2_MAGIC_OFF, 2);
	if (magic != EXT2_SUPER_MAGIC) {
		printk("/dev/vda: %llu sectors, no ext2 filesystem (magic "
		       "%x)\n", blk.capacity, magic);
		return;
	}
	memcpy(&blocks, sb + EXT2_BLOCKS_COUNT, 4);
	memcpy(&log, sb + EXT2_LOG_BLOCK_SIZE, 4);
	/* dumpe2fs -h (e2p_list_super) wording; an empty name is "<none>". */
	memcpy(label, sb + EXT2_VOLUME_NAME, 16);
	label[16] = '\0';
	printk("Filesystem volume name:   %s\n", label[0] ? label : "<none>");
	printk("Block count:              %u\n", blocks);
	printk("Block size:               %u\n", 1024u << log);
}
