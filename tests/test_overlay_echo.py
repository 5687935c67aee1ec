"""
Overlay echo (C{wow ping}) and the NAT facts (C{wow netcheck}) on the real
overlay code in the in-memory simulator.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from wow.metrics import Counters
from wow.overlay import address as A
from wow.overlay.echo import ECHO_KIND, REPLY, REQUEST, Echo, EchoError, build, parse
from wow.overlay.node import Delivery
from wow.overlay.sim import SimNetwork


class _Call:
    def __init__(self) -> None:
        self.cancelled = self.called = False

    def active(self) -> bool:
        return not (self.cancelled or self.called)

    def cancel(self) -> None:
        self.cancelled = True


class SimClock:
    """C{seconds}/C{callLater} over a L{SimNetwork}'s virtual time."""

    def __init__(self, net: SimNetwork) -> None:
        self.net = net

    def seconds(self) -> float:
        return self.net.now

    def callLater(self, delay: float, fn: Any, *args: Any) -> _Call:
        call = _Call()

        def fire() -> None:
            if call.active():
                call.called = True
                fn(*args)

        self.net.call_at(self.net.now + delay, fire)
        return call


def ring(n: int) -> tuple[SimNetwork, list[Any], SimClock]:
    net = SimNetwork(seed=3, latency=(0.01, 0.02))
    first = net.add_node([])
    nodes = [first] + [net.add_node([net.endpoint(first)]) for _ in range(n - 1)]
    net.run_until(240)
    return net, nodes, SimClock(net)


class CodecTests(TestCase):
    def test_round_trip(self) -> None:
        self.assertEqual(parse(build(REPLY, 7, 3)), (REPLY, 7, 3))

    @given(st.binary(max_size=32))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        try:
            op, _, _ = parse(data)
        except EchoError:
            return
        self.assertIn(op, (REQUEST, REPLY))


class EchoTests(TestCase):
    def setUp(self) -> None:
        self.net, self.nodes, self.clock = ring(24)
        self.echoes = {n.me: Echo(n, self.clock, Counters()) for n in self.nodes}

    def ping(self, src: Any, dst: int, timeout: float = 2.0) -> dict[str, Any]:
        results: list[dict[str, Any]] = []
        self.echoes[src.me].ping(dst, timeout).addCallback(results.append)
        self.net.run_until(self.net.now + timeout + 1)
        self.assertEqual(len(results), 1)
        return results[0]

    def test_direct_link(self) -> None:
        a = self.nodes[0]
        peer = next(iter(a.table.links))
        r = self.ping(a, peer)
        self.assertTrue(r["reply"])
        self.assertEqual((r["path"], r["hops"], r["via"]), ("direct", 1, None))
        self.assertGreater(r["rtt_ms"], 10)  # two simulated one-way latencies
        self.assertEqual(r["address"], A.to_text(peer))

    def test_relayed(self) -> None:
        a = self.nodes[-1]
        far = [n.me for n in self.nodes[:-1] if n.me not in a.table.links]
        self.assertTrue(far, "some node must lack a direct link for this test")
        r = self.ping(a, far[0])
        self.assertTrue(r["reply"])
        self.assertEqual(r["path"], "relayed")
        self.assertGreaterEqual(r["hops"], 2)
        self.assertIn(A.from_text(r["via"]), a.table.links)

    def test_no_reply_times_out(self) -> None:
        a = self.nodes[0]
        gone = self.nodes[5]
        self.net.remove_node(gone, graceful=False)
        r = self.ping(a, gone.me)
        self.assertFalse(r["reply"])
        self.assertEqual(self.echoes[a.me].counters.get("echo_failed"), 1)

    def test_bad_payload_counted(self) -> None:
        a = self.nodes[0]
        echo = self.echoes[a.me]
        echo.delivered(Delivery(1, a.me, 0, ECHO_KIND, 1, b"junk"))
        echo.delivered(Delivery(1, a.me, 0, ECHO_KIND, 1, build(REPLY, 999, 1)))
        self.assertEqual(echo.counters.get("overlay_dropped", reason="echo-bad-length"), 1)
        self.assertEqual(echo.counters.get("overlay_dropped", reason="echo-unexpected-reply"), 1)


class NetcheckTests(TestCase):
    def test_public_nodes_are_reachable(self) -> None:
        net, nodes, _ = ring(5)
        report = nodes[1].netcheck(net.now)
        self.assertEqual(report["mapping"], "none")
        self.assertEqual(report["reachable_directly"], "yes")
        self.assertEqual(report["reflexive_endpoints"], [f"{h}:{p}" for h, p in
                                                         [net.endpoint(nodes[1])]])
        self.assertGreaterEqual(len(report["reflexive"]), 2)

    def test_symmetric_nat_is_not_reachable(self) -> None:
        net, nodes, _ = ring(2)
        node = nodes[0]
        node.local_for = lambda destination: ("192.168.1.2", 4789)
        node._observe_reflexive(1, ("198.51.100.1", 4789), ("203.0.113.9", 40001), 10.0)
        node._observe_reflexive(2, ("198.51.100.2", 4789), ("203.0.113.9", 40002), 10.0)
        node.nat.local_endpoints.discard(net.endpoint(node))
        for o in list(node.nat._latest):
            if o not in (1, 2):
                node.nat.forget(o)
        report = node.netcheck(11.0)
        self.assertEqual(report["mapping"], "address-and-port-dependent")
        self.assertEqual(report["reachable_directly"], "no")

    def test_cone_nat_is_probably_reachable(self) -> None:
        net, nodes, _ = ring(2)
        node = nodes[0]
        node.local_for = lambda destination: ("192.168.1.2", 4789)
        for o in list(node.nat._latest):
            node.nat.forget(o)
        node.nat.local_endpoints.clear()
        node._observe_reflexive(1, ("198.51.100.1", 4789), ("203.0.113.9", 40001), 10.0)
        node._observe_reflexive(2, ("198.51.100.2", 4789), ("203.0.113.9", 40001), 10.0)
        report = node.netcheck(11.0)
        self.assertEqual(report["mapping"], "endpoint-independent")
        self.assertEqual(report["reachable_directly"], "probably")
        self.assertIn("filtering", report["explanation"])
        self.assertEqual(report["reflexive_endpoints"], ["203.0.113.9:40001"])


class PingCommandTests(TestCase):
    """How C{ping} resolves what the operator typed, with fakes for the DHT and DNS."""

    def setUp(self) -> None:
        from twisted.internet.task import Clock

        from wow.node.config import NetworkSection
        from wow.node.ping import PingCommand
        from wow.testing import FakeDht

        self.clock = Clock()
        self.dht = FakeDht(self.clock)
        self.holder = A.to_bytes(0xAB << 152)
        self.dht.client(self.holder).create(b"dhcp:10.128.0.0/16:10.128.0.7", self.holder, 600)
        self.sent: list[int] = []

        class FakeEcho:
            def ping(echo, target: int, timeout: float) -> Any:
                from twisted.internet.defer import succeed

                self.sent.append(target)
                return succeed({"reply": True, "path": "direct"})

        class FakeDns:
            def answer(dns_, query: bytes, client: str) -> bytes:
                from twisted.names import dns

                m = dns.Message()
                m.fromStr(query)
                r = dns.Message(id=m.id, answer=True)
                r.queries = m.queries
                if m.queries[0].name.name == b"alice.wow":
                    r.answers = [dns.RRHeader(b"alice.wow", dns.A, dns.IN, 60,
                                              dns.Record_A("10.128.0.7"))]
                else:
                    r.rCode = dns.ENAME
                return r.toStr()

        self.ping = PingCommand(FakeEcho(), NetworkSection(), self.dht.client(b"\0" * 20),
                                FakeDns())

    def run_ping(self, target: str) -> Any:
        results: list[Any] = []
        self.ping({"target": target}).addBoth(results.append)
        self.clock.advance(1)
        return results[0]

    def test_address_ip_and_name(self) -> None:
        owner = A.from_bytes(self.holder)
        self.assertEqual(self.run_ping(A.to_text(owner))["address"], A.to_text(owner))
        by_ip = self.run_ping("10.128.0.7")
        self.assertEqual((by_ip["address"], by_ip["ip"]), (A.to_text(owner), "10.128.0.7"))
        by_name = self.run_ping("alice")
        self.assertEqual((by_name["address"], by_name["ip"]), (A.to_text(owner), "10.128.0.7"))
        self.assertEqual(self.sent, [owner] * 3)

    def test_failures_are_one_sentence(self) -> None:
        from wow.control.server import CommandError

        for target, words in (("10.128.0.8", "no node holds a lease"),
                              ("192.0.2.1", "not in the virtual network"),
                              ("bob", "does not resolve")):
            failure = self.run_ping(target)
            self.assertTrue(failure.check(CommandError), failure)
            self.assertIn(words, str(failure.value))
        self.assertEqual(self.sent, [])
        self.assertRaises(CommandError, self.ping, {"target": ""})
