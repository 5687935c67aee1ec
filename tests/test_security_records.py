"""Tests for L{wow.security.records} and L{wow.security.cookie}."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.pki import ADDR_B, IP_B, pki
from wow.security import records as rec
from wow.security.cookie import COOKIE_PERIOD_S, CookieJar
from wow.security.dtls import DtlsContext, DtlsSession, Role


def real_client_hello() -> bytes:
    p = pki()
    ctx = DtlsContext(p.ca.cert, p.a.cert, p.a.key)
    (hello,) = DtlsSession(Role.CLIENT, ctx, ADDR_B, IP_B, Clock()).start()
    return hello


def record(ctype: int, epoch: int, seq: int, body: bytes, version: int = rec.DTLS1_2) -> bytes:
    return (
        bytes([ctype])
        + version.to_bytes(2, "big")
        + epoch.to_bytes(2, "big")
        + seq.to_bytes(6, "big")
        + len(body).to_bytes(2, "big")
        + body
    )


class RecordTests(SynchronousTestCase):
    def test_split(self) -> None:
        one = record(rec.APPLICATION_DATA, 1, 7, b"abc")
        two = record(rec.ALERT, 1, 8, b"\x01\x00")
        parts = rec.split_records(one + two)
        self.assertEqual([r for _, r in parts], [one, two])
        self.assertEqual(parts[0][0], rec.RecordHeader(rec.APPLICATION_DATA, rec.DTLS1_2, 1, 7, 3))

    def test_refused_as_a_whole(self) -> None:
        one = record(rec.APPLICATION_DATA, 1, 7, b"abc")
        for bad in (
            b"",
            one[:-1],
            one + b"\x17",
            b"\x99" + one[1:],
            one[:1] + b"\x03\x03" + one[3:],
        ):
            with self.assertRaises(rec.MalformedRecord):
                rec.split_records(bad)

    def test_pack(self) -> None:
        records = [b"a" * 600, b"b" * 600, b"c" * 600, b"d" * 2000]
        self.assertEqual(
            rec.pack_records(records, 1400),
            [b"a" * 600 + b"b" * 600, b"c" * 600, b"d" * 2000],
        )

    def test_client_hello(self) -> None:
        hello = rec.parse_client_hello(real_client_hello())
        self.assertEqual((hello.record_sequence, hello.message_seq, hello.cookie), (0, 0, b""))

    def test_hello_verify_request_round_trip(self) -> None:
        """The rewritten hello carries the cookie; our HVR parses as a record."""
        raw = real_client_hello()
        rewritten = rec.rewrite_client_hello(
            raw, message_seq=1, cookie=b"C" * 17, record_sequence=1
        )
        hello = rec.parse_client_hello(rewritten)
        self.assertEqual(
            (hello.record_sequence, hello.message_seq, hello.cookie), (1, 1, b"C" * 17)
        )
        back = rec.rewrite_client_hello(rewritten, message_seq=0, cookie=b"", record_sequence=0)
        self.assertEqual(back, raw)
        hvr = rec.hello_verify_request(5, b"x" * 17)
        ((header, body),) = rec.split_records(hvr)
        self.assertEqual(
            (header.content_type, header.version, header.sequence), (rec.HANDSHAKE, rec.DTLS1_0, 5)
        )
        self.assertEqual(body[rec.HEADER_LEN], rec.HELLO_VERIFY_REQUEST)

    def test_not_a_client_hello(self) -> None:
        for bad in (
            record(rec.APPLICATION_DATA, 0, 0, b"x" * 40),
            record(rec.HANDSHAKE, 1, 0, b"\x01" + b"\x00" * 40),
            rec.hello_verify_request(0, b"c"),
        ):
            with self.assertRaises(rec.MalformedRecord):
                rec.parse_client_hello(bad)

    @given(st.binary(max_size=600))
    def test_fuzz_split(self, data: bytes) -> None:
        try:
            parts = rec.split_records(data)
        except rec.MalformedRecord:
            return
        self.assertEqual(b"".join(r for _, r in parts), data)

    @given(st.binary(max_size=400))
    def test_fuzz_client_hello(self, data: bytes) -> None:
        try:
            rec.parse_client_hello(record(rec.HANDSHAKE, 0, 1, data))
        except rec.MalformedRecord:
            pass

    @given(st.integers(0, 200), st.integers(0, 40), st.binary(min_size=1, max_size=255))
    def test_fuzz_truncated_real_hello(self, cut: int, flip: int, cookie: bytes) -> None:
        raw = real_client_hello()
        body = bytearray(
            rec.rewrite_client_hello(raw, message_seq=1, cookie=cookie, record_sequence=1)
        )
        body[rec.HEADER_LEN + 12 + flip] ^= 0xFF
        for data in (bytes(body), bytes(body[: len(body) - cut])):
            try:
                rec.parse_client_hello(data)
            except rec.MalformedRecord:
                pass


class CookieTests(SynchronousTestCase):
    def test_bound_to_source_and_time(self) -> None:
        jar = CookieJar(b"k" * 32)
        cookie = jar.make(b"peer", 100.0)
        self.assertTrue(jar.check(b"peer", cookie, 100.0))
        self.assertTrue(jar.check(b"peer", cookie, 100.0 + COOKIE_PERIOD_S))
        self.assertFalse(jar.check(b"peer", cookie, 100.0 + 2 * COOKIE_PERIOD_S))
        self.assertFalse(jar.check(b"other", cookie, 100.0))
        self.assertFalse(CookieJar(b"j" * 32).check(b"peer", cookie, 100.0))
        self.assertFalse(jar.check(b"peer", cookie[:-1], 100.0))
        self.assertFalse(jar.check(b"peer", b"", 100.0))
