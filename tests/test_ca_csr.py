"""
CSR validation: every kind of bad request is refused with its own reason and
one sentence; arbitrary bytes never raise anything but L{CsrRefused}.
"""

from __future__ import annotations

import base64

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.ca_support import b64, ec_key, make_csr, rsa_key
from wow.ca.csr import CsrRefused, CsrRules, check_request, decode_body, is_hostname

SRC = "127.0.0.5"
OVERLAY = "urn:wow:node:" + "ab" * 20


def flip_signature(der: bytes) -> bytes:
    """The same request with one bit of its signature changed."""
    return der[:-1] + bytes([der[-1] ^ 0x01])


class ValidRequestTests(SynchronousTestCase):
    def test_minimal_request_passes(self) -> None:
        v = check_request(b64(make_csr()), SRC, CsrRules())
        self.assertEqual((v.ip, v.hostname, v.overlay), (SRC, "node1", None))
        self.assertEqual(len(v.digest), 64)

    def test_dns_equal_to_cn_and_overlay_uri_pass(self) -> None:
        v = check_request(
            b64(make_csr(cn="Node1.wow", dns=("node1.wow",), uris=(OVERLAY,))), SRC, CsrRules()
        )
        self.assertEqual((v.hostname, v.overlay), ("node1.wow", OVERLAY))

    def test_pem_and_raw_der_bodies_pass(self) -> None:
        der = make_csr()
        pem = (
            b"-----BEGIN CERTIFICATE REQUEST-----\n"
            + b64(der)
            + b"-----END CERTIFICATE REQUEST-----\n"
        )
        self.assertEqual(check_request(pem, SRC, CsrRules()).der, der)
        self.assertEqual(check_request(der, SRC, CsrRules()).der, der)

    def test_ipv4_mapped_source(self) -> None:
        self.assertEqual(check_request(b64(make_csr()), "::ffff:127.0.0.5", CsrRules()).ip, SRC)

    def test_rsa_2048_and_ed25519_pass(self) -> None:
        check_request(b64(make_csr(rsa_key(2048))), SRC, CsrRules())
        check_request(b64(make_csr(ed25519.Ed25519PrivateKey.generate())), SRC, CsrRules())

    def test_challenge_password_is_ignored_but_basic_constraints_false_allowed(self) -> None:
        der = make_csr(extensions=((x509.BasicConstraints(ca=False, path_length=None), True),))
        check_request(b64(der), SRC, CsrRules())


class RefusalTableTests(SynchronousTestCase):
    """Each bad request → (reason, HTTP status, a word of the sentence)."""

    def assertRefused(
        self,
        body: bytes,
        reason: str,
        status: int,
        word: str,
        rules: CsrRules | None = None,
        source: str = SRC,
    ) -> None:
        with self.assertRaises(CsrRefused) as cm:
            check_request(body, source, rules or CsrRules())
        e = cm.exception
        self.assertEqual((e.reason, e.status), (reason, status), e.sentence)
        self.assertIn(word, e.sentence)
        self.assertNotIn("\n", e.sentence)

    def test_table(self) -> None:
        key_usage = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
        cases: list[tuple[str, bytes, str, int, str]] = [
            ("no SAN", b64(make_csr(san=False)), "no-san", 400, "subjectAltName"),
            ("two IP SANs", b64(make_csr(ips=(SRC, "127.0.0.6"))), "ip-count", 400, "exactly one"),
            ("no IP SAN", b64(make_csr(ips=(), dns=("node1",))), "ip-count", 400, "not 0"),
            ("wrong IP", b64(make_csr(ips=("10.0.0.9",))), "wrong-ip", 403, "10.0.0.9"),
            (
                "CA:true",
                b64(
                    make_csr(extensions=((x509.BasicConstraints(ca=True, path_length=None), True),))
                ),
                "ca-request",
                400,
                "CA",
            ),
            (
                "extra extension",
                b64(make_csr(extensions=((key_usage, True),))),
                "extra-extension",
                400,
                "keyUsage",
            ),
            ("RSA-1024", b64(make_csr(rsa_key(1024))), "weak-key", 400, "1024"),
            ("P-192", b64(make_csr(ec_key(ec.SECP192R1()))), "key-type", 400, "secp192r1"),
            (
                "bad signature",
                b64(flip_signature(make_csr(rsa_key(2048)))),
                "bad-signature",
                400,
                "signature",
            ),
            (
                "bad EC signature",
                b64(flip_signature(make_csr())),
                "bad-signature",
                400,
                "signature",
            ),
            ("no subject", b64(make_csr(cn=None)), "subject", 400, "common name"),
            (
                "two subject attributes",
                b64(
                    make_csr(
                        subject=[
                            x509.NameAttribute(NameOID.COMMON_NAME, "node1"),
                            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x"),
                        ]
                    )
                ),
                "subject",
                400,
                "exactly one",
            ),
            ("CN not a host name", b64(make_csr(cn="not a host")), "hostname", 400, "host name"),
            ("DNS SAN differs", b64(make_csr(dns=("other",))), "san-dns", 400, "DNS"),
            (
                "email SAN",
                b64(make_csr(others=(x509.RFC822Name("a@b.c"),))),
                "san-type",
                400,
                "RFC822Name",
            ),
            ("bad URI", b64(make_csr(uris=("http://evil",))), "san-uri", 400, "overlay"),
            (
                "two URIs",
                b64(make_csr(uris=(OVERLAY, OVERLAY.replace("ab", "cd")))),
                "san-uri",
                400,
                "URI",
            ),
            (
                "IP network SAN",
                b64(
                    make_csr(
                        ips=(),
                        others=(x509.IPAddress(__import__("ipaddress").ip_network("127.0.0.0/8")),),
                    )
                ),
                "san-type",
                400,
                "network",
            ),
            ("empty body", b"", "malformed", 400, "empty"),
            ("not base64", b"%%%% not base64 at all", "malformed", 400, "base64"),
            (
                "base64 of garbage",
                base64.b64encode(b"\x30\x03garbage"),
                "malformed",
                400,
                "PKCS#10",
            ),
            (
                "a certificate, not a request",
                b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
                "malformed",
                400,
                "PEM",
            ),
            ("oversized", b"A" * 20000, "oversized", 413, "larger"),
        ]
        for name, body, reason, status, word in cases:
            with self.subTest(name):
                self.assertRefused(body, reason, status, word)

    def test_address_outside_the_wow(self) -> None:
        rules = CsrRules(networks=("10.128.0.0/16",))
        self.assertRefused(b64(make_csr()), "ip-outside", 403, "10.128.0.0/16", rules)
        v = check_request(b64(make_csr(ips=("10.128.3.4",))), "10.128.3.4", rules)
        self.assertEqual(v.ip, "10.128.3.4")

    def test_key_type_switched_off(self) -> None:
        self.assertRefused(
            b64(make_csr()), "key-type", 400, "secp256r1", CsrRules(key_types=("rsa",))
        )
        self.assertRefused(
            b64(make_csr(rsa_key(2048))), "key-type", 400, "RSA", CsrRules(key_types=("ec-p256",))
        )
        self.assertRefused(
            b64(make_csr(rsa_key(2048))), "weak-key", 400, "3072", CsrRules(rsa_min_bits=3072)
        )

    def test_host_names(self) -> None:
        for good in ("a", "node-1", "n1.wow", "x" * 63, "a.b.c."):
            self.assertTrue(is_hostname(good), good)
        for bad in ("", "-a", "a-", "a..b", "x" * 64, "a b", "a_b", "é", "a" * 254):
            self.assertFalse(is_hostname(bad), bad)


class FuzzTests(SynchronousTestCase):
    @given(st.binary(max_size=3000))
    def test_arbitrary_bytes_only_refused(self, body: bytes) -> None:
        try:
            check_request(body, SRC, CsrRules())
        except CsrRefused as e:
            self.assertTrue(e.sentence)

    @given(st.binary(max_size=600))
    def test_arbitrary_base64_only_refused(self, data: bytes) -> None:
        try:
            check_request(base64.encodebytes(data), SRC, CsrRules())
        except CsrRefused:
            pass

    @given(st.integers(min_value=0), st.integers(min_value=0, max_value=255))
    def test_mutated_request_only_refused_or_identical(self, where: int, value: int) -> None:
        der = bytearray(_FUZZ_BASE)
        der[where % len(der)] = value
        try:
            v = check_request(bytes(der), SRC, CsrRules())
        except CsrRefused:
            return
        # A mutation that still verifies must not have changed what is certified.
        self.assertEqual((v.ip, v.hostname), (SRC, "node1"))

    def test_round_trip_through_every_encoding(self) -> None:
        der = make_csr()
        for body in (der, b64(der), base64.b64encode(der)):
            self.assertEqual(decode_body(body, 16384), der)


_FUZZ_BASE = make_csr(ec_key())
