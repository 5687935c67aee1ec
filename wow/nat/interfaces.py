"""
This host's IPv4 interface addresses: the "local" hole-punching candidates.

Two nodes behind the same NAT reach each other only over these (routers
seldom hairpin).  Loopback, link-local addresses and the overlay's own
virtual network (the TAP) are never candidates: a probe to a virtual IP
would be carried by the overlay itself.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from collections.abc import Iterable

SIOCGIFADDR = 0x8915


def interface_addresses() -> list[tuple[str, str]]:
    """(interface, IPv4 address) for every interface that has one."""
    out = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                raw = fcntl.ioctl(s.fileno(), SIOCGIFADDR,
                                  struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue  # no IPv4 address on it
            out.append((name, socket.inet_ntoa(raw[20:24])))
    return out


def candidate_addresses(found: Iterable[tuple[str, str]], exclude_interfaces: Iterable[str] = (),
                        exclude_networks: Iterable[str] = ()) -> list[str]:
    """The addresses worth advertising, from C{found} (see L{interface_addresses})."""
    skip = set(exclude_interfaces)
    nets = [ipaddress.IPv4Network(n) for n in exclude_networks]
    out = []
    for name, text in found:
        ip = ipaddress.IPv4Address(text)
        if name in skip or ip.is_loopback or ip.is_link_local or ip.is_unspecified \
                or any(ip in n for n in nets):
            continue
        if text not in out:
            out.append(text)
    return out
