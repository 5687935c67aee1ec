"""
The resolver logic shared by the central server and the node: bytes in,
bytes out, no sockets.

L{DnsEngine.answer} takes one query as it arrived (over UDP, over TCP, or
from a frame on the node's TAP addressed to the virtual gateway) and the
client's address, and returns the response bytes, None to drop the query,
or a L{Deferred} firing with either when the answer needs the network
(forwarding to an upstream resolver, or a DHT-backed store's miss).

Order of decisions, cheapest first:

 1. the hand-parsed fast path (L{wow.dns.fastpath}) for a positive answer
    to the common single A/PTR question;
 2. the header: too short or a response → dropped; from a source outside
    the allowed networks → REFUSED no larger than the query (a spoofed
    source gets no amplification), or dropped when even the question
    cannot be read;
 3. full parsing with twisted.names (FORMERR on failure, NOTIMP for other
    opcodes and for ANY, REFUSED for zone transfers and other classes);
 4. the zone authority (L{wow.dns.authority}); outside the zones, the
    upstream resolvers for clients in the allowed networks that asked for
    recursion, else REFUSED — never an open resolver.

UDP answers respect 512 bytes or the client's EDNS0 size (capped by
C{max_udp}); a larger answer is replaced by one with TC set and no records,
so the client retries over TCP, where answers are complete.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.names import dns
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from wow.dns.authority import Resolution, ZoneAuthority
from wow.dns.fastpath import make_fastpath
from wow.dns.names import BadName, to_wire
from wow.dns.store import INameStore
from wow.metrics import Counters

REFUSED = dns.EREFUSED
BADVERS = 16
#: Query types answered NOTIMP: ANY (RFC 8482 lets us decline), MAILA, MAILB.
NOTIMP_TYPES = frozenset({dns.ALL_RECORDS, dns.MAILA, dns.MAILB})
REFUSED_TYPES = frozenset({dns.AXFR, dns.IXFR})
#: Longest DNS message we read at all (UDP datagrams beyond this are garbage).
MAX_MESSAGE = 65535

Answer = bytes | None | Deferred[bytes | None]


class IUpstream(Interface):
    """Resolvers that names outside the virtual domain are forwarded to."""

    def query(name: bytes, qtype: int, qclass: int) -> Deferred[dns.Message]:
        """Resolve one question; fire with the upstream's response message."""


class Sources:
    """
    Which client addresses may use this server (anything else is REFUSED).

    Decisions are cached per address string: the check runs for every
    query, and parsing an address costs more than the fast path itself.
    """

    def __init__(self, networks: Iterable[str]) -> None:
        self.networks = [ipaddress.ip_network(n, strict=False) for n in networks]
        self._cache: dict[str, bool] = {}

    def allowed(self, address: str) -> bool:
        verdict = self._cache.get(address)
        if verdict is None:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                return False
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            verdict = any(ip in net for net in self.networks)
            if len(self._cache) > 65536:
                self._cache.clear()
            self._cache[address] = verdict
        return verdict


def _question_end(query: bytes) -> int | None:
    """Offset just past the first question (uncompressed name), or None."""
    if len(query) < 12 or query[4:6] != b"\x00\x01":
        return None
    i = 12
    n = len(query)
    while i < n:
        length = query[i]
        if length == 0:
            end = i + 5
            return end if end <= n else None
        if length > 63:
            return None
        i += 1 + length
    return None


#: Response codes by name, for the C{dns_responses{rcode}} counter.
_RCODES = {0: "noerror", 1: "formerr", 2: "servfail", 3: "nxdomain", 4: "notimp",
           5: "refused", 16: "badvers"}


def minimal_response(query: bytes, rcode: int, with_question: bool = True) -> bytes:
    """
    A response with no records: the query's id, opcode and RD flag, QR set,
    and the question echoed when it can be read.  Never longer than the
    query, so it is safe toward any source.
    """
    end = _question_end(query) if with_question else None
    flags1 = 0x80 | (query[2] & 0x79)  # QR + opcode + RD
    header = query[:2] + bytes((flags1, rcode & 0xF))
    if end is None:
        return header + b"\x00" * 8
    return header + b"\x00\x01\x00\x00\x00\x00\x00\x00" + query[12:end]


@implementer(IUpstream)
class TwistedUpstream:
    """Forwarding through twisted.names' own client (UDP, TCP when truncated)."""

    def __init__(self, servers: Iterable[tuple[str, int]], reactor: Any,
                 timeout: tuple[int, ...] = (1, 3)) -> None:
        from twisted.names import client

        self.resolver = client.Resolver(servers=list(servers), reactor=reactor)
        self.timeout = timeout

    def query(self, name: bytes, qtype: int, qclass: int) -> Deferred[dns.Message]:
        question = [dns.Query(name, qtype, qclass)]
        d = self.resolver.queryUDP(question, timeout=self.timeout)

        def retry_tcp(message: dns.Message) -> Any:
            if message.trunc:
                return self.resolver.queryTCP(question)
            return message

        return cast("Deferred[dns.Message]", d.addCallback(retry_tcp))


class DnsEngine:
    """Sans-I/O DNS answering for one virtual domain."""

    log = Logger()

    def __init__(self, authority: ZoneAuthority, clock: Any, counters: Counters,
                 sources: Sources, upstream: IUpstream | None = None,
                 max_udp: int = 1232) -> None:
        self.authority = authority
        self.clock = clock
        self.counters = counters
        self.sources = sources
        self.upstream = upstream
        self.max_udp = max(512, min(max_udp, 4096))
        self._fast = make_fastpath(authority.store, self.max_udp)
        #: Plain ints for the hot path (Counters.inc would double its cost).
        self.fast_answers = 0
        self.slow_answers = 0
        counters.describe("dns_queries_dropped", "DNS queries dropped without an answer")
        counters.describe("dns_queries_refused", "DNS queries answered REFUSED")
        counters.describe("dns_queries_rejected", "DNS queries answered FORMERR/NOTIMP")

    def replace_store(self, store: INameStore) -> None:
        """Switch every path to C{store} at once (between two queries)."""
        self.authority.replace_store(store)
        self._fast = make_fastpath(store, self.max_udp)

    def flush_counts(self) -> None:
        """Move the hot path's plain int counts into L{Counters} (for exporters)."""
        fast, slow = self.fast_answers, self.slow_answers
        self.fast_answers = self.slow_answers = 0
        if fast:
            self.counters.inc("dns_answers", fast, path="fast")
            # the fast path answers only positive lookups
            self.counters.inc("dns_responses", fast, rcode="noerror")
        if slow:
            self.counters.inc("dns_answers", slow, path="general")

    # -- the entry point --------------------------------------------------------

    def answer(self, query: bytes, client: str, tcp: bool = False) -> Answer:
        """
        The response to C{query} from C{client} (an IP address string).

        @return: response bytes; None to send nothing; or a Deferred that
            fires with one of those.
        """
        allowed = self.sources.allowed(client)
        if allowed and not tcp:
            response = self._fast(query, self.upstream is not None, self.clock.seconds())
            if response is not None:
                self.fast_answers += 1
                return response
        return self._slow(query, allowed, tcp)

    # -- the general path -------------------------------------------------------

    def _drop(self, reason: str) -> None:
        self.counters.inc("dns_queries_dropped", reason=reason)

    def _slow(self, query: bytes, allowed: bool, tcp: bool) -> Answer:
        if len(query) < 12:
            self._drop("short")
            return None
        if len(query) > MAX_MESSAGE:
            self._drop("oversized")
            return None
        if query[2] & 0x80:
            self._drop("not-a-query")  # a response: answering could start a loop
            return None
        if not allowed:
            if not tcp and _question_end(query) is None:
                self._drop("off-net-garbage")
                return None
            self.counters.inc("dns_queries_refused", reason="source-not-allowed")
            return minimal_response(query, REFUSED)
        opcode = (query[2] >> 3) & 0xF
        if opcode != dns.OP_QUERY:
            self.counters.inc("dns_queries_rejected", reason="opcode")
            return minimal_response(query, dns.ENOTIMP)
        message = dns.Message()
        try:
            message.fromStr(query)
        except Exception:
            self.counters.inc("dns_queries_rejected", reason="malformed")
            return minimal_response(query, dns.EFORMAT, with_question=False)
        if len(message.queries) != 1 or message.answers or message.authority:
            self.counters.inc("dns_queries_rejected", reason="question-count")
            return minimal_response(query, dns.EFORMAT, with_question=False)
        opts = [r for r in message.additional if r.type == dns.OPT]
        if len(opts) > 1:
            self.counters.inc("dns_queries_rejected", reason="several-opt")
            return minimal_response(query, dns.EFORMAT)
        edns = bool(opts)
        limit = 512
        if edns:
            opt = opts[0]
            if (opt.ttl >> 16) & 0xFF != 0:
                self.counters.inc("dns_queries_rejected", reason="edns-version")
                return self._encode(message, Resolution(rcode=BADVERS), edns, False, tcp, 512)
            limit = max(512, min(opt.cls, self.max_udp))
        self.slow_answers += 1
        q = message.queries[0]
        if q.type in NOTIMP_TYPES:
            self.counters.inc("dns_queries_rejected", reason="qtype-any")
            return self._encode(message, Resolution(rcode=dns.ENOTIMP), edns, False, tcp, limit)
        if q.type in REFUSED_TYPES or q.cls != dns.IN:
            self.counters.inc("dns_queries_refused", reason="zone-transfer" if q.cls == dns.IN
                              else "class")
            return self._encode(message, Resolution(rcode=REFUSED), edns, False, tcp, limit)
        recursion = self.upstream is not None
        try:
            wire = to_wire(q.name.name)
        except (BadName, UnicodeDecodeError, UnicodeEncodeError):
            self.counters.inc("dns_queries_rejected", reason="bad-name")
            return self._encode(message, Resolution(rcode=dns.EFORMAT), edns, False, tcp, limit)
        result = self.authority.resolve(wire, q.type, q.name.name)
        if result is None:
            return self._forward(message, edns, tcp, limit)
        if isinstance(result, Deferred):

            def encode(r: Resolution) -> bytes:
                return self._encode(message, r, edns, True, tcp, limit, recursion)

            def failed(f: Failure) -> bytes:
                return self._servfail(f, message, edns, tcp, limit)

            return result.addCallback(encode).addErrback(failed)  # type: ignore[call-overload,no-any-return]
        return self._encode(message, result, edns, True, tcp, limit, recursion)

    def _forward(self, message: dns.Message, edns: bool, tcp: bool, limit: int) -> Answer:
        if self.upstream is None:
            self.counters.inc("dns_queries_refused", reason="no-upstream")
            return self._encode(message, Resolution(rcode=REFUSED), edns, False, tcp, limit)
        if not message.recDes:
            self.counters.inc("dns_queries_refused", reason="no-recursion-desired")
            return self._encode(message, Resolution(rcode=REFUSED), edns, False, tcp, limit,
                                True)
        q = message.queries[0]

        def relay(reply: dns.Message) -> bytes:
            r = Resolution(rcode=reply.rCode, answers=list(reply.answers),
                           authority=list(reply.authority),
                           additional=[a for a in reply.additional if a.type != dns.OPT])
            return self._encode(message, r, edns, False, tcp, limit, True)

        def failed(f: Failure) -> bytes:
            return self._servfail(f, message, edns, tcp, limit)

        d = self.upstream.query(q.name.name, q.type, q.cls)
        return d.addCallback(relay).addErrback(failed)  # type: ignore[call-overload,no-any-return]

    def _servfail(self, failure: Failure, message: dns.Message, edns: bool, tcp: bool,
                  limit: int) -> bytes:
        self.log.info("DNS lookup failed: {why}", why=failure.getErrorMessage())
        self.counters.inc("dns_queries_failed", reason=failure.type.__name__ if failure.type
                          else "unknown")
        return self._encode(message, Resolution(rcode=dns.ESERVER), edns, False, tcp, limit,
                            self.upstream is not None)

    def _encode(self, query: dns.Message, r: Resolution, edns: bool, auth: bool, tcp: bool,
                limit: int, recursion: bool = False) -> bytes:
        response = dns.Message(
            id=query.id, answer=True, opCode=query.opCode, auth=auth, recDes=query.recDes,
            recAv=recursion, rCode=r.rcode & 0xF, maxSize=0,
        )
        response.checkingDisabled = query.checkingDisabled
        response.queries = list(query.queries)
        response.answers = r.answers
        response.authority = r.authority
        response.additional = list(r.additional)
        if edns:
            response.additional.append(self._opt(r.rcode >> 4))
        self.counters.inc("dns_responses", rcode=_RCODES.get(r.rcode, str(r.rcode)))
        data = response.toStr()
        if tcp or len(data) <= limit:
            return data
        # Too big for UDP: an empty answer with TC set sends the client to TCP.
        self.counters.inc("dns_responses_truncated", reason="udp-size")
        response.answers, response.authority = [], []
        response.additional = [self._opt(r.rcode >> 4)] if edns else []
        response.trunc = 1
        return response.toStr()

    def _opt(self, extended_rcode: int) -> dns.RRHeader:
        return dns.RRHeader(b"", dns.OPT, self.max_udp, (extended_rcode & 0xFF) << 24,
                            dns.UnknownRecord(b""))


def pack_header(ident: int, flags: int, qd: int, an: int, ns: int, ar: int) -> bytes:
    """A DNS header (tests and the benchmark build queries with it)."""
    return struct.pack(">HHHHHH", ident, flags, qd, an, ns, ar)
