"""
One overlay node, sans I/O.

L{OverlayNode} is fed datagrams (C{datagram_received(data, addr, now)}) and
the passage of time (C{tick(now)}), and sends through an injected
C{send(data, endpoint)} callable.  It never touches a socket or a reactor, so
the Twisted adapter (L{wow.overlay.service}), the unit tests and the
simulator (L{wow.overlay.sim}) all run exactly this code.

Jobs: link handshakes and keepalives (L{wow.overlay.link}), the routing table
and greedy routing (L{wow.overlay.ring}), joining through bootstrap
endpoints, ring repair by neighbour-list gossip, Chord-style shortcut
lookups, per-source rate limits, and dispatch to the DHT and to application
handlers.
"""

from __future__ import annotations

import heapq
import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from wow.metrics import Counters
from wow.nat.behaviour import NatObserver
from wow.nat.punch import State
from wow.overlay import address as A
from wow.overlay import wire as W
from wow.overlay.handshake import HandshakeMixin
from wow.overlay.identity import ICrypto
from wow.overlay.link import OTHER, Answering, Dialing, Endpoint, Link
from wow.overlay.punching import PunchMixin
from wow.overlay.ratelimit import TokenBuckets
from wow.overlay.ring import RoutingTable

Send = Callable[[bytes, Endpoint], None]
#: Hops after which a message that fell into a hole of the ring view is
#: dropped instead of tried at another neighbour (never back where it came from).
HOLE_HOPS = 4


@dataclass(frozen=True)
class OverlayParams:
    """Tunables of the overlay core (defaults match etc/wow-node.toml)."""

    keepalive: float = 15.0
    dead_after: float = 45.0
    #: Once a link is silent past C{keepalive}, ping it this often.
    probe: float = 5.0
    near: int = 2
    ttl: int = W.DEFAULT_TTL
    hello_retry: float = 1.0
    hello_attempts: int = 5
    #: How long an address that did not answer a handshake is left alone.
    dial_backoff: float = 30.0
    max_dialing: int = 64
    max_answering: int = 512
    stabilize: float = 10.0
    finger_refresh: float = 300.0
    join_retry: float = 10.0
    trim_grace: float = 60.0
    #: Per-source token buckets (datagrams per second, burst).
    peer_rate: float = 2000.0
    peer_burst: float = 4000.0
    stranger_rate: float = 50.0
    stranger_burst: float = 100.0
    #: DATA datagrams from linked peers: a 60 KB super-frame is ~43 pieces, so
    #: a direct link at several Gbit/s sends ~400k pieces/s; strangers stay at
    #: stranger_rate whatever the kind.
    peer_data_rate: float = 1_000_000.0
    peer_data_burst: float = 100_000.0
    source_table: int = 4096
    # DHT
    replicas: int = 3
    dht_timeout: float = 4.0
    dht_attempts: int = 3
    dht_max_value: int = 1024
    dht_max_ttl: int = 7 * 24 * 3600
    dht_sync_grace: float = 5.0
    dht_republish: float = 120.0
    #: An on-demand link (asked for by the IP router) idle this long is closed.
    ondemand_idle: float = 120.0
    #: No bootstrap is configured: this node founds the overlay.  While it
    #: holds no links it is the whole overlay, so it is the sole replica of
    #: every key and decides DHT creates alone (a lone first node can lease
    #: addresses); a node told to join somewhere never does.
    seed: bool = False


@dataclass(frozen=True, slots=True)
class Delivery:
    """A routed message that reached this node."""

    src: int
    dst: int
    mode: int
    kind: int
    hops: int
    payload: bytes


class Timer:
    __slots__ = ("when", "fn", "cancelled")

    def __init__(self, when: float, fn: Callable[[float], None]) -> None:
        self.when = when
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class OverlayNode(HandshakeMixin, PunchMixin):
    log = Logger()

    def __init__(
        self,
        crypto: ICrypto,
        send: Send,
        clock: Callable[[], float],
        params: OverlayParams | None = None,
        counters: Counters | None = None,
        bootstrap: list[Endpoint] | None = None,
        rng: random.Random | None = None,
        version: str = "",
    ) -> None:
        self.crypto = crypto
        self.me = crypto.address
        #: Sends from extra local sockets (birthday probing): C{(data, endpoint,
        #: socket index)}; None when the adapter cannot open more sockets.
        self._send_sock: Callable[[bytes, Endpoint, int], None] | None = None
        #: The local socket the datagram being handled arrived on.
        self._rx_sock = 0
        self.params = p = params or OverlayParams()
        self.clock = clock
        self._send = send
        self.counters = counters if counters is not None else Counters()
        self.bootstrap = list(bootstrap or [])
        self.rng = rng or random.Random()
        self.version = version
        self.incarnation = self.rng.getrandbits(63)
        self.table = RoutingTable(self.me, max(p.near, p.replicas - 1))
        self.by_endpoint: dict[Endpoint, Link] = {}
        self.dialing: dict[Endpoint, Dialing] = {}
        self.dialing_addr: dict[int, Endpoint] = {}
        self.answering: dict[int, Answering] = {}
        self._answered_before: dict[int, Answering] = {}
        self.failed: dict[int, float] = {}
        self._adopt: set[int] = set()
        #: Linked peers silent for longer than keepalive + probe.
        self.suspects: set[int] = set()
        #: Recently seen peers (address -> endpoint): fallback bootstraps
        #: for when every link and every configured bootstrap is gone.
        self.known: OrderedDict[int, Endpoint] = OrderedDict()
        #: Address -> the linked node whose neighbour list named it last.
        self.introducer: OrderedDict[int, int] = OrderedDict()
        #: Endpoints of links closed in the last seconds -> until when.
        self._closing: dict[Endpoint, float] = {}
        self.handlers: dict[int, Callable[[Delivery], None]] = {}
        #: Peers the IP router exchanges traffic with → when it last did.
        self.ondemand: dict[int, float] = {}
        self.observers: list[Callable[[str, Link], None]] = []
        self.reflexive: Endpoint | None = None
        self.local_endpoint: Endpoint | None = None
        #: Reflexive endpoints peers saw us at, from authenticated handshakes
        #: (C{wow netcheck}).
        self.nat = NatObserver()
        #: Our local endpoint toward a destination (the adapter knows the
        #: routing table; None: C{local_endpoint} or the wildcard).
        self.local_for: Callable[[Endpoint], Endpoint] | None = None
        self.peers = TokenBuckets(p.peer_rate, p.peer_burst, p.source_table)
        self.strangers = TokenBuckets(p.stranger_rate, p.stranger_burst, p.source_table)
        self.peer_data = TokenBuckets(p.peer_data_rate, p.peer_data_burst, p.source_table)
        self._timers: list[tuple[float, int, Timer]] = []
        self._seq = 0
        self._gossip_pending = False
        self._near_snapshot: frozenset[int] = frozenset()
        self.near_changed_at = 0.0
        self.near_lost_at = 0.0
        #: When we last looked our address up from a far link (ring merge).
        self._far_join_at = -1e9
        self._finger_count = 0
        self.started_at = 0.0
        self.running = False
        self.sent = 0
        from wow.overlay.dht import Dht

        self.dht = Dht(self)
        self._init_punching()

    # -- timers -----------------------------------------------------------

    def call_later(self, delay: float, fn: Callable[[float], None]) -> Timer:
        t = Timer(self.clock() + delay, fn)
        self._seq += 1
        heapq.heappush(self._timers, (t.when, self._seq, t))
        return t

    def next_wakeup(self) -> float | None:
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    def tick(self, now: float) -> float | None:
        """Run every timer due at C{now}; return when the next one is due."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, t = heapq.heappop(timers)
            if t.cancelled:
                continue
            try:
                t.fn(now)
            except Exception:
                self.log.failure("overlay timer failed")
        return self.next_wakeup()

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        now = self.clock()
        self.started_at = now
        self.running = True
        p = self.params
        self._join(now)
        self.call_later(p.probe * self.rng.uniform(0.5, 1.0), self._maintain)
        self.call_later(p.stabilize * self.rng.uniform(0.5, 1.0), self._stabilize)
        self.call_later(3.0, self._join_check)
        self.call_later(5.0, self._fingers)
        self.call_later(p.dht_republish * self.rng.uniform(0.5, 1.0), self.dht.republish)

    def stop(self) -> None:
        """Close every link explicitly (peers repair at once, not after a timeout)."""
        for link in list(self.table.links.values()):
            self._link_down(link, "shutdown", notify=True)
        self.running = False
        self._timers.clear()

    # -- sending ------------------------------------------------------------

    def _raw(self, data: bytes, endpoint: Endpoint, sock: int = 0) -> None:
        self.sent += 1
        if sock and self._send_sock is not None:
            self._send_sock(data, endpoint, sock)
        else:
            self._send(data, endpoint)

    def _send_link(self, link: Link, kind: int, payload: bytes, now: float) -> None:
        link.last_sent = now
        self._raw(W.pack(W.LOCAL, kind, 1, 0, self.me, link.address, payload), link.endpoint,
                  link.sock)

    def send_to(self, dst: int, kind: int, payload: bytes, mode: int = W.EXACT) -> bool:
        """
        Route an application (or DHT/control) message; True if it left or was
        delivered here, False if there was no route.
        """
        if len(payload) > W.MAX_PAYLOAD:
            self.counters.inc("overlay_dropped", reason="oversized")
            return False
        data = W.pack(mode, kind, self.params.ttl, 0, self.me, dst, payload)
        hdr = W.Header(W.VERSION, mode, kind, self.params.ttl, 0, self.me, dst)
        return self._route(hdr, data, payload, self.clock(), None)

    def register_handler(self, kind: int, handler: Callable[[Delivery], None]) -> None:
        """Receive routed messages of application kind C{kind} (0x20-0x3F, or DATA)."""
        if not (W.APP_FIRST <= kind <= W.APP_LAST or kind == W.DATA):
            raise ValueError(f"kind {kind:#x} is not an application kind")
        self.handlers[kind] = handler

    def add_observer(self, observer: Callable[[str, Link], None]) -> None:
        """Call C{observer("up"|"down", link)} on every link change."""
        self.observers.append(observer)

    # -- receiving ----------------------------------------------------------

    def _drop(self, reason: str, addr: Endpoint | None = None) -> None:
        self.counters.inc("overlay_dropped", reason=reason)

    def datagram_received(self, data: bytes, addr: Endpoint, now: float, sock: int = 0) -> None:
        """One UDP datagram from C{addr} (on local socket C{sock}).  Never raises."""
        if not self.running:
            return
        self._rx_sock = sock
        link = self.by_endpoint.get(addr)
        if link is None:
            buckets = self.strangers
        elif len(data) > 1 and data[1] & 0x3F == W.DATA:
            buckets = self.peer_data
        else:
            buckets = self.peers
        if not buckets.allow(addr, now):
            self._drop("rate-limited", addr)
            return
        try:
            hdr, payload = W.unpack(data)
            if hdr.mode == W.LOCAL:
                self._on_link_message(hdr, payload, addr, link, now)
            elif link is None:
                if self._closing.get(addr, 0.0) > now:
                    # A link we just closed: the peer may have sent this
                    # before it saw our CLOSE; pass it on rather than lose it.
                    self._route(hdr, data, payload, now, None)
                    return
                self._drop("not-linked", addr)
                self._tell_unlinked(hdr, addr, now)
            else:
                link.last_recv = now
                self._route(hdr, data, payload, now, link)
        except W.WireError as e:
            self._drop(e.reason, addr)
        except Exception:
            self.log.failure("overlay message from {addr} crashed the handler", addr=addr)
            self._drop("internal-error", addr)

    def _tell_unlinked(self, hdr: W.Header, addr: Endpoint, now: float) -> None:
        """
        A peer thinks it has a link we do not: tell it (it will re-handshake).

        The datagram may be one the peer forwards for someone else, so
        C{hdr.src} need not be the peer: we look the handshake up by
        endpoint, and the CLOSE goes to "whoever is at C{addr}" (dst 0).
        """
        ans = self.answering.get(hdr.src)
        if ans is None or ans.endpoint != addr:
            ans = next((a for a in self.answering.values() if a.endpoint == addr), None)
        if ans is not None:
            # The peer finished its side: its traffic overtook its CONFIRM,
            # or the CONFIRM was lost -- then nothing would repeat it, and the
            # link stays open at the peer's end only (it routes into a hole)
            # until our answer expires.  Repeat our REPLY: the peer answers a
            # REPLY for its live link with its CONFIRM again.
            if now - max(ans.sent_at, ans.repeated_at) >= self.params.hello_retry:
                ans.repeated_at = now
                self.counters.inc("overlay_reply_repeated")
                self._raw(ans.reply, addr, ans.sock)
            return
        if hdr.kind != W.CLOSE:
            self._raw(W.pack(W.LOCAL, W.CLOSE, 1, 0, self.me, 0,
                             W.encode({"r": "no-link"})), addr)

    def _on_link_message(self, hdr: W.Header, payload: bytes, addr: Endpoint,
                         link: Link | None, now: float) -> None:
        kind = hdr.kind
        if kind == W.HELLO:
            self._on_hello(hdr, payload, addr, now)
        elif kind == W.REPLY:
            self._on_reply(hdr, payload, addr, now)
        elif kind == W.CONFIRM:
            self._on_confirm(hdr, payload, addr, now)
        elif kind == W.REFUSE:
            self._on_refuse(hdr, payload, addr, now)
        elif link is None or hdr.src != link.address or hdr.dst not in (self.me, 0):
            self._drop("not-linked", addr)
            self._tell_unlinked(hdr, addr, now)
        else:
            link.last_recv = now
            if kind == W.PING:
                if len(payload) != 4:
                    raise W.WireError("bad-payload", "ping")
                self._send_link(link, W.PONG, payload, now)
            elif kind == W.PONG:
                if len(payload) != 4:
                    raise W.WireError("bad-payload", "pong")
                if int.from_bytes(payload, "big") == link.ping_seq and link.ping_sent_at:
                    link.rtt = now - link.ping_sent_at
                    link.ping_sent_at = 0.0
            elif kind == W.CLOSE:
                reason = W.f_str(W.decode(payload), "r")
                wanted = link.address in self.table.wanted()
                self._link_down(link, "closed-by-peer", notify=False)
                if reason == "trim" and wanted:
                    self.dial(link.endpoint, link.address, owned=True)
            elif kind == W.NEIGHBOURS:
                m = W.decode(payload)
                if link.bootstrap:
                    # The bootstrap node has the link now: route our join
                    # through it.  Its neighbours are somewhere else on the
                    # ring, so linking to them would only be undone later;
                    # we only remember them in case the bootstrap dies.
                    link.bootstrap = False
                    self._send_join(now)
                    for e in m.get("l", [])[:4] if isinstance(m.get("l"), list) else []:
                        if isinstance(e, list) and len(e) == 3 and isinstance(e[0], bytes) \
                                and len(e[0]) == A.SIZE:
                            self._remember(A.from_bytes(e[0]), W.as_endpoint(e[1:]))
                else:
                    self._on_neighbours(m, link, now)
                    self._maybe_correct(m, link, now)
                if not link.greeted and link.address in self.table.near_set():
                    # Answer a greeting from a near neighbour with our own
                    # list; a far peer (a shortcut) has no use for it.
                    self._send_neighbours(link, now)

    # -- link state ---------------------------------------------------------

    def _link_up(self, link: Link, now: float, greet: bool = True) -> None:
        old = self.table.links.get(link.address)
        if old is not None:
            # The peer restarted or lost its side: the new authenticated link
            # replaces the old one, there is never a second link per pair.
            self.by_endpoint.pop(old.endpoint, None)
            self.counters.inc("overlay_links_replaced")
            link.owned = link.owned or old.owned
            if old.endpoint != link.endpoint:
                self._near_snapshot = frozenset()  # neighbours must hear the new endpoint
        stale = self.by_endpoint.get(link.endpoint)
        if stale is not None and stale.address != link.address:
            self._link_down(stale, "endpoint-reused", notify=False)
        self.table.add(link)
        self.by_endpoint[link.endpoint] = link
        dialing = self.dialing_addr.get(link.address)
        if dialing is not None and dialing in self.dialing:
            # A plain dial still running would only replace this link.
            self._cancel_dial(self.dialing[dialing], False, now)
        self._remember(link.address, link.endpoint)
        self.failed.pop(link.address, None)
        self.counters.inc("overlay_links_up")
        if greet:
            self._send_neighbours(link, now)
        self._punch_done(link.address, now)
        self._membership_changed(now)
        for obs in self.observers:
            obs("up", link)

    def _link_down(self, link: Link, reason: str, notify: bool) -> None:
        now = self.clock()
        if self.table.links.get(link.address) is not link:
            return
        if notify:
            self._send_link(link, W.CLOSE, W.encode({"r": reason}), now)
        if link.address in self.table.near_set():
            # We may now be responsible for keys the lost neighbour held.
            self.near_lost_at = now
        self.table.remove(link.address)
        if self.by_endpoint.get(link.endpoint) is link:
            del self.by_endpoint[link.endpoint]
        if reason != "timeout":
            self._closing[link.endpoint] = now + 5.0
        self.counters.inc("overlay_links_down", reason=reason)
        self._relay_link_down(link)
        self._membership_changed(now)
        for obs in self.observers:
            obs("down", link)
        if link.address in self.ondemand and self.running and reason != "shutdown":
            # Traffic still flows to it (a NAT mapping changed, the peer
            # moved): punch a new path at once; relayed meanwhile.
            self.call_later(0.5, lambda t: self.request_link(link.address, t))

    def _membership_changed(self, now: float) -> None:
        near = frozenset(self.table.near_set())
        if near != self._near_snapshot:
            self._near_snapshot = near
            self.near_changed_at = now
            if not self._gossip_pending:
                self._gossip_pending = True
                self.call_later(0.2, self._flush_gossip)

    def _flush_gossip(self, now: float) -> None:
        self._gossip_pending = False
        for a in self.table.near_set():
            link = self.table.links.get(a)
            if link is not None:
                self._send_neighbours(link, now)
        self.dht.membership_changed(now)

    # -- ring maintenance ---------------------------------------------------

    def _neighbours_payload(self) -> bytes:
        t = self.table
        t.successors()
        cached = t.entries_cache
        if cached is None:
            out = []
            for a in dict.fromkeys(t.successors() + t.predecessors()):
                link = t.links[a]
                out.append([A.to_bytes(a), link.endpoint[0], link.endpoint[1]])
            cached = t.entries_cache = W.encode({"l": out})
        return cached

    def _send_neighbours(self, link: Link, now: float) -> None:
        link.greeted = True
        self._send_link(link, W.NEIGHBOURS, self._neighbours_payload(), now)

    def _on_neighbours(self, m: dict[str, Any], link: Link, now: float) -> None:
        entries = m.get("l")
        if not isinstance(entries, list) or len(entries) > 32:
            raise W.WireError("bad-payload", "neighbour list")
        offered: dict[int, Any] = {}
        links = self.table.links
        me = self.me
        for e in entries:
            if not isinstance(e, list) or len(e) != 3 or not isinstance(e[0], bytes) \
                    or len(e[0]) != A.SIZE:
                raise W.WireError("bad-payload", "neighbour entry")
            addr = A.from_bytes(e[0])
            if addr != me and addr not in links:
                offered[addr] = e
                self._introduced(addr, link.address)
                if len(self.known) < 8:
                    self._remember(addr, W.as_endpoint(e[1:]))
        if not offered:
            return
        # Dial only the offered nodes that would be among our near
        # neighbours given everything we know now (links and this list).
        n = self.table.near
        mod = A.MODULUS
        succ = sorted(list(offered) + self.table.successors(), key=lambda a: (a - me) % mod)[:n]
        pred = sorted(list(offered) + self.table.predecessors(),
                      key=lambda a: (me - a) % mod)[:n]
        for a in set(succ) | set(pred):
            e = offered.get(a)
            if e is not None:
                self.dial(W.as_endpoint(e[1:]), a, owned=True)

    def _maybe_correct(self, m: dict[str, Any], link: Link, now: float) -> None:
        """
        Anti-entropy: if we know a node that belongs among the sender's near
        neighbours but is missing from its list, send it our list now rather
        than at the next stabilisation round.
        """
        if now - link.last_sent < 0.5:
            return
        listed = {A.from_bytes(e[0]) for e in m["l"]}
        peer, n, mod = link.address, self.table.near, A.MODULUS
        mine = set(self.table.near_set())
        mine.discard(peer)
        everyone = listed | mine
        succ = sorted(everyone, key=lambda a: (a - peer) % mod)[:n]
        pred = sorted(everyone, key=lambda a: (peer - a) % mod)[:n]
        if any(a not in listed for a in succ + pred):
            self._send_neighbours(link, now)

    def _endpoints(self) -> list[list[Any]]:
        eps = []
        if self.reflexive is not None:
            eps.append(W.endpoint_value(self.reflexive))
        if self.local_endpoint is not None and self.local_endpoint != self.reflexive:
            eps.append(W.endpoint_value(self.local_endpoint))
        return eps

    def _send_ctm(self, target: int, join: bool) -> None:
        eps = self._endpoints()
        if not eps:
            return
        payload = W.encode({"op": "ctm", "e": eps, "j": join})
        self.send_to(target, W.CTRL, payload, W.CLOSEST_OTHER)

    def _send_join(self, now: float) -> None:
        self._send_ctm(self.me, True)

    def _on_ctrl(self, hdr: W.Header, payload: bytes, now: float) -> None:
        m = W.decode(payload)
        op = W.f_str(m, "op")
        if op != "ctm":
            raise W.WireError("bad-payload", f"control op {op!r}")
        eps = m.get("e")
        if not isinstance(eps, list) or not eps or len(eps) > 16:
            raise W.WireError("bad-payload", "ctm endpoints")
        endpoint = W.as_endpoint(eps[0])
        if hdr.src == self.me:
            return
        if m.get("o") or m.get("p"):
            # On-demand links: coordinated hole punching (wow.overlay.punching).
            self._on_punch_ctm(hdr.src, m, now)
            return
        link = self.table.links.get(hdr.src)
        if link is not None:
            if W.endpoint_value(link.endpoint) in eps:
                if m.get("j"):
                    self._send_neighbours(link, now)
                return
            # Linked, but the peer speaks from elsewhere now: it restarted.
        self.dial(endpoint, hdr.src, ctm=True, owned=False, replace=link is not None)

    def _introduced(self, address: int, by: int) -> None:
        """C{by} listed C{address} among its links: a way there while we have none."""
        intro = self.introducer
        intro[address] = by
        intro.move_to_end(address)
        if len(intro) > 256:
            intro.popitem(last=False)

    def _remember(self, address: int, endpoint: Endpoint) -> None:
        known = self.known
        known[address] = endpoint
        known.move_to_end(address)
        if len(known) > 32:
            known.popitem(last=False)

    def _join(self, now: float) -> None:
        for ep in self.bootstrap:
            if ep != self.local_endpoint:
                self.dial(ep, None, owned=True)
        if not self.table.links:
            # The configured bootstraps may be gone too: try peers we met.
            for ep in list(self.known.values())[-4:]:
                self.dial(ep, None, owned=True)

    def _join_check(self, now: float) -> None:
        """
        Re-join when alone; while young, ask the ring again for our place.

        A join routed while the ring around our address is still forming
        can end at the wrong node; asking again a few times early (the node
        closest to us answers with its neighbour list) fixes that quickly,
        and costs nothing once the node is settled.
        """
        age = now - self.started_at
        if not self.table.links:
            self._join(now)
        else:
            young = len(self.table.links) < 2 * self.table.near or age < 60
            if young:
                self._send_join(now)
            if young or now - self._far_join_at >= 3 * self.params.join_retry:
                self._join_from_afar(now)
        delay = self.params.join_retry if age >= 30 else 3.0 + age / 2
        self.call_later(delay * self.rng.uniform(0.8, 1.2), self._join_check)

    def _join_from_afar(self, now: float) -> None:
        """
        Look our own address up starting at a random far link.

        Neighbour lists only repair a ring locally: nodes can settle in two
        interleaved rings (each node's near set consistent, every true
        neighbour in the other ring) that no neighbour list ever mentions,
        and a lookup that starts here ends at once in our own ring.  Started
        far away, greedy routing reaches the node closest to us in whichever
        ring the path enters; that node links to us (or sends its list), and
        the rings merge from there (tests/test_overlay_sim.py, seed 16).
        """
        near = self.table.near_set()
        far = [a for a in self.table.links if a not in near]
        eps = self._endpoints()
        if not far or not eps:
            return
        self._far_join_at = now
        link = self.table.links[self.rng.choice(far)]
        payload = W.encode({"op": "ctm", "e": eps, "j": True})
        link.last_sent = now
        self._raw(W.pack(W.CLOSEST_OTHER, W.CTRL, self.params.ttl - 1, 1, self.me, self.me,
                         payload), link.endpoint, link.sock)

    def _stabilize(self, now: float) -> None:
        for a in self.table.near_set():
            self._send_neighbours(self.table.links[a], now)
        self.call_later(self.params.stabilize * self.rng.uniform(0.8, 1.2), self._stabilize)

    def _fingers(self, now: float) -> None:
        """Look up the node closest to each Chord finger target."""
        if self.table.links:
            self._finger_count = self.table.finger_count()
            for t in self.table.finger_targets():
                self._send_ctm(t, False)
        # Early rounds come quickly (the size estimate grows while joining).
        age = now - self.started_at
        delay = 20.0 if age < 30 else 60.0 if age < 120 else self.params.finger_refresh
        self.call_later(delay * self.rng.uniform(0.8, 1.2), self._fingers)

    def _maintain(self, now: float) -> None:
        """Handshake retries, keepalives, failure detection and trimming."""
        p = self.params
        for d in list(self.dialing.values()):
            if now >= d.next_retry:
                if d.attempts >= p.hello_attempts:
                    self._cancel_dial(d, True, now)
                    self.counters.inc("overlay_handshakes_failed")
                else:
                    self._send_hello(d, now)
                    if d.attempts == 2 and d.expected is not None:
                        # No answer at the endpoint a third node saw (or the
                        # one a joining node gave): punch, with our local
                        # addresses too (a node behind our own NAT).
                        self.punch_ring_neighbour(d.expected, now, for_peer=not d.owned)
        for a, ans in list(self.answering.items()):
            if now >= ans.expires:
                del self.answering[a]
        for a, ans in list(self._answered_before.items()):
            if now >= ans.expires:
                del self._answered_before[a]
        wanted = self.table.wanted() | self._ondemand_wanted(now)
        suspects = set()
        for link in list(self.table.links.values()):
            silent = now - link.last_recv
            if silent > p.dead_after:
                self._link_down(link, "timeout", notify=False)
                continue
            if silent > p.keepalive + p.probe:
                suspects.add(link.address)
            if link.owned and link.address not in wanted and now - link.created > p.trim_grace:
                self._link_down(link, "trim", notify=True)
                continue
            if now - link.last_sent >= p.keepalive or (
                silent > p.keepalive and now - link.last_ping >= p.probe
            ):
                link.ping_seq = (link.ping_seq + 1) & 0xFFFFFFFF
                link.last_ping = link.ping_sent_at = now
                self._send_link(link, W.PING, link.ping_seq.to_bytes(4, "big"), now)
        if suspects != self.suspects:
            # Silent neighbours are probably gone: copy DHT records to the
            # next replicas now instead of after dead_after.
            self.suspects = suspects
            self.dht.membership_changed(now)
        if self.table.links and self.table.finger_count() != self._finger_count:
            self._finger_count = self.table.finger_count()
            for t in self.table.finger_targets():
                self._send_ctm(t, False)
        if self._closing:
            self._closing = {e: t for e, t in self._closing.items() if t > now}
        if len(self.failed) > 1024:
            self.failed = {a: t for a, t in self.failed.items() if now - t < p.dial_backoff}
        self.call_later(min(p.probe, p.keepalive / 3), self._maintain)

    # -- routing ------------------------------------------------------------

    def _route(self, hdr: W.Header, data: bytes, payload: bytes, now: float,
               came_from: Link | None) -> bool:
        me = self.me
        if came_from is not None and hdr.src == me:
            self._drop("loop")
            return False
        mode = hdr.mode
        table = self.table
        if mode == W.EXACT:
            nxt = None if hdr.dst == me else table.next_hop(hdr.dst)
            if self.relay_via and nxt != hdr.dst and came_from is None \
                    and hdr.dst in self.relay_via:
                # No direct path (yet): from the source, one hop through a
                # common neighbour, which holds a link to the target.
                relay = self.relay_via[hdr.dst]
                if relay in table.links:
                    nxt = relay
            if nxt is None and hdr.dst != me:
                # Greedy routing says we are closest, yet we are not the
                # target: it sits in a hole of our ring view (a neighbour we
                # cannot link to yet).  The node that told us about it holds
                # a link to it; else our closest other link may know better
                # (early in the path only, never straight back).
                via = self.introducer.get(hdr.dst)
                if via is not None and via in table.links and (
                        came_from is None or came_from.address != via):
                    nxt = via
                elif table.links and hdr.hops < HOLE_HOPS:
                    nxt = table.next_hop(hdr.dst, self_candidate=False,
                                         exclude=came_from.address if came_from else me)
            if nxt is None and hdr.dst != me:
                self._drop("no-route")
                return False
        elif mode == W.CLOSEST:
            nxt = table.next_hop(hdr.dst)
        else:  # CLOSEST_OTHER: never the source itself
            if hdr.src == me:
                nxt = table.next_hop(hdr.dst, exclude=me, self_candidate=False)
                if nxt is None:
                    self._drop("no-route")
                    return False
            else:
                nxt = table.next_hop(hdr.dst, exclude=hdr.src)
        if nxt is None:
            self._deliver(hdr, payload, now)
            return True
        if hdr.ttl == 0:
            self._drop("ttl-exhausted")
            return False
        link = table.links[nxt]
        link.last_sent = now
        if came_from is not None:
            self.counters.inc("overlay_forwarded")
        self._raw(W.rewrite_hop(data, hdr.ttl - 1, min(255, hdr.hops + 1)), link.endpoint,
                  link.sock)
        return True

    def _deliver(self, hdr: W.Header, payload: bytes, now: float) -> None:
        kind = hdr.kind
        if kind == W.CTRL:
            self._on_ctrl(hdr, payload, now)
        elif kind == W.DHT:
            self.dht.on_message(hdr, payload, now)
        else:
            handler = self.handlers.get(kind)
            if handler is None:
                self._drop("no-handler")
                return
            self.counters.inc("overlay_delivered")
            handler(Delivery(hdr.src, hdr.dst, hdr.mode, kind, hdr.hops, payload))

    # -- inspection ---------------------------------------------------------

    def status(self, now: float) -> dict[str, Any]:
        t = self.table
        succ, pred = t.successor(), t.predecessor()
        return {
            "address": A.to_text(self.me),
            "local_endpoint": list(self.local_endpoint) if self.local_endpoint else None,
            "reflexive_endpoint": list(self.reflexive) if self.reflexive else None,
            "links": len(t.links),
            "near": len(t.near_set()),
            "successor": A.to_text(succ) if succ is not None else None,
            "predecessor": A.to_text(pred) if pred is not None else None,
            "estimated_size": t.estimate_size(),
            "uptime_s": round(now - self.started_at, 1),
            "version": self.version,
            "dht_keys": len(self.dht.store),
            "relayed": len(self.relay_via),
            "punching": len(self.punches),
        }

    def peers_info(self, now: float) -> list[dict[str, Any]]:
        out = []
        me = self.me
        for link in sorted(self.table.describe(), key=lambda lk: (lk.address - me) % A.MODULUS):
            out.append({
                "address": A.to_text(link.address),
                "endpoint": f"{link.endpoint[0]}:{link.endpoint[1]}",
                "kind": "on-demand" if link.kind == OTHER and link.address in self.ondemand
                else link.kind,
                "rtt_ms": round(link.rtt * 1000, 2) if link.rtt is not None else None,
                "age_s": round(now - link.created, 1),
                "owned": link.owned,
                "path": "direct",
                "punch_s": round(self.direct_after[link.address], 3)
                if link.address in self.direct_after else None,
            })
        return out + self.relayed_info()

    def _observe_reflexive(self, peer: int, destination: Endpoint, seen: Endpoint,
                           now: float) -> None:
        """An authenticated handshake told us where C{peer} saw us come from."""
        local = (self.local_for(destination) if self.local_for is not None
                 else self.local_endpoint or ("0.0.0.0", 0))
        change = self.nat.observe(peer, destination, seen, local, now, authenticated=True)
        if change is not None:
            self.counters.inc("overlay_mapping_changes")
            self.mapping_changed = (now, change)
            self.log.info("our NAT mapping toward {peer} changed: {old} -> {new}",
                          peer=A.to_text(peer), old=f"{change.old[0]}:{change.old[1]}",
                          new=f"{change.new[0]}:{change.new[1]}")

    def netcheck(self, now: float) -> dict[str, Any]:
        """What C{wow netcheck} shows: endpoints, NAT mapping, direct reachability."""
        report = self.nat.report(now)
        mapping = report["mapping"]
        if mapping == "none":
            reachable, why = "yes", "not behind a NAT: peers see our local endpoint"
        elif mapping == "endpoint-independent":
            reachable, why = "probably", (
                "one external endpoint for every peer: peers can reach it once we have sent "
                "to them (hole punching); unsolicited traffic depends on the NAT's filtering, "
                "which is not measured")
        elif mapping == "address-and-port-dependent":
            reachable, why = "no", (
                "a new external endpoint per destination (symmetric NAT): direct links need "
                "the peer to be reachable or a relay")
        else:
            reachable, why = "unknown", (
                "fewer than two peers at different addresses have seen us yet")
        changed = getattr(self, "mapping_changed", None)
        if changed is not None:
            at, change = changed
            report["mapping_changed"] = {
                "peer": A.to_text(change.peer), "old": f"{change.old[0]}:{change.old[1]}",
                "new": f"{change.new[0]}:{change.new[1]}", "age_s": round(now - at, 1)}
        report.update({
            "address": A.to_text(self.me),
            "reflexive_endpoints": [f"{h}:{p}" for h, p in self.nat.reflexive_endpoints(now)],
            "reachable_directly": reachable,
            "explanation": why,
        })
        return report

    # -- links on demand (the IP router's traffic) ----------------------------

    def has_link(self, address: int) -> bool:
        return address in self.table.links

    def request_link(self, address: int, now: float | None = None) -> None:
        """
        Ask C{address} for a direct link: a "connect to me" routed exactly to
        it, carrying our candidates; both sides then punch
        (L{wow.overlay.punching}), and we keep the link while traffic flows
        (L{touch}).  Until a path opens, traffic is routed (then relayed).
        """
        if address == self.me:
            return
        now = self.clock() if now is None else now
        self.ondemand[address] = now
        if address in self.table.links:
            return
        punch = self.punches.get(address)
        if punch is not None:
            if punch.puncher.state is State.RELAYED and now - punch.puncher.started > 2.0:
                # Traffic wants it now: retry at once, not at the next round.
                punch.puncher.restart(now)
                self._ask(address, now)
                self._schedule_punch(punch, now)
            return
        asked = self._asked.get(address)
        if asked is not None and now - asked < 2.0:
            return
        self._ask(address, now)

    def touch(self, address: int) -> None:
        """Traffic to or from C{address}: keep its on-demand link."""
        if address in self.ondemand:
            self.ondemand[address] = self.clock()

    def _ondemand_wanted(self, now: float) -> set[int]:
        idle = self.params.ondemand_idle
        for address, used in list(self.ondemand.items()):
            if now - used > idle:
                del self.ondemand[address]
        return set(self.ondemand)
