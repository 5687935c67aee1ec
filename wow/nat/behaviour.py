"""
What kind of NAT are we behind?  Learnt passively from link handshakes.

Every authenticated link handshake tells us the UDP endpoint the peer saw us
come from (our reflexive endpoint toward that peer).  Comparing those across
peers at different addresses tells endpoint-independent mapping (one
external endpoint whatever the destination: cone NATs, Linux masquerade)
from address/port-dependent mapping (a new external endpoint per
destination: "symmetric" NATs), as RFC 4787 defines them.  A reflexive
address that arrives without authentication is never used: a single peer's
claim cannot redirect our candidates.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum

Endpoint = tuple[str, int]

#: Observations older than this no longer describe the NAT.
OBSERVATION_TTL_S = 600.0
#: Peers remembered (least recently seen dropped first).
MAX_PEERS = 64


class Mapping(StrEnum):
    UNKNOWN = "unknown"  # fewer than two destinations observed
    NONE = "none"  # not behind a NAT: reflexive == local
    ENDPOINT_INDEPENDENT = "endpoint-independent"
    DEPENDENT = "address-and-port-dependent"  # "symmetric"


@dataclass(frozen=True)
class Observation:
    peer: int  # the peer's overlay address
    destination: Endpoint  # where we sent (the peer's endpoint)
    reflexive: Endpoint  # what the peer saw as our source
    local: Endpoint  # our socket's local endpoint
    at: float


@dataclass(frozen=True)
class MappingChange:
    """Our external endpoint toward C{peer} changed (NAT restart, conntrack flush)."""

    peer: int
    old: Endpoint
    new: Endpoint


class NatObserver:
    """Accumulates authenticated reflexive observations and classifies the NAT."""

    def __init__(self, local_endpoints: list[Endpoint] | None = None) -> None:
        self.local_endpoints: set[Endpoint] = set(local_endpoints or [])
        self._latest: OrderedDict[int, Observation] = OrderedDict()
        self.ignored_unauthenticated = 0

    def observe(self, peer: int, destination: Endpoint, reflexive: Endpoint, local: Endpoint,
                now: float, authenticated: bool = True) -> MappingChange | None:
        """
        Record what C{peer} (at C{destination}) saw as our endpoint.

        @return: a L{MappingChange} when this peer now sees us elsewhere than
            before, else L{None}.
        """
        if not authenticated:
            self.ignored_unauthenticated += 1
            return None
        self.local_endpoints.add(local)
        previous = self._latest.get(peer)
        self._latest[peer] = Observation(peer, destination, reflexive, local, now)
        self._latest.move_to_end(peer)
        while len(self._latest) > MAX_PEERS:
            self._latest.popitem(last=False)
        if (previous is not None and previous.reflexive != reflexive
                and previous.destination == destination and previous.local == local):
            return MappingChange(peer, previous.reflexive, reflexive)
        return None

    def forget(self, peer: int) -> None:
        self._latest.pop(peer, None)

    def current(self, now: float) -> list[Observation]:
        return [o for o in self._latest.values() if now - o.at <= OBSERVATION_TTL_S]

    def _translated(self, now: float) -> list[Observation]:
        """Observations through a NAT (a peer on our own LAN sees our local endpoint)."""
        return [o for o in self.current(now)
                if o.reflexive != o.local and o.reflexive not in self.local_endpoints]

    def mapping(self, now: float) -> Mapping:
        if not self.current(now):
            return Mapping.UNKNOWN
        obs = self._translated(now)
        if not obs:
            return Mapping.NONE
        # compare what peers at different IP addresses saw from one local socket
        by_local: dict[Endpoint, dict[str, set[Endpoint]]] = {}
        for o in obs:
            by_local.setdefault(o.local, {}).setdefault(o.destination[0], set()).add(o.reflexive)
        verdict = Mapping.UNKNOWN
        for per_destination in by_local.values():
            if len(per_destination) < 2:
                continue
            seen = set().union(*per_destination.values())
            if len(seen) == 1:
                verdict = Mapping.ENDPOINT_INDEPENDENT
            else:
                return Mapping.DEPENDENT
        return verdict

    def behind_nat(self, now: float) -> bool:
        """Whether some peer saw us somewhere else than our own endpoint."""
        return bool(self._translated(now))

    def reflexive_endpoints(self, now: float) -> list[Endpoint]:
        """Distinct reflexive endpoints, the most often seen first."""
        counts: dict[Endpoint, int] = {}
        # (behind a NAT, what peers on our LAN see is our local endpoint,
        # already a candidate of its own)
        for o in self._translated(now) or self.current(now):
            counts[o.reflexive] = counts.get(o.reflexive, 0) + 1
        return sorted(counts, key=lambda e: (-counts[e], e))

    def predicted_ports(self, now: float, count: int = 4) -> list[Endpoint]:
        """
        For a dependent mapping that allocates ports sequentially, the next
        ports it will probably hand out (port prediction); [] otherwise.
        """
        obs = sorted(self.current(now), key=lambda o: o.at)
        if len(obs) < 3:
            return []
        ips = {o.reflexive[0] for o in obs}
        if len(ips) != 1:
            return []
        ports = [o.reflexive[1] for o in obs]
        deltas = {b - a for a, b in zip(ports, ports[1:], strict=False)}
        if len(deltas) != 1:
            return []
        (delta,) = deltas
        if delta == 0 or abs(delta) > 16:
            return []
        ip = ips.pop()
        last = ports[-1]
        return [(ip, last + delta * k) for k in range(1, count + 1) if 0 < last + delta * k < 65536]

    def report(self, now: float) -> dict[str, object]:
        """The facts C{wow netcheck} prints."""
        return {
            "local": [f"{h}:{p}" for h, p in sorted(self.local_endpoints)],
            "reflexive": [
                {"peer": f"{o.peer:040x}", "destination": f"{o.destination[0]}:{o.destination[1]}",
                 "seen_as": f"{o.reflexive[0]}:{o.reflexive[1]}", "age_s": round(now - o.at, 1)}
                for o in self.current(now)
            ],
            "mapping": self.mapping(now).value,
        }
