"""
The sans-I/O DNS engine: fast path against slow path, EDNS0 sizes,
truncation, forwarding, access control, bad input, and the UDP/TCP adapters.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.names import dns
from twisted.names.error import DNSQueryTimeoutError
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from wow.dns.authority import ZoneAuthority
from wow.dns.config import parse_static
from wow.dns.engine import DnsEngine, IUpstream, Sources, minimal_response
from wow.dns.fastpath import make_fastpath
from wow.dns.names import to_wire
from wow.dns.server import DnsDatagramProtocol, DnsStreamFactory, DnsStreamProtocol
from wow.dns.store import CompactStore
from wow.metrics import Counters

NET = ipaddress.IPv4Network("10.128.0.0/16")
ON_NET = "10.128.0.50"
OFF_NET = "192.0.2.7"
BIG_TXT = "big TXT " + " ".join(["x" * 200] * 8)  # ~1.6 kB of TXT data


@implementer(IUpstream)
class FakeUpstream:
    """Answers every question with one A record, or fails when told to."""

    def __init__(self) -> None:
        self.asked: list[tuple[bytes, int, int]] = []
        self.failure: Exception | None = None
        self.pending: Deferred[dns.Message] | None = None

    def query(self, name: bytes, qtype: int, qclass: int) -> Deferred[dns.Message]:
        self.asked.append((name, qtype, qclass))
        if self.failure is not None:
            return fail(self.failure)
        m = dns.Message(answer=1, recAv=1)
        m.queries = [dns.Query(name, qtype, qclass)]
        m.answers = [dns.RRHeader(name, dns.A, dns.IN, 42, dns.Record_A("192.0.2.99", 42))]
        return succeed(m)


def build(upstream: FakeUpstream | None = None, fast: bool = True, max_udp: int = 1232
          ) -> tuple[DnsEngine, Clock, Counters]:
    clock = Clock()
    clock.advance(10_000)
    store = CompactStore(to_wire("wow"), NET, default_ttl=300)
    store.load_hosts([b"10.128.0.5 alice", b"10.128.0.6 bob bobby", b"10.128.0.7 a.lab",
                      b"10.128.0.8 " + b"x" * 63 + b"." + b"y" * 63 + b"." + b"z" * 63])
    store.add(to_wire("carol.wow"), bytes([10, 128, 0, 9]), 10_100.0)
    static = [parse_static(r, "wow", 300) for r in
              ("ca A 10.128.0.2", "www CNAME ca", BIG_TXT, "mid TXT " + "y" * 200 + " "
               + "y" * 200 + " " + "y" * 200)]
    auth = ZoneAuthority("wow", NET, store, clock, nameservers=[("ns", "10.128.0.1")],
                         static=static)
    counters = Counters()
    engine = DnsEngine(auth, clock, counters, Sources([str(NET), "127.0.0.0/8"]), upstream,
                       max_udp)
    if not fast:
        engine._fast = lambda q, r, n: None  # type: ignore[method-assign]
    return engine, clock, counters


def query(name: str | bytes, qtype: int = dns.A, *, ident: int = 4242, rd: bool = True,
          edns: int | None = None, cls: int = dns.IN, cd: bool = False) -> bytes:
    m = dns.Message(id=ident, recDes=int(rd))
    m.checkingDisabled = int(cd)
    m.queries = [dns.Query(name, qtype, cls)]
    if edns is not None:
        m.additional = [dns.RRHeader(b"", dns.OPT, edns, 0, dns.UnknownRecord(b""))]
    return m.toStr()


def parse(data: Any) -> dns.Message:
    assert isinstance(data, bytes), data
    m = dns.Message()
    m.fromStr(data)
    return m


def summary(data: bytes) -> tuple[Any, ...]:
    """What must be equal between two answers, whatever the name compression."""
    m = parse(data)

    def rrs(section: list[dns.RRHeader]) -> list[tuple[Any, ...]]:
        return [(r.name.name.lower(), r.type, r.cls, r.ttl, repr(r.payload)) for r in section]

    return (m.id, m.answer, m.opCode, m.auth, m.trunc, m.recDes, m.recAv, m.rCode,
            m.checkingDisabled, [(q.name.name, q.type, q.cls) for q in m.queries],
            rrs(m.answers), rrs(m.authority), rrs(m.additional))


NAMES = ["alice.wow", "ALICE.WoW", "bobby.wow", "carol.wow", "c10-128-0-6.wow", "C10-128-0-5.WOW",
         "c10-128-0-99.wow", "nobody.wow", "lab.wow", "a.lab.wow", "wow", "ns.wow", "ca.wow",
         "www.wow", "6.0.128.10.in-addr.arpa", "5.0.128.10.IN-ADDR.ARPA", "8.0.128.10.in-addr.arpa",
         "99.0.128.10.in-addr.arpa", "0.128.10.in-addr.arpa", "128.10.in-addr.arpa",
         "5.0.129.10.in-addr.arpa", "example.com", "xwow"]
TYPES = [dns.A, dns.PTR, dns.AAAA, dns.MX, dns.TXT, dns.SOA, dns.NS, dns.CNAME, dns.SRV]


class FastPathTests(SynchronousTestCase):
    @given(st.sampled_from(NAMES), st.sampled_from(TYPES),
           st.sampled_from([None, 512, 1232, 4096, 100]), st.booleans(), st.booleans(),
           st.integers(0, 0xFFFF), st.booleans())
    def test_fast_path_equals_slow_path(self, name: str, qtype: int, edns: int | None, rd: bool,
                                        cd: bool, ident: int, upstream: bool) -> None:
        up = FakeUpstream() if upstream else None
        fast, _, _ = build(up)
        slow, _, _ = build(up, fast=False)
        q = query(name, qtype, ident=ident, rd=rd, edns=edns, cd=cd)
        self.assertEqual(summary(self.settle(fast.answer(q, ON_NET))),
                         summary(self.settle(slow.answer(q, ON_NET))))

    def settle(self, answer: Any) -> Any:
        return self.successResultOf(answer) if isinstance(answer, Deferred) else answer

    def test_fast_path_is_used_for_common_queries(self) -> None:
        engine, _, _ = build()
        for q in (query("alice.wow"), query("Bob.wow", edns=1232),
                  query("5.0.128.10.in-addr.arpa", dns.PTR), query("c10-128-0-5.wow")):
            engine.answer(q, ON_NET)
        self.assertEqual((engine.fast_answers, engine.slow_answers), (4, 0))
        # Negative answers and other types go the slow way.
        engine.answer(query("nobody.wow"), ON_NET)
        engine.answer(query("alice.wow", dns.AAAA), ON_NET)
        self.assertEqual((engine.fast_answers, engine.slow_answers), (4, 2))
        engine.flush_counts()
        self.assertEqual((engine.counters.get("dns_answers", path="fast"),
                          engine.counters.get("dns_answers", path="general")), (4, 2))
        self.assertEqual((engine.fast_answers, engine.slow_answers), (0, 0))

    def test_fast_answer_bytes(self) -> None:
        engine, _, _ = build()
        q = query("alice.wow", ident=0x1234)
        r = engine.answer(q, ON_NET)
        self.assertEqual(r, b"\x12\x34\x85\x00\x00\x01\x00\x01\x00\x00\x00\x00" + q[12:]
                         + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x01\x2c\x00\x04\x0a\x80\x00\x05")

    def test_ttl_follows_lease(self) -> None:
        engine, clock, _ = build()
        self.assertEqual(parse(engine.answer(query("carol.wow"), ON_NET)).answers[0].ttl, 100)
        clock.advance(70)
        self.assertEqual(parse(engine.answer(query("carol.wow"), ON_NET)).answers[0].ttl, 30)
        clock.advance(30)
        self.assertEqual(parse(engine.answer(query("carol.wow"), ON_NET)).rCode, dns.ENAME)

    @given(st.binary(max_size=600))
    def test_fuzz_fast_path(self, data: bytes) -> None:
        engine, _, _ = build()
        fast = make_fastpath(engine.authority.store, 1232)
        r = fast(data, True, 10_000.0)
        if r is not None:
            m = parse(r)
            self.assertEqual(r[:2], data[:2])
            self.assertEqual((m.answer, m.rCode, len(m.answers)), (1, dns.OK, 1))

    @given(st.sampled_from(NAMES[:8]), st.integers(0, 40), st.binary(min_size=1, max_size=1))
    def test_fuzz_mutated_queries(self, name: str, where: int, byte: bytes) -> None:
        """A valid query with one byte changed never breaks either path."""
        engine, _, _ = build()
        q = bytearray(query(name, edns=1232))
        q[where % len(q)] = byte[0]
        for client in (ON_NET, OFF_NET):
            r = engine.answer(bytes(q), client)
            if r is not None:
                self.assertIsInstance(r, bytes)
                self.assertEqual(r[:2], bytes(q[:2]))


class EdnsAndTruncationTests(SynchronousTestCase):
    def test_plain_udp_limit_is_512(self) -> None:
        engine, _, counters = build()
        m = parse(engine.answer(query("mid.wow", dns.TXT), ON_NET))
        self.assertEqual((m.trunc, m.answers), (1, []))
        self.assertEqual(counters.get("dns_responses_truncated"), 1)

    def test_edns_size_is_respected(self) -> None:
        engine, _, _ = build()
        data = engine.answer(query("mid.wow", dns.TXT, edns=1232), ON_NET)
        m = parse(data)
        self.assertEqual((m.trunc, len(m.answers)), (0, 1))
        self.assertGreater(len(data), 512)
        opt = [a for a in m.additional if a.type == dns.OPT]
        self.assertEqual([o.cls for o in opt], [1232])

    def test_our_limit_caps_the_clients(self) -> None:
        engine, _, _ = build(max_udp=600)
        m = parse(engine.answer(query("mid.wow", dns.TXT, edns=4096), ON_NET))
        self.assertEqual((m.trunc, m.answers), (1, []))
        self.assertEqual([o.cls for o in m.additional if o.type == dns.OPT], [600])

    def test_small_edns_size_means_512(self) -> None:
        engine, _, _ = build()
        m = parse(engine.answer(query("alice.wow", edns=100), ON_NET))
        self.assertEqual(m.answers[0].payload.dottedQuad(), "10.128.0.5")

    def test_tcp_answers_fully(self) -> None:
        engine, _, _ = build()
        data = engine.answer(query("big.wow", dns.TXT), ON_NET, tcp=True)
        m = parse(data)
        self.assertEqual((m.trunc, len(m.answers)), (0, 1))
        self.assertGreater(len(data), 1232)
        m = parse(engine.answer(query("big.wow", dns.TXT, edns=4096), ON_NET))
        self.assertEqual((m.trunc, m.answers), (1, []))

    def test_long_ptr_target_over_plain_udp(self) -> None:
        engine, _, _ = build()
        m = parse(engine.answer(query("8.0.128.10.in-addr.arpa", dns.PTR), ON_NET))
        self.assertEqual(len(m.answers), 1)  # 480 bytes: still fits


class AccessAndForwardingTests(SynchronousTestCase):
    def test_off_net_is_refused_without_amplification(self) -> None:
        engine, _, counters = build(FakeUpstream())
        for q in (query("alice.wow"), query("example.com"), query("mid.wow", dns.TXT, edns=4096),
                  query("alice.wow", dns.ALL_RECORDS, edns=4096)):
            r = engine.answer(q, OFF_NET)
            self.assertLessEqual(len(r), len(q))
            self.assertEqual(parse(r).rCode, dns.EREFUSED)
        self.assertEqual(counters.get("dns_queries_refused", reason="source-not-allowed"), 4)

    def test_off_net_garbage_is_dropped(self) -> None:
        engine, _, counters = build()
        self.assertIsNone(engine.answer(b"\x00\x01\x00\x00\x00\x01" + b"\xff" * 20, OFF_NET))
        self.assertEqual(counters.get("dns_queries_dropped", reason="off-net-garbage"), 1)

    def test_forwarding_for_allowed_clients(self) -> None:
        up = FakeUpstream()
        verifyObject(IUpstream, up)
        engine, _, _ = build(up)
        d = engine.answer(query("example.com"), ON_NET)
        m = parse(self.successResultOf(d))
        self.assertEqual((m.rCode, m.recAv, m.auth), (dns.OK, 1, 0))
        self.assertEqual(m.answers[0].payload.dottedQuad(), "192.0.2.99")
        self.assertEqual(up.asked, [(b"example.com", dns.A, dns.IN)])

    def test_loopback_is_allowed_but_ipv6_elsewhere_is_not(self) -> None:
        engine, _, _ = build(FakeUpstream())
        self.assertIsInstance(engine.answer(query("example.com"), "127.0.0.1"), Deferred)
        self.assertIsInstance(engine.answer(query("example.com"), "::ffff:10.128.0.3"), Deferred)
        self.assertEqual(parse(engine.answer(query("example.com"), "2001:db8::1")).rCode,
                         dns.EREFUSED)

    def test_no_recursion_desired_is_refused(self) -> None:
        engine, _, _ = build(FakeUpstream())
        self.assertEqual(parse(engine.answer(query("example.com", rd=False), ON_NET)).rCode,
                         dns.EREFUSED)

    def test_no_upstream_refuses_foreign_names(self) -> None:
        engine, _, counters = build()
        m = parse(engine.answer(query("example.com"), ON_NET))
        self.assertEqual((m.rCode, m.recAv), (dns.EREFUSED, 0))
        self.assertEqual(counters.get("dns_queries_refused", reason="no-upstream"), 1)

    def test_upstream_failure_is_servfail(self) -> None:
        up = FakeUpstream()
        up.failure = DNSQueryTimeoutError(None)
        engine, _, counters = build(up)
        m = parse(self.successResultOf(engine.answer(query("example.com"), ON_NET)))
        self.assertEqual(m.rCode, dns.ESERVER)
        self.assertEqual(counters.get("dns_queries_failed"), 1)


class BadInputTests(SynchronousTestCase):
    def rcode(self, data: bytes, client: str = ON_NET) -> int:
        engine, _, _ = build()
        return parse(engine.answer(data, client)).rCode

    def test_drops(self) -> None:
        engine, _, counters = build()
        self.assertIsNone(engine.answer(b"\x00" * 11, ON_NET))
        response = bytearray(query("alice.wow"))
        response[2] |= 0x80
        self.assertIsNone(engine.answer(bytes(response), ON_NET))
        self.assertIsNone(engine.answer(b"\x00" * 70000, ON_NET))
        self.assertEqual(counters.get("dns_queries_dropped"), 3)

    def test_any_is_notimp(self) -> None:
        self.assertEqual(self.rcode(query("alice.wow", dns.ALL_RECORDS)), dns.ENOTIMP)

    def test_other_classes_and_transfers_are_refused(self) -> None:
        self.assertEqual(self.rcode(query("version.bind", dns.TXT, cls=dns.CH)), dns.EREFUSED)
        self.assertEqual(self.rcode(query("wow", dns.AXFR)), dns.EREFUSED)
        self.assertEqual(self.rcode(query("wow", dns.IXFR)), dns.EREFUSED)

    def test_unknown_type_in_zone_is_nodata(self) -> None:
        engine, _, _ = build()
        m = parse(engine.answer(query("alice.wow", 65400), ON_NET))
        self.assertEqual((m.rCode, m.answers, m.authority[0].type), (dns.OK, [], dns.SOA))

    def test_other_opcodes_are_notimp(self) -> None:
        q = bytearray(query("alice.wow"))
        q[2] |= 5 << 3  # UPDATE
        self.assertEqual(self.rcode(bytes(q)), dns.ENOTIMP)

    def test_formerr(self) -> None:
        two = dns.Message(id=1)
        two.queries = [dns.Query(b"a.wow"), dns.Query(b"b.wow")]
        self.assertEqual(self.rcode(two.toStr()), dns.EFORMAT)
        truncated = query("alice.wow")[:-3]
        self.assertEqual(self.rcode(truncated), dns.EFORMAT)
        loop = struct.pack(">HHHHHH", 9, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01"
        self.assertEqual(self.rcode(loop), dns.EFORMAT)
        two_opts = dns.Message(id=2)
        two_opts.queries = [dns.Query(b"alice.wow")]
        two_opts.additional = [dns.RRHeader(b"", dns.OPT, 1232, 0, dns.UnknownRecord(b""))] * 2
        self.assertEqual(self.rcode(two_opts.toStr()), dns.EFORMAT)

    def test_bad_edns_version(self) -> None:
        m = dns.Message(id=3)
        m.queries = [dns.Query(b"alice.wow")]
        m.additional = [dns.RRHeader(b"", dns.OPT, 1232, 1 << 16, dns.UnknownRecord(b""))]
        engine, _, _ = build()
        r = parse(engine.answer(m.toStr(), ON_NET))
        [opt] = [a for a in r.additional if a.type == dns.OPT]
        self.assertEqual((r.rCode, opt.ttl >> 24), (0, 1))  # BADVERS = 16 = 1 << 4 | 0

    def test_minimal_response_never_grows(self) -> None:
        q = query("alice.wow", edns=4096)
        self.assertLessEqual(len(minimal_response(q, 5)), len(q))

    @given(st.binary(max_size=700), st.sampled_from([ON_NET, OFF_NET]), st.booleans())
    def test_fuzz_engine(self, data: bytes, client: str, tcp: bool) -> None:
        engine, _, _ = build()
        r = engine.answer(data, client, tcp=tcp)
        if r is not None:
            self.assertIsInstance(r, bytes)
            if client == OFF_NET and not tcp:
                self.assertLessEqual(len(r), len(data))


class FakeUdpTransport:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def write(self, data: bytes, addr: Any) -> None:
        self.sent.append((data, addr))


class AdapterTests(SynchronousTestCase):
    def test_udp(self) -> None:
        engine, _, _ = build(FakeUpstream())
        proto = DnsDatagramProtocol(engine)
        proto.transport = FakeUdpTransport()  # type: ignore[assignment]
        proto.datagramReceived(query("alice.wow"), (ON_NET, 5000))
        proto.datagramReceived(query("example.com"), (ON_NET, 5001))
        proto.datagramReceived(b"junk", (ON_NET, 5002))
        sent = proto.transport.sent  # type: ignore[attr-defined]
        self.assertEqual([a for _, a in sent], [(ON_NET, 5000), (ON_NET, 5001)])
        self.assertEqual(parse(sent[1][0]).answers[0].payload.dottedQuad(), "192.0.2.99")

    def test_udp_survives_engine_bugs(self) -> None:
        engine, _, counters = build()
        engine.answer = lambda *a, **k: 1 / 0  # type: ignore[method-assign,assignment,misc]
        proto = DnsDatagramProtocol(engine)
        proto.transport = FakeUdpTransport()  # type: ignore[assignment]
        proto.datagramReceived(query("alice.wow"), (ON_NET, 5000))
        self.assertEqual(counters.get("dns_queries_dropped", reason="internal-error"), 1)
        self.flushLoggedErrors(ZeroDivisionError)

    def tcp(self) -> tuple[DnsStreamProtocol, StringTransport, Clock]:
        engine, _, _ = build()
        clock = Clock()
        proto = DnsStreamProtocol(engine, 30, clock)
        transport = StringTransport(peerAddress=_Addr(ON_NET))
        proto.makeConnection(transport)
        return proto, transport, clock

    def test_tcp_pipelined_and_split(self) -> None:
        proto, transport, _ = self.tcp()
        q1, q2 = query("big.wow", dns.TXT, ident=1), query("alice.wow", ident=2)
        stream = struct.pack(">H", len(q1)) + q1 + struct.pack(">H", len(q2)) + q2
        proto.dataReceived(stream[:5])
        proto.dataReceived(stream[5:])
        out = transport.value()
        (n1,) = struct.unpack(">H", out[:2])
        m1, rest = parse(out[2:2 + n1]), out[2 + n1:]
        m2 = parse(rest[2:])
        self.assertEqual((m1.id, m1.trunc, len(m1.answers)), (1, 0, 1))
        self.assertEqual((m2.id, m2.answers[0].payload.dottedQuad()), (2, "10.128.0.5"))

    @given(st.lists(st.binary(max_size=300), max_size=8))
    def test_fuzz_tcp_stream(self, chunks: list[bytes]) -> None:
        proto, transport, _ = self.tcp()
        for chunk in chunks:
            proto.dataReceived(chunk)
        out = transport.value()
        while len(out) >= 2:  # whatever came back is well-framed DNS
            (n,) = struct.unpack(">H", out[:2])
            self.assertGreaterEqual(len(out), 2 + n)
            self.assertGreaterEqual(n, 12)
            out = out[2 + n:]
        self.assertEqual(out, b"")

    def test_tcp_idle_timeout_and_zero_length(self) -> None:
        proto, transport, clock = self.tcp()
        clock.advance(31)
        self.assertTrue(transport.disconnecting)
        proto, transport, clock = self.tcp()
        proto.dataReceived(b"\x00\x00")
        self.assertTrue(transport.disconnecting)


class TcpLimitTests(SynchronousTestCase):
    def test_connection_limit(self) -> None:
        engine, _, counters = build()
        factory = DnsStreamFactory(engine, 30, Clock(), max_connections=2)
        protos = [factory.buildProtocol(_Addr(ON_NET)) for _ in range(3)]
        self.assertIsNone(protos[2])
        self.assertEqual(counters.get("dns_tcp_refused"), 1)
        protos[0].makeConnection(StringTransport(peerAddress=_Addr(ON_NET)))  # type: ignore[union-attr]
        protos[0].connectionLost(None)  # type: ignore[union-attr]
        self.assertIsNotNone(factory.buildProtocol(_Addr(ON_NET)))


class _Addr:
    def __init__(self, host: str) -> None:
        self.host = host
        self.port = 40000
