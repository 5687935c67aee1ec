"""
The authority for WOW's virtual domain and its reverse zone.

L{ZoneAuthority.resolve} is the complete answer logic for names inside the
two zones (the forward domain, C{wow.} by default, and the C{in-addr.arpa}
zone of the virtual subnet): A records from the name store (host names,
names derived from every leased address, static records), PTR records, SOA
and NS at both apexes, static records of other types from configuration,
CNAME chasing inside the zone, and the negative answers RFC 2308 asks for
(NXDOMAIN when the name does not exist, NODATA when it exists without the
type asked for, both with the SOA in the authority section and its TTL
capped by the SOA minimum).  Names are compared in lower-cased wire format,
so lookups are case-insensitive; answers carry the owner name the client
asked with, so DNS 0x20 case randomisation survives.

It is also a twisted.names L{IResolver} (through C{ResolverBase._lookup})
so it can sit in a C{ResolverChain} or a C{DNSServerFactory}.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.names import common, dns
from twisted.names.error import AuthoritativeDomainError
from twisted.python.failure import Failure

from wow.dns.names import BadName, from_wire, in_zone, parse_ptr_wire, reverse_zone_wire, to_wire
from wow.dns.store import INameStore

FORWARD, REVERSE = 1, 2

#: How many CNAMEs inside the zone one answer follows.
MAX_CHASE = 8


@dataclass
class Resolution:
    """The sections and result code of one authoritative answer."""

    rcode: int = dns.OK
    answers: list[dns.RRHeader] = field(default_factory=list)
    authority: list[dns.RRHeader] = field(default_factory=list)
    additional: list[dns.RRHeader] = field(default_factory=list)


@dataclass(frozen=True)
class StaticRecord:
    """One record from configuration, already validated."""

    name: bytes  # lower-cased wire format
    type: int
    ttl: int
    payload: Any  # a twisted.names Record_* instance


@dataclass(frozen=True)
class SoaSettings:
    """The timers of the zones' SOA records (RFC 1035 §3.3.13)."""

    serial: int = 1
    refresh: int = 3600
    retry: int = 600
    expire: int = 86400
    #: The negative-caching TTL (RFC 2308).
    minimum: int = 60
    ttl: int = 3600


class ZoneAuthority(common.ResolverBase):
    """Authoritative answers for the virtual domain and its reverse zone."""

    def __init__(self, domain: str, subnet: ipaddress.IPv4Network, store: INameStore,
                 clock: Any, soa: SoaSettings = SoaSettings(),
                 nameservers: Iterable[tuple[str, str | None]] = (("ns", None),),
                 static: Iterable[StaticRecord] = ()) -> None:
        super().__init__()
        self.domain_wire = to_wire(domain)
        self.reverse_wire = reverse_zone_wire(subnet)
        self.subnet = subnet
        self.store = store
        self.clock = clock
        self.soa_settings = soa
        self.static: dict[bytes, dict[int, list[StaticRecord]]] = {}
        self.ents: set[bytes] = set()
        #: A records that live in the store but come from configuration
        #: (NS glue, static A): put back into a replacement store.
        self._configured_a: list[tuple[bytes, bytes]] = []
        ns_names = []
        for ns_name, ns_address in nameservers:
            wire = to_wire(ns_name) if ns_name.endswith(".") else (
                to_wire(ns_name)[:-1] + self.domain_wire)
            ns_names.append(wire)
            if ns_address and in_zone(wire, self.domain_wire):
                self._configured_a.append((wire, socket.inet_aton(ns_address)))
                store.add(wire, socket.inet_aton(ns_address), None)
                self._note_ents(wire)
        self.ns_names = ns_names
        for record in static:
            self._add_static(record)
        mname = from_wire(ns_names[0]).rstrip(".").encode()
        rname = b"hostmaster." + from_wire(self.domain_wire).rstrip(".").encode()
        self._soa_payload = {
            zone: dns.Record_SOA(
                mname=mname, rname=rname,
                serial=soa.serial, refresh=soa.refresh, retry=soa.retry,
                expire=soa.expire, minimum=soa.minimum, ttl=soa.ttl)
            for zone in (self.domain_wire, self.reverse_wire)
        }

    # -- configuration --------------------------------------------------------

    def _add_static(self, record: StaticRecord) -> None:
        if record.type == dns.A:
            packed = socket.inet_aton(record.payload.dottedQuad())
            self._configured_a.append((record.name, packed))
            self.store.add(record.name, packed, None)
        else:
            self.static.setdefault(record.name, {}).setdefault(record.type, []).append(record)
        self._note_ents(record.name)

    def _note_ents(self, wire: bytes) -> None:
        """Remember the empty non-terminals above C{wire} (they must be NODATA)."""
        zone = self.domain_wire
        name = wire
        while name != zone and in_zone(name, zone):
            name = name[1 + name[0]:]
            if name != zone and in_zone(name, zone):
                self.ents.add(name)

    def replace_store(self, store: INameStore) -> None:
        """Answer from C{store} from now on (a reloaded names file)."""
        for name, packed in self._configured_a:
            store.add(name, packed, None)
        self.store = store

    # -- lookups --------------------------------------------------------------

    def zone_of(self, name: bytes) -> int | None:
        """FORWARD, REVERSE or None for a lower-cased wire name."""
        if in_zone(name, self.domain_wire):
            return FORWARD
        if in_zone(name, self.reverse_wire):
            return REVERSE
        return None

    def resolve(self, name: bytes, qtype: int, owner: bytes | None = None
                ) -> Resolution | Deferred[Resolution] | None:
        """
        The answer for the lower-cased wire name C{name}, or None when the
        name is in neither zone.  A L{Deferred} comes back only when the
        store is a cache that must ask the network.

        @param owner: the name as the client spelt it (dotted bytes), used
            as the owner of the answer records.
        """
        zone = self.zone_of(name)
        if zone is None:
            return None
        now = self.clock.seconds()
        owner = owner if owner is not None else from_wire(name).rstrip(".").encode()
        if zone == REVERSE:
            ip = parse_ptr_wire(name)
            if ip is not None and self._in_subnet(ip):
                hit = self.store.lookup_ptr(ip, now)
                if hit is None and not self.store.complete:
                    return self.store.fetch_ptr(ip, now).addCallback(
                        lambda h: self._reverse(name, owner, qtype, h))
                return self._reverse(name, owner, qtype, hit)
            return self._reverse(name, owner, qtype, None)
        hit = self.store.lookup_a(name, now)
        if hit is None and not self.store.complete and name not in self.static:
            d = self.store.fetch_a(name, now)
            return d.addCallback(lambda h: self._forward(name, owner, qtype, h, 0))
        result = self._forward(name, owner, qtype, hit, 0)
        return result

    def _in_subnet(self, ip: bytes) -> bool:
        return int.from_bytes(ip, "big") & int(self.subnet.netmask) == int(
            self.subnet.network_address)

    def _negative(self, zone: bytes, rcode: int) -> Resolution:
        soa = self._soa_payload[zone]
        ttl = min(self.soa_settings.ttl, self.soa_settings.minimum)
        rr = dns.RRHeader(from_wire(zone).rstrip(".").encode(), dns.SOA, dns.IN, ttl, soa,
                          auth=True)
        return Resolution(rcode=rcode, authority=[rr])

    def _apex_rrsets(self, zone: bytes) -> dict[int, list[tuple[int, Any]]]:
        soa = self._soa_payload[zone]
        return {
            dns.SOA: [(self.soa_settings.ttl, soa)],
            dns.NS: [(self.soa_settings.ttl, dns.Record_NS(from_wire(n).rstrip(".").encode()))
                     for n in self.ns_names],
        }

    def _answer(self, owner: bytes, qtype: int, rrsets: dict[int, list[tuple[int, Any]]]
                ) -> list[dns.RRHeader]:
        return [dns.RRHeader(owner, qtype, dns.IN, ttl, payload, auth=True)
                for ttl, payload in rrsets[qtype]]

    def _forward(self, name: bytes, owner: bytes, qtype: int, hit: tuple[bytes, int] | None,
                 depth: int) -> Resolution:
        rrsets: dict[int, list[tuple[int, Any]]] = {}
        if name == self.domain_wire:
            rrsets.update(self._apex_rrsets(name))
        if hit is not None:
            ip, ttl = hit
            rrsets[dns.A] = [(ttl, dns.Record_A(socket.inet_ntoa(ip), ttl))]
        for rtype, records in self.static.get(name, {}).items():
            rrsets[rtype] = [(r.ttl, r.payload) for r in records]
        if not rrsets:
            if name in self.ents or self.store.is_empty_nonterminal(name):
                return self._negative(self.domain_wire, dns.OK)
            return self._negative(self.domain_wire, dns.ENAME)
        if qtype in rrsets:
            result = Resolution(answers=self._answer(owner, qtype, rrsets))
            if qtype == dns.NS:
                result.additional = self._glue()
            return result
        if dns.CNAME in rrsets:
            answers = self._answer(owner, dns.CNAME, rrsets)
            target_text = rrsets[dns.CNAME][0][1].name.name
            try:
                target = to_wire(target_text)
            except BadName:
                return Resolution(answers=answers)
            if depth < MAX_CHASE and in_zone(target, self.domain_wire):
                now = self.clock.seconds()
                chased = self._forward(target, target_text, qtype,
                                       self.store.lookup_a(target, now), depth + 1)
                chased.answers[:0] = answers
                return chased
            return Resolution(answers=answers)
        return self._negative(self.domain_wire, dns.OK)

    def _glue(self) -> list[dns.RRHeader]:
        now = self.clock.seconds()
        glue = []
        for ns in self.ns_names:
            hit = self.store.lookup_a(ns, now)
            if hit is not None:
                glue.append(dns.RRHeader(from_wire(ns).rstrip(".").encode(), dns.A, dns.IN,
                                         hit[1], dns.Record_A(socket.inet_ntoa(hit[0]), hit[1]),
                                         auth=True))
        return glue

    def _reverse(self, name: bytes, owner: bytes, qtype: int, hit: tuple[bytes, int] | None
                 ) -> Resolution:
        rrsets: dict[int, list[tuple[int, Any]]] = {}
        if name == self.reverse_wire:
            rrsets.update(self._apex_rrsets(name))
        if hit is not None:
            target, ttl = hit
            rrsets[dns.PTR] = [(ttl, dns.Record_PTR(from_wire(target).rstrip(".").encode(), ttl))]
        if not rrsets:
            if self._reverse_ent(name):
                return self._negative(self.reverse_wire, dns.OK)
            return self._negative(self.reverse_wire, dns.ENAME)
        if qtype in rrsets:
            result = Resolution(answers=self._answer(owner, qtype, rrsets))
            if qtype == dns.NS:
                result.additional = self._glue()
            return result
        return self._negative(self.reverse_wire, dns.OK)

    def _reverse_ent(self, name: bytes) -> bool:
        """Whether a reverse name of fewer than four octets covers part of the subnet."""
        labels = from_wire(name).split(".")[:-3]  # drop "in-addr", "arpa", ""
        if not 1 <= len(labels) <= 3 or not all(
                lb.isdigit() and int(lb) <= 255 and str(int(lb)) == lb for lb in labels):
            return False
        octets = [int(lb) for lb in reversed(labels)]
        prefix = ipaddress.IPv4Network(
            (bytes(octets + [0] * (4 - len(octets))), 8 * len(octets)))
        return prefix.overlaps(self.subnet)

    # -- IResolver (twisted.names) --------------------------------------------

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> Deferred[Any]:
        if cls != dns.IN:
            return fail(Failure(AuthoritativeDomainError(name)))
        try:
            wire = to_wire(name)
        except BadName:
            return fail(Failure(AuthoritativeDomainError(name)))
        result = self.resolve(wire, type, name)
        if result is None:
            return fail(Failure(AuthoritativeDomainError(name)))
        d = result if isinstance(result, Deferred) else succeed(result)

        def sections(r: Resolution) -> Any:
            if r.rcode == dns.ENAME:
                raise AuthoritativeDomainError(name)
            return r.answers, r.authority, r.additional

        return d.addCallback(sections)
