"""/dev/lguest over a Unix socket: how the C Launcher reaches pylguest's Host.

The Linux 3.16 C Launcher (tools/lguest/lguest.c), unmodified, runs with our preload
shim (shim/lguest_shim.c), which turns its open/write/pread/close of "/dev/lguest" into
messages on SOCK_SEQPACKET connections.  This module is the other end: it hands each
message to an LguestFile (host/lguest_user.py, the 3.16 protocol) and sends back what
the kernel's read() or write() would have returned.

Where the kernel had one struct file shared by every task of the Launcher, we have one
connection per task: the opener's (the fd the Launcher got from open()), and one more
for each device thread (a clone(CLONE_VM) child with its own pid and fd table) that
writes -- each task waits for its own reply.  New connections arrive on the Host
socket, the one fd the Launcher inherits, as the far end of a socketpair (SCM_RIGHTS).

Threads of the Host process:

  main        serve(): the jobs that touch the engine, in order -- LHREQ_INITIALIZE
              (maps the Guest memory memfd that came with it), read() (the Guest runs
              here, as it ran inside the Launcher task's read() in the kernel), and
              release() of a file whose connections are gone
  lguest-io   select()s on the Host socket and every connection: opens, attaches,
              write()s once the Guest exists (LHREQ_IRQ from device threads while the
              main thread is in read(); LHREQ_EVENTFD), and the shim's notes of file
              reads into Guest memory
  lguest-host the Host's own helper thread (channel.py): clock event, stopping the Guest

Wire format (little-endian; shim/lguest_shim.c is the other copy):
  request  REQ = {u32 op; u32 size; u64 offset; u32 aux0; u32 aux1} + payload
  reply    RET = {s32 ret} + data (READ)
  OPEN     on the Host socket, aux0 = sizeof(long), fd = the connection -> ret = file id
  ATTACH   on the Host socket, aux0 = file id, fd = the connection -> ret = 0
  WRITE    size bytes of the write() (payload: the first 64); fd: LHREQ_INITIALIZE's
           memfd (aux0, aux1 = where and how long the Launcher maps it) or
           LHREQ_EVENTFD's eventfd
  READ     size, offset (the cpu id) -> ret, data
  DMA      payload: size x {u64 addr, u64 len} of the Launcher's memory that a read()
           from a file filled; no reply
"""

import ctypes
import errno
import os
import queue
import select
import socket
import struct
import threading

from .lguest_user import LguestFile

REQ = struct.Struct("<IIQII")
RET = struct.Struct("<i")
DMA_RANGE = struct.Struct("<QQ")
OPEN, ATTACH, WRITE, READ, DMA = 1, 2, 3, 4, 5
MAX_MSG = REQ.size + 64 * DMA_RANGE.size
_PEERCRED = struct.Struct("3i")          # struct ucred {pid, uid, gid}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_PROT_RW = 3                             # PROT_READ | PROT_WRITE
_MAP_SHARED = 1
_MAP_FAILED = ctypes.c_void_p(-1).value


class Conn:
    """One task of the Launcher talking to one open file."""

    def __init__(self, sock, file):
        self.sock = sock
        self.file = file
        self.pid = _PEERCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))[0]
        self.busy = False                # a job of ours is with the main thread

    def reply(self, ret, data=b""):
        try:
            self.sock.sendmsg([RET.pack(ret), data])
        except OSError:
            pass                         # the task is gone: nobody to answer


class OpenFile:
    """An open /dev/lguest: its LguestFile, and the Guest memory we mapped for it
    (the Launcher's [start, start+length) is our [addr, addr+length))."""

    def __init__(self, fid, word):
        self.fid = fid
        self.lg = LguestFile(word, self.user_memory)
        self.maps = []                   # (launcher start, length, our address)
        self.main_conn = None            # the opener's: its end is the Launcher's fd
        self.conns = []                  # every connection (I/O thread only)
        self.released = False

    def user_memory(self, addr, length):
        for start, size, here in self.maps:
            if start <= addr and addr + length <= start + size:
                return here + (addr - start)
        return None

    def map_memfd(self, fd, start, length):
        here = _libc.mmap(None, length, _PROT_RW, _MAP_SHARED, fd, 0)
        if here is None or here == _MAP_FAILED:
            return False
        self.maps.append((start, length, here))
        return True

    def release(self):
        """The last connection went: close() in lguest_user.c.  The engine goes
        first; only then may the memory it ran on be unmapped."""
        self.lg.close()
        for _, length, here in self.maps:
            _libc.munmap(here, length)
        self.maps = []


class LguestServer:
    """Serves /dev/lguest to one Launcher (and its device threads) on host_sock, our
    end of the socketpair whose other end the Launcher inherited.

        server = LguestServer(host_sock)
        server.serve()       # main thread: returns after shutdown()
        server.shutdown()    # any thread: stop every Guest, close everything
    """

    def __init__(self, host_sock):
        self.host_sock = host_sock
        self.files = {}
        self.conns = {}                  # socket fd -> Conn
        self.jobs = queue.SimpleQueue()
        self._next_fid = 1
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe()
        self._io = threading.Thread(target=self._io_loop, name="lguest-io", daemon=True)

    # --- the main thread ------------------------------------------------------------
    def serve(self):
        self._io.start()
        while True:
            job = self.jobs.get()
            if job is None:
                break
            try:
                job()
            except Exception as e:       # never a traceback: one line (the job answered EIO)
                _host_error(e)
        self._io.join(2.0)
        for conn in list(self.conns.values()):
            conn.sock.close()
        self.conns.clear()
        for f in list(self.files.values()):
            self._release(f)
        self.host_sock.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)

    def shutdown(self):
        self._stopping = True
        for f in list(self.files.values()):
            f.lg.signal_pending()
        self.jobs.put(None)
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _job_write(self, conn, data, offset, fd, aux):
        f = conn.file
        ret = -errno.EIO
        try:
            if fd is not None and aux[1]:
                # LHREQ_INITIALIZE's memfd: our mapping keeps the memory; the fd can go.
                mapped = f.lg.base is None and f.map_memfd(fd, aux[0], aux[1])
                os.close(fd)
                fd = None
                if not mapped:
                    ret = -errno.ENOMEM
                    return
            ret, fd = f.lg.write(data, offset, conn.pid, fd=fd), None
        finally:
            if fd is not None:
                os.close(fd)
            conn.busy = False
            conn.reply(ret)

    def _job_read(self, conn, size, offset):
        ret = -errno.EIO
        try:
            ret = conn.file.lg.read(size, offset, conn.pid)
        finally:
            conn.busy = False
            if isinstance(ret, bytes):
                conn.reply(len(ret), ret)
            else:
                conn.reply(ret)

    def _job_drop(self, conn):
        conn.sock.close()

    def _release(self, f):
        if not f.released:
            f.released = True
            self.files.pop(f.fid, None)
            f.release()

    # --- the I/O thread -------------------------------------------------------------
    def _io_loop(self):
        host_open = True
        while not self._stopping:
            fds = [self._wake_r] + list(self.conns)
            if host_open:
                fds.append(self.host_sock.fileno())
            try:
                ready, _, _ = select.select(fds, [], [])
            except (OSError, ValueError):
                break
            for fd in ready:
                if self._stopping:
                    break
                if fd == self._wake_r:
                    os.read(fd, 64)
                elif host_open and fd == self.host_sock.fileno():
                    host_open = self._host_message()
                elif fd in self.conns:
                    conn = self.conns[fd]
                    try:
                        self._conn_message(conn)
                    except Exception as e:    # a bug of ours: one line, EIO, carry on
                        _host_error(e)
                        conn.reply(-errno.EIO)

    def _recv(self, sock):
        """One message: (bytes, [fds]); (b"", []) at end of file."""
        try:
            data, anc, _, _ = sock.recvmsg(MAX_MSG, socket.CMSG_SPACE(4 * 4))
        except (BlockingIOError, InterruptedError):
            return None, []
        except OSError:
            return b"", []
        fds = []
        for level, kind, blob in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                n = len(blob) // 4
                fds.extend(struct.unpack("%di" % n, blob[:4 * n]))
        return data, fds

    def _host_message(self):
        data, fds = self._recv(self.host_sock)
        if data is None:
            return True
        if not data and not fds:
            return False                 # every task of the Launcher has closed it
        if len(data) < REQ.size or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            return True
        op, _, _, aux0, _ = REQ.unpack_from(data)
        sock = socket.socket(fileno=fds[0])
        if op == OPEN and aux0 in (4, 8):
            f = OpenFile(self._next_fid, aux0)
            self._next_fid += 1
            self.files[f.fid] = f
            conn = f.main_conn = self._add(sock, f)
            conn.reply(f.fid)
        elif op == ATTACH and aux0 in self.files:
            conn = self._add(sock, self.files[aux0])
            conn.reply(0)
        else:
            bad = -errno.EBADF if op == ATTACH else -errno.EINVAL
            try:
                sock.sendmsg([RET.pack(bad)])
            except OSError:
                pass
            sock.close()
        return True

    def _add(self, sock, f):
        conn = Conn(sock, f)
        f.conns.append(conn)
        self.conns[sock.fileno()] = conn
        return conn

    def _conn_message(self, conn):
        data, fds = self._recv(conn.sock)
        if data is None:
            return
        if not data:
            for fd in fds:
                os.close(fd)
            self._lose(conn)
            return
        if len(data) < REQ.size:
            for fd in fds:
                os.close(fd)
            conn.reply(-errno.EINVAL)
            return
        op, size, offset, aux0, aux1 = REQ.unpack_from(data)
        payload = data[REQ.size:]
        fd = fds[0] if fds else None
        for extra in fds[1:]:
            os.close(extra)
        f = conn.file
        if op == WRITE:
            if f.lg.dev.guest is None or fd is not None and aux1:
                # Before the Guest exists (INITIALIZE makes the engine): in order, on
                # the main thread.
                conn.busy = True
                self.jobs.put(lambda: self._job_write(conn, payload, offset, fd,
                                                      (aux0, aux1)))
                return
            ret = f.lg.write(payload, offset, conn.pid, fd=fd)
            conn.reply(ret)
        elif op == READ:
            conn.busy = True
            self.jobs.put(lambda: self._job_read(conn, size, offset))
        elif op == DMA:
            for i in range(min(size, len(payload) // DMA_RANGE.size)):
                addr, length = DMA_RANGE.unpack_from(payload, i * DMA_RANGE.size)
                f.lg.foreign_write(addr, length)
        else:
            if fd is not None:
                os.close(fd)
            conn.reply(-errno.EINVAL)

    def _lose(self, conn):
        """A connection's task closed it (or died).  The opener's connection closing
        means every copy of the Launcher's fd is gone: the file is released."""
        fd = conn.sock.fileno()
        if self.conns.pop(fd, None) is None:
            return
        f = conn.file
        f.conns.remove(conn)
        if conn.busy:
            f.lg.signal_pending()        # its read() can't be answered: stop the Guest
        # The main thread closes the socket after any job of this connection.
        self.jobs.put(lambda: self._job_drop(conn))
        if conn is f.main_conn:
            for other in list(f.conns):
                self._lose(other)
            self.jobs.put(lambda: self._release(f))


def _host_error(e):
    os.write(2, ("lguest: Host error: %s: %s\n" % (type(e).__name__, e)).encode())
