"""
The DNS's records in the overlay's DHT: L{IAtomicCreate} over L{IDhtClient}.

Names live under C{dns:<network>:<name>} (and PTRs under their own keys), so
any node can answer for any name; the DHT's atomic create gives "the first
claimant keeps a host name", and owner-signed values mean only the claimant
can refresh or withdraw it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import implementer

from wow.dhcp.dhtclient import DhtClientError, DhtEntry, IDhtClient
from wow.dns.claims import IAtomicCreate


@implementer(IAtomicCreate)
class DhtAtomicStore:
    def __init__(self, dht: IDhtClient) -> None:
        self.dht = dht

    def create(self, key: str, value: bytes, ttl: float) -> Deferred[bool]:
        def refused(failure: Failure) -> bool:
            failure.trap(DhtClientError)
            if failure.value.taken:
                return False
            return failure  # type: ignore[return-value]  # unknown outcome: an error

        d = self.dht.create(key.encode("utf-8"), value, max(1, int(ttl)))
        return d.addCallbacks(lambda _: True, refused)

    def get(self, key: str) -> Deferred[tuple[bytes, float] | None]:
        def first(entries: list[DhtEntry]) -> tuple[bytes, float] | None:
            if not entries:
                return None
            best = max(entries, key=lambda e: e.ttl_left)
            return best.value, best.ttl_left

        return self.dht.get(key.encode("utf-8")).addCallback(first)

    def delete(self, key: str, value: bytes) -> Deferred[bool]:
        d: Deferred[Any] = self.dht.delete(key.encode("utf-8"))
        return d.addCallback(lambda _: True)
