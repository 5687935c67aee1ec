"""
The rules a peer's certificate must pass beyond OpenSSL's chain check.

OpenSSL proves the chain to the configured CA and the validity dates; these
pure functions add what WOW binds into certificates: not a CA, usable for
signing, not revoked, the IP subjectAltName equal to the virtual IP the peer
sends from (checked with C{service_identity}), and the overlay-address URI
(C{urn:wow:node:<40 hex digits>}) equal to the overlay address the session
runs to.  Each refusal carries a short reason used as a counter label.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Container
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from service_identity import CertificateError, VerificationError
from service_identity.hazmat import IPAddress_ID, IPAddressPattern, verify_service_identity

#: The URI subjectAltName form of a node's 160-bit overlay address (the
#: same form wow-ca accepts in CSRs): lowercase hex, 40 digits.
OVERLAY_URI_PREFIX = "urn:wow:node:"

#: OpenSSL X509_V_ERR_* codes we name; anything else is "chain-error".
OPENSSL_REASONS = {
    7: "bad-signature",  # CERT_SIGNATURE_FAILURE
    9: "not-yet-valid",  # CERT_NOT_YET_VALID
    10: "expired",  # CERT_HAS_EXPIRED
    18: "untrusted-issuer",  # DEPTH_ZERO_SELF_SIGNED_CERT
    19: "untrusted-issuer",  # SELF_SIGNED_CERT_IN_CHAIN
    20: "untrusted-issuer",  # UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: "untrusted-issuer",  # UNABLE_TO_VERIFY_LEAF_SIGNATURE
    23: "revoked",  # CERT_REVOKED
    24: "leaf-is-ca",  # INVALID_CA
    26: "bad-purpose",  # INVALID_PURPOSE
}


def overlay_uri(address: bytes | int) -> str:
    """
    The URI SAN naming an overlay address (20 bytes, or the overlay's int):
    C{urn:wow:node:} and 40 lowercase hex digits, never C{wow:...} text.
    """
    if isinstance(address, int):
        return f"{OVERLAY_URI_PREFIX}{address:040x}"
    return OVERLAY_URI_PREFIX + address.hex()


class Refused(Exception):
    """A peer certificate broke a rule; C{reason} is a short counter label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class PeerCertificate:
    """What C{wow peers} and the router need to know about a peer's cert."""

    serial: int
    subject: str
    ip: str | None
    overlay_uri: str | None
    not_after: float
    fingerprint: str

    @classmethod
    def from_cryptography(cls, cert: x509.Certificate) -> PeerCertificate:
        ips, uris = _sans(cert)
        wow_uris = [u for u in uris if u.startswith(OVERLAY_URI_PREFIX)]
        return cls(
            serial=cert.serial_number,
            subject=cert.subject.rfc4514_string(),
            ip=ips[0] if ips else None,
            overlay_uri=wow_uris[0] if wow_uris else None,
            not_after=cert.not_valid_after_utc.timestamp(),
            fingerprint=hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "serial": f"{self.serial:x}",
            "subject": self.subject,
            "ip": self.ip,
            "overlay_uri": self.overlay_uri,
            "not_after": self.not_after,
            "fingerprint": self.fingerprint,
        }


def _sans(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    uris = list(san.get_values_for_type(x509.UniformResourceIdentifier))
    return ips, uris


def check_peer(
    cert: x509.Certificate,
    *,
    expected_ip: str | None,
    peer_overlay: bytes | None,
    revoked: Container[int],
    require_overlay_uri: bool = False,
) -> PeerCertificate:
    """
    Apply WOW's rules to a peer's end-entity certificate, already chained to
    the CA by OpenSSL.

    @param expected_ip: the virtual IP the peer sends from or that we route
        to it, or L{None} when not known yet (a server answering a new peer:
        the certificate's IP is then adopted, and the router holds every
        inner packet to it).
    @param peer_overlay: the overlay address the session runs to.
    @raise Refused: with the first rule broken.
    """
    if cert.serial_number in revoked:
        raise Refused("revoked", f"certificate serial {cert.serial_number:x} is revoked")
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is not None and bc.ca:
        raise Refused("leaf-is-ca", "a CA certificate cannot identify a node")
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        ku = None
    if ku is not None and not ku.digital_signature:
        raise Refused("bad-key-usage", "certificate key usage does not allow signing")
    info = PeerCertificate.from_cryptography(cert)
    ips, uris = _sans(cert)
    if not ips:
        raise Refused("no-ip-san", "certificate names no virtual IP")
    if len(ips) > 1:
        raise Refused("several-ip-san", "certificate names several virtual IPs")
    if expected_ip is not None:
        try:
            # service_identity's own extract_patterns cannot parse "urn:"
            # URIs with several colons, so it is given the IP patterns only.
            verify_service_identity(
                cert_patterns=[IPAddressPattern(pattern=ipaddress.ip_address(ip)) for ip in ips],
                obligatory_ids=[IPAddress_ID(expected_ip)],
                optional_ids=[],
            )
        except (VerificationError, CertificateError, ValueError):
            raise Refused(
                "ip-mismatch", f"certificate is for {ips[0]}, the peer uses {expected_ip}"
            ) from None
    wow_uris = [u for u in uris if u.startswith(OVERLAY_URI_PREFIX)]
    if len(wow_uris) > 1:
        raise Refused("several-overlay-uri", "certificate names several overlay addresses")
    if wow_uris and peer_overlay is not None and wow_uris[0] != overlay_uri(peer_overlay):
        raise Refused(
            "overlay-mismatch",
            f"certificate is for {wow_uris[0]}, the session runs to {overlay_uri(peer_overlay)}",
        )
    if require_overlay_uri and not wow_uris:
        raise Refused("no-overlay-uri", "certificate names no overlay address")
    return info
