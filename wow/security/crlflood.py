"""
CRLs pushed through the overlay: flooded along the links, newer-only.

Why: fetching the CA's CRL on a schedule bounds how stale a node's view is
by the schedule; a revocation should reach every node at once.  So the
first node that adopts a newer CRL (from its fetch) sends it to each of its
links; every node that receives one verifies it against its CA key
(L{wow.security.crl.CrlState.offer}: signature, issuer, dates, newer than
the current one) and, only when it adopted it, passes it on to its own
links but the sender.  A CRL that is not newer stops where it arrives, so
the flood ends after one round over the ring and a forged or replayed old
CRL goes no further than one hop.

A node that joins later (or was cut off during a flood) gets the CRL in
force from each new link: both ends send theirs when a link comes up, and
the older one stops at once.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from wow.datapath.pieces import Reassembler
from wow.metrics import Counters
from wow.overlay import wire as W

#: The overlay application kind of pushed CRLs.
CRL_KIND = W.APP_FIRST + 8
#: A pushed CRL larger than this is refused while it is put together.
MAX_PUSHED_CRL = 1 << 20


class CrlFlood(Service):
    """Pushes CRLs this node adopts to its links; adopts and passes on those pushed to it."""

    log = Logger()

    def __init__(self, overlay: Any, offer: Callable[[bytes, str], bool], reactor: Any,
                 counters: Counters, current: Callable[[], bytes | None] | None = None
                 ) -> None:
        """
        @param offer: L{wow.security.service.SecurityService.offer_crl}: True
            when the CRL was verified and newer, and so adopted.
        @param current: the DER of the CRL in force, sent to each new link.
        """
        self.current = current
        self.overlay = overlay
        self.offer = offer
        self.reactor = reactor
        self.counters = counters
        self.reassembler = Reassembler(reactor, counters, max_messages_per_peer=2,
                                       max_bytes_per_peer=MAX_PUSHED_CRL,
                                       max_bytes=16 * MAX_PUSHED_CRL)
        self._msg_id = random.getrandbits(32)
        self._sweep: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.overlay.register_handler(CRL_KIND, self.received)
        self.overlay.add_observer(self.link_changed)
        self._sweep = LoopingCall(self.reassembler.expire)
        self._sweep.clock = self.reactor
        self._sweep.start(1.0, now=False)

    def stopService(self) -> Any:
        if self._sweep is not None and self._sweep.running:
            self._sweep.stop()
        return super().stopService()  # type: ignore[no-untyped-call]

    def _links(self) -> list[int]:
        node = getattr(self.overlay, "node", None)
        return list(node.table.links) if node is not None else []

    def push(self, der: bytes, exclude: int | None = None) -> int:
        """Send C{der} to every linked peer but C{exclude}; how many it went to."""
        sent = 0
        for address in self._links():
            if address == exclude:
                continue
            self._msg_id = (self._msg_id + 1) & 0xFFFFFFFF
            if self.overlay.send_message(address, CRL_KIND, self._msg_id, der):
                sent += 1
        self.counters.inc("security_crl_pushed", sent)
        return sent

    def link_changed(self, event: str, link: Any) -> None:
        """A new link gets the CRL in force (a late joiner learns revocations)."""
        if event != "up" or self.current is None:
            return
        der = self.current()
        if der:
            self._msg_id = (self._msg_id + 1) & 0xFFFFFFFF
            if self.overlay.send_message(link.address, CRL_KIND, self._msg_id, der):
                self.counters.inc("security_crl_pushed")

    def adopted(self, der: bytes, source: str) -> None:
        """A CRL this node adopted from its own fetch: start the flood."""
        if source == "fetch":
            self.push(der)

    def received(self, delivery: Any) -> None:
        """One piece of a CRL pushed by overlay address C{delivery.src}; never raises."""
        try:
            der = self.reassembler.add(delivery.src, delivery.payload)
        except Exception:
            self.counters.inc("security_crl_refused", reason="malformed", source="overlay")
            return
        if der is None:
            return
        if self.offer(der, "overlay"):
            self.push(der, exclude=delivery.src)
