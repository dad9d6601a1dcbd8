/*
 * kernel.h: what every part of our little lguest Guest may call.
 *
 * The core (boot.c, lib.c, mm.c, irq.c, tests.c, ...) implements these; the
 * drivers and test modes (console.c, blk.c, net.c) only use them.
 */
#ifndef GUEST_KERNEL_H
#define GUEST_KERNEL_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef signed int s32;
typedef signed long long s64;
typedef unsigned int size_t;

#define NULL ((void *)0)
#define PAGE_SIZE 4096u
#define PAGE_OFFSET 0xC0000000u
#define __pa(x) ((u32)(x) - PAGE_OFFSET)
#define __va(x) ((void *)((u32)(x) + PAGE_OFFSET))
#define barrier() asm volatile("" ::: "memory")
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* lib.c: freestanding C library bits. */
void *memset(void *s, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
void *memmove(void *d, const void *s, size_t n);	/* overlapping copies (core extension) */
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);
int snprintf(char *buf, size_t size, const char *fmt, ...);	/* %d %u %x %08x %s %c %llu %llx %p */
int printk(const char *fmt, ...);	/* to the console (early console until virtio console is up) */
u32 crc32_update(u32 crc, const void *buf, size_t len);	/* IEEE, zlib.crc32 compatible: start with 0 */
unsigned long simple_strtoul(const char *s, char **end, int base);

/* Kernel command line (copied from boot_params at boot). */
/* Returns the value of "key=" (up to the next space, NUL-terminated copy in buf), or NULL. */
const char *cmdline_get(const char *key, char *buf, size_t len);

/* Memory: all of guest-physical memory (RAM and the device pages above it) is mapped at
 * PAGE_OFFSET, so __va() of any guest-physical address works. */
void *alloc_pages(unsigned int n);	/* zeroed, page aligned, never freed; NULL when out */
extern u32 ram_size;			/* bytes of RAM (from the e820 map) */

/* Interrupts, lguest style (lguest_data.irq_enabled; SEND_INTERRUPTS when re-enabling). */
u32 irq_save(void);			/* returns the old irq_enabled, disables */
void irq_restore(u32 flags);
void irq_enable(void);
void irq_disable(void);
/* Register the handler for lguest IRQ n (vector 0x20 + n); n < 32.  Handlers run with
 * interrupts disabled. */
void request_irq(unsigned int irq, void (*handler)(unsigned int irq, void *arg), void *arg);
/* HALT until an interrupt has been handled (safe-halt: the HALT is made with interrupts
 * disabled and the Host enables them as it wakes us, so nothing is lost between a check
 * and the sleep).  Returns with interrupts as the caller had them: the race-free pattern
 * is irq_disable(); while (!cond) wait_for_interrupt(); irq_enable(); */
void wait_for_interrupt(void);

/* Time (lguest_data.time and the clock event). */
u64 now_ns(void);			/* monotonic enough: from lguest_data.time */
void msleep(unsigned int ms);		/* SET_CLOCKEVENT + HALT */
/* The periodic tick (lghz=N): IRQ 0 every 1/hz s, counted in ticks. */
void tick_start(unsigned int hz);	/* 0 stops it */
int ticking(void);
extern volatile u32 ticks;

/* Power off: SHUTDOWN "Power down". */
void power_off(void) __attribute__((noreturn));
void panic(const char *fmt, ...) __attribute__((noreturn));	/* SHUTDOWN with the message */

/* Test modes (tests.c).  A test returns 1 for PASS, 0 for FAIL with why filled in. */
typedef int (*lgtest_fn)(char *why, size_t whylen);
#endif
