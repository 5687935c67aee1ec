"""L{wow.dns.dht.DhtAtomicStore} keeps IAtomicCreate's promises over a DHT."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from wow.dns.claims import IAtomicCreate
from wow.dns.dht import DhtAtomicStore
from wow.testing import FakeDht


class DhtAtomicStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.shared = FakeDht(self.clock)

    def store(self, owner: int) -> DhtAtomicStore:
        return DhtAtomicStore(self.shared.client(owner.to_bytes(20, "big")))

    def result(self, d):  # type: ignore[no-untyped-def]
        self.clock.advance(1)
        return self.successResultOf(d)

    def test_interface(self) -> None:
        verifyObject(IAtomicCreate, self.store(1))

    def test_first_claimant_keeps_the_name(self) -> None:
        a, b = self.store(1), self.store(2)
        self.assertTrue(self.result(a.create("dns:n:alpha", b"10.128.0.5", 60)))
        self.assertFalse(self.result(b.create("dns:n:alpha", b"10.128.0.6", 60)))
        self.assertEqual(self.result(b.get("dns:n:alpha"))[0], b"10.128.0.5")
        # the owner refreshes its own claim
        self.assertTrue(self.result(a.create("dns:n:alpha", b"10.128.0.5", 60)))

    def test_delete_then_other_may_claim(self) -> None:
        a, b = self.store(1), self.store(2)
        self.result(a.create("dns:n:alpha", b"10.128.0.5", 60))
        self.assertTrue(self.result(a.delete("dns:n:alpha", b"10.128.0.5")))
        self.assertIsNone(self.result(b.get("dns:n:alpha")))
        self.assertTrue(self.result(b.create("dns:n:alpha", b"10.128.0.6", 60)))

    def test_expiry(self) -> None:
        a = self.store(1)
        self.result(a.create("dns:n:alpha", b"10.128.0.5", 10))
        self.clock.advance(20)
        self.assertIsNone(self.result(a.get("dns:n:alpha")))
