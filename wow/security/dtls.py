"""
One DTLS 1.2 session to one peer, sans-I/O, over pyOpenSSL memory BIOs.

L{DtlsSession} is fed datagrams and the time and returns plaintexts and the
datagrams to send; it never touches a socket or the reactor.  OpenSSL does
the protocol and the cryptography; this module adds what WOW needs around
it:

 - a stateless cookie exchange on the server side (HelloVerifyRequest made
   here, the ClientHello replayed into OpenSSL only once its cookie checks),
   because OpenSSL's own C{DTLSv1_listen} fails over memory BIOs;
 - handshake retransmission driven by the injected clock (OpenSSL's DTLS
   timer reads the wall clock, so it cannot be driven by C{task.Clock}):
   each side resends its last flight on a doubling timer, and a server
   that has finished resends its final flight when the client's last
   flight comes again;
 - WOW's certificate rules (L{wow.security.verify}) in the verify callback,
   so a refused peer gets a fatal alert and we keep a reason;
 - a mirror of the record replay window so replayed records are counted
   (OpenSSL drops them silently) and cost no decryption.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from wow.metrics import Counters
from wow.security import records as rec
from wow.security.cookie import CookieJar
from wow.security.verify import OPENSSL_REASONS, PeerCertificate, Refused, check_peer

#: DTLS 1.2 as OpenSSL numbers it (pyOpenSSL has no constant for it).
DTLS1_2_VERSION = 0xFEFD

#: ECDHE key exchange with AEAD ciphers only, for ECDSA and RSA node keys.
CIPHERS = b":".join(
    [
        b"ECDHE-ECDSA-AES256-GCM-SHA384",
        b"ECDHE-ECDSA-AES128-GCM-SHA256",
        b"ECDHE-ECDSA-CHACHA20-POLY1305",
        b"ECDHE-RSA-AES256-GCM-SHA384",
        b"ECDHE-RSA-AES128-GCM-SHA256",
        b"ECDHE-RSA-CHACHA20-POLY1305",
    ]
)

#: Largest plaintext one record carries (2^14, RFC 6347 4.1).
MAX_PLAINTEXT = 16384
#: Bytes we ask the memory BIO for: one whole record and then some.
_READ_SIZE = MAX_PLAINTEXT + 2048

#: Handshake datagrams (flights packed together, fragments of long messages)
#: stay below this, so they cross any overlay path unfragmented.
HANDSHAKE_MTU = 1400

#: RFC 6347 4.2.4.1: start at 1 s, double, cap at 60 s.
RETRANSMIT_INITIAL_S = 1.0
RETRANSMIT_MAX_S = 60.0
#: A handshake not finished by then is given up.
HANDSHAKE_TIMEOUT_S = 30.0
#: How long a finished server keeps its final flight for a client that lost it.
FINAL_FLIGHT_KEEP_S = 60.0

#: Width of OpenSSL's replay bitmap, which we mirror.
REPLAY_WINDOW = 64


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class State(enum.Enum):
    HANDSHAKING = "handshaking"
    ESTABLISHED = "established"
    CLOSED = "closed"


class NotEstablished(RuntimeError):
    """L{DtlsSession.send} was called before the handshake finished."""


class RevokedSerials:
    """The set of revoked certificate serials all sessions of a node consult."""

    def __init__(self, serials: Iterable[int] = ()) -> None:
        self._serials: frozenset[int] = frozenset(serials)

    def replace(self, serials: frozenset[int]) -> None:
        self._serials = serials

    def __contains__(self, serial: object) -> bool:
        return serial in self._serials

    def __len__(self) -> int:
        return len(self._serials)


def _pkey(key: CertificateIssuerPrivateKeyTypes) -> crypto.PKey:
    return crypto.PKey.from_cryptography_key(key)  # type: ignore[arg-type]


class DtlsContext:
    """
    What every session of a node shares: its certificate and key, the CA it
    trusts, the revoked serials, the cookie secret and the counters.

    Two OpenSSL contexts (client and server role) are built once; sessions
    only create C{Connection}s from them.
    """

    def __init__(
        self,
        ca_cert: x509.Certificate,
        cert: x509.Certificate,
        key: CertificateIssuerPrivateKeyTypes,
        *,
        revoked: RevokedSerials | None = None,
        counters: Counters | None = None,
        cookies: CookieJar | None = None,
        require_overlay_uri: bool = False,
        handshake_mtu: int = HANDSHAKE_MTU,
        handshake_timeout: float = HANDSHAKE_TIMEOUT_S,
    ) -> None:
        self.ca_cert = ca_cert
        self.cert = cert
        self.revoked = revoked if revoked is not None else RevokedSerials()
        self.counters = counters if counters is not None else Counters()
        self.cookies = cookies if cookies is not None else CookieJar()
        self.require_overlay_uri = require_overlay_uri
        self.handshake_mtu = handshake_mtu
        self.handshake_timeout = handshake_timeout
        self.client_context = self._context(key, server=False)
        self.server_context = self._context(key, server=True)

    def _context(self, key: CertificateIssuerPrivateKeyTypes, server: bool) -> SSL.Context:
        ctx = SSL.Context(SSL.DTLS_METHOD)
        ctx.set_min_proto_version(DTLS1_2_VERSION)
        ctx.set_max_proto_version(DTLS1_2_VERSION)
        ctx.set_cipher_list(CIPHERS)
        ctx.use_certificate(crypto.X509.from_cryptography(self.cert))
        ctx.use_privatekey(_pkey(key))
        ctx.check_privatekey()
        ctx.get_cert_store().add_cert(crypto.X509.from_cryptography(self.ca_cert))  # type: ignore[union-attr]
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _verify_callback)
        ctx.set_verify_depth(2)
        options: int = SSL.OP_NO_TICKET | SSL.OP_NO_COMPRESSION | SSL.OP_NO_QUERY_MTU
        options |= int(getattr(SSL, "OP_NO_RENEGOTIATION", 0))
        if server:
            cookie_exchange = SSL.OP_COOKIE_EXCHANGE
            assert cookie_exchange is not None  # OpenSSL 1.1+ always has it
            options |= cookie_exchange
            ctx.set_cookie_generate_callback(_cookie_generate)
            ctx.set_cookie_verify_callback(_cookie_verify)
        ctx.set_options(options)
        return ctx


#: OpenSSL error texts that mean this end refused the peer's offer.
_LOCAL_REFUSALS = (
    ("no shared cipher", "no-shared-cipher"),
    ("unsupported protocol", "bad-version"),
    ("wrong version", "bad-version"),
    ("version too low", "bad-version"),
    ("peer did not return a certificate", "no-certificate"),
)


def _classify(error: str) -> tuple[str, bool]:
    """A handshake error's reason label, and whether it is our refusal."""
    for text, reason in _LOCAL_REFUSALS:
        if text in error:
            return reason, True
    if "alert" in error:
        return "peer-refused", False
    return "handshake-error", False


def _verify_callback(
    conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
) -> bool:
    session = conn.get_app_data()
    if not isinstance(session, DtlsSession):
        return False
    return session._on_verify(cert, errno, depth, bool(ok))


def _cookie_generate(conn: SSL.Connection) -> bytes:
    # Only reached for the replayed cookie-less hello whose answer we discard.
    session = conn.get_app_data()
    return session._cookie if isinstance(session, DtlsSession) and session._cookie else b"\x00"


def _cookie_verify(conn: SSL.Connection, cookie: bytes) -> bool:
    # The cookie was checked statelessly before this object existed.
    session = conn.get_app_data()
    return isinstance(session, DtlsSession) and session._cookie == cookie


@dataclass
class SessionStats:
    bytes_in: int = 0
    bytes_out: int = 0
    packets_in: int = 0
    packets_out: int = 0
    retransmits: int = 0
    dropped: dict[str, int] = field(default_factory=dict)


class _ReplayMirror:
    """A copy of the record replay window for the current epoch."""

    __slots__ = ("epoch", "top", "bits")

    def __init__(self) -> None:
        self.epoch = -1
        self.top = -1
        self.bits = 0

    def verdict(self, epoch: int, seq: int) -> str | None:
        """C{"replay"} or C{"too-old"} when the record must not be fed, else L{None}."""
        if epoch != self.epoch or seq > self.top:
            return None
        if self.top - seq >= REPLAY_WINDOW:
            return "too-old"
        if self.bits >> (self.top - seq) & 1:
            return "replay"
        return None

    def mark(self, epoch: int, seq: int) -> None:
        if epoch != self.epoch:
            if epoch < self.epoch:
                return
            self.epoch, self.top, self.bits = epoch, seq, 1
            return
        if seq > self.top:
            shift = seq - self.top
            self.bits = ((self.bits << shift) | 1) & ((1 << REPLAY_WINDOW) - 1)
            self.top = seq
        else:
            self.bits |= 1 << (self.top - seq)


class DtlsSession:
    """
    One DTLS 1.2 association with one peer (one "generation" of a
    L{wow.security.channel.SecureChannel}).

    Outputs are datagrams made of whole DTLS records: handshake flights are
    packed up to C{handshake_mtu}; each L{send} is exactly one record.
    """

    log = Logger()

    def __init__(
        self,
        role: Role,
        context: DtlsContext,
        peer_overlay_address: bytes,
        expected_peer_ip: str | None,
        clock: IReactorTime,
    ) -> None:
        self.role = role
        self.context = context
        self.peer_overlay_address = peer_overlay_address
        self.expected_peer_ip = expected_peer_ip
        self.clock = clock
        self.state = State.HANDSHAKING
        self.close_reason: str | None = None
        self.peer_certificate: PeerCertificate | None = None
        self.cipher: str | None = None
        self.stats = SessionStats()
        self.created_at = clock.seconds()
        self.established_at: float | None = None
        #: Called once when the session leaves HANDSHAKING or ESTABLISHED.
        self.on_closed: Callable[[DtlsSession], None] | None = None
        self._refusal: Refused | None = None
        self._cookie: bytes | None = None
        self._conn: SSL.Connection | None = None
        self._flight: list[bytes] = []
        self._retransmit_at: float | None = None
        self._retransmit_interval = RETRANSMIT_INITIAL_S
        self._final_flight: list[bytes] = []
        self._final_flight_until = 0.0
        self._final_resent_at = -1e18
        self._replay = _ReplayMirror()
        if role is Role.CLIENT:
            self._conn = self._new_connection(context.client_context)
            self._conn.set_connect_state()

    # -- public API ---------------------------------------------------------

    @property
    def counters(self) -> Counters:
        return self.context.counters

    def start(self) -> list[bytes]:
        """Begin the handshake; the client's first flight (the server's is empty)."""
        if self.role is Role.SERVER or self.state is not State.HANDSHAKING:
            return []
        return self._drive(self.clock.seconds())

    def receive(
        self, datagram: rec.Buffer, now: float | None = None
    ) -> tuple[list[bytes], list[bytes]]:
        """
        Feed one datagram from the peer.

        @return: the plaintexts it carried and the datagrams to send back.
            Never raises: malformed input is counted and dropped.
        """
        plaintexts: list[bytes] = []
        to_send: list[bytes] = []
        state = self.state
        n = len(datagram)
        if (
            state is State.ESTABLISHED
            and n > rec.HEADER_LEN
            and datagram[0] == rec.APPLICATION_DATA
            and (datagram[11] << 8 | datagram[12]) == n - rec.HEADER_LEN
            and datagram[1] == 0xFE
            and datagram[2] == 0xFD
        ):
            # The fast path: one application-data record, the common case.
            epoch = datagram[3] << 8 | datagram[4]
            if epoch:
                self._open(epoch, int.from_bytes(datagram[5:11], "big"), datagram, plaintexts)
                return plaintexts, to_send
        now = self.clock.seconds() if now is None else now
        if state is State.CLOSED:
            self._drop("closed")
            return plaintexts, to_send
        try:
            parts = rec.split_records(datagram)
        except rec.MalformedRecord:
            self._drop("malformed")
            return plaintexts, to_send
        incomplete = False
        for header, record in parts:
            if self.state is State.ESTABLISHED:
                had = len(plaintexts)
                self._receive_established(header, record, now, plaintexts, to_send)
                if header.content_type == rec.APPLICATION_DATA and len(plaintexts) == had:
                    incomplete = True
            elif self.state is State.HANDSHAKING:
                self._receive_handshaking(header, record, now, plaintexts, to_send)
            else:
                self._drop("closed")
        if incomplete and plaintexts:
            # A message sealed as several records is taken whole or not at all.
            self._drop("incomplete-message")
            plaintexts = []
        return plaintexts, to_send

    def send(self, plaintext: bytes) -> list[bytes]:
        """
        Encrypt C{plaintext} (at most L{MAX_PLAINTEXT} bytes) as one record.

        @raise NotEstablished: before the handshake finished or after close.
        @raise ValueError: for an empty or too long plaintext.
        """
        conn = self._conn
        if self.state is not State.ESTABLISHED or conn is None:
            raise NotEstablished(f"session is {self.state.value}")
        n = len(plaintext)
        if not 0 < n <= MAX_PLAINTEXT:
            raise ValueError(f"a record carries 1 to {MAX_PLAINTEXT} bytes, not {n}")
        conn.send(plaintext)
        out = conn.bio_read(_READ_SIZE)
        stats = self.stats
        stats.bytes_out += n
        stats.packets_out += 1
        return [out]

    def seal(self, message: bytes) -> bytes:
        """
        Encrypt a message of any length as consecutive records of at most
        L{MAX_PLAINTEXT} bytes each, returned as one buffer: how an
        offloaded ~60 KB super-frame crosses in four records.

        @raise NotEstablished: before the handshake finished or after close.
        """
        conn = self._conn
        if self.state is not State.ESTABLISHED or conn is None:
            raise NotEstablished(f"session is {self.state.value}")
        n = len(message)
        if n <= MAX_PLAINTEXT:
            if not n:
                raise ValueError("an empty message")
            conn.send(message)
            count = 1
        else:
            view = memoryview(message)
            count = 0
            for start in range(0, n, MAX_PLAINTEXT):
                conn.send(view[start : start + MAX_PLAINTEXT])
                count += 1
        out = conn.bio_read(n + count * 64)
        stats = self.stats
        stats.bytes_out += n
        stats.packets_out += count
        return out

    def tick(self, now: float) -> list[bytes]:
        """Retransmit a lost flight or give up a stalled handshake."""
        if self.state is not State.HANDSHAKING:
            return []
        if now - self.created_at >= self.context.handshake_timeout:
            self._fail("handshake-timeout", "no answer", now, local=False)
            return []
        if self._flight and self._retransmit_at is not None and now >= self._retransmit_at:
            self.stats.retransmits += 1
            self.counters.inc("security_handshake_retransmits", role=self.role.value)
            self._retransmit_interval = min(self._retransmit_interval * 2, RETRANSMIT_MAX_S)
            self._retransmit_at = now + self._retransmit_interval
            return list(self._flight)
        return []

    def next_timeout(self) -> float | None:
        """When L{tick} next has work: a retransmission or the handshake deadline."""
        if self.state is not State.HANDSHAKING:
            return None
        deadline = self.created_at + self.context.handshake_timeout
        if self._retransmit_at is not None:
            return min(deadline, self._retransmit_at)
        return deadline

    def close(self, reason: str) -> list[bytes]:
        """Tear the session down, telling the peer (close_notify) when possible."""
        if self.state is State.CLOSED:
            return []
        out: list[bytes] = []
        conn = self._conn
        if conn is not None and self.state is State.ESTABLISHED:
            try:
                conn.shutdown()
            except SSL.Error:
                pass
            out = self._read_output()
        self._closed(reason)
        return out

    def info(self) -> dict[str, object]:
        """A JSON-friendly summary for C{wow peers}."""
        return {
            "role": self.role.value,
            "state": self.state.value,
            "close_reason": self.close_reason,
            "cipher": self.cipher,
            "certificate": self.peer_certificate.as_dict() if self.peer_certificate else None,
            "established_at": self.established_at,
            "bytes_in": self.stats.bytes_in,
            "bytes_out": self.stats.bytes_out,
            "packets_in": self.stats.packets_in,
            "packets_out": self.stats.packets_out,
        }

    @property
    def bytes_total(self) -> int:
        return self.stats.bytes_in + self.stats.bytes_out

    @property
    def packets_total(self) -> int:
        return self.stats.packets_in + self.stats.packets_out

    # -- internals ----------------------------------------------------------

    def _new_connection(self, ctx: SSL.Context) -> SSL.Connection:
        conn = SSL.Connection(ctx, None)
        conn.set_app_data(self)
        conn.set_ciphertext_mtu(self.context.handshake_mtu)
        return conn

    def _drop(self, reason: str) -> None:
        d = self.stats.dropped
        d[reason] = d.get(reason, 0) + 1
        self.counters.inc("security_records_dropped", reason=reason)

    def _read_output(self) -> list[bytes]:
        conn = self._conn
        if conn is None:
            return []
        data = b""
        while True:
            try:
                data += conn.bio_read(_READ_SIZE)
            except SSL.WantReadError:
                break
        if not data:
            return []
        try:
            parts = [bytes(r) for _, r in rec.split_records(data)]
        except rec.MalformedRecord:  # OpenSSL's own output: cannot happen
            return [data]
        return rec.pack_records(parts, self.context.handshake_mtu)

    def _server_accept(
        self, header: rec.RecordHeader, record: rec.Buffer, now: float
    ) -> list[bytes]:
        """
        The server has no OpenSSL object yet: answer cookie-less hellos
        statelessly, and create the object only for a hello with our cookie.
        """
        try:
            hello = rec.parse_client_hello(record)
        except rec.MalformedRecord:
            self._drop("not-client-hello")
            return []
        jar = self.context.cookies
        if not hello.cookie:
            self.counters.inc("security_hello_verify_sent")
            cookie = jar.make(self.peer_overlay_address, now)
            return [rec.hello_verify_request(hello.record_sequence, cookie)]
        if not jar.check(self.peer_overlay_address, hello.cookie, now):
            self._drop("bad-cookie")
            return []
        if hello.message_seq != 1 or hello.record_sequence < 1:
            self._drop("bad-client-hello")
            return []
        self._cookie = hello.cookie
        conn = self._conn = self._new_connection(self.context.server_context)
        conn.set_accept_state()
        # Replay the cookie-less first hello OpenSSL expects, drop its answer.
        first = rec.rewrite_client_hello(record, message_seq=0, cookie=b"", record_sequence=0)
        conn.bio_write(first)
        try:
            conn.do_handshake()
        except SSL.WantReadError:
            pass
        except SSL.Error as e:
            self._fail("handshake-error", str(e), now, local=False)
            return []
        self._read_output()
        conn.bio_write(record)
        return self._drive(now)

    def _receive_handshaking(
        self,
        header: rec.RecordHeader,
        record: rec.Buffer,
        now: float,
        plaintexts: list[bytes],
        to_send: list[bytes],
    ) -> None:
        conn = self._conn
        if conn is None:
            to_send.extend(self._server_accept(header, record, now))
            return
        if header.content_type == rec.APPLICATION_DATA:
            # Data overtaking the peer's Finished: dropped rather than left
            # in OpenSSL's buffer, so every plaintext maps to its datagram.
            self._drop("early-data")
            return
        conn.bio_write(record)
        to_send.extend(self._drive(now))
        if self.state is State.ESTABLISHED:
            self._drain_plaintext(plaintexts)

    def _receive_established(
        self,
        header: rec.RecordHeader,
        record: rec.Buffer,
        now: float,
        plaintexts: list[bytes],
        to_send: list[bytes],
    ) -> None:
        ctype = header.content_type
        if ctype == rec.APPLICATION_DATA or ctype == rec.ALERT:
            if header.epoch == 0:
                self._drop("unprotected-record")
                return
            if ctype == rec.APPLICATION_DATA:
                self._open(header.epoch, header.sequence, record, plaintexts)
                return
            conn = self._conn
            assert conn is not None
            conn.bio_write(record)
            self._drain_plaintext(plaintexts)
            return
        # A handshake or ChangeCipherSpec record after the handshake: the
        # client lost our final flight and repeats its own.
        if (
            self.role is Role.SERVER
            and self._final_flight
            and now <= self._final_flight_until
            and now - self._final_resent_at >= 0.5
        ):
            self._final_resent_at = now
            self.stats.retransmits += 1
            self.counters.inc("security_handshake_retransmits", role=self.role.value)
            to_send.extend(self._final_flight)
            return
        self._drop("handshake-after-established")

    def _open(self, epoch: int, seq: int, record: rec.Buffer, plaintexts: list[bytes]) -> None:
        """Decrypt one application-data record: at most one plaintext."""
        replay = self._replay
        if epoch == replay.epoch and seq <= replay.top:
            verdict = replay.verdict(epoch, seq)
            if verdict is not None:
                self._drop(verdict)
                return
        conn = self._conn
        assert conn is not None
        conn.bio_write(record)
        try:
            data = conn.recv(MAX_PLAINTEXT)
        except SSL.WantReadError:
            self._drop("undecryptable")
            return
        except SSL.Error as e:
            self._receive_error(e)
            return
        replay.mark(epoch, seq)
        stats = self.stats
        stats.bytes_in += len(data)
        stats.packets_in += 1
        plaintexts.append(data)

    def _receive_error(self, e: SSL.Error) -> None:
        if isinstance(e, SSL.ZeroReturnError):
            self._closed("peer-closed")
            return
        self.counters.inc("security_sessions_failed", reason="peer-alert")
        self.log.info(
            "session to {peer} failed: {error}", peer=self.peer_overlay_address.hex(), error=str(e)
        )
        self._closed(f"peer-alert: {e}")

    def _drain_plaintext(self, plaintexts: list[bytes]) -> None:
        """Collect what OpenSSL holds (records buffered during the handshake, alerts)."""
        conn = self._conn
        while conn is not None:
            try:
                data = conn.recv(MAX_PLAINTEXT)
            except SSL.WantReadError:
                return
            except SSL.Error as e:
                self._receive_error(e)
                return
            stats = self.stats
            stats.bytes_in += len(data)
            stats.packets_in += 1
            plaintexts.append(data)

    def _drive(self, now: float) -> list[bytes]:
        """Run the handshake as far as the input allows; return what to send."""
        conn = self._conn
        assert conn is not None
        try:
            conn.do_handshake()
        except SSL.WantReadError:
            out = self._read_output()
            if out:
                self._new_flight(out, now)
            return out
        except SSL.Error as e:
            out = self._read_output()  # the fatal alert, if any
            refusal = self._refusal
            if refusal is not None:
                self._fail(refusal.reason, refusal.detail, now, local=True)
            else:
                reason, local = _classify(str(e))
                self._fail(reason, str(e), now, local=local)
            return out
        out = self._read_output()
        self._established(now, out)
        return out

    def _new_flight(self, out: list[bytes], now: float) -> None:
        self._flight = out
        self._retransmit_interval = RETRANSMIT_INITIAL_S
        self._retransmit_at = now + self._retransmit_interval

    def _established(self, now: float, final_flight: list[bytes]) -> None:
        conn = self._conn
        assert conn is not None
        self.state = State.ESTABLISHED
        self.established_at = now
        self.cipher = conn.get_cipher_name()
        self._flight = []
        self._retransmit_at = None
        if self.role is Role.SERVER and final_flight:
            self._final_flight = final_flight
            self._final_flight_until = now + FINAL_FLIGHT_KEEP_S
        self.counters.inc("security_handshakes", outcome="established", role=self.role.value)

    def _fail(self, reason: str, detail: str, now: float, *, local: bool) -> None:
        name = "security_handshakes_refused" if local else "security_handshakes_failed"
        self.counters.inc(name, reason=reason)
        self.log.info(
            "DTLS handshake with {peer} ({role}) {what}: {reason}: {detail}",
            peer=self.peer_overlay_address.hex(),
            role=self.role.value,
            what="refused" if local else "failed",
            reason=reason,
            detail=detail,
        )
        self._closed(reason)

    def _closed(self, reason: str) -> None:
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        self.close_reason = reason
        self._flight = []
        self._final_flight = []
        self._retransmit_at = None
        if self._conn is not None:
            self._conn.set_app_data(None)
            self._conn = None
        callback, self.on_closed = self.on_closed, None
        if callback is not None:
            callback(self)

    def _on_verify(self, cert: crypto.X509, errno: int, depth: int, ok: bool) -> bool:
        """OpenSSL's verdict for each certificate of the chain, plus our rules for the leaf."""
        try:
            if not ok:
                reason = OPENSSL_REASONS.get(errno, "chain-error")
                detail = f"OpenSSL verify error {errno}"
                try:
                    detail = SSL._ffi.string(SSL._lib.X509_verify_cert_error_string(errno)).decode()  # type: ignore[attr-defined]
                except Exception:
                    pass
                self._refusal = Refused(reason, f"{detail} (depth {depth})")
                return False
            if depth > 0:
                return True
            self.peer_certificate = check_peer(
                cert.to_cryptography(),
                expected_ip=self.expected_peer_ip,
                peer_overlay=self.peer_overlay_address,
                revoked=self.context.revoked,
                require_overlay_uri=self.context.require_overlay_uri,
            )
            return True
        except Refused as r:
            self._refusal = r
            return False
        except Exception as e:  # never let a bug in a rule accept a peer
            self._refusal = Refused("internal-error", repr(e))
            return False
