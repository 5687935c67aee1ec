"""
The IP router (sans-I/O): IPv4 packets between the local TAP and the overlay.

Outbound (read from the TAP): a packet for virtual IP X goes to the overlay
address holding X's lease.  The owner is looked up once (the caller runs the
DHT get) and cached for the lease's TTL; packets wait in a bounded queue
meanwhile.  A node may only send from addresses leased to its own clients.

Inbound (from the overlay): a packet is written to the TAP only when its
source IP is leased to the overlay address that sent it (anti-spoofing) and
its destination is leased to a client on this TAP.  Unknown sources are
verified with the same lookup, with the packets queued (bounded).

The router touches neither sockets nor the reactor: it calls the injected
functions and is fed the time and the lookups' answers.
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Network
from typing import Protocol

from twisted.logger import Logger

from wow.metrics import Counters
from wow.router.cache import AddressCache, Outcome
from wow.router.messages import MessageError, ip_offset

#: Minimum IPv4 header.
MIN_IPV4 = 20


class LocalClients(Protocol):
    """What the router needs to know about the clients on this node's TAP."""

    def mac_of(self, ip: bytes) -> bytes | None:
        """The MAC of the local client leased C{ip} (4 bytes), if any."""


SendToPeer = Callable[[int, bytes], None]
WriteToTap = Callable[[bytes, bytes], None]  # (destination MAC, IPv4 packet)
StartLookup = Callable[[bytes], None]  # the caller answers with lookup_done()
ICMPSender = Callable[[bytes, bytes], None]  # (destination MAC, IPv4 packet)


class IpRouter:
    log = Logger()

    def __init__(self, network: IPv4Network, me: int, clients: LocalClients,
                 send_to_peer: SendToPeer, write_to_tap: WriteToTap, start_lookup: StartLookup,
                 counters: Counters) -> None:
        self.network = network
        self._net = int(network.network_address)
        self._mask = int(network.netmask)
        self._broadcast = int(network.broadcast_address).to_bytes(4, "big")
        self.me = me
        self.clients = clients
        self.send_to_peer = send_to_peer
        self.write_to_tap = write_to_tap
        self.start_lookup = start_lookup
        self.counters = counters
        self.cache = AddressCache()
        #: inbound packets waiting for their source's lease to be verified,
        #: queued as sender address (20 bytes) + packet; answers live in L{cache}
        self._verify = AddressCache()

    def _drop(self, reason: str, direction: str) -> None:
        self.counters.inc("ip_dropped", reason=reason, direction=direction)

    def _on_net(self, ip: bytes) -> bool:
        return (int.from_bytes(ip, "big") & self._mask) == self._net

    # -- outbound ---------------------------------------------------------

    def _addresses(self, message: bytes, direction: str) -> tuple[bytes, bytes] | None:
        """(source, destination) of the IPv4 packet in a message (L{wow.router.messages})."""
        try:
            o = ip_offset(message)
        except MessageError:
            self._drop("malformed", direction)
            return None
        if len(message) < o + MIN_IPV4:
            self._drop("malformed", direction)
            return None
        return message[o + 12:o + 16], message[o + 16:o + 20]

    def outbound(self, packet: bytes, now: float) -> None:
        """
        An IPv4 packet a local client sent into the TAP (or a message: the
        packet behind a compact vnet header, forwarded whole).
        """
        found = self._addresses(packet, "out")
        if found is None:
            return
        src, dst = found
        if self.clients.mac_of(src) is None:
            # only addresses leased to our own clients may leave this node
            self._drop("source-not-leased-here", "out")
            return
        if not self._on_net(dst) or dst == self._broadcast or dst[0] >= 224:
            self._drop("not-routable", "out")
            return
        mac = self.clients.mac_of(dst)
        if mac is not None:
            # two clients behind this same node: hairpin on the TAP
            self.counters.inc("ip_forwarded", direction="local")
            self.write_to_tap(mac, packet)
            return
        outcome, address = self.cache.route(dst, packet, now)
        if outcome is Outcome.HIT:
            assert address is not None
            self.counters.inc("ip_forwarded", direction="out")
            self.send_to_peer(int.from_bytes(address, "big"), packet)
        elif outcome is Outcome.QUEUED_NEW_LOOKUP:
            if not self._verify.pending(dst):
                self.counters.inc("ip_lookups")
                self.start_lookup(dst)
        elif outcome is not Outcome.QUEUED:
            self._drop("unleased-destination" if outcome is Outcome.NEGATIVE else outcome.value,
                       "out")

    # -- inbound ----------------------------------------------------------

    def inbound(self, sender: int, packet: bytes, now: float) -> None:
        """An IPv4 packet (or message) that arrived over the overlay from C{sender}."""
        found = self._addresses(packet, "in")
        if found is None:
            return
        src, dst = found
        mac = self.clients.mac_of(dst)
        if mac is None:
            self._drop("destination-not-leased-here", "in")
            return
        known, owner = self.cache.peek(src, now)
        sender_bytes = sender.to_bytes(20, "big")
        if owner == sender_bytes:
            self.counters.inc("ip_forwarded", direction="in")
            self.write_to_tap(mac, packet)
            return
        if known:
            # the source is leased to another node, or to nobody
            self._drop("spoofed-source", "in")
            return
        outcome, _ = self._verify.route(src, sender_bytes + packet, now)
        if outcome is Outcome.QUEUED_NEW_LOOKUP:
            if not self.cache.pending(src):
                self.counters.inc("ip_lookups")
                self.start_lookup(src)
        elif outcome is not Outcome.QUEUED:
            self._drop(outcome.value, "in")

    # -- answers ----------------------------------------------------------

    def lookup_done(self, ip: bytes, owner: int | None, ttl: float, now: float) -> None:
        """The DHT says C{ip} is leased to C{owner} (L{None}: to nobody) for C{ttl} s."""
        owner_bytes = None if owner is None else owner.to_bytes(20, "big")
        for packet in self.cache.resolved(ip, owner_bytes, ttl, now):
            if owner is None:
                self._drop("unleased-destination", "out")
            else:
                self.counters.inc("ip_forwarded", direction="out")
                self.send_to_peer(owner, packet)
        for item in self._verify.resolved(ip, owner_bytes, ttl, now, remember=False):
            sender_bytes, packet = item[:20], item[20:]
            if owner_bytes is None or sender_bytes != owner_bytes:
                self._drop("spoofed-source", "in")
                continue
            o = ip_offset(packet)  # checked when queued
            mac = self.clients.mac_of(packet[o + 16:o + 20])
            if mac is None:
                self._drop("destination-not-leased-here", "in")
                continue
            self.counters.inc("ip_forwarded", direction="in")
            self.write_to_tap(mac, packet)

    def lookup_failed(self, ip: bytes, now: float) -> None:
        """The lookup could not complete (timeout): drop what waited; a later packet retries."""
        for _ in self.cache.resolved(ip, None, 0, now, remember=False):
            self._drop("lookup-failed", "out")
        for _ in self._verify.resolved(ip, None, 0, now, remember=False):
            self._drop("lookup-failed", "in")
