"""
Host-name claims through atomic create, the DHT-backed store, and the DNS
a node embeds.
"""

from __future__ import annotations

import socket

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.names import dns
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from wow.dns.claims import (
    DhtNameStore,
    IAtomicCreate,
    MemoryAtomicStore,
    NameClaims,
    name_key,
    ptr_key,
)
from wow.dns.config import NodeDnsSection
from wow.dns.names import from_wire, to_wire
from wow.dns.service import NodeDns
from wow.dns.store import CompactStore, INameStore
from wow.metrics import Counters
from wow.node.config import NetworkSection

from .test_dns_engine import parse, query

NET = "10.128.0.0/16"
WOW = to_wire("wow")


def compact() -> CompactStore:
    import ipaddress

    return CompactStore(WOW, ipaddress.IPv4Network(NET))


class MemoryAtomicStoreTests(SynchronousTestCase):
    def test_interface_and_semantics(self) -> None:
        clock = Clock()
        kv = MemoryAtomicStore(clock)
        verifyObject(IAtomicCreate, kv)
        self.assertTrue(self.successResultOf(kv.create("k", b"a", 10)))
        self.assertFalse(self.successResultOf(kv.create("k", b"b", 10)))
        self.assertTrue(self.successResultOf(kv.create("k", b"a", 20)))  # refresh
        clock.advance(5)
        self.assertEqual(self.successResultOf(kv.get("k")), (b"a", 15))
        self.assertFalse(self.successResultOf(kv.delete("k", b"b")))
        clock.advance(15)
        self.assertIsNone(self.successResultOf(kv.get("k")))
        self.assertTrue(self.successResultOf(kv.create("k", b"b", 10)))  # expired: free again
        self.assertTrue(self.successResultOf(kv.delete("k", b"b")))


class ClaimTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.kv = MemoryAtomicStore(self.clock)
        self.counters = Counters()

    def node(self) -> tuple[NameClaims, CompactStore]:
        store = compact()
        return NameClaims(self.kv, NET, WOW, store, self.clock, self.counters), store

    def test_first_claimer_keeps_the_name(self) -> None:
        first, store1 = self.node()
        second, store2 = self.node()
        self.assertEqual(self.successResultOf(first.claim("10.128.0.5", 600, "alice")),
                         to_wire("alice.wow"))
        with capturedLogs() as events:
            name = self.successResultOf(second.claim("10.128.0.6", 600, "Alice"))
        self.assertEqual(name, to_wire("c10-128-0-6.wow"))
        [warning] = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertIn("alice.wow", warning["name"])
        self.assertEqual(self.counters.get("dns_name_claims_lost", reason="taken"), 1)
        self.assertEqual(store1.lookup_a(to_wire("alice.wow"), 1000), (socket.inet_aton(
            "10.128.0.5"), 600))
        self.assertIsNone(store2.lookup_a(to_wire("alice.wow"), 1000))
        self.assertEqual(store2.lookup_ptr(socket.inet_aton("10.128.0.6"), 1000)[0],
                         to_wire("c10-128-0-6.wow"))
        self.assertEqual(self.kv.data[name_key(NET, to_wire("alice.wow"))][0], b"10.128.0.5")
        self.assertEqual(self.kv.data[ptr_key(NET, socket.inet_aton("10.128.0.6"))][0],
                         b"c10-128-0-6.wow")

    def test_renewal_keeps_the_name_and_expiry_frees_it(self) -> None:
        first, _ = self.node()
        second, _ = self.node()
        self.successResultOf(first.claim("10.128.0.5", 600, "alice"))
        self.clock.advance(300)
        self.assertEqual(self.successResultOf(first.claim("10.128.0.5", 600, "alice")),
                         to_wire("alice.wow"))
        self.clock.advance(599)
        self.assertNotEqual(self.successResultOf(second.claim("10.128.0.6", 600, "alice")),
                            to_wire("alice.wow"))
        self.clock.advance(2)
        self.assertEqual(self.successResultOf(second.claim("10.128.0.6", 600, "alice")),
                         to_wire("alice.wow"))

    def test_invalid_host_name_is_not_published(self) -> None:
        claims, store = self.node()
        name = self.successResultOf(claims.claim("10.128.0.5", 600, "bad_name"))
        self.assertEqual(name, to_wire("c10-128-0-5.wow"))
        self.assertEqual(self.counters.get("dns_name_claims_refused", reason="invalid"), 1)

    def test_release(self) -> None:
        claims, store = self.node()
        name = self.successResultOf(claims.claim("10.128.0.5", 600, "alice"))
        claims.release("10.128.0.5", name)
        self.assertIsNone(store.lookup_a(name, 1000))
        self.assertEqual(self.kv.data, {})


class DhtStoreTests(SynchronousTestCase):
    def test_reads_through_and_caches(self) -> None:
        clock = Clock()
        clock.advance(1000)
        kv = MemoryAtomicStore(clock)
        publisher = NameClaims(kv, NET, WOW, compact(), clock, Counters())
        self.successResultOf(publisher.claim("10.128.0.5", 600, "alice"))
        kv.create(name_key(NET, to_wire("junk.wow")), b"not an address", 600)
        store = DhtNameStore(kv, NET, compact())
        verifyObject(INameStore, store)
        self.assertIsNone(store.lookup_a(to_wire("alice.wow"), 1000))
        hit = self.successResultOf(store.fetch_a(to_wire("alice.wow"), 1000))
        self.assertEqual(hit, (socket.inet_aton("10.128.0.5"), 600))
        self.assertEqual(store.lookup_a(to_wire("alice.wow"), 1100)[1], 500)  # cached
        self.assertIsNone(self.successResultOf(store.fetch_a(to_wire("nobody.wow"), 1000)))
        self.assertIsNone(self.successResultOf(store.fetch_a(to_wire("junk.wow"), 1000)))
        ptr = self.successResultOf(store.fetch_ptr(socket.inet_aton("10.128.0.5"), 1000))
        self.assertEqual(from_wire(ptr[0]), "alice.wow.")


class ReloadTests(SynchronousTestCase):
    def test_reload_swaps_the_names_and_keeps_configured_records(self) -> None:
        import os

        from wow.dns.config import DnsConfig, DnsSection
        from wow.dns.service import NamesFileService, build_dns_service

        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("10.128.0.5 alice\n10.128.0.9 ca\n")
        config = DnsConfig(DnsSection(names_file=path, port=0, records=("ca A 10.128.0.2",)))
        root = build_dns_service(config, Clock())
        engine = root.engine  # type: ignore[attr-defined]
        [loader] = [s for s in root if isinstance(s, NamesFileService)]

        def a(name: str) -> str | None:
            m = parse(engine.answer(query(name), "127.0.0.1"))
            return m.answers[0].payload.dottedQuad() if m.answers else None

        self.assertEqual((a("alice.wow"), a("ca.wow")), ("10.128.0.5", "10.128.0.2"))
        with open(path, "w") as f:
            f.write("10.128.0.6 bob\n10.128.0.9 ca\n")
        loader.reload()
        self.assertEqual((a("alice.wow"), a("bob.wow"), a("ca.wow")),
                         (None, "10.128.0.6", "10.128.0.2"))
        os.remove(path)
        loader.reload()  # unreadable: the old names stay
        self.assertEqual(a("bob.wow"), "10.128.0.6")
        self.assertEqual(engine.counters.get("dns_reloads_failed"), 1)
        self.flushLoggedErrors()


class DhtCacheTests(SynchronousTestCase):
    def test_negative_cache_and_one_request_in_flight(self) -> None:
        asked: list[str] = []
        pending: list[Deferred[tuple[bytes, float] | None]] = []

        class SlowKv(MemoryAtomicStore):
            def get(self, key: str) -> Deferred[tuple[bytes, float] | None]:
                asked.append(key)
                d: Deferred[tuple[bytes, float] | None] = Deferred()
                pending.append(d)
                return d

        store = DhtNameStore(SlowKv(Clock()), NET, compact(), negative_ttl=30)
        name = to_wire("ghost.wow")
        first, second = store.fetch_a(name, 1000), store.fetch_a(name, 1000)
        self.assertEqual(len(asked), 1)
        pending[0].callback(None)
        self.assertIsNone(self.successResultOf(first))
        self.assertIsNone(self.successResultOf(second))
        self.assertIsNone(self.successResultOf(store.fetch_a(name, 1020)))
        self.assertEqual(len(asked), 1)  # believed for 30 s
        store.fetch_a(name, 1031)
        self.assertEqual(len(asked), 2)
        # Two callers of a hit both get the address; a failure reaches both.
        alice = to_wire("alice.wow")
        one, two = store.fetch_a(alice, 1000), store.fetch_a(alice, 1000)
        pending[-1].callback((b"10.128.0.5", 600.0))
        for d in (one, two):
            self.assertEqual(self.successResultOf(d), (socket.inet_aton("10.128.0.5"), 600))
        bob = to_wire("bob.wow")
        one, two = store.fetch_a(bob, 1000), store.fetch_a(bob, 1000)
        pending[-1].errback(RuntimeError("dht down"))
        for d in (one, two):
            self.failureResultOf(d, RuntimeError)


class NodeDnsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(5000)
        self.network = NetworkSection()

    def test_answers_for_leases_from_the_tap(self) -> None:
        node = NodeDns(self.network, NodeDnsSection(records=("ca A 10.128.0.2",)), self.clock)
        self.successResultOf(node.lease_added("10.128.0.5", 3600, "alice"))
        m = parse(node.answer(query("alice.wow"), "10.128.0.5"))
        self.assertEqual((m.answers[0].payload.dottedQuad(), m.answers[0].ttl),
                         ("10.128.0.5", 3600))
        self.assertEqual(parse(node.answer(query("c10-128-0-5.wow"), "10.128.0.5")).rCode, dns.OK)
        self.assertEqual(parse(node.answer(query("ca.wow"), "10.128.0.5")).rCode, dns.OK)
        self.clock.advance(600)
        self.assertEqual(parse(node.answer(query("alice.wow"), "10.128.0.5")).answers[0].ttl, 3000)
        # Off-net sources are refused even here.
        self.assertEqual(parse(node.answer(query("alice.wow"), "192.0.2.1")).rCode, dns.EREFUSED)
        node.lease_removed("10.128.0.5")
        self.assertEqual(parse(node.answer(query("alice.wow"), "10.128.0.5")).rCode, dns.ENAME)

    def test_packets_from_the_tap(self) -> None:
        from ipaddress import IPv4Address

        from wow.net.ipv4 import PROTO_UDP, IPv4Packet, parse_ipv4
        from wow.net.udp import UDPDatagram, build_udp, parse_udp

        node = NodeDns(self.network, NodeDnsSection(), self.clock)
        self.successResultOf(node.lease_added("10.128.0.5", 3600, "alice"))
        host, gateway = IPv4Address("10.128.0.5"), IPv4Address("10.128.0.1")
        udp = build_udp(UDPDatagram(40000, 53, query("alice.wow")), host, gateway)
        reply = node.answer_packet(IPv4Packet(host, gateway, PROTO_UDP, udp))
        assert isinstance(reply, bytes)
        packet = parse_ipv4(reply)
        self.assertEqual((packet.src, packet.dst), (gateway, host))
        datagram = parse_udp(packet.payload, packet.src, packet.dst)
        self.assertEqual((datagram.src_port, datagram.dst_port), (53, 40000))
        self.assertEqual(parse(datagram.payload).answers[0].payload.dottedQuad(), "10.128.0.5")
        bad = bytearray(udp)
        bad[6] ^= 0xFF  # checksum
        self.assertIsNone(node.answer_packet(IPv4Packet(host, gateway, PROTO_UDP, bytes(bad))))
        self.assertEqual(node.counters.get("dns_queries_dropped", reason="udp-bad-checksum"), 1)

    def test_node_records_use_the_network_domain(self) -> None:
        from wow.node.config import load_node_config
        from wow.util.config import ConfigError

        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[network]\ndomain = "lab"\n[dns]\nrecords = ["ca.lab. A 10.128.0.2"]\n')
        config = load_node_config(path)
        node = NodeDns(config.network, config.dns, self.clock)
        self.assertEqual(parse(node.answer(query("ca.lab"), "10.128.0.5")).rCode, dns.OK)
        self.assertRaises(ConfigError, NodeDns, config.network,
                          NodeDnsSection(records=("x.wow. A 10.0.0.1",)), self.clock)

    def test_renamed_host_drops_its_old_name(self) -> None:
        node = NodeDns(self.network, NodeDnsSection(), self.clock)
        self.successResultOf(node.lease_added("10.128.0.5", 3600, "alice"))
        self.successResultOf(node.lease_added("10.128.0.5", 3600, "alicia"))
        self.assertEqual(parse(node.answer(query("alice.wow"), "10.128.0.5")).rCode, dns.ENAME)
        self.assertEqual(parse(node.answer(query("alicia.wow"), "10.128.0.5")).rCode, dns.OK)

    def test_fqdn_option_and_configured_name(self) -> None:
        node = NodeDns(self.network, NodeDnsSection(), self.clock)
        self.assertEqual(self.successResultOf(node.lease_added("10.128.0.5", 600, "",
                                                               "bob.example.org")),
                         to_wire("bob.wow"))
        fixed = NodeDns(self.network, NodeDnsSection(), self.clock, host_name="carol")
        self.assertEqual(self.successResultOf(fixed.lease_added("10.128.0.6", 600, "dhcpname")),
                         to_wire("carol.wow"))

    def test_rename_with_a_dht_keeps_the_dht_consistent(self) -> None:
        kv = MemoryAtomicStore(self.clock)
        node = NodeDns(self.network, NodeDnsSection(), self.clock, kv=kv)
        self.successResultOf(node.lease_added("10.128.0.5", 600, "alice"))
        self.successResultOf(node.lease_added("10.128.0.5", 600, "alicia"))
        keys = {k: v[0] for k, v in kv.data.items()}
        self.assertEqual(keys, {
            f"dns:{NET}:c10-128-0-5.wow": b"10.128.0.5",
            f"dns:{NET}:alicia.wow": b"10.128.0.5",
            f"dns:{NET}:ptr:10.128.0.5": b"alicia.wow",
        })
        node.lease_removed("10.128.0.5")
        self.assertEqual(kv.data, {})

    def test_with_a_dht(self) -> None:
        kv = MemoryAtomicStore(self.clock)
        a = NodeDns(self.network, NodeDnsSection(), self.clock, kv=kv)
        b = NodeDns(self.network, NodeDnsSection(), self.clock, kv=kv)
        self.successResultOf(a.lease_added("10.128.0.5", 3600, "alice"))
        self.assertEqual(self.successResultOf(b.lease_added("10.128.0.6", 3600, "alice")),
                         to_wire("c10-128-0-6.wow"))
        # b answers for a's name by asking the DHT.
        d = b.answer(query("alice.wow"), "10.128.0.6")
        self.assertIsInstance(d, Deferred)
        m = parse(self.successResultOf(d))
        self.assertEqual(m.answers[0].payload.dottedQuad(), "10.128.0.5")
        # ... and from its cache the second time, on the fast path.
        self.assertIsInstance(b.answer(query("alice.wow"), "10.128.0.6"), bytes)
        # The PTR record of an address not cached yet comes from the DHT too.
        c = NodeDns(self.network, NodeDnsSection(), self.clock, kv=kv)
        d = c.answer(query("5.0.128.10.in-addr.arpa", dns.PTR), "10.128.0.7")
        self.assertIsInstance(d, Deferred)
        m = parse(self.successResultOf(d))
        self.assertEqual(m.answers[0].payload.name.name, b"alice.wow")


class FlakyStore(MemoryAtomicStore):
    """Fails the first C{failures} creates with an unknown outcome (a DHT timeout)."""

    def __init__(self, clock: Clock, failures: int) -> None:
        super().__init__(clock)
        self.failures = failures

    def create(self, key: str, value: bytes, ttl: float) -> Deferred[bool]:
        from twisted.internet.defer import fail

        if self.failures > 0:
            self.failures -= 1
            return fail(RuntimeError("timeout"))
        return super().create(key, value, ttl)


class ClaimRetryTests(SynchronousTestCase):
    def test_unknown_outcomes_are_retried(self) -> None:
        clock = Clock()
        kv = FlakyStore(clock, failures=2)
        counters = Counters()
        claims = NameClaims(kv, NET, WOW, compact(), clock, counters)
        d = claims.claim("10.128.0.5", 600, "alice")
        self.assertNoResult(d)
        clock.pump([1.0] * 20)
        self.assertEqual(self.successResultOf(d), to_wire("alice.wow"))
        self.assertEqual(self.successResultOf(kv.get(next(
            k for k in kv.data if k.endswith("alice.wow"))))[0], b"10.128.0.5")
        self.assertGreater(counters.get("dns_name_claim_retries"), 0)

    def test_never_answered_keeps_answering_locally(self) -> None:
        clock = Clock()
        kv = FlakyStore(clock, failures=10**6)
        counters = Counters()
        store = compact()
        claims = NameClaims(kv, NET, WOW, store, clock, counters)
        d = claims.claim("10.128.0.5", 600, "alice")
        clock.pump([1.0] * 60)
        self.assertEqual(self.successResultOf(d), to_wire("alice.wow"))
        self.assertGreater(counters.get("dns_name_claims_failed"), 0)
