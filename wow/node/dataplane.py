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

from wow.datapath.udpgso import RECV_BUF, SOL_UDP, UDP_GRO
from wow.datapath.vnet import PLAIN_BYTES as PLAIN_VNET
from wow.metrics import Counters
from wow.nic.offload import for_router
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
#: A flow (source and destination IP) whose packet took the whole decision
#: takes the short lane for this long: one dictionary read and one comparison
#: of its headers instead of every table (a lease, route or link change shows
#: within it, as in the memo of the TAP's clients).
FLOW_FOR = 1.0
#: Flows remembered per direction at most (the table is emptied when full).
MAX_FLOWS = 1024

_TAP, _UDP = 0, 1
_CMSG_SPACE = socket.CMSG_SPACE(4)
_DATA_AT = W.HEADER_SIZE + W.DATA_HEADER.size
_WHOLE = b"\x00\x00\x00\x01"  # piece index 0, piece count 1
_DATA_HEADER = W.DATA_HEADER.pack
_NEVER = float("-inf")
_MSG_TRUNC = socket.MSG_TRUNC
# Indexes of the thread's counts.
(OUT, OUT_BYTES, IN, IN_BYTES, TAP_READ, TAP_READ_BYTES, UDP_IN, UDP_IN_BYTES, SLOW,
 ERRORS, LIMITED, WAKES, READ_AFTER_WRITE, UDP_OUT, UDP_OUT_BYTES, TAP_WRITTEN,
 BUSY, BURSTS, FLOW_LANE) = range(19)
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
    FLOW_LANE: ("dataplane_flow_lane", {}),
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
        self._flows_out: dict[bytes, tuple[Any, ...]] = {}
        self._flows_in: dict[bytes, tuple[Any, ...]] = {}
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
        self._eth_tail = self._router_mac + b"\x08\x00"
        self._mtu = self.router.mtu
        self._ids = self.router._ids
        self._bind_tables()
        self.nic.port.stopReading()
        self.overlay.port.stopReading()
        self._wake = os.pipe()
        self._stop = False
        self._thread = threading.Thread(target=self._run, args=(self._wake[0],),
                                        name="wow-dataplane", daemon=True)
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

    def _bind_tables(self) -> None:
        """The reactor thread's tables the decisions read (the objects live as long as the node)."""
        node = self.overlay.node
        self._cache = self.router.router.cache
        self._links = node.table.links
        self._by_endpoint = node.by_endpoint
        self._ondemand = node.ondemand
        self._plain = self.overlay.plain_data_sent

    # -- the thread ------------------------------------------------------------

    def _run(self, wake_fd: int) -> None:
        self._ep = ep = select.epoll()
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
                # A broken device (deleted under us): stop watching it rather
                # than spin on a readable-but-failing descriptor, as TapPort does.
                counts[ERRORS] += 1
                self._ep.unregister(fd)
                self.reactor.callFromThread(self._tap_failed, e)
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

    # Both decisions are written out in one function each, with the tables
    # read directly: on a cold process every further Python call costs a
    # few microseconds of the round trip (measured, docs/performance.md).

    def _out(self, buf: bytes, now: float) -> bool:
        """A frame from the TAP: sent here (True) or left to the reactor (False)."""
        vlen = self._vlen
        e = vlen + 14  # the IPv4 header
        flow = self._flows_out.get(buf[e + 12:e + 20])
        if flow is not None and flow[0] > now and buf[vlen:e] == flow[1] \
                and (not vlen or buf[:2] == b"\0\0") and 0x45 <= buf[e] <= 0x4F \
                and (buf[e + 9] != 17 or buf[e + (buf[e] & 15) * 4 + 2:][:2] != b"\0\x43"):
            # The flow lane: a plain packet of a flow decided in the last
            # second (same hosts, same Ethernet header, link still the same).
            total = (buf[e + 2] << 8) | buf[e + 3]
            link = flow[3]
            if 20 <= total <= self._mtu and self._links.get(flow[2]) is link:
                datagram = flow[4] + _DATA_HEADER(next(self._ids) & 0xFFFFFFFF, 0, 1) \
                    + buf[e:e + total]
                try:
                    self.sock.sendto(datagram, link.endpoint)
                except OSError:
                    self.counts[ERRORS] += 1
                link.last_sent = now
                counts = self.counts
                counts[UDP_OUT] += 1
                counts[UDP_OUT_BYTES] += len(datagram)
                counts[OUT] += 1
                counts[OUT_BYTES] += total
                counts[FLOW_LANE] += 1
                return True
        if not for_router(buf, vlen, self._gateway, self._router_mac):
            return False
        start = vlen + 14
        if not vlen or buf[:2] == b"\0\0":  # no vnet header, or one asking for nothing
            total = (buf[start + 2] << 8) | buf[start + 3]
            message = buf[start:start + total] if total >= 20 else buf[start:]
            if not 0x45 <= message[0] <= 0x4F or len(message) < 20:
                return False
            off = 0
        else:
            message = M.from_tap(buf, vlen)
            off = M.ip_offset(message)
        dst = message[off + 16:off + 20]
        local = self._local
        memo = local.get(message[off + 12:off + 16])
        if memo is None or memo[1] <= now or memo[0] is None:
            if self._local_mac(message[off + 12:off + 16], now) is None:
                return False
        memo = local.get(dst)
        if memo is None or memo[1] <= now or memo[0] is not None:
            if self._local_mac(dst, now) is not None:
                return False  # hairpin: the router's
        owner = self._cache.fresh(dst, now)
        if owner is None:
            return False
        address = int.from_bytes(owner, "big")
        link = self._links.get(address)
        flow = message[off + 12:off + 20]
        plain_at = self._plain.get(flow, _NEVER)
        if link is None or link.sock or plain_at <= now - PLAIN_FOR:
            # No link, a link on a birthday-probing socket (its NAT mapping
            # belongs to that socket: the overlay sends), or a flow not sent
            # in clear lately: the reactor decides.
            return False
        if self._mtu and len(message) - off > self._mtu and message[0] & 0x80 == 0:
            return False  # not a GSO super-frame: the router answers "fragmentation needed"
        counts = self.counts
        msg_id = next(self._ids) & 0xFFFFFFFF
        if len(message) + 8 > W.MAX_PAYLOAD:
            if not self.overlay.send_message(address, W.DATA, msg_id, message):
                return False
        else:
            prefix = self._prefix.get(address)
            if prefix is None:
                if len(self._prefix) > 1024:
                    self._prefix = {}
                node = self.overlay.node
                prefix = self._prefix[address] = D.link_prefix(node.me, address,
                                                               node.params.ttl)
            datagram = prefix + _DATA_HEADER(msg_id, 0, 1) + message
            try:
                self.sock.sendto(datagram, link.endpoint)
            except OSError:
                counts[ERRORS] += 1
            if off == 0:  # a bare packet: its flow takes the lane for a while
                flows = self._flows_out
                if len(flows) >= MAX_FLOWS:
                    flows.clear()
                until = min(now + FLOW_FOR, plain_at + PLAIN_FOR)
                flows[flow] = (until, buf[vlen:vlen + 14], address, link, prefix)
            link.last_sent = now
            counts[UDP_OUT] += 1
            counts[UDP_OUT_BYTES] += len(datagram)
        counts[OUT] += 1
        counts[OUT_BYTES] += len(message)
        return True

    def _in(self, data: bytes, seg: int, addr: tuple[str, int], now: float) -> bool:
        """A read from the socket: delivered here (True) or left to the reactor (False)."""
        flow = self._flows_in.get(data[_DATA_AT + 12:_DATA_AT + 20]) if not seg else None
        if flow is not None and flow[0] > now and flow[1] == addr \
                and data[:W.HEADER_SIZE] == flow[2] and data[_DATA_AT - 4:_DATA_AT] == _WHOLE \
                and 0x45 <= data[_DATA_AT] <= 0x4F \
                and self._links.get(flow[3].address) is flow[3]:
            # The flow lane: a whole bare packet of a flow verified in the last
            # second (same peer, same overlay and data headers but the id).
            counts = self.counts
            if not self.buckets.allow(addr, now):
                counts[LIMITED] += 1
                return True
            try:
                if self._vlen:
                    os.writev(self.tap_fd, (PLAIN_VNET, flow[4], data[_DATA_AT:]))
                else:
                    os.write(self.tap_fd, flow[4] + data[_DATA_AT:])
            except OSError:
                counts[ERRORS] += 1
            link = flow[3]
            link.last_recv = now
            ondemand = self._ondemand
            if link.address in ondemand:
                ondemand[link.address] = now
            counts[TAP_WRITTEN] += 1
            counts[IN] += 1
            counts[IN_BYTES] += len(data) - _DATA_AT
            counts[FLOW_LANE] += 1
            return True
        link = self._by_endpoint.get(addr)
        if link is None or len(data) < _DATA_AT or data[0] != W.VERSION \
                or data[1] != D.DATA_TYPE or data[24:44] != self._me:
            return False
        src_bytes = data[4:24]
        address = link.address
        if int.from_bytes(src_bytes, "big") != address:
            return False
        if seg and len(data) > seg:
            burst = D.take_burst(data, seg, self._me, address)
            if burst is None or burst.end != len(data):
                return False
            message = burst.message
        else:
            if data[_DATA_AT - 4:_DATA_AT] != _WHOLE:  # piece 0 of 1
                return False
            message = data[_DATA_AT:]
        if len(message) < 20:
            return False
        plain = 0x45 <= message[0] <= 0x4F
        if plain:
            off = 0
        else:
            try:
                off = M.ip_offset(message)
            except M.MessageError:
                return False
        dst = message[off + 16:off + 20]
        # Only the reverse of a flow the router sent in clear lately.
        plain_at = self._plain.get(dst + message[off + 12:off + 16], _NEVER)
        if plain_at <= now - PLAIN_FOR:
            return False
        memo = self._local.get(dst)
        mac = memo[0] if memo is not None and memo[1] > now else self._local_mac(dst, now)
        if mac is None or self._cache.fresh(message[off + 12:off + 16], now) != src_bytes:
            return False  # the router decides (and counts) the rest
        counts = self.counts
        if not self.buckets.allow(addr, now):
            counts[LIMITED] += 1
            return True
        if plain:
            # The common small packet: one write, no vnet header to check.
            try:
                if self._vlen:
                    os.writev(self.tap_fd, (PLAIN_VNET, mac + self._eth_tail, message))
                else:
                    os.write(self.tap_fd, mac + self._eth_tail + message)
            except OSError:
                counts[ERRORS] += 1
            counts[TAP_WRITTEN] += 1
            if not seg:  # its flow takes the lane for a while (headers but the id)
                flows = self._flows_in
                if len(flows) >= MAX_FLOWS:
                    flows.clear()
                until = min(now + FLOW_FOR, plain_at + PLAIN_FOR)
                flows[message[12:20]] = (until, addr, data[:W.HEADER_SIZE], link,
                                         mac + self._eth_tail)
        else:
            self.nic.write_message(mac, message)
        link.last_recv = now
        ondemand = self._ondemand
        if address in ondemand:
            ondemand[address] = now
        counts[IN] += 1
        counts[IN_BYTES] += len(message)
        if seg:
            counts[BURSTS] += 1
        return True

    # -- the reactor thread ---------------------------------------------------------

    def _tap_failed(self, error: OSError) -> None:
        self.counters.inc("tap_errors", reason="read")
        self.log.error("reading the TAP failed, no longer reading it: {error}", error=error)

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
