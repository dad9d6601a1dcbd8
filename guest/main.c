/*
 * main.c: the kernel proper, once boot.c has the lguest plumbing up.  It
 * says hello, finds the devices, and then does one of three things the
 * command line chooses: a deliberately bad action (lgbad=NAME, for the
 * Host's death tests), test modes (lgtest=...), or the demo with a prompt.
 *
 * Reading the whole Guest side of lguest, in the order it runs:
 *   guest.ld     the layout: linked at 0xC1000000, loaded at 0x1000000
 *   head.S       startup_32 and lguest_entry: boot_params, page tables,
 *                LGUEST_INIT, NEW_PGTABLE
 *   lguest.h     the ABI: hypercall numbers, struct lguest_data, hcall()
 *   boot.c       lguest_init: lguest_data, the async ring, GDT/TLS, clock,
 *                early console, power off
 *   irq.c        the interrupt flag in lguest_data, the IDT, trap dispatch
 *   entry.S      trap entry stubs and lguest_iret with its noirq window
 *   mm.c         page tables through SET_PTE/SET_PGD, demand paging
 *   user.c       ring 3 and int $0x80 (user_prog.S: the programs)
 *   virtio.c     the lguest device page and vrings (lguest_device.c)
 *   console.c    the virtio console; then this file; tests.c, bad.c
 */
#include "core.h"
#include "virtio.h"
#include "tests.h"

/* The driver engineer's demos; weak so the core builds without them. */
#pragma weak blk_demo
#pragma weak net_demo

static const char *const type_names[] = {
	[VIRTIO_ID_NET] = "net", [VIRTIO_ID_BLOCK] = "block",
	[VIRTIO_ID_CONSOLE] = "console",
};

/* List the device page in order, as scan_devices() walks it. */
static void print_devices(void)
{
	struct vdev vd;
	int n;

	printk("Device page at %#x\n", max_pfn << 12);
	for (n = 0; virtio_find(0, n, &vd) == 0; n++) {
		struct lguest_vqconfig *vq = (void *)(vd.desc + 1);
		const char *name = vd.type < ARRAY_SIZE(type_names) && type_names[vd.type]
			? type_names[vd.type] : "unknown";
		printk("device: %s (type %u) at offset %u, %u vq%s, features %08x",
		       name, vd.type, vd.offset, vd.desc->num_vq,
		       vd.desc->num_vq == 1 ? "" : "s", virtio_get_features(&vd));
		for (int q = 0; q < vd.desc->num_vq; q++)
			printk("%s irq %u", q ? "," : ";", vq[q].irq);
		printk("\n");
	}
	if (n == 0)
		printk("device: none\n");
}

/* lguest_data.tsc_khz: the Host may say how fast the TSC runs; 0 means we
 * measure it against the clock (lguest's tsc_khz / calibrate path). */
u32 tsc_khz;

static void tsc_calibrate(void)
{
	u64 t0, t1;
	u32 c0, c1;

	tsc_khz = lguest_data.tsc_khz;
	if (tsc_khz) {
		printk("TSC: %u kHz (from the Host)\n", tsc_khz);
		return;
	}
	msleep(1);		/* lguest_data.time is fresh after an interrupt */
	t0 = now_ns();
	c0 = rdtsc_lo();
	msleep(10);
	t1 = now_ns();
	c1 = rdtsc_lo();
	if (t1 > t0)
		tsc_khz = (u32)((u64)(c1 - c0) * 1000000ull / (t1 - t0));
	printk("TSC: %u kHz (calibrated against the clock event)\n", tsc_khz);
}

/* The demo: the devices' demos, then a prompt that echoes what it's told. */
void main_demo(void)
{
	char line[256];

	if (blk_demo)
		blk_demo();
	if (net_demo)
		net_demo();
	if (!console_up) {
		printk("no console device: nothing to read, powering off\n");
		return;
	}
	/* A whole line first: a reader that goes line by line (a pipe, a
	 * test) sees the prompt has arrived before anything is typed. */
	printk("pylguest> type a line and it comes back; \"poweroff\" powers off\n");
	for (;;) {
		int n;
		printk("pylguest> ");
		n = virtio_console_readline(line, sizeof(line));
		if (n < 0) {
			printk("\nend of input\n");
			return;
		}
		if (!strcmp(line, "poweroff"))
			return;
		if (n)
			printk("%s\n", line);
	}
}

/* start_kernel: called by lguest_init() with interrupts still disabled. */
void start_kernel(void)
{
	char arg[256];

	printk("pylguest guest kernel: lguest Guest booting\n");
	printk("Memory: %uk RAM, kernel %p-%p, Host reserves top %uk\n",
	       ram_size >> 10, _text, _end, lguest_data.reserve_mem >> 10);
	printk("Kernel command line: %s\n", boot_command_line);
	irq_enable();
	tsc_calibrate();
	print_devices();
	if (virtio_console_init() == 0)
		printk("virtio console: up\n");

	if (cmdline_get("lghz", arg, sizeof(arg)))
		tick_start(simple_strtoul(arg, NULL, 0));

	if (cmdline_get("lgbad", arg, sizeof(arg))) {
		run_bad(arg);
	} else if (cmdline_get("lgtest", arg, sizeof(arg))) {
		run_tests(arg);
	} else {
		main_demo();
	}
	power_off();
}
