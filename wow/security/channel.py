"""
The secured channel to one peer: overlapping DTLS sessions and rekeying.

A L{SecureChannel} owns the session in use and, while rekeying, the next
one (a fresh full handshake, so a rekey also re-checks the certificate and
the CRL).  Sending switches to a new session the moment it is established;
the old one keeps receiving for a grace period and is then dropped.

Framing: every datagram between two nodes starts with one byte,
C{F GGGGGGG}: C{G} is the generation (0-127) the session's client chose
and C{F} is 1 when the datagram is sent by that session's client.  So both
ends can start sessions independently without their generations clashing,
and records of the old and new session are told apart without trial
decryption.  The byte is not authenticated: a changed byte sends a record to
a session whose keys it fails, where it is counted and dropped.

Generations run from L{GEN_FIRST} to L{GEN_LAST} only, so the framing byte
(0x04-0x3F or 0x84-0xBF) never looks like the first byte of a plain data
message (an IPv4 packet starts 0x45-0x4F, a compact vnet header uses only
bits 0x80, 0x40 and 0x03): secured and plain messages share the overlay's
DATA kind, its pieces and its GSO/GRO fast path, and L{is_secured} tells
them apart from the first byte.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from wow.security import records as rec
from wow.security.dtls import DtlsContext, DtlsSession, Role, State

#: The framing byte's "sent by the session's client" flag.
FROM_CLIENT = 0x80
GENERATIONS = 128
#: The generations in use (see the module docstring).
GEN_FIRST = 4
GEN_LAST = 63
#: Bytes the framing adds to every datagram (the MTU budget counts it).
FRAME_OVERHEAD = 1
#: A "session lost" hint starts at most one handshake this often.
SESSION_LOST_HOLDOFF_S = 5.0

#: Session key inside a channel: (this node is the session's client, generation).
SessionKey = tuple[bool, int]


@dataclass(frozen=True)
class ChannelParams:
    """When to rekey and how long to keep things; see the [security] config."""

    rekey_interval: float = 3600.0
    rekey_bytes: int = 64 * 2**30
    rekey_packets: int = 2**32
    #: The old session still receives this long after the switch.
    grace: float = 10.0
    #: Messages (and their bytes) queued while the first handshake runs.
    queue_packets: int = 64
    queue_bytes: int = 1 << 20
    #: After a failed handshake, wait this long (doubling) before the next.
    retry_initial: float = 2.0
    retry_max: float = 120.0


def is_secured(first_byte: int) -> bool:
    """Whether a data message starting with C{first_byte} is a secured datagram."""
    return GEN_FIRST <= first_byte & 0x7F <= GEN_LAST


def frame(header: int, record: bytes) -> bytes:
    return bytes([header]) + record


class HelloVerdict:
    """What to do with a datagram that asks for a new server session."""

    REPLY = "reply"  # answer with a HelloVerifyRequest (stateless)
    DROP = "drop"
    ACCEPT = "accept"


def check_new_hello(
    context: DtlsContext, peer: bytes, body: rec.Buffer, now: float
) -> tuple[str, bytes | str | rec.ClientHello]:
    """
    The stateless gate in front of every new server session.

    @param body: the datagram without its framing byte.
    @return: C{(REPLY, hello_verify_request)}, C{(DROP, reason)} or
        C{(ACCEPT, hello)} for a ClientHello carrying a valid cookie.
    """
    try:
        first = rec.split_records(body)[0][1]
        hello = rec.parse_client_hello(first)
    except (rec.MalformedRecord, IndexError):
        return HelloVerdict.DROP, "no-session"
    if not hello.cookie:
        cookie = context.cookies.make(peer, now)
        return HelloVerdict.REPLY, rec.hello_verify_request(hello.record_sequence, cookie)
    if not context.cookies.check(peer, hello.cookie, now):
        return HelloVerdict.DROP, "bad-cookie"
    return HelloVerdict.ACCEPT, hello


def session_lost_reply(header: int, body: rec.Buffer) -> list[bytes]:
    """
    The C{SESSION_LOST} hint answering application data for a session this
    node does not have; only application data gets one, so hints never
    answer hints.
    """
    if len(body) > rec.HEADER_LEN and body[0] == rec.APPLICATION_DATA:
        return [frame(header ^ FROM_CLIENT, rec.SESSION_LOST)]
    return []


def is_client_hello(body: rec.Buffer) -> bool:
    """Whether a datagram body starts with an epoch-0 ClientHello record."""
    return (
        len(body) > rec.HEADER_LEN
        and body[0] == rec.HANDSHAKE
        and body[3:5] == b"\x00\x00"
        and body[rec.HEADER_LEN] == rec.CLIENT_HELLO
    )


class SecureChannel:
    """
    Everything secured between this node and one peer overlay address.

    @ivar peer_ip: the virtual IP the peer's certificate names, once a
        session is established: the router must drop every inner packet from
        this peer whose source is another address.
    """

    log = Logger()

    def __init__(
        self,
        peer: bytes,
        local: bytes,
        context: DtlsContext,
        clock: IReactorTime,
        params: ChannelParams | None = None,
        expected_ip: str | None = None,
        admit: Callable[[SecureChannel], str | None] | None = None,
    ) -> None:
        self.peer = peer
        self.local = local
        self.context = context
        self.clock = clock
        self.params = params or ChannelParams()
        self.expected_ip = expected_ip
        #: Asked before a new server session is made; returns a refusal reason or None.
        self.admit = admit
        self.sessions: dict[SessionKey, DtlsSession] = {}
        self.current: SessionKey | None = None
        self.pending: SessionKey | None = None
        self.draining: dict[SessionKey, float] = {}
        self.queue: deque[bytes] = deque()
        self._queued_bytes = 0
        #: Randoms of the last hellos accepted (a cookie lives ≤ 60 s, so a
        #: replay older than that already fails the cookie check).
        self._recent_hellos: deque[bytes] = deque(maxlen=8)
        self._last_lost_hint = -1e18
        self.peer_ip: str | None = expected_ip
        self.failure: str | None = None
        self.retry_at: float | None = None
        self._retry_delay = self.params.retry_initial
        self._next_gen = random.randint(GEN_FIRST, GEN_LAST)
        self.closed_reason: str | None = None
        # Cheap per-send test: the smallest limit at which either end rekeys.
        self._rekey_bytes_at = self.params.rekey_bytes
        self._rekey_packets_at = self.params.rekey_packets

    # -- state for policy, CLI and the router ------------------------------

    @property
    def current_session(self) -> DtlsSession | None:
        return self.sessions.get(self.current) if self.current is not None else None

    @property
    def state(self) -> str:
        """C{established}, C{handshaking}, C{failed} or C{none} (policy's view)."""
        if self.current is not None:
            return "established"
        if self.pending is not None:
            return "handshaking"
        if self.failure is not None:
            return "failed"
        return "none"

    def info(self) -> dict[str, object]:
        session = self.current_session
        return {
            "peer": self.peer.hex(),
            "state": self.state,
            "secured": session is not None,
            "peer_ip": self.peer_ip,
            "cipher": session.cipher if session else None,
            "serial": f"{session.peer_certificate.serial:x}"
            if session and session.peer_certificate
            else None,
            "failure": self.failure,
            "sessions": len(self.sessions),
        }

    def half_open(self) -> int:
        """Server sessions of this peer still handshaking."""
        return sum(
            1 for (mine, _), s in self.sessions.items() if not mine and s.state is State.HANDSHAKING
        )

    # -- data ---------------------------------------------------------------

    def send(self, message: bytes, now: float) -> list[bytes]:
        """
        Secure one message for the peer, or queue it while the first
        handshake runs; the datagrams to send.

        A message of any length becomes one datagram: the framing byte and
        records of at most 16 KB each (a ~60 KB offloaded super-frame is four
        records), which the peer's L{receive} returns as one plaintext.
        """
        out: list[bytes] = []
        if not message:
            return out
        session = self.current_session
        if session is None:
            if self.retry_at is not None and now < self.retry_at:
                self.context.counters.inc("security_packets_dropped", reason="handshake-failed")
                return out
            if (
                len(self.queue) >= self.params.queue_packets
                or self._queued_bytes + len(message) > self.params.queue_bytes
            ):
                self.context.counters.inc("security_packets_dropped", reason="queue-full")
            else:
                self.queue.append(message)
                self._queued_bytes += len(message)
            if self.pending is None:
                out.extend(self._start_client(now))
            return out
        key = self.current
        assert key is not None
        out.append(frame(key[1] | (FROM_CLIENT if key[0] else 0), session.seal(message)))
        stats = session.stats
        if stats.bytes_out + stats.bytes_in >= self._rekey_bytes_at or (
            stats.packets_out + stats.packets_in >= self._rekey_packets_at
        ):
            out.extend(self._maybe_rekey(session, now))
        return out

    def receive(self, datagram: rec.Buffer, now: float) -> tuple[list[bytes], list[bytes]]:
        """Feed one framed datagram from the peer; never raises."""
        if len(datagram) < 2:
            self.context.counters.inc("security_records_dropped", reason="malformed")
            return [], []
        return self.receive_parts(datagram[0], memoryview(datagram)[1:], now)

    def receive_parts(
        self, header: int, body: rec.Buffer, now: float
    ) -> tuple[list[bytes], list[bytes]]:
        """L{receive} for a caller that already split off the framing byte (saves a copy)."""
        plaintexts: list[bytes] = []
        to_send: list[bytes] = []
        from_client = bool(header & FROM_CLIENT)
        key: SessionKey = (not from_client, header & (GENERATIONS - 1))
        session = self.sessions.get(key)
        if from_client and (
            session is None or (session.state is not State.HANDSHAKING and is_client_hello(body))
        ):
            session = self._new_server_session(key, body, now, to_send)
            if session is None:
                return plaintexts, to_send
        elif session is None:
            self.context.counters.inc("security_records_dropped", reason="no-session")
            to_send.extend(session_lost_reply(header, body))
            return plaintexts, to_send
        if session.state is State.ESTABLISHED and rec.is_session_lost(body):
            to_send.extend(self._on_session_lost(key, now))
            return plaintexts, to_send
        was = session.state
        pts, out = session.receive(body, now)
        if len(pts) > 1:
            pts = [b"".join(pts)]  # one datagram, one message
        if was is State.ESTABLISHED and not out and session.state is was:
            return pts, to_send  # the common case: data on a live session
        reply = key[1] | (FROM_CLIENT if key[0] else 0)
        to_send.extend(frame(reply, d) for d in out)
        plaintexts.extend(pts)
        if was is State.HANDSHAKING and session.state is State.ESTABLISHED:
            to_send.extend(self._on_established(key, session, now))
        elif session.state is State.CLOSED:
            self._forget(key, session, now)
        return plaintexts, to_send

    def _new_server_session(
        self, key: SessionKey, body: rec.Buffer, now: float, to_send: list[bytes]
    ) -> DtlsSession | None:
        counters = self.context.counters
        verdict, value = check_new_hello(self.context, self.peer, body, now)
        if verdict == HelloVerdict.REPLY:
            assert isinstance(value, bytes)
            counters.inc("security_hello_verify_sent")
            to_send.append(frame(key[1], value))
            return None
        if verdict == HelloVerdict.DROP:
            assert isinstance(value, str)
            counters.inc("security_records_dropped", reason=value)
            return None
        assert isinstance(value, rec.ClientHello)
        if value.random in self._recent_hellos:
            # A captured hello replayed while its cookie is still valid: it
            # must not replace the session it once opened.
            counters.inc("security_records_dropped", reason="replayed-hello")
            return None
        if self.pending is not None and self.pending[0]:
            # Both ends started a handshake: the lower overlay address's wins.
            if self.local < self.peer:
                counters.inc("security_records_dropped", reason="handshake-collision")
                return None
            self._discard(self.pending, "handshake-collision")
        elif self.pending is not None and self.pending != key:
            self._discard(self.pending, "superseded")  # the peer gave that one up
        refusal = self.admit(self) if self.admit is not None else None
        if refusal is not None:
            counters.inc("security_handshakes_refused", reason=refusal)
            return None
        old = self.sessions.get(key)
        if old is not None:  # the peer restarted and reuses a generation
            self._discard(key, "replaced")
        self._recent_hellos.append(value.random)
        session = DtlsSession(Role.SERVER, self.context, self.peer, self.peer_ip, self.clock)
        session.created_at = now
        self.sessions[key] = session
        if self.pending is None:
            self.pending = key
        return session

    # -- handshakes and rekeying -------------------------------------------

    def open(self, now: float) -> list[bytes]:
        """Start a handshake now unless one runs or a session exists."""
        if self.current is not None or self.pending is not None:
            return []
        return self._start_client(now)

    def _start_client(self, now: float) -> list[bytes]:
        gen = self._next_gen
        self._next_gen = gen + 1 if gen < GEN_LAST else GEN_FIRST
        key: SessionKey = (True, gen)
        if key in self.sessions:
            self._discard(key, "replaced")
        session = DtlsSession(Role.CLIENT, self.context, self.peer, self.peer_ip, self.clock)
        session.created_at = now
        self.sessions[key] = session
        self.pending = key
        header = gen | FROM_CLIENT
        return [frame(header, d) for d in session.start()]

    def _on_session_lost(self, key: SessionKey, now: float) -> list[bytes]:
        """
        The peer says it lost this session (it restarted): stop sending on
        it, queue, and start a new handshake.  The hint is not
        authenticated, so it costs at most one handshake per
        L{SESSION_LOST_HOLDOFF_S} and never closes anything early.
        """
        self.context.counters.inc("security_session_lost_hints")
        if now - self._last_lost_hint < SESSION_LOST_HOLDOFF_S or self.pending is not None:
            return []
        self._last_lost_hint = now
        if self.current == key:
            self.draining[key] = now + self.params.grace
            self.current = None
        return self._start_client(now)

    def _on_established(self, key: SessionKey, session: DtlsSession, now: float) -> list[bytes]:
        if self.pending == key:
            self.pending = None
        if self.current is not None and self.current != key:
            self.draining[self.current] = now + self.params.grace
        self.current = key
        self.failure = None
        self.retry_at = None
        self._retry_delay = self.params.retry_initial
        if session.peer_certificate is not None:
            self.peer_ip = session.peer_certificate.ip
        out: list[bytes] = []
        header = key[1] | (FROM_CLIENT if key[0] else 0)
        while self.queue:
            out.append(frame(header, session.seal(self.queue.popleft())))
        self._queued_bytes = 0
        return out

    def _maybe_rekey(self, session: DtlsSession, now: float) -> list[bytes]:
        """Start the next session when the current one is old or has carried enough."""
        if self.pending is not None or session.established_at is None:
            return []
        p = self.params
        # The session's client rekeys on time; the server steps in at 1.25x
        # so both ends rarely start at once (collisions are resolved anyway).
        factor = 1.0 if self.current is not None and self.current[0] else 1.25
        age = now - session.established_at
        if (
            age >= p.rekey_interval * factor
            or session.bytes_total >= p.rekey_bytes * factor
            or session.packets_total >= p.rekey_packets * factor
        ):
            self.context.counters.inc("security_rekeys")
            return self._start_client(now)
        return []

    def tick(self, now: float) -> list[bytes]:
        """Retransmissions, timeouts, rekeying, draining; the datagrams to send."""
        out: list[bytes] = []
        for key, session in list(self.sessions.items()):
            header = key[1] | (FROM_CLIENT if key[0] else 0)
            out.extend(frame(header, d) for d in session.tick(now))
            if session.state is State.CLOSED:
                self._forget(key, session, now)
        for key, until in list(self.draining.items()):
            if now >= until:
                self._discard(key, "drained")
        current = self.current_session
        if current is not None:
            session = current
            p = self.params
            assert session.established_at is not None
            cert = session.peer_certificate
            if cert is not None and now >= cert.not_after:
                # The time is the reactor's, i.e. the wall clock in a node.
                self.failure = "peer-certificate-expired"
                self.context.counters.inc(
                    "security_sessions_closed", reason="peer-certificate-expired"
                )
                out.extend(self._close_key(self.current, "peer-certificate-expired"))  # type: ignore[arg-type]
            elif (
                now - session.established_at >= 2 * p.rekey_interval
                or session.bytes_total >= 2 * p.rekey_bytes
                or session.packets_total >= 2 * p.rekey_packets
            ):
                out.extend(self._close_key(self.current, "rekey-overdue"))  # type: ignore[arg-type]
            else:
                out.extend(self._maybe_rekey(session, now))
        elif (
            self.pending is None and self.queue and (self.retry_at is None or now >= self.retry_at)
        ):
            out.extend(self._start_client(now))
        return out

    def next_deadline(self) -> float | None:
        """The earliest time L{tick} has work (for a C{callLater})."""
        times = [t for t in (s.next_timeout() for s in self.sessions.values()) if t is not None]
        times.extend(self.draining.values())
        session = self.current_session
        if session is not None and session.established_at is not None:
            assert self.current is not None
            interval = self.params.rekey_interval
            if self.pending is None:
                factor = 1.0 if self.current[0] else 1.25
                times.append(session.established_at + interval * factor)
            times.append(session.established_at + 2 * interval)  # overdue: closed
            if session.peer_certificate is not None:
                times.append(session.peer_certificate.not_after)
        elif self.pending is None and self.queue and self.retry_at is not None:
            times.append(self.retry_at)
        return min(times) if times else None

    # -- teardown -------------------------------------------------------------

    def _forget(self, key: SessionKey, session: DtlsSession, now: float) -> None:
        """A session closed by itself (refused, timed out, peer closed)."""
        self.sessions.pop(key, None)
        self.draining.pop(key, None)
        if self.pending == key:
            self.pending = None
            if key[0]:
                self.failure = session.close_reason
                self.retry_at = now + self._retry_delay
                self._retry_delay = min(self._retry_delay * 2, self.params.retry_max)
                if self.queue:  # stale by the time a retry could succeed
                    self.context.counters.inc(
                        "security_packets_dropped", len(self.queue), reason="handshake-failed"
                    )
                    self.queue.clear()
                    self._queued_bytes = 0
        if self.current == key:
            self.current = None

    def _discard(self, key: SessionKey, reason: str) -> None:
        """Drop a session without telling the peer (it drains on its own)."""
        session = self.sessions.pop(key, None)
        self.draining.pop(key, None)
        if self.pending == key:
            self.pending = None
        if self.current == key:
            self.current = None
        if session is not None:
            session.close(reason)

    def _close_key(self, key: SessionKey, reason: str) -> list[bytes]:
        session = self.sessions.pop(key, None)
        self.draining.pop(key, None)
        if self.pending == key:
            self.pending = None
        if self.current == key:
            self.current = None
        if session is None:
            return []
        header = key[1] | (FROM_CLIENT if key[0] else 0)
        return [frame(header, d) for d in session.close(reason)]

    def revoke(self, serials: frozenset[int] | set[int]) -> list[bytes]:
        """Tear down every session whose peer certificate is among C{serials}."""
        out: list[bytes] = []
        for key, session in list(self.sessions.items()):
            cert = session.peer_certificate
            if cert is not None and cert.serial in serials:
                self.context.counters.inc("security_sessions_revoked")
                self.log.info(
                    "session to {peer} torn down: certificate {serial:x} revoked",
                    peer=self.peer.hex(),
                    serial=cert.serial,
                )
                out.extend(self._close_key(key, "revoked"))
                self.failure = "revoked"
        return out

    def close(self, reason: str) -> list[bytes]:
        """Close every session (close_notify to the peer) and forget queued data."""
        out: list[bytes] = []
        for key in list(self.sessions):
            out.extend(self._close_key(key, reason))
        self.queue.clear()
        self._queued_bytes = 0
        self.closed_reason = reason
        return out
