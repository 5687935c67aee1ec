"""Every codec decodes C{bytes}, C{bytearray} and C{memoryview} alike."""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address

from twisted.trial.unittest import SynchronousTestCase

from tests.test_net_arp import REQUEST
from tests.test_net_dhcp import DHCLIENT_DISCOVER
from tests.test_net_ethernet import ARP_FRAME
from tests.test_net_ipv4 import IGMP
from tests.test_net_udp import HELLO
from wow.net.arp import parse_arp
from wow.net.dhcp import parse_dhcp
from wow.net.ethernet import parse_ethernet
from wow.net.ipv4 import parse_ipv4
from wow.net.udp import parse_udp


def _udp(data: bytes | bytearray | memoryview) -> object:
    return parse_udp(data, IPv4Address("0.0.0.0"), IPv4Address("255.255.255.255"))


CASES: list[tuple[Callable[..., object], bytes]] = [
    (parse_ethernet, ARP_FRAME),
    (parse_arp, REQUEST),
    (parse_ipv4, IGMP),
    (_udp, HELLO),
    (parse_dhcp, DHCLIENT_DISCOVER),
]


class BufferTypesTests(SynchronousTestCase):
    def test_same_value_from_any_buffer(self) -> None:
        for parse, data in CASES:
            expected = parse(data)
            # A slice of a larger buffer, as a receive loop would hand over.
            view = memoryview(b"xx" + data + b"")[2:]
            for buffer in [bytearray(data), memoryview(data), view]:
                self.assertEqual(parse(buffer), expected, parse)
