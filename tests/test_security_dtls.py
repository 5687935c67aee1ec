"""Tests for L{wow.security.dtls}: one DTLS 1.2 session, in memory."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.pki import ADDR_A, ADDR_B, ADDR_C, IP_A, IP_B, IP_C, Identity, pki
from wow.metrics import Counters
from wow.security import records as rec
from wow.security.dtls import (
    MAX_PLAINTEXT,
    DtlsContext,
    DtlsSession,
    NotEstablished,
    RevokedSerials,
    Role,
    State,
)

Filter = Callable[[str, int, bytes], bool]


def context(ident: Identity, **kw: object) -> DtlsContext:
    return DtlsContext(pki().ca.cert, ident.cert, ident.key, **kw)  # type: ignore[arg-type]


class Pair:
    """A client and a server session joined by a lossless (or filtered) wire."""

    def __init__(
        self,
        client_id: Identity | None = None,
        server_id: Identity | None = None,
        *,
        client_addr: bytes = ADDR_A,
        server_addr: bytes = ADDR_B,
        expected_server_ip: str | None = IP_B,
        expected_client_ip: str | None = None,
        client_ctx: DtlsContext | None = None,
        server_ctx: DtlsContext | None = None,
    ) -> None:
        p = pki()
        self.clock = Clock()
        self.clock.advance(1000)
        self.cctx = client_ctx or context(client_id or p.a)
        self.sctx = server_ctx or context(server_id or p.b)
        self.client = DtlsSession(
            Role.CLIENT, self.cctx, server_addr, expected_server_ip, self.clock
        )
        self.server = DtlsSession(
            Role.SERVER, self.sctx, client_addr, expected_client_ip, self.clock
        )
        self.received: dict[str, list[bytes]] = {"client": [], "server": []}
        self.wire: list[tuple[str, bytes]] = []  # (sender, datagram) everything sent
        self.sent_count = {"client": 0, "server": 0}

    def deliver(self, sender: str, datagrams: list[bytes], drop: Filter | None = None) -> None:
        queue = [(sender, d) for d in datagrams]
        while queue:
            who, d = queue.pop(0)
            self.wire.append((who, d))
            n = self.sent_count[who] = self.sent_count[who] + 1
            if drop is not None and drop(who, n, d):
                continue
            target = self.server if who == "client" else self.client
            other = "server" if who == "client" else "client"
            pts, back = target.receive(d, self.clock.seconds())
            self.received[other].extend(pts)
            queue.extend((other, b) for b in back)

    def handshake(self, drop: Filter | None = None) -> None:
        self.deliver("client", self.client.start(), drop)

    def tick(self, seconds: float, drop: Filter | None = None) -> None:
        self.clock.advance(seconds)
        now = self.clock.seconds()
        self.deliver("client", self.client.tick(now), drop)
        self.deliver("server", self.server.tick(now), drop)


class HandshakeTests(SynchronousTestCase):
    def test_mutual_authentication(self) -> None:
        pair = Pair()
        pair.handshake()
        self.assertIs(pair.client.state, State.ESTABLISHED)
        self.assertIs(pair.server.state, State.ESTABLISHED)
        self.assertEqual(pair.client.cipher, "ECDHE-ECDSA-AES256-GCM-SHA384")
        p = pki()
        assert pair.client.peer_certificate and pair.server.peer_certificate
        self.assertEqual(pair.client.peer_certificate.serial, p.b.cert.serial_number)
        self.assertEqual(pair.client.peer_certificate.ip, IP_B)
        self.assertEqual(pair.client.peer_certificate.overlay_uri, "urn:wow:node:" + "22" * 20)
        self.assertEqual(pair.server.peer_certificate.serial, p.a.cert.serial_number)
        self.assertEqual(pair.server.peer_certificate.ip, IP_A)
        self.assertEqual(pair.sctx.counters.get("security_hello_verify_sent"), 1)
        self.assertEqual(pair.client.info()["state"], "established")

    def test_overlay_uri_forms(self) -> None:
        from wow.security.verify import overlay_uri

        self.assertEqual(overlay_uri(ADDR_B), "urn:wow:node:" + "22" * 20)
        self.assertEqual(overlay_uri(int.from_bytes(ADDR_B, "big")), overlay_uri(ADDR_B))
        self.assertEqual(overlay_uri(1), "urn:wow:node:" + "0" * 39 + "1")

    def test_rsa_key(self) -> None:
        pair = Pair(pki().a_rsa)
        pair.handshake()
        self.assertIs(pair.server.state, State.ESTABLISHED)
        self.assertEqual(pair.server.cipher, "ECDHE-ECDSA-AES256-GCM-SHA384")
        self.assertIs(pair.client.state, State.ESTABLISHED)

    def test_dtls_1_2_only(self) -> None:
        pair = Pair()
        (hello,) = pair.client.start()
        # A ClientHello offering DTLS 1.2 (0xFEFD) as its highest version.
        self.assertEqual(hello[rec.HEADER_LEN + 12 : rec.HEADER_LEN + 14], b"\xfe\xfd")

    def assertRefused(self, pair: Pair, refuser: str, reason: str) -> None:
        pair.handshake()
        refusing = pair.server if refuser == "server" else pair.client
        other = pair.client if refuser == "server" else pair.server
        ctx = pair.sctx if refuser == "server" else pair.cctx
        self.assertIs(refusing.state, State.CLOSED)
        self.assertEqual(refusing.close_reason, reason)
        self.assertEqual(ctx.counters.get("security_handshakes_refused", reason=reason), 1)
        # The refused side learns through a fatal alert, not by timing out.
        self.assertIs(other.state, State.CLOSED)
        self.assertEqual(other.close_reason, "peer-refused")
        self.assertRaises(NotEstablished, other.send, b"x")

    def test_expired(self) -> None:
        self.assertRefused(Pair(pki().expired), "server", "expired")

    def test_not_yet_valid(self) -> None:
        self.assertRefused(Pair(pki().not_yet_valid), "server", "not-yet-valid")

    def test_wrong_ca(self) -> None:
        self.assertRefused(Pair(pki().wrong_ca), "server", "bad-signature")

    def test_ca_certificate_as_node(self) -> None:
        self.assertRefused(Pair(pki().is_ca), "server", "leaf-is-ca")

    def test_revoked(self) -> None:
        p = pki()
        sctx = context(p.b, revoked=RevokedSerials({p.revoked.cert.serial_number}))
        self.assertRefused(Pair(p.revoked, server_ctx=sctx), "server", "revoked")

    def test_no_ip(self) -> None:
        self.assertRefused(Pair(pki().no_ip), "server", "no-ip-san")

    def test_wrong_ip(self) -> None:
        """The server's certificate names another IP than the one we route to."""
        self.assertRefused(
            Pair(server_id=pki().wrong_ip, server_addr=ADDR_A), "client", "ip-mismatch"
        )

    def test_copied_certificate(self) -> None:
        """C reuses B's certificate and key at its own IP: refused."""
        self.assertRefused(
            Pair(server_id=pki().b, expected_server_ip=IP_C), "client", "ip-mismatch"
        )

    def test_server_checks_client_ip_when_known(self) -> None:
        self.assertRefused(
            Pair(pki().c, expected_client_ip=IP_A, client_addr=ADDR_C), "server", "ip-mismatch"
        )

    def test_overlay_address_mismatch(self) -> None:
        """B's certificate used by a node at another overlay address."""
        self.assertRefused(
            Pair(server_id=pki().b, server_addr=ADDR_C), "client", "overlay-mismatch"
        )

    def test_overlay_uri_required(self) -> None:
        sctx = context(pki().b, require_overlay_uri=True)
        self.assertRefused(Pair(pki().no_uri, server_ctx=sctx), "server", "no-overlay-uri")

    def test_overlay_uri_optional(self) -> None:
        pair = Pair(pki().no_uri)
        pair.handshake()
        self.assertIs(pair.server.state, State.ESTABLISHED)


class CipherTests(SynchronousTestCase):
    """Only ECDHE with an AEAD cipher, only DTLS 1.2, whatever the peer offers."""

    def client_context(self, ciphers: bytes, max_version: int = 0xFEFD) -> DtlsContext:
        from OpenSSL import SSL, crypto

        ctx = context(pki().a)
        raw = SSL.Context(SSL.DTLS_METHOD)
        raw.set_max_proto_version(max_version)
        raw.set_cipher_list(ciphers)
        raw.use_certificate(crypto.X509.from_cryptography(pki().a.cert))
        raw.use_privatekey(crypto.PKey.from_cryptography_key(pki().a.key))  # type: ignore[arg-type]
        raw.set_verify(SSL.VERIFY_NONE)
        ctx.client_context = raw  # a peer that does not follow WOW's rules
        return ctx

    def test_chacha20(self) -> None:
        pair = Pair(client_ctx=self.client_context(b"ECDHE-ECDSA-CHACHA20-POLY1305"))
        pair.handshake()
        self.assertEqual(pair.server.cipher, "ECDHE-ECDSA-CHACHA20-POLY1305")
        pair.deliver("client", pair.client.send(b"x" * 1000))
        self.assertEqual(pair.received["server"], [b"x" * 1000])

    def test_weak_ciphers_refused(self) -> None:
        for ciphers in (b"AES128-SHA", b"ECDHE-ECDSA-AES128-SHA", b"AES256-GCM-SHA384"):
            pair = Pair(client_ctx=self.client_context(ciphers))
            pair.handshake()
            self.assertIs(pair.server.state, State.CLOSED, ciphers)
            self.assertEqual(pair.server.close_reason, "no-shared-cipher")
            self.assertIsNot(pair.client.state, State.ESTABLISHED, ciphers)
        self.assertEqual(
            pair.sctx.counters.get("security_handshakes_refused", reason="no-shared-cipher"), 1
        )

    def test_dtls_1_0_refused(self) -> None:
        pair = Pair(client_ctx=self.client_context(b"ECDHE-ECDSA-AES128-SHA", 0xFEFF))
        pair.handshake()
        self.assertIsNot(pair.server.state, State.ESTABLISHED)
        self.assertIsNot(pair.client.state, State.ESTABLISHED)


class DataTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pair = Pair()
        self.pair.handshake()

    def test_both_ways(self) -> None:
        pair = self.pair
        sizes = [1, 1400, 9000, MAX_PLAINTEXT]
        for n in sizes:
            pair.deliver("client", pair.client.send(bytes([n % 251]) * n))
            pair.deliver("server", pair.server.send(bytes([n % 241]) * n))
        self.assertEqual(pair.received["server"], [bytes([n % 251]) * n for n in sizes])
        self.assertEqual(pair.received["client"], [bytes([n % 241]) * n for n in sizes])
        self.assertEqual(pair.client.stats.bytes_out, sum(sizes))
        self.assertEqual(pair.server.stats.bytes_in, sum(sizes))
        self.assertEqual(pair.server.stats.packets_in, len(sizes))

    def test_one_record_per_send(self) -> None:
        (record,) = self.pair.client.send(b"x" * MAX_PLAINTEXT)
        ((header, _),) = rec.split_records(record)
        self.assertEqual(header.content_type, rec.APPLICATION_DATA)
        self.assertEqual(len(record), MAX_PLAINTEXT + 13 + 8 + 16)

    def test_seal_super_frame(self) -> None:
        """A 60 KB message is four records in one buffer, taken whole or not at all."""
        pair = self.pair
        message = bytes(range(256)) * 234 + b"tail"
        sealed = pair.client.seal(message)
        parts = rec.split_records(sealed)
        self.assertEqual([h.length - 24 for h, _ in parts], [16384, 16384, 16384, 10756])
        self.assertEqual(b"".join(pair.server.receive(sealed)[0]), message)
        self.assertEqual(pair.client.stats.packets_out, 4)
        sealed = pair.client.seal(message)
        i = len(parts[0][1]) + 40  # inside the second record
        tampered = sealed[:i] + bytes([sealed[i] ^ 1]) + sealed[i + 1 :]
        self.assertEqual(pair.server.receive(tampered), ([], []))
        self.assertEqual(
            pair.sctx.counters.get("security_records_dropped", reason="incomplete-message"), 1
        )
        self.assertRaises(ValueError, pair.client.seal, b"")

    def test_size_limits(self) -> None:
        self.assertRaises(ValueError, self.pair.client.send, b"")
        self.assertRaises(ValueError, self.pair.client.send, b"x" * (MAX_PLAINTEXT + 1))

    def test_no_plaintext_on_the_wire(self) -> None:
        secret = b"the inner payload nobody may read" * 10
        self.pair.deliver("client", self.pair.client.send(secret))
        self.assertEqual(self.pair.received["server"], [secret])
        self.assertFalse(any(b"the inner payload" in d for _, d in self.pair.wire))

    def test_replay_rejected(self) -> None:
        pair = self.pair
        (record,) = pair.client.send(b"pay me once")
        self.assertEqual(pair.server.receive(record)[0], [b"pay me once"])
        for _ in range(3):
            self.assertEqual(pair.server.receive(record), ([], []))
        self.assertEqual(pair.sctx.counters.get("security_records_dropped", reason="replay"), 3)
        self.assertEqual(pair.server.stats.packets_in, 1)

    def test_replay_out_of_order(self) -> None:
        """Records inside the window arrive in any order, each exactly once."""
        pair = self.pair
        records = [pair.client.send(b"%d" % i)[0] for i in range(10)]
        order = [3, 0, 9, 1, 2, 8, 4, 7, 5, 6]
        got = [pt for i in order for pt in pair.server.receive(records[i])[0]]
        self.assertEqual(got, [b"%d" % i for i in order])
        got = [pt for i in order for pt in pair.server.receive(records[i])[0]]
        self.assertEqual(got, [])
        self.assertEqual(pair.sctx.counters.get("security_records_dropped", reason="replay"), 10)

    def test_too_old(self) -> None:
        pair = self.pair
        (first,) = pair.client.send(b"first")
        for _ in range(100):
            pair.deliver("client", pair.client.send(b"n"))
        self.assertEqual(pair.server.receive(first), ([], []))
        self.assertEqual(pair.sctx.counters.get("security_records_dropped", reason="too-old"), 1)

    def test_replayed_handshake_after_established(self) -> None:
        pair = self.pair
        for who, datagram in list(pair.wire):
            target = pair.server if who == "client" else pair.client
            self.assertEqual(target.receive(datagram)[0], [])
        self.assertIs(pair.server.state, State.ESTABLISHED)
        self.assertIs(pair.client.state, State.ESTABLISHED)
        pair.deliver("client", pair.client.send(b"still"))
        self.assertEqual(pair.received["server"], [b"still"])

    def test_tampered(self) -> None:
        (record,) = self.pair.client.send(b"x" * 100)
        bad = record[:-1] + bytes([record[-1] ^ 1])
        self.assertEqual(self.pair.server.receive(bad), ([], []))
        self.assertEqual(
            self.pair.sctx.counters.get("security_records_dropped", reason="undecryptable"), 1
        )
        self.assertEqual(self.pair.server.receive(record)[0], [b"x" * 100])

    def test_garbage(self) -> None:
        pair = self.pair
        for junk in (b"", b"\x00", b"hello world", b"\x17\xfe\xfd" + b"\x00" * 9, b"\x16" * 100):
            self.assertEqual(pair.server.receive(junk), ([], []))
        self.assertEqual(pair.sctx.counters.get("security_records_dropped", reason="malformed"), 5)
        unprotected = bytes([rec.APPLICATION_DATA]) + b"\xfe\xfd" + b"\x00" * 8 + b"\x00\x03abc"
        self.assertEqual(pair.server.receive(unprotected), ([], []))
        self.assertEqual(
            pair.sctx.counters.get("security_records_dropped", reason="unprotected-record"), 1
        )
        self.assertIs(pair.server.state, State.ESTABLISHED)
        pair.deliver("client", pair.client.send(b"ok"))
        self.assertEqual(pair.received["server"], [b"ok"])

    def test_close(self) -> None:
        pair = self.pair
        pair.deliver("client", pair.client.close("done"))
        self.assertEqual((pair.client.state, pair.client.close_reason), (State.CLOSED, "done"))
        self.assertEqual(
            (pair.server.state, pair.server.close_reason), (State.CLOSED, "peer-closed")
        )
        self.assertEqual(pair.client.close("again"), [])

    @settings(max_examples=150)
    @given(st.binary(max_size=300))
    def test_fuzz_established(self, data: bytes) -> None:
        self.pair.server.receive(data)
        self.pair.server.receive(bytes([rec.APPLICATION_DATA]) + b"\xfe\xfd\x00\x01" + data)


class FuzzHandshakeTests(SynchronousTestCase):
    @settings(max_examples=100)
    @given(st.lists(st.binary(max_size=200), max_size=4))
    def test_fuzz_fresh_sessions(self, datagrams: list[bytes]) -> None:
        """Arbitrary bytes into a fresh server or client never raise."""
        pair = Pair()
        pair.client.start()
        for d in datagrams:
            pair.server.receive(d)
            pair.client.receive(d)
            pair.server.receive(bytes([rec.HANDSHAKE]) + b"\xfe\xfd\x00\x00" + d)
            pair.client.receive(bytes([rec.HANDSHAKE]) + b"\xfe\xff\x00\x00" + d)

    @settings(max_examples=60)
    @given(st.integers(0, 10), st.integers(0, 2000), st.integers(0, 255))
    def test_fuzz_mangled_flights(self, which: int, where: int, xor: int) -> None:
        """A corrupted handshake datagram never raises; the handshake fails or recovers."""

        def corrupt(d: bytes) -> bytes:
            if not d or xor == 0:
                return d
            i = where % len(d)
            return d[:i] + bytes([d[i] ^ xor]) + d[i + 1 :]

        pair = Pair()
        count = [0]
        queue = [("client", d) for d in pair.client.start()]
        while queue:
            who, d = queue.pop(0)
            if count[0] == which:
                d = corrupt(d)
            count[0] += 1
            target = pair.server if who == "client" else pair.client
            _, back = target.receive(d)
            queue.extend(("server" if who == "client" else "client", b) for b in back)
        for _ in range(8):
            pair.tick(5)
        for s in (pair.client, pair.server):
            self.assertIn(s.state, (State.ESTABLISHED, State.CLOSED))


class RetransmissionTests(SynchronousTestCase):
    def drop_once(self, who: str, n: int) -> Filter:
        def drop(sender: str, count: int, datagram: bytes) -> bool:
            return sender == who and count == n

        return drop

    def test_client_hello_lost(self) -> None:
        pair = Pair()
        pair.handshake(self.drop_once("client", 1))
        self.assertIs(pair.client.state, State.HANDSHAKING)
        self.assertEqual(pair.client.next_timeout(), pair.clock.seconds() + 1.0)
        pair.tick(0.5)
        self.assertIs(pair.client.state, State.HANDSHAKING)
        pair.tick(0.5)
        self.assertIs(pair.client.state, State.ESTABLISHED)
        self.assertIs(pair.server.state, State.ESTABLISHED)
        self.assertEqual(pair.client.stats.retransmits, 1)

    def test_server_flight_lost(self) -> None:
        # client: 1 hello, 2 hello+cookie, 3 certificate..finished;
        # server: 1 HelloVerifyRequest, 2 hello..done, 3 finished
        pair = Pair()
        pair.handshake(self.drop_once("server", 2))
        self.assertIs(pair.server.state, State.HANDSHAKING)
        pair.tick(1.0)
        self.assertIs(pair.client.state, State.ESTABLISHED)
        self.assertIs(pair.server.state, State.ESTABLISHED)

    def test_client_last_flight_lost(self) -> None:
        pair = Pair()
        pair.handshake(self.drop_once("client", 3))
        pair.tick(1.0)
        self.assertIs(pair.client.state, State.ESTABLISHED)
        self.assertIs(pair.server.state, State.ESTABLISHED)

    def test_server_finished_lost(self) -> None:
        """The finished server resends its final flight when the client repeats its own."""
        pair = Pair()
        pair.handshake(self.drop_once("server", 3))
        self.assertIs(pair.server.state, State.ESTABLISHED)
        self.assertIs(pair.client.state, State.HANDSHAKING)
        pair.tick(1.0)
        self.assertIs(pair.client.state, State.ESTABLISHED)
        pair.deliver("client", pair.client.send(b"after"))
        self.assertEqual(pair.received["server"], [b"after"])

    def test_heavy_loss(self) -> None:
        """Every other datagram lost: the doubling timer still gets through."""
        pair = Pair()
        drop = lambda who, n, d: n % 2 == 1  # noqa: E731
        pair.handshake(drop)
        for _ in range(12):
            if pair.client.state is State.ESTABLISHED and pair.server.state is State.ESTABLISHED:
                break
            pair.tick(2.0, drop)
        self.assertIs(pair.client.state, State.ESTABLISHED)
        self.assertIs(pair.server.state, State.ESTABLISHED)

    def test_backoff_and_timeout(self) -> None:
        pair = Pair()
        pair.client.start()
        sent = []
        for _ in range(40):
            pair.clock.advance(1.0)
            sent.append(len(pair.client.tick(pair.clock.seconds())))
        # Retransmissions at +1, +3, +7, +15 (doubling), then the 30 s deadline.
        self.assertEqual([i + 1 for i, n in enumerate(sent) if n], [1, 3, 7, 15])
        self.assertEqual(pair.client.close_reason, "handshake-timeout")
        self.assertEqual(
            pair.cctx.counters.get("security_handshakes_failed", reason="handshake-timeout"), 1
        )
        self.assertIsNone(pair.client.next_timeout())


class CounterTests(SynchronousTestCase):
    def test_shared_counters(self) -> None:
        counters = Counters()
        p = pki()
        pair = Pair(
            client_ctx=context(p.a, counters=counters), server_ctx=context(p.b, counters=counters)
        )
        pair.handshake()
        self.assertEqual(
            counters.get("security_handshakes", outcome="established", role="client"), 1
        )
        self.assertEqual(
            counters.get("security_handshakes", outcome="established", role="server"), 1
        )
