"""The Launcher's devices: Guest memory, virtqueues, the device page, and
the console, block and network devices.  See HACKING.md for the contracts
and DESIGN.md §4 for the ABI."""

from .errors import LauncherError, err, errx
from .memory import GuestMemory
from .virtqueue import Virtqueue
from .devpage import Device, DeviceList

__all__ = ["LauncherError", "err", "errx", "GuestMemory", "Virtqueue",
           "Device", "DeviceList"]
