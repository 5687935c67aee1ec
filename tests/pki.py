"""
A test PKI made with C{cryptography}: a CA, node certificates shaped like the
ones wow-ca issues (IP SAN + overlay-address URI SAN, EKU server+client),
and the bad ones the security tests need.  Built once per process.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import time
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from wow.ca.issue import create_ca
from wow.security.verify import overlay_uri

UTC = datetime.UTC

#: Overlay addresses (20 bytes) and virtual IPs of the test nodes.
ADDR_A = bytes.fromhex("11" * 20)
ADDR_B = bytes.fromhex("22" * 20)
ADDR_C = bytes.fromhex("33" * 20)
IP_A = "10.128.0.2"
IP_B = "10.128.0.3"
IP_C = "10.128.0.4"


@dataclass(frozen=True)
class Identity:
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    cert: x509.Certificate


def _now() -> datetime.datetime:
    return datetime.datetime.now(UTC)


def _ca(name: str) -> Identity:
    """A CA made exactly as wow-ca makes its own (one year, P-256)."""
    key, cert = create_ca(name, 365, time.time())
    return Identity(key, cert)


def node_cert(
    ca: Identity,
    ip: str | None,
    overlay: bytes | None,
    *,
    ca_flag: bool = False,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    rsa_key: bool = False,
    serial: int | None = None,
) -> Identity:
    """A node certificate signed by C{ca}."""
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    key = (
        rsa.generate_private_key(65537, 2048)
        if rsa_key
        else ec.generate_private_key(ec.SECP256R1())
    )
    now = _now()
    names: list[x509.GeneralName] = []
    if ip is not None:
        names.append(x509.IPAddress(ipaddress.ip_address(ip)))
    if overlay is not None:
        names.append(x509.UniformResourceIdentifier(overlay_uri(overlay)))
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ip or "node")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(not_before or now - datetime.timedelta(hours=1))
        .not_valid_after(not_after or now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca_flag, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return Identity(key, builder.sign(ca.key, hashes.SHA256()))


def make_crl(
    ca: Identity,
    serials: list[int],
    *,
    number: int,
    this_update: datetime.datetime | None = None,
    lifetime: datetime.timedelta = datetime.timedelta(hours=1),
    signer: Identity | None = None,
) -> bytes:
    """A DER CRL of C{ca} revoking C{serials} (signed by C{signer} to forge one)."""
    from cryptography.hazmat.primitives import serialization

    this_update = this_update or _now() - datetime.timedelta(seconds=5)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(this_update)
        .next_update(this_update + lifetime)
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(this_update)
            .build()
        )
    crl = builder.sign((signer or ca).key, hashes.SHA256())  # type: ignore[arg-type]
    return crl.public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True)
class TestPki:
    ca: Identity
    other_ca: Identity
    a: Identity
    b: Identity
    c: Identity
    a_rsa: Identity
    expired: Identity
    not_yet_valid: Identity
    wrong_ca: Identity
    wrong_ip: Identity
    is_ca: Identity
    revoked: Identity
    no_uri: Identity
    no_ip: Identity


@functools.cache
def pki() -> TestPki:
    ca = _ca("WOW test CA")
    # Same name, other key: only the signature tells them apart.
    other = _ca("WOW test CA")
    now = _now()
    return TestPki(
        ca=ca,
        other_ca=other,
        a=node_cert(ca, IP_A, ADDR_A),
        b=node_cert(ca, IP_B, ADDR_B),
        c=node_cert(ca, IP_C, ADDR_C),
        a_rsa=node_cert(ca, IP_A, ADDR_A, rsa_key=True),
        expired=node_cert(
            ca,
            IP_A,
            ADDR_A,
            not_before=now - datetime.timedelta(days=10),
            not_after=now - datetime.timedelta(days=1),
        ),
        not_yet_valid=node_cert(ca, IP_A, ADDR_A, not_before=now + datetime.timedelta(days=1)),
        wrong_ca=node_cert(other, IP_A, ADDR_A),
        wrong_ip=node_cert(ca, "10.128.0.99", ADDR_A),
        is_ca=node_cert(ca, IP_A, ADDR_A, ca_flag=True),
        revoked=node_cert(ca, IP_A, ADDR_A),
        no_uri=node_cert(ca, IP_A, None),
        no_ip=node_cert(ca, None, ADDR_A),
    )
