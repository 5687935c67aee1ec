"""
Where leases come from.

The DHCP server asks an L{IAllocator} for addresses and never cares whether
the answer comes from a pool on this host (L{LocalAllocator}, this module) or
from the overlay's DHT (a later allocator): every method may return a
Deferred, so an asynchronous allocator plugs in unchanged.

A client is identified by its client identifier (option 61) when it sends
one, else by its hardware address, as RFC 2131 §4.2 asks.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from wow.metrics import Counters
from wow.util.durable import atomic_write

#: How long an offered address stays reserved for the client it was offered to.
OFFER_HOLD = 60.0
#: How long a declined address (RFC 2131 §4.3.3: in use by someone else) is
#: kept out of the pool.
DECLINE_QUARANTINE = 600.0

BOUND = "bound"
OFFERED = "offered"
FREE = "free"  # released or expired; kept so the same client gets it back
DECLINED = "declined"


def client_key(mac: bytes, client_id: bytes | None) -> str:
    """The identity a lease is bound to: option 61 if sent, else the MAC."""
    if client_id:
        return "id:" + client_id.hex()
    return "mac:" + mac.hex()


@dataclass(frozen=True)
class Lease:
    """One address and what the allocator knows about its holder."""

    ip: IPv4Address
    mac: bytes
    key: str
    state: str
    #: Wall-clock expiry (the clock's seconds()).
    expires: float
    hostname: str = ""
    fqdn: str = ""

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ip"] = str(self.ip)
        out["mac"] = self.mac.hex(":")
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Lease:
        return cls(
            ip=IPv4Address(obj["ip"]),
            mac=bytes.fromhex(obj["mac"].replace(":", "")),
            key=str(obj["key"]),
            state=str(obj["state"]),
            expires=float(obj["expires"]),
            hostname=str(obj.get("hostname", "")),
            fqdn=str(obj.get("fqdn", "")),
        )


class IAllocator(Interface):
    """
    Hands out virtual IPv4 addresses to DHCP clients.

    Every method returns a value or a L{Deferred} firing with it.
    """

    def offer(mac: bytes, client_id: bytes | None, requested: IPv4Address | None
              ) -> Deferred[Lease | None]:
        """
        Reserve an address for a DHCPOFFER: the client's current or previous
        address, else the requested one if free, else any free one; L{None}
        when the pool is exhausted.
        """

    def commit(mac: bytes, client_id: bytes | None, ip: IPv4Address, lease_time: int,
               hostname: str = "", fqdn: str = "") -> Deferred[Lease | None]:
        """
        Bind C{ip} to the client for C{lease_time} seconds (DHCPREQUEST in
        SELECTING, INIT-REBOOT, RENEWING or REBINDING); L{None} when C{ip}
        is not in the pool or belongs to another client.  Durable before it
        fires.
        """

    def renew(mac: bytes, client_id: bytes | None, ip: IPv4Address, lease_time: int,
              hostname: str = "", fqdn: str = "") -> Deferred[Lease | None]:
        """
        Extend the client's lease on C{ip} (DHCPREQUEST in RENEWING or
        REBINDING); like L{commit}, L{None} when C{ip} is someone else's.
        A distributed allocator refreshes its claim here.
        """

    def release(mac: bytes, client_id: bytes | None, ip: IPv4Address) -> Deferred[bool]:
        """Give C{ip} back (DHCPRELEASE); False if the client did not hold it."""

    def decline(mac: bytes, client_id: bytes | None, ip: IPv4Address) -> Deferred[bool]:
        """
        The client found C{ip} in use (DHCPDECLINE): take it out of the pool
        for a while; False if the client did not hold it.
        """

    def lookup(mac: bytes, client_id: bytes | None) -> Deferred[Lease | None]:
        """The client's bound, unexpired lease, if any."""

    def leases() -> Deferred[list[Lease]]:
        """Every bound, unexpired lease."""



def set_lease_file_aside(path: str, error: Exception, counters: Counters, log: Logger) -> None:
    """Never lose the evidence: keep an unreadable lease file aside, start empty."""
    aside = path + ".corrupt"
    try:
        os.replace(path, aside)
    except OSError:
        pass
    counters.inc("lease_file_errors", reason="corrupt")
    log.error("lease file {path} is unreadable ({error}); moved to {aside}",
              path=path, error=error, aside=aside)


def read_lease_file(path: str, counters: Counters, log: Logger) -> dict[str, Any] | None:
    """The parsed lease file; None when there is none or it was unreadable (set aside)."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return data
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        set_lease_file_aside(path, e, counters, log)
        return None

def default_pool(network: IPv4Network, gateway: IPv4Address) -> tuple[IPv4Address, IPv4Address]:
    """The whole subnet but the network, broadcast and gateway addresses."""
    first = network.network_address + 1
    last = network.broadcast_address - 1
    if first == gateway:
        first += 1
    if last == gateway:
        last -= 1
    return first, last


@implementer(IAllocator)
class LocalAllocator:
    """
    A pool of addresses kept in one JSON lease file, replaced atomically on
    every change that must survive a crash (commit, release, decline).

    Offers are not written: an offer lost in a crash costs the client one
    more DISCOVER.  Released and expired leases stay in the file as C{free}
    records of their last holder, so the same client gets the same address
    back (also after a restart), and other clients get never-used addresses
    first.
    """

    log = Logger()
    VERSION = 1

    def __init__(self, path: str, network: IPv4Network, gateway: IPv4Address,
                 clock: IReactorTime, counters: Counters | None = None,
                 pool_start: IPv4Address | None = None, pool_end: IPv4Address | None = None,
                 offer_hold: float = OFFER_HOLD, quarantine: float = DECLINE_QUARANTINE,
                 group_commit: bool = False) -> None:
        self.path = path
        self.network = network
        self.gateway = gateway
        self.clock = clock
        self.counters = counters or Counters()
        first, last = default_pool(network, gateway)
        self.first = pool_start or first
        self.last = pool_end or last
        self.offer_hold = offer_hold
        self.quarantine = quarantine
        self._by_ip: dict[IPv4Address, Lease] = {}
        self._by_key: dict[str, IPv4Address] = {}
        self._cursor = int(self.first)
        #: Group commit: changes made in one reactor turn are written once,
        #: and their Deferreds fire only after that write is on disk.
        self.group_commit = group_commit
        self._waiting: list[tuple[Deferred[Any], Any]] = []
        self._flush_call: Any = None
        self._load()

    # -- persistence ------------------------------------------------------

    def _load(self) -> None:
        data = read_lease_file(self.path, self.counters, self.log)
        if data is None:
            return
        try:
            leases = [Lease.from_json(r) for r in data["leases"]]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            set_lease_file_aside(self.path, e, self.counters, self.log)
            return
        for lease in leases:
            if lease.state == OFFERED:
                continue
            self._put(lease)

    def _save(self) -> None:
        records = [lease.to_json() for lease in self._by_ip.values() if lease.state != OFFERED]
        data = json.dumps({"version": self.VERSION, "leases": records}, separators=(",", ":"))
        atomic_write(self.path, data.encode() + b"\n", mode=0o600)
        self.counters.inc("lease_file_writes")

    def _durable(self, value: Any) -> Deferred[Any]:
        """C{value}, once the current state is on disk."""
        if not self.group_commit:
            self._save()
            return succeed(value)
        d: Deferred[Any] = Deferred()
        self._waiting.append((d, value))
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self._flush)
        return d

    def _flush(self) -> None:
        self._flush_call = None
        waiting, self._waiting = self._waiting, []
        try:
            self._save()
        except Exception:
            failure = Failure()  # type: ignore[no-untyped-call]
            for d, _ in waiting:
                d.errback(failure)
            return
        for d, value in waiting:
            d.callback(value)

    # -- bookkeeping ------------------------------------------------------

    def _put(self, lease: Lease) -> None:
        old = self._by_ip.get(lease.ip)
        if old is not None and self._by_key.get(old.key) == lease.ip and old.key != lease.key:
            del self._by_key[old.key]
        self._by_ip[lease.ip] = lease
        if lease.state != DECLINED:
            previous = self._by_key.get(lease.key)
            if previous is not None and previous != lease.ip:
                # One address per client: the older record becomes free.
                prev = self._by_ip.get(previous)
                if prev is not None and prev.key == lease.key and prev.state != DECLINED:
                    self._by_ip[previous] = replace(prev, state=FREE, expires=0.0)
            self._by_key[lease.key] = lease.ip

    def _active(self, lease: Lease, now: float) -> bool:
        """Whether C{lease} still keeps its address from other clients."""
        return lease.state in (BOUND, OFFERED, DECLINED) and lease.expires > now

    def in_pool(self, ip: IPv4Address) -> bool:
        return self.first <= ip <= self.last and ip != self.gateway

    def _available_to(self, ip: IPv4Address, key: str, now: float) -> bool:
        if not self.in_pool(ip):
            return False
        lease = self._by_ip.get(ip)
        if lease is None or not self._active(lease, now):
            return True
        return lease.key == key and lease.state != DECLINED

    def _scan(self, now: float) -> Iterator[IPv4Address]:
        """Free addresses: never used ones first (from a moving cursor), then
        those last held by somebody else, oldest expiry first."""
        size = int(self.last) - int(self.first) + 1
        start = self._cursor
        for i in range(size):
            n = int(self.first) + (start - int(self.first) + i) % size
            ip = IPv4Address(n)
            if ip not in self._by_ip and ip != self.gateway:
                self._cursor = n + 1 if n < int(self.last) else int(self.first)
                yield ip
                return
        stale = sorted(
            (lease for lease in self._by_ip.values()
             if not self._active(lease, now) and self.in_pool(lease.ip)),
            key=lambda lease: lease.expires,
        )
        for lease in stale:
            yield lease.ip

    # -- IAllocator -------------------------------------------------------

    def offer(self, mac: bytes, client_id: bytes | None, requested: IPv4Address | None
              ) -> Deferred[Lease | None]:
        now = self.clock.seconds()
        key = client_key(mac, client_id)
        candidates: list[IPv4Address] = []
        mine = self._by_key.get(key)
        if mine is not None:
            candidates.append(mine)
        if requested is not None:
            candidates.append(requested)
        chosen = next((ip for ip in candidates if self._available_to(ip, key, now)), None)
        if chosen is None:
            chosen = next(iter(self._scan(now)), None)
        if chosen is None:
            self.counters.inc("dhcp_pool_exhausted")
            return succeed(None)
        current = self._by_ip.get(chosen)
        if current is not None and current.key == key and current.state == BOUND \
                and current.expires > now:
            return succeed(current)
        lease = Lease(chosen, mac, key, OFFERED, now + self.offer_hold,
                      current.hostname if current and current.key == key else "")
        self._put(lease)
        return succeed(lease)

    def commit(self, mac: bytes, client_id: bytes | None, ip: IPv4Address, lease_time: int,
               hostname: str = "", fqdn: str = "") -> Deferred[Lease | None]:
        now = self.clock.seconds()
        key = client_key(mac, client_id)
        if not self._available_to(ip, key, now):
            return succeed(None)
        lease = Lease(ip, mac, key, BOUND, now + lease_time, hostname, fqdn)
        self._put(lease)
        return self._durable(lease)

    def renew(self, mac: bytes, client_id: bytes | None, ip: IPv4Address, lease_time: int,
              hostname: str = "", fqdn: str = "") -> Deferred[Lease | None]:
        # Locally a renewal is a commit: the same checks, the same durability.
        return self.commit(mac, client_id, ip, lease_time, hostname, fqdn)

    def release(self, mac: bytes, client_id: bytes | None, ip: IPv4Address) -> Deferred[bool]:
        key = client_key(mac, client_id)
        lease = self._by_ip.get(ip)
        if lease is None or lease.key != key or lease.state not in (BOUND, OFFERED):
            return succeed(False)
        self._by_ip[ip] = replace(lease, state=FREE, expires=self.clock.seconds())
        return self._durable(True)

    def decline(self, mac: bytes, client_id: bytes | None, ip: IPv4Address) -> Deferred[bool]:
        key = client_key(mac, client_id)
        lease = self._by_ip.get(ip)
        if lease is None or lease.key != key or lease.state not in (BOUND, OFFERED):
            return succeed(False)
        self._by_ip[ip] = replace(lease, state=DECLINED, key="declined",
                                  expires=self.clock.seconds() + self.quarantine)
        if self._by_key.get(key) == ip:
            del self._by_key[key]
        return self._durable(True)

    def lookup(self, mac: bytes, client_id: bytes | None) -> Deferred[Lease | None]:
        ip = self._by_key.get(client_key(mac, client_id))
        lease = self._by_ip.get(ip) if ip is not None else None
        if lease is None or lease.state != BOUND or lease.expires <= self.clock.seconds():
            return succeed(None)
        return succeed(lease)

    def leases(self) -> Deferred[list[Lease]]:
        now = self.clock.seconds()
        bound = [lease for lease in self._by_ip.values()
                 if lease.state == BOUND and lease.expires > now]
        return succeed(sorted(bound, key=lambda lease: lease.ip))
