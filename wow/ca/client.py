"""
The node side of EST: key, CSR, enrolment, polling, installation, renewal.

L{plan} is the sans-I/O decision (enrol, re-enrol, or wait until when) from
the installed files, the node's current virtual IP and the time.
L{EstClient} speaks RFC 7030 over twisted.web's Agent, bound to the
virtual IP so the CA sees the request come from the address it certifies.
L{enrol} runs one enrolment to the end (polling while pending);
L{Enroller} is the long-running service a wow-node uses when C{ca.url} is
set; C{wow enroll} runs L{enrol} once.

Files in the state directory: C{host.key} (0600), C{host.pem}, C{ca.pem};
while a request waits for approval, C{pending.key} and C{pending.csr}, so a
restart keeps polling the same request instead of queueing a new one.
"""

from __future__ import annotations

import base64
import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from wow.ca.issue import fingerprint, parse_est_certs, private_pem
from wow.util.durable import atomic_write, ensure_private_directory

KEY, CERT, CA, PENDING_KEY, PENDING_CSR = (
    "host.key",
    "host.pem",
    "ca.pem",
    "pending.key",
    "pending.csr",
)
#: Bounds on the wait between polls, whatever Retry-After says.
MIN_POLL, MAX_POLL = 1, 3600


class EnrolError(Exception):
    """Enrolment failed; C{temporary} errors are worth retrying later."""

    def __init__(self, sentence: str, temporary: bool = False, status: int = 0) -> None:
        super().__init__(sentence)
        self.temporary = temporary
        self.status = status


# -- sans-I/O decisions -------------------------------------------------------


@dataclass(frozen=True)
class Enrol:
    """Enrol from scratch (simpleenroll)."""

    why: str


@dataclass(frozen=True)
class Reenrol:
    """Renew the current certificate (simplereenroll)."""


@dataclass(frozen=True)
class WaitUntil:
    when: float


Plan = Enrol | Reenrol | WaitUntil


def cert_ip(cert: x509.Certificate) -> str | None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    ips = san.get_values_for_type(x509.IPAddress)
    return str(ips[0]) if len(ips) == 1 else None


def cert_hostname(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def plan(
    now: float,
    cert: x509.Certificate | None,
    key_matches: bool,
    ca: x509.Certificate | None,
    ip: str,
    hostname: str,
    renew_before: float,
) -> Plan:
    """What to do next, given the installed certificate and the node's current IP."""
    if cert is None:
        return Enrol("no certificate installed")
    if not key_matches:
        return Enrol("the installed key does not match the certificate")
    if ca is not None:
        try:
            cert.verify_directly_issued_by(ca)
        except Exception:
            return Enrol("the installed certificate is not from this CA")
    if cert_ip(cert) != ip:
        return Enrol(f"the certificate is for {cert_ip(cert)}, the node is now {ip}")
    if hostname and cert_hostname(cert) != hostname:
        return Enrol(f"the certificate names {cert_hostname(cert)}, the node is now {hostname}")
    expires = cert.not_valid_after_utc.timestamp()
    if expires <= now:
        return Enrol("the certificate has expired")
    # Renew before expiry, but never sooner than halfway through its life.
    life = expires - cert.not_valid_before_utc.timestamp()
    renew_at = expires - min(renew_before, life / 2)
    if now >= renew_at:
        return Reenrol()
    return WaitUntil(renew_at)


def make_csr(
    key: ec.EllipticCurvePrivateKey, hostname: str, ip: str, overlay: str | None = None
) -> bytes:
    """A DER PKCS#10 request wow-ca accepts: CN = host name, SAN = IP (+ DNS, + overlay URI)."""
    names: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address(ip)),
        x509.DNSName(hostname),
    ]
    if overlay:
        names.append(x509.UniformResourceIdentifier(overlay))
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER)


# -- HTTP ---------------------------------------------------------------------


@implementer(IOpenSSLClientConnectionCreator)
class _Unverified:
    """Only for fetching /cacerts before the CA is known; its answer is pinned by fingerprint."""

    def __init__(self) -> None:
        self.ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        self.ctx.set_min_proto_version(SSL.TLS1_2_VERSION)

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        conn = SSL.Connection(self.ctx, None)
        conn.set_app_data(tlsProtocol)
        conn.set_connect_state()
        return conn


@implementer(IPolicyForHTTPS)
class _Policy:
    def __init__(self, ca_pem: bytes | None, client_pem: bytes | None) -> None:
        self.ca_pem = ca_pem
        self.client_pem = client_pem

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        if self.ca_pem is None:
            return _Unverified()
        client = PrivateCertificate.loadPEM(self.client_pem) if self.client_pem else None
        return optionsForClientTLS(
            hostname.decode(), trustRoot=Certificate.loadPEM(self.ca_pem), clientCertificate=client
        )


@dataclass(frozen=True)
class EstAnswer:
    status: int
    certs: list[x509.Certificate]
    retry_after: int
    message: str


class EstClient:
    """RFC 7030 requests to one CA, sent from C{bind_ip}."""

    def __init__(
        self,
        reactor: Any,
        url: str,
        ca_pem: bytes | None = None,
        bind_ip: str | None = None,
        client_pem: bytes | None = None,
        timeout: float = 30,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise EnrolError(f"the CA URL {url!r} must look like https://HOST[:PORT]")
        self.base = f"https://{parts.netloc}"
        self.agent = Agent(
            reactor,
            _Policy(ca_pem, client_pem),
            connectTimeout=timeout,
            bindAddress=(bind_ip, 0) if bind_ip else None,
        )
        self.reactor = reactor
        self.timeout = timeout

    async def _request(
        self,
        method: bytes,
        path: str,
        body: bytes | None = None,
        headers: dict[bytes, list[bytes]] | None = None,
    ) -> tuple[Any, bytes]:
        producer = FileBodyProducer(BytesIO(body)) if body is not None else None
        try:
            d = self.agent.request(
                method, (self.base + path).encode(), Headers(headers or {}), producer
            )
            d.addTimeout(self.timeout, self.reactor)
            response = await d
            data = await readBody(response)
        except EnrolError:
            raise
        except Exception as e:
            raise EnrolError(
                f"cannot reach the CA at {self.base}: {_why(e)}", temporary=True
            ) from None
        return response, data

    async def cacerts(self) -> list[x509.Certificate]:
        response, data = await self._request(b"GET", "/.well-known/est/cacerts")
        if response.code != 200:
            raise EnrolError(f"the CA answered /cacerts with HTTP {response.code}", temporary=True)
        try:
            return parse_est_certs(data)
        except Exception:
            raise EnrolError("the CA's /cacerts answer is not a PKCS#7 certificate list") from None

    async def post(
        self, operation: str, csr_der: bytes, credentials: tuple[str, str] | None = None
    ) -> EstAnswer:
        headers = {
            b"content-type": [b"application/pkcs10"],
            b"content-transfer-encoding": [b"base64"],
        }
        if credentials:
            token = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()
            headers[b"authorization"] = [f"Basic {token}".encode()]
        response, data = await self._request(
            b"POST", f"/.well-known/est/{operation}", base64.encodebytes(csr_der), headers
        )
        message = data.decode("utf-8", "replace").strip()
        if response.code == 200:
            try:
                certs = parse_est_certs(data)
            except Exception:
                raise EnrolError("the CA's answer is not a PKCS#7 certificate list") from None
            return EstAnswer(200, certs, 0, "")
        if response.code == 202:
            retry = response.headers.getRawHeaders(b"retry-after", [b"60"])[0]
            try:
                seconds = int(retry)
            except ValueError:
                seconds = 60
            return EstAnswer(202, [], max(MIN_POLL, min(MAX_POLL, seconds)), message)
        return EstAnswer(response.code, [], 0, message[:500])


def _why(e: Exception) -> str:
    from twisted.web.client import ResponseNeverReceived

    if isinstance(e, ResponseNeverReceived) and e.reasons:
        return str(e.reasons[0].getErrorMessage())
    return str(e) or type(e).__name__


# -- one enrolment ------------------------------------------------------------


@dataclass(frozen=True)
class EnrolSettings:
    url: str
    state_dir: str
    hostname: str
    overlay: str | None = None
    credentials: tuple[str, str] | None = None
    #: SHA-256 fingerprint of the CA certificate; "" = pin whatever ca.pem holds,
    #: or trust the CA on first use when there is none.
    ca_fingerprint: str = ""
    renew_before: float = 7 * 86400
    timeout: float = 30


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def installed(state_dir: str) -> tuple[x509.Certificate | None, bool, x509.Certificate | None]:
    """The installed certificate, whether the key matches it, and the CA certificate."""
    cert_pem, key_pem, ca_pem = (_read(os.path.join(state_dir, n)) for n in (CERT, KEY, CA))
    cert = ca = None
    matches = False
    try:
        if cert_pem:
            cert = x509.load_pem_x509_certificate(cert_pem)
        if ca_pem:
            ca = x509.load_pem_x509_certificate(ca_pem)
        if cert is not None and key_pem:
            key = serialization.load_pem_private_key(key_pem, password=None)
            pub = serialization.PublicFormat.SubjectPublicKeyInfo
            matches = key.public_key().public_bytes(
                serialization.Encoding.DER, pub
            ) == cert.public_key().public_bytes(serialization.Encoding.DER, pub)
    except ValueError:
        return None, False, ca
    return cert, matches, ca


class Enrolment:
    """Runs one enrolment or renewal against the CA and installs the result."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        settings: EnrolSettings,
        ip: str,
        report: Callable[[str], None] | None = None,
    ) -> None:
        self.reactor = reactor
        self.s = settings
        self.ip = ip
        self.report = report or (lambda sentence: self.log.info("{s}", s=sentence))
        ensure_private_directory(settings.state_dir)

    def path(self, name: str) -> str:
        return os.path.join(self.s.state_dir, name)

    async def ca_pem(self) -> bytes:
        """The pinned CA certificate, fetched and checked the first time."""
        pinned = _read(self.path(CA))
        want = self.s.ca_fingerprint.replace(":", "").lower()
        if pinned is not None:
            cert = x509.load_pem_x509_certificate(pinned)
            if not want or fingerprint(cert) == want:
                return pinned
        certs = await EstClient(
            self.reactor, self.s.url, None, self.ip, timeout=self.s.timeout
        ).cacerts()
        if not certs:
            raise EnrolError("the CA sent no CA certificate")
        ca = certs[0]
        if want and fingerprint(ca) != want:
            raise EnrolError(
                f"the CA's certificate has fingerprint {fingerprint(ca)}, not the expected {want}"
            )
        if not want:
            self.report(f"trusting the CA on first use: SHA-256 fingerprint {fingerprint(ca)}")
        pem = ca.public_bytes(serialization.Encoding.PEM)
        atomic_write(self.path(CA), pem, mode=0o644)
        return pem

    def _pending(self) -> tuple[bytes, bytes] | None:
        """A request from an earlier run for the same IP and host name, if any."""
        key_pem, csr_der = _read(self.path(PENDING_KEY)), _read(self.path(PENDING_CSR))
        if not key_pem or not csr_der:
            return None
        try:
            csr = x509.load_der_x509_csr(csr_der)
            san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            ips = [str(i) for i in san.get_values_for_type(x509.IPAddress)]
            cn = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        except Exception:
            return None
        if ips != [self.ip] or cn != self.s.hostname:
            return None
        return key_pem, csr_der

    def _new_request(self) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        key_pem = private_pem(key)
        csr_der = make_csr(key, self.s.hostname, self.ip, self.s.overlay)
        atomic_write(self.path(PENDING_KEY), key_pem, mode=0o600)
        atomic_write(self.path(PENDING_CSR), csr_der, mode=0o644)
        return key_pem, csr_der

    def _install(self, key_pem: bytes, cert: x509.Certificate) -> x509.Certificate:
        # The key first: a crash between the two leaves a key that does not
        # match the old certificate, which the next run sees and repairs.
        atomic_write(self.path(KEY), key_pem, mode=0o600)
        atomic_write(self.path(CERT), cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
        for name in (PENDING_KEY, PENDING_CSR):
            try:
                os.unlink(self.path(name))
            except FileNotFoundError:
                pass
        self.report(
            f"installed certificate {cert.serial_number:032x} for {self.ip}, valid until "
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        )
        return cert

    async def run(self, renew: bool = False, deadline: float | None = None) -> x509.Certificate:
        """Enrol (or renew) and install; poll while the CA keeps the request pending."""
        ca_pem = await self.ca_pem()
        ca = x509.load_pem_x509_certificate(ca_pem)
        if renew:
            cert = await self._reenrol(ca_pem, ca)
            if cert is not None:
                return cert
        pending = self._pending()
        key_pem, csr_der = pending if pending else self._new_request()
        client = EstClient(self.reactor, self.s.url, ca_pem, self.ip, timeout=self.s.timeout)
        while True:
            answer = await client.post("simpleenroll", csr_der, self.s.credentials)
            if answer.status == 200:
                return self._install(key_pem, self._check(answer, ca))
            if answer.status != 202:
                if answer.status < 500:
                    # Refused for good: the next attempt starts a new request.
                    for name in (PENDING_KEY, PENDING_CSR):
                        if os.path.exists(self.path(name)):
                            os.unlink(self.path(name))
                raise EnrolError(
                    f"the CA refused: {answer.message}",
                    temporary=answer.status >= 500,
                    status=answer.status,
                )
            now = self.reactor.seconds()
            if deadline is not None and now + answer.retry_after > deadline:
                raise EnrolError(
                    f"still waiting for approval ({answer.message})", temporary=True, status=202
                )
            self.report(f"waiting for approval, next poll in {answer.retry_after} s")
            await task.deferLater(self.reactor, answer.retry_after, lambda: None)

    async def _reenrol(self, ca_pem: bytes, ca: x509.Certificate) -> x509.Certificate | None:
        key_pem, cert_pem = _read(self.path(KEY)), _read(self.path(CERT))
        if not key_pem or not cert_pem:
            return None
        new_key = ec.generate_private_key(ec.SECP256R1())
        csr_der = make_csr(new_key, self.s.hostname, self.ip, self.s.overlay)
        client = EstClient(
            self.reactor,
            self.s.url,
            ca_pem,
            self.ip,
            client_pem=cert_pem + b"\n" + key_pem,
            timeout=self.s.timeout,
        )
        answer = await client.post("simplereenroll", csr_der)
        if answer.status == 200:
            return self._install(private_pem(new_key), self._check(answer, ca))
        if answer.status >= 500:
            raise EnrolError(f"the CA failed to renew: {answer.message}", temporary=True)
        self.report(f"renewal refused ({answer.message}); enrolling afresh")
        return None

    def _check(self, answer: EstAnswer, ca: x509.Certificate) -> x509.Certificate:
        if len(answer.certs) != 1:
            raise EnrolError(f"the CA sent {len(answer.certs)} certificates instead of one")
        cert = answer.certs[0]
        try:
            cert.verify_directly_issued_by(ca)
        except Exception:
            raise EnrolError("the certificate the CA sent is not signed by the CA") from None
        if cert_ip(cert) != self.ip:
            raise EnrolError(f"the certificate the CA sent is for {cert_ip(cert)}, not {self.ip}")
        return cert


# -- the long-running service -------------------------------------------------


class Enroller(Service):
    """
    Keeps a valid certificate for the node's current virtual IP installed:
    enrols when there is none (or the IP changed), renews C{renew_before}
    seconds before expiry, retries temporary failures with backoff.

    @param current_ip: returns the node's virtual IP, or None while it has none.
    @param enrolment: makes the L{Enrolment} for one run (replaced in tests).

    Call L{wake} when the node's lease changes, so a new IP is enrolled at
    once rather than at the next planned renewal.
    """

    log = Logger()
    RETRY_MIN, RETRY_MAX = 5.0, 600.0
    #: Temporary failures (the CA unreachable, the path still forming) are
    #: retried at least this often.
    RETRY_BACKOFF_MAX = 60.0
    NO_IP_DELAY = 5.0

    def __init__(
        self,
        reactor: Any,
        settings: EnrolSettings,
        current_ip: Callable[[], str | None],
        enrolment: Callable[[Any, EnrolSettings, str], Enrolment] = Enrolment,
    ) -> None:
        self.reactor = reactor
        self.settings = settings
        self.current_ip = current_ip
        self.enrolment = enrolment
        self._loop: defer.Deferred[None] | None = None
        self._sleeping: defer.Deferred[None] | None = None
        self.installed: defer.Deferred[x509.Certificate] = defer.Deferred()
        self.backoff = self.RETRY_MIN
        #: Set by the node: enrolment events for its metrics.
        self.counters: Any = None

    def _count(self, result: str) -> None:
        if self.counters is not None:
            self.counters.inc("enrolments", result=result)

    def startService(self) -> None:
        super().startService()
        self._loop = defer.ensureDeferred(self.loop())
        self._loop.addErrback(self._stopped)

    def _stopped(self, failure: Failure) -> None:
        if not failure.check(defer.CancelledError):
            self.log.failure("enroller stopped", failure)

    def stopService(self) -> Any:
        super().stopService()
        if self._loop is not None:
            self._loop.cancel()
            self._loop = None

    def wake(self) -> None:
        """Re-check now (the node's IP changed, or an administrator asked)."""
        if self._sleeping is not None and not self._sleeping.called:
            self._sleeping.cancel()

    async def loop(self) -> None:
        while self.running:
            delay = await self.step()
            self._sleeping = task.deferLater(self.reactor, max(delay, 0), lambda: None)
            try:
                await self._sleeping
            except defer.CancelledError:
                if not self.running:
                    raise
            finally:
                self._sleeping = None

    async def step(self) -> float:
        """One round; returns how long to sleep before the next."""
        ip = self.current_ip()
        if ip is None:
            return self.NO_IP_DELAY
        cert, matches, ca = installed(self.settings.state_dir)
        now = self.reactor.seconds()
        what = plan(now, cert, matches, ca, ip, self.settings.hostname, self.settings.renew_before)
        if isinstance(what, WaitUntil):
            if not self.installed.called and cert is not None:
                self.installed.callback(cert)
            return float(what.when - now)
        try:
            new = await self.enrolment(self.reactor, self.settings, ip).run(
                renew=isinstance(what, Reenrol)
            )
        except EnrolError as e:
            delay = self.backoff
            self.backoff = min(self.backoff * 1.5, self.RETRY_BACKOFF_MAX)
            if not e.temporary:
                delay = self.RETRY_MAX
            self._count("failed-temporarily" if e.temporary else "refused")
            self.log.warn(
                "enrolment with {url} failed: {why}; retrying in {delay:.0f} s",
                url=self.settings.url,
                why=str(e),
                delay=delay,
            )
            return delay
        self.backoff = self.RETRY_MIN
        self._count("renewed" if isinstance(what, Reenrol) else "enrolled")
        if not self.installed.called:
            self.installed.callback(new)
        return 0


def node_enroller(
    config: Any,
    reactor: Any,
    current_ip: Callable[[], str | None],
    overlay_address: str | None = None,
) -> Enroller | None:
    """
    The L{Enroller} for a wow-node's C{[ca]} section, or None when C{ca.url}
    is unset.  C{current_ip} gives the node's leased virtual IP.
    """
    import socket

    from wow.ca.csr import OVERLAY_URI_PREFIX
    from wow.cli.enroll import read_credentials

    section = config.ca
    if not section.url:
        return None
    hostname = (section.hostname or config.node.name or socket.gethostname()).lower()
    credentials = read_credentials(section.credentials_file) if section.credentials_file else None
    settings = EnrolSettings(
        url=section.url,
        state_dir=config.node.state_dir,
        hostname=hostname,
        overlay=OVERLAY_URI_PREFIX + overlay_address if overlay_address else None,
        credentials=credentials,
        ca_fingerprint=section.ca_fingerprint,
        renew_before=section.renew_before,
        timeout=section.timeout,
    )
    return Enroller(reactor, settings, current_ip)
