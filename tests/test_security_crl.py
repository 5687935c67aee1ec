"""Tests for L{wow.security.crl}: verification, newest-only, live sessions torn down."""

from __future__ import annotations

import datetime
import os
import time

from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.pki import ADDR_A, ADDR_B, IP_A, make_crl, pki
from tests.test_security_channel import Net
from wow.metrics import Counters
from wow.security.crl import CrlError, CrlSchedule, CrlState, verify_crl
from wow.security.dtls import RevokedSerials

HOUR = datetime.timedelta(hours=1)


def now_dt() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class VerifyTests(SynchronousTestCase):
    def test_valid(self) -> None:
        p = pki()
        crl = verify_crl(make_crl(p.ca, [5, 7], number=3), p.ca.cert, time.time())
        self.assertEqual((crl.number, crl.revoked), (3, frozenset({5, 7})))
        assert crl.next_update is not None
        self.assertAlmostEqual(crl.next_update - crl.this_update, 3600, delta=1)

    def test_pem(self) -> None:
        from cryptography import x509

        p = pki()
        der = make_crl(p.ca, [5], number=1)
        pem = x509.load_der_x509_crl(der).public_bytes(serialization.Encoding.PEM)
        self.assertEqual(verify_crl(pem, p.ca.cert, time.time()).revoked, frozenset({5}))

    def assertCrlRefused(self, data: bytes, reason: str) -> None:
        with self.assertRaises(CrlError) as cm:
            verify_crl(data, pki().ca.cert, time.time())
        self.assertEqual(cm.exception.reason, reason)

    def test_bad_signature(self) -> None:
        p = pki()
        # Same issuer name, signed by the other CA's key.
        self.assertCrlRefused(make_crl(p.ca, [5], number=1, signer=p.other_ca), "bad-signature")

    def test_wrong_issuer(self) -> None:
        from tests.pki import _ca

        stranger = _ca("Another CA")
        self.assertCrlRefused(make_crl(stranger, [5], number=1), "wrong-issuer")

    def test_dates(self) -> None:
        p = pki()
        self.assertCrlRefused(
            make_crl(p.ca, [], number=1, this_update=now_dt() + HOUR), "not-yet-valid"
        )
        self.assertCrlRefused(
            make_crl(p.ca, [], number=1, this_update=now_dt() - 3 * HOUR), "expired"
        )

    def test_tampered(self) -> None:
        der = bytearray(make_crl(pki().ca, [5], number=1))
        der[-10] ^= 0xFF
        with self.assertRaises(CrlError) as cm:
            verify_crl(bytes(der), pki().ca.cert, time.time())
        self.assertIn(cm.exception.reason, ("bad-signature", "malformed"))

    @given(st.binary(max_size=300))
    def test_fuzz(self, data: bytes) -> None:
        try:
            verify_crl(data, pki().ca.cert, time.time())
        except CrlError:
            pass


class StateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.revoked = RevokedSerials()
        self.counters = Counters()
        self.path = os.path.join(self.mktemp())
        self.state = CrlState(pki().ca.cert, self.revoked, self.counters, self.path)

    def test_newer_applied_older_ignored(self) -> None:
        p = pki()
        t = time.time()
        update = self.state.offer(make_crl(p.ca, [5], number=2), t)
        self.assertEqual(update.newly_revoked, frozenset({5}))
        self.assertIn(5, self.revoked)
        for stale in (make_crl(p.ca, [], number=1), make_crl(p.ca, [], number=2)):
            with self.assertRaises(CrlError) as cm:
                self.state.offer(stale, t, source="overlay")
            self.assertEqual(cm.exception.reason, "not-newer")
        self.assertIn(5, self.revoked)
        self.assertEqual(
            self.counters.get("security_crl_refused", reason="not-newer", source="overlay"), 2
        )
        update = self.state.offer(make_crl(p.ca, [5, 9], number=3), t, source="overlay")
        self.assertEqual(update.newly_revoked, frozenset({9}))
        self.assertEqual(self.counters.get("security_crl_applied"), 2)

    def test_by_this_update_without_number(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes

        p = pki()

        def crl(at: datetime.datetime, serials: list[int]) -> bytes:
            b = x509.CertificateRevocationListBuilder().issuer_name(p.ca.cert.subject)
            b = b.last_update(at).next_update(at + HOUR)
            for s in serials:
                b = b.add_revoked_certificate(
                    x509.RevokedCertificateBuilder().serial_number(s).revocation_date(at).build()
                )
            return b.sign(p.ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)  # type: ignore[arg-type]

        t = time.time()
        self.state.offer(crl(now_dt() - datetime.timedelta(minutes=1), [4]), t)
        with self.assertRaises(CrlError):
            self.state.offer(crl(now_dt() - datetime.timedelta(minutes=2), []), t)
        self.state.offer(crl(now_dt(), [4, 6]), t)
        self.assertIn(6, self.revoked)

    def test_bad_crl_changes_nothing(self) -> None:
        p = pki()
        t = time.time()
        self.state.offer(make_crl(p.ca, [5], number=2), t)
        with self.assertRaises(CrlError):
            self.state.offer(make_crl(p.ca, [], number=9, signer=p.other_ca), t, source="overlay")
        self.assertIn(5, self.revoked)
        self.assertEqual(self.state.current.number, 2)  # type: ignore[union-attr]

    def test_kept_across_restart(self) -> None:
        p = pki()
        t = time.time()
        self.state.offer(make_crl(p.ca, [5], number=2), t)
        revoked = RevokedSerials()
        again = CrlState(p.ca.cert, revoked, Counters(), self.path)
        update = again.load(t)
        assert update is not None
        self.assertEqual(update.crl.number, 2)
        self.assertIn(5, revoked)
        self.assertIsNone(CrlState(p.ca.cert, RevokedSerials(), Counters(), self.mktemp()).load(t))

    def test_revocation_tears_down_live_session(self) -> None:
        """A pushed CRL revoking B's certificate ends A's session to B and refuses B."""
        p = pki()
        net = Net()
        a = net.add(ADDR_A, p.a, self.revoked)
        net.add(ADDR_B, p.b)
        net.send(ADDR_B, ADDR_A, b"before", IP_A)
        self.assertEqual(a.channels[ADDR_B].state, "established")
        update = self.state.offer(
            make_crl(p.ca, [p.b.cert.serial_number], number=1), time.time(), "overlay"
        )
        for peer, datagram in a.revoke(update.newly_revoked):
            net.deliver(ADDR_A, peer, [datagram])
        self.assertIsNone(a.channels[ADDR_B].current)
        net.send(ADDR_B, ADDR_A, b"after", IP_A)
        self.assertEqual(net.inbox[ADDR_A], [b"before"])
        self.assertEqual(a.counters.get("security_handshakes_refused", reason="revoked"), 1)


class ScheduleTests(SynchronousTestCase):
    def test_start_then_next_update(self) -> None:
        schedule = CrlSchedule(refresh=3600)
        self.assertEqual(schedule.next_fetch(100.0), 100.0)
        p = pki()
        crl = verify_crl(
            make_crl(p.ca, [], number=1, lifetime=datetime.timedelta(minutes=10)),
            p.ca.cert,
            time.time(),
        )
        now = time.time()
        assert crl.next_update is not None
        self.assertEqual(schedule.fetched(now, crl), crl.next_update)
        self.assertEqual(schedule.next_fetch(now + 1), crl.next_update)

    def test_refresh_caps_a_far_next_update(self) -> None:
        schedule = CrlSchedule(refresh=600)
        p = pki()
        crl = verify_crl(
            make_crl(p.ca, [], number=1, lifetime=datetime.timedelta(days=7)),
            p.ca.cert,
            time.time(),
        )
        now = time.time()
        self.assertEqual(schedule.fetched(now, crl), now + 600)

    def test_late_ca_asked_again_soon(self) -> None:
        schedule = CrlSchedule(refresh=3600, retry_initial=30)
        p = pki()
        crl = verify_crl(
            make_crl(p.ca, [], number=1, lifetime=datetime.timedelta(minutes=10)),
            p.ca.cert,
            time.time(),
        )
        assert crl.next_update is not None
        late = crl.next_update + 60
        self.assertEqual(schedule.fetched(late, crl), late + 30)

    def test_backoff(self) -> None:
        schedule = CrlSchedule(refresh=3600, retry_initial=30, retry_max=100)
        self.assertEqual([schedule.failed(0) for _ in range(4)], [30, 60, 100, 100])
        self.assertEqual(schedule.fetched(0, None), 3600)
        self.assertEqual(schedule.failed(0), 30)
