"""
Links: authenticated, kept-alive associations between two overlay nodes.

The handshake (three datagrams, docs/protocol.md):

  1. A -> B  HELLO    A's public key, nonce Na, incarnation, CTM flag
  2. B -> A  REPLY    B's public key, nonce Nb, incarnation, A's endpoint as
                      B saw it, B's signature over the reply transcript
  3. A -> B  CONFIRM  B's endpoint as A saw it, A's signature over the
                      confirm transcript

Each side proves possession of the private key of the address it claims
(signature over the other side's fresh nonce) and learns its reflexive
endpoint.  This module holds the per-link state and the transcripts; the
decisions live in L{wow.overlay.node}.
"""

from __future__ import annotations

from dataclasses import dataclass

from wow.overlay import address as A

Endpoint = tuple[str, int]

NEAR = "near"
SHORTCUT = "shortcut"
OTHER = "other"


def reply_transcript(na: bytes, nb: bytes, a: int, b: int, seen_a: Endpoint) -> bytes:
    return b"wow-link-reply\0" + na + nb + A.to_bytes(a) + A.to_bytes(b) \
        + f"{seen_a[0]}:{seen_a[1]}".encode()


def confirm_transcript(na: bytes, nb: bytes, a: int, b: int, seen_b: Endpoint) -> bytes:
    return b"wow-link-confirm\0" + nb + na + A.to_bytes(a) + A.to_bytes(b) \
        + f"{seen_b[0]}:{seen_b[1]}".encode()


@dataclass(slots=True)
class Link:
    """An established link to one peer."""

    address: int
    endpoint: Endpoint
    public: bytes
    incarnation: int
    #: Whether this node wants to keep the link (it dialled or asked for it);
    #: only the owner trims an unneeded link, so two ends never fight.
    owned: bool
    created: float
    last_recv: float
    last_sent: float
    last_ping: float = 0.0
    ping_seq: int = 0
    ping_sent_at: float = 0.0
    rtt: float | None = None
    kind: str = OTHER
    #: The nonce of the HELLO that created it (recognises retransmissions).
    hello_nonce: bytes = b""
    #: Whether we sent the peer our neighbour list on this link yet.
    greeted: bool = False
    #: Whether this link was dialled to a bootstrap endpoint (join through it).
    bootstrap: bool = False
    #: The local socket the link's NAT mapping belongs to (0: the main one;
    #: others are birthday-probing sockets).
    sock: int = 0


@dataclass(slots=True)
class Dialing:
    """An outgoing handshake: HELLO sent, waiting for REPLY."""

    endpoint: Endpoint
    nonce: bytes
    #: The address we expect (None when dialling a bootstrap endpoint).
    expected: int | None
    ctm: bool
    owned: bool
    attempts: int
    next_retry: float
    #: When the last HELLO left (the handshake gives the first RTT sample).
    sent_at: float = 0.0


@dataclass(slots=True)
class Answering:
    """An incoming handshake: REPLY sent, waiting for CONFIRM."""

    address: int
    endpoint: Endpoint
    public: bytes
    incarnation: int
    na: bytes
    nb: bytes
    reply: bytes
    ctm: bool
    expires: float
    sent_at: float = 0.0
    #: The local socket the HELLO arrived on (we answer from it).
    sock: int = 0
    #: When we last repeated the REPLY (the peer's CONFIRM seemed lost).
    repeated_at: float = 0.0
