"""The virtio/lguest device ABI: every layout the Launcher shares with a
Guest, in one place (Linux 3.16: include/linux/lguest_launcher.h,
include/uapi/linux/virtio_*.h, drivers/lguest/lguest_device.c).

All of it is little-endian, as x86 is; the C Launcher's cpu_to_le*() were
no-ops and so are we, but we still say "<" in every struct format.
Other modules pack and unpack through the Struct objects and offsets here,
never with their own literal formats.
"""

import struct

PAGE_SIZE = 4096
PAGE_SHIFT = 12
#: pages above the Guest's RAM for the device page and the vrings (C: DEVICE_PAGES)
DEVICE_PAGES = 256
#: descriptors per virtqueue; a power of 2 (C: VIRTQUEUE_NUM)
VIRTQUEUE_NUM = 128

# --- Device types (virtio ids) -------------------------------------------
VIRTIO_ID_NET = 1
VIRTIO_ID_BLOCK = 2
VIRTIO_ID_CONSOLE = 3

# --- Device status bits (virtio_config.h) ---------------------------------
VIRTIO_CONFIG_S_ACKNOWLEDGE = 1
VIRTIO_CONFIG_S_DRIVER = 2
VIRTIO_CONFIG_S_DRIVER_OK = 4
VIRTIO_CONFIG_S_FAILED = 0x80

# --- Transport feature bits (we offer none of them) -----------------------
VIRTIO_F_NOTIFY_ON_EMPTY = 24
VIRTIO_RING_F_INDIRECT_DESC = 28
VIRTIO_RING_F_EVENT_IDX = 29

# --- The device descriptor (lguest_device.c, 3.16 layout) -----------------
# struct lguest_device_desc { u8 type, num_vq, feature_len, config_len,
# status; u8 config[0]; } __packed.  After it: num_vq lguest_vqconfigs,
# feature_len bytes of Host features, feature_len bytes the Guest acked,
# config_len bytes of config space.
DEVICE_DESC = struct.Struct("<BBBBB")
DEVICE_DESC_SIZE = DEVICE_DESC.size          # 5
DESC_OFF_TYPE = 0
DESC_OFF_NUM_VQ = 1
DESC_OFF_FEATURE_LEN = 2
DESC_OFF_CONFIG_LEN = 3
DESC_OFF_STATUS = 4

# struct lguest_vqconfig { u16 num; u16 irq; u32 pfn; }
VQCONFIG = struct.Struct("<HHI")
VQCONFIG_SIZE = VQCONFIG.size                # 8


def desc_total_size(num_vq, feature_len, config_len):
    """Bytes a device descriptor occupies in the device page, everything
    after it included: as desc_size() in lguest_device.c."""
    return (DEVICE_DESC_SIZE + num_vq * VQCONFIG_SIZE
            + 2 * feature_len + config_len)


# --- The legacy split vring (virtio_ring.h), 4096-byte alignment ----------
VRING_ALIGN = PAGE_SIZE

VRING_DESC_F_NEXT = 1       # chain continues at .next
VRING_DESC_F_WRITE = 2      # the device writes this buffer ("in")
VRING_DESC_F_INDIRECT = 4   # not offered, so never honoured
VRING_AVAIL_F_NO_INTERRUPT = 1   # Guest: don't interrupt me on used
VRING_USED_F_NO_NOTIFY = 1       # Host: don't kick me on avail

# struct vring_desc { u64 addr; u32 len; u16 flags; u16 next; }
VRING_DESC = struct.Struct("<QIHH")
VRING_DESC_SIZE = VRING_DESC.size            # 16
# struct vring_avail { u16 flags; u16 idx; u16 ring[num]; u16 used_event; }
AVAIL_OFF_FLAGS = 0
AVAIL_OFF_IDX = 2
AVAIL_OFF_RING = 4
# struct vring_used { u16 flags; u16 idx; struct vring_used_elem ring[num]; }
USED_OFF_FLAGS = 0
USED_OFF_IDX = 2
USED_OFF_RING = 4
# struct vring_used_elem { u32 id; u32 len; }
VRING_USED_ELEM = struct.Struct("<II")
U16 = struct.Struct("<H")
U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")


def vring_offsets(num, align=VRING_ALIGN):
    """(desc, avail, used) byte offsets of a vring of num entries from its
    start; as vring_init() in virtio_ring.h: the descriptor table, then the
    avail ring right after, then the used ring at the next align boundary."""
    desc = 0
    avail = num * VRING_DESC_SIZE
    used_unaligned = avail + AVAIL_OFF_RING + 2 * num + 2   # + used_event
    used = (used_unaligned + align - 1) & ~(align - 1)
    return desc, avail, used


def vring_size(num, align=VRING_ALIGN):
    """Bytes a vring of num entries needs; as vring_size() in virtio_ring.h."""
    used = vring_offsets(num, align)[2]
    return used + USED_OFF_RING + VRING_USED_ELEM.size * num + 2  # + avail_event


# --- virtio block (virtio_blk.h) ------------------------------------------
VIRTIO_BLK_F_SIZE_MAX = 1
VIRTIO_BLK_F_SEG_MAX = 2
VIRTIO_BLK_F_FLUSH = 9

VIRTIO_BLK_T_IN = 0
VIRTIO_BLK_T_OUT = 1
VIRTIO_BLK_T_SCSI_CMD = 2
VIRTIO_BLK_T_FLUSH = 4
VIRTIO_BLK_T_GET_ID = 8
VIRTIO_BLK_T_BARRIER = 0x80000000

VIRTIO_BLK_S_OK = 0
VIRTIO_BLK_S_IOERR = 1
VIRTIO_BLK_S_UNSUPP = 2

#: bytes of the serial string GET_ID returns
VIRTIO_BLK_ID_BYTES = 20
SECTOR_SIZE = 512

# struct virtio_blk_outhdr { u32 type; u32 ioprio; u64 sector; }
VIRTIO_BLK_OUTHDR = struct.Struct("<IIQ")
VIRTIO_BLK_OUTHDR_SIZE = VIRTIO_BLK_OUTHDR.size   # 16
# struct virtio_blk_inhdr { u8 status; }
VIRTIO_BLK_INHDR_SIZE = 1
# struct virtio_blk_config: capacity u64 @0, size_max u32 @8, seg_max u32 @12
BLK_CONFIG_OFF_CAPACITY = 0
BLK_CONFIG_OFF_SEG_MAX = 12
BLK_CONFIG_LEN = 16

# --- virtio net (virtio_net.h) --------------------------------------------
VIRTIO_NET_F_MAC = 5
# struct virtio_net_hdr { u8 flags; u8 gso_type; u16 hdr_len; u16 gso_size;
# u16 csum_start; u16 csum_offset; }
VIRTIO_NET_HDR = struct.Struct("<BBHHHH")
VIRTIO_NET_HDR_SIZE = VIRTIO_NET_HDR.size    # 10
VIRTIO_NET_HDR_GSO_NONE = 0
ETH_ALEN = 6
