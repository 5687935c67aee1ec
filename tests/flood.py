"""
A flood of bad input into a wow-node's TAP, from the host side (run inside
the node's namespace as root): C{python -m tests.flood DEV ROUTER_MAC HOST_MAC
HOST_IP SECONDS}.  Prints a JSON object of how many frames of each kind left.

Each round sends, through a raw C{AF_PACKET} socket on the TAP:
  - packets from the host's own leased address to 8,192 unleased virtual
    IPs in turn (each needs a lease lookup; "not leased" answers are cached);
  - packets to one destination that nobody holds (its queue and its
    negative cache entry);
  - packets with spoofed sources (random addresses and MACs);
  - DHCP DISCOVERs from ever new MACs (a storm against a small pool).
The destination is only ever the TAP of the namespace the test made.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time
from ipaddress import IPv4Address

from wow.dhcp.loadgen import discover
from wow.net.checksum import internet_checksum

ONE_DESTINATION = IPv4Address("10.128.250.250").packed
#: Unleased destinations cycle over this many /24s (8,192 addresses): more
#: than the router's pending-lookup table holds, few enough that its
#: negative cache fills during the warm-up, so further growth means a leak.
DESTINATION_BLOCKS = 32


def packet(src: bytes, dst: bytes, payload: bytes = b"\0" * 36) -> bytes:
    """An IPv4/UDP packet with a valid header checksum."""
    udp = struct.pack("!HHHH", 40000, 9, 8 + len(payload), 0) + payload
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                                src, dst))
    hdr[10:12] = internet_checksum(bytes(hdr)).to_bytes(2, "big")
    return bytes(hdr) + udp


def main(argv: list[str]) -> int:
    dev, router_mac, host_mac, host_ip, seconds = argv
    rmac, hmac = bytes.fromhex(router_mac.replace(":", "")), bytes.fromhex(
        host_mac.replace(":", ""))
    src = IPv4Address(host_ip).packed
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((dev, 0))
    sent = {"unleased": 0, "one-destination": 0, "spoofed": 0, "discover": 0, "busy": 0}
    deadline = time.monotonic() + float(seconds)
    n = int.from_bytes(os.urandom(3), "big")
    eth = rmac + hmac + b"\x08\x00"

    def send(frame: bytes, kind: str) -> None:
        try:
            s.send(frame)
            sent[kind] += 1
        except OSError:  # the TAP's queue is full: the node is behind
            sent["busy"] += 1
            time.sleep(0.001)

    while time.monotonic() < deadline:
        for _ in range(50):
            n += 1
            dst = bytes([10, 128, 2 + (n >> 8) % DESTINATION_BLOCKS, n & 0xFF])
            send(eth + packet(src, dst), "unleased")
            send(eth + packet(src, ONE_DESTINATION), "one-destination")
            fake = os.urandom(4)
            send(rmac + b"\x02" + fake + b"\x01" + b"\x08\x00"
                 + packet(bytes([10, 128]) + fake[:2], dst), "spoofed")
            send(discover(b"\x02\x00" + n.to_bytes(4, "big"), n & 0xFFFFFFFF), "discover")
        time.sleep(0.002)  # let the node read: a flood, not a benchmark of the kernel's queue
    print(json.dumps(sent))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
