"""
Packet codec throughput: how long the virtual NIC's per-frame work takes.

Prints microseconds per operation (and operations per second) for the
Internet checksum and for the parse/build chains the NIC runs for every
frame: a DHCP DISCOVER from the TAP up to a DhcpMessage, an OFFER down to a
frame, an ARP request to its reply, and a full-size IPv4 packet.  The
checksum is compared with the obvious alternative (summing an C{array('H')})
to show why the big-integer method was chosen.

    python bench/codec_bench.py [--json] [--seconds 0.5]

Run under C{flock /tmp/wow-bench.lock} so benchmarks never overlap.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from array import array
from collections.abc import Callable
from dataclasses import replace
from ipaddress import IPv4Address

from wow.net import dhcp
from wow.net.arp import ARP_REQUEST, ArpPacket, build_arp, parse_arp
from wow.net.checksum import internet_checksum
from wow.net.ethernet import BROADCAST, ETH_P_ARP, ETH_P_IP, EthernetFrame, parse_ethernet
from wow.net.ipv4 import PROTO_UDP, IPv4Packet, build_ipv4, parse_ipv4
from wow.net.udp import UDPDatagram, build_udp, parse_udp

CLIENT_MAC = bytes.fromhex("525400123456")
ROUTER_MAC = bytes.fromhex("fe0000000001")
ANY = IPv4Address("0.0.0.0")
ALL = IPv4Address("255.255.255.255")
SERVER = IPv4Address("10.128.0.1")
CLIENT = IPv4Address("10.128.0.5")
PEER = IPv4Address("10.128.0.9")
MASK = IPv4Address("255.192.0.0")


def array_checksum(data: bytes) -> int:
    """The alternative: sum native 16-bit words, then fold and byte-swap."""
    if len(data) % 2:
        data += b"\x00"
    words = array("H", data)
    if sys.byteorder == "little":
        words.byteswap()
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def discover_frame() -> bytes:
    msg = dhcp.DhcpMessage(
        xid=0x3903F326,
        chaddr=CLIENT_MAC,
        options=(
            dhcp.message_type_option(dhcp.DHCPDISCOVER),
            dhcp.str_option(dhcp.OPT_HOST_NAME, "myhost"),
            (dhcp.OPT_PARAMETER_LIST, bytes([1, 28, 2, 3, 15, 6, 119, 12, 44, 47, 26, 121, 42])),
        ),
    )
    udp = build_udp(UDPDatagram(68, 67, dhcp.build_dhcp(msg)), ANY, ALL)
    ip = build_ipv4(IPv4Packet(ANY, ALL, PROTO_UDP, udp, ttl=64))
    return EthernetFrame(BROADCAST, CLIENT_MAC, ETH_P_IP, ip).build()


def parse_discover(frame: bytes) -> dhcp.DhcpMessage:
    eth = parse_ethernet(frame)
    ip = parse_ipv4(eth.payload)
    udp = parse_udp(ip.payload, ip.src, ip.dst)
    return dhcp.parse_dhcp(udp.payload)


def build_offer(request: dhcp.DhcpMessage) -> bytes:
    offer = replace(
        request,
        op=dhcp.BOOTREPLY,
        yiaddr=CLIENT,
        siaddr=SERVER,
        options=(
            dhcp.message_type_option(dhcp.DHCPOFFER),
            dhcp.ip_option(dhcp.OPT_SERVER_ID, SERVER),
            dhcp.u32_option(dhcp.OPT_LEASE_TIME, 3600),
            dhcp.u32_option(dhcp.OPT_RENEWAL_TIME, 1800),
            dhcp.u32_option(dhcp.OPT_REBINDING_TIME, 3150),
            dhcp.ip_option(dhcp.OPT_SUBNET_MASK, MASK),
            dhcp.ip_option(dhcp.OPT_DNS, SERVER),
            dhcp.str_option(dhcp.OPT_DOMAIN_NAME, "wow.example"),
            dhcp.u16_option(dhcp.OPT_INTERFACE_MTU, 1360),
        ),
    )
    udp = build_udp(UDPDatagram(67, 68, dhcp.build_dhcp(offer)), SERVER, ALL)
    ip = build_ipv4(IPv4Packet(SERVER, ALL, PROTO_UDP, udp))
    return EthernetFrame(BROADCAST, ROUTER_MAC, ETH_P_IP, ip).build()


def arp_frame() -> bytes:
    request = ArpPacket(ARP_REQUEST, CLIENT_MAC, CLIENT, bytes(6), PEER)
    return EthernetFrame(BROADCAST, CLIENT_MAC, ETH_P_ARP, build_arp(request)).build(pad=True)


def answer_arp(frame: bytes) -> bytes:
    eth = parse_ethernet(frame)
    reply = parse_arp(eth.payload).reply(ROUTER_MAC)
    return EthernetFrame(eth.src, ROUTER_MAC, ETH_P_ARP, build_arp(reply)).build(pad=True)


def measure(fn: Callable[[], object], seconds: float) -> float:
    """Return microseconds per call, timing batches until C{seconds} pass."""
    batch = 1
    while True:
        start = time.perf_counter()
        for _ in range(batch):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return elapsed / batch * 1e6
        batch *= 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--seconds", type=float, default=0.5, help="time per figure")
    args = parser.parse_args(argv)

    header20 = bytes(range(20))
    packet1500 = bytes(i % 251 for i in range(1500))
    discover = discover_frame()
    request = parse_discover(discover)
    arp = arp_frame()
    payload = bytes(1340)
    big = build_ipv4(IPv4Packet(CLIENT, PEER, 6, payload))

    cases: dict[str, Callable[[], object]] = {
        "checksum 20 B (int.from_bytes)": lambda: internet_checksum(header20),
        "checksum 20 B (array('H'))": lambda: array_checksum(header20),
        "checksum 1500 B (int.from_bytes)": lambda: internet_checksum(packet1500),
        "checksum 1500 B (array('H'))": lambda: array_checksum(packet1500),
        "DHCP DISCOVER frame -> DhcpMessage": lambda: parse_discover(discover),
        "DhcpMessage -> DHCP OFFER frame": lambda: build_offer(request),
        "ARP request frame -> reply frame": lambda: answer_arp(arp),
        "parse_ipv4 1360 B packet": lambda: parse_ipv4(big),
        "build_ipv4 1360 B packet": lambda: build_ipv4(IPv4Packet(CLIENT, PEER, 6, payload)),
    }
    results = {name: measure(fn, args.seconds) for name, fn in cases.items()}
    if args.json:
        print(
            json.dumps(
                {
                    "python": sys.version.split()[0],
                    "us_per_op": {k: round(v, 3) for k, v in results.items()},
                },
                indent=2,
            )
        )
    else:
        print(f"Python {sys.version.split()[0]}")
        for name, us in results.items():
            print(f"{name:40s} {us:8.2f} us  {1e6 / us:12,.0f} /s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
