"""
The link handshake (HELLO / REPLY / CONFIRM / REFUSE) of L{OverlayNode}.

A mixin so the handshake's rules (authentication, reflexive endpoints, one
link per pair, retransmission) read on their own; it works on the node's
tables, declared below.  The wire format is in docs/protocol.md.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from wow.metrics import Counters
from wow.overlay import wire as W
from wow.overlay.identity import ICrypto, address_of
from wow.overlay.link import (
    Answering,
    Dialing,
    Endpoint,
    Link,
    confirm_transcript,
    reply_transcript,
)

if TYPE_CHECKING:
    from wow.overlay.node import OverlayParams
    from wow.overlay.ring import RoutingTable


class HandshakeMixin:
    # Provided by OverlayNode.
    me: int
    crypto: ICrypto
    params: OverlayParams
    counters: Counters
    rng: random.Random
    incarnation: int
    table: RoutingTable
    by_endpoint: dict[Endpoint, Link]
    dialing: dict[Endpoint, Dialing]
    dialing_addr: dict[int, Endpoint]
    answering: dict[int, Answering]
    failed: dict[int, float]
    _adopt: set[int]
    #: The answer a newer HELLO of the same peer replaced (its CONFIRM may come).
    _answered_before: dict[int, Answering]
    reflexive: Endpoint | None
    clock: Callable[[], float]

    def _raw(self, data: bytes, endpoint: Endpoint, sock: int = 0) -> None:
        raise NotImplementedError

    # Provided by PunchMixin.
    _rx_sock: int
    if TYPE_CHECKING:
        def punch_for_reply(self, peer: int, addr: Endpoint) -> Any: ...

        def _probe_peer_reflexive(self, peer: int, addr: Endpoint, sock: int,
                                  now: float) -> bool: ...

        def _observe_reflexive(self, peer: int, destination: Endpoint, seen: Endpoint,
                               now: float) -> None: ...

    def _drop(self, reason: str, addr: Endpoint | None = None) -> None:
        raise NotImplementedError

    def _link_up(self, link: Link, now: float, greet: bool = True) -> None:
        raise NotImplementedError

    def dial(self, endpoint: Endpoint, expected: int | None, ctm: bool = False,
             owned: bool = True, replace: bool = False) -> None:
        """
        Start a handshake with C{endpoint} unless one is pointless or running.

        C{replace}: dial even though a link to C{expected} exists (the peer
        restarted elsewhere; the new link replaces the old one).
        """
        now = self.clock()
        if expected is not None:
            if expected == self.me or (expected in self.table.links and not replace) \
                    or expected in self.dialing_addr or expected in self.answering:
                return
            failed = self.failed.get(expected)
            if failed is not None and now - failed < self.params.dial_backoff:
                return
        if endpoint in self.dialing or endpoint in self.by_endpoint \
                or len(self.dialing) >= self.params.max_dialing:
            return
        d = Dialing(endpoint, self.rng.getrandbits(128).to_bytes(16, "big"), expected, ctm,
                    owned, 0, now)
        self.dialing[endpoint] = d
        if expected is not None:
            self.dialing_addr[expected] = endpoint
        self._send_hello(d, now)

    def _send_hello(self, d: Dialing, now: float) -> None:
        d.attempts += 1
        d.sent_at = now
        d.next_retry = now + self.params.hello_retry * d.attempts
        payload = self._hello_payload(d.nonce, d.ctm)
        self._raw(W.pack(W.LOCAL, W.HELLO, 1, 0, self.me, d.expected or 0, payload), d.endpoint)

    def _hello_payload(self, nonce: bytes, ctm: bool) -> bytes:
        return W.encode({"k": self.crypto.public, "n": nonce, "i": self.incarnation, "c": ctm})

    def _cancel_dial(self, d: Dialing, failed: bool, now: float) -> None:
        self.dialing.pop(d.endpoint, None)
        if d.expected is not None:
            if self.dialing_addr.get(d.expected) == d.endpoint:
                del self.dialing_addr[d.expected]
            if failed:
                self.failed[d.expected] = now

    def _refuse(self, to: int, nonce: bytes, reason: str, addr: Endpoint, sock: int = 0) -> None:
        self.counters.inc("overlay_handshakes_refused", reason=reason)
        self._raw(W.pack(W.LOCAL, W.REFUSE, 1, 0, self.me, to,
                         W.encode({"n": nonce, "r": reason})), addr, sock)

    def _on_hello(self, hdr: W.Header, payload: bytes, addr: Endpoint, now: float) -> None:
        m = W.decode(payload)
        public = W.f_bytes(m, "k", max_size=512)
        na = W.f_bytes(m, "n", 16)
        incarnation = W.f_int(m, "i")
        ctm = bool(m.get("c"))
        peer = address_of(public)
        if peer != hdr.src:
            raise W.WireError("bad-identity", "HELLO source is not its key's address")
        sock = self._rx_sock
        if peer == self.me:
            d = self.dialing.get(addr)
            if d is not None and d.nonce == na:
                self._cancel_dial(d, False, now)
            self._drop("self-dial", addr)
            return
        if hdr.dst not in (0, self.me):
            self._refuse(peer, na, "target-mismatch", addr, sock)
            return
        ans = self.answering.get(peer)
        if ans is not None and ans.na == na:
            if ans.endpoint == addr:
                self._raw(ans.reply, addr, ans.sock)  # our REPLY was lost: resend it
            else:
                # The same handshake reached us over a second path (a punch
                # probes every candidate with one nonce): answering it too
                # would replace the pending answer, and the CONFIRM of the
                # first would be refused -- a link open at one end only.
                self._drop("duplicate-hello", addr)
            return
        link = self.table.links.get(peer)
        if link is not None and link.hello_nonce == na:
            self._drop("duplicate-hello", addr)
            return
        mine = self.dialing_addr.get(peer)
        punching = peer in getattr(self, "punches", ())
        if mine is not None or punching:
            # Simultaneous open: the lower address's HELLO wins, so exactly
            # one link results.
            if peer < self.me:
                if mine is not None:
                    d = self.dialing[mine]
                    if d.owned:
                        self._adopt.add(peer)
                    self._cancel_dial(d, False, now)
            else:
                self._refuse(peer, na, "simultaneous", addr, sock)
                # Our HELLOs may not reach the peer where we sent them (its
                # NAT maps per destination): it reached us from C{addr}, so
                # that is where its NAT lets us in.
                d = self.dialing.get(mine) if mine is not None else None
                if d is not None and d.endpoint != addr and sock == 0:
                    self._cancel_dial(d, False, now)
                    self.dial(addr, peer, d.ctm, d.owned)
                elif punching:
                    self._probe_peer_reflexive(peer, addr, sock, now)
                return
        if len(self.answering) >= self.params.max_answering:
            self._drop("handshake-table-full", addr)
            return
        nb = self.rng.getrandbits(128).to_bytes(16, "big")
        sig = self.crypto.sign(reply_transcript(na, nb, peer, self.me, addr))
        reply = W.pack(W.LOCAL, W.REPLY, 1, 0, self.me, peer, W.encode(
            {"k": self.crypto.public, "n": nb, "i": self.incarnation,
             "o": W.endpoint_value(addr), "s": sig}))
        if ans is not None and ans.expires > now:
            self._answered_before[peer] = ans
        self.answering[peer] = Answering(peer, addr, public, incarnation, na, nb, reply, ctm,
                                         now + self.params.hello_retry * 10, now, sock)
        self._raw(reply, addr, sock)

    def _on_reply(self, hdr: W.Header, payload: bytes, addr: Endpoint, now: float) -> None:
        dials = []
        d = self.dialing.get(addr)
        if d is not None:
            dials.append(d)
        punch = self.punch_for_reply(hdr.src, addr)
        if punch is not None:
            # A punch probe got through: the same checks as any dial.
            sent_at, _ = punch.probed[addr]
            dials.append(Dialing(addr, punch.nonce, punch.peer, not punch.owned,
                                 punch.owned, 1, 0.0, sent_at))
        if not dials:
            self._repeat_confirm(hdr, payload, addr)
            return
        m = W.decode(payload)
        public = W.f_bytes(m, "k", max_size=512)
        nb = W.f_bytes(m, "n", 16)
        incarnation = W.f_int(m, "i")
        seen = W.f_endpoint(m, "o")
        sig = W.f_bytes(m, "s", max_size=256)
        peer = address_of(public)
        if peer != hdr.src or hdr.dst != self.me:
            raise W.WireError("bad-identity", "REPLY addresses")
        d = dials[0]
        if d.expected is not None and peer != d.expected:
            self._cancel_dial(d, True, now)
            self._drop("target-mismatch", addr)
            return
        # A plain dial and a punch may both have probed this endpoint: the
        # REPLY answers one of their nonces.
        for d in dials:
            if self.crypto.verify(public, sig, reply_transcript(d.nonce, nb, self.me, peer, seen)):
                break
        else:
            self._drop("bad-signature", addr)
            return
        if self._rx_sock == 0:
            # (a birthday socket's mapping says nothing about the main one's)
            self.reflexive = seen
            self._observe_reflexive(peer, addr, seen, now)
        confirm = W.encode({"n": nb, "o": W.endpoint_value(addr),
                            "s": self.crypto.sign(confirm_transcript(d.nonce, nb, self.me, peer,
                                                                     addr))})
        sock = self._rx_sock
        self._raw(W.pack(W.LOCAL, W.CONFIRM, 1, 0, self.me, peer, confirm), addr, sock)
        self._cancel_dial(d, False, now)
        owned = d.owned or peer in self._adopt
        self._adopt.discard(peer)
        link = Link(peer, addr, public, incarnation, owned, now, now, now, hello_nonce=d.nonce,
                    bootstrap=d.expected is None, rtt=now - d.sent_at, sock=sock)
        # The dialler speaks second: our CONFIRM may still be in flight, so
        # we wait for the peer's neighbour list before sending anything.
        self._link_up(link, now, greet=False)

    def _repeat_confirm(self, hdr: W.Header, payload: bytes, addr: Endpoint) -> None:
        """
        A REPLY for a link we already hold: the peer never got our CONFIRM
        (it repeats its REPLY when our traffic reaches it first), so send
        the CONFIRM again -- else the link stays open at our end only.
        """
        link = self.by_endpoint.get(addr)
        if link is None or link.address != hdr.src or hdr.dst != self.me \
                or not link.hello_nonce:
            self._drop("unexpected-reply", addr)
            return
        m = W.decode(payload)
        nb = W.f_bytes(m, "n", 16)
        seen = W.f_endpoint(m, "o")
        sig = W.f_bytes(m, "s", max_size=256)
        if W.f_bytes(m, "k", max_size=512) != link.public or not self.crypto.verify(
                link.public, sig, reply_transcript(link.hello_nonce, nb, self.me, link.address,
                                                   seen)):
            self._drop("unexpected-reply", addr)
            return
        self.counters.inc("overlay_confirm_repeated")
        confirm = W.encode({"n": nb, "o": W.endpoint_value(addr),
                            "s": self.crypto.sign(confirm_transcript(
                                link.hello_nonce, nb, self.me, link.address, addr))})
        self._raw(W.pack(W.LOCAL, W.CONFIRM, 1, 0, self.me, link.address, confirm), addr,
                  link.sock)

    def _on_confirm(self, hdr: W.Header, payload: bytes, addr: Endpoint, now: float) -> None:
        m = W.decode(payload)
        nb = W.f_bytes(m, "n", 16)
        seen = W.f_endpoint(m, "o")
        sig = W.f_bytes(m, "s", max_size=256)
        ans = self.answering.get(hdr.src)
        if ans is None or ans.endpoint != addr or ans.nb != nb:
            # Two handshakes of one peer crossed (a plain dial and a punch):
            # its CONFIRM may answer the REPLY we sent first.  Refusing it
            # left the link open at the peer's end only.
            ans = self._answered_before.get(hdr.src)
            if ans is None or ans.endpoint != addr or ans.nb != nb or ans.expires < now:
                self._drop("unexpected-confirm", addr)
                return
        if not self.crypto.verify(ans.public, sig,
                                  confirm_transcript(ans.na, nb, ans.address, self.me, seen)):
            self.answering.pop(hdr.src, None)
            self._answered_before.pop(hdr.src, None)
            self._drop("bad-signature", addr)
            return
        self.answering.pop(hdr.src, None)
        self._answered_before.pop(hdr.src, None)
        if ans.sock == 0:
            self.reflexive = seen
            self._observe_reflexive(ans.address, addr, seen, now)
        owned = ans.ctm or ans.address in self._adopt
        self._adopt.discard(ans.address)
        link = Link(ans.address, addr, ans.public, ans.incarnation, owned, now, now, now,
                    hello_nonce=ans.na, rtt=now - ans.sent_at, sock=ans.sock)
        self._link_up(link, now)

    def _on_refuse(self, hdr: W.Header, payload: bytes, addr: Endpoint, now: float) -> None:
        m = W.decode(payload)
        nonce = W.f_bytes(m, "n", 16)
        reason = W.f_str(m, "r")
        d = self.dialing.get(addr)
        if d is None or d.nonce != nonce:
            punch = self.punch_for_reply(hdr.src, addr)
            if punch is not None and punch.nonce == nonce:
                # The peer punches too and its HELLO wins: it will reach us.
                self.counters.inc("overlay_punch_refused_by_peer", reason=reason[:32])
                if reason == "simultaneous" and punch.owned:
                    self._adopt.add(hdr.src)
                return
            self._drop("unexpected-refuse", addr)
            return
        self._cancel_dial(d, reason != "simultaneous", now)
        if reason == "simultaneous" and d.owned:
            self._adopt.add(hdr.src)
