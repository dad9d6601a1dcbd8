/*
 * lib.c: the little C library a freestanding kernel needs: memory and string
 * routines, a snprintf with the conversions we use, printk, crc32, and the
 * 64-bit division helpers gcc calls on i386 (there is no libgcc here).
 */
#include <stdarg.h>
#include "kernel.h"
#include "core.h"

/* memset and memcpy move four bytes per step with rep stosl / rep movsl:
 * under an emulator every store is costly, and zeroing a fresh page is most
 * of what a page fault costs us. */
void *memset(void *s, int c, size_t n)
{
	u32 word = (u8)c * 0x01010101u;
	void *d = s;
	size_t words = n / 4;

	asm volatile("rep stosl" : "+D"(d), "+c"(words) : "a"(word) : "memory");
	n &= 3;
	asm volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(word) : "memory");
	return s;
}

void *memcpy(void *d, const void *s, size_t n)
{
	void *dp = d;
	size_t words = n / 4;

	asm volatile("rep movsl" : "+D"(dp), "+S"(s), "+c"(words) : : "memory");
	n &= 3;
	asm volatile("rep movsb" : "+D"(dp), "+S"(s), "+c"(n) : : "memory");
	return d;
}

void *memmove(void *d, const void *s, size_t n)
{
	u8 *dp = d;
	const u8 *sp = s;
	if (dp <= sp || dp >= sp + n)
		return memcpy(d, s, n);
	while (n--)
		dp[n] = sp[n];
	return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
	const u8 *x = a, *y = b;
	for (; n; n--, x++, y++)
		if (*x != *y)
			return *x - *y;
	return 0;
}

size_t strlen(const char *s)
{
	size_t n = 0;
	while (s[n])
		n++;
	return n;
}

int strcmp(const char *a, const char *b)
{
	while (*a && *a == *b)
		a++, b++;
	return (u8)*a - (u8)*b;
}

int strncmp(const char *a, const char *b, size_t n)
{
	for (; n; n--, a++, b++) {
		if (*a != *b)
			return (u8)*a - (u8)*b;
		if (!*a)
			break;
	}
	return 0;
}

/* 64-bit unsigned division by shift and subtract: what gcc's __udivdi3 and
 * __umoddi3 would do for us if we had libgcc.  Division by zero gives ~0. */
static u64 udivmod64(u64 n, u64 d, u64 *rem)
{
	u64 q = 0;
	int shift;

	if (d == 0) {
		if (rem)
			*rem = n;
		return ~0ULL;
	}
	if ((n >> 32) == 0 && (d >> 32) == 0) {
		/* The common case: let the CPU's 32-bit divide do it. */
		u32 n32 = (u32)n, d32 = (u32)d;
		if (rem)
			*rem = n32 % d32;
		return n32 / d32;
	}
	shift = __builtin_clzll(d) - __builtin_clzll(n | 1);
	if (shift < 0)
		shift = 0;
	d <<= shift;
	for (; shift >= 0; shift--, d >>= 1) {
		q <<= 1;
		if (n >= d) {
			n -= d;
			q |= 1;
		}
	}
	if (rem)
		*rem = n;
	return q;
}

u64 __udivdi3(u64 n, u64 d) { return udivmod64(n, d, NULL); }
u64 __umoddi3(u64 n, u64 d) { u64 r; udivmod64(n, d, &r); return r; }
u64 __udivmoddi4(u64 n, u64 d, u64 *r) { return udivmod64(n, d, r); }

s64 __divdi3(s64 n, s64 d)
{
	int neg = (n < 0) ^ (d < 0);
	u64 q = udivmod64(n < 0 ? -(u64)n : (u64)n, d < 0 ? -(u64)d : (u64)d, NULL);
	return neg ? -(s64)q : (s64)q;
}

s64 __moddi3(s64 n, s64 d)
{
	u64 r;
	udivmod64(n < 0 ? -(u64)n : (u64)n, d < 0 ? -(u64)d : (u64)d, &r);
	return n < 0 ? -(s64)r : (s64)r;
}

unsigned long simple_strtoul(const char *s, char **end, int base)
{
	unsigned long v = 0;

	if (base == 0) {
		base = 10;
		if (s[0] == '0') {
			base = 8;
			if (s[1] == 'x' || s[1] == 'X') {
				base = 16;
				s += 2;
			}
		}
	} else if (base == 16 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
		s += 2;
	for (;; s++) {
		int dgt;
		if (*s >= '0' && *s <= '9')
			dgt = *s - '0';
		else if (*s >= 'a' && *s <= 'f')
			dgt = *s - 'a' + 10;
		else if (*s >= 'A' && *s <= 'F')
			dgt = *s - 'A' + 10;
		else
			break;
		if (dgt >= base)
			break;
		v = v * base + dgt;
	}
	if (end)
		*end = (char *)s;
	return v;
}

/* The output side of snprintf: a bounded buffer that counts what it would
 * have written, so the return value is the C99 one. */
struct outbuf {
	char *buf;
	size_t size, len;
};

static void put(struct outbuf *o, char c)
{
	if (o->len + 1 < o->size)
		o->buf[o->len] = c;
	o->len++;
}

static void put_num(struct outbuf *o, u64 v, unsigned int base, int width,
		    char pad, int neg)
{
	char tmp[24];
	int n = 0;

	do {
		tmp[n++] = "0123456789abcdef"[v % base];
		v /= base;
	} while (v);
	if (neg)
		tmp[n++] = '-';
	while (n < width--)
		put(o, pad);
	while (n)
		put(o, tmp[--n]);
}

/* Supports %d %i %u %x %X %p %s %c %% with the 0 and # flags, a width and
 * l/ll length modifiers: enough for a kernel log. */
int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
	struct outbuf o = { buf, size, 0 };

	for (; *fmt; fmt++) {
		char pad = ' ';
		int width = 0, lng = 0, alt = 0;

		if (*fmt != '%') {
			put(&o, *fmt);
			continue;
		}
		fmt++;
		for (;; fmt++) {
			if (*fmt == '0')
				pad = '0';
			else if (*fmt == '#')
				alt = 1;
			else
				break;
		}
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (*fmt++ - '0');
		while (*fmt == 'l') {
			lng++;
			fmt++;
		}
		switch (*fmt) {
		case 'd':
		case 'i': {
			s64 v = lng >= 2 ? va_arg(ap, s64) : va_arg(ap, int);
			put_num(&o, v < 0 ? -(u64)v : (u64)v, 10, width, pad, v < 0);
			break;
		}
		case 'u':
			put_num(&o, lng >= 2 ? va_arg(ap, u64) : va_arg(ap, unsigned int),
				10, width, pad, 0);
			break;
		case 'x':
		case 'X':
			if (alt) {
				put(&o, '0');
				put(&o, 'x');
			}
			put_num(&o, lng >= 2 ? va_arg(ap, u64) : va_arg(ap, unsigned int),
				16, width, pad, 0);
			break;
		case 'p':
			put(&o, '0');
			put(&o, 'x');
			put_num(&o, (u32)va_arg(ap, void *), 16, 8, '0', 0);
			break;
		case 's': {
			const char *s = va_arg(ap, const char *);
			int n;
			if (!s)
				s = "(null)";
			n = strlen(s);
			while (n < width--)
				put(&o, ' ');
			while (*s)
				put(&o, *s++);
			break;
		}
		case 'c':
			put(&o, (char)va_arg(ap, int));
			break;
		case '%':
			put(&o, '%');
			break;
		case '\0':
			fmt--;
			break;
		default:
			put(&o, '%');
			put(&o, *fmt);
		}
	}
	if (size)
		buf[o.len < size ? o.len : size - 1] = '\0';
	return o.len;
}

int snprintf(char *buf, size_t size, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, size, fmt, ap);
	va_end(ap);
	return n;
}

int vprintk(const char *fmt, va_list ap)
{
	char buf[512];
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);

	if (n >= (int)sizeof(buf))
		n = sizeof(buf) - 1;
	console_write(buf, n);
	return n;
}

int printk(const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vprintk(fmt, ap);
	va_end(ap);
	return n;
}

/* CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320), the one zlib.crc32
 * computes: crc32_update(0, buf, len) == zlib.crc32(buf). */
u32 crc32_update(u32 crc, const void *buf, size_t len)
{
	static u32 table[256];
	const u8 *p = buf;

	if (!table[1]) {
		for (u32 i = 0; i < 256; i++) {
			u32 c = i;
			for (int k = 0; k < 8; k++)
				c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
			table[i] = c;
		}
	}
	crc = ~crc;
	while (len--)
		crc = table[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
	return ~crc;
}

/* The command line startup_32 copied: "key=value" words separated by spaces. */
const char *cmdline_get(const char *key, char *buf, size_t len)
{
	size_t klen = strlen(key);
	const char *p = boot_command_line;

	while (*p) {
		while (*p == ' ')
			p++;
		if (!strncmp(p, key, klen) && p[klen] == '=') {
			size_t n = 0;
			p += klen + 1;
			while (p[n] && p[n] != ' ' && n + 1 < len) {
				buf[n] = p[n];
				n++;
			}
			buf[n] = '\0';
			return buf;
		}
		while (*p && *p != ' ')
			p++;
	}
	return NULL;
}
