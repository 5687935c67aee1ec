"""
A hand-parsed fast path for the one query that matters at scale.

Almost every query a WOW's resolvers send is a single A or PTR question,
class IN, perhaps with an EDNS0 OPT record that only states a UDP size.
twisted.names spends about 40 µs on each (building a Message, Query, Name
and RRHeader objects and encoding them again); this module answers that
shape in a few microseconds by slicing bytes, and declines everything else
by returning None, so the caller falls back to the full twisted.names path
(L{wow.dns.engine}).  It only ever answers positively: every negative
answer (NXDOMAIN, NODATA) and every unusual query goes the slow way, where
RFC 2308 and friends are implemented once.

Declining is always safe, so the parser is deliberately strict: no
compression pointers, no flags beyond RD/CD, exactly one question, at most
one OPT record with version 0 and no options, nothing after it.
"""

from __future__ import annotations

from collections.abc import Callable
from struct import Struct

from wow.dns.store import INameStore

_TTL_LEN = Struct(">IH")

#: Header counts of a plain query: one question, no other records.
_COUNTS_PLAIN = b"\x00\x01\x00\x00\x00\x00\x00\x00"
#: One question and one additional record (the OPT).
_COUNTS_EDNS = b"\x00\x01\x00\x00\x00\x00\x00\x01"
_QT_A = b"\x00\x01\x00\x01"
_QT_PTR = b"\x00\x0c\x00\x01"
_ARPA = b"\x07in-addr\x04arpa\x00"
#: The start of an OPT record: root owner name, type 41.
_OPT_HEAD = b"\x00\x00\x29"

FastPath = Callable[[bytes, bool, float], "bytes | None"]


def make_fastpath(store: INameStore, max_udp: int) -> FastPath:
    """
    Build the fast-path function for C{store}.

    The returned C{fast(query, recursion_available, now)} gives the complete
    response bytes, or None when the query is not the common shape or the
    answer is not a positive one.

    @param max_udp: the UDP payload size advertised in our OPT record.
    """
    from wow.dns.names import parse_ptr_wire

    lookup_a = store.lookup_a
    lookup_ptr = store.lookup_ptr
    opt_rr = _OPT_HEAD + max_udp.to_bytes(2, "big") + b"\x00\x00\x00\x00\x00\x00"
    pack_ttl = _TTL_LEN.pack

    def fast(query: bytes, recursion: bool, now: float) -> bytes | None:
        n = len(query)
        if n < 17 or n > 512 or query[2] & 0xFE:
            return None  # short, long, or QR/opcode/AA/TC set
        counts = query[4:12]
        if counts == _COUNTS_PLAIN:
            edns = False
        elif counts == _COUNTS_EDNS:
            edns = True
        else:
            return None
        i = 12
        while True:
            length = query[i]
            if length == 0:
                break
            if length > 63:
                return None  # a compression pointer or an extended label type
            i += length + 1
            if i >= n:
                return None
        end = i + 1
        qtail = end + 4
        if edns:
            if n != qtail + 11:
                return None
            opt = query[qtail:]
            # OPT: owner, type (3) | size (2) | ext. rcode, version (2) | flags (2) | rdlen (2)
            if opt[:3] != _OPT_HEAD or opt[5:7] != b"\x00\x00" or opt[9:] != b"\x00\x00":
                return None  # not OPT, extended rcode/version set, or options present
            if (opt[7] & 0x7F) or opt[8] or int.from_bytes(opt[3:5], "big") < 512:
                return None  # unknown EDNS flags or a size the slow path must clamp
        elif n != qtail:
            return None
        qt = query[end:qtail]
        key = query[12:end].lower()
        if qt == _QT_A:
            hit = lookup_a(key, now)
            if hit is None:
                return None
            rdata = hit[0]
        elif qt == _QT_PTR:
            if not key.endswith(_ARPA):
                return None
            ip = parse_ptr_wire(key)
            if ip is None:
                return None
            hit = lookup_ptr(ip, now)
            if hit is None:
                return None
            rdata = hit[0]
        else:
            return None
        flags = bytes((0x84 | (query[2] & 0x01), (0x80 if recursion else 0) | (query[3] & 0x10)))
        answer = b"\xc0\x0c" + qt + pack_ttl(hit[1], len(rdata)) + rdata
        if edns:
            response = (query[:2] + flags + b"\x00\x01\x00\x01\x00\x00\x00\x01"
                        + query[12:qtail] + answer + opt_rr)
        else:
            response = (query[:2] + flags + b"\x00\x01\x00\x01\x00\x00\x00\x00"
                        + query[12:qtail] + answer)
        if len(response) > 512:
            return None  # may not fit what the client accepts: the slow path truncates
        return response

    return fast
