"""
What happens to one frame the host sends into the TAP (sans-I/O).

L{FrameDispatcher.frame_received} parses the frame and hands it to the part
that owns it: ARP to the L{ArpResponder}, DHCP (UDP to port 67) to the
L{DhcpServer}, every other IPv4 packet to an L{IPacketSink} — the seam where
the IP router (a later part) takes packets destined for other virtual
hosts.  Answers leave through the C{send} callable (the TAP port's write).
Every frame that goes nowhere is counted in C{frames_dropped} with a reason.
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Interface, implementer

from wow.dhcp.server import LIMITED_BROADCAST, DhcpReply, DhcpServer
from wow.metrics import Counters
from wow.net.arp import parse_arp
from wow.net.dhcp import build_dhcp, parse_dhcp
from wow.net.errors import CodecError
from wow.net.ethernet import (
    BROADCAST,
    ETH_P_ARP,
    ETH_P_IP,
    ETH_P_IPV6,
    EthernetFrame,
    build_ethernet,
    parse_ethernet,
)
from wow.net.ipv4 import PROTO_UDP, IPv4Packet, build_ipv4, parse_ipv4
from wow.net.udp import UDPDatagram, build_udp, parse_udp
from wow.nic.arp import ArpResponder

DHCP_SERVER_PORT = 67
DHCP_CLIENT_PORT = 68


class IPacketSink(Interface):
    """
    Takes the IPv4 packets the host sends to other addresses: the seam where
    the IP router (C{wow.router}) plugs in.
    """

    def packet_from_host(raw: bytes, packet: IPv4Packet) -> None:
        """
        Route one packet (the router's job); must not raise.

        @param raw: the IPv4 packet exactly as sent (Ethernet padding removed).
        @param packet: the same, parsed (header checksum verified).
        """


@implementer(IPacketSink)
class UnroutedSink:
    """Until the IP router exists: count and drop (logged via C{drops})."""

    def __init__(self, counters: Counters, drops: DropLog | None = None) -> None:
        self.counters = counters
        self.drops = drops

    def packet_from_host(self, raw: bytes, packet: IPv4Packet) -> None:
        self.counters.inc("frames_dropped", reason="not-routed-yet")
        if self.drops is not None:
            self.drops.dropped("not-routed-yet", f"{packet.src} -> {packet.dst}")


def reply_frame(reply: DhcpReply, router_mac: bytes, server_ip: IPv4Address) -> bytes:
    """Wrap a DHCP reply in UDP 67→68, IPv4 from the server address, Ethernet."""
    payload = build_dhcp(reply.message)
    udp = build_udp(UDPDatagram(DHCP_SERVER_PORT, DHCP_CLIENT_PORT, payload),
                    server_ip, reply.dst_ip)
    ip = build_ipv4(IPv4Packet(src=server_ip, dst=reply.dst_ip, proto=PROTO_UDP, payload=udp,
                               ttl=64))
    return build_ethernet(EthernetFrame(reply.dst_mac, router_mac, ETH_P_IP, ip))


class DropLog:
    """
    Logs drops by reason, at most once per C{interval} seconds per reason
    (with how many were not logged): a host chatty with IPv6 multicast must
    not flood the log, yet every reason shows up.  Counters count them all.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, interval: float = 10.0) -> None:
        self.clock = clock
        self.interval = interval
        self._last: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    def dropped(self, reason: str, detail: str = "") -> None:
        now = self.clock.seconds()
        last = self._last.get(reason)
        if last is not None and now - last < self.interval:
            self._quiet[reason] = self._quiet.get(reason, 0) + 1
            return
        self._last[reason] = now
        quiet = self._quiet.pop(reason, 0)
        self.log.info("frame from the host dropped: {reason}{detail}{more}", reason=reason,
                      detail=f" ({detail})" if detail else "",
                      more=f" (+{quiet} more since last logged)" if quiet else "")


class FrameDispatcher:
    """Parses frames from the host and routes them to their part."""

    log = Logger()

    def __init__(self, router_mac: bytes, server_ip: IPv4Address, arp: ArpResponder,
                 dhcp: DhcpServer, sink: IPacketSink, send: Callable[[bytes], None],
                 counters: Counters, clock: IReactorTime) -> None:
        self.drops = DropLog(clock)
        self.router_mac = router_mac
        self.server_ip = server_ip
        self.arp = arp
        self.dhcp = dhcp
        self.sink = sink
        self.send = send
        self.counters = counters

    def _drop(self, reason: str, detail: str = "") -> None:
        self.counters.inc("frames_dropped", reason=reason)
        self.drops.dropped(reason, detail)

    def _bad(self, layer: str, error: CodecError) -> None:
        self.counters.inc("frames_dropped", reason=f"bad-{layer}")
        self.counters.inc("malformed", layer=layer, reason=error.reason)
        self.drops.dropped(f"bad-{layer}", f"{error.reason}: {error}")

    def frame_received(self, data: bytes) -> None:
        """Handle one frame; never raises for bad input."""
        try:
            frame = parse_ethernet(data)
        except CodecError as e:
            self._bad("ethernet", e)
            return
        if frame.dst != BROADCAST and frame.dst != self.router_mac:
            self._drop("multicast" if frame.is_multicast else "not-for-router")
            return
        if frame.ethertype == ETH_P_ARP:
            self._arp(frame)
        elif frame.ethertype == ETH_P_IP:
            self._ipv4(frame)
        elif frame.ethertype == ETH_P_IPV6:
            self._drop("ipv6")
        else:
            self._drop("unsupported-ethertype", f"{frame.ethertype:#06x}")

    def _arp(self, frame: EthernetFrame) -> None:
        try:
            packet = parse_arp(frame.payload)
        except CodecError as e:
            self._bad("arp", e)
            return
        out = self.arp.answer_frame(frame, packet)
        if out is not None:
            self.send(out)

    def _ipv4(self, frame: EthernetFrame) -> None:
        try:
            packet = parse_ipv4(frame.payload)
        except CodecError as e:
            self._bad("ipv4", e)
            return
        if (packet.proto == PROTO_UDP and not packet.is_fragment
                and packet.dst in (LIMITED_BROADCAST, self.server_ip)
                and packet.payload[2:4] == DHCP_SERVER_PORT.to_bytes(2, "big")):
            self._dhcp(frame, packet)
            return
        if frame.dst == BROADCAST:
            self._drop("ip-broadcast")
            return
        raw = frame.payload[:packet.header_len + len(packet.payload)]
        self.sink.packet_from_host(raw, packet)

    def _dhcp(self, frame: EthernetFrame, packet: IPv4Packet) -> None:
        try:
            datagram = parse_udp(packet.payload, packet.src, packet.dst)
        except CodecError as e:
            self._bad("udp", e)
            return
        try:
            message = parse_dhcp(datagram.payload)
        except CodecError as e:
            self._bad("dhcp", e)
            return
        d = self.dhcp.handle(message, to_broadcast=packet.dst == LIMITED_BROADCAST)
        d.addCallback(self._send_reply)
        d.addErrback(lambda f: self.log.failure("sending a DHCP reply failed", f))

    def _send_reply(self, reply: DhcpReply | None) -> None:
        if reply is None:
            return
        try:
            out = reply_frame(reply, self.router_mac, self.server_ip)
        except CodecError as e:
            self.counters.inc("dhcp_refused", reason="unencodable-reply")
            self.log.error("could not encode a DHCP {type} reply: {error}",
                           type=reply.type_name, error=e)
            return
        self.send(out)
