"""
The C{wow-ca} service tree.

L{CaService} loads (or creates) the CA, opens the store, issues its own TLS
certificate, and runs the HTTPS (EST) endpoint, the CRL publisher and the
control socket as child services.  Everything that touches files happens in
C{privilegedStartService}, so building the tree has no side effects.
"""

from __future__ import annotations

import os
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import MultiService
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from wow.ca.authority import AdminError, Authority
from wow.ca.config import CaConfig
from wow.ca.crl import build_crl
from wow.ca.csr import CsrRules
from wow.ca.est import EstSite, EstTlsContextFactory, build_root
from wow.ca.issue import Signer, fingerprint, load_or_create_ca, new_serial, private_pem
from wow.ca.policy import AutoPolicy, ISigningPolicy, LdapPolicy, ManualPolicy
from wow.ca.store import DuplicateSerial, Store
from wow.control.server import CommandError, ControlService
from wow.metrics import Counters
from wow.util.durable import atomic_write, ensure_private_directory

#: The CA's own HTTPS certificate is renewed when less than this fraction of its life remains.
SERVER_CERT_LIFETIME = 365 * 86400
#: Seconds an HTTPS connection may stay idle (slow or stuck clients are cut off).
IDLE_TIMEOUT = 60


class CrlPublisher:
    """
    Keeps the current signed CRL: re-signed at once after an administrator's
    revocation, within L{SOON} seconds after supersessions (so a burst of
    renewals costs one signature), and periodically before C{nextUpdate}.
    """

    log = Logger()
    SOON = 1.0

    def __init__(self, store: Store, signer: Signer, clock: IReactorTime, lifetime: int) -> None:
        self.store = store
        self.signer = signer
        self.clock = clock
        self.lifetime = lifetime
        self.der = b""
        self._soon: Any = None

    def changed(self, urgent: bool) -> None:
        if urgent:
            self.refresh()
        elif self._soon is None:
            self._soon = self.clock.callLater(self.SOON, self.refresh)

    def refresh(self) -> None:
        if self._soon is not None:
            if self._soon.active():
                self._soon.cancel()
            self._soon = None
        try:
            now = self.clock.seconds()
            self.der = build_crl(
                self.signer.key,
                self.signer.cert,
                self.store.revoked(now),
                now,
                self.lifetime,
                self.store.next_crl_number(),
            )
        except Exception:
            self.log.failure("could not re-sign the CRL")

    def stop(self) -> None:
        if self._soon is not None and self._soon.active():
            self._soon.cancel()
        self._soon = None

    def current(self) -> bytes:
        return self.der


def make_policy(config: CaConfig, reactor: Any) -> ISigningPolicy:
    kind = config.policy.kind
    if kind == "manual":
        return ManualPolicy()
    if kind == "ldap":
        password = ""
        if config.ldap.bind_password_file:
            with open(config.ldap.bind_password_file, encoding="utf-8") as f:
                password = f.readline().rstrip("\n")
        return LdapPolicy(config.ldap, reactor, password)
    return AutoPolicy()


def server_certificate(
    state_dir: str, signer: Signer, store: Store, names: tuple[str, ...], now: float
) -> tuple[bytes, bytes]:
    """
    The CA's HTTPS key and certificate (PEM), issued by the CA for C{names}
    and reissued when missing, for other names, near expiry or from another CA.
    """
    from wow.ca.authority import record_for
    from wow.ca.csr import normalise_ip

    key_path = os.path.join(state_dir, "server.key")
    cert_path = os.path.join(state_dir, "server.pem")
    if os.path.exists(key_path) and os.path.exists(cert_path):
        with open(key_path, "rb") as f:
            key_pem = f.read()
        with open(cert_path, "rb") as f:
            cert_pem = f.read()
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            have = {str(v) for v in san.get_values_for_type(x509.IPAddress)}
            have |= set(san.get_values_for_type(x509.DNSName))
            left = cert.not_valid_after_utc.timestamp() - now
            if have == set(names) and left > SERVER_CERT_LIFETIME / 3 and signer.issued_by_me(cert):
                return key_pem, cert_pem
        except Exception:
            pass
    key = ec.generate_private_key(ec.SECP256R1())
    for _ in range(4):
        cert = signer.issue_server(key.public_key(), names, new_serial(), now, SERVER_CERT_LIFETIME)
        first_ip = next((n for n in names if _is_ip(n)), "")
        rec = record_for(
            cert,
            None,
            "server",
            normalise_ip(first_ip) if first_ip else "",
            names[0],
            None,
            "",
            "server",
            now,
        )
        try:
            store.add_cert(rec)
            break
        except DuplicateSerial:
            continue
    key_pem = private_pem(key)
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    atomic_write(key_path, key_pem, mode=0o600)
    atomic_write(cert_path, cert_pem, mode=0o644)
    return key_pem, cert_pem


def _is_ip(name: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class CaService(MultiService):
    """The root of the C{wow-ca} service tree."""

    log = Logger()

    def __init__(self, config: CaConfig, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.counters = Counters()
        self.store: Store | None = None
        self.authority: Authority | None = None
        self.crl: CrlPublisher | None = None
        self.control = ControlService(reactor, config.control_socket)
        self.control.setServiceParent(self)

    def open(self) -> None:
        """Load or create everything on disk and build the HTTPS and timer children."""
        config, reactor = self.config, self.reactor
        state = config.ca.state_dir
        ensure_private_directory(state)
        now = reactor.seconds()
        key, cert, created = load_or_create_ca(state, config.ca.name, config.ca.lifetime_days, now)
        self.log.info(
            "{what} CA {name}, SHA-256 fingerprint {fp}",
            what="created" if created else "loaded",
            name=config.ca.name,
            fp=fingerprint(cert),
        )
        self.store = Store(os.path.join(state, "ca.sqlite"))
        signer = Signer(key, cert, config.issue.lifetime)
        self.crl = CrlPublisher(self.store, signer, reactor, config.crl.lifetime)
        rules = CsrRules(
            config.issue.key_types,
            config.issue.rsa_min_bits,
            config.issue.max_request_bytes,
            config.issue.networks,
        )
        self.authority = Authority(
            self.store,
            signer,
            make_policy(config, reactor),
            rules,
            reactor,
            self.counters,
            config.policy.retry_after,
            config.issue.revoke_superseded,
            self.crl.changed,
        )
        key_pem, cert_pem = server_certificate(
            state, signer, self.store, config.listen.server_names, now
        )
        tls = EstTlsContextFactory(key_pem, cert_pem, cert)
        root = build_root(self.authority, self.crl.current, self.health)
        site = EstSite(root, config.issue.max_request_bytes, timeout=IDLE_TIMEOUT)
        endpoint = SSL4ServerEndpoint(
            reactor, config.listen.port, tls, interface=config.listen.address
        )
        https = StreamServerEndpointService(endpoint, site)
        https._raiseSynchronously = True
        https.setServiceParent(self)
        self.https = https
        TimerService(max(config.crl.lifetime / 2, 1), self.crl.refresh).setServiceParent(self)
        TimerService(3600, self._expire_pending).setServiceParent(self)
        if config.metrics.listen:
            from wow.prometheus import metrics_service

            metrics_service(reactor, self.counters, "wow_ca", config.metrics.listen
                            ).setServiceParent(self)
        self._register_commands()

    def privilegedStartService(self) -> None:
        self.open()
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        port = getattr(self.https, "_waitingForPort", None)
        if port is not None:
            port.addCallback(self._listening)

    def _listening(self, port: Any) -> Any:
        addr = port.getHost()
        self.log.info(
            "wow-ca ready: EST on https://{host}:{port}/.well-known/est/ policy {policy}",
            host=addr.host,
            port=addr.port,
            policy=self.config.policy.kind,
        )
        return port

    def stopService(self) -> Any:
        d = super().stopService()
        if self.crl is not None:
            self.crl.stop()
        if self.store is not None:
            store, self.store = self.store, None

            def close(result: Any) -> Any:
                store.close()
                return result

            d.addBoth(close)
        return d

    def _expire_pending(self) -> None:
        assert self.store is not None
        try:
            n = self.store.expire_pending(self.reactor.seconds() - self.config.policy.pending_ttl)
            if n:
                self.log.info("{n} pending requests expired", n=n)
        except Exception:
            self.log.failure("expiring pending requests failed")

    def health(self) -> dict[str, Any]:
        assert self.authority is not None
        return {
            "status": "ok",
            "policy": self.config.policy.kind,
            "refused": self.counters.get("ca_refused"),
            "issued": self.counters.get("ca_issued"),
        }

    # -- control socket -----------------------------------------------------

    def _register_commands(self) -> None:
        authority = self.authority
        assert authority is not None

        def admin(fn: Any) -> Any:
            def handler(args: dict[str, Any]) -> Any:
                try:
                    return fn(args)
                except AdminError as e:
                    raise CommandError(str(e)) from None
                except (KeyError, TypeError, ValueError):
                    raise CommandError("malformed arguments") from None

            return handler

        self.control.register("ca.pending", admin(lambda a: authority.pending()))
        self.control.register("ca.list", admin(lambda a: authority.certificates()))
        self.control.register("ca.approve", admin(lambda a: authority.approve(int(a["id"]))))
        self.control.register(
            "ca.reject", admin(lambda a: authority.reject(int(a["id"]), str(a.get("reason", ""))))
        )
        self.control.register(
            "ca.revoke",
            admin(lambda a: authority.revoke(str(a["target"]), str(a.get("reason") or "revoked"))),
        )
        self.control.register("ca.metrics", admin(lambda a: self.counters.snapshot()))


def build_ca_service(config: CaConfig, reactor: Any) -> CaService:
    return CaService(config, reactor)
