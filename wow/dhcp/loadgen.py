"""
A minimal DHCP client built from the codecs: the unit tests' and the
benchmark's load generator (many MACs, no real client processes).

It only builds requests and reads replies as whole Ethernet frames; it is
not a DHCP client state machine and never runs in the node.
"""

from __future__ import annotations

from ipaddress import IPv4Address

from wow.net.dhcp import (
    DHCPDECLINE,
    DHCPDISCOVER,
    DHCPINFORM,
    DHCPRELEASE,
    DHCPREQUEST,
    FLAG_BROADCAST,
    OPT_HOST_NAME,
    OPT_REQUESTED_IP,
    OPT_SERVER_ID,
    DhcpMessage,
    build_dhcp,
    message_type_option,
    parse_dhcp,
)
from wow.net.ethernet import BROADCAST, ETH_P_IP, EthernetFrame, build_ethernet, parse_ethernet
from wow.net.ipv4 import PROTO_UDP, IPv4Packet, build_ipv4, parse_ipv4
from wow.net.udp import UDPDatagram, build_udp, parse_udp

ZERO = IPv4Address(0)
LIMITED_BROADCAST = IPv4Address("255.255.255.255")


def request_message(mtype: int, mac: bytes, xid: int, *, requested: IPv4Address | None = None,
                    server: IPv4Address | None = None, ciaddr: IPv4Address = ZERO,
                    hostname: str = "", broadcast: bool = False,
                    extra: tuple[tuple[int, bytes], ...] = ()) -> DhcpMessage:
    """A client message of type C{mtype} from C{mac}."""
    options: list[tuple[int, bytes]] = [message_type_option(mtype)]
    if requested is not None:
        options.append((OPT_REQUESTED_IP, requested.packed))
    if server is not None:
        options.append((OPT_SERVER_ID, server.packed))
    if hostname:
        options.append((OPT_HOST_NAME, hostname.encode()))
    options.extend(extra)
    return DhcpMessage(xid=xid, chaddr=mac, ciaddr=ciaddr,
                       flags=FLAG_BROADCAST if broadcast else 0, options=tuple(options))


def client_frame(msg: DhcpMessage, *, src_ip: IPv4Address = ZERO,
                 dst_ip: IPv4Address = LIMITED_BROADCAST, dst_mac: bytes = BROADCAST) -> bytes:
    """C{msg} as the Ethernet frame a client puts on the TAP (68 → 67)."""
    udp = build_udp(UDPDatagram(68, 67, build_dhcp(msg)), src_ip, dst_ip)
    ip = build_ipv4(IPv4Packet(src=src_ip, dst=dst_ip, proto=PROTO_UDP, payload=udp))
    return build_ethernet(EthernetFrame(dst_mac, bytes(msg.chaddr[:6]), ETH_P_IP, ip))


def discover(mac: bytes, xid: int, **kw: object) -> bytes:
    return client_frame(request_message(DHCPDISCOVER, mac, xid, **kw))  # type: ignore[arg-type]


def select(mac: bytes, xid: int, ip: IPv4Address, server: IPv4Address, **kw: object) -> bytes:
    return client_frame(request_message(DHCPREQUEST, mac, xid, requested=ip, server=server,
                                        **kw))  # type: ignore[arg-type]


def renew(mac: bytes, xid: int, ip: IPv4Address, server: IPv4Address, router_mac: bytes,
          ) -> bytes:
    """A RENEWING request: unicast to the server, ciaddr set."""
    return client_frame(request_message(DHCPREQUEST, mac, xid, ciaddr=ip), src_ip=ip,
                        dst_ip=server, dst_mac=router_mac)


def rebind(mac: bytes, xid: int, ip: IPv4Address) -> bytes:
    """A REBINDING request: broadcast, ciaddr set."""
    return client_frame(request_message(DHCPREQUEST, mac, xid, ciaddr=ip), src_ip=ip)


def release(mac: bytes, xid: int, ip: IPv4Address, server: IPv4Address, router_mac: bytes
            ) -> bytes:
    return client_frame(request_message(DHCPRELEASE, mac, xid, ciaddr=ip, server=server),
                        src_ip=ip, dst_ip=server, dst_mac=router_mac)


def decline(mac: bytes, xid: int, ip: IPv4Address, server: IPv4Address) -> bytes:
    return client_frame(request_message(DHCPDECLINE, mac, xid, requested=ip, server=server))


def inform(mac: bytes, xid: int, ip: IPv4Address, server: IPv4Address, router_mac: bytes
           ) -> bytes:
    return client_frame(request_message(DHCPINFORM, mac, xid, ciaddr=ip), src_ip=ip,
                        dst_ip=server, dst_mac=router_mac)


def parse_reply(frame: bytes) -> tuple[EthernetFrame, IPv4Packet, DhcpMessage]:
    """Decode a server's reply frame (raises the codecs' errors)."""
    eth = parse_ethernet(frame)
    ip = parse_ipv4(eth.payload)
    udp = parse_udp(ip.payload, ip.src, ip.dst)
    return eth, ip, parse_dhcp(udp.payload)
