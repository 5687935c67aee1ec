"""
Shared, cached construction of C{IPv4Address} values from packet bytes.

C{ipaddress.IPv4Address(packed)} validates its argument in Python and costs
about a microsecond; a DHCP message alone carries four addresses.  The
addresses on one virtual NIC come from a small set (the subnet, 0.0.0.0,
255.255.255.255), and C{IPv4Address} is immutable, so a bounded cache shared
by the codecs returns the same object for the same four bytes.
"""

from __future__ import annotations

from functools import lru_cache
from ipaddress import IPv4Address


@lru_cache(maxsize=8192)
def ipv4_from_bytes(packed: bytes) -> IPv4Address:
    """Return the C{IPv4Address} for 4 network-order bytes."""
    return IPv4Address(packed)
