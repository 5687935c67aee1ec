"""Shared helpers for the wow-ca tests: keys, requests and a CA in a temporary directory."""

from __future__ import annotations

import base64
import ipaddress
import os
from functools import cache
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from twisted.internet import task

from wow.ca.authority import Authority
from wow.ca.csr import CsrRules
from wow.ca.issue import Signer, create_ca
from wow.ca.policy import AutoPolicy, ISigningPolicy
from wow.ca.store import Store

NOW = 1_800_000_000.0


@cache
def rsa_key(bits: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def ec_key(curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(curve or ec.SECP256R1())


def make_csr(
    key: Any = None,
    cn: str | None = "node1",
    ips: tuple[str, ...] = ("127.0.0.5",),
    dns: tuple[str, ...] = (),
    uris: tuple[str, ...] = (),
    extensions: tuple[tuple[x509.ExtensionType, bool], ...] = (),
    subject: list[x509.NameAttribute] | None = None,
    san: bool = True,
    others: tuple[x509.GeneralName, ...] = (),
) -> bytes:
    """A DER request; every knob can produce a request wow-ca must refuse."""
    key = key or ec_key()
    attrs = (
        subject
        if subject is not None
        else ([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    )
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attrs))
    names: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    names += [x509.DNSName(d) for d in dns] + [x509.UniformResourceIdentifier(u) for u in uris]
    names += list(others)
    if san and names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.DER)


def b64(der: bytes) -> bytes:
    return base64.encodebytes(der)


class CaFixture:
    """A CA, its store and an authority in C{directory}, on a L{task.Clock}."""

    def __init__(
        self,
        directory: str,
        policy: ISigningPolicy | None = None,
        rules: CsrRules | None = None,
        lifetime: int = 86400,
    ) -> None:
        os.makedirs(directory, exist_ok=True)
        self.clock = task.Clock()
        self.clock.advance(NOW)
        self.key, self.cert = create_ca("Test CA", 3650, NOW)
        self.signer = Signer(self.key, self.cert, lifetime)
        self.store = Store(os.path.join(directory, "ca.sqlite"))
        self.revocations = 0
        self.authority = Authority(
            self.store,
            self.signer,
            policy or AutoPolicy(),
            rules or CsrRules(),
            self.clock,
            retry_after=7,
            on_revoked=self._revoked,
        )

    def _revoked(self, urgent: bool) -> None:
        self.revocations += 1


async def start_ca(testcase: Any, **sections: dict[str, Any]) -> Any:
    """
    A whole CaService on the real reactor, HTTPS on 127.0.0.1 (any port),
    stopped in cleanup.  Returns the service; C{service.url} is its base URL.
    """
    import secrets

    from twisted.internet import reactor

    from wow.ca.config import load_ca_config
    from wow.ca.service import CaService

    state = os.path.abspath(testcase.mktemp())
    overrides: dict[str, dict[str, Any]] = {
        "ca": {"state_dir": state},
        "listen": {"address": "127.0.0.1", "port": 0},
        "control": {"socket": f"/tmp/wowca-test-{secrets.token_hex(4)}.sock"},
    }
    for name, values in sections.items():
        overrides.setdefault(name, {}).update(values)
    service = CaService(load_ca_config(None, overrides), reactor)
    service.privilegedStartService()
    service.startService()
    testcase.addCleanup(service.stopService)
    port = await service.https._waitingForPort
    service.url = f"https://127.0.0.1:{port.getHost().port}"
    return service
