"""
Overlay-level echo: what C{wow ping} measures.

A request is routed EXACT to an overlay address like any application
message; the target answers with the number of hops the request took, so
the sender learns the round-trip time and whether the path was one direct
link or relayed through other nodes.  Sans-I/O: the overlay is any object
with C{send_to}, C{register_handler}, C{me} and C{table}; time comes from
an injected C{IReactorTime}.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from wow.metrics import Counters
from wow.overlay import address as A
from wow.overlay import wire as W

#: The application message kind of echo requests and replies.
ECHO_KIND = W.APP_FIRST + 1

REQUEST = 1
REPLY = 2
#: op, sequence number, hops the request took (0 in requests).
_FORMAT = struct.Struct("!BQB")


class EchoError(ValueError):
    """A malformed echo message (counted, never raised to the overlay)."""


def build(op: int, seq: int, hops: int = 0) -> bytes:
    return _FORMAT.pack(op, seq, min(255, hops))


def parse(payload: bytes) -> tuple[int, int, int]:
    """C{(op, seq, hops)}; L{EchoError} for anything else."""
    if len(payload) != _FORMAT.size:
        raise EchoError("bad-length")
    op, seq, hops = _FORMAT.unpack(payload)
    if op not in (REQUEST, REPLY):
        raise EchoError("bad-op")
    return op, seq, hops


@dataclass
class _Pending:
    target: int
    sent_at: float
    first_hop: int | None
    deferred: Deferred[dict[str, Any]]
    timer: Any


class Echo:
    """Answers echo requests and times our own."""

    log = Logger()

    def __init__(self, overlay: Any, clock: Any, counters: Counters | None = None) -> None:
        self.overlay = overlay
        self.clock = clock
        self.counters = counters if counters is not None else Counters()
        self._seq = 0
        self._pending: dict[int, _Pending] = {}
        overlay.register_handler(ECHO_KIND, self.delivered)

    def ping(self, target: int, timeout: float = 2.0) -> Deferred[dict[str, Any]]:
        """
        Fires with C{{"reply": True, "rtt_ms", "hops", "path", "via"}} or
        C{{"reply": False, "reason"}} (no route, or no answer within C{timeout}).
        """
        self._seq += 1
        seq = self._seq
        node = getattr(self.overlay, "node", None) or self.overlay
        table = getattr(node, "table", None)
        first_hop = None
        if table is not None and target != node.me:
            first_hop = table.next_hop(target)
        d: Deferred[dict[str, Any]] = Deferred()
        self.counters.inc("echo_requests_sent")
        if not self.overlay.send_to(target, ECHO_KIND, build(REQUEST, seq), W.EXACT):
            self.counters.inc("echo_failed", reason="no-route")
            d.callback({"reply": False, "reason": "no route"})
            return d
        timer = self.clock.callLater(timeout, self._expire, seq)
        self._pending[seq] = _Pending(target, self.clock.seconds(), first_hop, d, timer)
        return d

    def _expire(self, seq: int) -> None:
        pending = self._pending.pop(seq, None)
        if pending is not None:
            self.counters.inc("echo_failed", reason="timeout")
            pending.deferred.callback({"reply": False, "reason": "timeout"})

    def delivered(self, delivery: Any) -> None:
        try:
            op, seq, hops = parse(delivery.payload)
        except EchoError as e:
            self.counters.inc("overlay_dropped", reason=f"echo-{e}")
            return
        if op == REQUEST:
            self.counters.inc("echo_requests_answered")
            self.overlay.send_to(delivery.src, ECHO_KIND, build(REPLY, seq, delivery.hops),
                                 W.EXACT)
            return
        pending = self._pending.get(seq)
        if pending is None or pending.target != delivery.src:
            self.counters.inc("overlay_dropped", reason="echo-unexpected-reply")
            return
        del self._pending[seq]
        if pending.timer.active():
            pending.timer.cancel()
        rtt = self.clock.seconds() - pending.sent_at
        direct = hops <= 1
        via = None
        if not direct and pending.first_hop is not None and pending.first_hop != pending.target:
            via = A.to_text(pending.first_hop)
        pending.deferred.callback({
            "reply": True,
            "address": A.to_text(pending.target),
            "rtt_ms": round(rtt * 1000, 3),
            "hops": hops,
            "hops_back": delivery.hops,
            "path": "local" if hops == 0 else "direct" if direct else "relayed",
            "via": via,
        })
