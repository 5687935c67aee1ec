"""
Names in WOW's virtual domain, as text and as DNS wire format.

Every table in L{wow.dns.store} is keyed by the I{lower-cased wire format}
of a name (C{b"\\x05host1\\x03wow\\x00"}): the fast path can then slice the
question out of a query, call C{bytes.lower()} on it (length octets are all
below 64, so lower-casing never touches them) and look it up without
building a single Python string.  This module converts between that form,
text names, derived names (C{c10-128-0-5.wow.} for 10.128.0.5, so even
unnamed hosts resolve) and reverse names (C{5.0.128.10.in-addr.arpa.}).
"""

from __future__ import annotations

import ipaddress
import re
import socket

#: One host-name label (RFC 1123: letters, digits, hyphens, not at the ends).
_LABEL = re.compile(rb"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
#: A derived label: "c" and the four octets of the IPv4 address.
_DERIVED = re.compile(rb"^c(\d{1,3})-(\d{1,3})-(\d{1,3})-(\d{1,3})$")

MAX_NAME_WIRE = 255


class BadName(ValueError):
    """A name that is not acceptable in WOW's DNS (the reason is the message)."""


def valid_label(label: bytes) -> bool:
    """Whether C{label} is a legal host-name label (RFC 1123)."""
    return _LABEL.match(label) is not None


def valid_hostname(name: str) -> bool:
    """
    Whether C{name} is usable as a node's host name: one label, RFC 1123.

    Host names come from DHCP clients and configuration, i.e. from outside;
    anything else is refused rather than published.
    """
    try:
        raw = name.encode("ascii")
    except UnicodeEncodeError:
        return False
    return valid_label(raw)


def to_wire(name: str | bytes) -> bytes:
    """
    The lower-cased wire format of the absolute name C{name}.

    @raise BadName: when a label is empty or longer than 63 octets, or the
        whole name is longer than 255 octets.
    """
    raw = name.encode("ascii") if isinstance(name, str) else bytes(name)
    raw = raw.lower().rstrip(b".")
    if not raw:
        return b"\x00"
    out = bytearray()
    for label in raw.split(b"."):
        if not 1 <= len(label) <= 63:
            raise BadName(f"name {name!r} has an empty or too long label")
        out.append(len(label))
        out += label
    out.append(0)
    if len(out) > MAX_NAME_WIRE:
        raise BadName(f"name {name!r} is longer than 255 octets")
    return bytes(out)


def from_wire(wire: bytes) -> str:
    """The text form (with trailing dot) of an uncompressed wire name."""
    labels = []
    i = 0
    while True:
        n = wire[i]
        if n == 0:
            break
        labels.append(wire[i + 1:i + 1 + n].decode("ascii", "backslashreplace"))
        i += 1 + n
    return ".".join(labels) + "."


def absolute(name: str, domain_wire: bytes) -> bytes:
    """
    The wire form of C{name}, taken relative to the domain unless it ends
    with a dot (hosts-file and config convention: C{ca} means C{ca.wow.}).
    """
    if name.endswith("."):
        return to_wire(name)
    return to_wire(name)[:-1] + domain_wire


def in_zone(wire: bytes, zone_wire: bytes) -> bool:
    """Whether C{wire} is C{zone_wire} or below it (label-aligned)."""
    if wire == zone_wire:
        return True
    if not wire.endswith(zone_wire):
        return False
    cut = len(wire) - len(zone_wire)
    i = 0
    while i < cut:
        i += 1 + wire[i]
    return i == cut


def derived_label(ip: bytes) -> bytes:
    """C{b"c10-128-0-5"} for the packed address 10.128.0.5."""
    return b"c%d-%d-%d-%d" % (ip[0], ip[1], ip[2], ip[3])


def derived_wire(ip: bytes, domain_wire: bytes) -> bytes:
    label = derived_label(ip)
    return bytes((len(label),)) + label + domain_wire


def parse_derived_label(label: bytes) -> bytes | None:
    """The packed IPv4 address a derived label names, or None."""
    m = _DERIVED.match(label)
    if m is None:
        return None
    octets = [int(g) for g in m.groups()]
    if any(o > 255 for o in octets):
        return None
    # Only the canonical spelling (no leading zeros) names the address.
    ip = bytes(octets)
    return ip if derived_label(ip) == label.lower() else None


def ptr_wire(ip: bytes) -> bytes:
    """C{5.0.128.10.in-addr.arpa.} in wire format for 10.128.0.5."""
    out = bytearray()
    for octet in reversed(ip):
        text = b"%d" % octet
        out.append(len(text))
        out += text
    return bytes(out) + b"\x07in-addr\x04arpa\x00"


def parse_ptr_wire(wire: bytes) -> bytes | None:
    """The packed IPv4 address of a full four-label reverse name, or None."""
    if not wire.endswith(b"\x07in-addr\x04arpa\x00"):
        return None
    octets: list[int] = []
    i = 0
    end = len(wire) - 14
    while i < end and len(octets) < 5:
        n = wire[i]
        text = wire[i + 1:i + 1 + n]
        if not 1 <= n <= 3 or not text.isdigit() or (n > 1 and text[0:1] == b"0"):
            return None
        octets.append(int(text))
        i += 1 + n
    if i != end or len(octets) != 4 or any(o > 255 for o in octets):
        return None
    return bytes(reversed(octets))


def reverse_zone_wire(subnet: ipaddress.IPv4Network) -> bytes:
    """
    The C{in-addr.arpa} zone that holds the subnet's PTR records: the
    subnet's network address cut to whole octets (a /16 → C{128.10.in-addr.arpa.},
    a /12 → C{10.in-addr.arpa.}).  Names in that zone but outside the subnet
    get NXDOMAIN.
    """
    octets = subnet.prefixlen // 8
    packed = subnet.network_address.packed[:octets]
    out = bytearray()
    for octet in reversed(packed):
        text = b"%d" % octet
        out.append(len(text))
        out += text
    return bytes(out) + b"\x07in-addr\x04arpa\x00"


def pack_ip(text: str) -> bytes:
    """The 4-byte form of a dotted-quad IPv4 address (strict)."""
    try:
        return socket.inet_pton(socket.AF_INET, text)
    except OSError:
        raise BadName(f"{text!r} is not an IPv4 address") from None
