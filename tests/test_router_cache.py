"""Tests for L{wow.router.cache.AddressCache}."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from wow.router import cache
from wow.router.cache import AddressCache, Outcome

IP = bytes([10, 128, 0, 5])
ADDR = b"\x01" * 20


class AddressCacheTests(SynchronousTestCase):
    def test_miss_queues_and_asks_once(self) -> None:
        c = AddressCache()
        self.assertEqual(c.route(IP, b"p1", 0), (Outcome.QUEUED_NEW_LOOKUP, None))
        self.assertEqual(c.route(IP, b"p2", 0), (Outcome.QUEUED, None))
        self.assertEqual(c.resolved(IP, ADDR, 60, 1), [b"p1", b"p2"])
        self.assertEqual(c.route(IP, b"p3", 2), (Outcome.HIT, ADDR))
        self.assertEqual(c.pending_destinations, 0)

    def test_positive_answer_expires_with_ttl(self) -> None:
        c = AddressCache()
        c.route(IP, b"p", 0)
        c.resolved(IP, ADDR, 10, 0)
        self.assertEqual(c.route(IP, b"p", 9.9)[0], Outcome.HIT)
        self.assertEqual(c.route(IP, b"p", 10.0)[0], Outcome.QUEUED_NEW_LOOKUP)

    def test_ttl_is_capped(self) -> None:
        c = AddressCache()
        c.resolved(IP, ADDR, 10**9, 0)
        self.assertIsNone(c.get(IP, cache.MAX_POSITIVE_TTL_S + 1))

    def test_negative_caching(self) -> None:
        c = AddressCache()
        c.route(IP, b"p", 0)
        self.assertEqual(c.resolved(IP, None, 0, 0), [b"p"])
        self.assertEqual(c.route(IP, b"p", 1), (Outcome.NEGATIVE, None))
        self.assertEqual(c.route(IP, b"p", cache.NEGATIVE_TTL_S + 0.1)[0],
                         Outcome.QUEUED_NEW_LOOKUP)

    def test_queue_bounded_by_count(self) -> None:
        c = AddressCache()
        outcomes = [c.route(IP, b"x", 0)[0] for _ in range(cache.MAX_QUEUED_PACKETS + 5)]
        self.assertEqual(outcomes.count(Outcome.QUEUE_FULL), 5)
        self.assertEqual(len(c.resolved(IP, ADDR, 5, 0)), cache.MAX_QUEUED_PACKETS)

    def test_queue_bounded_by_bytes(self) -> None:
        c = AddressCache()
        big = b"x" * (cache.MAX_QUEUED_BYTES // 2)
        self.assertNotEqual(c.route(IP, big, 0)[0], Outcome.QUEUE_FULL)
        self.assertNotEqual(c.route(IP, big, 0)[0], Outcome.QUEUE_FULL)
        self.assertEqual(c.route(IP, b"y", 0)[0], Outcome.QUEUE_FULL)
        self.assertLessEqual(c.queued_bytes, cache.MAX_QUEUED_BYTES)

    def test_pending_destinations_bounded(self) -> None:
        c = AddressCache()
        for i in range(cache.MAX_PENDING_DESTINATIONS):
            c.route(i.to_bytes(4, "big"), b"p", 0)
        self.assertEqual(c.route(b"\xff\xff\xff\xff", b"p", 0)[0], Outcome.TOO_MANY_PENDING)

    def test_entries_bounded(self) -> None:
        self.patch(cache, "MAX_ENTRIES", 10)
        c = AddressCache()
        for i in range(20):
            c.learn(i.to_bytes(4, "big"), ADDR, 60, 0)
        self.assertEqual(len(c), 10)
        self.assertIsNone(c.get((0).to_bytes(4, "big"), 1))
        self.assertEqual(c.get((19).to_bytes(4, "big"), 1), ADDR)

    def test_forget(self) -> None:
        c = AddressCache()
        c.learn(IP, ADDR, 60, 0)
        c.forget(IP)
        self.assertIsNone(c.get(IP, 1))
