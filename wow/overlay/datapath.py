"""
Large data messages on direct links, many datagrams per system call (sans-I/O).

Why: an offloading TAP hands the router ~60 KB super-frames; routing them
one 1472-byte overlay datagram at a time through L{OverlayNode} costs a
header parse, a bucket and a handler call per piece.  On a direct link the
next hop is the destination, so:

  - B{send}: L{pack_for_link} builds every datagram of one DATA message
    (44-byte overlay header as the normal route would write it, 8-byte data
    header, chunk) back to back in one buffer, for one UDP GSO C{sendmsg}.
  - B{receive}: L{take_burst} looks at a UDP GRO burst from a linked peer:
    when it starts with every piece of one DATA message from that peer to
    this node (first header checked, every other header compared with it,
    piece numbering checked by L{wow.datapath.pieces.whole_run}), the
    message is handed over whole without per-piece overlay processing, and
    the burst costs its source one token of the linked peers' data bucket.
    Anything else is left to the normal per-datagram path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wow.datapath import pieces as P
from wow.overlay import address as A
from wow.overlay import wire as W

#: Message bytes per piece so a datagram is at most W.MAX_DATAGRAM (1472) bytes.
PIECE_PAYLOAD = W.MAX_PAYLOAD - W.DATA_HEADER.size
DATA_TYPE = (W.EXACT << 6) | W.DATA


def link_prefix(me: int, dst: int, ttl: int) -> bytes:
    """The overlay header of a DATA message sent over the direct link to C{dst}."""
    # As OverlayNode._route rewrites it on the first hop: one TTL spent, one hop taken.
    return W.HEADER.pack(W.VERSION, DATA_TYPE, max(0, ttl - 1), 1, A.to_bytes(me),
                         A.to_bytes(dst))


def pack_for_link(me: int, dst: int, ttl: int, msg_id: int, message: bytes
                  ) -> tuple[bytearray, int]:
    """(every datagram back to back, datagram size) for one GSO send to a direct link."""
    return P.pack(msg_id, message, PIECE_PAYLOAD, link_prefix(me, dst, ttl))


@dataclass(frozen=True, slots=True)
class Burst:
    """A whole DATA message taken from a GRO burst: who sent it, the message, where it ends."""

    src: int
    message: bytes
    end: int
    pieces: int


def take_burst(data: bytes, seg: int, me_bytes: bytes, link_address: int | None
               ) -> Burst | None:
    """
    The DATA message at the start of GRO burst C{data} (datagrams of C{seg}
    bytes) if it is wholly there, from C{link_address} (the linked peer the
    burst came from; None = not linked: never) to this node; else None.
    """
    if link_address is None or seg <= W.HEADER_SIZE + P.PIECE_HDR_LEN or seg > W.MAX_DATAGRAM:
        return None
    if len(data) <= seg or data[0] != W.VERSION or data[1] != DATA_TYPE:
        return None
    if data[24:44] != me_bytes or data[4:24] != A.to_bytes(link_address):
        return None
    run = P.whole_run(data, seg, W.HEADER_SIZE)
    if run is None:
        return None
    count, end = run
    head = data[:W.HEADER_SIZE]
    for i in range(seg, end, seg):
        if data[i:i + W.HEADER_SIZE] != head:
            return None
    chunks = P.run_chunks(data, seg, W.HEADER_SIZE, count, end)
    return Burst(link_address, b"".join(chunks), end, count)


def linked_address(node: Any, addr: Any) -> int | None:
    """The overlay address of the link at endpoint C{addr}, if any."""
    link = node.by_endpoint.get(addr)
    return None if link is None else link.address
