"""
A TAP device with the kernel's segmentation offloads: C{IFF_VNET_HDR} plus
C{TUNSETOFFLOAD}, so one read returns a ~60 KB TCP super-frame instead of
~41 MTU-sized frames.

Why: one packet per Python call tops out near 1 Gbps on the reference
machine; with super-frames the same loop moves several Gbps (see
C{shared/anchors/README.md}).  Every frame read carries a 12-byte virtio-net
header (L{wow.datapath.vnet}) that must travel with it, because the
checksum is only partially computed.

L{OffloadTap} exposes the small surface the IP router uses for any TAP
(like C{wow.nic.tap}'s device: the router picks this one when offloads are on):
C{fileno()}, C{read_batch()} (drain until C{EAGAIN}) and C{write()}, plus
C{vnet_hdr_len} (12, or 0 when the kernel refused the header and the device
is a plain TAP) so the caller knows where the frame starts in each buffer.

Device syscalls go through an injectable L{IOffloadTapSyscalls} object so the logic
(offload negotiation, draining, error accounting) is tested with a fake
(C{wow.testing.FakeOffloadTapSyscalls}) and the same code runs on the real device.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import subprocess
from collections.abc import Sequence

from twisted.logger import Logger
from zope.interface import Interface, implementer

from wow.datapath.vnet import VNET_HDR_LEN
from wow.metrics import Counters

TUNSETIFF = 0x400454CA
TUNGETFEATURES = 0x800454CF
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8

IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000

TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_UFO = 0x10
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40

#: Offload sets tried in order until the kernel accepts one.
OFFLOAD_LADDER = (
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN | TUN_F_USO4 | TUN_F_USO6,
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN,
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6,
    TUN_F_CSUM,
    0,
)

#: A TCP super-frame plus piece headers must fit one UDP GSO send (65,507 bytes).
DEFAULT_GSO_MAX_SIZE = 60000
READ_SIZE = 65536 + VNET_HDR_LEN
DROPPED = "datapath_tap_dropped"

_IFREQ = struct.Struct("16sH")


class TapError(Exception):
    """The TAP cannot be opened; the message is one sentence for the operator."""


class IOffloadTapSyscalls(Interface):
    """The system calls a TAP needs (real: L{RealOffloadTapSyscalls}; fake: C{wow.testing})."""

    def open(path: str, flags: int) -> int:
        """Open a device node, returning a descriptor."""

    def ioctl(fd: int, request: int, arg: bytes | int) -> bytes | int:
        """C{fcntl.ioctl}: bytes in, bytes out, or an int argument."""

    def read(fd: int, size: int) -> bytes:
        """One frame; C{BlockingIOError} when none is waiting."""

    def writev(fd: int, buffers: Sequence[bytes | memoryview]) -> int:
        """Write one frame given in parts."""

    def close(fd: int) -> None:
        """Close the descriptor."""

    def set_gso_max_size(name: str, size: int) -> None:
        """Limit the super-frames the kernel builds for device C{name}."""


@implementer(IOffloadTapSyscalls)
class RealOffloadTapSyscalls:
    def open(self, path: str, flags: int) -> int:
        return os.open(path, flags)

    def ioctl(self, fd: int, request: int, arg: bytes | int) -> bytes | int:
        return fcntl.ioctl(fd, request, arg)

    def read(self, fd: int, size: int) -> bytes:
        return os.read(fd, size)

    def writev(self, fd: int, buffers: Sequence[bytes | memoryview]) -> int:
        return os.writev(fd, buffers)

    def close(self, fd: int) -> None:
        os.close(fd)

    def set_gso_max_size(self, name: str, size: int) -> None:
        r = subprocess.run(["ip", "link", "set", "dev", name, "gso_max_size", str(size)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise OSError(errno.EINVAL, r.stderr.strip() or "ip link failed")


class OffloadTap:
    """
    A non-blocking TAP, with the virtio-net header and offloads when the
    kernel allows, without them otherwise (then C{vnet_hdr_len} is 0 and
    frames are plain).
    """

    log = Logger()

    def __init__(self, name: str, counters: Counters, *,
                 syscalls: IOffloadTapSyscalls | None = None, vnet_hdr: bool = True,
                 offload_ladder: Sequence[int] = OFFLOAD_LADDER,
                 gso_max_size: int | None = DEFAULT_GSO_MAX_SIZE) -> None:
        self.requested_name = name
        self.name = name
        self.counters = counters
        self.sys: IOffloadTapSyscalls = (
            syscalls if syscalls is not None else RealOffloadTapSyscalls())
        self.want_vnet_hdr = vnet_hdr
        self.offload_ladder = tuple(offload_ladder)
        self.gso_max_size = gso_max_size
        self.fd = -1
        self.vnet_hdr_len = 0
        self.offloads = 0

    # -- set-up ---------------------------------------------------------------

    def open(self) -> None:
        """Create/attach the device and negotiate offloads; L{TapError} on failure."""
        try:
            fd = self.sys.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise TapError(f"cannot open /dev/net/tun: {e.strerror}") from e
        try:
            self._configure(fd)
        except BaseException:
            self.sys.close(fd)
            raise
        self.fd = fd

    def _configure(self, fd: int) -> None:
        flags = IFF_TAP | IFF_NO_PI
        if self.want_vnet_hdr:
            try:
                raw = self.sys.ioctl(fd, TUNGETFEATURES, b"\0" * 4)
                feats = struct.unpack("I", bytes(raw)[:4])[0] if isinstance(raw, bytes) else 0
            except (OSError, struct.error):
                feats = 0
            if feats & IFF_VNET_HDR:
                flags |= IFF_VNET_HDR
        try:
            res = self.sys.ioctl(fd, TUNSETIFF, _IFREQ.pack(self.requested_name.encode(), flags))
        except OSError as e:
            raise TapError(f"cannot create TAP {self.requested_name!r}: {e.strerror}") from e
        if isinstance(res, bytes | bytearray):
            self.name = bytes(res[:16]).rstrip(b"\0").decode() or self.requested_name
        if not flags & IFF_VNET_HDR:
            self.log.info("TAP {name}: no virtio-net header support; plain frames", name=self.name)
            return
        try:
            self.sys.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
        except OSError as e:
            raise TapError(f"cannot set the virtio-net header size on {self.name}: "
                           f"{e.strerror}") from e
        self.vnet_hdr_len = VNET_HDR_LEN
        for mask in self.offload_ladder:
            try:
                self.sys.ioctl(fd, TUNSETOFFLOAD, mask)
            except OSError:
                continue
            self.offloads = mask
            break
        if self.offloads & (TUN_F_TSO4 | TUN_F_TSO6) and self.gso_max_size:
            try:
                self.sys.set_gso_max_size(self.name, self.gso_max_size)
            except OSError as e:
                # Without the cap a 64 KB frame needs two UDP GSO sends: slower, still right.
                self.log.warn("TAP {name}: gso_max_size not set ({err})", name=self.name,
                              err=e.strerror)
                self.counters.inc("datapath_tap_setup_degraded", reason="gso-max-size")
        self.log.info("TAP {name}: virtio-net header, offloads {mask:#x}", name=self.name,
                      mask=self.offloads)

    # -- the surface the router uses --------------------------------------

    def fileno(self) -> int:
        return self.fd

    def read_batch(self, max_frames: int = 64) -> list[bytes]:
        """
        Every buffer waiting (up to C{max_frames}), each the C{vnet_hdr_len}
        header followed by the frame.
        """
        out: list[bytes] = []
        read, fd = self.sys.read, self.fd
        for _ in range(max_frames):
            try:
                buf = read(fd, READ_SIZE)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EAGAIN:
                    break
                self.counters.inc(DROPPED, reason="read-error")
                break
            if len(buf) <= self.vnet_hdr_len:
                self.counters.inc(DROPPED, reason="short-read")
                continue
            out.append(buf)
        return out

    def write(self, buf: bytes | memoryview) -> bool:
        """Write one buffer (header + frame when C{vnet_hdr_len}); False if dropped."""
        return self.writev((buf,))

    def writev(self, parts: Sequence[bytes | memoryview]) -> bool:
        """Write one frame given in parts (e.g. a fresh header and a received frame)."""
        try:
            self.sys.writev(self.fd, parts)
            return True
        except OSError as e:
            reason = {errno.EAGAIN: "busy", errno.EINVAL: "rejected",
                      errno.EIO: "down"}.get(e.errno or 0, "write-error")
            self.counters.inc(DROPPED, reason=reason)
            return False

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            self.sys.close(fd)
