"""The network: a Host<->Guest link over a TAP device (issue 7).

Our network card is a virtio net device (type 1) whose far end is a "tap"
interface on the host: frames the Guest transmits are written to the tap,
so the host's stack receives them as if from a real card, and frames the
host sends out of the tap we read into the Guest's receive buffers.  The
host side either gets an IP address (routing) or joins an existing bridge,
as setup_tun_net() in lguest.c did.

Every buffer on both queues starts with a 10-byte struct virtio_net_hdr.
We offer no offload features, so on transmit it carries nothing of interest
and is skipped, and on receive we write it as zeros ("no checksum help, no
GSO").  Two virtqueues, receive first, as the Guest numbers them.
"""

import fcntl
import ipaddress
import os
import random
import socket
import struct

import lgtrace

from .abi import (ETH_ALEN, VIRTIO_ID_NET, VIRTIO_NET_F_MAC,
                  VIRTIO_NET_HDR_SIZE, VIRTQUEUE_NUM)
from .errors import err, errx

BRIDGE_PFX = "bridge:"
#: The host side's netmask with --tunnet=IP.  The C set only the address,
#: which gives the host a /8, /16 or /24 route by the address's old class;
#: a /24 is the usual small Host<->Guest link whatever the address.
NETMASK = "255.255.255.0"
#: ioctl: add an interface to a bridge (linux/sockios.h)
SIOCBRADDIF = 0x89A2
IFNAMSIZ = 16
#: Big enough for any frame a tap hands us (its MTU is at most 65535): what
#: doesn't fit the Guest's buffer lands here, so we can tell it was too big.
OVERFLOW_BYTES = 65536 + 64


class NetInfo:
    """What the Launcher keeps for one net device (dev.priv): the pytun
    device (kept open: closing it removes the interface), its name, the MAC
    we gave the Guest, and counters: frames in and out, oversized frames
    dropped, transmit errors, times the Guest had no receive buffer."""

    def __init__(self, tap, mac):
        self.tap = tap
        self.ifname = tap.name if isinstance(tap.name, str) else tap.name.decode()
        self.mac = mac
        self.rx_frames = 0
        self.tx_frames = 0
        self.rx_dropped_oversize = 0
        self.tx_errors = 0
        self.rx_no_buffer = 0
        self.overflow = bytearray(OVERFLOW_BYTES)

    def counters(self):
        """One line of counters, for --verbose."""
        return ("net %s: %u frames in, %u out, %u oversized frames dropped, "
                "%u transmit errors, %u times no receive buffer"
                % (self.ifname, self.rx_frames, self.tx_frames,
                   self.rx_dropped_oversize, self.tx_errors, self.rx_no_buffer))


def _skip(iov, nbytes):
    """The memoryviews of iov with the first nbytes removed, and how many
    of those nbytes there actually were (less if iov is shorter)."""
    out = []
    skipped = 0
    for buf in iov:
        if skipped < nbytes:
            take = min(len(buf), nbytes - skipped)
            skipped += take
            buf = buf[take:]
        if len(buf):
            out.append(buf)
    return out, skipped


def handle_net_output(lg, vq):
    """The Guest kicked the transmit queue: for every buffer, skip the
    virtio_net_hdr and write the frame to the tap, then give the buffer
    back.  Mirrors handle_net_output() in lguest.c.  Dies "Input buffers in
    output queue?" on a writable buffer.  A frame the tap refuses (too
    short, too long) is counted, not fatal: that's the network's business."""
    dev = vq.dev
    info = dev.priv
    while True:
        got = vq.get_vq_desc()
        if got is None:
            return
        head, iov, out_num, in_num = got
        if in_num:
            errx("Input buffers in output queue?")
        # Linux puts the header in a descriptor of its own; we don't insist
        # on that (the C's convert() did), only that it is there at all.
        frame, hdr = _skip(iov, VIRTIO_NET_HDR_SIZE)
        if hdr < VIRTIO_NET_HDR_SIZE:
            errx("Bad iovec size %u for struct virtio_net_hdr" % hdr)
        length = 0
        if frame:
            try:
                # A tap takes one frame per write: writev() gathers it.
                length = os.writev(dev.fd, frame)
                info.tx_frames += 1
            except OSError:
                info.tx_errors += 1
                dev.devices.say("net %s: transmit of %u bytes failed"
                                % (info.ifname, sum(len(b) for b in frame)))
        if lgtrace.on: lgtrace.transfer(vq, length)
        vq.add_used_and_trigger(lg, head, length)


def handle_tun_input(lg, dev):
    """The tap is readable: read one frame into the Guest's next receive
    buffer, behind a zeroed virtio_net_hdr, and interrupt the Guest.
    Returns False when the Guest has no receive buffer: we stop watching
    the tap until it adds one (enable_fd()), and the frame waits in the tap.
    Mirrors handle_tun_input() in lguest.c.

    A frame bigger than the buffer is dropped and counted (info.
    rx_dropped_oversize, shown with --verbose); the buffer goes back to the
    queue unused.  Nothing is ever written past a buffer: readv() fills the
    Guest's memoryviews and spills the rest into our own overflow area."""
    vq = dev.vq
    info = dev.priv
    got = vq.get_vq_desc()
    if got is None:
        info.rx_no_buffer += 1
        return False
    head, iov, out_num, in_num = got
    if out_num:
        errx("Output buffers in network recv queue?")

    # The header: all zeros says flags 0, GSO_NONE.
    room, hdr = _skip(iov, VIRTIO_NET_HDR_SIZE)
    if hdr < VIRTIO_NET_HDR_SIZE:
        errx("Bad iovec size %u for struct virtio_net_hdr" % hdr)
    capacity = sum(len(b) for b in room)

    try:
        length = os.readv(dev.fd, room + [info.overflow])
    except (BlockingIOError, InterruptedError):
        length = 0
    except OSError:
        err("reading network")
    if length <= 0:
        # Nothing there after all (another reader, or a spurious wake-up).
        _unget(vq)
        return True
    if length > capacity:
        info.rx_dropped_oversize += 1
        dev.devices.say("net %s: dropped oversized frame of %u bytes "
                        "(buffer holds %u); %u dropped so far"
                        % (info.ifname, length, capacity,
                           info.rx_dropped_oversize))
        _unget(vq)
        return True

    _zero(iov, VIRTIO_NET_HDR_SIZE)
    if lgtrace.on: lgtrace.transfer(vq, length)
    vq.add_used_and_trigger(lg, head, VIRTIO_NET_HDR_SIZE + length)
    info.rx_frames += 1
    if dev.devices.verbose:
        first = bytes(room[0][:2]) if room else b""
        dev.devices.say("tun input packet len %i [%s] (sent)"
                        % (length, " ".join("%02x" % b for b in first)))
    return True


def _unget(vq):
    """Put back the buffer the last get_vq_desc() took: the next
    get_vq_desc() returns it again.  The used ring was never touched, so
    the Guest can't tell."""
    vq.last_avail_idx = (vq.last_avail_idx - 1) & 0xFFFF


def _zero(iov, nbytes):
    """Zero the first nbytes spread over the memoryviews of iov."""
    for buf in iov:
        n = min(len(buf), nbytes)
        buf[:n] = bytes(n)
        nbytes -= n
        if not nbytes:
            return


def str2ip(arg):
    """Dotted quad to str, dying on anything else; the C's str2ip() took
    whatever sscanf() made of it."""
    try:
        return str(ipaddress.IPv4Address(arg))
    except ValueError:
        errx("Bad IP address '%s' for --tunnet" % arg)


def str2mac(arg):
    """"aa:bb:cc:dd:ee:ff" to 6 bytes; the 3.16 Launcher's str2mac()."""
    parts = arg.split(":")
    try:
        if len(parts) != ETH_ALEN or not all(1 <= len(p) <= 2 for p in parts):
            raise ValueError
        mac = bytes(int(p, 16) for p in parts)
    except ValueError:
        errx("Bad MAC address '%s' for --tunnet" % arg)
    if mac[0] & 1:
        errx("MAC address %s is a multicast address" % arg)
    return mac


def random_mac():
    """A random locally administered unicast MAC for the Guest (what Linux's
    virtio_net picks for itself when the Host offers none)."""
    mac = bytearray(random.getrandbits(8) for _ in range(ETH_ALEN))
    mac[0] = (mac[0] & 0xFE) | 0x02
    return bytes(mac)


def format_mac(mac):
    return ":".join("%02x" % b for b in mac)


def add_to_bridge(if_name, br_name):
    """Attach interface if_name to the existing bridge br_name; mirrors
    add_to_bridge() in lguest.c (the SIOCBRADDIF ioctl)."""
    if not br_name:
        errx("must specify bridge name")
    try:
        ifidx = socket.if_nametoindex(if_name)
    except OSError:
        errx("interface %s does not exist!" % if_name)
    try:
        socket.if_nametoindex(br_name)
    except OSError:
        errx("bridge %s does not exist" % br_name)
    if len(br_name.encode()) >= IFNAMSIZ:
        errx("bridge name %s is too long" % br_name)
    # struct ifreq: the bridge's name, then ifr_ifindex of the port.
    ifr = struct.pack("%dsi" % IFNAMSIZ, br_name.encode(), ifidx)
    ifr += bytes(40 - len(ifr))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            fcntl.ioctl(s.fileno(), SIOCBRADDIF, ifr)
        except OSError:
            err("can't add %s to bridge %s" % (if_name, br_name))


def _open_tap():
    """A new TAP interface "tap%d" without packet information headers (so
    one read or write is exactly one Ethernet frame).  Dies the way the C
    did if /dev/net/tun can't be opened or configured."""
    import pytun
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR)
    except OSError:
        err("Failed to open /dev/net/tun")
    os.close(fd)
    try:
        tap = pytun.TunTapDevice(name="tap%d",
                                 flags=pytun.IFF_TAP | pytun.IFF_NO_PI)
    except pytun.Error as e:
        errx("configuring /dev/net/tun: %s" % (e.args[-1] if e.args else e))
    # The Waker tells us when it's readable; a read must never block the
    # Launcher (and so the Guest) if it was a false alarm.
    os.set_blocking(tap.fileno(), False)
    os.set_inheritable(tap.fileno(), False)
    return tap


def setup_tun_net(devices, arg):
    """Create a network device on a new tap interface; mirrors
    setup_tun_net() in lguest.c.

    arg is "IP" (the host side of the tap gets that address, netmask
    255.255.255.0, and is brought up) or "bridge:NAME" (the tap joins the
    existing bridge NAME, no address).  As in the 3.16 Launcher either may
    end in ":MAC", the Guest's MAC address.

    Which MAC the Guest gets: 2.6.24 gave it the tap's own hardware
    address, so the host and the Guest shared one MAC, which confuses the
    host's stack (and a bridge); 3.16 gave one only when asked (":MAC") and
    otherwise let the Guest pick a random one.  We always offer the MAC
    feature (bit 5) and put a MAC in config space: the one asked for, else
    a random locally administered one, never the tap's."""
    tap = _open_tap()
    mac = None
    bridge = None
    rest = arg
    if rest.startswith(BRIDGE_PFX):
        rest = rest[len(BRIDGE_PFX):]
        bridging = True
    else:
        bridging = False
    if ":" in rest:
        rest, mac_text = rest.split(":", 1)
        mac = str2mac(mac_text)
    if mac is None:
        mac = random_mac()
        while mac == _tap_hwaddr(tap):
            mac = random_mac()

    info = NetInfo(tap, mac)
    dev = devices.new_device("net", VIRTIO_ID_NET, tap.fileno(),
                             handle_tun_input)
    dev.priv = info
    # Receive first, then transmit.  Adding receive buffers kicks the first
    # queue, which means "watch the tap again".
    dev.add_virtqueue(VIRTQUEUE_NUM, devices.enable_fd)
    dev.add_virtqueue(VIRTQUEUE_NUM, handle_net_output)

    if bridging:
        bridge = rest
        add_to_bridge(info.ifname, bridge)
        ip = "0.0.0.0"
    else:
        ip = str2ip(rest)
        try:
            tap.addr = ip
            tap.netmask = NETMASK
        except Exception as e:       # pytun.Error
            errx("Setting %s interface address: %s"
                 % (info.ifname, e.args[-1] if e.args else e))
    try:
        tap.up()
    except Exception as e:           # pytun.Error
        errx("Bringing interface %s up: %s"
             % (info.ifname, e.args[-1] if e.args else e))

    dev.add_feature(VIRTIO_NET_F_MAC)
    dev.set_config(mac)

    devices.say("device %u: tun net %s" % (devices.device_num, ip))
    devices.device_num += 1
    if bridge is not None:
        devices.say("attached to bridge: %s" % bridge)
    devices.say("net %s: Guest MAC %s" % (info.ifname, format_mac(mac)))
    return dev


def _tap_hwaddr(tap):
    try:
        return bytes(tap.hwaddr)
    except Exception:
        return b""


def report(devices):
    """The counters of every net device, one line each, for --verbose at
    exit (so a dropped frame is never silent)."""
    for dev in getattr(devices, "devs", []):
        if isinstance(dev.priv, NetInfo):
            devices.say(dev.priv.counters())
