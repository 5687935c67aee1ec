"""
The node's data plane: packets on established routes move between the TAP
and the overlay socket on a thread of their own, outside the reactor.

Why (measured, docs/performance.md "Round trip"): on an idle node every
packet wakes a process whose caches other processes have emptied, and the
cost of that wake-up grows with the Python it runs.  Through the reactor one
packet runs Twisted's poll dispatch, the TAP port, the NIC's frame split, the
router, the overlay's routing and the UDP port (~0.3 ms per hop cold, where
OpenVPN takes ~0.02-0.1 ms); this thread runs one C{epoll.poll}, one read,
a few dictionary reads and one send.  After it writes a packet to the TAP it
reads the TAP at once: the host's answer (an ICMP echo reply, a TCP ACK) is
often queued during the write itself, so it leaves without another wake-up.

What the thread handles itself (everything else is handed to the reactor,
in order, with one C{callFromThread} per wake-up, and takes the normal path):

  - B{out}: an IPv4 frame from the TAP for the router, from a client on this
    TAP, to an address the router's cache maps (lease not expired) to a peer
    with a direct link, to which the router sent plaintext DATA in the last
    L{PLAIN_FOR} seconds (so a peer whose traffic the security layer
    encrypts never takes this path), within the TAP MTU.  Small: one
    datagram with the same overlay and data headers the overlay writes;
    super-frames: L{OverlayService.send_message} (one UDP GSO send).
  - B{in}: a DATA datagram (piece 0 of 1), or a GRO burst that is exactly
    one whole DATA message, from a linked plaintext peer to this node,
    whose source IP the router's cache says is leased to that peer
    (anti-spoofing) and whose destination is a client on this TAP; written
    with L{NicService.write_message}.  Such datagrams draw from the thread's
    own per-source bucket (the same rate as the overlay's linked peers').

The thread only reads the reactor thread's tables (single dictionary reads,
atomic under the GIL) and sets timestamps; its counts are plain integers
moved into the node's L{Counters} by a refresher on the reactor thread.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import sys
import threading
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

from wow.metrics import Counters
from wow.nic.offload import for_router
from wow.datapath.udpgso import RECV_BUF, SOL_UDP, UDP_GRO
from wow.datapath.vnet import PLAIN_BYTES as PLAIN_VNET
from wow.nic.tap import READ_SIZE
from wow.overlay import address as A
from wow.overlay import datapath as D
from wow.overlay import wire as W
from wow.overlay.ratelimit import TokenBuckets
from wow.router import messages as M

#: A peer takes this path for this long after the router last sent it plaintext DATA.
PLAIN_FOR = 10.0
#: Frames or reads per wake-up and descriptor at most (the reactor's TapPort takes 256).
MAX_BURST = 256
#: How long the thread trusts its memo of the TAP's clients (lease ends show within it).
LOCAL_FOR = 1.0
#: Reads handed to the reactor and not yet taken, at most: when the reactor
#: falls behind (a flood), further reads are dropped and counted rather than
#: queued without bound (the reactor's own reading was bounded by the kernel's
#: queues in the same way).
MAX_BACKLOG = 2048

_TAP, _UDP = 0, 1
_CMSG_SPACE = socket.CMSG_SPACE(4)
_MSG_TRUNC = socket.MSG_TRUNC
# Indexes of the thread's counts.
(OUT, OUT_BYTES, IN, IN_BYTES, TAP_READ, TAP_READ_BYTES, UDP_IN, UDP_IN_BYTES, SLOW,
 ERRORS, LIMITED, WAKES, READ_AFTER_WRITE, UDP_OUT, UDP_OUT_BYTES, TAP_WRITTEN,
 BUSY, BURSTS) = range(18)
_NAMES = {
    OUT: ("dataplane_packets", {"direction": "out"}),
    IN: ("dataplane_packets", {"direction": "in"}),
    OUT_BYTES: ("dataplane_bytes", {"direction": "out"}),
    IN_BYTES: ("dataplane_bytes", {"direction": "in"}),
    TAP_READ: ("tap_frames_read", {}),
    TAP_READ_BYTES: ("tap_bytes_read", {}),
    UDP_IN: ("overlay_datagrams_received", {}),
    UDP_IN_BYTES: ("overlay_bytes_received", {}),
    UDP_OUT: ("overlay_datagrams_sent", {}),
    TAP_WRITTEN: ("tap_frames_written", {}),
    BUSY: ("dataplane_dropped", {"reason": "reactor-behind"}),
    BURSTS: ("overlay_fastpath_messages", {}),
    UDP_OUT_BYTES: ("overlay_bytes_sent", {}),
    SLOW: ("dataplane_to_reactor", {}),
    ERRORS: ("dataplane_errors", {}),
    LIMITED: ("overlay_dropped", {"reason": "rate-limited"}),
    WAKES: ("dataplane_wakeups", {}),
    READ_AFTER_WRITE: ("dataplane_read_after_write", {}),
}


class DataPlane(Service):
    """The data plane thread of one node (see the module docstring)."""

    name = "dataplane"
    log = Logger()

    def __init__(self, nic: Any, overlay: Any, router: Any, reactor: Any,
                 counters: Counters) -> None:
        self.nic = nic
        self.overlay = overlay
        self.router = router
        self.reactor = reactor
        self.counters = counters
        self.counts = [0] * len(_NAMES)
        self._reported = [0] * len(_NAMES)
        self._thread: threading.Thread | None = None
        #: Written by the thread only / by the reactor only: backlog = handed - taken.
        self._handed = 0
        self._taken = 0
        self._stop = False
        self._wake: tuple[int, int] | None = None
        self._local: dict[bytes, tuple[bytes | None, float]] = {}
        self._prefix: dict[int, bytes] = {}
        self.buckets = TokenBuckets(1_000_000.0, 100_000.0)
        # The thread's receive buffers (a TAP frame, a whole GRO burst).
        self._tbuf = bytearray(READ_SIZE)
        self._tview = memoryview(self._tbuf)
        self._rbuf = bytearray(RECV_BUF)
        self._rview = memoryview(self._rbuf)
        counters.add_refresher(self._refresh)

    # -- lifecycle -------------------------------------------------------------

    def _descriptors(self) -> tuple[int, Any] | None:
        """(TAP fd, overlay socket) when both are real, else None (fakes in tests)."""
        port = getattr(self.nic, "port", None)
        device = getattr(port, "device", None)
        sock = getattr(getattr(self.overlay, "port", None), "socket", None)
        if device is None or sock is None or not hasattr(self.reactor, "callFromThread"):
            return None
        try:
            fd = int(device.fileno())
            sock.fileno()
        except (OSError, ValueError, TypeError):
            return None
        return (fd, sock) if fd >= 0 else None

    def startService(self) -> None:
        super().startService()
        found = self._descriptors()
        if found is None or self.overlay.node is None or self.router.router is None:
            self.log.info("data plane thread not started (no real TAP or socket)")
            return
        self.tap_fd, self.sock = found
        # Fixed for the thread's life: no attribute chains on the hot path.
        self._vlen = self.nic.vnet_hdr_len
        self._gateway = self.nic.config.network.gateway_address.packed
        self._router_mac = self.nic.router_mac
        self._me = A.to_bytes(self.overlay.node.me)
        self.nic.port.stopReading()
        self.overlay.port.stopReading()
        self._wake = os.pipe()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="wow-dataplane", daemon=True)
        self._thread.start()
        self.log.info("data plane thread started")

    def stopService(self) -> None:
        super().stopService()
        thread, wake = self._thread, self._wake
        self._thread = self._wake = None
        if thread is None or wake is None:
            return
        self._stop = True
        os.write(wake[1], b"x")
        thread.join(5.0)
        for fd in wake:
            os.close(fd)

    # -- the thread ------------------------------------------------------------

    def _run(self) -> None:
        assert self._wake is not None
        wake_fd = self._wake[0]
        ep = select.epoll()
        try:
            ep.register(self.tap_fd, select.EPOLLIN)
            ep.register(self.sock.fileno(), select.EPOLLIN)
            ep.register(wake_fd, select.EPOLLIN)
            udp_fd = self.sock.fileno()
            counts = self.counts
            while not self._stop:
                try:
                    events = ep.poll(-1, 4)
                except InterruptedError:
                    continue
                counts[WAKES] += 1
                slow: list[tuple[Any, ...]] = []
                try:
                    for fd, _ in events:
                        if fd == udp_fd:
                            self._drain_udp(slow)
                        elif fd == self.tap_fd:
                            self._drain_tap(slow)
                except Exception:
                    counts[ERRORS] += 1
                if slow:
                    counts[SLOW] += len(slow)
                    self._handed += len(slow)
                    self.reactor.callFromThread(self._slow, slow)
        finally:
            ep.close()

    def _drain_tap(self, slow: list[tuple[Any, ...]]) -> None:
        fd, counts = self.tap_fd, self.counts
        now = self.reactor.seconds()
        readv, view, bufs = os.readv, self._tview, (self._tbuf,)
        for _ in range(MAX_BURST):
            try:
                buf = view[:readv(fd, bufs)].tobytes()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                # The reactor's TapPort reports and stops on a broken device.
                counts[ERRORS] += 1
                return
            counts[TAP_READ] += 1
            counts[TAP_READ_BYTES] += len(buf)
            try:
                done = self._out(buf, now)
            except Exception:
                counts[ERRORS] += 1
                done = False
            if not done:
                self._hand(slow, (_TAP, buf))

    def _drain_udp(self, slow: list[tuple[Any, ...]]) -> bool:
        """
        Read the socket until EAGAIN, each datagram handled as soon as it is
        read (the EAGAIN read, an exception, costs ~20 us on a cold process:
        never before a packet); whether a packet was written to the TAP.
        The first packet written to the TAP is followed by a read of the TAP
        (its answer is often there already) before the next read here.
        """
        counts = self.counts
        now = self.reactor.seconds()
        gso = self.overlay.gso
        cmsg = _CMSG_SPACE if gso is not None and gso.gro else 0
        recv_into, view = self.sock.recvmsg_into, self._rview
        bufs = (self._rbuf,)
        wrote = False
        for _ in range(MAX_BURST):
            # Into one buffer kept for the thread: no 64 KB allocation per call.
            try:
                n, anc, flags, raw = recv_into(bufs, cmsg)
            except BlockingIOError:
                break
            except OSError:
                continue  # queued ICMP errors: the overlay ignores them too
            if flags & _MSG_TRUNC:
                counts[ERRORS] += 1
                continue
            seg = 0
            for level, ctype, cdata in anc:
                if level == SOL_UDP and ctype == UDP_GRO and len(cdata) >= 4:
                    seg = int.from_bytes(cdata[:4], sys.byteorder, signed=True)
            data = view[:n].tobytes()
            try:
                done = self._in(data, seg, (raw[0], raw[1]), now)
            except Exception:
                counts[ERRORS] += 1
                done = False
            if not done:
                self._hand(slow, (_UDP, data, seg, raw))
                continue
            # (what goes to the reactor is counted there)
            counts[UDP_IN] += -(-n // seg) if seg else 1
            counts[UDP_IN_BYTES] += n
            if not wrote:
                wrote = True
                counts[READ_AFTER_WRITE] += 1
                self._drain_tap(slow)
        return wrote

    def _hand(self, slow: list[tuple[Any, ...]], item: tuple[Any, ...]) -> None:
        """Queue C{item} for the reactor unless it is too far behind (counted)."""
        if self._handed - self._taken + len(slow) >= MAX_BACKLOG:
            self.counts[BUSY] += 1
        else:
            slow.append(item)

    # -- decisions ----------------------------------------------------------------

    def _local_mac(self, ip: bytes, now: float) -> bytes | None:
        """The MAC of the TAP client leased C{ip}, memoised for L{LOCAL_FOR} s."""
        memo = self._local.get(ip)
        if memo is not None and memo[1] > now:
            return memo[0]
        mac = self.nic.mac_of(ip)
        if len(self._local) > 1024:
            self._local = {}
        self._local[ip] = (mac, now + LOCAL_FOR)
        return mac

    def _plain_peer(self, address: int, now: float) -> bool:
        return self.overlay.plain_data_sent.get(address, -PLAIN_FOR) > now - PLAIN_FOR

    def _owner(self, ip: bytes, now: float) -> bytes | None:
        router = self.router.router
        return None if router is None else router.cache.fresh(ip, now)

    def _out(self, buf: bytes, now: float) -> bool:
        """A frame from the TAP: sent here (True) or left to the reactor (False)."""
        vlen = self._vlen
        if not for_router(buf, vlen, self._gateway):
            return False
        message = M.from_tap(buf, vlen)
        off = M.ip_offset(message)
        src, dst = message[off + 12:off + 16], message[off + 16:off + 20]
        if self._local_mac(src, now) is None or self._local_mac(dst, now) is not None:
            return False
        owner = self._owner(dst, now)
        if owner is None:
            return False
        address = int.from_bytes(owner, "big")
        node = self.overlay.node
        link = node.table.links.get(address)
        if link is None or not self._plain_peer(address, now):
            return False
        gso = M.is_gso(message)
        mtu = self.router.mtu
        if mtu and not gso and len(message) - off > mtu:
            return False  # the router answers "fragmentation needed"
        counts = self.counts
        msg_id = next(self.router._ids) & 0xFFFFFFFF
        if len(message) + W.DATA_HEADER.size > W.MAX_PAYLOAD:
            if not self.overlay.send_message(address, W.DATA, msg_id, message):
                return False
        else:
            prefix = self._prefix.get(address)
            if prefix is None:
                if len(self._prefix) > 1024:
                    self._prefix = {}
                prefix = self._prefix[address] = D.link_prefix(node.me, address,
                                                               node.params.ttl)
            datagram = prefix + W.DATA_HEADER.pack(msg_id, 0, 1) + message
            try:
                self.sock.sendto(datagram, link.endpoint)
            except OSError:
                counts[ERRORS] += 1
            link.last_sent = now
            counts[UDP_OUT] += 1
            counts[UDP_OUT_BYTES] += len(datagram)
        counts[OUT] += 1
        counts[OUT_BYTES] += len(message)
        return True

    def _in(self, data: bytes, seg: int, addr: tuple[str, int], now: float) -> bool:
        """A read from the socket: delivered here (True) or left to the reactor (False)."""
        node = self.overlay.node
        link = node.by_endpoint.get(addr)
        if link is None or len(data) < W.HEADER_SIZE or data[0] != W.VERSION \
                or data[1] != D.DATA_TYPE:
            return False
        src_bytes = data[4:24]
        if data[24:44] != self._me or src_bytes != A.to_bytes(link.address):
            return False
        if seg and len(data) > seg:
            burst = D.take_burst(data, seg, self._me, link.address)
            if burst is None or burst.end != len(data):
                return False
            message = burst.message
        else:
            if len(data) < W.HEADER_SIZE + W.DATA_HEADER.size:
                return False
            _, index, count = W.DATA_HEADER.unpack_from(data, W.HEADER_SIZE)
            if index != 0 or count != 1:
                return False
            message = data[W.HEADER_SIZE + W.DATA_HEADER.size:]
        if not self._plain_peer(link.address, now):
            return False
        try:
            off = M.ip_offset(message)
        except M.MessageError:
            return False
        if len(message) < off + 20:
            return False
        ip_src, ip_dst = message[off + 12:off + 16], message[off + 16:off + 20]
        mac = self._local_mac(ip_dst, now)
        if mac is None or self._owner(ip_src, now) != src_bytes:
            return False  # the router decides (and counts) the rest
        if not self.buckets.allow(addr, now):
            self.counts[LIMITED] += 1
            return True
        if M.is_plain(message):
            # The common small packet: one write, no vnet header to check.
            eth = mac + self._router_mac + b"\x08\x00"
            try:
                if self._vlen:
                    os.writev(self.tap_fd, (PLAIN_VNET, eth, message))
                else:
                    os.write(self.tap_fd, eth + message)
            except OSError:
                self.counts[ERRORS] += 1
            self.counts[TAP_WRITTEN] += 1
        else:
            self.nic.write_message(mac, message)
        link.last_recv = now
        address = link.address
        if address in node.ondemand:
            node.ondemand[address] = now
        self.counts[IN] += 1
        self.counts[IN_BYTES] += len(message)
        if seg:
            self.counts[BURSTS] += 1
        return True

    # -- the reactor thread ---------------------------------------------------------

    def _slow(self, items: list[tuple[Any, ...]]) -> None:
        """What the thread left to the reactor, in the order it was read."""
        now = self.reactor.seconds()
        self._taken += len(items)
        for item in items:
            try:
                if item[0] == _TAP:
                    port = self.nic.port
                    if port is not None:
                        port.deliver(item[1])
                elif self.overlay.gso is not None:
                    self.overlay.read_item(item[1], item[2], item[3], now)
                else:
                    self.overlay.received(item[1], (item[3][0], item[3][1]))
            except Exception:
                self.counters.inc("dataplane_errors")
                self.log.failure("data plane hand-over failed")

    def _refresh(self) -> None:
        for i, (name, labels) in _NAMES.items():
            value = self.counts[i]
            delta = value - self._reported[i]
            if delta:
                self._reported[i] = value
                self.counters.inc(name, delta, **labels)
