"""
Where the names live: the L{INameStore} seam and its in-memory implementation.

The authority and the fast path ask a store two questions, synchronously and
without touching the network: "which IPv4 address has this name?" and "which
name has this address?".  A store whose local tables are the whole truth
(L{CompactStore}: a central server's names file, a node's own leases) says
so with C{complete = True}, and a miss is then a definite NXDOMAIN.  A store
that is only a cache of something remote (the overlay DHT) says
C{complete = False}; the authority then calls C{fetch_a}/C{fetch_ptr}, which
may go to the network and return a L{Deferred}.

Memory is what decides the layout at a million names (see
docs/performance.md): one dict from the lower-cased wire name to the packed
address (an int), and for the reverse direction a flat list indexed by the
address's offset in the subnet when the subnet is at most a /12 (8 bytes per
address), a dict otherwise.  Record objects would cost more than twice as
much and give the garbage collector millions of objects to walk, which is
why bulk loading ends with C{gc.freeze()}.
"""

from __future__ import annotations

import gc
import ipaddress
from collections.abc import Iterable

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from wow.dns.names import (
    MAX_NAME_WIRE,
    BadName,
    absolute,
    in_zone,
    pack_ip,
    parse_derived_label,
    valid_label,
)

#: A forward entry: the address as an int (static, default TTL) or
#: C{(address, expiry time)} for records that follow a lease.  An int takes
#: 32 bytes where a 4-byte bytes object takes 48: 16 MB at a million names.
Entry = int | tuple[int, float]
#: A reverse entry: the owner's wire name, or C{(name, expiry time)}.
RevEntry = bytes | tuple[bytes, float]

#: The largest subnet (in addresses) whose reverse table is a flat list.
DENSE_REVERSE_LIMIT = 1 << 20


class INameStore(Interface):
    """The records of the virtual domain, as the DNS answers them."""

    complete = Attribute(
        "True when a miss in lookup_a/lookup_ptr means the name does not exist; "
        "False when the store is a cache and fetch_a/fetch_ptr must be asked."
    )

    def lookup_a(name: bytes, now: float) -> tuple[bytes, int] | None:
        """
        The packed address and remaining TTL of the lower-cased wire name
        C{name} from local data only (derived names included), or None.
        """

    def lookup_ptr(ip: bytes, now: float) -> tuple[bytes, int] | None:
        """The wire name and remaining TTL of the packed address C{ip}, or None."""

    def fetch_a(name: bytes, now: float) -> Deferred[tuple[bytes, int] | None]:
        """Like C{lookup_a}, but may ask the network on a local miss."""

    def fetch_ptr(ip: bytes, now: float) -> Deferred[tuple[bytes, int] | None]:
        """Like C{lookup_ptr}, but may ask the network on a local miss."""

    def add(name: bytes, ip: bytes, expires: float | None) -> None:
        """
        Record C{name} → C{ip} locally; C{expires} is the lease's end (None
        = static, served with the store's default TTL).  The first name added
        for an address becomes its PTR target.
        """

    def is_empty_nonterminal(name: bytes) -> bool:
        """
        Whether C{name} has no records but names exist below it (it must
        then get NODATA, not NXDOMAIN: RFC 8020).
        """

    def remove(name: bytes) -> None:
        """Forget C{name} (and its PTR record if it was the address's name)."""

    def __len__() -> int:
        """The number of names held locally."""


@implementer(INameStore)
class CompactStore:
    """
    The whole zone in plain dicts and lists of bytes: O(1) lookups whatever
    the number of names, about 140 bytes per name.
    """

    log = Logger()
    complete = True

    def __init__(self, domain_wire: bytes, subnet: ipaddress.IPv4Network,
                 default_ttl: int = 300, derived: bool = True) -> None:
        self.domain_wire = domain_wire
        self.subnet = subnet
        self.default_ttl = default_ttl
        self.derived = derived
        self.forward: dict[bytes, Entry] = {}
        #: Names above multi-label names (C{a.lab.wow.} makes C{lab.wow.} one).
        self.ents: set[bytes] = set()
        self._base = int(subnet.network_address)
        self._size = subnet.num_addresses
        self._reverse_list: list[RevEntry | None] | None = None
        self._reverse_dict: dict[bytes, RevEntry] | None = None
        if self._size <= DENSE_REVERSE_LIMIT:
            self._reverse_list = [None] * self._size
        else:
            self._reverse_dict = {}
        # The suffix a derived name's first label is followed by.
        self._derived_tail = domain_wire

    # -- reverse table (list or dict) ----------------------------------------

    def _rev_get(self, ip: bytes) -> RevEntry | None:
        if self._reverse_list is not None:
            offset = int.from_bytes(ip, "big") - self._base
            if 0 <= offset < self._size:
                return self._reverse_list[offset]
            return None
        assert self._reverse_dict is not None
        return self._reverse_dict.get(ip)

    def _rev_set(self, ip: bytes, value: RevEntry | None) -> None:
        if self._reverse_list is not None:
            offset = int.from_bytes(ip, "big") - self._base
            if 0 <= offset < self._size:
                self._reverse_list[offset] = value
            return
        assert self._reverse_dict is not None
        if value is None:
            self._reverse_dict.pop(ip, None)
        else:
            self._reverse_dict[ip] = value

    def _live(self, entry: RevEntry, now: float) -> tuple[bytes, int] | None:
        if entry.__class__ is bytes:
            return entry, self.default_ttl
        value, expires = entry
        ttl = int(expires - now)
        return (value, ttl) if ttl > 0 else None  # type: ignore[return-value]

    # -- INameStore ------------------------------------------------------------

    def lookup_a(self, name: bytes, now: float) -> tuple[bytes, int] | None:
        entry = self.forward.get(name)
        if entry is not None:
            if entry.__class__ is int:
                return entry.to_bytes(4, "big"), self.default_ttl
            address, expires = entry  # type: ignore[misc]
            ttl = int(expires - now)
            return (address.to_bytes(4, "big"), ttl) if ttl > 0 else None
        if not self.derived or name[1:2] != b"c":
            return None
        n = name[0]
        if name[1 + n:] != self._derived_tail:
            return None
        ip = parse_derived_label(name[1:1 + n])
        if ip is None:
            return None
        owner = self._rev_get(ip)
        if owner is None:
            return None
        live = self._live(owner, now)
        return (ip, live[1]) if live is not None else None

    def lookup_ptr(self, ip: bytes, now: float) -> tuple[bytes, int] | None:
        entry = self._rev_get(ip)
        if entry is None:
            return None
        return self._live(entry, now)

    def fetch_a(self, name: bytes, now: float) -> Deferred[tuple[bytes, int] | None]:
        return succeed(self.lookup_a(name, now))

    def fetch_ptr(self, ip: bytes, now: float) -> Deferred[tuple[bytes, int] | None]:
        return succeed(self.lookup_ptr(ip, now))

    def is_empty_nonterminal(self, name: bytes) -> bool:
        return name in self.ents

    def _note_ents(self, name: bytes) -> None:
        domain = self.domain_wire
        parent = name[1 + name[0]:]
        while len(parent) > len(domain) and parent.endswith(domain):
            self.ents.add(parent)
            parent = parent[1 + parent[0]:]

    def add(self, name: bytes, ip: bytes, expires: float | None) -> None:
        if len(name) > len(self.domain_wire) + 1 + name[0]:
            self._note_ents(name)
        old = self.forward.get(name)
        if old is not None:
            self.remove(name)
        address = int.from_bytes(ip, "big")
        self.forward[name] = address if expires is None else (address, expires)
        current = self._rev_get(ip)
        if current is None or self._owner(current) not in self.forward:
            self._rev_set(ip, name if expires is None else (name, expires))

    @staticmethod
    def _owner(entry: RevEntry) -> bytes:
        return entry if entry.__class__ is bytes else entry[0]  # type: ignore[return-value]

    def remove(self, name: bytes) -> None:
        entry = self.forward.pop(name, None)
        if entry is None:
            return
        address = entry if entry.__class__ is int else entry[0]  # type: ignore[index]
        ip = address.to_bytes(4, "big")
        current = self._rev_get(ip)
        if current is not None and self._owner(current) == name:
            self._rev_set(ip, None)

    def __len__(self) -> int:
        return len(self.forward)

    # -- bulk loading ----------------------------------------------------------

    def load_hosts(self, lines: Iterable[bytes], source: str = "names file") -> tuple[int, int]:
        """
        Load hosts-file lines (C{IP NAME [ALIAS...]}, C{#} comments) as
        static records; relative names are taken in the domain.  Bad lines
        are logged (the first few) and skipped, never fatal: one typo must
        not take a million names down.

        @return: (names loaded, lines rejected)
        """
        forward = self.forward
        domain = self.domain_wire
        subnet_base, size = self._base, self._size
        loaded = rejected = 0
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            for lineno, raw in enumerate(lines, 1):
                line = raw.split(b"#", 1)[0]
                fields = line.split()
                if not fields:
                    continue
                try:
                    if len(fields) < 2:
                        raise BadName("no name after the address")
                    ip = int.from_bytes(pack_ip(fields[0].decode("ascii", "replace")), "big")
                    keys = [self._host_key(f, domain) for f in fields[1:]]
                except BadName as e:
                    rejected += 1
                    if rejected <= 5:
                        self.log.warn("{source} line {lineno} skipped: {reason}",
                                      source=source, lineno=lineno, reason=str(e))
                    continue
                for key in keys:
                    if len(key) > len(domain) + 1 + key[0]:
                        self._note_ents(key)
                    if key in forward:
                        self.remove(key)
                    forward[key] = ip
                    loaded += 1
                offset = ip - subnet_base
                if self._reverse_list is not None:
                    if 0 <= offset < size and self._reverse_list[offset] is None:
                        self._reverse_list[offset] = keys[0]
                else:
                    packed = ip.to_bytes(4, "big")
                    if packed not in self._reverse_dict:  # type: ignore[operator]
                        self._reverse_dict[packed] = keys[0]  # type: ignore[index]
        finally:
            if gc_was_enabled:
                gc.enable()
        # Millions of long-lived objects: keep them out of every collection.
        gc.collect()
        gc.freeze()
        return loaded, rejected

    @staticmethod
    def _host_key(field: bytes, domain: bytes) -> bytes:
        if field.endswith(b"."):
            key = absolute(field.decode("ascii", "replace"), domain)
            if not in_zone(key, domain):
                raise BadName(f"name {field.decode(errors='replace')!r} is outside the domain")
            return key
        labels = field.split(b".")
        out = b""
        for label in labels:
            if not valid_label(label):
                raise BadName(f"{field.decode(errors='replace')!r} is not a valid host name")
            out += bytes((len(label),)) + label.lower()
        out += domain
        if len(out) > MAX_NAME_WIRE:
            raise BadName(f"{field.decode(errors='replace')!r} is longer than 255 octets")
        return out

