"""The relay's overlay transport: server lookup, cache, bounded queue, who may answer."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from wow.dhcp.dhtclient import lease_key
from wow.dhcp.relay import IRelayTransport
from wow.dhcp.relay_overlay import (
    DHCP_RELAY_KIND,
    MAX_WAITING,
    SERVER_CACHE,
    TO_CLIENT,
    TO_SERVER,
    OverlayRelayTransport,
)
from wow.metrics import Counters
from wow.overlay import address as A
from wow.testing import FakeDht

NET = IPv4Network("10.128.0.0/16")
SERVER = IPv4Address("10.128.0.2")
ME, SERVER_NODE, STRANGER = b"\x0a" * 20, b"\x5e" * 20, b"\x66" * 20


@dataclass
class Delivery:
    src: int
    payload: bytes


class FakeOverlay:
    def __init__(self) -> None:
        self.sent: list[tuple[int, int, bytes]] = []
        self.handlers: dict[int, Any] = {}
        self.reachable = True

    def send_to(self, address: int, kind: int, payload: bytes, mode: int) -> bool:
        self.sent.append((address, kind, payload))
        return self.reachable

    def register_handler(self, kind: int, handler: Any) -> None:
        self.handlers[kind] = handler


class FakeAgent:
    def __init__(self) -> None:
        self.replies: list[bytes] = []
        self.relayed: list[bytes] = []

    def from_server(self, payload: bytes) -> None:
        self.replies.append(payload)

    def from_relay(self, payload: bytes) -> None:
        self.relayed.append(payload)


class OverlayRelayTransportTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.dht = FakeDht(self.clock)
        self.overlay = FakeOverlay()
        self.counters = Counters()
        self.transport = OverlayRelayTransport(self.overlay, self.dht.client(ME), NET, SERVER,
                                               self.clock, self.counters)
        self.agent = FakeAgent()
        self.transport.attach(self.agent)  # type: ignore[arg-type]

    def publish_server(self) -> None:
        self.dht.records[lease_key(NET, SERVER)] = (SERVER_NODE, SERVER_NODE, 3600.0)

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IRelayTransport, self.transport))
        self.assertIn(DHCP_RELAY_KIND, self.overlay.handlers)

    def test_to_the_node_holding_the_server_address_cached(self) -> None:
        self.publish_server()
        self.transport.send_to_server(b"one")
        self.transport.send_to_server(b"two")
        self.assertEqual(self.overlay.sent, [
            (A.from_bytes(SERVER_NODE), DHCP_RELAY_KIND, bytes([TO_SERVER]) + b"one"),
            (A.from_bytes(SERVER_NODE), DHCP_RELAY_KIND, bytes([TO_SERVER]) + b"two")])
        self.assertEqual(sum(1 for op, _, _ in self.dht.ops if op == "get"), 1)
        self.clock.advance(SERVER_CACHE + 1)
        self.transport.send_to_server(b"three")
        self.assertEqual(sum(1 for op, _, _ in self.dht.ops if op == "get"), 2)

    def test_waiting_for_the_lookup_is_bounded(self) -> None:
        self.publish_server()
        self.dht.latency = (1.0, 1.0)
        for i in range(MAX_WAITING + 5):
            self.transport.send_to_server(bytes([i]))
        self.assertEqual(self.counters.get("dhcp_relay_dropped",
                                           reason="server-lookup-queue-full"), 5)
        self.assertEqual(self.overlay.sent, [])
        self.clock.pump([1, 1])
        self.assertEqual(len(self.overlay.sent), MAX_WAITING)

    def test_no_server_anywhere(self) -> None:
        self.transport.send_to_server(b"x")
        self.assertEqual(self.overlay.sent, [])
        self.assertEqual(self.counters.get("dhcp_relay_dropped", reason="server-not-found"), 1)
        self.dht.fail_next.append("timeout")
        self.transport.send_to_server(b"y")
        self.assertEqual(self.counters.get("dhcp_relay_dropped",
                                           reason="server-lookup-timeout"), 1)

    def test_replies_only_from_the_server_node(self) -> None:
        self.publish_server()
        self.transport.send_to_server(b"request")
        handler = self.overlay.handlers[DHCP_RELAY_KIND]
        handler(Delivery(A.from_bytes(STRANGER), bytes([TO_CLIENT]) + b"forged"))
        handler(Delivery(A.from_bytes(SERVER_NODE), bytes([TO_CLIENT]) + b"offer"))
        self.assertEqual(self.agent.replies, [b"offer"])
        self.assertEqual(self.counters.get("dhcp_relay_dropped",
                                           reason="reply-not-from-server-node"), 1)

    def test_requests_for_our_server_and_garbage(self) -> None:
        handler = self.overlay.handlers[DHCP_RELAY_KIND]
        handler(Delivery(A.from_bytes(STRANGER), bytes([TO_SERVER]) + b"relayed"))
        handler(Delivery(A.from_bytes(STRANGER), b""))
        handler(Delivery(A.from_bytes(STRANGER), b"\x09junk"))
        self.assertEqual(self.agent.relayed, [b"relayed"])
        self.assertEqual(self.counters.get("dhcp_relay_dropped", reason="bad-relay-message"), 2)

    def test_replies_to_relaying_nodes_and_unroutable(self) -> None:
        self.transport.send_to_node(STRANGER, b"ack")
        self.assertEqual(self.overlay.sent[-1],
                         (A.from_bytes(STRANGER), DHCP_RELAY_KIND, bytes([TO_CLIENT]) + b"ack"))
        self.overlay.reachable = False
        self.transport.send_to_node(STRANGER, b"ack")
        self.assertEqual(self.counters.get("dhcp_relay_dropped", reason="no-overlay-route"), 1)
