"""The Host: what Linux 3.16's drivers/lguest did, in Python, over unicorn.

    from host import LguestDev, GuestDied, WakerDied
"""
from .core import GuestDied, WakerDied
from .lguest_user import LguestDev

__all__ = ["LguestDev", "GuestDied", "WakerDied"]
