/*
 * net.c: our Guest's virtio network driver and the "net" test mode.
 *
 * The Host side is the Launcher's TAP device (seed 004: setup_tun_net,
 * handle_tun_input, handle_net_output).  This is a very small cousin of
 * Linux's drivers/net/virtio_net.c with no offloads at all:
 *
 *   device type 1, two virtqueues: 0 = receive, 1 = transmit;
 *   feature MAC (bit 5): config space holds our 6-byte MAC address;
 *   every buffer, both ways, starts with the 10-byte virtio_net_hdr in a
 *   descriptor of its own (the Launcher checks its size exactly, seed 004's
 *   convert()), then the Ethernet frame in a second descriptor.
 *
 * We accept no checksum or GSO features, so the header is always zero on
 * transmit and we ignore it on receive (hdr->flags 0, gso_type NONE).
 *
 * The test answers ARP requests for our address and ICMP echo requests to
 * it, like the smallest possible IP stack: enough for "ping" from the Host.
 */
#include "kernel.h"
#include "virtio.h"
#include "tests.h"
#include "lguest.h"

#define VIRTIO_NET_F_MAC 5
#define VIRTIO_NET_HDR_LEN 10		/* struct virtio_net_hdr */
/* The biggest frame we take: ETH_HLEN + VLAN_HLEN + ETH_DATA_LEN, the
 * MAX_PACKET_LEN Linux's add_recvbuf_small() uses. */
#define MAX_FRAME 1518
#define BUF_SIZE 2048			/* one receive or transmit buffer */
#define NRX 64				/* receive buffers: 2 descriptors each */
#define NTX 32				/* transmit buffers */

#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define ETH_P_ARP 0x0806
#define ARP_LEN 28			/* Ethernet/IPv4 ARP body */
#define ARPOP_REQUEST 1
#define ARPOP_REPLY 2
#define IPPROTO_ICMP 1
#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8

/* A buffer: the header, then (4-byte aligned, after a pad) the frame. */
struct netbuf {
	u8 hdr[VIRTIO_NET_HDR_LEN];
	u8 pad[6];
	u8 frame[BUF_SIZE - 16];
};

static struct {
	int state;			/* 0 untried, 1 up, -1 no device */
	struct vdev vdev;
	struct vq *rx, *tx;
	u8 mac[6];
	int mac_from_host;
	struct netbuf *rxbufs;		/* NRX of them */
	struct netbuf *txbufs;		/* NTX of them */
	u8 tx_busy[NTX];
	volatile u32 rx_irqs;
	u32 ip;				/* ours, host byte order */
	/* What the test counts. */
	u32 rx_frames, arp, icmp, dropped, tx_frames, tx_full;
} net;

/* Big-endian (network order) loads and stores. */
static inline u16 get16(const u8 *p) { return (u16)(p[0] << 8 | p[1]); }
static inline u32 get32(const u8 *p)
{
	return (u32)p[0] << 24 | (u32)p[1] << 16 | (u32)p[2] << 8 | p[3];
}
static inline void put16(u8 *p, u16 v) { p[0] = v >> 8; p[1] = (u8)v; }
static inline void put32(u8 *p, u32 v)
{
	p[0] = v >> 24; p[1] = (u8)(v >> 16); p[2] = (u8)(v >> 8); p[3] = (u8)v;
}

/* The Internet checksum (RFC 1071): the ones' complement of the ones'
 * complement sum of 16-bit big-endian words; an odd last byte is padded.
 * Over data that carries a correct checksum it yields 0. */
static u16 inet_csum(const u8 *p, u32 len)
{
	u32 sum = 0;

	while (len > 1) {
		sum += get16(p);
		p += 2;
		len -= 2;
	}
	if (len)
		sum += (u32)p[0] << 8;
	while (sum >> 16)
		sum = (sum & 0xFFFF) + (sum >> 16);
	return (u16)~sum;
}

/* Receive interrupts only count: the test loop does the work. */
static void net_rx_done(struct vq *vq)
{
	(void)vq;
	net.rx_irqs++;
}

/* Offer receive buffer i to the Host: header and frame, both writable,
 * as add_recvbuf_small() does.  Interrupts off. */
static int net_add_rx(unsigned int i)
{
	struct sg sg[2];

	sg[0].addr = net.rxbufs[i].hdr;
	sg[0].len = VIRTIO_NET_HDR_LEN;
	sg[1].addr = net.rxbufs[i].frame;
	sg[1].len = MAX_FRAME;
	return vq_add_buf(net.rx, sg, 0, 2, &net.rxbufs[i]);
}

/* Find and start the device (once), as virtnet_probe(): features, the two
 * queues, the receive queue stocked, DRIVER_OK.  0 when up. */
static int net_init(void)
{
	u32 offered, accepted = 0, flags;
	unsigned int i;

	if (net.state)
		return net.state > 0 ? 0 : -1;
	net.state = -1;
	if (virtio_find(VIRTIO_ID_NET, 0, &net.vdev) != 0)
		return -1;
	virtio_reset(&net.vdev);
	virtio_set_status(&net.vdev, VIRTIO_CONFIG_S_ACKNOWLEDGE);
	virtio_set_status(&net.vdev, VIRTIO_CONFIG_S_ACKNOWLEDGE |
			  VIRTIO_CONFIG_S_DRIVER);
	offered = virtio_get_features(&net.vdev);
	if (offered & (1u << VIRTIO_NET_F_MAC))
		accepted |= 1u << VIRTIO_NET_F_MAC;
	virtio_finalize_features(&net.vdev, accepted);

	if (accepted & (1u << VIRTIO_NET_F_MAC)) {
		virtio_get_config(&net.vdev, 0, net.mac, 6);
		net.mac_from_host = 1;
	} else {
		/* No MAC from the Host: a fixed locally administered one,
		 * where Linux would pick a random one. */
		static const u8 local[6] = { 0x02, 0x00, 0x6c, 0x67, 0x00, 0x01 };
		memcpy(net.mac, local, 6);
	}

	net.rxbufs = alloc_pages(NRX * sizeof(struct netbuf) / PAGE_SIZE);
	net.txbufs = alloc_pages(NTX * sizeof(struct netbuf) / PAGE_SIZE);
	net.rx = virtio_find_vq(&net.vdev, 0, net_rx_done);
	net.tx = virtio_find_vq(&net.vdev, 1, NULL);
	if (!net.rx || !net.tx || !net.rxbufs || !net.txbufs) {
		virtio_set_status(&net.vdev, VIRTIO_CONFIG_S_FAILED);
		return -1;
	}
	/* We reclaim transmit buffers ourselves: no interrupts for them. */
	vq_disable_cb(net.tx);

	flags = irq_save();
	for (i = 0; i < NRX; i++)
		if (net_add_rx(i) != 0)
			break;
	irq_restore(flags);
	virtio_set_status(&net.vdev, VIRTIO_CONFIG_S_ACKNOWLEDGE |
			  VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_DRIVER_OK);
	flags = irq_save();
	vq_kick(net.rx);
	irq_restore(flags);
	net.state = 1;
	return 0;
}

/* Take back transmit buffers the Host has finished with. */
static void net_reclaim_tx(void)
{
	struct netbuf *b;
	u32 len;

	while ((b = vq_get_buf(net.tx, &len)) != NULL)
		net.tx_busy[b - net.txbufs] = 0;
}

/* A free transmit buffer (header zeroed), or NULL. */
static struct netbuf *net_get_tx(void)
{
	unsigned int i;

	net_reclaim_tx();
	for (i = 0; i < NTX; i++)
		if (!net.tx_busy[i]) {
			net.tx_busy[i] = 1;
			memset(net.txbufs[i].hdr, 0, VIRTIO_NET_HDR_LEN);
			return &net.txbufs[i];
		}
	return NULL;
}

/* Send len bytes of b->frame: header then frame, both readable, as
 * xmit_skb() does.  Interrupts off. */
static void net_send(struct netbuf *b, u32 len)
{
	struct sg sg[2];

	sg[0].addr = b->hdr;
	sg[0].len = VIRTIO_NET_HDR_LEN;
	sg[1].addr = b->frame;
	sg[1].len = len;
	if (vq_add_buf(net.tx, sg, 2, 0, b) != 0) {
		net.tx_busy[b - net.txbufs] = 0;
		net.tx_full++;
		return;
	}
	vq_kick(net.tx);
	net.tx_frames++;
}

/* Fill in an Ethernet header going back to whoever sent req. */
static void eth_reply(u8 *out, const u8 *req, u16 type)
{
	memcpy(out, req + 6, 6);	/* to their source */
	memcpy(out + 6, net.mac, 6);
	put16(out + 12, type);
}

/* An ARP request for our address gets a reply (RFC 826); anything else
 * ARP is ignored, malformed is dropped. */
static void net_arp(const u8 *f, u32 len)
{
	const u8 *a = f + ETH_HLEN;
	struct netbuf *b;
	u8 *o;

	if (len < ETH_HLEN + ARP_LEN || get16(a) != 1 ||
	    get16(a + 2) != ETH_P_IP || a[4] != 6 || a[5] != 4) {
		net.dropped++;
		return;
	}
	if (get16(a + 6) != ARPOP_REQUEST || get32(a + 24) != net.ip)
		return;
	b = net_get_tx();
	if (!b) {
		net.tx_full++;
		return;
	}
	o = b->frame;
	eth_reply(o, f, ETH_P_ARP);
	o += ETH_HLEN;
	put16(o, 1);			/* hardware: Ethernet */
	put16(o + 2, ETH_P_IP);
	o[4] = 6;
	o[5] = 4;
	put16(o + 6, ARPOP_REPLY);
	memcpy(o + 8, net.mac, 6);	/* sender: us */
	put32(o + 14, net.ip);
	memcpy(o + 18, a + 8, 6);	/* target: the asker */
	memcpy(o + 24, a + 14, 4);
	net_send(b, ETH_HLEN + ARP_LEN);
	net.arp++;
}

/* An ICMP echo request to our address gets an echo reply (RFC 792) with
 * the same identifier, sequence and data.  Everything is checked first:
 * lengths, IP header checksum, no fragments, ICMP checksum. */
static void net_ip(const u8 *f, u32 len)
{
	const u8 *ip = f + ETH_HLEN, *icmp;
	u32 ihl, total, icmp_len;
	struct netbuf *b;
	u8 *o;

	if (len < ETH_HLEN + 20 || (ip[0] >> 4) != 4) {
		net.dropped++;
		return;
	}
	ihl = (ip[0] & 0xF) * 4;
	total = get16(ip + 2);
	if (ihl < 20 || total < ihl || ETH_HLEN + total > len ||
	    inet_csum(ip, ihl) != 0) {
		net.dropped++;
		return;
	}
	if (get32(ip + 16) != net.ip || ip[9] != IPPROTO_ICMP)
		return;
	if (get16(ip + 6) & 0x3FFF) {	/* MF or a fragment offset */
		net.dropped++;
		return;
	}
	icmp = ip + ihl;
	icmp_len = total - ihl;
	if (icmp_len < 8 || inet_csum(icmp, icmp_len) != 0) {
		net.dropped++;
		return;
	}
	if (icmp[0] != ICMP_ECHO || icmp[1] != 0)
		return;
	if (ETH_HLEN + 20 + icmp_len > MAX_FRAME) {
		net.dropped++;
		return;
	}
	b = net_get_tx();
	if (!b) {
		net.tx_full++;
		return;
	}
	o = b->frame;
	eth_reply(o, f, ETH_P_IP);
	o += ETH_HLEN;
	/* A fresh 20-byte IP header: their options are not echoed. */
	o[0] = 0x45;
	o[1] = 0;
	put16(o + 2, 20 + icmp_len);
	memcpy(o + 4, ip + 4, 2);	/* same identification */
	put16(o + 6, 0);
	o[8] = 64;			/* TTL */
	o[9] = IPPROTO_ICMP;
	put16(o + 10, 0);
	put32(o + 12, net.ip);
	memcpy(o + 16, ip + 12, 4);	/* back to their source */
	put16(o + 10, inet_csum(o, 20));
	/* The ICMP message: type 0, their id, sequence and data. */
	memcpy(o + 20, icmp, icmp_len);
	o[20] = ICMP_ECHOREPLY;
	o[21] = 0;
	put16(o + 22, 0);
	put16(o + 22, inet_csum(o + 20, icmp_len));
	net_send(b, ETH_HLEN + 20 + icmp_len);
	net.icmp++;
}

/* One received frame of len bytes (the header already stripped). */
static void net_frame(const u8 *f, u32 len)
{
	net.rx_frames++;
	if (len < ETH_HLEN) {
		net.dropped++;
		return;
	}
	switch (get16(f + 12)) {
	case ETH_P_ARP:
		net_arp(f, len);
		break;
	case ETH_P_IP:
		net_ip(f, len);
		break;
	default:
		break;		/* IPv6 and friends: not for us */
	}
}

/* "A.B.C.D" -> host-order address; 0 with why if it doesn't parse. */
static int parse_ip(const char *s, u32 *ip)
{
	unsigned int i;
	char *end;
	u32 v = 0, part;

	for (i = 0; i < 4; i++) {
		if (*s < '0' || *s > '9')
			return 0;
		part = simple_strtoul(s, &end, 10);
		if (part > 255 || (i < 3 && *end != '.') || (i == 3 && *end))
			return 0;
		v = v << 8 | part;
		s = end + 1;
	}
	*ip = v;
	return 1;
}

int test_net(char *why, size_t whylen)
{
	char val[32];
	u32 secs = 10, flags, len;
	u64 deadline;
	struct netbuf *b;
	int bad_len = 0;

	if (!cmdline_get("lgip", val, sizeof(val)) || !parse_ip(val, &net.ip)) {
		snprintf(why, whylen, "needs lgip=A.B.C.D on the command line");
		return 0;
	}
	if (cmdline_get("lgnet_secs", val, sizeof(val)))
		secs = simple_strtoul(val, NULL, 0);
	if (net_init() != 0) {
		snprintf(why, whylen, "no virtio network device");
		return 0;
	}

	deadline = now_ns() + (u64)secs * 1000000000ull;
	while (now_ns() < deadline) {
		int got = 0;

		flags = irq_save();
		while ((b = vq_get_buf(net.rx, &len)) != NULL) {
			/* The Host wrote the header and len - 10 frame bytes:
			 * anything else would be its bug, not the frame's. */
			if (len < VIRTIO_NET_HDR_LEN ||
			    len > VIRTIO_NET_HDR_LEN + MAX_FRAME) {
				if (!bad_len++)
					snprintf(why, whylen, "the Host used %u "
						 "bytes of a %u-byte receive "
						 "buffer", len,
						 VIRTIO_NET_HDR_LEN + MAX_FRAME);
			} else {
				net_frame(b->frame, len - VIRTIO_NET_HDR_LEN);
			}
			/* Straight back on the ring. */
			net_add_rx((unsigned int)(b - net.rxbufs));
			got = 1;
		}
		if (got)
			vq_kick(net.rx);
		irq_restore(flags);
		if (!got) {
			/* Sleep until the next interrupt: a frame (the receive
			 * queue's IRQ) or, at the latest, a clock event 10 ms
			 * on, so the deadline is noticed. */
			flags = irq_save();
			if (net.rx->last_used_idx ==
			    *(volatile u16 *)&net.rx->used->idx) {
				if (!ticking())
					hcall(LHCALL_SET_CLOCKEVENT, 10000000, 0, 0, 0);
				wait_for_interrupt();
			}
			irq_restore(flags);
		}
	}

	printk("net: mac=%02x:%02x:%02x:%02x:%02x:%02x ip=%u.%u.%u.%u arp=%u "
	       "icmp=%u rx=%u tx=%u dropped=%u\n", net.mac[0], net.mac[1],
	       net.mac[2], net.mac[3], net.mac[4], net.mac[5], net.ip >> 24,
	       (net.ip >> 16) & 0xFF, (net.ip >> 8) & 0xFF, net.ip & 0xFF,
	       net.arp, net.icmp, net.rx_frames, net.tx_frames, net.dropped);
	if (bad_len)
		return 0;
	if (net.tx_full) {
		snprintf(why, whylen, "%u replies found the transmit ring full",
			 net.tx_full);
		return 0;
	}
	return 1;
}

void net_demo(void)
{
	struct vdev d;
	u8 mac[6];
	u32 features;

	if (virtio_find(VIRTIO_ID_NET, 0, &d) != 0)
		return;
	features = virtio_get_features(&d);
	if (features & (1u << VIRTIO_NET_F_MAC)) {
		virtio_get_config(&d, 0, mac, 6);
		printk("eth0: virtio-net, %u queues, mac "
		       "%02x:%02x:%02x:%02x:%02x:%02x\n", d.desc->num_vq,
		       mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
	} else {
		printk("eth0: virtio-net, %u queues, no MAC offered\n",
		       d.desc->num_vq);
	}
}
