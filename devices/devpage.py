"""The device page: how the Guest learns what devices it has.

One page just above the Guest's RAM holds a packed list of device
descriptors (Linux 3.16 layout, read by drivers/lguest/lguest_device.c):

    u8 type, num_vq, feature_len, config_len, status
    num_vq x lguest_vqconfig {u16 num, u16 irq, u32 pfn}
    feature_len bytes: the features the Host offers (bit n = byte n/8, bit n%8)
    feature_len bytes: the features the Guest accepted (the Guest writes them)
    config_len bytes:  the device's config space

and a type of 0 ends the list.  A descriptor grows as we add queues,
features and config, which would move everything after it, so we keep each
device's pieces in Python and (re)write the whole page from them while the
devices are being set up.  Once the Guest runs it owns the status byte, the
accepted-feature bytes and may write config, so after that we only ever
read those, or write the config bytes in place.

The 2.6.24 Launcher used a different descriptor format (config fields of
type/len/data); the 3.16 format is what an unmodified Guest reads, so that is
what we write (DESIGN §1).  The 3.16 Launcher also took a NOTIFY on a
descriptor's address to mean "my status changed"; see handle_output().
"""

import os
import select
import struct
import sys

import lgtrace

from .abi import (DESC_OFF_STATUS, DEVICE_DESC, PAGE_SIZE,
                  USED_OFF_FLAGS, VIRTIO_CONFIG_S_FAILED, VQCONFIG,
                  VRING_USED_F_NO_NOTIFY, desc_total_size, vring_size)
from .errors import c_hex, errx
from .virtqueue import Virtqueue

#: the int the Waker's control pipe carries (native, as C's write of an int)
_WAKER_INT = struct.Struct("i")


class Device:
    """One device; mirrors struct device in lguest.c.

    name (for --verbose), type (VIRTIO_ID_*), fd and handle_input(lg, dev)
    -> bool (called when fd is readable; False = stop watching it), vqs
    (list of Virtqueue, in the order the Guest numbers them), features
    (int bitmap the Host offers), config (bytes), priv (the device's own
    state), on_reset (None or callable(lg, dev), run when the Guest resets
    the device, before the queues are cleared), running (features final).
    desc_offset is where the descriptor sits in the device page."""

    def __init__(self, devices, name, type, fd, handle_input):
        self.devices = devices
        self.name = name
        self.type = type
        self.fd = fd
        self.handle_input = handle_input
        self.vqs = []
        self.features = 0
        self.config = b""
        self.priv = None
        self.on_reset = None
        self.running = False
        self.desc_offset = 0

    @property
    def vq(self):
        """The first virtqueue, as dev->vq in C (None if there is none)."""
        return self.vqs[0] if self.vqs else None

    # -- sizes and addresses ---------------------------------------------
    @property
    def feature_len(self):
        """Bytes per feature bitmap: just enough for the highest bit."""
        return (self.features.bit_length() + 7) // 8

    def desc_size(self):
        """Bytes of the device page this device uses; as desc_size() in
        lguest_device.c."""
        return desc_total_size(len(self.vqs), self.feature_len, len(self.config))

    @property
    def desc_addr(self):
        """Guest-physical address of the descriptor: what the Guest NOTIFYs
        with to report a status change."""
        return self.devices.descpage + self.desc_offset

    def _features_offset(self):
        return self.desc_addr + DEVICE_DESC.size + len(self.vqs) * VQCONFIG.size

    def _config_offset(self):
        return self._features_offset() + 2 * self.feature_len

    # -- what the Guest wrote -------------------------------------------
    def status(self):
        """The status byte the Guest last wrote (VIRTIO_CONFIG_S_*)."""
        return self.devices.mem.view[self.desc_addr + DESC_OFF_STATUS]

    def accepted_features(self):
        """The bitmap of features the Guest accepted (int)."""
        off = self._features_offset() + self.feature_len
        return int.from_bytes(self.devices.mem.view[off:off + self.feature_len],
                              "little")

    def offered_features(self):
        """The Host's feature bitmap as it stands in the page (int)."""
        off = self._features_offset()
        return int.from_bytes(self.devices.mem.view[off:off + self.feature_len],
                              "little")

    def read_config(self):
        """The config space as it now is in the page (bytes): the Guest
        may have written to it."""
        off = self._config_offset()
        return bytes(self.devices.mem.view[off:off + len(self.config)])

    # -- building it ------------------------------------------------------
    def add_virtqueue(self, num, handle_output):
        """Give the device a virtqueue of num entries; mirrors
        add_virtqueue() in lguest.c.  Takes fresh pages for the vring
        (errx "Not enough memory for devices"), gives it the next IRQ,
        and adds its lguest_vqconfig to the descriptor.  handle_output(lg,
        vq) runs when the Guest kicks it (None: the Guest is told not to
        bother).  Returns the Virtqueue."""
        if len(self.vqs) >= 255:
            errx("Too many virtqueues for %s" % self.name)
        devices = self.devices
        pages = (vring_size(num) + PAGE_SIZE - 1) // PAGE_SIZE
        addr = devices.mem.get_pages(pages)
        vq = Virtqueue(devices.mem, num, devices.next_irq, addr // PAGE_SIZE,
                       handle_output, dev=self)
        devices.next_irq += 1
        self.vqs.append(vq)
        devices._write_page()
        return vq

    def add_feature(self, bit):
        """Offer feature bit to the Guest; as add_feature() in the 3.16
        lguest.c.  The bitmaps grow to hold it."""
        if not 0 <= bit < 8 * 255:
            errx("Feature bit %u out of range for %s" % (bit, self.name))
        self.features |= 1 << bit
        self.devices._write_page()

    def set_config(self, data):
        """Set the device's config space to data (bytes, at most 255); as
        set_config() in the 3.16 lguest.c.  Before the Guest runs this may
        change the size; afterwards it may only rewrite the same bytes in
        place (a config change the Guest can read at any time)."""
        data = bytes(data)
        if len(data) > 255:
            errx("Config for %s too long" % self.name)
        if len(data) == len(self.config) and self.devices.sealed:
            off = self._config_offset()
            self.devices.mem.view[off:off + len(data)] = data
            self.config = data
            return
        self.config = data
        self.devices._write_page()

    def encode(self):
        """The descriptor's bytes as they go into the page (status 0,
        nothing accepted yet)."""
        fl = self.feature_len
        parts = [DEVICE_DESC.pack(self.type, len(self.vqs), fl,
                                  len(self.config), 0)]
        for vq in self.vqs:
            parts.append(VQCONFIG.pack(vq.num, vq.irq, vq.pfn))
        parts.append(self.features.to_bytes(fl, "little"))
        parts.append(bytes(fl))
        parts.append(self.config)
        return b"".join(parts)


class DeviceList:
    """All the Guest's devices and their page; mirrors struct device_list
    in lguest.c.

    mem: the GuestMemory (the device page is taken from it at once, with
    get_pages(1), so it sits at the old top of RAM, where the Guest looks).
    Attributes: devs (list of Device in command-line order), descpage
    (Guest-physical address of the page), next_irq (1 first), device_num
    (for verbose "device %u: ..."), infds (set of fds to watch for
    input), waker_fd (pipe to the Waker, set by setup_waker; None before),
    verbose (bool)."""

    def __init__(self, mem, verbose=False):
        self.mem = mem
        self.descpage = mem.get_pages(1)
        self.devs = []
        self.next_irq = 1
        self.device_num = 0
        self.infds = set()
        self.waker_fd = None
        self.verbose = verbose
        # Set once the Guest may be running: sizes can't change after that.
        self.sealed = False

    def say(self, msg):
        """verbose() in C: print msg when --verbose was given."""
        if self.verbose:
            try:
                print(msg, flush=True)
            except OSError:
                pass

    def new_device(self, name, type, fd, handle_input):
        """Append a device; mirrors new_device() in lguest.c.  If
        handle_input is given, fd is watched for input.  Dies "Too many
        devices" when the page is full.  Returns the Device."""
        dev = Device(self, name, type, fd, handle_input)
        self.devs.append(dev)
        if handle_input:
            self.infds.add(fd)
        self._write_page()
        return dev

    def _write_page(self):
        """Lay every descriptor out again and write the page.  Only while
        setting up: once sealed, a change of size is our bug, not the
        Guest's."""
        if self.sealed:
            raise RuntimeError("device page changed size after the Guest started")
        offset = 0
        blobs = []
        for dev in self.devs:
            dev.desc_offset = offset
            blob = dev.encode()
            blobs.append(blob)
            offset += len(blob)
        # The Guest stops at PAGE_SIZE or at a type of 0, whichever first,
        # so a page filled to the brim needs no terminator.
        if offset > PAGE_SIZE:
            errx("Too many devices")
        page = b"".join(blobs)
        view = self.mem.view
        view[self.descpage:self.descpage + len(page)] = page
        view[self.descpage + len(page):self.descpage + PAGE_SIZE] = \
            bytes(PAGE_SIZE - len(page))

    def seal(self):
        """Called (implicitly by the first NOTIFY, or by the Launcher before
        running the Guest) once the Guest may look at the page: from now on
        the Guest owns status, accepted features and config."""
        self.sealed = True

    # -- NOTIFY: output from the Guest -------------------------------------
    def handle_output(self, lg, addr):
        """Act on the Guest's NOTIFY hypercall (LHCALL_NOTIFY) of address
        addr; mirrors handle_output() in lguest.c (2.6.24 for the kicks,
        3.16 for status changes):

        - pfn << 12 of a virtqueue: the Guest added buffers (a "kick"):
          call that queue's handle_output(lg, vq);
        - the address of a device descriptor: its status changed
          (update_device_status() in 3.16);
        - below guest_limit: an early-console string to print;
        - anything else: errx "Bad NOTIFY %#x"."""
        self.sealed = True
        for dev in self.devs:
            if addr == dev.desc_addr:
                self.update_device_status(lg, dev)
                return
            for vq in dev.vqs:
                if addr == vq.pfn * PAGE_SIZE:
                    # A queue we asked not to be kicked about (no handler,
                    # or the console gave up on input): nothing to do.  The
                    # C fell through and printed the vring as a string.
                    if vq.handle_output is None:
                        return
                    self.say("Output to %s" % dev.name)
                    if lgtrace.on: return lgtrace.kick(lg, vq)     # in a span
                    vq.handle_output(lg, vq)
                    return

        if addr < 0 or addr >= self.mem.guest_limit:
            errx("Bad NOTIFY %s" % c_hex(addr))
        text = self.mem.read_cstring(addr, self.mem.guest_limit - addr)
        try:
            sys.stdout.flush()
            _write_all(1, text)
        except OSError:
            pass    # stdout closed: the C ignored write()'s result too

    def update_device_status(self, lg, dev):
        """The Guest wrote dev's status byte and told us; mirrors
        update_device_status() in the 3.16 lguest.c: 0 is a reset, FAILED
        is a warning (and a reset if it had started), anything else means
        feature negotiation is over and the device is live."""
        status = dev.status()
        if status == 0:
            self.reset_device(lg, dev)
        elif status & VIRTIO_CONFIG_S_FAILED:
            print("lguest: Device %s configuration FAILED" % dev.name,
                  file=sys.stderr, flush=True)
            if dev.running:
                self.reset_device(lg, dev)
        else:
            if dev.running:
                errx("Device %s features finalized twice" % dev.name)
            self.start_device(dev)

    def start_device(self, dev):
        """Features are final: note it (verbose "Device %s OK: offered %x,
        accepted %x"), as start_device() in the 3.16 lguest.c."""
        self.say("Device %s OK: offered %x, accepted %x"
                 % (dev.name, dev.offered_features(), dev.accepted_features()))
        dev.running = True

    def reset_device(self, lg, dev):
        """The Guest reset dev; mirrors reset_device() in the 3.16
        lguest.c: forget the accepted features, let the device quiesce
        (its on_reset hook: the block device waits for its worker), then
        zero each vring and our last_avail_idx.  Zeroing matters: a Guest
        that probes the device again starts its rings at index 0."""
        self.say("Resetting device %s" % dev.name)
        fl = dev.feature_len
        off = dev._features_offset() + fl
        self.mem.view[off:off + fl] = bytes(fl)
        if dev.on_reset is not None:
            dev.on_reset(lg, dev)
        for vq in dev.vqs:
            start = vq.pfn * PAGE_SIZE
            size = vring_size(vq.num)
            self.mem.view[start:start + size] = bytes(size)
            vq.reset()
            if vq.handle_output is None:
                # Still no handler: keep telling the Guest not to kick.
                self.mem.view16[(vq.used_addr + USED_OFF_FLAGS) >> 1] = \
                    VRING_USED_F_NO_NOTIFY
        dev.running = False

    # -- BREAK: input for the Guest ----------------------------------------
    def handle_input(self, lg):
        """After a BREAK: serve every watched fd that is readable, until
        none is; mirrors handle_input() in lguest.c.  A device whose
        handle_input returns False is no longer watched, and the Waker is
        told to ignore it too (it is sent -fd-1).  Returns True if any fd
        was readable."""
        served = False
        while True:
            fds = sorted(self.infds)
            if not fds:
                return served
            try:
                ready, _, _ = select.select(fds, [], [], 0)
            except InterruptedError:
                continue
            except (OSError, ValueError):
                errx("select on device fds failed")
            if not ready:
                return served
            served = True
            ready = set(ready)
            for dev in self.devs:
                if dev.handle_input is None or dev.fd not in ready \
                        or dev.fd not in self.infds:
                    continue
                if (lgtrace.handle_input(lg, dev) if lgtrace.on    # in a span
                        else dev.handle_input(lg, dev)):
                    continue
                self.infds.discard(dev.fd)
                self.tell_waker(-dev.fd - 1)

    def enable_fd(self, lg, vq):
        """The Guest added buffers to an input queue: watch its device's
        fd again; mirrors enable_fd() in lguest.c (which is used as the
        queue's handle_output, so it has that signature)."""
        fd = vq.dev.fd
        if fd in self.infds:
            return
        self.infds.add(fd)
        self.tell_waker(fd)

    def tell_waker(self, value):
        """Send the Waker one int: fd >= 0 to watch, -fd-1 to stop."""
        if self.waker_fd is None:
            return
        try:
            _write_all(self.waker_fd, _WAKER_INT.pack(value))
        except OSError:
            # The Waker is gone; the Host notices (read() raises WakerDied),
            # and the C ignored this write's result too.
            pass


def _write_all(fd, data):
    """write(2) until all of data is out (stdout may be a slow pipe)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
