/*
 * console.c: the virtio console driver (what drivers/char/virtio_console.c
 * does for a single port): queue 0 receives, queue 1 transmits.
 *
 * We keep a few receive buffers in the Host's hands at all times; each one
 * that comes back used carries some input bytes, which we copy into a small
 * line buffer and hand straight back.  Output is copied into one of a few
 * transmit buffers, kicked, and waited for: the Launcher handles a console
 * kick before it returns to us, so the wait is short.
 */
#include "core.h"
#include "virtio.h"

#define RX_BUFS		4
#define RX_SIZE		256
#define TX_SIZE		512

static struct vdev con;
static struct vq *rx, *tx;
static char rxbuf[RX_BUFS][RX_SIZE];
static char txbuf[TX_SIZE];

/* Input waiting to be read: a ring of bytes filled by the receive callback. */
static char inbuf[4096];
static volatile u32 in_head, in_tail;	/* in_head: next write; in_tail: next read */
static volatile int input_ended;
static int after_cr;

static void add_rx(char *buf)
{
	struct sg sg = { buf, RX_SIZE };
	vq_add_buf(rx, &sg, 0, 1, buf);
}

/* The receive callback (IRQ, interrupts disabled): take everything used. */
static void rx_done(struct vq *vq)
{
	char *buf;
	u32 len;
	int added = 0;

	while ((buf = vq_get_buf(vq, &len)) != NULL) {
		if (len == 0)		/* an empty buffer back: end of input */
			input_ended = 1;
		for (u32 i = 0; i < len && i < RX_SIZE; i++) {
			if (in_head - in_tail < sizeof(inbuf))
				inbuf[in_head++ % sizeof(inbuf)] = buf[i];
		}
		if (!input_ended) {
			add_rx(buf);
			added = 1;
		}
	}
	if (added)
		vq_kick(vq);
}

int virtio_console_init(void)
{
	if (virtio_find(VIRTIO_ID_CONSOLE, 0, &con) != 0)
		return -1;
	virtio_set_status(&con, VIRTIO_CONFIG_S_ACKNOWLEDGE);
	virtio_set_status(&con, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
	virtio_finalize_features(&con, 0);	/* no size, no multiport */
	rx = virtio_find_vq(&con, 0, rx_done);
	tx = virtio_find_vq(&con, 1, NULL);
	if (!rx || !tx) {
		virtio_set_status(&con, VIRTIO_CONFIG_S_FAILED);
		return -1;
	}
	for (int i = 0; i < RX_BUFS; i++)
		add_rx(rxbuf[i]);
	virtio_set_status(&con, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER
			  | VIRTIO_CONFIG_S_DRIVER_OK);
	vq_kick(rx);
	console_up = 1;
	return 0;
}

/* put_chars: one buffer at a time, waiting for the Host to take each. */
void virtio_console_write(const char *s, size_t len)
{
	u32 flags = irq_save();

	while (len) {
		size_t n = len < TX_SIZE ? len : TX_SIZE;
		struct sg sg = { txbuf, n };
		u32 l;

		memcpy(txbuf, s, n);
		if (vq_add_buf(tx, &sg, 1, 0, txbuf) == 0) {
			u32 spins = 0;
			vq_kick(tx);
			/* The Launcher consumes a console kick before it
			 * lets us run again, so this is normally at once. */
			while (!vq_get_buf(tx, &l)) {
				if (++spins == 50000000u) {
					console_up = 0;
					static const char m[] = "virtio console stuck: back to the early console\n";
					early_puts(m, sizeof(m) - 1);
					early_puts(s, len);
					irq_restore(flags);
					return;
				}
				cpu_relax();
			}
		}
		s += n;
		len -= n;
	}
	irq_restore(flags);
}

/* Read one line, sleeping (HALT) until input comes.  ^D at the start of a
 * line also ends the input, as a terminal would. */
int virtio_console_readline(char *buf, size_t len)
{
	size_t n = 0;
	u32 flags = irq_save();

	for (;;) {
		while (in_tail != in_head) {
			char c = inbuf[in_tail++ % sizeof(inbuf)];
			/* A line ends at \n, \r or \r\n (whatever the
			 * terminal sends). */
			if (c == '\n' && after_cr) {
				after_cr = 0;
				continue;
			}
			after_cr = (c == '\r');
			if (c == '\r' || c == '\n') {
				buf[n] = '\0';
				irq_restore(flags);
				return n;
			}
			if (c == 4 && n == 0) {
				input_ended = 1;
				break;
			}
			if (n + 1 < len)
				buf[n++] = c;
		}
		if (input_ended) {
			buf[n] = '\0';
			irq_restore(flags);
			return n ? (int)n : -1;
		}
		wait_for_interrupt();
	}
}
