/*
 * lguest_shim.c: a /dev/lguest for the unmodified Linux 3.16 C Launcher
 * (tools/lguest/lguest.c), served by pylguest's Host.
 *
 * No kernel has /dev/lguest any more.  pylguest's Host (host/) does what the
 * driver did, in a Python process beside the Launcher.  This library is
 * LD_PRELOADed into the dynamically linked C Launcher and catches the few libc
 * calls through which the Launcher meets the driver, turning them into
 * messages on a Unix socket (host/lguest_socket.py is the other end):
 *
 *   open("/dev/lguest")     a new SOCK_SEQPACKET connection to the Host: the fd
 *                           the Launcher gets *is* that socket
 *   write(lguest_fd)        a request message; the reply is write()'s result.
 *                           LHREQ_INITIALIZE also carries the memfd behind Guest
 *                           memory, LHREQ_EVENTFD the eventfd (SCM_RIGHTS):
 *                           an fd number means nothing in another process
 *   pread(lguest_fd, .., cpu)  "run the Guest": the reply is read()'s result
 *                           (the NOTIFY address, the death reason, or -errno)
 *   read(lguest_fd)         the same, with the cpu id 0 (the file position)
 *   close(lguest_fd)        closes the connection (the Host's release())
 *   mmap(/dev/zero, MAP_PRIVATE)  becomes a MAP_SHARED mapping of a memfd, so
 *                           the Launcher's threads and the Host see the same
 *                           Guest memory (map_zeroed_pages() made it this way)
 *   mmap(MAP_FIXED) of a file over that memory fails with ENODEV: a private
 *                           file mapping would hide those pages from the Host;
 *                           map_at() then falls back to pread(), as it did for
 *                           kernels that can't be mapped
 *   read/pread/readv of a file into Guest memory  also tell the Host which
 *                           Guest-physical bytes changed behind its CPU's back
 *                           (block reads: the emulator must forget code it
 *                           translated from those pages)
 *
 * Everything else goes straight to libc.  The Launcher's device threads are
 * clone(CLONE_VM) children: they share this library's memory but have their
 * own fd tables and pids, and each must wait for its own replies, so each
 * process attaches a connection of its own to the same open file the first
 * time it writes (a socketpair whose far end goes to the Host through the
 * Host socket, the one fd we inherit, named by LGUEST_HOST_FD).
 *
 * Wire format (little-endian, packed; host/lguest_socket.py mirrors it):
 *   request  { u32 op; u32 size; u64 offset; u32 aux0; u32 aux1; } + payload
 *   reply    { s32 ret; } + data (READ only)
 * On the Host socket: OPEN (aux0 = sizeof(long)) and ATTACH (aux0 = file id),
 * each with the new connection's far end; the reply comes on that connection.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

enum { LGS_OPEN = 1, LGS_ATTACH, LGS_WRITE, LGS_READ, LGS_DMA };

/* The two requests whose arguments hold something the Host can't use as-is. */
enum { LHREQ_INITIALIZE = 0, LHREQ_EVENTFD = 4 };

struct lgs_req {
	uint32_t op, size;
	uint64_t offset;
	uint32_t aux0, aux1;
} __attribute__((packed));

#define MAX_WRITE 64		/* the longest request is 4 words */
#define MAX_REGIONS 8
#define MAX_FILES 8
#define MAX_CONNS 64
#define MAX_DMA 64		/* ranges per DMA message */

/* Mappings of /dev/zero we made shared: Guest memory is one of them. */
static struct region {
	uintptr_t start;
	size_t len;
	int memfd;
} regions[MAX_REGIONS];
static int nregions;

/* Open "/dev/lguest" files: fd (= our end of the opener's connection). */
static struct lgfile {
	int fd, id;		/* id 0: free slot */
	pid_t opener;
	uintptr_t base;		/* Guest memory, once LHREQ_INITIALIZE succeeded */
	size_t limit;
} files[MAX_FILES];

/*
 * Connections of the other processes sharing this memory (the Launcher's
 * device threads).  A slot is claimed with an atomic compare-and-swap on pid;
 * the socket's inode tells a live entry from one left by a dead process
 * whose pid came back.
 */
static struct conn {
	volatile pid_t pid;
	int file_id, fd;
	ino_t ino;
} conns[MAX_CONNS];

static int host_fd = -1;

static int (*real_open)(const char *, int, ...);
static int (*real_open64)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_openat64)(int, const char *, int, ...);
static int (*real_close)(int);
static ssize_t (*real_read)(int, void *, size_t);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pread)(int, void *, size_t, off_t);
static ssize_t (*real_pread64)(int, void *, size_t, off64_t);
static ssize_t (*real_readv)(int, const struct iovec *, int);
static void *(*real_mmap)(void *, size_t, int, int, int, off_t);
static void *(*real_mmap64)(void *, size_t, int, int, int, off64_t);

static void say(const char *msg)
{
	static const char pre[] = "lguest shim: ";
	struct iovec iov[3] = {
		{ (void *)pre, sizeof(pre) - 1 },
		{ (void *)msg, strlen(msg) },
		{ "\n", 1 },
	};
	writev(2, iov, 3);
}

__attribute__((constructor)) static void shim_init(void)
{
	const char *s = getenv("LGUEST_HOST_FD");
	struct stat st;

	real_open = dlsym(RTLD_NEXT, "open");
	real_open64 = dlsym(RTLD_NEXT, "open64");
	real_openat = dlsym(RTLD_NEXT, "openat");
	real_openat64 = dlsym(RTLD_NEXT, "openat64");
	real_close = dlsym(RTLD_NEXT, "close");
	real_read = dlsym(RTLD_NEXT, "read");
	real_write = dlsym(RTLD_NEXT, "write");
	real_pread = dlsym(RTLD_NEXT, "pread");
	real_pread64 = dlsym(RTLD_NEXT, "pread64");
	real_readv = dlsym(RTLD_NEXT, "readv");
	real_mmap = dlsym(RTLD_NEXT, "mmap");
	real_mmap64 = dlsym(RTLD_NEXT, "mmap64");

	/* No Host socket: no /dev/lguest, exactly as on a kernel without it. */
	if (s && *s) {
		int fd = atoi(s);
		if (fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode))
			host_fd = fd;
	}
}

/* --- Messages ------------------------------------------------------------ */

/* Send one message, with up to one fd riding along. */
static int send_msg(int sock, const struct lgs_req *rq, const void *payload,
		    size_t plen, int fd)
{
	struct iovec iov[2] = { { (void *)rq, sizeof(*rq) },
				{ (void *)payload, plen } };
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	struct msghdr mh = { .msg_iov = iov, .msg_iovlen = plen ? 2 : 1 };
	ssize_t r;

	if (fd >= 0) {
		struct cmsghdr *c;
		memset(&u, 0, sizeof(u));
		mh.msg_control = u.buf;
		mh.msg_controllen = sizeof(u.buf);
		c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &fd, sizeof(int));
	}
	do
		r = sendmsg(sock, &mh, MSG_NOSIGNAL);
	while (r < 0 && errno == EINTR);
	return r < 0 ? -1 : 0;
}

/* Wait for the reply: its result, with data (if any) into buf. */
static long recv_reply(int sock, void *buf, size_t len)
{
	int32_t ret;
	struct iovec iov[2] = { { &ret, sizeof(ret) }, { buf, len } };
	struct msghdr mh = { .msg_iov = iov, .msg_iovlen = len ? 2 : 1 };
	ssize_t r;

	do
		r = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
	while (r < 0 && errno == EINTR);
	if (r < (ssize_t)sizeof(ret)) {
		say("the Host has gone away");
		return -ENODEV;
	}
	return ret;
}

/* A new connection: its far end goes to the Host with op; returns ours. */
static int connect_host(uint32_t op, uint32_t aux0, int cloexec, long *ret)
{
	int sv[2];
	struct lgs_req rq = { .op = op, .aux0 = aux0 };

	if (host_fd < 0) {
		errno = ENOENT;
		return -1;
	}
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | (cloexec ? SOCK_CLOEXEC : 0),
		       0, sv) < 0)
		return -1;
	if (send_msg(host_fd, &rq, NULL, 0, sv[1]) < 0) {
		say("can't reach the Host");
		real_close(sv[0]);
		real_close(sv[1]);
		errno = ENODEV;
		return -1;
	}
	real_close(sv[1]);
	*ret = recv_reply(sv[0], NULL, 0);
	if (*ret < 0) {
		real_close(sv[0]);
		errno = -*ret;
		return -1;
	}
	return sv[0];
}

static struct lgfile *find_file(int fd)
{
	int i;
	if (fd < 0)
		return NULL;
	for (i = 0; i < MAX_FILES; i++)
		if (files[i].id && files[i].fd == fd)
			return &files[i];
	return NULL;
}

static ino_t sock_ino(int fd)
{
	struct stat st;
	return fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode) ? st.st_ino : 0;
}

/* The connection this process talks to the file's Host over. */
static int conn_for(struct lgfile *f)
{
	pid_t me = getpid();
	int i, fd, free_slot = -1;
	long ret;

	if (me == f->opener)
		return f->fd;
	for (i = 0; i < MAX_CONNS; i++) {
		if (conns[i].pid == me && conns[i].file_id == f->id) {
			if (conns[i].ino && sock_ino(conns[i].fd) == conns[i].ino)
				return conns[i].fd;
			free_slot = i;		/* left by an earlier process */
			break;
		}
	}
	fd = connect_host(LGS_ATTACH, f->id, 1, &ret);
	if (fd < 0)
		return -1;
	if (free_slot < 0) {
		/* A free slot, or one of a task that is gone (reset_device() kills
		 * device threads; start_device() makes new ones). */
		int saved = errno;
		for (i = 0; i < MAX_CONNS; i++) {
			pid_t p = conns[i].pid;
			if ((p == 0 || (kill(p, 0) < 0 && errno == ESRCH)) &&
			    __sync_bool_compare_and_swap(&conns[i].pid, p, me))
				break;
		}
		errno = saved;
		if (i == MAX_CONNS) {
			say("too many tasks writing /dev/lguest");
			real_close(fd);
			errno = ENOMEM;
			return -1;
		}
		free_slot = i;
	}
	conns[free_slot].ino = 0;
	conns[free_slot].file_id = f->id;
	conns[free_slot].fd = fd;
	conns[free_slot].ino = sock_ino(fd);
	return fd;
}

/* --- /dev/lguest --------------------------------------------------------- */

static int lg_open(int flags)
{
	long id;
	int fd, i;

	fd = connect_host(LGS_OPEN, sizeof(long), flags & O_CLOEXEC, &id);
	if (fd < 0)
		return -1;
	for (i = 0; i < MAX_FILES; i++) {
		if (!files[i].id) {
			files[i] = (struct lgfile){ .fd = fd, .id = id,
						    .opener = getpid() };
			return fd;
		}
	}
	real_close(fd);
	errno = EMFILE;
	return -1;
}

static struct region *find_region(uintptr_t addr)
{
	int i;
	for (i = 0; i < nregions; i++)
		if (addr >= regions[i].start &&
		    addr - regions[i].start < regions[i].len)
			return &regions[i];
	return NULL;
}

static ssize_t lg_write(struct lgfile *f, const void *buf, size_t count)
{
	struct lgs_req rq = { .op = LGS_WRITE, .size = count };
	const unsigned long *word = buf;
	size_t plen = count < MAX_WRITE ? count : MAX_WRITE;
	int sock = conn_for(f), fd = -1;
	struct region *r = NULL;
	long ret;

	if (sock < 0)
		return -1;
	if (count >= 2 * sizeof(long) && word[0] == LHREQ_INITIALIZE) {
		/* The Host maps the same memfd; base is found inside it. */
		r = find_region(word[1]);
		if (r) {
			fd = r->memfd;
			rq.aux0 = r->start;
			rq.aux1 = r->len;
		} else {
			say("Guest memory is not a /dev/zero mapping: the Host can't share it");
		}
	} else if (count >= 3 * sizeof(long) && word[0] == LHREQ_EVENTFD) {
		fd = word[2];
	}
	if (send_msg(sock, &rq, buf, plen, fd) < 0)
		return -1;		/* EBADF for a bad eventfd, as fdget() */
	ret = recv_reply(sock, NULL, 0);
	if (ret < 0) {
		errno = -ret;
		return -1;
	}
	if (r) {
		f->base = word[1];
		f->limit = (size_t)word[2] * 4096;
	}
	return ret;
}

static ssize_t lg_read(struct lgfile *f, void *buf, size_t count, off64_t off)
{
	struct lgs_req rq = { .op = LGS_READ, .size = count,
			      .offset = (uint64_t)off };
	int sock = conn_for(f);
	long ret;

	if (sock < 0)
		return -1;
	if (send_msg(sock, &rq, NULL, 0, -1) < 0)
		return -1;
	ret = recv_reply(sock, buf, count);
	if (ret < 0) {
		errno = -ret;
		return -1;
	}
	return ret;
}

/*
 * Tell the Host that parts of Guest memory were written by a read() from a
 * file: one-way messages on this process's connection, so they reach the Host
 * before any LHREQ_IRQ this thread sends for the request.
 */
static void note_dma(const struct iovec *iov, int n, ssize_t done, int srcfd)
{
	struct { uint64_t addr, len; } __attribute__((packed)) rng[MAX_DMA];
	struct lgs_req rq = { .op = LGS_DMA };
	struct lgfile *f = NULL;
	int i, k = 0, sock = -1, saved = errno;

	for (i = 0; i < MAX_FILES; i++)
		if (files[i].id && files[i].base)
			f = &files[i];
	if (!f)
		return;
	for (i = 0; i < n && done > 0; i++) {
		uintptr_t a = (uintptr_t)iov[i].iov_base;
		size_t l = iov[i].iov_len < (size_t)done ? iov[i].iov_len : (size_t)done;
		done -= l;
		if (!l || a < f->base || a - f->base >= f->limit)
			continue;
		if (sock < 0) {
			/* Only files hold code; a tap or a terminal only brings data. */
			struct stat st;
			if (fstat(srcfd, &st) != 0 ||
			    !(S_ISREG(st.st_mode) || S_ISBLK(st.st_mode)) ||
			    (sock = conn_for(f)) < 0)
				break;
		}
		rng[k].addr = a;
		rng[k].len = l;
		if (++k == MAX_DMA) {
			rq.size = k;
			send_msg(sock, &rq, rng, k * sizeof(rng[0]), -1);
			k = 0;
		}
	}
	if (k) {
		rq.size = k;
		send_msg(sock, &rq, rng, k * sizeof(rng[0]), -1);
	}
	errno = saved;
}

/* --- The libc entry points we stand in front of ---------------------------- */

static int is_lguest(const char *path)
{
	return path && strcmp(path, "/dev/lguest") == 0;
}

#define OPEN_MODE(flags, mode)						\
	do {								\
		if ((flags) & (O_CREAT | __O_TMPFILE)) {		\
			va_list ap;					\
			va_start(ap, flags);				\
			mode = va_arg(ap, int);				\
			va_end(ap);					\
		}							\
	} while (0)

int open(const char *path, int flags, ...)
{
	int mode = 0;
	OPEN_MODE(flags, mode);
	if (is_lguest(path))
		return lg_open(flags);
	return real_open(path, flags, mode);
}

int open64(const char *path, int flags, ...)
{
	int mode = 0;
	OPEN_MODE(flags, mode);
	if (is_lguest(path))
		return lg_open(flags);
	return real_open64(path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...)
{
	int mode = 0;
	OPEN_MODE(flags, mode);
	if (is_lguest(path))
		return lg_open(flags);
	return real_openat(dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...)
{
	int mode = 0;
	OPEN_MODE(flags, mode);
	if (is_lguest(path))
		return lg_open(flags);
	return real_openat64(dirfd, path, flags, mode);
}

int close(int fd)
{
	struct lgfile *f;
	int i;

	/*
	 * restart_guest() closes every fd above stderr before it re-execs the
	 * Launcher.  The Host socket is ours, not the Launcher's: the next image
	 * needs it to open /dev/lguest again.
	 */
	if (fd >= 0 && fd == host_fd)
		return 0;
	for (i = 0; i < nregions; i++)
		if (fd >= 0 && fd == regions[i].memfd)
			return 0;	/* the Guest memory's memfd: ours too */
	f = find_file(fd);
	if (f && f->opener == getpid())
		f->id = 0;
	return real_close(fd);
}

ssize_t write(int fd, const void *buf, size_t count)
{
	struct lgfile *f = find_file(fd);
	return f ? lg_write(f, buf, count) : real_write(fd, buf, count);
}

/* A plain read into one buffer: if it landed in Guest memory, say so. */
static ssize_t noted(int fd, void *buf, size_t count, ssize_t r)
{
	if (r > 0) {
		struct iovec iov = { buf, count };
		note_dma(&iov, 1, r, fd);
	}
	return r;
}

ssize_t read(int fd, void *buf, size_t count)
{
	struct lgfile *f = find_file(fd);

	if (f)
		return lg_read(f, buf, count, 0);
	return noted(fd, buf, count, real_read(fd, buf, count));
}

ssize_t pread(int fd, void *buf, size_t count, off_t off)
{
	struct lgfile *f = find_file(fd);

	if (f)
		return lg_read(f, buf, count, off);
	return noted(fd, buf, count, real_pread(fd, buf, count, off));
}

ssize_t pread64(int fd, void *buf, size_t count, off64_t off)
{
	struct lgfile *f = find_file(fd);

	if (f)
		return lg_read(f, buf, count, off);
	return noted(fd, buf, count, real_pread64(fd, buf, count, off));
}

ssize_t readv(int fd, const struct iovec *iov, int n)
{
	ssize_t r = real_readv(fd, iov, n);
	if (r > 0)
		note_dma(iov, n, r, fd);
	return r;
}

static int is_dev_zero(int fd)
{
	struct stat st;
	return fd >= 0 && fstat(fd, &st) == 0 && S_ISCHR(st.st_mode) &&
		major(st.st_rdev) == 1 && minor(st.st_rdev) == 5;
}

/* Is [addr, addr+len) over one of our shared regions? */
static int over_region(uintptr_t addr, size_t len, int fd)
{
	int i;
	for (i = 0; i < nregions; i++)
		if (addr < regions[i].start + regions[i].len &&
		    regions[i].start < addr + len && fd != regions[i].memfd)
			return 1;
	return 0;
}

static void *shim_mmap(void *addr, size_t len, int prot, int flags, int fd,
		       off64_t off, int big)
{
	if (!(flags & MAP_ANONYMOUS) && (flags & MAP_TYPE) == MAP_PRIVATE &&
	    nregions < MAX_REGIONS && is_dev_zero(fd)) {
		/*
		 * map_zeroed_pages(): Guest memory.  Zero-filled either way, but
		 * shared, so the Host process can map the same pages.
		 */
		int mfd = memfd_create("lguest-guest-memory", MFD_CLOEXEC);
		void *p;

		if (mfd < 0 || ftruncate64(mfd, (off64_t)len + off) < 0) {
			if (mfd >= 0)
				real_close(mfd);
			return MAP_FAILED;
		}
		flags = (flags & ~MAP_TYPE) | MAP_SHARED;
		p = real_mmap64(addr, len, prot, flags, mfd, off);
		if (p == MAP_FAILED) {
			real_close(mfd);
			return p;
		}
		regions[nregions].start = (uintptr_t)p;
		regions[nregions].len = len;
		regions[nregions].memfd = mfd;
		nregions++;
		return p;
	}
	if ((flags & MAP_FIXED) && !(flags & MAP_ANONYMOUS) &&
	    over_region((uintptr_t)addr, len, fd)) {
		errno = ENODEV;
		return MAP_FAILED;
	}
	return big ? real_mmap64(addr, len, prot, flags, fd, off)
		   : real_mmap(addr, len, prot, flags, fd, (off_t)off);
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	return shim_mmap(addr, len, prot, flags, fd, off, 0);
}

void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off64_t off)
{
	return shim_mmap(addr, len, prot, flags, fd, off, 1);
}
