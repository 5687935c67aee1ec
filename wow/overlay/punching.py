"""
Hole punching and one-hop relays in the link layer of L{OverlayNode}.

A node that wants a direct link to a peer (the IP router's traffic flows to
it) routes a "connect to me" (ctm, flag C{o}) through the overlay carrying
its candidate endpoints (local interface addresses, reflexive endpoints
peers proved to it in signed handshakes, predicted ports), its NAT's mapping
behaviour and the addresses it holds links to.  The peer answers with the
same facts (flag C{p}); from then on both sides run a L{Puncher} and send
link HELLOs to every candidate of the other at the same moments, with
backoff, so each NAT sees an outbound packet before the other side's probe
arrives.  The first authenticated REPLY makes the link.

A HELLO that arrives from an endpoint nobody listed (a symmetric NAT's
fresh mapping) is a peer-reflexive candidate: the side that must not answer
(the higher address, to keep one link per pair) probes back to exactly
that endpoint, from the socket it arrived on (ICE's rule).

When the direct phase fails, traffic goes through a relay: a node both
sides hold links to (L{choose_relay}), one extra hop, never a greedy path;
the requester keeps retrying the direct path in the background and the
relay is dropped the moment a link comes up.

Bounds against forged requests: requests per source are rate limited, a
node runs at most L{MAX_PUNCHES} punches and at most L{MAX_PER_TARGET_IP}
toward one IP address, candidates are filtered and capped, a C{p} answer is
taken only after we asked, birthday probing needs both sides' consent and
runs at most L{MAX_BIRTHDAY} at a time; every refusal is counted with its
reason and logged.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from wow.metrics import Counters
from wow.nat.behaviour import NatObserver
from wow.nat.punch import (
    BACKGROUND_INTERVAL_S,
    DIRECT_PHASE_S,
    Probe,
    Puncher,
    Role,
    State,
    choose_role,
    usable,
)
from wow.nat.relay import choose_relay
from wow.overlay import address as A
from wow.overlay import wire as W
from wow.overlay.link import Endpoint, Link
from wow.overlay.ratelimit import TokenBuckets

if TYPE_CHECKING:
    from wow.overlay.node import OverlayParams, Timer
    from wow.overlay.ring import RoutingTable

#: Concurrent punches (each a peer we try to reach directly).
MAX_PUNCHES = 32
#: Concurrent punches probing one IP address (a forged request names a victim).
MAX_PER_TARGET_IP = 4
#: Concurrent punches doing birthday probing (hundreds of datagrams each).
MAX_BIRTHDAY = 4
#: Candidates we advertise / accept in one request.
MAX_ADVERTISED = 12
#: Linked addresses we list for relay selection.
MAX_LINKS_LISTED = 24
#: A responder's punch lives this long after the last request refreshed it.
RESPONDER_TTL_S = DIRECT_PHASE_S + 2 * BACKGROUND_INTERVAL_S
#: A "p" answer is accepted this long after we sent the request.
ANSWER_WINDOW_S = 10.0
#: Background rounds that may repeat birthday probing toward one peer (it
#: opens on the first attempt 95-98 % of the time; a pair that failed twice
#: is probably not what its mappings claim).
MAX_BIRTHDAY_RETRIES = 2
#: A request without an answer is repeated after this (then 2x, 3x...).
ASK_RETRY_S = 0.5
ASK_TRIES = 4


@dataclass
class Punch:
    """One attempt (with background retries) to reach C{peer} directly."""

    peer: int
    puncher: Puncher
    nonce: bytes
    #: We asked (the requester): we drive background retries.
    requester: bool
    started: float
    #: We keep the link (only an owner trims); the other side owns it if not.
    owned: bool = True
    peer_links: list[int] = field(default_factory=list)
    #: endpoint -> (when the last probe left, from which local socket)
    probed: dict[Endpoint, tuple[float, int]] = field(default_factory=dict)
    relay: int | None = None
    expires: float = 0.0
    timer: Timer | None = None
    #: Background rounds that probed birthday-style (bounded).
    birthday_retries: int = 0


class PunchMixin:
    """The punching and relay half of L{OverlayNode} (state lives on the node)."""

    log = Logger()

    # Provided by OverlayNode.
    me: int
    params: OverlayParams
    counters: Counters
    rng: random.Random
    table: RoutingTable
    nat: NatObserver
    reflexive: Endpoint | None
    local_endpoint: Endpoint | None
    ondemand: dict[int, float]
    clock: Callable[[], float]
    _send_sock: Callable[[bytes, Endpoint, int], None] | None

    def _init_punching(self) -> None:
        self.punches: dict[int, Punch] = {}
        #: peer -> relay: traffic to C{peer} takes one hop through C{relay}.
        self.relay_via: dict[int, int] = {}
        #: Our local interface endpoints (the adapter fills it in).
        self.local_addresses: list[Endpoint] = []
        self._asked: dict[int, float] = {}
        self._asked_for_peer: set[int] = set()
        self._ask_tries: dict[int, int] = {}
        #: Ring neighbours a plain dial could not reach -> until when we punch.
        self._ring_punch: dict[int, float] = {}
        self._punch_requests = TokenBuckets(0.5, 4.0, 1024)
        #: Birthday attempts per target IP address: one a minute, two at once.
        self._birthday_budget = TokenBuckets(1 / 60, 2.0, 1024)
        #: Seconds from request to direct link, per peer (benchmarks, tests).
        self.direct_after: dict[int, float] = {}

    if TYPE_CHECKING:  # provided by OverlayNode / HandshakeMixin
        def send_to(self, dst: int, kind: int, payload: bytes,
                    mode: int = W.EXACT) -> bool: ...

        def call_later(self, delay: float, fn: Callable[[float], None]) -> Timer: ...

        def _raw(self, data: bytes, endpoint: Endpoint, sock: int = 0) -> None: ...

        def _hello_payload(self, nonce: bytes, ctm: bool) -> bytes: ...

        def request_link(self, address: int, now: float | None = None) -> None: ...

    # -- what we tell peers ---------------------------------------------------

    def candidates(self, now: float) -> list[Endpoint]:
        """Where a peer may reach us: reflexive (proved by peers), local, predicted."""
        out: list[Endpoint] = []

        def add(e: Endpoint | None) -> None:
            if e is not None and e not in out and e[0] != "0.0.0.0":
                out.append(e)

        for e in self.nat.reflexive_endpoints(now)[:3]:
            add(e)
        add(self.reflexive)
        for e in self.local_addresses:
            add(e)
        add(self.local_endpoint)
        for e in self.nat.predicted_ports(now, 2):
            add(e)
        return out[:MAX_ADVERTISED]

    def _ctm_facts(self, now: float, flag: str) -> dict[str, Any]:
        links = sorted(self.table.links, key=lambda a: self.table.links[a].rtt or 1.0)
        return {"op": "ctm", "e": [W.endpoint_value(e) for e in self.candidates(now)],
                "j": False, flag: True, "m": self.nat.mapping(now).value,
                "b": self._send_sock is not None,
                "n": [A.to_bytes(a) for a in links[:MAX_LINKS_LISTED]]}

    def _ask(self, address: int, now: float, for_peer: bool = False) -> None:
        """
        Send (or refresh) our "connect to me" request to C{address}.
        C{for_peer}: the link is the peer's wish (it asked us to dial it, and
        our dial got no answer): the peer will own it.
        """
        facts = self._ctm_facts(now, "o")
        if not facts["e"]:
            return
        if for_peer:
            facts["w"] = True
            self._asked_for_peer.add(address)
        else:
            self._asked_for_peer.discard(address)
        if len(self._asked_for_peer) > 256:
            self._asked_for_peer.clear()
        first = address not in self._asked or address not in self._ask_tries
        if first:
            self.log.info("asking {peer} for a direct link{why}", peer=A.to_text(address),
                          why=" (its wish)" if for_peer else "")
        self._asked[address] = now
        if len(self._asked) > 1024:
            self._asked = {a: t for a, t in self._asked.items() if now - t < ANSWER_WINDOW_S}
        self.counters.inc("overlay_ondemand_requests")
        self.send_to(address, W.CTRL, W.encode(facts), W.EXACT)
        if first:
            # Routed messages get lost while the ring forms: ask again until
            # the answer comes (a repeated request only makes the peer answer).
            self._ask_tries[address] = 1
            self.call_later(ASK_RETRY_S, lambda t: self._ask_again(address, for_peer, t))

    def _ask_again(self, address: int, for_peer: bool, now: float) -> None:
        tries = self._ask_tries.get(address, ASK_TRIES)
        if address in self.table.links or address in self.punches or tries >= ASK_TRIES:
            self._ask_tries.pop(address, None)
            return
        self._ask_tries[address] = tries + 1
        self.counters.inc("overlay_ondemand_requests_repeated")
        self._ask(address, now, for_peer)
        self.call_later(ASK_RETRY_S * (tries + 1),
                        lambda t: self._ask_again(address, for_peer, t))

    def punch_ring_neighbour(self, address: int, now: float, for_peer: bool = False) -> None:
        """
        A plain dial to a node the ring wants gets no answer: it is behind a
        NAT that filters (or behind ours, without hairpinning).  Punch.
        """
        if address in self.table.links or address in self.punches:
            return
        asked = self._asked.get(address)
        if asked is not None and now - asked < BACKGROUND_INTERVAL_S:
            return
        self._ring_punch[address] = now + DIRECT_PHASE_S + 4.0
        if len(self._ring_punch) > 256:
            self._ring_punch = {a: t for a, t in self._ring_punch.items() if t > now}
        self.counters.inc("overlay_ring_punches")
        self._ask(address, now, for_peer)

    # -- receiving requests and answers ----------------------------------------

    def _refuse_punch(self, reason: str, src: int, counter: str = "overlay_punch_refused"
                      ) -> None:
        """Count, and log the 1st, 10th, 100th... of each reason (no log flood)."""
        self.counters.inc(counter, reason=reason)
        count = self.counters.get(counter, reason=reason)
        if count in (1, 10, 100, 1000) or count % 10000 == 0:
            self.log.info("punch request from {peer} not taken: {reason} ({count} so far)",
                          peer=A.to_text(src), reason=reason, count=int(count))

    def _on_punch_ctm(self, src: int, m: dict[str, Any], now: float) -> None:
        """A "connect to me" (C{o}) or its answer (C{p}) from C{src}, routed to us."""
        answer = bool(m.get("p"))
        if src in self.table.links:
            # linked already (the request crossed a link coming up, or the
            # peer lost a link we still hold: it will close ours when our
            # traffic reaches it)
            self._refuse_punch("linked", src, "overlay_punch_ignored")
            return
        if answer:
            asked = self._asked.get(src)
            if asked is None or now - asked > ANSWER_WINDOW_S:
                self._refuse_punch("unsolicited-answer", src)
                return
        elif not self._punch_requests.allow(src, now):
            self._refuse_punch("rate-limited", src)
            return
        raw = m.get("e")
        if not isinstance(raw, list) or len(raw) > 16:
            raise W.WireError("bad-payload", "ctm endpoints")
        cands = []
        for v in raw[:MAX_ADVERTISED]:
            e = W.as_endpoint(v)
            if usable(e) and e not in cands:
                cands.append(e)
        links = m.get("n", [])
        if not isinstance(links, list) or len(links) > 32:
            raise W.WireError("bad-payload", "ctm links")
        peer_links = [A.from_bytes(x) for x in links if isinstance(x, bytes) and len(x) == A.SIZE]
        raw_mapping = m.get("m")
        peer_mapping = raw_mapping[:40] if isinstance(raw_mapping, str) else "unknown"
        peer_can_open = bool(m.get("b"))
        punch = self.punches.get(src)
        if punch is not None:
            punch.peer_links = peer_links or punch.peer_links
            punch.puncher.update_candidates(cands)
            if punch.puncher.role is Role.PLAIN and punch.puncher.candidates \
                    and punch.birthday_retries <= MAX_BIRTHDAY_RETRIES \
                    and (punch.puncher.state is State.RELAYED
                         or now - punch.puncher.started < 0.5):
                # Both sides may know their NATs better now than when this
                # punch began (a ring punch right after start-up).
                _, role = self._pick_role(peer_mapping, peer_can_open,
                                          punch.puncher.candidates[0][0], now)
                if role is not Role.PLAIN:
                    self.log.info("punching to {peer}: now {role}", peer=A.to_text(src),
                                  role=role.value)
                    punch.puncher.role = role
            if not answer:
                punch.expires = now + RESPONDER_TTL_S
                self._send_answer(src, now)
                if punch.puncher.state is State.RELAYED:
                    punch.puncher.restart(now)
                    self._schedule_punch(punch, now)
            return
        if not cands:
            self._refuse_punch("no-usable-candidate", src)
            return
        if len(self.punches) >= MAX_PUNCHES:
            self._refuse_punch("too-many-punches", src)
            return
        target_ip = cands[0][0]
        if sum(1 for p in self.punches.values()
               if p.puncher.candidates and p.puncher.candidates[0][0] == target_ip) \
                >= MAX_PER_TARGET_IP:
            self._refuse_punch("too-many-to-one-ip", src)
            return
        mine, role = self._pick_role(peer_mapping, peer_can_open, target_ip, now)
        punch = Punch(src, Puncher(cands, now, role, self.rng), self.rng.getrandbits(128)
                      .to_bytes(16, "big"), requester=answer, started=now,
                      peer_links=peer_links, expires=now + RESPONDER_TTL_S,
                      owned=(src not in self._asked_for_peer) if answer else bool(m.get("w")))
        self.punches[src] = punch
        self.counters.inc("overlay_punches_started", role=role.value)
        self.log.info("punching to {peer} ({role}, {n} candidates, we are {mine}, it is "
                      "{theirs})", peer=A.to_text(src), role=role.value,
                      n=len(punch.puncher.candidates), mine=mine, theirs=peer_mapping)
        # Until a direct path opens, traffic (and our answer) takes one hop
        # through a common neighbour rather than a greedy path that may end
        # in a hole of the ring.
        self._choose_relay(punch)
        if not answer:
            self._send_answer(src, now)
        self._schedule_punch(punch, now)

    def _pick_role(self, peer_mapping: str, peer_can_open: bool, target_ip: str, now: float
                   ) -> tuple[str, Role]:
        mine = self.nat.mapping(now).value
        if mine == "unknown" and not self.nat.behind_nat(now):
            mine = "none"  # (never a birthday prober on a forged request's word)
        role = choose_role(mine, peer_mapping)
        if role is Role.BIRTHDAY_OPENER and self._send_sock is None:
            role = Role.PLAIN
        if role is Role.BIRTHDAY_PROBER and not peer_can_open:
            role = Role.PLAIN
        if role is not Role.PLAIN and (sum(
                1 for p in self.punches.values() if p.puncher.role is not Role.PLAIN
                and p.puncher.state is State.PUNCHING) >= MAX_BIRTHDAY
                or not self._birthday_budget.allow(target_ip, now)):
            # hundreds of probes at one address: a few at a time, and rarely
            role = Role.PLAIN
            self.counters.inc("overlay_punch_refused", reason="birthday-busy")
        return mine, role

    def _send_answer(self, src: int, now: float) -> None:
        facts = self._ctm_facts(now, "p")
        if facts["e"]:
            self.counters.inc("overlay_punch_back")
            self.send_to(src, W.CTRL, W.encode(facts), W.EXACT)

    # -- the probe schedule -------------------------------------------------------

    def _schedule_punch(self, punch: Punch, now: float) -> None:
        if punch.timer is not None:
            punch.timer.cancel()
            punch.timer = None
        when = punch.puncher.next_wakeup()
        if when is None:
            return
        punch.timer = self.call_later(max(0.0, when - now), lambda t: self._punch_due(punch, t))

    def _punch_due(self, punch: Punch, now: float) -> None:
        punch.timer = None
        if self.punches.get(punch.peer) is not punch:
            return
        if punch.peer in self.table.links:
            self._punch_done(punch.peer, now)
            return
        if not punch.requester and now > punch.expires:
            self._drop_punch(punch.peer, "expired")
            return
        if punch.requester and not self._punch_wanted(punch.peer, now):
            self._drop_punch(punch.peer, "unwanted")
            return
        before = punch.puncher.state
        restarted = before is State.RELAYED
        if restarted and not punch.requester:
            # Only the requester retries in the background (it asks us again).
            punch.timer = self.call_later(max(0.1, punch.expires - now),
                                          lambda t: self._punch_due(punch, t))
            return
        if restarted and punch.puncher.role is not Role.PLAIN:
            punch.birthday_retries += 1
            if punch.birthday_retries > MAX_BIRTHDAY_RETRIES:
                punch.puncher.role = Role.PLAIN
                self.counters.inc("overlay_punch_refused", reason="birthday-retries")
        probes = punch.puncher.poll(now)
        if restarted and punch.puncher.state is State.PUNCHING and punch.requester:
            # A background round: ask the peer to punch at the same moment.
            self._ask(punch.peer, now)
        for probe in probes:
            self._send_probe(punch, probe, now)
        if punch.puncher.state is State.RELAYED and punch.relay is None:
            self._choose_relay(punch)
        self._schedule_punch(punch, now)

    def _punch_wanted(self, peer: int, now: float) -> bool:
        """Traffic flows to C{peer}, or the ring still wants it as a neighbour."""
        return peer in self.ondemand or self._ring_punch.get(peer, 0.0) >= now \
            or self.table.would_be_near(peer)

    def _send_probe(self, punch: Punch, probe: Probe, now: float) -> None:
        sock = probe.socket
        if sock and self._send_sock is None:
            return
        punch.probed[probe.endpoint] = (now, sock)
        self.counters.inc("overlay_punch_probes")
        self._raw(W.pack(W.LOCAL, W.HELLO, 1, 0, self.me, punch.peer,
                         self._hello_payload(punch.nonce, not punch.owned)),
                  probe.endpoint, sock)

    def _probe_peer_reflexive(self, peer: int, addr: Endpoint, sock: int, now: float) -> bool:
        """A HELLO from C{peer} came from C{addr}: probe exactly there (ICE's rule)."""
        punch = self.punches.get(peer)
        if punch is None:
            return False
        if addr not in punch.probed:
            self.counters.inc("overlay_punch_peer_reflexive")
        self._send_probe(punch, Probe(addr, sock), now)
        return True

    def _choose_relay(self, punch: Punch) -> None:
        rtts = {a: link.rtt for a, link in self.table.links.items()}
        relay = choose_relay(rtts, punch.peer_links)
        if relay is None:
            self.counters.inc("overlay_relay_unavailable")
            return
        punch.relay = relay
        self.relay_via[punch.peer] = relay
        self.counters.inc("overlay_relayed")
        self.log.info("{peer} relayed through {relay} until a direct path opens",
                      peer=A.to_text(punch.peer), relay=A.to_text(relay))

    # -- outcomes -------------------------------------------------------------------

    def _punch_done(self, peer: int, now: float) -> None:
        """A link to C{peer} is up: the direct path works, stop punching and relaying."""
        punch = self.punches.pop(peer, None)
        self.relay_via.pop(peer, None)
        self._asked.pop(peer, None)
        self._ask_tries.pop(peer, None)
        self._asked_for_peer.discard(peer)
        self._ring_punch.pop(peer, None)
        if punch is None:
            return
        if punch.timer is not None:
            punch.timer.cancel()
        punch.puncher.succeeded(("0.0.0.0", 0), now)
        self.direct_after[peer] = now - punch.started
        self.log.info("direct link to {peer} after {s:.3f} s of punching", peer=A.to_text(peer),
                      s=now - punch.started)
        if len(self.direct_after) > 256:
            self.direct_after.pop(next(iter(self.direct_after)))
        self.counters.inc("overlay_punches_direct")

    def _drop_punch(self, peer: int, reason: str) -> None:
        punch = self.punches.pop(peer, None)
        self.relay_via.pop(peer, None)
        if punch is not None and punch.timer is not None:
            punch.timer.cancel()
        self.counters.inc("overlay_punches_ended", reason=reason)
        self.log.info("punching to {peer} ended: {reason}", peer=A.to_text(peer), reason=reason)

    def _relay_link_down(self, link: Link) -> None:
        """A relay we used is gone: choose another one at the next round."""
        for peer, relay in list(self.relay_via.items()):
            if relay == link.address:
                del self.relay_via[peer]
                punch = self.punches.get(peer)
                if punch is not None:
                    punch.relay = None
                    self._choose_relay(punch)

    def punch_for_reply(self, peer: int, addr: Endpoint) -> Punch | None:
        """Our punch toward C{peer} if we probed C{addr} (a REPLY or REFUSE came from it)."""
        punch = self.punches.get(peer)
        if punch is not None and addr in punch.probed:
            return punch
        return None

    def relayed_info(self) -> list[dict[str, Any]]:
        """C{wow peers} rows for the peers we reach through a relay."""
        def kind(peer: int) -> str:
            if peer in self.ondemand:
                return "on-demand"
            return "near" if self.table.would_be_near(peer) else "other"

        return [{"address": A.to_text(peer), "endpoint": "-", "kind": kind(peer),
                 "rtt_ms": None, "age_s": None, "owned": True, "path": "relayed",
                 "via": A.to_text(relay)}
                for peer, relay in sorted(self.relay_via.items())
                if peer not in self.table.links and relay in self.table.links]
