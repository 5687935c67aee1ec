"""
Host names claimed in a shared key-value store with atomic create.

Every node publishes its names under C{dns:<network>:<name>} (value: the
address, TTL: the lease's) so that any node can answer for any other.  Two
nodes claiming one host name is settled by the store's atomic create: the
first writer keeps the name; the second is told in its log and keeps its
derived name (C{c10-128-0-5.wow.}), which nobody else can claim because it
is a function of the leased address.  Renewing a lease repeats the create
with the same value, which the store treats as a refresh of the TTL.

L{IAtomicCreate} is the seam to the overlay DHT; L{MemoryAtomicStore} is
the in-memory implementation used by tests and by a node without a DHT.
L{DhtNameStore} is an L{INameStore} whose local tables are a cache of that
store, so the fast path still answers cached names in microseconds.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from wow.dns.names import (
    absolute,
    derived_wire,
    from_wire,
    pack_ip,
    valid_hostname,
)
from wow.dns.store import CompactStore, INameStore
from wow.metrics import Counters


class IAtomicCreate(Interface):
    """The part of the DHT the DNS needs."""

    def create(key: str, value: bytes, ttl: float) -> Deferred[bool]:
        """
        Store C{value} under C{key} for C{ttl} seconds unless a live,
        different value is there.  True if stored (or refreshed: same value).
        """

    def get(key: str) -> Deferred[tuple[bytes, float] | None]:
        """The live value and its remaining seconds, or None."""

    def delete(key: str, value: bytes) -> Deferred[bool]:
        """Remove C{key} if it holds C{value} (an owner removes only its own)."""


@implementer(IAtomicCreate)
class MemoryAtomicStore:
    """IAtomicCreate in one process's memory, with TTLs on an injected clock."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.data: dict[str, tuple[bytes, float]] = {}

    def _live(self, key: str) -> tuple[bytes, float] | None:
        entry = self.data.get(key)
        if entry is not None and entry[1] <= self.clock.seconds():
            del self.data[key]
            return None
        return entry

    def create(self, key: str, value: bytes, ttl: float) -> Deferred[bool]:
        entry = self._live(key)
        if entry is not None and entry[0] != value:
            return succeed(False)
        self.data[key] = (value, self.clock.seconds() + ttl)
        return succeed(True)

    def get(self, key: str) -> Deferred[tuple[bytes, float] | None]:
        entry = self._live(key)
        if entry is None:
            return succeed(None)
        return succeed((entry[0], entry[1] - self.clock.seconds()))

    def delete(self, key: str, value: bytes) -> Deferred[bool]:
        entry = self._live(key)
        if entry is None or entry[0] != value:
            return succeed(False)
        del self.data[key]
        return succeed(True)


def name_key(network: str, wire: bytes) -> str:
    """C{dns:<network>:<name>} with the name in lower-case text, no trailing dot."""
    return f"dns:{network}:{from_wire(wire).rstrip('.')}"


def ptr_key(network: str, ip: bytes) -> str:
    return f"dns:{network}:ptr:{socket.inet_ntoa(ip)}"


class NameClaims:
    """
    Publishes a leased address's names and settles host-name conflicts.

    @ivar store: the local store updated with the names this node won, so
        the node answers for itself without a round trip.
    """

    log = Logger()

    def __init__(self, kv: IAtomicCreate, network: str, domain_wire: bytes,
                 store: INameStore, clock: Any, counters: Counters) -> None:
        self.kv = kv
        self.network = network
        self.domain_wire = domain_wire
        self.store = store
        self.clock = clock
        self.counters = counters

    #: Delays before retrying a DHT create whose outcome is unknown (timeout,
    #: conflict while the ring settles); "taken" is an answer, never retried.
    RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0)

    def _create(self, key: str, value: bytes, ttl: float, attempt: int = 0) -> Deferred[bool]:
        """C{kv.create}, retried a few times while the outcome is unknown."""

        def failed(failure: Failure) -> Deferred[bool] | Failure:
            if attempt >= len(self.RETRY_DELAYS):
                self.counters.inc("dns_name_claims_failed")
                self.log.warn("publishing {key} failed: {why}", key=key,
                              why=failure.getErrorMessage())
                return failure
            self.counters.inc("dns_name_claim_retries")
            return task.deferLater(self.clock, self.RETRY_DELAYS[attempt], self._create,
                                   key, value, ttl, attempt + 1)

        return self.kv.create(key, value, ttl).addErrback(failed)

    def _publish(self, key: str, value: bytes, ttl: float) -> None:
        """A create whose result only matters to the rest of the WOW."""
        self._create(key, value, ttl).addErrback(lambda f: None)

    def claim(self, ip: str, lease_seconds: float, hostname: str = "") -> Deferred[bytes]:
        """
        Publish the lease of C{ip}; claim C{hostname} if given.  Fires with
        the wire name the address ended up with (the host name if won, its
        derived name otherwise).  Call again on every renewal.
        """
        packed = pack_ip(ip)
        expires = self.clock.seconds() + lease_seconds
        derived = derived_wire(packed, self.domain_wire)
        value = ip.encode()
        self._publish(name_key(self.network, derived), value, lease_seconds)
        if hostname and not valid_hostname(hostname):
            self.log.warn("host name {name!r} for {ip} is not a valid host name; keeping "
                          "{derived}", name=hostname, ip=ip, derived=from_wire(derived))
            self.counters.inc("dns_name_claims_refused", reason="invalid")
            hostname = ""
        if not hostname:
            return self._settle(derived, packed, expires, lease_seconds)
        wanted = absolute(hostname, self.domain_wire)

        def decided(won: bool) -> Deferred[bytes]:
            if won:
                return self._settle(wanted, packed, expires, lease_seconds)
            self.log.warn("host name {name} is already claimed by another node; {ip} keeps "
                          "its derived name {derived}", name=from_wire(wanted), ip=ip,
                          derived=from_wire(derived))
            self.counters.inc("dns_name_claims_lost", reason="taken")
            return self._settle(derived, packed, expires, lease_seconds)

        def unknown(failure: Failure) -> Deferred[bytes]:
            # The DHT never answered: answer for the host name locally (this
            # node's own store) and try the claim again at the next renewal.
            return self._settle(wanted, packed, expires, lease_seconds)

        return self._create(name_key(self.network, wanted), value, lease_seconds
                            ).addCallbacks(decided, unknown)

    def _settle(self, name: bytes, ip: bytes, expires: float, ttl: float) -> Deferred[bytes]:
        self.store.add(name, ip, expires)
        self._publish(ptr_key(self.network, ip), from_wire(name).rstrip(".").encode(), ttl)
        return succeed(name)

    def release(self, ip: str, name: bytes) -> None:
        """The lease ended: withdraw its names (only if still ours)."""
        packed = pack_ip(ip)
        self.store.remove(name)
        self.kv.delete(name_key(self.network, name), ip.encode())
        derived = derived_wire(packed, self.domain_wire)
        self.kv.delete(name_key(self.network, derived), ip.encode())
        self.kv.delete(ptr_key(self.network, packed), from_wire(name).rstrip(".").encode())


@implementer(INameStore)
class DhtNameStore:
    """
    Names of the whole WOW, read through from the DHT and cached locally
    until their TTL runs out; this node's own names are added directly.
    """

    complete = False
    #: Misses remembered at most (a flood of random names must not grow it).
    MAX_NEGATIVE = 10_000

    def __init__(self, kv: IAtomicCreate, network: str, cache: CompactStore,
                 negative_ttl: float = 30) -> None:
        self.kv = kv
        self.network = network
        self.cache = cache
        self.negative_ttl = negative_ttl
        #: DHT key → time until which "not there" is believed without asking.
        self._negative: dict[str, float] = {}
        #: Lookups in flight (key → callers waiting), so a burst of queries
        #: for one name asks the DHT once.
        self._pending: dict[str, list[Deferred[tuple[bytes, float] | None]]] = {}

    def _get(self, key: str, now: float) -> Deferred[tuple[bytes, float] | None]:
        """kv.get with a short negative cache and one request per key in flight."""
        until = self._negative.get(key)
        if until is not None:
            if until > now:
                return succeed(None)
            del self._negative[key]
        mine: Deferred[tuple[bytes, float] | None] = Deferred()
        waiters = self._pending.get(key)
        if waiters is not None:
            waiters.append(mine)
            return mine
        waiters = self._pending[key] = [mine]

        def done(entry: tuple[bytes, float] | None) -> None:
            del self._pending[key]
            if entry is None:
                if len(self._negative) >= self.MAX_NEGATIVE:
                    self._negative.clear()
                self._negative[key] = now + self.negative_ttl
            for waiter in waiters:
                waiter.callback(entry)

        def failed(failure: Failure) -> None:
            del self._pending[key]
            for waiter in waiters:
                waiter.errback(failure)

        self.kv.get(key).addCallbacks(done, failed)
        return mine

    def lookup_a(self, name: bytes, now: float) -> tuple[bytes, int] | None:
        return self.cache.lookup_a(name, now)

    def lookup_ptr(self, ip: bytes, now: float) -> tuple[bytes, int] | None:
        return self.cache.lookup_ptr(ip, now)

    def is_empty_nonterminal(self, name: bytes) -> bool:
        return self.cache.is_empty_nonterminal(name)

    def fetch_a(self, name: bytes, now: float) -> Deferred[tuple[bytes, int] | None]:
        def found(entry: tuple[bytes, float] | None) -> tuple[bytes, int] | None:
            if entry is None:
                return None
            try:
                ip = pack_ip(entry[0].decode("ascii"))
            except (UnicodeDecodeError, ValueError):
                return None  # garbage from another node: a miss, not a crash
            self.cache.add(name, ip, now + entry[1])
            return ip, int(entry[1])

        return self._get(name_key(self.network, name), now).addCallback(found)

    def fetch_ptr(self, ip: bytes, now: float) -> Deferred[tuple[bytes, int] | None]:
        def found(entry: tuple[bytes, float] | None) -> tuple[bytes, int] | None:
            if entry is None:
                return None
            try:
                wire = absolute(entry[0].decode("ascii") + ".", self.cache.domain_wire)
            except (UnicodeDecodeError, ValueError):
                return None
            self.cache.add(wire, ip, now + entry[1])
            return wire, int(entry[1])

        return self._get(ptr_key(self.network, ip), now).addCallback(found)

    def add(self, name: bytes, ip: bytes, expires: float | None) -> None:
        self.cache.add(name, ip, expires)

    def remove(self, name: bytes) -> None:
        self.cache.remove(name)

    def __len__(self) -> int:
        return len(self.cache)
