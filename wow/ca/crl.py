"""
The certificate revocation list (RFC 5280 section 5), built sans-I/O.

L{build_crl} is a pure function of the CA key, the revoked serials, the
time and the CRL number; the daemon re-signs it on every revocation and
periodically, before C{nextUpdate}, and serves the DER at C{/crl}.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from wow.ca.issue import utc


def build_crl(
    key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    revoked: list[tuple[str, int]],
    now: float,
    lifetime: int,
    number: int,
) -> bytes:
    """
    A signed DER CRL listing C{revoked} (C{(serial hex, revoked at)} pairs),
    valid from C{now} until C{now + lifetime} (its C{nextUpdate}).
    """
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(utc(now))
        .next_update(utc(now + lifetime))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
    )
    for serial, revoked_at in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(int(serial, 16))
            .revocation_date(utc(revoked_at))
            .build()
        )
    crl = builder.sign(key, hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.DER)
