"""
What the DHCP modes need from the DHT, and the key they use.

L{IDhtClient} is the small seam between the allocators (and the relay agent)
and the overlay's DHT: create (atomic, first writer wins), get and delete,
each returning a L{Deferred}.  L{OverlayDhtClient} adapts the real
L{wow.overlay.dht.Dht}; L{wow.testing.FakeDht} is the in-memory fake the
unit tests share.

A lease is published as key C{dhcp:<network>:<ip>} (L{lease_key}) whose
value is the holder's 20-byte overlay address: the IP router resolves a
virtual IP to its node with one get of the same key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

#: The reason of a L{DhtClientError} when another node holds the key.
EXISTS = "exists"


class DhtClientError(Exception):
    """
    A DHT operation failed.  C{reason} is one word: L{EXISTS} when the key
    is held by another owner (a definite answer), anything else (C{timeout},
    C{conflict}, C{busy}, C{invalid}, ...) when the outcome is unknown and
    the caller may retry later.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    @property
    def taken(self) -> bool:
        return self.reason == EXISTS


def failure_reason(failure: Failure) -> str:
    """The one-word reason of a failed DHT operation; "error" for anything else."""
    value = failure.value
    return value.reason if isinstance(value, DhtClientError) else "error"


@dataclass(frozen=True)
class DhtEntry:
    """One live value under a key, as a get returns it."""

    value: bytes
    #: The writer's 20-byte overlay address.
    owner: bytes
    ttl_left: float


class IDhtClient(Interface):
    """
    A node's handle on the DHT.  Every Deferred fires within a bounded time
    (the DHT's own timeouts) and fails only with L{DhtClientError}.
    """

    address = Attribute("This node's overlay address (20 bytes): the owner of what it writes.")

    def create(key: bytes, value: bytes, ttl: int) -> Deferred[None]:
        """
        Claim C{key} for C{ttl} seconds.  Atomic: of concurrent creates by
        different owners at most one succeeds; the others fail with
        L{EXISTS}.  The same owner creating again replaces its value and
        renews the TTL.
        """

    def get(key: bytes) -> Deferred[list[DhtEntry]]:
        """Every live value under C{key} (an empty list when none)."""

    def delete(key: bytes) -> Deferred[None]:
        """Remove this node's values under C{key} (no error when there are none)."""


def lease_key(network: IPv4Network, ip: IPv4Address) -> bytes:
    """C{dhcp:10.128.0.0/16:10.128.0.5}: the DHT key of a virtual IP's lease."""
    return f"dhcp:{network}:{ip}".encode("ascii")


@implementer(IDhtClient)
class OverlayDhtClient:
    """
    L{IDhtClient} over the overlay's L{wow.overlay.dht.Dht}.

    @param dht: returns the node's L{wow.overlay.dht.Dht} (called at each use:
        the overlay service creates its node only when it starts).
    @param kick: called after each operation is started, for drivers that
        must be told the node has new timers (the simulator's C{poke}); the
        reactor-driven node needs none.
    """

    def __init__(self, dht: Callable[[], Any], kick: Callable[[], None] | None = None) -> None:
        self._dht = dht
        self.kick = kick

    @property
    def address(self) -> bytes:
        from wow.overlay import address as A

        return A.to_bytes(self._dht().node.me)

    def _run(self, start: Callable[[Any], Deferred[Any]]) -> Deferred[Any]:
        d = maybeDeferred(lambda: start(self._dht()))
        if self.kick is not None:
            self.kick()
        return d.addErrback(_translate)

    def create(self, key: bytes, value: bytes, ttl: int) -> Deferred[None]:
        return self._run(lambda dht: dht.create(key, value, ttl)).addCallback(lambda _: None)

    def get(self, key: bytes) -> Deferred[list[DhtEntry]]:
        from wow.overlay import address as A

        def entries(values: list[Any]) -> list[DhtEntry]:
            return [DhtEntry(v.value, A.to_bytes(v.owner), float(v.ttl_left)) for v in values]

        return self._run(lambda dht: dht.get(key)).addCallback(entries)

    def delete(self, key: bytes) -> Deferred[None]:
        return self._run(lambda dht: dht.delete(key)).addCallback(lambda _: None)


def _translate(failure: Failure) -> Failure:
    """The overlay's DhtError (and refused arguments) as L{DhtClientError}."""
    from wow.overlay.dht import DhtError

    if isinstance(failure.value, DhtError):
        raise DhtClientError(failure.value.reason)
    if failure.check(ValueError):
        raise DhtClientError("invalid")
    if failure.check(RuntimeError):
        raise DhtClientError("unavailable")  # the overlay is not running
    return failure
