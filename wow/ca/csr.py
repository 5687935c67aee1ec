"""
Validation of EST certificate requests (sans-I/O).

L{check_request} is fed the raw HTTP body, the address the connection came
from and the configured rules, and either returns a L{ValidCsr} or raises
L{CsrRefused} carrying a short reason code (the metrics label) and one
sentence for the HTTP error body.  It never touches a socket, a file or the
clock, so every refusal is table-tested.

The rules bind a certificate to a virtual IP: exactly one IP subjectAltName,
equal to the connection's source address; a host name as the only subject
attribute; no CA or other extensions; an accepted key type and size.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtensionOID, NameOID

#: The URI SAN form of a node's 160-bit overlay address.
OVERLAY_URI_PREFIX = "urn:wow:node:"
_OVERLAY_URI = re.compile(r"^urn:wow:node:[0-9a-f]{40}$")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_CURVES = {"secp256r1": "ec-p256", "secp384r1": "ec-p384", "secp521r1": "ec-p521"}
#: RSA moduli above this are refused: they only cost us CPU.
RSA_MAX_BITS = 8192


class CsrRefused(Exception):
    """A request we will not sign: C{reason} labels the metric, C{sentence} tells the client."""

    def __init__(self, reason: str, sentence: str, status: int = 400) -> None:
        super().__init__(sentence)
        self.reason = reason
        self.sentence = sentence
        self.status = status


@dataclass(frozen=True)
class CsrRules:
    """What an acceptable request looks like (from C{[issue]})."""

    key_types: tuple[str, ...] = ("ec-p256", "ec-p384", "rsa", "ed25519")
    rsa_min_bits: int = 2048
    max_bytes: int = 16384
    #: Networks certified addresses must lie in (the WOW's virtual subnets); () = any.
    networks: tuple[str, ...] = ()


@dataclass(frozen=True)
class ValidCsr:
    """A request that passed every check, with what the signer needs."""

    csr: x509.CertificateSigningRequest
    der: bytes
    #: SHA-256 of the DER request, hex: the identity used against replays.
    digest: str
    #: SHA-256 of the DER SubjectPublicKeyInfo, hex: detects a key certified twice.
    spki_digest: str
    ip: str
    hostname: str
    overlay: str | None


def is_hostname(name: str) -> bool:
    """A DNS host name (one or more labels of letters, digits and hyphens)."""
    name = name.rstrip(".")
    if not name or len(name) > 253:
        return False
    return all(_LABEL.match(label) for label in name.split("."))


def normalise_ip(address: str) -> str:
    """The canonical text of an address, unwrapping IPv4-mapped IPv6."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def decode_body(body: bytes, max_bytes: int) -> bytes:
    """
    The DER request inside an EST body: base64 (RFC 7030), PEM, or raw DER.

    @raise CsrRefused: too large, or not any of those encodings.
    """
    if len(body) > max_bytes:
        raise CsrRefused(
            "oversized", f"the request body is larger than {max_bytes} bytes", status=413
        )
    stripped = body.strip()
    if not stripped:
        raise CsrRefused("malformed", "the request body is empty")
    if stripped.startswith(b"-----BEGIN"):
        try:
            return x509.load_pem_x509_csr(stripped).public_bytes(serialization.Encoding.DER)
        except ValueError:
            raise CsrRefused(
                "malformed", "the PEM body is not a PKCS#10 certificate request"
            ) from None
    try:
        return base64.b64decode(b"".join(stripped.split()), validate=True)
    except (binascii.Error, ValueError):
        if stripped[:1] == b"\x30":
            return body
        raise CsrRefused(
            "malformed", "the body is not a base64-encoded PKCS#10 certificate request"
        ) from None


def parse_csr(der: bytes) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_der_x509_csr(der)
        # Force the lazy parts to parse now, so errors surface here.
        csr.subject  # noqa: B018
        csr.public_key()
        return csr
    except Exception:
        raise CsrRefused(
            "malformed", "the body is not a valid PKCS#10 certificate request"
        ) from None


def check_key(csr: x509.CertificateSigningRequest, rules: CsrRules) -> None:
    key = csr.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        kind = _CURVES.get(key.curve.name)
        if kind is None or kind not in rules.key_types:
            raise CsrRefused("key-type", f"elliptic curve {key.curve.name} keys are not accepted")
        return
    if isinstance(key, rsa.RSAPublicKey):
        if "rsa" not in rules.key_types:
            raise CsrRefused("key-type", "RSA keys are not accepted")
        if key.key_size < rules.rsa_min_bits:
            raise CsrRefused(
                "weak-key",
                f"the RSA key has {key.key_size} bits "
                f"but at least {rules.rsa_min_bits} are required",
            )
        if key.key_size > RSA_MAX_BITS:
            raise CsrRefused(
                "key-type", f"RSA keys larger than {RSA_MAX_BITS} bits are not accepted"
            )
        return
    if isinstance(key, ed25519.Ed25519PublicKey):
        if "ed25519" not in rules.key_types:
            raise CsrRefused("key-type", "Ed25519 keys are not accepted")
        return
    raise CsrRefused(
        "key-type", f"{type(key).__name__.replace('PublicKey', '')} keys are not accepted"
    )


def check_subject(csr: x509.CertificateSigningRequest) -> str:
    attrs = list(csr.subject)
    if len(attrs) != 1 or attrs[0].oid != NameOID.COMMON_NAME:
        raise CsrRefused("subject", "the subject must be exactly one common name (the host name)")
    value = attrs[0].value
    hostname = value if isinstance(value, str) else value.decode(errors="replace")
    if not is_hostname(hostname):
        raise CsrRefused("hostname", f"the common name {hostname[:64]!r} is not a host name")
    return hostname.rstrip(".").lower()


def check_extensions(csr: x509.CertificateSigningRequest, hostname: str) -> tuple[str, str | None]:
    """The one IP SAN and the optional overlay URI; refuse anything else."""
    try:
        extensions = csr.extensions
    except Exception:
        raise CsrRefused("malformed", "the request's extensions cannot be parsed") from None
    san: x509.SubjectAlternativeName | None = None
    for ext in extensions:
        if ext.oid == ExtensionOID.SUBJECT_ALTERNATIVE_NAME:
            assert isinstance(ext.value, x509.SubjectAlternativeName)
            san = ext.value
        elif ext.oid == ExtensionOID.BASIC_CONSTRAINTS:
            assert isinstance(ext.value, x509.BasicConstraints)
            if ext.value.ca:
                raise CsrRefused("ca-request", "the request asks for a CA certificate (CA:TRUE)")
        else:
            name = getattr(ext.oid, "_name", None) or ext.oid.dotted_string
            raise CsrRefused(
                "extra-extension", f"the request carries an extension not allowed here ({name})"
            )
    if san is None:
        raise CsrRefused("no-san", "the request has no subjectAltName with the node's IP address")
    ips: list[str] = []
    uris: list[str] = []
    for gn in san:
        if isinstance(gn, x509.IPAddress):
            if not isinstance(gn.value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
                raise CsrRefused(
                    "san-type", "an IP subjectAltName must be an address, not a network"
                )
            ips.append(str(gn.value))
        elif isinstance(gn, x509.DNSName):
            if gn.value.rstrip(".").lower() != hostname:
                raise CsrRefused(
                    "san-dns", "a DNS subjectAltName must equal the common name (the host name)"
                )
        elif isinstance(gn, x509.UniformResourceIdentifier):
            uris.append(gn.value)
        else:
            raise CsrRefused(
                "san-type", f"subjectAltName entries of type {type(gn).__name__} are not allowed"
            )
    if len(ips) != 1:
        raise CsrRefused(
            "ip-count",
            f"the request must carry exactly one IP subjectAltName, not {len(ips)}",
        )
    if len(uris) > 1 or (uris and not _OVERLAY_URI.match(uris[0])):
        raise CsrRefused(
            "san-uri",
            "the only URI subjectAltName allowed is the overlay address "
            f"{OVERLAY_URI_PREFIX}<40 hex digits>",
        )
    return ips[0], (uris[0] if uris else None)


def spki_digest(csr: x509.CertificateSigningRequest) -> str:
    """SHA-256 (hex) of the request's DER SubjectPublicKeyInfo."""
    spki = csr.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def check_request(body: bytes, source_ip: str, rules: CsrRules) -> ValidCsr:
    """
    Validate one EST request body sent from C{source_ip}.

    @raise CsrRefused: with the reason, in one sentence.
    """
    der = decode_body(body, rules.max_bytes)
    csr = parse_csr(der)
    try:
        signature_ok = csr.is_signature_valid
    except Exception:
        signature_ok = False
    if not signature_ok:
        raise CsrRefused(
            "bad-signature", "the request's signature does not verify with its own key"
        )
    check_key(csr, rules)
    hostname = check_subject(csr)
    ip, overlay = check_extensions(csr, hostname)
    source = normalise_ip(source_ip)
    if ip != source:
        raise CsrRefused(
            "wrong-ip",
            f"the request's IP subjectAltName {ip} is not the address it came from ({source})",
            status=403,
        )
    if rules.networks and not any(
        ipaddress.ip_address(ip) in ipaddress.ip_network(n) for n in rules.networks
    ):
        raise CsrRefused(
            "ip-outside",
            f"{ip} is not an address of this WOW ({', '.join(rules.networks)})",
            status=403,
        )
    return ValidCsr(
        csr=csr,
        der=der,
        digest=hashlib.sha256(der).hexdigest(),
        spki_digest=spki_digest(csr),
        ip=ip,
        hostname=hostname,
        overlay=overlay,
    )
