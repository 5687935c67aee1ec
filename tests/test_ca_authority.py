"""
The authority without HTTP: issuing, the manual queue, replays, revocation,
the CRL and re-enrolment, on a L{task.Clock} and a real SQLite store.
"""

from __future__ import annotations

import ipaddress

from cryptography import x509
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from tests.ca_support import NOW, CaFixture, b64, ec_key, make_csr
from wow.ca.authority import AdminError, Issued, Outcome, Refusal, Waiting
from wow.ca.config import LdapSection
from wow.ca.crl import build_crl
from wow.ca.csr import CsrRules, check_request
from wow.ca.issue import Signer, create_ca, serial_hex
from wow.ca.policy import AutoPolicy, ISigningPolicy, LdapPolicy, ManualPolicy
from wow.ca.store import CertRecord, DuplicateSerial

IP = "127.0.0.5"
OVERLAY = "urn:wow:node:" + "0f" * 20


def result(d: object) -> Outcome:
    out: list[Outcome] = []
    d.addCallback(out.append)  # type: ignore[attr-defined]
    assert out, "the deferred has not fired"
    return out[0]


class PolicyInterfaceTests(SynchronousTestCase):
    def test_every_policy_provides_the_interface(self) -> None:
        for policy in (AutoPolicy(), ManualPolicy(), LdapPolicy(LdapSection(), None)):
            self.assertTrue(verifyObject(ISigningPolicy, policy))


class AutoTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ca = CaFixture(self.mktemp())

    def enroll(self, der: bytes, source: str = IP) -> Outcome:
        return result(self.ca.authority.enroll(b64(der), source))

    def test_issues_bound_certificate(self) -> None:
        out = self.enroll(make_csr(uris=(OVERLAY,)))
        assert isinstance(out, Issued)
        cert = out.cert
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.IPAddress), [ipaddress.ip_address(IP)])
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["node1"])
        self.assertEqual(san.get_values_for_type(x509.UniformResourceIdentifier), [OVERLAY])
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        self.assertFalse(bc.ca)
        self.assertLess(cert.serial_number, 2**128)
        self.assertGreater(cert.serial_number, 0)
        self.assertEqual(cert.not_valid_after_utc.timestamp(), NOW + 86400)
        cert.verify_directly_issued_by(self.ca.cert)
        rec = self.ca.store.cert(serial_hex(cert.serial_number))
        assert rec is not None
        self.assertEqual(
            (rec.ip, rec.hostname, rec.via, rec.state(NOW)), (IP, "node1", "auto", "valid")
        )

    def test_serials_are_unique_and_random(self) -> None:
        serials = set()
        for i in range(30):
            out = self.enroll(make_csr(ips=(f"127.0.1.{i}",)), f"127.0.1.{i}")
            assert isinstance(out, Issued)
            serials.add(out.cert.serial_number)
        self.assertEqual(len(serials), 30)
        self.assertTrue(any(s.bit_length() > 120 for s in serials))

    def test_replay_refused_nothing_stored(self) -> None:
        der = make_csr()
        self.assertIsInstance(self.enroll(der), Issued)
        out = self.enroll(der)
        assert isinstance(out, Refusal)
        self.assertEqual((out.status, out.reason), (409, "replay"))
        self.assertEqual(len(self.ca.store.certs()), 1)
        self.assertEqual(self.ca.authority.counters.get("ca_refused", reason="replay"), 1)

    def test_same_key_twice_refused(self) -> None:
        key = ec_key()
        self.assertIsInstance(self.enroll(make_csr(key)), Issued)
        out = self.enroll(make_csr(key, cn="other"))
        assert isinstance(out, Refusal)
        self.assertEqual((out.status, out.reason), (409, "duplicate-key"))

    def test_bad_requests_counted_nothing_stored(self) -> None:
        for der, src in ((make_csr(ips=("127.0.0.9",)), IP), (make_csr(san=False), IP)):
            out = self.enroll(der, src)
            self.assertIsInstance(out, Refusal)
        self.assertEqual(self.ca.store.certs(), [])
        self.assertEqual(self.ca.authority.counters.get("ca_refused"), 2)
        self.assertEqual(self.ca.authority.counters.get("ca_refused", reason="wrong-ip"), 1)

    def test_new_certificate_supersedes_the_old_one(self) -> None:
        first = self.enroll(make_csr())
        second = self.enroll(make_csr())
        assert isinstance(first, Issued) and isinstance(second, Issued)
        old = self.ca.store.cert(first.record.serial)
        assert old is not None
        self.assertEqual((old.state(NOW), old.revoke_reason), ("revoked", "superseded"))
        self.assertEqual(self.ca.revocations, 1)

    def test_store_refuses_a_used_serial(self) -> None:
        out = self.enroll(make_csr())
        assert isinstance(out, Issued)
        dup = CertRecord(**{**out.record.__dict__, "csr_sha256": None, "ip": "127.0.0.77"})
        self.assertRaises(DuplicateSerial, self.ca.store.add_cert, dup)
        self.assertEqual(len(self.ca.store.certs()), 1)


class ManualTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ca = CaFixture(self.mktemp(), policy=ManualPolicy())
        self.der = make_csr()

    def poll(self, der: bytes | None = None) -> Outcome:
        return result(self.ca.authority.enroll(b64(der or self.der), IP))

    def test_queue_approve_collect(self) -> None:
        out = self.poll()
        assert isinstance(out, Waiting)
        self.assertEqual(out.retry_after, 7)
        self.assertIsInstance(self.poll(), Waiting)  # a poll does not queue twice
        [pending] = self.ca.authority.pending()
        self.assertEqual(
            (pending["id"], pending["ip"], pending["hostname"]), (out.request_id, IP, "node1")
        )
        approved = self.ca.authority.approve(out.request_id)
        self.assertEqual(approved["via"], "manual")
        self.assertEqual(self.ca.authority.pending(), [])
        issued = self.poll()
        assert isinstance(issued, Issued)
        self.assertEqual(serial_hex(issued.cert.serial_number), approved["serial"])
        replay = self.poll()
        assert isinstance(replay, Refusal)
        self.assertEqual(replay.reason, "replay")

    def test_reject(self) -> None:
        out = self.poll()
        assert isinstance(out, Waiting)
        self.ca.authority.reject(out.request_id, "unknown machine")
        refused = self.poll()
        assert isinstance(refused, Refusal)
        self.assertEqual((refused.status, refused.reason), (403, "rejected"))
        self.assertIn("unknown machine", refused.sentence)
        self.assertEqual(self.ca.store.certs(), [])

    def test_admin_errors(self) -> None:
        self.assertRaises(AdminError, self.ca.authority.approve, 99)
        out = self.poll()
        assert isinstance(out, Waiting)
        self.ca.authority.reject(out.request_id)
        with self.assertRaises(AdminError) as cm:
            self.ca.authority.approve(out.request_id)
        self.assertIn("rejected", str(cm.exception))
        self.assertRaises(AdminError, self.ca.authority.revoke, "nothing-here")

    def test_second_request_for_same_ip_refused(self) -> None:
        self.assertIsInstance(self.poll(), Waiting)
        out = self.poll(make_csr())
        assert isinstance(out, Refusal)
        self.assertEqual((out.status, out.reason), (409, "duplicate-pending"))
        self.assertEqual(len(self.ca.authority.pending()), 1)

    def test_queue_survives_reopen(self) -> None:
        from wow.ca.store import Store

        out = self.poll()
        assert isinstance(out, Waiting)
        path = self.ca.store.path
        self.ca.store.close()
        store = Store(path)
        self.assertEqual([r.id for r in store.requests("pending")], [out.request_id])

    def test_pending_expiry(self) -> None:
        self.assertIsInstance(self.poll(), Waiting)
        self.assertEqual(self.ca.store.expire_pending(NOW + 1), 1)
        out = self.poll()
        assert isinstance(out, Refusal)
        self.assertIn("expired", out.sentence)


class RevocationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ca = CaFixture(self.mktemp())
        self.issued = []
        for i in range(3):
            out = result(
                self.ca.authority.enroll(
                    b64(make_csr(cn=f"n{i}", ips=(f"127.0.0.{10 + i}",))), f"127.0.0.{10 + i}"
                )
            )
            assert isinstance(out, Issued)
            self.issued.append(out)

    def crl(self) -> x509.CertificateRevocationList:
        store, now = self.ca.store, self.ca.clock.seconds()
        der = build_crl(
            self.ca.key, self.ca.cert, store.revoked(now), now, 3600, store.next_crl_number()
        )
        return x509.load_der_x509_crl(der)

    def test_revoke_by_serial_ip_and_hostname(self) -> None:
        a, b, c = (o.record.serial for o in self.issued)
        colons = ":".join(a[i : i + 2] for i in range(0, 32, 2)).upper()
        self.assertEqual(self.ca.authority.revoke(colons), [a])
        self.assertEqual(self.ca.authority.revoke("127.0.0.11"), [b])
        self.assertEqual(self.ca.authority.revoke("N2"), [c])
        self.assertEqual(self.ca.revocations, 3)
        states = {r["serial"]: r["state"] for r in self.ca.authority.certificates()}
        self.assertEqual(set(states.values()), {"revoked"})

    def test_crl_lists_revoked_and_has_next_update(self) -> None:
        self.ca.authority.revoke("127.0.0.10")
        crl = self.crl()
        self.assertTrue(crl.is_signature_valid(self.ca.cert.public_key()))  # type: ignore[arg-type]
        self.assertEqual([r.serial_number for r in crl], [self.issued[0].cert.serial_number])
        self.assertEqual(crl.next_update_utc.timestamp() - crl.last_update_utc.timestamp(), 3600)
        first = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        second = self.crl().extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        self.assertEqual(second, first + 1)

    def test_expired_revocations_leave_the_crl(self) -> None:
        self.ca.authority.revoke("127.0.0.10")
        self.ca.clock.advance(86400 + 1)
        self.assertEqual(list(self.crl()), [])


class ReenrollTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ca = CaFixture(self.mktemp())
        out = result(self.ca.authority.enroll(b64(make_csr()), IP))
        assert isinstance(out, Issued)
        self.current = out

    def reenroll(
        self, cert: x509.Certificate | None, der: bytes | None = None, source: str = IP
    ) -> Outcome:
        return result(self.ca.authority.reenroll(b64(der or make_csr()), source, cert))

    def test_renewal_replaces_certificate(self) -> None:
        out = self.reenroll(self.current.cert)
        assert isinstance(out, Issued)
        self.assertEqual(out.record.via, "reenroll")
        self.assertEqual(out.record.ip, IP)
        old = self.ca.store.cert(self.current.record.serial)
        assert old is not None
        self.assertEqual(old.revoke_reason, "superseded")

    def test_refusals(self) -> None:
        foreign = Signer(*create_ca("Other", 10, NOW), 3600)
        foreign_cert = foreign.issue(check_request(b64(make_csr()), IP, CsrRules()), 5, NOW)
        cases = [
            (None, make_csr(), IP, "no-client-cert"),
            (foreign_cert, make_csr(), IP, "foreign-client-cert"),
            (self.current.cert, make_csr(cn="renamed"), IP, "reenroll-hostname"),
            (self.current.cert, make_csr(ips=("127.0.0.6",)), "127.0.0.6", "reenroll-ip"),
            (self.current.cert, make_csr(ips=("127.0.0.6",)), IP, "wrong-ip"),
        ]
        for cert, der, src, reason in cases:
            with self.subTest(reason):
                out = self.reenroll(cert, der, src)
                assert isinstance(out, Refusal)
                self.assertEqual(out.reason, reason)
        self.ca.authority.revoke(self.current.record.serial)
        out = self.reenroll(self.current.cert)
        assert isinstance(out, Refusal)
        self.assertEqual(out.reason, "revoked-client-cert")
        self.assertEqual(len(self.ca.store.certs()), 1)

    def test_expired_client_certificate(self) -> None:
        self.ca.clock.advance(86400 * 2)
        out = self.reenroll(self.current.cert)
        assert isinstance(out, Refusal)
        self.assertEqual(out.reason, "expired-client-cert")


class AuthorityFuzzTests(SynchronousTestCase):
    """Whatever arrives, the authority answers with a refusal and stores nothing."""

    def setUp(self) -> None:
        self.ca = CaFixture(self.mktemp(), policy=ManualPolicy())

    @given(st.binary(max_size=2000), st.sampled_from(["127.0.0.5", "::1", "::ffff:127.0.0.5"]))
    def test_arbitrary_bodies(self, body: bytes, source: str) -> None:
        out = result(self.ca.authority.enroll(body, source))
        self.assertIsInstance(out, Refusal)
        out = result(self.ca.authority.reenroll(body, source, None))
        self.assertIsInstance(out, Refusal)
        self.assertEqual(self.ca.store.certs(), [])
        self.assertEqual(self.ca.store.requests(None), [])
