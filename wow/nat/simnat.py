"""
NAT routers for the in-process simulator (RFC 4787 behaviours, no I/O).

The same kinds the namespace lab builds with nftables (L{wow.lab.nat}),
modelled as plain objects so hole punching, birthday probing and relaying
can be tested over thousands of virtual seconds in milliseconds:

  - full cone: endpoint-independent mapping and filtering;
  - restricted cone: endpoint-independent mapping, address-dependent filtering;
  - port-restricted cone: endpoint-independent mapping, address-and-port-
    dependent filtering (Linux masquerade);
  - symmetric: address-and-port-dependent mapping with random ports, and
    address-and-port-dependent filtering.

A double NAT is two port-restricted routers, the inner one's public address
on the outer one's LAN (C{parent}).  Routers do not hairpin, and an
unsolicited inbound packet is dropped without a trace (the lab's WAN input
drop), so an early probe never disturbs a later mapping.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

Endpoint = tuple[str, int]

FULL_CONE = "full-cone"
RESTRICTED = "restricted-cone"
PORT_RESTRICTED = "port-restricted"
SYMMETRIC = "symmetric"
KINDS = (FULL_CONE, RESTRICTED, PORT_RESTRICTED, SYMMETRIC)

#: Ports a router hands out (Linux: 1024-65535).
PORTS = (1024, 65535)


@dataclass
class SimNat:
    """One router: its public address, its mappings and what each lets in."""

    kind: str
    public_ip: str
    rng: random.Random = field(default_factory=random.Random)
    #: The router this one sits behind (double NAT), or None.
    parent: SimNat | None = None
    #: (internal endpoint, destination or None) -> external port
    _map: dict[tuple[Endpoint, Endpoint | None], int] = field(default_factory=dict)
    #: external port -> internal endpoint
    _rev: dict[int, Endpoint] = field(default_factory=dict)
    #: external port -> remote endpoints it sent to
    _sent: dict[int, set[Endpoint]] = field(default_factory=dict)
    dropped: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown NAT kind {self.kind!r}")

    def outbound(self, internal: Endpoint, destination: Endpoint) -> Endpoint:
        """Translate a packet leaving C{internal} for C{destination}: its new source."""
        key = (internal, destination if self.kind == SYMMETRIC else None)
        port = self._map.get(key)
        if port is None:
            port = self._allocate(internal[1])
            self._map[key] = port
            self._rev[port] = internal
        self._sent.setdefault(port, set()).add(destination)
        return (self.public_ip, port)

    def _allocate(self, preferred: int) -> int:
        """Linux keeps the source port when it is free; symmetric picks at random."""
        lo, hi = PORTS
        if self.kind != SYMMETRIC and preferred not in self._rev and lo <= preferred <= hi:
            return preferred
        while True:
            port = self.rng.randint(lo, hi)
            if port not in self._rev:
                return port

    def inbound(self, source: Endpoint, port: int) -> Endpoint | None:
        """The internal endpoint a packet from C{source} to our C{port} reaches, or None."""
        internal = self._rev.get(port)
        if internal is None:
            self.dropped += 1
            return None
        sent = self._sent.get(port, set())
        if self.kind == FULL_CONE:
            allowed = True
        elif self.kind == RESTRICTED:
            allowed = any(d[0] == source[0] for d in sent)
        else:
            allowed = source in sent
        if not allowed:
            self.dropped += 1
            return None
        return internal

    def flush(self) -> None:
        """Forget every mapping (router restart, conntrack flush)."""
        self._map.clear()
        self._rev.clear()
        self._sent.clear()

    @property
    def mappings(self) -> int:
        return len(self._rev)
