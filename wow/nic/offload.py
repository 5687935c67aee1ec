"""
The node's TAP with offloads (C{[tap] offload = true}): C{IFF_VNET_HDR} +
C{TUNSETOFFLOAD} through L{wow.datapath.tapoffload.OffloadTap}, behind the
same L{ITapDevice} surface as the plain pytun device.

Why: with offloads one read returns a ~60 KB TCP super-frame and one write
delivers one; the IP router moves it as one overlay message.  Every buffer
read starts with the 12-byte virtio-net header (zero for ordinary frames),
so L{split_frame} tells the NIC which frames are the router's (IPv4 not for
the gateway: passed on with their header) and gives the dispatcher the bare
frame (checksum finished) for the rest.  L{OffloadDevice.write} puts a zero
header before frames the node builds itself.
"""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Sequence

from zope.interface import implementer

from wow.datapath import vnet
from wow.datapath.tapoffload import OffloadTap
from wow.datapath.tapoffload import TapError as OffloadTapError
from wow.metrics import Counters
from wow.nic.tap import (
    ITapDevice,
    ITapSyscalls,
    TapError,
    check_tap_prerequisites,
    open_error,
)

_BCAST = b"\xff\xff\xff\xff"


@implementer(ITapDevice)
class OffloadDevice:
    """An L{OffloadTap} as an L{ITapDevice}; reads keep the vnet header."""

    def __init__(self, tap: OffloadTap) -> None:
        self.tap = tap
        self.name = tap.name
        self.vnet_hdr_len = tap.vnet_hdr_len

    def fileno(self) -> int:
        return self.tap.fileno()

    def read(self, size: int) -> bytes:
        import os

        return os.read(self.tap.fileno(), size)

    def write(self, frame: bytes) -> int:
        """A frame the node built: a zero header when the device has headers."""
        if self.vnet_hdr_len:
            self.write_raw((vnet.PLAIN_BYTES, frame))
        else:
            self.write_raw((frame,))
        return len(frame)

    def write_raw(self, parts: Sequence[bytes]) -> None:
        """Header (if any) and frame, as the kernel reads them; OSError raised."""
        import os

        os.writev(self.tap.fileno(), parts)

    def close(self) -> None:
        self.tap.close()


@implementer(ITapSyscalls)
class OffloadSyscalls:
    """Opens the TAP with offloads, then sets MTU, MAC and up with C{ip link}."""

    def __init__(self, counters: Counters) -> None:
        self.counters = counters

    def preflight(self, name: str) -> None:
        check_tap_prerequisites(name)

    def open_tap(self, name: str, mtu: int, hwaddr: bytes) -> ITapDevice:
        tap = OffloadTap(name, self.counters)
        try:
            tap.open()
        except OffloadTapError as e:
            cause = e.__cause__
            if isinstance(cause, OSError) and cause.errno in (errno.EBUSY, errno.EINVAL,
                                                                errno.EPERM):
                raise open_error(name, cause.errno, cause.strerror) from None
            raise TapError(str(e)) from None
        r = subprocess.run(["ip", "link", "set", "dev", tap.name, "mtu", str(mtu), "address",
                            hwaddr.hex(":"), "up"], capture_output=True, text=True)
        if r.returncode != 0:
            tap.close()
            raise TapError(f"cannot configure the TAP device {name}: {r.stderr.strip()}")
        return OffloadDevice(tap)


def for_router(buf: bytes, vlen: int, gateway: bytes, router_mac: bytes | None = None
               ) -> bool:
    """
    Whether the frame in C{buf} (after C{vlen} header bytes; 0 for a plain
    TAP) is an IPv4 packet for the IP router: sent to the router's MAC
    (when given; a bridge floods other hosts' frames to the TAP too),
    unicast, not to the gateway, not DHCP.  Only fixed offsets are read: the
    rest is the router's business; every other frame is the dispatcher's.
    """
    f = vlen
    if len(buf) < f + 34 or buf[f + 12:f + 14] != b"\x08\x00":
        return False
    if router_mac is not None and buf[f:f + 6] != router_mac:
        return False
    dst = buf[f + 30:f + 34]
    if dst == gateway or dst == _BCAST or buf[f + 30] >= 224:
        return False
    if buf[f + 23] == 17:  # UDP: DHCP to port 67 is the dispatcher's
        ihl = (buf[f + 14] & 0x0F) * 4
        p = f + 14 + ihl
        if buf[p + 2:p + 4] == b"\x00\x43":
            return False
    return True


def plain_frame(buf: bytes, vlen: int) -> bytes | None:
    """
    The bare frame for the dispatcher (checksum finished when the header
    says it is partial); None for a super-frame, which only the router takes.
    """
    if not vlen:
        return buf
    h = vnet.parse(buf)
    frame = buf[vlen:]
    if h.gso_type:
        return None
    if h.flags & vnet.F_NEEDS_CSUM:
        return vnet.finish_checksum(h, frame)
    return frame
