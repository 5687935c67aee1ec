"""
Decentralised DHCP: leases claimed in the overlay's DHT.

L{DhtAllocator} is an L{IAllocator} whose pool is the whole virtual subnet,
shared by every node without any coordinator: an address belongs to the node
that created the DHT key C{dhcp:<network>:<ip>} (value: the node's overlay
address).  C{create} is atomic, so of two nodes claiming one address at the
same time exactly one wins and the other moves on to another address.

- DISCOVER (L{offer}): the client's previous address first (remembered per
  client in the state directory), then the one it requests, then random
  addresses of the pool (random, not sequential: in a boot storm sequential
  scans collide on every step), at most C{max_tries} claims.  An offer holds
  a short claim (C{offer_hold} seconds).
- REQUEST (L{commit}): the same node creates the key again with the lease's
  TTL plus C{grace} (the same owner renews), so the claim outlives the
  client's lease by a margin for clocks and latency.  A renewal does the same.
- While a lease is bound the node re-asserts its claim at half the remaining
  time (a DHT that lost the record, a client late to renew), never beyond
  the client's lease.
- RELEASE, DECLINE and a clean shutdown (L{shutdown}) delete the claim.

The node's clients are few, so the local view is a small dict per client
key, written atomically on every change that must survive a crash.
"""

from __future__ import annotations

import json
import random
from collections.abc import Generator, Iterator
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wow.dhcp.allocator import (
    BOUND,
    DECLINE_QUARANTINE,
    FREE,
    OFFER_HOLD,
    OFFERED,
    IAllocator,
    Lease,
    client_key,
    default_pool,
    read_lease_file,
    set_lease_file_aside,
)
from wow.dhcp.dhtclient import EXISTS, DhtClientError, IDhtClient, failure_reason, lease_key
from wow.metrics import Counters
from wow.util.durable import atomic_write

#: How long a claim outlives the client's lease in the DHT.
GRACE = 30
#: At most this many addresses are claimed for one DISCOVER.
MAX_TRIES = 16
#: An address found taken is not tried again for this long.
TAKEN_MEMORY = 60.0
#: No refresh is scheduled closer than this to the previous one.
REFRESH_MIN = 10.0
#: A clean shutdown waits at most this long for its deletes.
SHUTDOWN_WAIT = 3.0


@implementer(IAllocator)
class DhtAllocator:
    """Leases claimed with atomic DHT creates; see the module docstring."""

    log = Logger()
    VERSION = 1

    def __init__(self, path: str, network: IPv4Network, gateway: IPv4Address,
                 dht: IDhtClient, clock: IReactorTime, counters: Counters | None = None,
                 pool_start: IPv4Address | None = None, pool_end: IPv4Address | None = None,
                 rng: random.Random | None = None, offer_hold: float = OFFER_HOLD,
                 quarantine: float = DECLINE_QUARANTINE, max_tries: int = MAX_TRIES,
                 grace: int = GRACE) -> None:
        self.path = path
        self.network = network
        self.gateway = gateway
        self.dht = dht
        self.clock = clock
        self.counters = counters or Counters()
        first, last = default_pool(network, gateway)
        self.first = pool_start or first
        self.last = pool_end or last
        self.rng = rng or random.Random()
        self.offer_hold = offer_hold
        self.quarantine = quarantine
        self.max_tries = max_tries
        self.grace = grace
        #: client key -> its current (or last) lease
        self._leases: dict[str, Lease] = {}
        #: address -> until when it stays out of the pool (DHCPDECLINE)
        self._declined: dict[IPv4Address, float] = {}
        #: address -> until when it is believed held by another node
        self._taken: dict[IPv4Address, float] = {}
        #: addresses with a create in flight -> the client key it is for
        self._claiming: dict[IPv4Address, str] = {}
        #: client key -> callers waiting for the offer in progress
        self._offering: dict[str, list[Deferred[Lease | None]]] = {}
        self._refresh: dict[str, IDelayedCall] = {}
        self._stopped = False
        self._load()

    # -- persistence ------------------------------------------------------

    def _load(self) -> None:
        data = read_lease_file(self.path, self.counters, self.log)
        if data is None:
            return
        try:
            leases = [Lease.from_json(r) for r in data["leases"]]
            declined = {IPv4Address(ip): float(t) for ip, t in data.get("declined", {}).items()}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            set_lease_file_aside(self.path, e, self.counters, self.log)
            return
        for lease in leases:
            if lease.ip in self.network:
                self._leases[lease.key] = lease
        self._declined = declined

    def _save(self) -> None:
        records = []
        for lease in self._leases.values():
            if lease.state == OFFERED:
                # An offer is not a lease: remembered as the client's last address only.
                lease = replace(lease, state=FREE, expires=0.0)
            records.append(lease.to_json())
        now = self.clock.seconds()
        declined = {str(ip): t for ip, t in self._declined.items() if t > now}
        data = json.dumps({"version": self.VERSION, "leases": records, "declined": declined},
                          sort_keys=True)
        atomic_write(self.path, data.encode() + b"\n", mode=0o600)

    # -- the pool -----------------------------------------------------------

    def in_pool(self, ip: IPv4Address) -> bool:
        return self.first <= ip <= self.last and ip != self.gateway

    @staticmethod
    def _active(lease: Lease, now: float) -> bool:
        return lease.state in (BOUND, OFFERED) and lease.expires > now

    def _refusal(self, ip: IPv4Address, key: str, now: float) -> str | None:
        """Why C{ip} cannot go to client C{key} (this node's view), or None."""
        if not self.in_pool(ip):
            return "outside-pool"
        if self._declined.get(ip, 0.0) > now:
            return "declined"
        claimant = self._claiming.get(ip)
        if claimant is not None and claimant != key:
            return "claim-in-flight"
        for other, lease in self._leases.items():
            if other != key and lease.ip == ip and self._active(lease, now):
                return "held-locally"
        return None

    def _usable(self, ip: IPv4Address, key: str, now: float) -> bool:
        return self._refusal(ip, key, now) is None and self._taken.get(ip, 0.0) <= now

    def _candidates(self, preferred: list[IPv4Address], key: str) -> Iterator[IPv4Address]:
        """Preferred addresses, then random ones; at most C{max_tries} in all."""
        tried: set[IPv4Address] = set()
        for ip in preferred:
            if len(tried) < self.max_tries and ip not in tried \
                    and self._usable(ip, key, self.clock.seconds()):
                tried.add(ip)
                yield ip
        lo, hi = int(self.first), int(self.last)
        draws = 0
        while len(tried) < self.max_tries and draws < 8 * self.max_tries:
            draws += 1
            ip = IPv4Address(self.rng.randint(lo, hi))
            if ip not in tried and self._usable(ip, key, self.clock.seconds()):
                tried.add(ip)
                yield ip

    def _key(self, ip: IPv4Address) -> bytes:
        return lease_key(self.network, ip)

    def _claim(self, ip: IPv4Address, key: str, ttl: float, phase: str) -> Deferred[None]:
        """Create C{ip}'s key for C{ttl} seconds; bookkeeping for taken/errors."""
        self._claiming[ip] = key

        def done(result: None | Failure) -> None | Failure:
            if self._claiming.get(ip) == key:
                del self._claiming[ip]
            if isinstance(result, Failure):
                reason = failure_reason(result)
                if reason == EXISTS:
                    self._taken[ip] = self.clock.seconds() + TAKEN_MEMORY
                    self.counters.inc("dhcp_dht_claims", phase=phase, result="taken")
                else:
                    self.counters.inc("dhcp_dht_claims", phase=phase, result="error",
                                      reason=reason)
                return result
            self._taken.pop(ip, None)
            self.counters.inc("dhcp_dht_claims", phase=phase, result="ok")
            return None

        d = self.dht.create(self._key(ip), self.dht.address, max(1, int(ttl)))
        return d.addBoth(done)

    def _unclaim(self, ip: IPv4Address, why: str) -> Deferred[None]:
        """Delete this node's claim on C{ip}; failures are counted, never raised."""

        def failed(f: Failure) -> None:
            reason = failure_reason(f)
            self.counters.inc("dhcp_dht_releases", result="error", reason=reason)
            self.log.info("could not delete the claim on {ip} ({why}): {reason}",
                          ip=ip, why=why, reason=reason)

        def ok(_: None) -> None:
            self.counters.inc("dhcp_dht_releases", result="ok")

        return self.dht.delete(self._key(ip)).addCallbacks(ok, failed)

    # -- IAllocator -------------------------------------------------------

    def offer(self, mac: bytes, client_id: bytes | None, requested: IPv4Address | None
              ) -> Deferred[Lease | None]:
        key = client_key(mac, client_id)
        waiting = self._offering.get(key)
        if waiting is not None:
            # A retransmitted DISCOVER while we are still claiming: same answer.
            d: Deferred[Lease | None] = Deferred()
            waiting.append(d)
            return d
        self._offering[key] = []

        def finish(result: Lease | None | Failure) -> Lease | None | Failure:
            for w in self._offering.pop(key, []):
                if isinstance(result, Failure):
                    w.errback(result)
                else:
                    w.callback(result)
            return result

        return self._offer(key, mac, requested).addBoth(finish)

    @inlineCallbacks
    def _offer(self, key: str, mac: bytes, requested: IPv4Address | None
               ) -> Generator[Deferred[Any], Any, Lease | None]:
        now = self.clock.seconds()
        current = self._leases.get(key)
        if current is not None and current.state == BOUND and current.expires > now \
                and self._refusal(current.ip, key, now) is None:
            return current
        preferred = [current.ip] if current is not None else []
        if requested is not None:
            preferred.append(requested)
        tries = 0
        for ip in self._candidates(preferred, key):
            tries += 1
            try:
                yield self._claim(ip, key, self.offer_hold, "offer")
            except DhtClientError as e:
                if e.taken:
                    continue
                raise
            now = self.clock.seconds()
            hostname = current.hostname if current is not None and current.ip == ip else ""
            lease = Lease(ip, mac, key, OFFERED, now + self.offer_hold, hostname)
            self._replace(key, lease)
            return lease
        self.counters.inc("dhcp_pool_exhausted")
        self.log.warn("no free address for {mac} after {tries} claims: the pool "
                      "{first}-{last} seems exhausted", mac=mac.hex(":"), tries=tries,
                      first=self.first, last=self.last)
        return None

    def _replace(self, key: str, lease: Lease) -> None:
        """Make C{lease} the client's; a different address it held is let go."""
        old = self._leases.get(key)
        self._leases[key] = lease
        if old is not None and old.ip != lease.ip and self._active(old, self.clock.seconds()):
            self._cancel_refresh(key)
            self._unclaim(old.ip, "moved")

    def commit(self, mac: bytes, client_id: bytes | None, ip: IPv4Address, lease_time: int,
               hostname: str = "", fqdn: str = "") -> Deferred[Lease | None]:
        return self._commit(client_key(mac, client_id), mac, ip, lease_time, hostname, fqdn)

    def renew(self, mac: bytes, client_id: bytes | None, ip: IPv4Address, lease_time: int,
              hostname: str = "", fqdn: str = "") -> Deferred[Lease | None]:
        """A renewal re-creates the claim with the new lease's TTL (same owner)."""
        return self.commit(mac, client_id, ip, lease_time, hostname, fqdn)

    @inlineCallbacks
    def _commit(self, key: str, mac: bytes, ip: IPv4Address, lease_time: int, hostname: str,
                fqdn: str) -> Generator[Deferred[Any], Any, Lease | None]:
        now = self.clock.seconds()
        why = self._refusal(ip, key, now)
        if why is not None:
            self.counters.inc("dhcp_dht_refused", reason=why)
            return None
        try:
            yield self._claim(ip, key, lease_time + self.grace, "commit")
        except DhtClientError as e:
            if not e.taken:
                raise
            current = self._leases.get(key)
            if current is not None and current.ip == ip and current.state in (BOUND, OFFERED):
                # Another node owns it now (our claim was lost): the client
                # gets a NAK and starts over with a new address.
                self.counters.inc("dhcp_dht_conflicts", reason="lost-claim")
                self.log.warn("{ip} of {mac} is claimed by another node", ip=ip,
                              mac=mac.hex(":"))
                self._leases[key] = replace(current, state=FREE, expires=0.0)
                self._cancel_refresh(key)
                self._save()
            return None
        lease = Lease(ip, mac, key, BOUND, now + lease_time, hostname, fqdn)
        self._replace(key, lease)
        self._save()
        self._schedule_refresh(key)
        return lease

    def release(self, mac: bytes, client_id: bytes | None, ip: IPv4Address) -> Deferred[bool]:
        key = client_key(mac, client_id)
        lease = self._leases.get(key)
        if lease is None or lease.ip != ip or lease.state not in (BOUND, OFFERED):
            return succeed(False)
        self._leases[key] = replace(lease, state=FREE, expires=self.clock.seconds())
        self._cancel_refresh(key)
        self._save()
        return self._unclaim(ip, "release").addCallback(lambda _: True)

    def decline(self, mac: bytes, client_id: bytes | None, ip: IPv4Address) -> Deferred[bool]:
        key = client_key(mac, client_id)
        lease = self._leases.get(key)
        if lease is None or lease.ip != ip or lease.state not in (BOUND, OFFERED):
            return succeed(False)
        self._declined[ip] = self.clock.seconds() + self.quarantine
        del self._leases[key]
        self._cancel_refresh(key)
        self._save()
        return self._unclaim(ip, "decline").addCallback(lambda _: True)

    def lookup(self, mac: bytes, client_id: bytes | None) -> Deferred[Lease | None]:
        lease = self._leases.get(client_key(mac, client_id))
        if lease is None or lease.state != BOUND or lease.expires <= self.clock.seconds():
            return succeed(None)
        return succeed(lease)

    def leases(self) -> Deferred[list[Lease]]:
        now = self.clock.seconds()
        bound = [lease for lease in self._leases.values()
                 if lease.state == BOUND and lease.expires > now]
        return succeed(sorted(bound, key=lambda lease: lease.ip))

    # -- keeping claims alive ---------------------------------------------

    def _schedule_refresh(self, key: str) -> None:
        self._cancel_refresh(key)
        lease = self._leases.get(key)
        if lease is None or lease.state != BOUND or self._stopped:
            return
        remaining = lease.expires - self.clock.seconds()
        if remaining < 2 * REFRESH_MIN:
            return
        self._refresh[key] = self.clock.callLater(remaining / 2, self._refresh_claim, key)

    def _cancel_refresh(self, key: str) -> None:
        call = self._refresh.pop(key, None)
        if call is not None and call.active():
            call.cancel()

    def _refresh_claim(self, key: str, phase: str = "refresh") -> None:
        """Re-assert a bound lease's claim until the client's lease ends (+ grace)."""
        self._refresh.pop(key, None)
        lease = self._leases.get(key)
        now = self.clock.seconds()
        if lease is None or lease.state != BOUND or lease.expires <= now:
            return

        def done(_: None) -> None:
            self._schedule_refresh(key)

        def failed(f: Failure) -> None:
            f.trap(DhtClientError)
            current = self._leases.get(key)
            if failure_reason(f) == EXISTS:
                self.counters.inc("dhcp_dht_conflicts", reason=phase)
                self.log.error("the claim on {ip} (client {key}) is held by another node",
                               ip=lease.ip, key=key)
                return
            if current is not None and current.ip == lease.ip:
                # Unknown outcome: try again soon, the lease is still ours.
                self._refresh[key] = self.clock.callLater(REFRESH_MIN, self._refresh_claim,
                                                          key, phase)

        ttl = lease.expires - now + self.grace
        self._claim(lease.ip, key, ttl, phase).addCallbacks(done, failed).addErrback(
            lambda f: self.log.failure("refreshing the claim on {ip} failed", f, ip=lease.ip))

    def start(self) -> None:
        """After a restart: re-assert the claims of the leases still bound."""
        self._stopped = False
        now = self.clock.seconds()
        for key, lease in list(self._leases.items()):
            if lease.state == BOUND and lease.expires > now:
                self._refresh_claim(key, "restore")

    def shutdown(self, wait: float = SHUTDOWN_WAIT) -> Deferred[None]:
        """
        Clean shutdown: delete every claim this node holds, waiting at most
        C{wait} seconds.  Bound leases stay in the lease file (the host keeps
        its address): L{start} claims them again after the restart.
        """
        self._stopped = True
        for key in list(self._refresh):
            self._cancel_refresh(key)
        now = self.clock.seconds()
        ips = {lease.ip for lease in self._leases.values() if self._active(lease, now)}
        if not ips:
            return succeed(None)
        done: Deferred[None] = Deferred()
        deletes = DeferredList([self._unclaim(ip, "shutdown") for ip in sorted(ips)],
                               consumeErrors=True)
        def finished(_: Any = None) -> None:
            if timer.active():
                timer.cancel()
            if not done.called:
                done.callback(None)

        timer = self.clock.callLater(wait, finished)
        deletes.addCallback(finished)
        return done

