"""
A UDP socket that moves many datagrams per system call: UDP GSO
(C{UDP_SEGMENT}) on send, UDP GRO (C{UDP_GRO}) on receive.

Why: Python costs ~9 us per call; a 60 KB super-frame is ~41 datagrams.
With GSO the kernel cuts one C{sendmsg} buffer into equal segments (the last
may be shorter); with GRO it hands back a burst of datagrams from one sender
as one buffer plus the segment size in a control message.  Twisted's UDP port
cannot pass ancillary data, so this wraps a plain non-blocking socket that a
thin adapter registers with C{reactor.addReader}.

Limits (kernel): one GSO send carries at most 64 segments and 65,507 payload
bytes on IPv4; larger batches are split here.  When the kernel or the route
refuses GSO (old kernel: C{ENOPROTOOPT}; a device without checksum offload:
C{EIO}), the socket falls back to one C{sendto} per datagram, for good.  When
GRO is unavailable every receive is one datagram, which L{split} handles the
same way.

The socket object is the seam: tests pass an in-memory fake with the same
C{sendmsg}/C{sendto}/C{recvmsg}/C{setsockopt} methods.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Sequence
from typing import Any

from twisted.logger import Logger

from wow.metrics import Counters

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
MAX_GSO_SEGMENTS = 64
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
MAX_GSO_BYTES = 65507
#: Big enough for a whole GRO burst (64 KB) plus headroom.
RECV_BUF = 65536 + 4096
_CMSG_SPACE = socket.CMSG_SPACE(4)

_SEG = struct.Struct("=H")
_INT = struct.Struct("=i")

DROPPED = "datapath_udp_dropped"

Address = Any
Buffer = bytes | bytearray | memoryview

# Errors after which GSO is given up: the path cannot segment.
_GSO_FATAL = (errno.EIO, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOPROTOOPT)


def probe_gso(sock: Any) -> bool:
    """Whether the kernel knows C{UDP_SEGMENT} (setting 0 is harmless)."""
    try:
        sock.setsockopt(SOL_UDP, UDP_SEGMENT, 0)
    except OSError:
        return False
    return True


def enable_gro(sock: Any) -> bool:
    """Ask for coalesced receives; False when the kernel cannot."""
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


def split(buf: Buffer, seg: int) -> list[memoryview]:
    """The datagrams inside one receive: C{seg}-sized slices, the last maybe shorter."""
    mv = memoryview(buf)
    n = len(mv)
    if seg <= 0 or seg >= n:
        return [mv]
    return [mv[i:i + seg] for i in range(0, n, seg)]


def open_udp(host: str, port: int, bufsize: int = 4 * 1024 * 1024) -> socket.socket:
    """A bound, non-blocking UDP socket with large buffers (IPv4 or IPv6 by C{host})."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        for force, opt in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
            try:
                # SO_RCVBUFFORCE / SO_SNDBUFFORCE: past net.core.[rw]mem_max when privileged,
                # so a burst of super-frames is not dropped at the socket.
                sock.setsockopt(socket.SOL_SOCKET, force, bufsize)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, opt, bufsize)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class GsoUdp:
    """
    Batched send and receive on one UDP socket.

    C{send_pieces} takes datagrams of equal length (the last may be shorter)
    bound for one address; C{recv_batch} drains the socket until C{EAGAIN}
    (or C{max_calls}) and returns C{(buffer, segment size, address)} triples,
    segment size 0 meaning one datagram.
    """

    log = Logger()

    def __init__(self, sock: Any, counters: Counters, *, gso: bool | None = None,
                 gro: bool | None = None) -> None:
        self.sock = sock
        self.counters = counters
        self.gso = probe_gso(sock) if gso is None else gso
        self.gro = enable_gro(sock) if gro is None else (gro and enable_gro(sock))
        self.sendmsg_calls = 0
        self.datagrams_sent = 0

    def fileno(self) -> int:
        return int(self.sock.fileno())

    # -- send ---------------------------------------------------------------

    def _send_error(self, e: OSError) -> None:
        if e.errno in (errno.EAGAIN, errno.ENOBUFS):
            self.counters.inc(DROPPED, reason="send-busy")
        elif e.errno == errno.ECONNREFUSED:
            # Peers are declared dead by timeout, never by an ICMP error.
            self.counters.inc(DROPPED, reason="refused")
        else:
            self.counters.inc(DROPPED, reason="send-error")

    def send(self, datagram: Buffer, addr: Address) -> None:
        """One datagram, errors counted, never raised."""
        try:
            self.sock.sendto(datagram, addr)
            self.datagrams_sent += 1
        except OSError as e:
            self._send_error(e)

    def send_buffer(self, buf: Buffer, seg: int, addr: Address) -> None:
        """
        Send C{buf} as datagrams of C{seg} bytes (the last may be shorter) to
        C{addr}: one C{sendmsg} per 64 segments / 65,507 bytes with GSO, one
        C{sendto} per datagram without.
        """
        n = len(buf)
        if n <= seg:
            self.send(buf, addr)
            return
        mv = memoryview(buf)
        if not self.gso:
            self._send_each([mv[i:i + seg] for i in range(0, n, seg)], addr)
            return
        per = min(MAX_GSO_SEGMENTS, MAX_GSO_BYTES // seg) * seg
        if per < 2 * seg:
            self._send_each([mv[i:i + seg] for i in range(0, n, seg)], addr)
            return
        anc = [(SOL_UDP, UDP_SEGMENT, _SEG.pack(seg))]
        for start in range(0, n, per):
            part = mv[start:start + per]
            if len(part) <= seg:
                self.send(part, addr)
                continue
            try:
                self.sock.sendmsg((part,), anc, 0, addr)
                self.sendmsg_calls += 1
                self.datagrams_sent += -(-len(part) // seg)
            except OSError as e:
                if e.errno in _GSO_FATAL:
                    self._gso_refused(e)
                    self._send_each([mv[i:i + seg] for i in range(start, n, seg)], addr)
                    return
                self._send_error(e)
                self.counters.inc(DROPPED, -(-len(part) // seg) - 1, reason="send-busy-batch")

    def _gso_refused(self, e: OSError) -> None:
        self.log.warn("UDP GSO refused ({err}); sending one datagram per call", err=e.strerror)
        self.counters.inc("datapath_gso_disabled",
                          reason=errno.errorcode.get(e.errno or 0, "error"))
        self.gso = False

    def send_pieces(self, pieces: Sequence[Buffer], addr: Address) -> None:
        """
        Send equal-length datagrams (last may be shorter) to C{addr} with as
        few calls as the GSO limits allow.
        """
        n = len(pieces)
        if n == 0:
            return
        if n == 1 or not self.gso:
            self._send_each(pieces, addr)
            return
        seg = len(pieces[0])
        per = min(MAX_GSO_SEGMENTS, MAX_GSO_BYTES // seg) if seg else 0
        if per < 2 or len(pieces[-1]) > seg or any(len(p) != seg for p in pieces[1:-1]):
            self._send_each(pieces, addr)
            return
        anc = [(SOL_UDP, UDP_SEGMENT, _SEG.pack(seg))]
        sendmsg = self.sock.sendmsg
        for start in range(0, n, per):
            batch = pieces[start:start + per]
            try:
                sendmsg(batch, anc, 0, addr)
                self.sendmsg_calls += 1
                self.datagrams_sent += len(batch)
            except OSError as e:
                if e.errno in _GSO_FATAL:
                    self._gso_refused(e)
                    self._send_each(pieces[start:], addr)
                    return
                self._send_error(e)
                self.counters.inc(DROPPED, len(batch) - 1, reason="send-busy-batch")

    def _send_each(self, pieces: Sequence[Buffer], addr: Address) -> None:
        sendto = self.sock.sendto
        for p in pieces:
            try:
                sendto(p, addr)
                self.datagrams_sent += 1
            except OSError as e:
                self._send_error(e)

    # -- receive -------------------------------------------------------------

    def recv_batch(self, max_calls: int = 64) -> list[tuple[bytes, int, Address]]:
        out: list[tuple[bytes, int, Address]] = []
        recvmsg = self.sock.recvmsg
        for _ in range(max_calls):
            try:
                data, anc, flags, addr = recvmsg(RECV_BUF, _CMSG_SPACE)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EAGAIN:
                    break
                # ICMP errors queued on the socket (ECONNREFUSED...): keep draining.
                self.counters.inc(DROPPED, reason="recv-error")
                continue
            if flags & socket.MSG_TRUNC:
                self.counters.inc(DROPPED, reason="truncated")
                continue
            seg = 0
            for level, ctype, cdata in anc:
                if level == SOL_UDP and ctype == UDP_GRO and len(cdata) >= 4:
                    seg = _INT.unpack_from(cdata)[0]
            out.append((data, seg, addr))
        return out
