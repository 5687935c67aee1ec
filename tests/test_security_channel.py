"""Tests for L{wow.security.channel} and L{wow.security.manager}: rekeying, floods, revocation."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.pki import ADDR_A, ADDR_B, ADDR_C, IP_A, IP_B, Identity, pki
from wow.metrics import Counters
from wow.security.channel import FROM_CLIENT, ChannelParams
from wow.security.dtls import DtlsContext, DtlsSession, RevokedSerials, Role
from wow.security.manager import SessionManager
from wow.security.records import SESSION_LOST, rewrite_client_hello

Drop = Callable[[bytes, bytes], bool]


class Net:
    """Nodes' session managers joined by an in-memory, optionally lossy, link."""

    def __init__(self, params: ChannelParams | None = None) -> None:
        self.clock = Clock()
        self.clock.advance(10_000)
        self.params = params or ChannelParams()
        self.nodes: dict[bytes, SessionManager] = {}
        self.inbox: dict[bytes, list[bytes]] = {}
        self.drop: Drop | None = None
        self.captured: list[tuple[bytes, bytes, bytes]] = []

    def add(
        self, addr: bytes, ident: Identity, revoked: RevokedSerials | None = None
    ) -> SessionManager:
        ctx = DtlsContext(
            pki().ca.cert, ident.cert, ident.key, revoked=revoked, counters=Counters()
        )
        manager = SessionManager(addr, ctx, self.clock, self.params)
        self.nodes[addr] = manager
        self.inbox[addr] = []
        return manager

    def deliver(self, src: bytes, dst: bytes, datagrams: list[bytes]) -> None:
        queue = [(src, dst, d) for d in datagrams]
        while queue:
            s, d, datagram = queue.pop(0)
            self.captured.append((s, d, datagram))
            if self.drop is not None and self.drop(s, datagram):
                continue
            node = self.nodes.get(d)
            if node is None:
                continue
            plaintexts, back = node.receive(s, datagram, self.clock.seconds())
            self.inbox[d].extend(plaintexts)
            queue.extend((d, s, b) for b in back)

    def send(self, src: bytes, dst: bytes, plaintext: bytes, ip: str | None = None) -> None:
        self.deliver(src, dst, self.nodes[src].send(dst, plaintext, self.clock.seconds(), ip))

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        for addr, node in list(self.nodes.items()):
            for peer, datagram in node.tick(self.clock.seconds()):
                self.deliver(addr, peer, [datagram])


def two(params: ChannelParams | None = None) -> tuple[Net, SessionManager, SessionManager]:
    net = Net(params)
    return net, net.add(ADDR_A, pki().a), net.add(ADDR_B, pki().b)


class ChannelTests(SynchronousTestCase):
    def test_first_packets_queued_then_delivered(self) -> None:
        net, a, b = two()
        net.drop = lambda s, d: True
        for i in range(3):
            net.send(ADDR_A, ADDR_B, b"q%d" % i, IP_B)
        net.drop = None
        net.advance(1.0)
        self.assertEqual(net.inbox[ADDR_B], [b"q0", b"q1", b"q2"])
        self.assertEqual(a.channels[ADDR_B].state, "established")

    def test_super_frame_is_one_datagram(self) -> None:
        net, a, b = two()
        net.send(ADDR_A, ADDR_B, b"first", IP_B)
        frame = bytes(range(256)) * 235
        (datagram,) = a.send(ADDR_B, frame, net.clock.seconds())
        self.assertEqual(len(datagram), 1 + len(frame) + 4 * (13 + 8 + 16))
        self.assertEqual(b.receive(ADDR_A, datagram, net.clock.seconds()), ([frame], []))

    def test_peer_info(self) -> None:
        net, a, b = two()
        net.send(ADDR_A, ADDR_B, b"x", IP_B)
        (info,) = a.peers()
        self.assertEqual(info["peer"], ADDR_B.hex())
        self.assertTrue(info["secured"])
        self.assertEqual(info["cipher"], "ECDHE-ECDSA-AES256-GCM-SHA384")
        self.assertEqual(info["serial"], f"{pki().b.cert.serial_number:x}")
        self.assertEqual(info["peer_ip"], IP_B)
        self.assertEqual(b.peers()[0]["peer_ip"], IP_A)

    def test_source_check(self) -> None:
        net, a, b = two()
        net.send(ADDR_A, ADDR_B, b"x", IP_B)
        self.assertTrue(b.check_source(ADDR_A, IP_A))
        self.assertFalse(b.check_source(ADDR_A, "10.128.0.77"))
        self.assertFalse(b.check_source(ADDR_C, IP_A))
        self.assertEqual(b.counters.get("security_packets_dropped", reason="forged-source"), 2)

    def test_framing_header(self) -> None:
        net, a, b = two()
        net.send(ADDR_A, ADDR_B, b"x", IP_B)
        gen = a.channels[ADDR_B].current[1]  # type: ignore[index]
        from_a = [d for s, _, d in net.captured if s == ADDR_A]
        from_b = [d for s, _, d in net.captured if s == ADDR_B]
        self.assertTrue(all(d[0] == FROM_CLIENT | gen for d in from_a))
        self.assertTrue(all(d[0] == gen for d in from_b))

    def test_collision(self) -> None:
        """Both ends start at once: one session survives, the lower address's."""
        net, a, b = two()
        out_a = a.send(ADDR_B, b"from a", net.clock.seconds(), IP_B)
        out_b = b.send(ADDR_A, b"from b", net.clock.seconds(), IP_A)
        net.deliver(ADDR_A, ADDR_B, out_a)
        net.deliver(ADDR_B, ADDR_A, out_b)
        net.advance(1.0)
        ca, cb = a.channels[ADDR_B], b.channels[ADDR_A]
        self.assertEqual((ca.state, cb.state), ("established", "established"))
        self.assertTrue(ca.current[0])  # type: ignore[index]  # A (lower) is the client
        self.assertFalse(cb.current[0])  # type: ignore[index]
        self.assertEqual(ca.current[1], cb.current[1])  # type: ignore[index]
        self.assertEqual(net.inbox[ADDR_B], [b"from a"])
        self.assertEqual(net.inbox[ADDR_A], [b"from b"])
        self.assertEqual(len(ca.sessions) + len(cb.sessions), 2)

    def test_replayed_capture(self) -> None:
        """Everything A sent, replayed to B at once: nothing delivered twice, session intact."""
        net, a, b = two()
        for i in range(5):
            net.send(ADDR_A, ADDR_B, b"msg %d" % i, IP_B)
        current = b.channels[ADDR_A].current
        captured = [d for s, _, d in net.captured if s == ADDR_A]
        for datagram in captured:
            self.assertEqual(b.receive(ADDR_A, datagram, net.clock.seconds())[0], [])
        self.assertEqual(b.channels[ADDR_A].current, current)
        self.assertEqual(b.counters.get("security_records_dropped", reason="replayed-hello"), 1)
        self.assertEqual(b.counters.get("security_records_dropped", reason="replay"), 5)
        net.send(ADDR_A, ADDR_B, b"still here")
        self.assertEqual(net.inbox[ADDR_B], [b"msg %d" % i for i in range(5)] + [b"still here"])

    def test_peer_restart(self) -> None:
        """A restarted peer (new manager, possibly the same generation) gets a new session."""
        net, a, b = two()
        net.send(ADDR_A, ADDR_B, b"before", IP_B)
        net.add(ADDR_B, pki().b)
        net.send(ADDR_B, ADDR_A, b"after restart", IP_A)
        self.assertEqual(net.inbox[ADDR_A], [b"after restart"])
        net.send(ADDR_A, ADDR_B, b"answer")
        self.assertEqual(net.inbox[ADDR_B], [b"answer"])

    def test_one_way_traffic_survives_peer_restart(self) -> None:
        """B restarts; A only sends: B's hint makes A re-handshake, traffic resumes."""
        net, a, b = two()
        net.send(ADDR_A, ADDR_B, b"before", IP_B)
        self.assertEqual(net.inbox[ADDR_B], [b"before"])
        net.add(ADDR_B, pki().b)  # B restarted: no sessions at all (and an empty inbox)
        net.send(ADDR_A, ADDR_B, b"lost")  # answered with the hint, then a new handshake
        for i in range(3):
            net.send(ADDR_A, ADDR_B, b"after %d" % i)
        self.assertEqual(net.inbox[ADDR_B], [b"after 0", b"after 1", b"after 2"])
        self.assertEqual(a.counters.get("security_session_lost_hints"), 1)

    def test_forged_hint_costs_one_handshake(self) -> None:
        net, a, b = two()
        net.send(ADDR_A, ADDR_B, b"x", IP_B)
        gen = a.channels[ADDR_B].current[1]  # type: ignore[index]
        hint = bytes([gen]) + SESSION_LOST
        for _ in range(10):
            net.deliver(ADDR_B, ADDR_A, [hint])
        self.assertEqual(a.counters.get("security_session_lost_hints"), 10)
        self.assertEqual(
            a.counters.get("security_handshakes", outcome="established", role="client"), 2
        )
        net.send(ADDR_A, ADDR_B, b"y")
        self.assertEqual(net.inbox[ADDR_B], [b"x", b"y"])

    def test_failed_handshake_backoff(self) -> None:
        net, a, b = two()
        net.add(ADDR_C, pki().b)  # C presents B's certificate
        net.send(ADDR_A, ADDR_C, b"x", "10.128.0.4")
        channel = a.channels[ADDR_C]
        self.assertEqual((channel.state, channel.failure), ("failed", "ip-mismatch"))
        self.assertEqual(list(channel.queue), [])  # the queued message is dropped
        net.send(ADDR_A, ADDR_C, b"y")  # and so is anything sent during the backoff
        self.assertEqual(a.counters.get("security_packets_dropped", reason="handshake-failed"), 2)
        net.advance(2.0)
        self.assertEqual(a.counters.get("security_handshakes_refused", reason="ip-mismatch"), 1)
        self.assertEqual(net.inbox[ADDR_C], [])


class RekeyTests(SynchronousTestCase):
    def traffic(self, net: Net, rounds: int, size: int, step: float) -> int:
        """Send numbered messages both ways; check all arrive in order; return the count."""
        for i in range(rounds):
            net.send(ADDR_A, ADDR_B, i.to_bytes(4, "big") * (size // 4), IP_B)
            net.send(ADDR_B, ADDR_A, i.to_bytes(4, "big") * (size // 4), IP_A)
            net.advance(step)
        expected = [i.to_bytes(4, "big") * (size // 4) for i in range(rounds)]
        self.assertEqual(net.inbox[ADDR_B], expected)
        self.assertEqual(net.inbox[ADDR_A], expected)
        return rounds

    def test_by_bytes(self) -> None:
        net, a, b = two(ChannelParams(rekey_bytes=200_000, grace=0.5))
        self.traffic(net, 60, 16384, 0.05)
        # 60 x 2 x 16 KB = ~2 MB over 200 KB sessions: about ten handshakes.
        self.assertGreaterEqual(a.counters.get("security_handshakes"), 8)
        self.assertGreaterEqual(
            a.counters.get("security_rekeys") + b.counters.get("security_rekeys"), 8
        )
        # current + the one draining + at most one handshaking
        self.assertLessEqual(len(a.channels[ADDR_B].sessions), 3)

    def test_by_packets(self) -> None:
        net, a, b = two(ChannelParams(rekey_packets=20, grace=0.5))
        self.traffic(net, 50, 100, 0.05)
        self.assertGreaterEqual(a.counters.get("security_handshakes"), 4)

    def test_by_time(self) -> None:
        net, a, b = two(ChannelParams(rekey_interval=60, grace=10))
        self.traffic(net, 40, 1000, 7.0)  # 280 s
        self.assertGreaterEqual(a.counters.get("security_handshakes"), 4)
        serials = {s.established_at for s in a.channels[ADDR_B].sessions.values()}
        self.assertLessEqual(len(serials), 2)

    def test_old_session_drained(self) -> None:
        net, a, b = two(ChannelParams(rekey_interval=60, grace=10))
        net.send(ADDR_A, ADDR_B, b"1", IP_B)
        first = a.channels[ADDR_B].current
        net.advance(61)
        channel = a.channels[ADDR_B]
        self.assertNotEqual(channel.current, first)
        self.assertIn(first, channel.draining)
        # A record sealed in the old session still arrives during the grace.
        self.assertEqual(len(channel.sessions), 2)
        net.advance(11)
        self.assertEqual(list(channel.sessions), [channel.current])
        self.assertEqual(len(b.channels[ADDR_A].sessions), 1)

    def test_overdue_rekey_closes(self) -> None:
        """A peer that never completes a rekey loses the session at twice the interval."""
        net, a, b = two(ChannelParams(rekey_interval=60, grace=10))
        net.send(ADDR_A, ADDR_B, b"1", IP_B)
        net.drop = lambda s, d: True
        net.advance(60)
        for _ in range(8):
            net.advance(10)
        self.assertIsNone(a.channels[ADDR_B].current)


class FloodTests(SynchronousTestCase):
    def hello(self) -> bytes:
        ctx = DtlsContext(pki().ca.cert, pki().c.cert, pki().c.key)
        (hello,) = DtlsSession(Role.CLIENT, ctx, ADDR_B, IP_B, Clock()).start()
        return bytes([FROM_CLIENT | 5]) + hello

    def test_forged_hellos_keep_no_state(self) -> None:
        """10,000 forged hellos from 10,000 addresses: answered, nothing kept."""
        net, a, b = two()
        hello = self.hello()
        forged_cookie = self.with_cookie(hello, b"\x00" * 17)
        now = net.clock.seconds()
        gc.collect()
        sessions_before = sum(1 for o in gc.get_objects() if isinstance(o, DtlsSession))
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            replies = 0
            for i in range(10_000):
                source = i.to_bytes(20, "big")
                _, out = b.receive(source, hello, now)
                replies += len(out)
                b.receive(source, forged_cookie, now)
            gc.collect()
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        growth = sum(s.size_diff for s in after.compare_to(before, "filename"))
        self.assertEqual(replies, 10_000)
        self.assertEqual(b.channels, {})
        self.assertLess(growth, 64 * 1024)
        sessions_after = sum(1 for o in gc.get_objects() if isinstance(o, DtlsSession))
        self.assertEqual(sessions_after, sessions_before)
        self.assertEqual(b.counters.get("security_hello_verify_sent"), 10_000)
        self.assertEqual(b.counters.get("security_records_dropped", reason="bad-cookie"), 10_000)

    def with_cookie(self, hello: bytes, cookie: bytes) -> bytes:
        body = rewrite_client_hello(hello[1:], message_seq=1, cookie=cookie, record_sequence=1)
        return hello[:1] + body

    def test_bad_cookie(self) -> None:
        net, a, b = two()
        now = net.clock.seconds()
        good = b.context.cookies.make(ADDR_C, now)
        for cookie in (b"\x00" * 17, good[:-1] + b"\x00", b.context.cookies.make(ADDR_A, now)):
            b.receive(ADDR_C, self.with_cookie(self.hello(), cookie), now)
        self.assertEqual(b.counters.get("security_records_dropped", reason="bad-cookie"), 3)
        self.assertEqual(b.channels, {})
        # The right cookie from the right source earns a (half-open) session.
        b.receive(ADDR_C, self.with_cookie(self.hello(), good), now)
        self.assertEqual(b.channels[ADDR_C].half_open(), 1)

    def test_half_open_bounded(self) -> None:
        """A source that can answer cookies still gets only so many half-open handshakes."""
        net = Net()
        b = net.add(ADDR_B, pki().b)
        b.max_half_open = 3
        attackers = [i.to_bytes(20, "big") for i in range(1, 6)]
        for attacker in attackers:
            net.add(attacker, pki().c)
        # Only the HelloVerifyRequests get back: the attackers never finish.
        net.drop = lambda s, d: s == ADDR_B and d[1 + 13] != 3
        for attacker in attackers:
            for _ in range(3):
                node = net.nodes[attacker]
                # a fresh session each time (the attacker never finishes)
                channel = node.channels.get(ADDR_B)
                if channel is not None:
                    channel.pending = None
                net.send(attacker, ADDR_B, b"x", IP_B)
        net.drop = None
        half_open = [c.half_open() for c in b.channels.values()]
        # One per peer (a newer hello supersedes the older), three overall.
        self.assertEqual(sum(half_open), 3)
        self.assertEqual(max(half_open), 1)
        self.assertEqual(b.counters.get("security_handshakes_refused", reason="half-open-total"), 6)
        net.advance(31)  # half-open handshakes time out and are forgotten
        self.assertEqual(sum(c.half_open() for c in b.channels.values()), 0)

    def test_garbage_from_strangers(self) -> None:
        net, a, b = two()
        for junk in (b"", b"\x00", b"\x85", b"\x85garbage", b"\x05\x17\xfe\xfd" + b"\x00" * 20):
            plaintexts, replies = b.receive(ADDR_C, junk, net.clock.seconds())
            self.assertEqual(plaintexts, [])
            # At most the 16-byte "no such session" hint, never more than came in.
            self.assertTrue(all(r[1:] == SESSION_LOST for r in replies))
        self.assertEqual(b.channels, {})
        self.assertEqual(b.counters.get("security_records_dropped"), 5)


class RevocationTests(SynchronousTestCase):
    def test_revoke_tears_down_and_refuses(self) -> None:
        revoked = RevokedSerials()
        net = Net()
        a = net.add(ADDR_A, pki().a, revoked)
        b = net.add(ADDR_B, pki().b)
        net.send(ADDR_B, ADDR_A, b"hello", IP_A)
        self.assertEqual(net.inbox[ADDR_A], [b"hello"])
        serial = pki().b.cert.serial_number
        revoked.replace(frozenset({serial}))
        for peer, datagram in a.revoke({serial}):
            net.deliver(ADDR_A, peer, [datagram])
        self.assertEqual(a.channels[ADDR_B].state, "failed")
        self.assertIsNone(a.channels[ADDR_B].current)
        # B learnt through close_notify, and its next attempt is refused.
        self.assertIsNone(b.channels[ADDR_A].current)
        net.send(ADDR_B, ADDR_A, b"again", IP_A)
        self.assertEqual(net.inbox[ADDR_A], [b"hello"])
        self.assertEqual(a.counters.get("security_handshakes_refused", reason="revoked"), 1)
        self.assertEqual(a.counters.get("security_sessions_revoked"), 1)

    def test_revoke_other_serial_keeps_session(self) -> None:
        net, a, b = two()
        net.send(ADDR_A, ADDR_B, b"x", IP_B)
        self.assertEqual(a.revoke({12345}), [])
        self.assertEqual(a.channels[ADDR_B].state, "established")


class FuzzManagerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.net, self.a, self.b = two()
        self.net.send(ADDR_A, ADDR_B, b"x", IP_B)

    @settings(max_examples=150)
    @given(st.binary(max_size=300), st.integers(0, 255))
    def test_arbitrary_datagrams(self, data: bytes, header: int) -> None:
        """Arbitrary bytes from a peer or a stranger never raise, and the session survives."""
        now = self.net.clock.seconds()
        for source in (ADDR_A, ADDR_C):
            self.b.receive(source, data, now)
            self.b.receive(source, bytes([header]) + data, now)
        self.assertEqual(self.b.channels[ADDR_A].state, "established")


class DeadlineTests(SynchronousTestCase):
    def test_deadline_never_stays_in_the_past(self) -> None:
        """After every tick the next deadline lies ahead (a reactor timer must not spin)."""
        net, a, b = two(ChannelParams(rekey_interval=60, grace=10))
        net.send(ADDR_A, ADDR_B, b"x", IP_B)
        net.drop = lambda s, d: True  # the rekey handshakes never finish
        for _ in range(200):
            net.advance(0.7)
            for node in (a, b):
                deadline = node.next_deadline()
                if deadline is not None:
                    self.assertGreater(deadline, net.clock.seconds())

    def test_peer_certificate_expiry_ends_session(self) -> None:
        """A session does not outlive the peer's certificate (the clock is the wall clock)."""
        net, a, b = two()
        net.send(ADDR_A, ADDR_B, b"x", IP_B)
        session = a.channels[ADDR_B].current_session
        assert session is not None and session.peer_certificate is not None
        self.assertLessEqual(a.next_deadline(), session.peer_certificate.not_after)  # type: ignore[operator]
        net.advance(session.peer_certificate.not_after - net.clock.seconds())
        channel = a.channels[ADDR_B]
        self.assertEqual((channel.state, channel.failure), ("failed", "peer-certificate-expired"))


class LossyRekeyTests(SynchronousTestCase):
    def test_rekeys_through_handshake_loss_without_data_loss(self) -> None:
        """A third of all handshake datagrams lost: rekeys still complete, no data lost."""
        net, a, b = two(ChannelParams(rekey_bytes=150_000, grace=10))
        count = [0]

        def drop(src: bytes, datagram: bytes) -> bool:
            if datagram[1] in (20, 22):  # handshake and ChangeCipherSpec records
                count[0] += 1
                return count[0] % 3 == 0
            return False

        net.send(ADDR_A, ADDR_B, b"first", IP_B)
        net.drop = drop
        sent = [b"first"]
        for i in range(150):
            message = i.to_bytes(4, "big") * 2048
            net.send(ADDR_A, ADDR_B, message)
            sent.append(message)
            net.advance(0.25)
        self.assertEqual(net.inbox[ADDR_B], sent)
        self.assertGreater(count[0] // 3, 3)  # handshake datagrams really were lost
        self.assertGreaterEqual(a.counters.get("security_handshakes"), 5)
        self.assertGreater(
            a.counters.get("security_handshake_retransmits")
            + b.counters.get("security_handshake_retransmits"),
            0,
        )


class MeshTests(SynchronousTestCase):
    def test_mesh_with_loss_rekeys_and_a_revocation(self) -> None:
        """Eight nodes all-to-all over a lossy link, rekeying; one is revoked mid-run."""
        import random

        from tests.pki import node_cert

        p = pki()
        revoked = RevokedSerials()
        net = Net(ChannelParams(rekey_packets=10, grace=5))
        nodes = []
        for i in range(8):
            addr = bytes([0x40 + i]) * 20
            ip = f"10.128.1.{i + 1}"
            ident = node_cert(p.ca, ip, addr)
            net.add(addr, ident, revoked)
            nodes.append((addr, ip, ident))
        rng = random.Random(7)
        net.drop = lambda s, d: rng.random() < 0.05

        def round_trip(label: str) -> None:
            for src, _, _ in nodes:
                for dst, dst_ip, _ in nodes:
                    if src != dst:
                        net.send(src, dst, f"{label} {src[0]:x}>{dst[0]:x}".encode(), dst_ip)
            net.advance(0.5)

        for r in range(12):
            round_trip(f"r{r}")
        for _ in range(10):
            net.advance(1.0)
        victim, _, victim_id = nodes[3]
        serial = victim_id.cert.serial_number
        revoked.replace(frozenset({serial}))
        for addr, _, _ in nodes:
            for peer, datagram in net.nodes[addr].revoke({serial}):
                net.deliver(addr, peer, [datagram])
        net.drop = None
        for box in net.inbox.values():
            box.clear()
        round_trip("final")
        for _ in range(6):
            net.advance(1.0)
        round_trip("again")
        for dst, _, _ in nodes:
            got = set(net.inbox[dst])
            for src, _, _ in nodes:
                if src == dst:
                    continue
                message = f"again {src[0]:x}>{dst[0]:x}".encode()
                if victim in (src, dst):
                    self.assertNotIn(message, got)
                else:
                    self.assertIn(message, got)
        handshakes = sum(n.counters.get("security_handshakes") for n in net.nodes.values())
        self.assertGreater(handshakes, 2 * 2 * 28)  # 28 pairs, both ends, and rekeys
