"""
The IP router as a service of wow-node: the TAP on one side, the overlay on
the other.

Packets travel as overlay DATA messages (kind 0x12) whose payload starts with
the 8-byte data header (message id, piece index, piece count); a packet that
fits one overlay datagram is piece 0 of 1.  Lease owners are found with a DHT
get of C{dhcp:<network>:<ip>}; a value counts only when the claim's signed
owner is the address it names.  When packets flow to a peer without a direct
link, the router asks the overlay for one ("connect to me"); idle on-demand
links are closed by the overlay after C{overlay.ondemand_idle} seconds.
"""

from __future__ import annotations

import itertools
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from wow.datapath.pieces import Reassembler
from wow.dhcp.dhtclient import DhtEntry, IDhtClient, lease_key
from wow.metrics import Counters
from wow.overlay import wire as W
from wow.router import messages as M
from wow.router.router import IpRouter

#: How long one lease lookup may take before its packets are dropped.
LOOKUP_TIMEOUT_S = 5.0
#: Ask for a direct link after this many packets to a peer without one.
DIRECT_AFTER_PACKETS = 3


class RouterService(Service):
    """Connects the NIC's packet sink, the overlay and the DHT through L{IpRouter}."""

    name = "router"
    log = Logger()

    def __init__(self, network: IPv4Network, overlay: Any, dht: IDhtClient, nic: Any,
                 reactor: Any, counters: Counters) -> None:
        self.network = network
        self.overlay = overlay
        self.dht = dht
        self.nic = nic
        self.reactor = reactor
        self.counters = counters
        self.router: IpRouter | None = None
        self._ids = itertools.count()
        self._lookups: dict[bytes, Any] = {}
        self._traffic: dict[int, int] = {}
        #: Messages larger than one datagram arrive as pieces (bounded, timed out).
        self.reassembler = Reassembler(reactor, counters)
        self._sweep: LoopingCall | None = None
        tap = getattr(getattr(nic, "config", None), "tap", None)
        #: Plain packets longer than this with DF set get ICMP "fragmentation needed".
        self.mtu: int = getattr(tap, "mtu", 0) or 0
        #: The security seam (L{wow.security.gate.SecureGate}); None = all in clear.
        self.gate: Any = None

    def startService(self) -> None:
        super().startService()
        me = self.overlay.address
        assert me is not None, "the overlay starts before the router"
        write = getattr(self.nic, "write_message", self.nic.write_to_host)
        self.router = IpRouter(self.network, me, self.nic, self._send_to_peer,
                               write, self._start_lookup, self.counters)
        self.overlay.register_handler(W.DATA, self._delivered)
        if hasattr(self.overlay, "fast_data"):
            self.overlay.fast_data = self.data_message
        if hasattr(self.nic, "fast_route"):
            self.nic.fast_route = self.route
        self._sweep = LoopingCall(self.reassembler.expire)
        self._sweep.clock = self.reactor
        self._sweep.start(1.0, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._sweep is not None and self._sweep.running:
            self._sweep.stop()
        for call in self._lookups.values():
            if call.active():
                call.cancel()
        self._lookups.clear()

    # -- the TAP side -------------------------------------------------------

    def route(self, raw: bytes) -> None:
        """
        An IPv4 packet from a host on the TAP, not for the gateway, or a
        message (L{wow.router.messages}: a super-frame behind its vnet header).
        """
        if self.router is None:
            self.counters.inc("ip_dropped", reason="router-down", direction="out")
            return
        if self.mtu and len(raw) > self.mtu and not M.is_gso(raw) and self._too_big(raw):
            return
        self.router.outbound(raw, self.reactor.seconds())

    def _too_big(self, message: bytes) -> bool:
        """
        A packet longer than the TAP MTU with DF set: answer ICMP
        "fragmentation needed" with the TAP MTU, as a router on the path would.
        """
        try:
            off = M.ip_offset(message)
        except M.MessageError:
            return False
        if not M.needs_frag(message, off, self.mtu):
            return False
        packet = message[off:]
        self.counters.inc("ip_dropped", reason="frag-needed", direction="out")
        mac = self.nic.mac_of(packet[12:16])
        gateway = getattr(getattr(getattr(self.nic, "config", None), "network", None),
                          "gateway_address", None)
        if mac is not None and gateway is not None:
            self.nic.write_to_host(mac, M.frag_needed(packet, gateway.packed, self.mtu))
            self.counters.inc("icmp_frag_needed_sent")
        return True

    # -- the overlay side ---------------------------------------------------

    def _send_to_peer(self, address: int, packet: bytes) -> None:
        if self.gate is not None:
            self.gate.outbound(address, packet)  # secured, in clear or dropped
        else:
            self.send_data(address, packet)

    def send_data(self, address: int, packet: bytes) -> None:
        """One data message (a packet in clear, or a secured datagram) to C{address}."""
        msg_id = next(self._ids) & 0xFFFFFFFF
        header = W.DATA_HEADER.pack(msg_id, 0, 1)
        if len(packet) + len(header) > W.MAX_PAYLOAD:
            # Numbered pieces of one message: one GSO send on a direct link.
            sent = self.overlay.send_message(address, W.DATA, msg_id, packet)
        else:
            sent = self.overlay.send_to(address, W.DATA, header + packet)
        if not sent:
            self.counters.inc("ip_dropped", reason="no-overlay-route", direction="out")
            return
        self._want_direct(address)

    def _want_direct(self, address: int) -> None:
        if self.overlay.has_link(address):
            self._traffic.pop(address, None)
            return
        count = self._traffic.get(address, 0) + 1
        self._traffic[address] = count
        if count == DIRECT_AFTER_PACKETS:
            self.overlay.request_link(address)
        elif count > 1000:
            self._traffic[address] = 0  # ask again later if it never opened
        if len(self._traffic) > 4096:
            self._traffic.clear()

    def _delivered(self, delivery: Any) -> None:
        payload = delivery.payload
        if len(payload) < W.DATA_HEADER.size:
            self.counters.inc("ip_dropped", reason="malformed-data", direction="in")
            return
        _, index, count = W.DATA_HEADER.unpack_from(payload)
        if count == 1 and index == 0:
            message: bytes | None = payload[W.DATA_HEADER.size:]
        else:
            message = self.reassembler.add(delivery.src, payload)
            if message is None:
                return
        self.data_message(delivery.src, message)

    def data_message(self, src: int, message: bytes) -> None:
        """A whole data message from overlay address C{src} (reassembled, or a GRO burst)."""
        if self.router is None:
            self.counters.inc("ip_dropped", reason="router-down", direction="in")
            return
        if self.gate is not None:
            for packet in self.gate.inbound(src, message):
                self.router.inbound(src, packet, self.reactor.seconds())
        else:
            self.router.inbound(src, message, self.reactor.seconds())
        self.overlay.touch(src)

    # -- lookups ------------------------------------------------------------

    def _start_lookup(self, ip: bytes) -> None:
        if ip in self._lookups:
            return
        self._lookups[ip] = self.reactor.callLater(LOOKUP_TIMEOUT_S, self._timed_out, ip)
        key = lease_key(self.network, IPv4Address(ip))
        d = self.dht.get(key)
        d.addCallbacks(self._answered, self._failed, callbackArgs=(ip,), errbackArgs=(ip,))

    def _finish(self, ip: bytes) -> bool:
        call = self._lookups.pop(ip, None)
        if call is None:
            return False  # timed out already
        if call.active():
            call.cancel()
        return True

    def _answered(self, entries: list[DhtEntry], ip: bytes) -> None:
        if not self._finish(ip) or self.router is None:
            return
        owners = [e for e in entries if len(e.value) == 20 and e.value == e.owner]
        if len(owners) != len(entries):
            self.counters.inc("ip_lookup_bad_values", len(entries) - len(owners))
        now = self.reactor.seconds()
        if not owners:
            self.router.lookup_done(ip, None, 0, now)
            return
        best = max(owners, key=lambda e: e.ttl_left)
        self.router.lookup_done(ip, int.from_bytes(best.owner, "big"), best.ttl_left, now)

    def _failed(self, failure: Any, ip: bytes) -> None:
        if not self._finish(ip) or self.router is None:
            return
        self.log.info("lease lookup of {ip} failed: {why}", ip=IPv4Address(ip),
                      why=failure.getErrorMessage())
        self.router.lookup_failed(ip, self.reactor.seconds())

    def _timed_out(self, ip: bytes) -> None:
        self._lookups.pop(ip, None)
        if self.router is not None:
            self.counters.inc("ip_lookup_timeouts")
            self.router.lookup_failed(ip, self.reactor.seconds())
