"""
Names, the compact store, the zone authority and the wow-dns configuration.
"""

from __future__ import annotations

import ipaddress
import socket

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.names import dns
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from wow.dns import names
from wow.dns.authority import ZoneAuthority
from wow.dns.config import load_dns_config, parse_static, parse_upstream
from wow.dns.store import DENSE_REVERSE_LIMIT, CompactStore, INameStore
from wow.util.config import ConfigError

NET = ipaddress.IPv4Network("10.128.0.0/16")
WOW = names.to_wire("wow")


def ip(text: str) -> bytes:
    return socket.inet_aton(text)


class NamesTests(SynchronousTestCase):
    def test_wire_round_trip_and_case(self) -> None:
        self.assertEqual(names.to_wire("Alice.WOW."), b"\x05alice\x03wow\x00")
        self.assertEqual(names.from_wire(b"\x05alice\x03wow\x00"), "alice.wow.")
        self.assertEqual(names.to_wire("."), b"\x00")

    def test_bad_names(self) -> None:
        self.assertRaises(names.BadName, names.to_wire, "a..b")
        self.assertRaises(names.BadName, names.to_wire, "x" * 64 + ".wow")
        self.assertRaises(names.BadName, names.to_wire, ".".join(["abcdefghi"] * 30))

    def test_valid_hostname(self) -> None:
        for good in ("alice", "node-1", "A1"):
            self.assertTrue(names.valid_hostname(good), good)
        for bad in ("", "-a", "a-", "a.b", "a_b", "é", "x" * 64):
            self.assertFalse(names.valid_hostname(bad), bad)

    def test_in_zone_is_label_aligned(self) -> None:
        self.assertTrue(names.in_zone(b"\x01a\x03wow\x00", WOW))
        self.assertTrue(names.in_zone(WOW, WOW))
        self.assertFalse(names.in_zone(b"\x04xwow\x00", WOW))
        # A label whose *content* ends like the zone's wire form.
        self.assertFalse(names.in_zone(b"\x07ab\x03wow\x00", WOW))

    def test_derived(self) -> None:
        self.assertEqual(names.derived_label(ip("10.128.0.5")), b"c10-128-0-5")
        self.assertEqual(names.derived_wire(ip("10.128.0.5"), WOW), b"\x0bc10-128-0-5\x03wow\x00")
        self.assertEqual(names.parse_derived_label(b"c10-128-0-5"), ip("10.128.0.5"))
        for bad in (b"c10-128-0-256", b"c10-128-0", b"c010-128-0-5", b"d10-128-0-5", b"c1-2-3-4-5"):
            self.assertIsNone(names.parse_derived_label(bad), bad)

    def test_ptr(self) -> None:
        wire = names.ptr_wire(ip("10.128.0.5"))
        self.assertEqual(names.from_wire(wire), "5.0.128.10.in-addr.arpa.")
        self.assertEqual(names.parse_ptr_wire(wire), ip("10.128.0.5"))
        for bad in ("0.128.10.in-addr.arpa", "1.5.0.128.10.in-addr.arpa",
                    "05.0.128.10.in-addr.arpa",
                    "256.0.128.10.in-addr.arpa", "x.0.128.10.in-addr.arpa", "in-addr.arpa"):
            self.assertIsNone(names.parse_ptr_wire(names.to_wire(bad)), bad)

    def test_reverse_zone(self) -> None:
        self.assertEqual(names.from_wire(names.reverse_zone_wire(NET)), "128.10.in-addr.arpa.")
        self.assertEqual(names.from_wire(names.reverse_zone_wire(
            ipaddress.IPv4Network("10.0.0.0/12"))), "10.in-addr.arpa.")

    @given(st.binary(max_size=80))
    def test_parsers_never_raise(self, data: bytes) -> None:
        names.parse_derived_label(data)
        wire = data + b"\x07in-addr\x04arpa\x00"
        try:
            names.parse_ptr_wire(wire)
        except IndexError:
            pass  # not a wire name at all: callers only pass parsed names
        try:
            names.to_wire(data)
        except (names.BadName, UnicodeDecodeError):
            pass

    @given(st.ip_addresses(v=4))
    def test_derived_and_ptr_round_trip(self, address: ipaddress.IPv4Address) -> None:
        packed = address.packed
        self.assertEqual(names.parse_derived_label(names.derived_label(packed)), packed)
        self.assertEqual(names.parse_ptr_wire(names.ptr_wire(packed)), packed)


class CompactStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.store = CompactStore(WOW, NET, default_ttl=300)

    def test_interface(self) -> None:
        verifyObject(INameStore, self.store)

    def test_load_hosts(self) -> None:
        loaded, rejected = self.store.load_hosts([
            b"10.128.0.5 alice  # comment", b"10.128.0.6 Bob bobby.wow.", b"# only a comment",
            b"", b"10.128.0.300 bad", b"10.128.0.7", b"10.128.0.8 -bad", b"10.128.0.9 x.example.",
            b"10.128.0.10 a.lab",
        ])
        self.assertEqual((loaded, rejected), (4, 4))
        self.assertEqual(self.store.lookup_a(names.to_wire("bob.wow"), 0), (ip("10.128.0.6"), 300))
        self.assertEqual(self.store.lookup_a(names.to_wire("bobby.wow"), 0),
                         (ip("10.128.0.6"), 300))
        # The first name of a line is the address's PTR target.
        self.assertEqual(self.store.lookup_ptr(ip("10.128.0.6"), 0),
                         (names.to_wire("bob.wow"), 300))
        self.assertTrue(self.store.is_empty_nonterminal(names.to_wire("lab.wow")))
        self.assertFalse(self.store.is_empty_nonterminal(names.to_wire("alice.wow")))

    def test_derived_names_need_a_record(self) -> None:
        self.store.add(names.to_wire("alice.wow"), ip("10.128.0.5"), None)
        self.assertEqual(self.store.lookup_a(names.to_wire("c10-128-0-5.wow"), 0),
                         (ip("10.128.0.5"), 300))
        self.assertIsNone(self.store.lookup_a(names.to_wire("c10-128-0-6.wow"), 0))
        self.assertIsNone(self.store.lookup_a(names.to_wire("c10-128-0-5.x.wow"), 0))
        off = CompactStore(WOW, NET, derived=False)
        off.add(names.to_wire("alice.wow"), ip("10.128.0.5"), None)
        self.assertIsNone(off.lookup_a(names.to_wire("c10-128-0-5.wow"), 0))

    def test_ttl_follows_lease(self) -> None:
        self.store.add(names.to_wire("carol.wow"), ip("10.128.0.9"), 1100.0)
        self.assertEqual(self.store.lookup_a(names.to_wire("carol.wow"), 1000.0)[1], 100)
        self.assertEqual(self.store.lookup_a(names.to_wire("carol.wow"), 1060.5)[1], 39)
        self.assertEqual(self.store.lookup_ptr(ip("10.128.0.9"), 1060.5)[1], 39)
        self.assertIsNone(self.store.lookup_a(names.to_wire("carol.wow"), 1100.0))
        self.assertIsNone(self.store.lookup_ptr(ip("10.128.0.9"), 1100.0))

    def test_remove_and_readd(self) -> None:
        alice, bob = names.to_wire("alice.wow"), names.to_wire("bob.wow")
        self.store.add(alice, ip("10.128.0.5"), None)
        self.store.add(bob, ip("10.128.0.5"), None)
        self.store.remove(alice)
        self.assertIsNone(self.store.lookup_a(alice, 0))
        self.assertIsNone(self.store.lookup_ptr(ip("10.128.0.5"), 0))
        self.store.add(alice, ip("10.128.0.7"), None)  # moves
        self.store.add(alice, ip("10.128.0.8"), None)
        self.assertIsNone(self.store.lookup_ptr(ip("10.128.0.7"), 0))
        self.assertEqual(self.store.lookup_ptr(ip("10.128.0.8"), 0)[0], alice)
        self.assertEqual(len(self.store), 2)

    def test_large_subnet_uses_a_dict(self) -> None:
        big = CompactStore(WOW, ipaddress.IPv4Network("10.0.0.0/8"))
        self.assertGreater(ipaddress.IPv4Network("10.0.0.0/8").num_addresses, DENSE_REVERSE_LIMIT)
        big.load_hosts([b"10.200.0.1 far"])
        self.assertEqual(big.lookup_ptr(ip("10.200.0.1"), 0)[0], names.to_wire("far.wow"))
        self.assertEqual(big.lookup_a(names.to_wire("c10-200-0-1.wow"), 0)[0], ip("10.200.0.1"))
        big.remove(names.to_wire("far.wow"))
        self.assertIsNone(big.lookup_ptr(ip("10.200.0.1"), 0))

    def test_addresses_outside_the_subnet_have_no_ptr(self) -> None:
        self.store.load_hosts([b"192.0.2.1 outside"])
        self.assertEqual(self.store.lookup_a(names.to_wire("outside.wow"), 0)[0], ip("192.0.2.1"))
        self.assertIsNone(self.store.lookup_ptr(ip("192.0.2.1"), 0))


def make_authority(clock: Clock | None = None, records: tuple[str, ...] = ()
                   ) -> ZoneAuthority:
    clock = clock or Clock()
    store = CompactStore(WOW, NET)
    store.load_hosts([b"10.128.0.5 alice", b"10.128.0.6 bob", b"10.128.0.7 a.lab"])
    static = [parse_static(r, "wow", 300) for r in records]
    return ZoneAuthority("wow", NET, store, clock, nameservers=[("ns", "10.128.0.1")],
                         static=static)


class AuthorityTests(SynchronousTestCase):
    def resolve(self, auth: ZoneAuthority, name: str, qtype: int):  # type: ignore[no-untyped-def]
        result = auth.resolve(names.to_wire(name), qtype, name.encode())
        return result

    def test_positive_and_case_insensitive(self) -> None:
        auth = make_authority()
        r = self.resolve(auth, "ALICE.wow", dns.A)
        self.assertEqual(r.rcode, dns.OK)
        [a] = r.answers
        self.assertEqual((a.name.name, a.type, a.ttl, a.payload.dottedQuad()),
                         (b"ALICE.wow", dns.A, 300, "10.128.0.5"))
        self.assertTrue(a.auth)

    def test_nxdomain_has_soa(self) -> None:
        r = self.resolve(make_authority(), "nobody.wow", dns.A)
        self.assertEqual(r.rcode, dns.ENAME)
        self.assertEqual(r.answers, [])
        [soa] = r.authority
        self.assertEqual((soa.type, soa.name.name, soa.ttl), (dns.SOA, b"wow", 60))

    def test_nodata_has_soa(self) -> None:
        auth = make_authority()
        for name, qtype in (("alice.wow", dns.AAAA), ("lab.wow", dns.A), ("wow", dns.A),
                            ("5.0.128.10.in-addr.arpa", dns.A), ("0.128.10.in-addr.arpa", dns.PTR)):
            r = self.resolve(auth, name, qtype)
            self.assertEqual((r.rcode, r.answers), (dns.OK, []), name)
            self.assertEqual([a.type for a in r.authority], [dns.SOA], name)

    def test_apex(self) -> None:
        auth = make_authority()
        r = self.resolve(auth, "wow", dns.SOA)
        self.assertEqual([a.type for a in r.answers], [dns.SOA])
        r = self.resolve(auth, "wow", dns.NS)
        self.assertEqual([a.payload.name.name for a in r.answers], [b"ns.wow"])
        self.assertEqual([a.payload.dottedQuad() for a in r.additional], ["10.128.0.1"])
        self.assertEqual(self.resolve(auth, "ns.wow", dns.A).answers[0].payload.dottedQuad(),
                         "10.128.0.1")
        r = self.resolve(auth, "128.10.in-addr.arpa", dns.SOA)
        self.assertEqual([a.type for a in r.answers], [dns.SOA])

    def test_ptr(self) -> None:
        auth = make_authority()
        r = self.resolve(auth, "6.0.128.10.in-addr.arpa", dns.PTR)
        self.assertEqual(r.answers[0].payload.name.name, b"bob.wow")
        r = self.resolve(auth, "99.0.128.10.in-addr.arpa", dns.PTR)
        self.assertEqual(r.rcode, dns.ENAME)
        self.assertEqual(r.authority[0].name.name, b"128.10.in-addr.arpa")

    def test_outside_zones(self) -> None:
        auth = make_authority()
        self.assertIsNone(self.resolve(auth, "example.com", dns.A))
        self.assertIsNone(self.resolve(auth, "5.0.129.10.in-addr.arpa", dns.PTR))
        self.assertIsNone(self.resolve(auth, "xwow", dns.A))

    def test_static_records_and_cname(self) -> None:
        auth = make_authority(records=(
            "ca A 10.128.0.2", "www CNAME ca", "ext CNAME example.com.", "@ MX 10 mail",
            "_est._tcp SRV 0 0 443 ca", "info TXT \"hello world\"", "loop CNAME loop"))
        self.assertEqual(self.resolve(auth, "ca.wow", dns.A).answers[0].payload.dottedQuad(),
                         "10.128.0.2")
        r = self.resolve(auth, "www.wow", dns.A)
        self.assertEqual([a.type for a in r.answers], [dns.CNAME, dns.A])
        r = self.resolve(auth, "ext.wow", dns.A)
        self.assertEqual([a.type for a in r.answers], [dns.CNAME])
        self.assertEqual(self.resolve(auth, "wow", dns.MX).answers[0].payload.preference, 10)
        self.assertEqual(self.resolve(auth, "_est._tcp.wow", dns.SRV).answers[0].payload.port, 443)
        self.assertEqual(self.resolve(auth, "_tcp.wow", dns.SRV).rcode, dns.OK)  # ENT
        self.assertEqual(self.resolve(auth, "info.wow", dns.TXT).answers[0].payload.data,
                         [b"hello world"])
        r = self.resolve(auth, "loop.wow", dns.A)
        self.assertEqual(len(r.answers), 9)  # chased MAX_CHASE times, then given up

    def test_twisted_resolver_interface(self) -> None:
        auth = make_authority()
        answers, _, _ = self.successResultOf(auth.lookupAddress(b"alice.wow"))
        self.assertEqual(answers[0].payload.dottedQuad(), "10.128.0.5")
        self.failureResultOf(auth.lookupAddress(b"nobody.wow"))
        self.failureResultOf(auth.lookupAddress(b"example.com"))


class ConfigTests(SynchronousTestCase):
    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_example_config_is_the_defaults(self) -> None:
        import os

        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.assertEqual(load_dns_config(os.path.join(here, "etc", "wow-dns.toml")),
                         load_dns_config(None))

    def test_errors_are_one_sentence(self) -> None:
        for text, needle in (
            ("[dns]\nport = 70000\n", "dns.port"),
            ("[dns]\nlisten = 'nowhere'\n", "dns.listen"),
            ("[dns]\nsubnet = '10.128.0.1/16'\n", "dns.subnet"),
            ("[dns]\ndomain = 'a..b'\n", "dns.domain"),
            ("[dns]\nupstreams = ['dns.google']\n", "upstreams"),
            ("[dns]\nallowed_sources = ['x']\n", "allowed_sources"),
            ("[dns]\nrecords = ['ca A 10.1']\n", "bad A data"),
            ("[dns]\nrecords = ['ca HINFO x y']\n", "type HINFO"),
            ("[dns]\nrecords = ['x.example. A 10.0.0.1']\n", "outside the domain"),
            ("[dns]\nrecords = ['w CNAME ca', 'w A 10.0.0.1']\n", "CNAME and other"),
            ("[dns]\nbogus = 1\n", "unknown setting dns.bogus"),
            ("[dns]\nmax_udp_size = 100\n", "max_udp_size"),
        ):
            with self.assertRaises(ConfigError) as cm:
                load_dns_config(self.write(text))
            self.assertIn(needle, str(cm.exception))
            self.assertNotIn("\n", str(cm.exception))

    def test_upstreams(self) -> None:
        self.assertEqual(parse_upstream("u", "10.0.0.1"), ("10.0.0.1", 53))
        self.assertEqual(parse_upstream("u", "10.0.0.1:5353"), ("10.0.0.1", 5353))
        self.assertEqual(parse_upstream("u", "[::1]:53"), ("::1", 53))
        self.assertEqual(parse_upstream("u", "::1"), ("::1", 53))
        self.assertRaises(ConfigError, parse_upstream, "u", "10.0.0.1:0")
