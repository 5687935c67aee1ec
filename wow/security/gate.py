"""
The security seam of the data path: between the IP router and the overlay.

Why a seam of its own: the router decides I{where} a packet goes (which
overlay address holds the destination's lease), the overlay I{how} bytes
travel (pieces, links, GSO); whether a packet travels secured, in clear or
not at all is the policy's decision (L{wow.security.policy}), taken here for
every packet in both directions:

 - B{outbound}: a packet for overlay address C{peer} goes through the peer's
   DTLS session when one is up (always) or when the policy says it must be
   secured (a handshake starts and the packet waits in the channel's queue);
   in clear when the policy allows (public nodes, unsecured subnets); else
   it is dropped and counted with the policy's reason.
 - B{inbound}: a data message whose first byte is a security framing byte
   (L{wow.security.channel.is_secured}) is opened by the peer's session; each
   plaintext must come from the IP the peer's certificate names, else it is
   dropped (C{forged-source}).  A message in clear is routed only when the
   policy says that pair may talk in clear (C{plaintext-to-secured}).

Secured and plain messages are both overlay DATA messages, so the offload
path (~60 KB super-frames sealed as four 16 KB records in one message, one
UDP GSO send, one GRO burst on receive) carries secured traffic unchanged.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any, Protocol

from twisted.logger import Logger

from wow.metrics import Counters
from wow.router.messages import MessageError, ip_offset
from wow.security.channel import is_secured
from wow.security.manager import SessionManager
from wow.security.policy import Action, Direction, PeerState, Policy

SendPlain = Callable[[int, bytes], None]

_STATES = {
    "none": PeerState.NONE,
    "handshaking": PeerState.HANDSHAKING,
    "established": PeerState.ESTABLISHED,
    "failed": PeerState.FAILED,
}


class ISecurity(Protocol):
    """What the gate needs of L{wow.security.service.SecurityService}."""

    manager: SessionManager | None
    reactor: Any

    def send(self, peer: bytes, message: bytes, expected_ip: str | None = None) -> bool: ...

    def receive(self, peer: bytes, header: int, body: Any) -> list[bytes]: ...


def _addresses(message: bytes) -> tuple[bytes, bytes] | None:
    try:
        o = ip_offset(message)
    except MessageError:
        return None
    if len(message) < o + 20:
        return None
    return message[o + 12:o + 16], message[o + 16:o + 20]


class SecureGate:
    """Policy, sessions and the source check for one node's data path."""

    log = Logger()

    def __init__(self, security: ISecurity, policy: Policy, send_plain: SendPlain,
                 counters: Counters) -> None:
        self.security = security
        self.policy = policy
        self.send_plain = send_plain
        self.counters = counters
        #: The certificate IP of each peer as 4 bytes (the source check's key).
        self._packed: dict[str, bytes] = {}

    def _drop(self, reason: str, direction: str) -> None:
        self.counters.inc("security_packets_dropped", reason=reason, direction=direction)

    def _state(self, peer: bytes, now: float) -> PeerState:
        manager = self.security.manager
        channel = manager.channels.get(peer) if manager is not None else None
        if channel is None:
            return PeerState.NONE
        state = _STATES.get(channel.state, PeerState.NONE)
        if state is PeerState.FAILED and (channel.retry_at is None or now >= channel.retry_at):
            # The back-off is over (or the failure was a revocation, whose
            # new handshake the CRL refuses): let the next packet try again.
            return PeerState.NONE
        return state

    # -- outbound -----------------------------------------------------------

    def outbound(self, address: int, message: bytes) -> None:
        """A message the router routed to overlay address C{address}."""
        peer = address.to_bytes(20, "big")
        manager = self.security.manager
        if manager is not None:
            channel = manager.channels.get(peer)
            if channel is not None and channel.current is not None:
                self.security.send(peer, message)  # the common case: a live session
                return
        found = _addresses(message)
        if found is None:
            self._drop("malformed", "out")
            return
        src, dst = found
        now = self.security.reactor.seconds()
        decision = self.policy.decide(Direction.OUTBOUND, socket.inet_ntoa(src),
                                      socket.inet_ntoa(dst), manager is not None,
                                      self._state(peer, now))
        if decision.action is Action.PLAIN:
            self.send_plain(address, message)
        elif decision.action is Action.SECURE:
            self.security.send(peer, message, socket.inet_ntoa(dst))
        else:
            self._drop(decision.reason, "out")

    # -- inbound ------------------------------------------------------------

    def inbound(self, src: int, message: bytes) -> list[bytes]:
        """A data message from overlay address C{src}: the packets to route."""
        if not message:
            self._drop("malformed", "in")
            return []
        peer = src.to_bytes(20, "big")
        if is_secured(message[0]):
            plaintexts = self.security.receive(peer, message[0], memoryview(message)[1:])
            if not plaintexts:
                return plaintexts
            return [p for p in plaintexts if self._from_certified(peer, p)]
        found = _addresses(message)
        if found is None:
            self._drop("malformed", "in")
            return []
        decision = self.policy.decide(Direction.INBOUND, socket.inet_ntoa(found[0]),
                                      socket.inet_ntoa(found[1]), True, PeerState.NONE)
        if decision.action is Action.PLAIN:
            return [message]
        self._drop(decision.reason, "in")
        return []

    def _from_certified(self, peer: bytes, packet: bytes) -> bool:
        """Whether C{packet}, opened from C{peer}'s session, comes from its certificate's IP."""
        manager = self.security.manager
        channel = manager.channels.get(peer) if manager is not None else None
        ip = channel.peer_ip if channel is not None else None
        found = _addresses(packet)
        if found is None:
            self._drop("malformed", "in")
            return False
        if ip is not None:
            packed = self._packed.get(ip)
            if packed is None:
                if len(self._packed) > 4096:
                    self._packed.clear()
                packed = self._packed[ip] = ipaddress.IPv4Address(ip).packed
            if found[0] == packed:
                return True
        self._drop("forged-source", "in")
        if self.counters.get("security_packets_dropped", reason="forged-source",
                             direction="in") in (1, 100, 10000):
            self.log.info("dropped a packet from {peer} with source {src}, not its "
                          "certificate's {ip}", peer=peer.hex()[:12],
                          src=socket.inet_ntoa(found[0]), ip=ip)
        return False
