"""
Hole punching toward one peer: which probes to send when, and when to give up.

Both sides start a L{Puncher} when a "connect to me" exchange (routed through
the overlay, so both sides' candidates are authenticated) completes; each
sends probes to every candidate of the other at the same moments, so each
NAT sees an outbound packet before the peer's probe arrives.  Rounds back off
from 100 ms; after the direct phase the pair goes through a relay and a
background round is retried every L{BACKGROUND_INTERVAL_S}.

Birthday probing opens the pairs that plain punching cannot (a symmetric NAT
facing a port-restricted one): the symmetric side sends from up to
L{BIRTHDAY_SOCKETS} fresh sockets (fresh mappings) toward the peer's
reflexive endpoint, while the other side probes up to L{BIRTHDAY_PROBES}
random ports of the symmetric side's public address, a new set every round:
P(hit) = 1 - (1 - 256/64512)^1024 ≈ 98 %.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass
from enum import StrEnum

Endpoint = tuple[str, int]

#: Delays (s, from the start) of the direct phase's probe rounds.
ROUNDS_S = (0.0, 0.1, 0.3, 0.7, 1.5, 2.5)
#: The direct phase ends here; traffic goes through a relay.
DIRECT_PHASE_S = 4.0
#: While relayed, try the direct path again this often.
BACKGROUND_INTERVAL_S = 15.0
#: Never probe more candidate endpoints than this from one request.
MAX_CANDIDATES = 16
BIRTHDAY_SOCKETS = 256
BIRTHDAY_PROBES = 1024
#: Birthday rounds per attempt (each with a fresh port sample).
BIRTHDAY_ROUNDS = 3
#: The ports a NAT hands out (Linux: 1024-65535).
EPHEMERAL = (1024, 65535)


class State(StrEnum):
    PUNCHING = "punching"
    DIRECT = "direct"
    RELAYED = "relayed"


class Role(StrEnum):
    PLAIN = "plain"
    #: we are behind the symmetric NAT: send from many fresh sockets
    BIRTHDAY_OPENER = "birthday-opener"
    #: the peer is: probe many of its NAT's ports
    BIRTHDAY_PROBER = "birthday-prober"


@dataclass(frozen=True)
class Probe:
    """Send a link probe to C{endpoint} from local socket C{socket} (0 = the main one)."""

    endpoint: Endpoint
    socket: int = 0


def usable(endpoint: Endpoint) -> bool:
    """Whether a claimed candidate may be probed at all (no broadcast, multicast...)."""
    host, port = endpoint
    try:
        ip = ipaddress.IPv4Address(host)
    except ValueError:
        return False
    if not 0 < port < 65536:
        return False
    broadcast = ipaddress.IPv4Address("255.255.255.255")
    return not (ip.is_multicast or ip.is_unspecified or ip == broadcast
                or ip.is_reserved)


def choose_role(my_mapping: str, peer_mapping: str) -> Role:
    """
    Birthday probing only where plain punching cannot open the pair: one
    side's NAT maps per destination, the other's maps independently of it
    (a node that is not behind a NAT never probes: the symmetric side
    reaches it anyway, and a forged request cannot turn it into a prober).
    """
    dependent = "address-and-port-dependent"
    behind_eim = ("endpoint-independent", "unknown")
    if my_mapping == dependent and peer_mapping in behind_eim:
        return Role.BIRTHDAY_OPENER
    if peer_mapping == dependent and my_mapping in behind_eim:
        return Role.BIRTHDAY_PROBER
    return Role.PLAIN


class Puncher:
    """The probe schedule for one attempt to reach one peer directly."""

    def __init__(self, candidates: list[Endpoint], now: float, role: Role = Role.PLAIN,
                 rng: random.Random | None = None) -> None:
        seen: list[Endpoint] = []
        for c in candidates:
            if usable(c) and c not in seen:
                seen.append(c)
        self.candidates = seen[:MAX_CANDIDATES]
        self.rejected = len(candidates) - len(self.candidates)
        self.role = role
        self.rng = rng or random.Random()
        self.started = now
        self.state = State.PUNCHING
        self.endpoint: Endpoint | None = None
        self.succeeded_at: float | None = None
        self._round = 0
        self._birthday_round = 0
        self._next_background: float | None = None
        self._probed_ports: set[int] = set()
        self.probes_sent = 0

    # -- events -----------------------------------------------------------

    def succeeded(self, endpoint: Endpoint, now: float) -> None:
        """An authenticated probe or reply arrived over C{endpoint}: the path is open."""
        if self.state is not State.DIRECT:
            self.state = State.DIRECT
            self.endpoint = endpoint
            self.succeeded_at = now

    def path_lost(self, now: float) -> None:
        """The direct path died: start a new direct phase."""
        self.state = State.PUNCHING
        self.endpoint = None
        self.started = now
        self._round = 0
        self._birthday_round = 0

    def update_candidates(self, candidates: list[Endpoint]) -> None:
        """The peer told us its candidates again (they may have changed)."""
        fresh = [c for c in candidates if usable(c)]
        merged = fresh + [c for c in self.candidates if c not in fresh]
        self.candidates = list(dict.fromkeys(merged))[:MAX_CANDIDATES]

    def restart(self, now: float) -> None:
        """A new direct phase now (the peer asked again, or a background round)."""
        self.state = State.PUNCHING
        self.endpoint = None
        self.started = now
        self._round = 0
        self._birthday_round = 0
        self._probed_ports.clear()

    # -- time -------------------------------------------------------------

    def next_wakeup(self) -> float | None:
        if self.state is State.DIRECT:
            return None
        if self.state is State.PUNCHING:
            if self._round < len(ROUNDS_S):
                return self.started + ROUNDS_S[self._round]
            return self.started + DIRECT_PHASE_S
        return self._next_background

    def poll(self, now: float) -> list[Probe]:
        """The probes due at C{now} (call at or after L{next_wakeup})."""
        if self.state is State.DIRECT:
            return []
        probes: list[Probe] = []
        if self.state is State.PUNCHING:
            while self._round < len(ROUNDS_S) and now >= self.started + ROUNDS_S[self._round]:
                self._round += 1
                probes = self._round_probes()
            if self._round >= len(ROUNDS_S) and now >= self.started + DIRECT_PHASE_S:
                self.state = State.RELAYED
                self._next_background = now + BACKGROUND_INTERVAL_S
        elif self._next_background is not None and now >= self._next_background:
            # a short new direct phase in the background
            self.restart(now)
            return self.poll(now)
        self.probes_sent += len(probes)
        return probes

    def _round_probes(self) -> list[Probe]:
        probes = [Probe(c) for c in self.candidates]
        if self.role is Role.PLAIN or not self.candidates:
            return probes
        if self._birthday_round >= BIRTHDAY_ROUNDS:
            return probes
        self._birthday_round += 1
        target = self.candidates[0]
        if self.role is Role.BIRTHDAY_OPENER:
            # fresh sockets, each a new mapping on our symmetric NAT
            probes += [Probe(target, socket=i) for i in range(1, BIRTHDAY_SOCKETS + 1)]
        else:
            probes += [Probe((target[0], port)) for port in self._fresh_ports()]
        return probes

    def _fresh_ports(self) -> list[int]:
        """BIRTHDAY_PROBES ports of the peer's NAT never probed in this phase."""
        lo, hi = EPHEMERAL
        ports: set[int] = set()
        while len(ports) < BIRTHDAY_PROBES:
            p = self.rng.randint(lo, hi)
            if p not in self._probed_ports:
                ports.add(p)
        self._probed_ports |= ports
        return sorted(ports)
