"""
In-memory fakes shared by the unit tests of several parts.

Each fake implements the interface of the real thing and is checked with
C{verifyObject} in the tests, so it cannot drift from it.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from wow.dhcp.dhtclient import EXISTS, DhtClientError, DhtEntry, IDhtClient
from wow.nic.tap import ITapDevice, ITapSyscalls, TapError


@implementer(ITapDevice)
class FakeTapDevice:
    """
    A TAP device whose host side is two queues: frames the test injects
    (C{inject}) are read by the node; frames the node writes land in
    C{written}.
    """

    def __init__(self, name: str, mtu: int, hwaddr: bytes) -> None:
        self.name = name
        self.mtu = mtu
        self.hwaddr = hwaddr
        self.inbound: deque[bytes] = deque()
        self.written: list[bytes] = []
        self.closed = False
        #: Set to an OSError to make the next write fail.
        self.write_error: OSError | None = None

    def inject(self, frame: bytes) -> None:
        self.inbound.append(frame)

    def fileno(self) -> int:
        return -1

    def read(self, size: int) -> bytes:
        if not self.inbound:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return self.inbound.popleft()[:size]

    def write(self, frame: bytes) -> int:
        if self.write_error is not None:
            error, self.write_error = self.write_error, None
            raise error
        self.written.append(bytes(frame))
        return len(frame)

    def close(self) -> None:
        self.closed = True


@implementer(ITapSyscalls)
class FakeTapSyscalls:
    """Opens L{FakeTapDevice}s; C{fail} makes preflight/open raise L{TapError}."""

    def __init__(self, fail: str = "") -> None:
        self.fail = fail
        self.devices: list[FakeTapDevice] = []

    def preflight(self, name: str) -> None:
        if self.fail:
            raise TapError(self.fail)

    def open_tap(self, name: str, mtu: int, hwaddr: bytes) -> FakeTapDevice:
        if self.fail:
            raise TapError(self.fail)
        device = FakeTapDevice(name, mtu, hwaddr)
        self.devices.append(device)
        return device


# -- DHT ----------------------------------------------------------------------


class FakeDht:
    """
    One in-memory DHT shared by many clients (L{FakeDht.client}), modelling
    what the DHCP modes rely on: C{create} is atomic (first writer wins,
    the same owner renews), values expire by the injected clock, only the
    owner deletes.

    Each operation takes effect after a random delay drawn from C{latency}
    (the request's trip) and its Deferred fires after another (the answer's
    trip), both on the clock: operations of many clients interleave as they
    do over a real network.  With C{latency=(0, 0)} everything is immediate.
    C{down} makes every operation fail with C{timeout} after C{timeout}
    seconds; C{fail_next} queues reasons for the next operations to fail with.
    """

    def __init__(self, clock: IReactorTime, latency: tuple[float, float] = (0.0, 0.0),
                 seed: int = 0, timeout: float = 4.0) -> None:
        self.clock = clock
        self.latency = latency
        self.rng = random.Random(seed)
        self.timeout = timeout
        #: key -> (value, owner, expires)
        self.records: dict[bytes, tuple[bytes, bytes, float]] = {}
        self.down = False
        self.fail_next: list[str] = []
        self.ops: list[tuple[str, bytes, bytes]] = []

    def client(self, address: bytes) -> FakeDhtClient:
        return FakeDhtClient(self, address)

    def live(self, key: bytes) -> tuple[bytes, bytes, float] | None:
        record = self.records.get(key)
        if record is not None and record[2] <= self.clock.seconds():
            del self.records[key]
            return None
        return record

    def _delay(self) -> float:
        lo, hi = self.latency
        return self.rng.uniform(lo, hi) if hi > 0 else 0.0

    def run(self, op: str, key: bytes, owner: bytes, apply: Callable[[], Any]) -> Deferred[Any]:
        self.ops.append((op, key, owner))
        d: Deferred[Any] = Deferred()
        if self.down:
            self.clock.callLater(self.timeout, d.errback, DhtClientError("timeout"))
            return d
        if self.fail_next:
            self._answer(d, Failure(DhtClientError(self.fail_next.pop(0))))
            return d

        def arrive() -> None:
            try:
                result: Any = apply()
            except DhtClientError as e:
                self._answer(d, Failure(e))
            else:
                self._answer(d, result)

        delay = self._delay()
        if delay:
            self.clock.callLater(delay, arrive)
        else:
            arrive()
        return d

    def _answer(self, d: Deferred[Any], result: Any) -> None:
        delay = self._delay()
        fire = d.errback if isinstance(result, Failure) else d.callback
        if delay:
            self.clock.callLater(delay, fire, result)
        else:
            fire(result)


@implementer(IDhtClient)
class FakeDhtClient:
    """One node's view of a L{FakeDht}."""

    def __init__(self, dht: FakeDht, address: bytes) -> None:
        self.dht = dht
        self.address = address

    def create(self, key: bytes, value: bytes, ttl: int) -> Deferred[None]:
        dht = self.dht

        def apply() -> None:
            record = dht.live(key)
            if record is not None and record[1] != self.address:
                raise DhtClientError(EXISTS)
            dht.records[key] = (value, self.address, dht.clock.seconds() + ttl)

        return dht.run("create", key, self.address, apply)

    def get(self, key: bytes) -> Deferred[list[DhtEntry]]:
        dht = self.dht

        def apply() -> list[DhtEntry]:
            record = dht.live(key)
            if record is None:
                return []
            return [DhtEntry(record[0], record[1], record[2] - dht.clock.seconds())]

        return dht.run("get", key, self.address, apply)

    def delete(self, key: bytes) -> Deferred[None]:
        dht = self.dht

        def apply() -> None:
            record = dht.live(key)
            if record is not None and record[1] == self.address:
                del dht.records[key]

        return dht.run("delete", key, self.address, apply)
