/*
 * virtio.h: the Guest side of lguest's virtio transport (seed 003,
 * drivers/lguest/lguest_device.c) plus a minimal split vring, for our drivers.
 *
 * virtio.c implements it; console.c, blk.c and net.c use it.
 */
#ifndef GUEST_VIRTIO_H
#define GUEST_VIRTIO_H
#include "kernel.h"

#define VIRTIO_ID_NET 1
#define VIRTIO_ID_BLOCK 2
#define VIRTIO_ID_CONSOLE 3

#define VIRTIO_CONFIG_S_ACKNOWLEDGE 1
#define VIRTIO_CONFIG_S_DRIVER 2
#define VIRTIO_CONFIG_S_DRIVER_OK 4
#define VIRTIO_CONFIG_S_FAILED 0x80

#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2
#define VRING_AVAIL_F_NO_INTERRUPT 1
#define VRING_USED_F_NO_NOTIFY 1

/* The lguest device page: one of these per device, packed, type 0 ends the list. */
struct lguest_device_desc {
	u8 type, num_vq, feature_len, config_len, status;
	u8 config[0];
} __attribute__((packed));

struct lguest_vqconfig {
	u16 num, irq;
	u32 pfn;
} __attribute__((packed));

struct vring_desc { u64 addr; u32 len; u16 flags, next; };
struct vring_avail { u16 flags, idx; u16 ring[]; };
struct vring_used_elem { u32 id, len; };
struct vring_used { u16 flags, idx; struct vring_used_elem ring[]; };

struct vdev {
	struct lguest_device_desc *desc;	/* in the device page */
	unsigned int offset;			/* of desc within the device page */
	u8 type;
};

struct vq;
typedef void (*vq_callback)(struct vq *vq);

struct vq {
	struct vdev *vdev;
	unsigned int index, num, irq;
	u32 pfn;
	struct vring_desc *desc;
	struct vring_avail *avail;
	struct vring_used *used;
	u16 free_head, num_free, last_used_idx;
	void *tokens[256];
	vq_callback callback;
};

/* A scatter-gather element: guest kernel virtual address + length. */
struct sg { void *addr; u32 len; };

/* Find the nth (0-based) device of this type on the device page; 0 on success.
 * Type 0 (which never names a device: it ends the list) matches any type. */
int virtio_find(u8 type, int nth, struct vdev *out);
/* Host feature bits 0..31 as offered in the device page. */
u32 virtio_get_features(struct vdev *d);
/* Write the accepted features, then tell the Host (status NOTIFY), as lg_finalize_features. */
void virtio_finalize_features(struct vdev *d, u32 accepted);
/* Set status (ACKNOWLEDGE, DRIVER, DRIVER_OK...); FAILED and 0 (reset) also NOTIFY the Host. */
void virtio_set_status(struct vdev *d, u8 status);
void virtio_reset(struct vdev *d);
void virtio_get_config(struct vdev *d, unsigned int off, void *buf, unsigned int len);
/* Set up virtqueue index of d (lg_find_vq): maps the vring and hooks its IRQ to call cb
 * (cb may be NULL: poll with vq_get_buf).  NULL if the device has no such queue. */
struct vq *virtio_find_vq(struct vdev *d, unsigned int index, vq_callback cb);

/* Add a chain: out readable elements then in writable ones.  0, or -1 when the ring is full. */
int vq_add_buf(struct vq *vq, const struct sg *sg, unsigned int out, unsigned int in, void *token);
/* NOTIFY the Host (pfn << 12) unless it set VRING_USED_F_NO_NOTIFY. */
void vq_kick(struct vq *vq);
/* Next used buffer: returns its token and sets *len, or NULL. */
void *vq_get_buf(struct vq *vq, u32 *len);
/* Ask the Host for no interrupts on this queue / ask again. */
void vq_disable_cb(struct vq *vq);
void vq_enable_cb(struct vq *vq);

/* The console driver (console.c), used by printk once it is up. */
int virtio_console_init(void);		/* 0 when a console device was found */
void virtio_console_write(const char *s, size_t len);
/* Read a line from the console (blocking, interrupts do the waking); returns its length
 * without the newline, -1 when the input ended. */
int virtio_console_readline(char *buf, size_t len);
#endif
