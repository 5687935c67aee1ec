"""
In-memory fakes and frame builders for the data path's tests (and for the IP
router's, which drives the same TAP and UDP surfaces).

L{FakeOffloadTapSyscalls} stands in for the TAP's system calls (checked against
L{IOffloadTapSyscalls} with C{verifyObject}); L{FakeUdpSocket} records what a
L{wow.datapath.udpgso.GsoUdp} sends and replays what it should receive;
L{tcp_frame} / L{udp_frame} build Ethernet frames with a partial checksum
as the kernel hands them out of an offloading TAP.
"""

from __future__ import annotations

import errno
import struct
from collections import deque
from collections.abc import Sequence
from typing import Any

from zope.interface import implementer

from wow.datapath import vnet
from wow.datapath.tapoffload import (
    IFF_VNET_HDR,
    TUNGETFEATURES,
    TUNSETIFF,
    TUNSETOFFLOAD,
    TUNSETVNETHDRSZ,
    IOffloadTapSyscalls,
)


@implementer(IOffloadTapSyscalls)
class FakeOffloadTapSyscalls:
    """
    A TAP in memory: C{incoming} holds buffers the "kernel" will return from
    C{read}, C{written} collects what was written (parts joined), C{ioctls}
    records every request.  C{accept_offloads} is the set of offload masks
    the fake kernel takes; C{features} what TUNGETFEATURES reports.
    """

    def __init__(self, *, features: int = IFF_VNET_HDR | 0x1003,
                 accept_offloads: Sequence[int] | None = None,
                 gso_max_size_error: bool = False) -> None:
        self.features = features
        self.accept_offloads = accept_offloads
        self.gso_max_size_error = gso_max_size_error
        self.incoming: deque[bytes | OSError] = deque()
        self.written: list[bytes] = []
        self.write_error: OSError | None = None
        self.ioctls: list[tuple[int, bytes | int]] = []
        self.offloads: int | None = None
        self.vnet_hdr_sz: int | None = None
        self.iff_flags: int | None = None
        self.gso_max_size: dict[str, int] = {}
        self.closed: list[int] = []

    def open(self, path: str, flags: int) -> int:
        return 7

    def ioctl(self, fd: int, request: int, arg: bytes | int) -> bytes | int:
        self.ioctls.append((request, arg))
        if request == TUNGETFEATURES:
            return struct.pack("I", self.features)
        if request == TUNSETIFF:
            assert isinstance(arg, bytes)
            name, self.iff_flags = struct.unpack("16sH", arg)
            return arg
        if request == TUNSETVNETHDRSZ:
            assert isinstance(arg, bytes)
            self.vnet_hdr_sz = struct.unpack("i", arg)[0]
            return 0
        if request == TUNSETOFFLOAD:
            if self.accept_offloads is not None and arg not in self.accept_offloads:
                raise OSError(errno.EINVAL, "Invalid argument")
            assert isinstance(arg, int)
            self.offloads = arg
            return 0
        raise OSError(errno.ENOTTY, "unknown ioctl")

    def read(self, fd: int, size: int) -> bytes:
        if not self.incoming:
            raise BlockingIOError(errno.EAGAIN, "again")
        item = self.incoming.popleft()
        if isinstance(item, OSError):
            raise item
        return item[:size]

    def writev(self, fd: int, buffers: Sequence[bytes | memoryview]) -> int:
        if self.write_error is not None:
            raise self.write_error
        data = b"".join(bytes(b) for b in buffers)
        self.written.append(data)
        return len(data)

    def close(self, fd: int) -> None:
        self.closed.append(fd)

    def set_gso_max_size(self, name: str, size: int) -> None:
        if self.gso_max_size_error:
            raise OSError(errno.EINVAL, "ip link failed")
        self.gso_max_size[name] = size


class FakeUdpSocket:
    """
    The socket methods L{wow.datapath.udpgso.GsoUdp} uses.  C{sent} gets one
    C{(datagrams, address)} per call, with GSO buffers already cut into the
    datagrams the kernel would put on the wire; C{incoming} holds
    C{(data, segment size, address)} for C{recvmsg} (or an C{OSError}).
    """

    def __init__(self, *, gso: bool = True, gro: bool = True,
                 gso_send_error: int | None = None) -> None:
        self.gso = gso
        self.gro = gro
        self.gso_send_error = gso_send_error
        self.send_error: OSError | None = None
        self.sent: list[tuple[list[bytes], Any]] = []
        self.calls: list[str] = []
        self.incoming: deque[tuple[bytes, int, Any] | OSError] = deque()
        self.options: dict[tuple[int, int], int] = {}

    def fileno(self) -> int:
        return 9

    def setsockopt(self, level: int, opt: int, value: int) -> None:
        from wow.datapath.udpgso import UDP_GRO, UDP_SEGMENT

        if (opt == UDP_SEGMENT and not self.gso) or (opt == UDP_GRO and not self.gro):
            raise OSError(errno.ENOPROTOOPT, "Protocol not available")
        self.options[(level, opt)] = value

    def sendto(self, data: bytes | memoryview, addr: Any) -> int:
        self.calls.append("sendto")
        if self.send_error is not None:
            raise self.send_error
        self.sent.append(([bytes(data)], addr))
        return len(data)

    def sendmsg(self, buffers: Sequence[bytes | memoryview], anc: Sequence[tuple[int, int, bytes]],
                flags: int, addr: Any) -> int:
        self.calls.append("sendmsg")
        if self.gso_send_error is not None:
            raise OSError(self.gso_send_error, "refused")
        if self.send_error is not None:
            raise self.send_error
        data = b"".join(bytes(b) for b in buffers)
        seg = 0
        for _level, _type, cdata in anc:
            seg = struct.unpack("=H", cdata)[0]
        if len(data) > 65507 or (seg and -(-len(data) // seg) > 64):
            raise OSError(errno.EINVAL, "too big for GSO")
        grams = [data[i:i + seg] for i in range(0, len(data), seg)] if seg else [data]
        self.sent.append((grams, addr))
        return len(data)

    def recvmsg(self, bufsize: int, ancbufsize: int) -> tuple[bytes, list[Any], int, Any]:
        from wow.datapath.udpgso import SOL_UDP, UDP_GRO

        if not self.incoming:
            raise BlockingIOError(errno.EAGAIN, "again")
        item = self.incoming.popleft()
        if isinstance(item, OSError):
            raise item
        data, seg, addr = item
        anc = [(SOL_UDP, UDP_GRO, struct.pack("=i", seg))] if seg else []
        flags = 0x20 if len(data) > bufsize else 0  # MSG_TRUNC
        return data[:bufsize], anc, flags, addr


# -- frame builders ---------------------------------------------------------

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")


def _ip_header(v6: bool, proto: int, l4len: int, ip_id: int) -> bytes:
    if v6:
        return struct.pack("!IHBB16s16s", 6 << 28, l4len, proto, 64,
                           bytes.fromhex("fd00" + "00" * 13 + "01"),
                           bytes.fromhex("fd00" + "00" * 13 + "02"))
    h = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + l4len, ip_id, 0x4000, 64, proto, 0,
                              bytes([10, 97, 0, 1]), bytes([10, 97, 0, 2])))
    struct.pack_into("!H", h, 10, ~vnet.ones_sum(h) & 0xFFFF)
    return bytes(h)


def _partial(frame: bytearray, v6: bool, proto: int, l4: int, at: int) -> None:
    """Put the pseudo-header sum in the checksum field, as the kernel leaves it."""
    etype = vnet.ETH_P_IPV6 if v6 else vnet.ETH_P_IP
    s = vnet.fold(vnet._pseudo_sum(bytes(frame), etype, vnet.ETH_HLEN, proto, len(frame) - l4))
    struct.pack_into("!H", frame, at, s)


def tcp_frame(payload: bytes, *, v6: bool = False, seq: int = 1000, flags: int = 0x18,
              ip_id: int = 1, mss: int = 0, ecn: bool = False) -> tuple[vnet.VnetHeader, bytes]:
    """A TCP frame with a partial checksum and its virtio-net header (GSO when C{mss})."""
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, seq, 1, 5 << 4, flags, 65535, 0, 0)
    ip = _ip_header(v6, vnet.IPPROTO_TCP, len(tcp) + len(payload), ip_id)
    eth = MAC_B + MAC_A + struct.pack("!H", vnet.ETH_P_IPV6 if v6 else vnet.ETH_P_IP)
    frame = bytearray(eth + ip + tcp + payload)
    l4 = len(eth) + len(ip)
    _partial(frame, v6, vnet.IPPROTO_TCP, l4, l4 + 16)
    gso_type = 0
    if mss:
        gso_type = (vnet.GSO_TCPV6 if v6 else vnet.GSO_TCPV4) | (vnet.GSO_ECN if ecn else 0)
    h = vnet.VnetHeader(vnet.F_NEEDS_CSUM, gso_type, l4 + len(tcp) if mss else 0, mss, l4, 16)
    return h, bytes(frame)


def udp_frame(payload: bytes, *, v6: bool = False, ip_id: int = 1,
              mss: int = 0) -> tuple[vnet.VnetHeader, bytes]:
    """A UDP frame with a partial checksum and its header (USO when C{mss})."""
    udp = struct.pack("!HHHH", 40000, 5201, 8 + len(payload), 0)
    ip = _ip_header(v6, vnet.IPPROTO_UDP, len(udp) + len(payload), ip_id)
    eth = MAC_B + MAC_A + struct.pack("!H", vnet.ETH_P_IPV6 if v6 else vnet.ETH_P_IP)
    frame = bytearray(eth + ip + udp + payload)
    l4 = len(eth) + len(ip)
    _partial(frame, v6, vnet.IPPROTO_UDP, l4, l4 + 6)
    h = vnet.VnetHeader(vnet.F_NEEDS_CSUM, vnet.GSO_UDP_L4 if mss else 0,
                        l4 + 8 if mss else 0, mss, l4, 6)
    return h, bytes(frame)
