"""
Data messages in pieces: framing round trips, and a reassembler that stays
within its bounds whatever arrives, counting every piece it does not use.
"""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from wow.datapath import pieces as P
from wow.metrics import Counters


def make(**kw: int | float) -> tuple[P.Reassembler, Clock, Counters]:
    clock, counters = Clock(), Counters()
    return P.Reassembler(clock, counters, **kw), clock, counters  # type: ignore[arg-type]


class SplitTests(SynchronousTestCase):
    @given(st.binary(max_size=5000), st.integers(1, 1500), st.integers(0, 2**32 - 1),
           st.binary(max_size=44))
    def test_round_trip(self, msg: bytes, size: int, msg_id: int, prefix: bytes) -> None:
        ps = P.split(msg_id, msg, size, prefix)
        self.assertEqual(len(ps), P.piece_count(len(msg), size))
        for i, p in enumerate(ps):
            self.assertTrue(p.startswith(prefix))
            self.assertEqual(P.parse_header(p[len(prefix):]), (msg_id, i, len(ps)))
        # Equal sizes except the last: what one UDP GSO send needs.
        self.assertTrue(all(len(p) == len(ps[0]) for p in ps[:-1]))
        self.assertLessEqual(len(ps[-1]), len(ps[0]))
        r, _, _ = make()
        out = [r.add("peer", p[len(prefix):]) for p in ps]
        self.assertEqual(out[-1], msg)
        self.assertEqual(out[:-1], [None] * (len(ps) - 1))
        self.assertEqual(r.size, 0)

    def test_limits(self) -> None:
        with self.assertRaises(P.PieceError):
            P.split(1, b"x" * 70000, 1)
        with self.assertRaises(P.PieceError):
            P.split(1, b"x", 0)
        with self.assertRaises(P.PieceError):
            P.parse_header(b"1234567")

    def test_header_layout(self) -> None:
        [p] = P.split(0x01020304, b"data", 100)
        self.assertEqual(p, bytes.fromhex("01020304 0000 0001") + b"data")


class WholeRunTests(SynchronousTestCase):
    """The GRO fast path: a burst that is exactly one message, found without parsing each piece."""

    @given(st.binary(min_size=1, max_size=6000), st.integers(20, 700), st.binary(max_size=12),
           st.integers(0, 2**32 - 1), st.binary(max_size=2000))
    def test_finds_whole_message(self, msg: bytes, size: int, prefix: bytes, msg_id: int,
                                 trailer: bytes) -> None:
        ps = P.split(msg_id, msg, size, prefix)
        seg = len(ps[0])
        full_last = len(ps[-1]) == seg
        buf = b"".join(ps) + (trailer if full_last else b"")
        run = P.whole_run(buf, seg, len(prefix))
        if len(ps) < 2:
            self.assertIsNone(run)
            return
        self.assertIsNotNone(run)
        assert run is not None
        count, end = run
        self.assertEqual(count, len(ps))
        self.assertEqual(end, sum(map(len, ps)))
        chunks = P.run_chunks(buf, seg, len(prefix), count, end)
        self.assertEqual(b"".join(chunks), msg)

    def test_rejects_incomplete_or_disordered(self) -> None:
        ps = P.split(7, b"m" * 5000, 1000)
        seg = len(ps[0])
        self.assertIsNone(P.whole_run(b"".join(ps[:-1]), seg))
        self.assertIsNone(P.whole_run(b"".join(ps[1:]), seg))
        self.assertIsNone(P.whole_run(b"".join([ps[0], ps[2], ps[1], *ps[3:]]), seg))
        other = P.split(8, b"m" * 5000, 1000)
        self.assertIsNone(P.whole_run(b"".join([*ps[:2], other[2], *ps[3:]]), seg))
        self.assertIsNotNone(P.whole_run(b"".join(ps), seg))

    @given(st.binary(max_size=400), st.integers(0, 100), st.integers(0, 12))
    def test_arbitrary(self, buf: bytes, seg: int, off: int) -> None:
        run = P.whole_run(buf, seg, off)
        if run is None:
            return
        count, end = run
        for i in range(count):
            self.assertEqual(P.parse_header(buf[i * seg + off:])[1:], (i, count))
        self.assertLessEqual(end, len(buf))


class ReassemblerTests(SynchronousTestCase):
    def test_any_order(self) -> None:
        r, _, _ = make()
        msg = bytes(range(256)) * 40
        ps = P.split(5, msg, 1000)
        random.Random(3).shuffle(ps)
        results = [r.add(("10.0.0.1", 1), p) for p in ps]
        self.assertEqual([x for x in results if x is not None], [msg])
        self.assertEqual(r.completed_multi, 1)

    def test_interleaved_messages_and_peers(self) -> None:
        r, _, _ = make()
        a, b = P.split(1, b"a" * 3000, 1000), P.split(1, b"b" * 3000, 1000)
        got = []
        for pa, pb in zip(a, b, strict=True):
            got += [r.add("A", pa), r.add("B", pb)]
        self.assertEqual([g for g in got if g], [b"a" * 3000, b"b" * 3000])

    def assertDropped(self, counters: Counters, reason: str, n: int = 1) -> None:
        self.assertEqual(counters.get(P.DROPPED, reason=reason), n, counters.snapshot())

    def test_rejections(self) -> None:
        r, _, c = make(max_pieces=100)
        ps = P.split(9, b"x" * 3000, 1000)
        self.assertIsNone(r.add("p", b"short"))
        self.assertDropped(c, "short")
        self.assertIsNone(r.add("p", P.PIECE_HDR.pack(1, 0, 0) + b"x"))
        self.assertDropped(c, "zero-count")
        self.assertIsNone(r.add("p", P.PIECE_HDR.pack(1, 3, 3) + b"x"))
        self.assertDropped(c, "index-out-of-range")
        self.assertIsNone(r.add("p", P.PIECE_HDR.pack(1, 0, 101) + b"x"))
        self.assertDropped(c, "too-many-pieces")
        r.add("p", ps[0])
        self.assertIsNone(r.add("p", ps[0]))
        self.assertDropped(c, "duplicate")
        self.assertIsNone(r.add("p", P.PIECE_HDR.pack(9, 1, 4) + b"y"))
        self.assertDropped(c, "count-mismatch")
        r.add("p", ps[1])
        self.assertEqual(r.add("p", ps[2]), b"x" * 3000)
        # A late copy of a finished message does not open a new one.
        self.assertIsNone(r.add("p", ps[1]))
        self.assertDropped(c, "late-duplicate")
        self.assertEqual(r.in_flight(), 0)

    def test_timeout(self) -> None:
        r, clock, c = make(timeout=2.0)
        ps = P.split(1, b"x" * 3000, 1000)
        r.add("p", ps[0])
        clock.advance(1.5)
        self.assertEqual(r.expire(), 0)
        clock.advance(1.0)
        self.assertEqual(r.expire(), 1)
        self.assertEqual(r.size, 0)
        self.assertEqual(c.get(P.EVICTED, reason="timeout"), 1)
        # The rest of the message now starts a new partial that never completes.
        self.assertIsNone(r.add("p", ps[1]))
        self.assertIsNone(r.add("p", ps[2]))
        self.assertEqual(r.in_flight("p"), 1)

    def test_expired_swept_on_new_message(self) -> None:
        r, clock, c = make(timeout=1.0)
        r.add("p", P.split(1, b"x" * 3000, 1000)[0])
        clock.advance(2)
        r.add("p", P.split(2, b"x" * 3000, 1000)[0])
        self.assertEqual(r.in_flight("p"), 1)
        self.assertEqual(c.get(P.EVICTED, reason="timeout"), 1)

    def test_messages_per_peer(self) -> None:
        r, _, c = make(max_messages_per_peer=4)
        for i in range(10):
            r.add("p", P.split(i, b"x" * 3000, 1000)[0])
        self.assertEqual(r.in_flight("p"), 4)
        self.assertEqual(c.get(P.EVICTED, reason="peer-limit"), 6)
        # The newest survive: message 9 still completes.
        ps = P.split(9, b"x" * 3000, 1000)
        r.add("p", ps[1])
        self.assertEqual(r.add("p", ps[2]), b"x" * 3000)
        # Another peer is unaffected by p's limit.
        r.add("q", P.split(1, b"x" * 3000, 1000)[0])
        self.assertEqual(r.in_flight("q"), 1)

    def test_bytes_per_peer(self) -> None:
        r, _, c = make(max_bytes_per_peer=2500)
        a = P.split(1, b"a" * 3000, 1000)
        b = P.split(2, b"b" * 3000, 1000)
        r.add("p", a[0])
        r.add("p", a[1])
        r.add("p", b[0])  # evicts message 1 to make room
        self.assertEqual(c.get(P.EVICTED, reason="peer-limit"), 1)
        r.add("p", b[1])
        # The last piece would exceed the bound: the message is given up.
        self.assertIsNone(r.add("p", b[2] + b"z" * 600))
        self.assertDropped(c, "over-size")
        self.assertEqual(r.size, 0)

    def test_total_bytes(self) -> None:
        r, _, c = make(max_bytes=2500)
        r.add("p", P.split(1, b"a" * 3000, 1000)[0])
        r.add("q", P.split(1, b"a" * 3000, 1000)[0])
        self.assertIsNone(r.add("s", P.split(1, b"a" * 3000, 1000)[0]))
        self.assertDropped(c, "memory-full")
        self.assertLessEqual(r.size, 2500)

    def test_empty_pieces_from_many_peers_cost_memory(self) -> None:
        r, _, c = make(max_bytes=100_000)
        for i in range(20000):
            r.add(("10.0.0.1", i), P.PIECE_HDR.pack(i, 0, 1000))
        self.assertLessEqual(r.size, 100_000)
        self.assertLess(r.in_flight(), 20)
        self.assertGreater(c.get(P.DROPPED, reason="memory-full"), 19000)

    def test_forget_peer(self) -> None:
        r, _, _ = make()
        r.add("p", P.split(1, b"a" * 3000, 1000)[0])
        r.forget_peer("p")
        self.assertEqual((r.size, r.in_flight()), (0, 0))

    @given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.binary(max_size=40)),
                    max_size=300))
    def test_fuzz_bounded(self, items: list[tuple[str, bytes]]) -> None:
        r, clock, c = make(max_messages_per_peer=3, max_bytes_per_peer=200, max_bytes=400,
                           max_pieces=8)
        for i, (peer, raw) in enumerate(items):
            # Make header collisions likely: small ids, counts and indexes.
            if len(raw) >= 8:
                raw = bytes([0, 0, 0, raw[3] % 4, 0, raw[5] % 9, 0, raw[7] % 9]) + raw[8:]
            out = r.add(peer, raw)
            self.assertTrue(out is None or isinstance(out, bytes))
            self.assertLessEqual(r.size, 400)
            for p in "abc":
                self.assertLessEqual(r.in_flight(p), 3)
            if i % 50 == 49:
                clock.advance(5)
                r.expire()
        clock.advance(5)
        r.expire()
        self.assertEqual((r.size, r.in_flight()), (0, 0))

    def test_flood_memory_stays_bounded(self) -> None:
        """Many never-finished messages from one peer: held bytes stay under the bound."""
        r, _, c = make(max_messages_per_peer=8, max_bytes_per_peer=64 * 1024)
        for i in range(5000):
            r.add("p", P.PIECE_HDR.pack(i, 0, 40) + b"x" * 1400)
        self.assertLessEqual(r.size, 64 * 1024)
        self.assertEqual(r.in_flight("p"), 8)
        self.assertEqual(c.get(P.EVICTED), 5000 - 8)
