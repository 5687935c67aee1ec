"""
Tests for L{wow.security.gate}: policy and sessions between the router and
the overlay, with two real security services on a task.Clock.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.pki import ADDR_A, ADDR_B, IP_A, IP_B, pki
from tests.test_security_service import install
from wow.datapath import vnet
from wow.metrics import Counters
from wow.node.config import NodeConfig, NodeSection, SecuritySection
from wow.security.channel import GEN_FIRST, GEN_LAST, is_secured
from wow.security.gate import SecureGate
from wow.security.service import SecurityService

PUBLIC = "10.128.0.50"
PAYLOAD = b"WOW-GATE-PAYLOAD"


def packet(src: str, dst: str, payload: bytes = PAYLOAD) -> bytes:
    total = 20 + len(payload)
    return (bytes([0x45, 0]) + total.to_bytes(2, "big") + bytes(8)
            + socket.inet_aton(src) + socket.inet_aton(dst) + payload)


class Pair:
    """Two nodes, each a security service and a gate, wired to each other."""

    def __init__(self, test: SynchronousTestCase, enrolled: tuple[bool, bool] = (True, True)
                 ) -> None:
        self.clock = Clock()
        self.clock.advance(time.time())
        self.wire: list[tuple[bytes, bytes, bytes]] = []  # (src, dst, message)
        self.plain: list[tuple[bytes, bytes, bytes]] = []
        self.delivered: dict[bytes, list[bytes]] = {ADDR_A: [], ADDR_B: []}
        self.gates: dict[bytes, SecureGate] = {}
        self.counters: dict[bytes, Counters] = {}
        for addr, ident, has in ((ADDR_A, pki().a, enrolled[0]), (ADDR_B, pki().b, enrolled[1])):
            state = test.mktemp()
            if has:
                install(state, ident)
            else:
                os.makedirs(state)
            config = NodeConfig(node=NodeSection(state_dir=state),
                                security=SecuritySection(public_nodes=(PUBLIC,)))
            counters = Counters()
            service = SecurityService(config, self.clock, counters, addr,
                                      self._transmit(addr))
            service.startService()
            self.counters[addr] = counters
            self.gates[addr] = SecureGate(service, service.policy, self._plain(addr), counters)

    def _transmit(self, src: bytes) -> Any:
        def transmit(peer: bytes, datagram: bytes) -> None:
            self.wire.append((src, peer, datagram))
        return transmit

    def _plain(self, src: bytes) -> Any:
        def send(address: int, message: bytes) -> None:
            dst = address.to_bytes(20, "big")
            self.plain.append((src, dst, message))
            self.wire.append((src, dst, message))
        return send

    def pump(self) -> None:
        while self.wire:
            src, dst, message = self.wire.pop(0)
            out = self.gates[dst].inbound(int.from_bytes(src, "big"), message)
            self.delivered[dst].extend(out)

    def send(self, src: bytes, dst: bytes, message: bytes) -> None:
        self.gates[src].outbound(int.from_bytes(dst, "big"), message)
        self.pump()

    def dropped(self, addr: bytes, reason: str, direction: str) -> float:
        return self.counters[addr].get("security_packets_dropped", reason=reason,
                                       direction=direction)


class FramingTests(SynchronousTestCase):
    def test_disjoint_from_plain_messages(self) -> None:
        """No framing byte is the first byte of an IPv4 packet or a compact vnet header."""
        plain = set(range(0x45, 0x50))
        for flags in range(4):
            for bits in (0, 0x40, 0x80, 0xC0):
                plain.add(bits | flags)
        framing = {g | f for g in range(GEN_FIRST, GEN_LAST + 1) for f in (0, 0x80)}
        self.assertEqual(plain & framing, set())
        self.assertEqual({b for b in range(256) if is_secured(b)}, framing)


class CaReachableTests(SynchronousTestCase):
    def test_ca_is_public(self) -> None:
        """Nodes enrol over the virtual network: the CA's virtual IP is reachable in clear."""
        from ipaddress import IPv4Address

        from wow.node.config import NodeCaSection

        config = NodeConfig(node=NodeSection(state_dir=self.mktemp()),
                            ca=NodeCaSection(url="https://10.128.0.9:8443"))
        service = SecurityService(config, Clock(), Counters(), ADDR_A, lambda p, d: None)
        self.assertTrue(service.policy.is_public(IPv4Address("10.128.0.9")))
        self.assertFalse(service.policy.is_public(IPv4Address(IP_B)))
        self.assertTrue(service.policy.is_secured(IPv4Address(IP_B)))
        outside = NodeConfig(node=NodeSection(state_dir=self.mktemp()),
                             ca=NodeCaSection(url="https://ca.example.org"))
        service = SecurityService(outside, Clock(), Counters(), ADDR_A, lambda p, d: None)
        self.assertEqual(service.policy.public_nodes, ())


class GateTests(SynchronousTestCase):
    def test_secured_both_ways(self) -> None:
        """The first packet waits for the handshake, then arrives; nothing travels in clear."""
        pair = Pair(self)
        pair.send(ADDR_A, ADDR_B, packet(IP_A, IP_B))
        self.assertEqual(pair.delivered[ADDR_B], [packet(IP_A, IP_B)])
        pair.send(ADDR_B, ADDR_A, packet(IP_B, IP_A, b"reply"))
        self.assertEqual(pair.delivered[ADDR_A], [packet(IP_B, IP_A, b"reply")])
        self.assertEqual(pair.plain, [])
        info = pair.gates[ADDR_A].security.manager.channels[ADDR_B].info()  # type: ignore
        self.assertTrue(info["secured"])
        self.assertEqual(info["peer_ip"], IP_B)

    def test_super_frame(self) -> None:
        """A ~60 KB offloaded super-frame travels as one message of four records."""
        pair = Pair(self)
        pair.send(ADDR_A, ADDR_B, packet(IP_A, IP_B))
        h = vnet.VnetHeader(vnet.F_NEEDS_CSUM, vnet.GSO_TCPV4, 54, 1308, 34, 16)
        big = vnet.to_wire(h) + packet(IP_A, IP_B, os.urandom(60000))
        pair.gates[ADDR_A].outbound(int.from_bytes(ADDR_B, "big"), big)
        (src, dst, message), = pair.wire
        self.assertTrue(is_secured(message[0]))
        self.assertLess(len(message), len(big) + 4 * 40)
        pair.pump()
        self.assertEqual(pair.delivered[ADDR_B][-1], big)

    def test_forged_source(self) -> None:
        """After the session is up, a packet from another source IP is dropped."""
        pair = Pair(self)
        pair.send(ADDR_A, ADDR_B, packet(IP_A, IP_B))
        pair.send(ADDR_A, ADDR_B, packet("10.128.0.77", IP_B))
        self.assertEqual(len(pair.delivered[ADDR_B]), 1)
        self.assertEqual(pair.dropped(ADDR_B, "forged-source", "in"), 1)

    def test_plaintext_to_secured_dropped(self) -> None:
        pair = Pair(self)
        out = pair.gates[ADDR_B].inbound(int.from_bytes(ADDR_A, "big"), packet(IP_A, IP_B))
        self.assertEqual(out, [])
        self.assertEqual(pair.dropped(ADDR_B, "plaintext-to-secured", "in"), 1)

    def test_unenrolled_reaches_public_only(self) -> None:
        pair = Pair(self, enrolled=(False, True))
        pair.send(ADDR_A, ADDR_B, packet(IP_A, IP_B))
        self.assertEqual(pair.delivered[ADDR_B], [])
        self.assertEqual(pair.dropped(ADDR_A, "not-enrolled", "out"), 1)
        pair.send(ADDR_A, ADDR_B, packet(IP_A, PUBLIC))
        self.assertEqual(pair.delivered[ADDR_B], [packet(IP_A, PUBLIC)])
        pair.send(ADDR_B, ADDR_A, packet(PUBLIC, IP_A))
        self.assertEqual(pair.delivered[ADDR_A], [packet(PUBLIC, IP_A)])

    def test_enrolled_with_public_node(self) -> None:
        """An enrolled node talks to an unenrolled public node in clear."""
        pair = Pair(self, enrolled=(True, False))
        pair.send(ADDR_A, ADDR_B, packet(IP_A, PUBLIC))
        pair.send(ADDR_B, ADDR_A, packet(PUBLIC, IP_A))
        self.assertEqual(pair.delivered[ADDR_B], [packet(IP_A, PUBLIC)])
        self.assertEqual(pair.delivered[ADDR_A], [packet(PUBLIC, IP_A)])

    def test_wrong_ip_refused(self) -> None:
        """A session to an overlay address whose certificate names another IP never opens."""
        pair = Pair(self)
        pair.send(ADDR_A, ADDR_B, packet(IP_A, "10.128.0.9"))
        self.assertEqual(pair.delivered[ADDR_B], [])
        channel = pair.gates[ADDR_A].security.manager.channels[ADDR_B]  # type: ignore
        self.assertIsNone(channel.current)

    @given(st.binary(max_size=200))
    def test_garbage_in(self, data: bytes) -> None:
        pair = GateTests._garbage_pair
        self.assertIsInstance(pair.gates[ADDR_B].inbound(7, data), list)

    _garbage_pair: Any = None

    def setUp(self) -> None:
        if GateTests._garbage_pair is None:
            GateTests._garbage_pair = Pair(self)


class NodeWiringTests(SynchronousTestCase):
    """The node puts the gate between router and overlay only with [security] on."""

    def node(self, enabled: bool) -> Any:
        from wow.node.service import NodeService

        config = NodeConfig(node=NodeSection(state_dir=self.mktemp()),
                            security=SecuritySection(enabled=enabled))
        return NodeService(config, Clock())

    def test_enabled(self) -> None:
        node = self.node(True)
        self.assertIsInstance(node.router.gate, SecureGate)
        self.assertIs(node.router.gate.security, node.security)
        children = list(node)
        # the security service stops before the router (close_notify still goes out)
        self.assertGreater(children.index(node.security), children.index(node.router))
        self.assertIn("security", node.control.factory.handlers)

    def test_peers_carry_sessions(self) -> None:
        node = self.node(True)
        link = "wow:" + "22" * 20
        node.overlay.control_peers = lambda args: [
            {"address": link, "endpoint": "198.18.0.3:4789", "kind": "near", "rtt_ms": 0.2,
             "age_s": 3.0}]
        node.security.peers = lambda args=None: [
            {"peer": "22" * 20, "secured": True, "cipher": "C", "serial": "ab", "peer_ip": IP_B},
            {"peer": "33" * 20, "secured": True, "cipher": "C", "serial": "cd",
             "peer_ip": "10.128.0.4"}]
        peers = node._peers({})
        self.assertEqual([(p["address"], p["secured"], p["serial"], p["kind"]) for p in peers],
                         [(link, True, "ab", "near"), ("wow:" + "33" * 20, True, "cd", "routed")])

    def test_disabled(self) -> None:
        node = self.node(False)
        self.assertIsNone(node.router.gate)
        self.assertIsNone(node.security)
