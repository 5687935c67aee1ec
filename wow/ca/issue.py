"""
The signer: creating the CA, issuing node and server certificates.

Pure functions and one small class over C{cryptography}; the time and the
serial number come in as arguments so tests fix them and the store decides
uniqueness.  Also the EST wire format for certificates (base64 PKCS#7
certs-only, RFC 7030 section 4.1.3).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
import secrets

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from wow.ca.csr import ValidCsr
from wow.util.durable import atomic_write

SERIAL_BITS = 128


def new_serial() -> int:
    """A random, positive, non-zero 128-bit serial number (RFC 5280 4.1.2.2)."""
    while True:
        serial = secrets.randbits(SERIAL_BITS)
        if serial:
            return serial


def serial_hex(serial: int) -> str:
    return f"{serial:032x}"


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, lowercase hex: what admins compare."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def utc(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(int(seconds), tz=datetime.UTC)


def create_ca(
    name: str, lifetime_days: int, now: float
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A fresh EC P-256 key and its self-signed CA certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(new_serial())
        .not_valid_before(utc(now - 300))
        .not_valid_after(utc(now + lifetime_days * 86400))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def load_or_create_ca(
    state_dir: str, name: str, lifetime_days: int, now: float
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, bool]:
    """
    The CA key (C{ca.key}, mode 0600) and certificate (C{ca.pem}) in
    C{state_dir}, created on first start.  The key is written before the
    certificate, so a crash in between leaves a key without certificate,
    which is simply replaced on the next start.

    @return: key, certificate, and whether they were just created.
    @raise ValueError: when the existing files are unreadable or do not match.
    """
    key_path = os.path.join(state_dir, "ca.key")
    cert_path = os.path.join(state_dir, "ca.pem")
    if os.path.exists(cert_path):
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path} is not an EC private key")
        if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
            raise ValueError(f"{key_path} does not match {cert_path}")
        return key, cert, False
    key, cert = create_ca(name, lifetime_days, now)
    atomic_write(key_path, private_pem(key), mode=0o600)
    atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return key, cert, True


def private_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class Signer:
    """Issues end-entity certificates under one CA key."""

    def __init__(
        self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate, lifetime: int
    ) -> None:
        self.key = key
        self.cert = cert
        self.lifetime = lifetime
        self._aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())

    def issue(self, request: ValidCsr, serial: int, now: float) -> x509.Certificate:
        """A node certificate for a validated request."""
        names: list[x509.GeneralName] = [
            x509.IPAddress(ipaddress.ip_address(request.ip)),
            x509.DNSName(request.hostname),
        ]
        if request.overlay:
            names.append(x509.UniformResourceIdentifier(request.overlay))
        return self._build(
            request.csr.public_key(), request.hostname, names, serial, now, self.lifetime
        )

    def issue_server(
        self,
        public_key: ec.EllipticCurvePublicKey,
        names: tuple[str, ...],
        serial: int,
        now: float,
        lifetime: int,
    ) -> x509.Certificate:
        """The CA's own HTTPS certificate for its addresses and host names."""
        general: list[x509.GeneralName] = []
        for name in names:
            try:
                general.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                general.append(x509.DNSName(name))
        return self._build(public_key, names[0], general, serial, now, lifetime)

    def _build(
        self,
        public_key: object,
        cn: str,
        names: list[x509.GeneralName],
        serial: int,
        now: float,
        lifetime: int,
    ) -> x509.Certificate:
        is_rsa = isinstance(public_key, rsa.RSAPublicKey)
        not_after = min(now + lifetime, self.cert.not_valid_after_utc.timestamp())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(serial)
            .not_valid_before(utc(now - 60))
            .not_valid_after(utc(not_after))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=is_rsa,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)  # type: ignore[arg-type]
            .add_extension(self._aki, critical=False)
        )
        return builder.sign(self.key, hashes.SHA256())

    def issued_by_me(self, cert: x509.Certificate) -> bool:
        """Whether C{cert} carries this CA's valid signature."""
        try:
            cert.verify_directly_issued_by(self.cert)
        except Exception:
            return False
        return True


def est_certs(certs: list[x509.Certificate]) -> bytes:
    """The RFC 7030 body: base64 of a DER PKCS#7 certs-only structure, in lines."""
    der = pkcs7.serialize_certificates(certs, serialization.Encoding.DER)
    return base64.encodebytes(der)


def parse_est_certs(body: bytes) -> list[x509.Certificate]:
    """The certificates of an RFC 7030 certs-only body (base64 or raw DER)."""
    stripped = body.strip()
    try:
        der = base64.b64decode(b"".join(stripped.split()), validate=True)
    except ValueError:
        der = body
    return pkcs7.load_der_pkcs7_certificates(der)
