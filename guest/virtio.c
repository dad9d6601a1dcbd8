/*
 * virtio.c: the Guest side of lguest's virtio transport, and a split vring.
 *
 * The transport mirrors drivers/lguest/lguest_device.c (seed 003): the
 * Launcher describes each device in the device page, the page just above
 * RAM (max_pfn << 12).  A descriptor is five bytes (type, num_vq,
 * feature_len, config_len, status), then num_vq lguest_vqconfigs {num, irq,
 * pfn}, then the Host's feature bits, the bits we accept, and the config
 * space; type 0 ends the list.  Status changes that matter (reset, feature
 * negotiation done, failure) are told to the Host with a NOTIFY of the
 * descriptor's own address; a kick is a NOTIFY of the vring's address.
 *
 * The vring is the legacy split layout (include/uapi/linux/virtio_ring.h)
 * with lguest's 4096-byte alignment: descriptors, then the avail ring, then
 * (page aligned) the used ring.  Linux's virtio_ring.c does much more; this
 * is the part our drivers need.
 */
#include "core.h"
#include "virtio.h"

#define LGUEST_VRING_ALIGN 4096

/* The device page, mapped in the linear map like all guest memory. */
static u8 *lguest_devices(void)
{
	return __va(max_pfn << 12);
}

static struct lguest_vqconfig *lg_vq(struct lguest_device_desc *d)
{
	return (struct lguest_vqconfig *)(d + 1);
}

static u8 *lg_features(struct lguest_device_desc *d)
{
	return (u8 *)(lg_vq(d) + d->num_vq);
}

static u8 *lg_config(struct lguest_device_desc *d)
{
	return lg_features(d) + d->feature_len * 2;
}

static unsigned int desc_size(struct lguest_device_desc *d)
{
	return sizeof(*d) + d->num_vq * sizeof(struct lguest_vqconfig)
		+ d->feature_len * 2 + d->config_len;
}

/* Walk the device page as scan_devices() does. */
int virtio_find(u8 type, int nth, struct vdev *out)
{
	u8 *page = lguest_devices();
	unsigned int off = 0;

	while (off + sizeof(struct lguest_device_desc) <= PAGE_SIZE) {
		struct lguest_device_desc *d = (void *)(page + off);
		if (d->type == 0)
			break;
		if ((type == 0 || d->type == type) && nth-- == 0) {
			out->desc = d;
			out->offset = off;
			out->type = d->type;
			return 0;
		}
		off += desc_size(d);
	}
	return -1;
}

/* lg_get_features: bit i of the Host's feature bytes is feature i. */
u32 virtio_get_features(struct vdev *vd)
{
	struct lguest_device_desc *d = vd->desc;
	u8 *in = lg_features(d);
	u32 features = 0;

	for (unsigned int i = 0; i < d->feature_len * 8u && i < 32; i++)
		if (in[i / 8] & (1 << (i % 8)))
			features |= 1u << i;
	return features;
}

/* status_notify: a NOTIFY of the descriptor's address in the device page. */
static void status_notify(struct vdev *vd)
{
	hcall(LHCALL_NOTIFY, (max_pfn << 12) + vd->offset, 0, 0, 0);
}

/* lg_finalize_features: the second bitmap is what we accept. */
void virtio_finalize_features(struct vdev *vd, u32 accepted)
{
	struct lguest_device_desc *d = vd->desc;
	u8 *out = lg_features(d) + d->feature_len;

	memset(out, 0, d->feature_len);
	for (unsigned int i = 0; i < d->feature_len * 8u && i < 32; i++)
		if (accepted & (1u << i))
			out[i / 8] |= 1 << (i % 8);
	status_notify(vd);
}

/* lg_set_status / lg_reset. */
void virtio_set_status(struct vdev *vd, u8 status)
{
	vd->desc->status = status;
	if (status == 0 || (status & VIRTIO_CONFIG_S_FAILED))
		status_notify(vd);
}

void virtio_reset(struct vdev *vd)
{
	virtio_set_status(vd, 0);
}

/* lg_get; like Linux we refuse to read past the config space. */
void virtio_get_config(struct vdev *vd, unsigned int off, void *buf, unsigned int len)
{
	if (off + len > vd->desc->config_len)
		panic("virtio: config read %u+%u past %u", off, len, vd->desc->config_len);
	memcpy(buf, lg_config(vd->desc) + off, len);
}

/*
 * The used ring's index, as the device last wrote it.  A device can be at
 * most num entries ahead of us: anything else is the device's bug (for
 * instance an index written in two halves, or zeroed before it is written),
 * and we say so at once rather than hand a driver a stale buffer.  Linux's
 * virtio_ring trusts the index; being stricter here is what lets our tests
 * catch such a Host.
 */
static u16 used_index(struct vq *vq)
{
	u16 idx = *(volatile u16 *)&vq->used->idx;

	if ((u16)(idx - vq->last_used_idx) > vq->num)
		panic("virtio: vring at %#x: used->idx moved from %u to %u",
		      vq->pfn << 12, vq->last_used_idx, idx);
	return idx;
}

/* vring_interrupt: the Host used some buffers; tell the driver. */
static void vq_interrupt(unsigned int irq, void *arg)
{
	struct vq *vq = arg;

	if (vq->callback && vq->last_used_idx != used_index(vq))
		vq->callback(vq);
}

/*
 * lg_find_vq: the Launcher chose the vring's pages (pfn) and its IRQ; we map
 * them (they are in the linear map already) and lay the ring out in them.
 */
struct vq *virtio_find_vq(struct vdev *vd, unsigned int index, vq_callback cb)
{
	struct lguest_vqconfig *cfg;
	struct vq *vq;
	u8 *ring;
	unsigned int i;

	if (index >= vd->desc->num_vq)
		return NULL;
	cfg = &lg_vq(vd->desc)[index];
	if (cfg->num == 0 || cfg->num > ARRAY_SIZE(vq->tokens) || (cfg->num & (cfg->num - 1)))
		panic("virtio: bad vring size %u", cfg->num);
	vq = alloc_pages((sizeof(*vq) + PAGE_SIZE - 1) / PAGE_SIZE);
	if (!vq)
		return NULL;
	vq->vdev = vd;
	vq->index = index;
	vq->num = cfg->num;
	vq->irq = cfg->irq;
	vq->pfn = cfg->pfn;
	ring = __va(cfg->pfn << 12);
	vq->desc = (struct vring_desc *)ring;
	vq->avail = (struct vring_avail *)(ring + vq->num * sizeof(struct vring_desc));
	vq->used = (struct vring_used *)(((u32)&vq->avail->ring[vq->num] + sizeof(u16)
					  + LGUEST_VRING_ALIGN - 1) & ~(LGUEST_VRING_ALIGN - 1));
	/* All descriptors start on the free list, chained through next. */
	for (i = 0; i + 1 < vq->num; i++)
		vq->desc[i].next = i + 1;
	vq->free_head = 0;
	vq->num_free = vq->num;
	vq->last_used_idx = vq->used->idx;
	vq->callback = cb;
	request_irq(vq->irq, vq_interrupt, vq);
	return vq;
}

/* virtqueue_add_buf: a chain of out (device-readable) then in
 * (device-writable) descriptors, published in the avail ring. */
int vq_add_buf(struct vq *vq, const struct sg *sg, unsigned int out, unsigned int in, void *token)
{
	unsigned int n = out + in, i, head, prev = 0;
	u32 flags;

	if (n == 0)
		return -1;
	flags = irq_save();
	if (vq->num_free < n) {
		irq_restore(flags);
		return -1;
	}
	head = i = vq->free_head;
	for (unsigned int k = 0; k < n; k++) {
		vq->desc[i].addr = __pa(sg[k].addr);
		vq->desc[i].len = sg[k].len;
		vq->desc[i].flags = (k < out ? 0 : VRING_DESC_F_WRITE) | VRING_DESC_F_NEXT;
		prev = i;
		i = vq->desc[i].next;
	}
	vq->desc[prev].flags &= ~VRING_DESC_F_NEXT;
	vq->free_head = i;
	vq->num_free -= n;
	vq->tokens[head] = token;
	/* The descriptors before the ring entry, the entry before the index:
	 * the Host may be looking at any moment. */
	vq->avail->ring[vq->avail->idx & (vq->num - 1)] = head;
	barrier();
	vq->avail->idx++;
	barrier();
	irq_restore(flags);
	return 0;
}

/* lg_notify, unless the Host said it doesn't need telling. */
void vq_kick(struct vq *vq)
{
	barrier();
	if (!(*(volatile u16 *)&vq->used->flags & VRING_USED_F_NO_NOTIFY))
		hcall(LHCALL_NOTIFY, vq->pfn << 12, 0, 0, 0);
}

/* virtqueue_get_buf: the next used chain goes back on the free list. */
void *vq_get_buf(struct vq *vq, u32 *len)
{
	struct vring_used_elem *e;
	unsigned int i, head;
	void *token;
	u32 flags = irq_save();
	u16 used_idx = used_index(vq);

	if (vq->last_used_idx == used_idx) {
		irq_restore(flags);
		return NULL;
	}
	barrier();		/* the index before the entry it covers */
	e = &vq->used->ring[vq->last_used_idx & (vq->num - 1)];
	i = e->id;
	if (i >= vq->num || !vq->tokens[i]) {
		/* Not a chain we have out: a device bug.  Say all we know. */
		printk("virtio: vring at %#x: used entry %u (used->idx %u) names id %u"
		       " len %u, which is not in flight (avail->idx %u, %u free)\n",
		       vq->pfn << 12, vq->last_used_idx, vq->used->idx, i, e->len,
		       vq->avail->idx, vq->num_free);
		panic("virtio: Host used bad id %u", i);
	}
	if (len)
		*len = e->len;
	head = i;
	token = vq->tokens[i];
	vq->tokens[i] = NULL;
	for (;;) {
		vq->num_free++;
		if (!(vq->desc[i].flags & VRING_DESC_F_NEXT))
			break;
		i = vq->desc[i].next;
	}
	vq->desc[i].next = vq->free_head;
	vq->free_head = head;
	vq->last_used_idx++;
	irq_restore(flags);
	return token;
}

void vq_disable_cb(struct vq *vq)
{
	vq->avail->flags |= VRING_AVAIL_F_NO_INTERRUPT;
}

void vq_enable_cb(struct vq *vq)
{
	vq->avail->flags &= ~VRING_AVAIL_F_NO_INTERRUPT;
	barrier();
}
