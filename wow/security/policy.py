"""
Which packets must travel secured, which may travel in clear, which are dropped.

The semantics of the C{[security]} section, as one pure decision the IP
router asks for every packet it routes out or receives:

 - A packet I{needs security} when its source or destination lies in a
   secured subnet (default: the whole virtual network) and neither end is a
   public node.  Public nodes are the original system's demonstration nodes:
   reachable in clear by nodes without a certificate, and answering them in
   clear.
 - Outbound: an established session is always used.  A packet that needs
   security goes SECURE when this node has a certificate (starting a
   handshake if need be), and is dropped when it has none (C{not-enrolled})
   or the last handshake to that peer failed (C{handshake-failed}).  Any
   other packet goes PLAIN.
 - Inbound: a packet that came out of an established session is accepted
   (the router then checks its source against the certificate's IP); a
   packet that came in clear is accepted only when it does not need
   security, else dropped (C{plaintext-to-secured}).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from wow.node.config import NetworkSection, SecuritySection


class Action(enum.Enum):
    SECURE = "secure"
    PLAIN = "plain"
    DROP = "drop"


class Direction(enum.Enum):
    OUTBOUND = "out"
    INBOUND = "in"


class PeerState(enum.Enum):
    """The state of the secured channel to the peer (L{SecureChannel.state}).

    For an inbound packet, ESTABLISHED means it was decrypted from a session.
    """

    NONE = "none"
    HANDSHAKING = "handshaking"
    ESTABLISHED = "established"
    FAILED = "failed"


@dataclass(frozen=True)
class Decision:
    action: Action
    #: A short label for logs and the drop counter.
    reason: str


_Net = ipaddress.IPv4Network


def _networks(values: Iterable[str]) -> tuple[_Net, ...]:
    return tuple(ipaddress.IPv4Network(v, strict=True) for v in values)


class Policy:
    """The compiled C{[security]} section of one node."""

    def __init__(
        self,
        secure_subnets: Iterable[str],
        public_nodes: Iterable[str] = (),
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled
        self.secure_subnets = _networks(secure_subnets)
        self.public_nodes = _networks(public_nodes)

    @classmethod
    def from_config(cls, security: SecuritySection, network: NetworkSection) -> Policy:
        subnets = security.secure_subnets or (network.subnet,)
        return cls(subnets, security.public_nodes, security.enabled)

    def is_secured(self, ip: ipaddress.IPv4Address) -> bool:
        return any(ip in net for net in self.secure_subnets)

    def is_public(self, ip: ipaddress.IPv4Address) -> bool:
        return any(ip in net for net in self.public_nodes)

    def needs_security(self, src: ipaddress.IPv4Address, dst: ipaddress.IPv4Address) -> str | None:
        """L{None} when the pair may talk in clear, else why it may not."""
        if not (self.is_secured(src) or self.is_secured(dst)):
            return None
        if self.is_public(src) or self.is_public(dst):
            return None
        return "secured-subnet"

    def decide(
        self,
        direction: Direction,
        src_ip: str | ipaddress.IPv4Address,
        dst_ip: str | ipaddress.IPv4Address,
        have_cert: bool,
        peer_session_state: PeerState,
    ) -> Decision:
        """What to do with one packet; see the module docstring."""
        if not self.enabled:
            return Decision(Action.PLAIN, "security-off")
        try:
            src = ipaddress.IPv4Address(src_ip)
            dst = ipaddress.IPv4Address(dst_ip)
        except ValueError:
            return Decision(Action.DROP, "bad-address")
        if peer_session_state is PeerState.ESTABLISHED:
            return Decision(Action.SECURE, "session")
        why = self.needs_security(src, dst)
        if why is None:
            public = self.is_public(src) or self.is_public(dst)
            return Decision(Action.PLAIN, "public-node" if public else "unsecured-subnet")
        if direction is Direction.INBOUND:
            return Decision(Action.DROP, "plaintext-to-secured")
        if not have_cert:
            return Decision(Action.DROP, "not-enrolled")
        if peer_session_state is PeerState.FAILED:
            return Decision(Action.DROP, "handshake-failed")
        return Decision(Action.SECURE, why)
