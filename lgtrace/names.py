"""Names a reader knows, for what the trace and the table only have numbers for: which
device and queue an IRQ, an fd or a NOTIFY address belongs to.  Taken at exit from
the Launcher's DeviceList (devices/devpage.py)."""

from devices.abi import PAGE_SIZE, VIRTIO_ID_BLOCK, VIRTIO_ID_CONSOLE, VIRTIO_ID_NET

_QUEUES = {VIRTIO_ID_CONSOLE: ("rx", "tx"), VIRTIO_ID_NET: ("rx", "tx"),
           VIRTIO_ID_BLOCK: ("",)}


class Names:
    """queue[irq] -> "block vda", "console tx"...; fd[fd] -> "console (stdin)",
    "block vda (done pipe)"...; worker[pid] -> "vda"; notify(addr) -> what a
    NOTIFY of addr means.  Empty when there is no DeviceList."""

    def __init__(self, devices=None):
        self.queue = {0: "clock event"}
        self.fd = {}
        self.worker = {}
        self._notify = {}
        self.order = []               # (irq, device label, queue name) in device order
        if devices is None:
            return
        nth = {}
        for dev in devices.devs:
            n = nth[dev.type] = nth.get(dev.type, -1) + 1
            if dev.type == VIRTIO_ID_BLOCK:
                label = "block vd%s" % chr(ord("a") + n % 26)
                self.fd[dev.fd] = "%s (done pipe)" % label
                pid = getattr(dev.priv, "pid", None)
                if pid:
                    self.worker[pid] = label
            elif dev.type == VIRTIO_ID_NET:
                ifname = getattr(dev.priv, "ifname", None)
                label = "net eth%d" % n
                self.fd[dev.fd] = "%s (tap %s)" % (label, ifname) if ifname else label
            elif dev.type == VIRTIO_ID_CONSOLE:
                label = "console"
                self.fd[dev.fd] = "console (stdin)"
            else:
                label = "%s %d" % (dev.name, n)
            self._notify[dev.desc_addr] = "status of %s" % label
            qnames = _QUEUES.get(dev.type, ())
            for i, vq in enumerate(dev.vqs):
                q = qnames[i] if i < len(qnames) else "queue %d" % i
                name = ("%s %s" % (label, q)).strip()
                self.queue[vq.irq] = name
                self._notify[vq.pfn * PAGE_SIZE] = "kick %s" % name
                self.order.append((vq.irq, label, q))

    def notify(self, addr):
        return self._notify.get(addr, "early console string")

    def irq(self, irq):
        return self.queue.get(irq, "IRQ %d" % irq)
