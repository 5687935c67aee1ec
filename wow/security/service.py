"""
The security core under the reactor: identity, timers and CRL fetching.

L{SecurityService} is the thin adapter the node composes: it loads the
certificate C{wow enroll} installed (STATE_DIR/host.pem, host.key, ca.pem),
builds the L{SessionManager}, runs its timers with C{callLater} at
C{next_deadline()}, fetches the CRL on start and on the schedule
L{CrlSchedule} gives, takes CRLs pushed through the overlay, and answers the
C{security} control command (C{wow status} / C{wow peers} material).

The data path plugs in with two calls: L{send} for an outbound message the
policy says to secure, L{receive} for a secured datagram from a peer; the
datagrams to put on the wire go to the injected C{transmit(peer, datagram)}.
"""

from __future__ import annotations

import ipaddress
import os
import random
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from wow.metrics import Counters
from wow.node.config import NodeConfig
from wow.security.channel import ChannelParams
from wow.security.crl import CrlError, CrlSchedule, CrlState
from wow.security.dtls import DtlsContext, RevokedSerials
from wow.security.manager import SessionManager
from wow.security.policy import Policy
from wow.security.records import Buffer

CERT, KEY, CA, CRL = "host.pem", "host.key", "ca.pem", "crl.der"
#: How often the installed certificate is checked for enrolment or renewal
#: (three stat calls; secured traffic waits for it after the first enrolment).
IDENTITY_CHECK_S = 5.0
#: A CRL larger than this is refused before parsing.
MAX_CRL_BYTES = 4 * 2**20
#: The WOW as a whole fetches the CRL about this often: each node every
#: (estimated overlay size x this) seconds, jittered, and the first node to
#: see a newer CRL pushes it to everyone (wow/security/crlflood.py).  So a
#: revocation reaches every node within seconds at a constant load on the CA
#: (the chance that no node fetches within 30 s is about e^-10).
CRL_SHARE_S = 3.0
#: No node fetches more often than this.
MIN_CRL_PERIOD_S = 10.0

Transmit = Callable[[bytes, bytes], None]
Fetch = Callable[[str], "Deferred[bytes]"]


class Identity:
    """This node's certificate, key and CA, as installed in the state directory."""

    def __init__(self, ca_cert: x509.Certificate, cert: x509.Certificate, key: Any) -> None:
        self.ca_cert = ca_cert
        self.cert = cert
        self.key = key


def load_identity(state_dir: str) -> tuple[Identity | None, str]:
    """
    The installed identity, or L{None} and why not (one sentence).
    Only well-formed files whose key matches the certificate count.
    """
    paths = [os.path.join(state_dir, n) for n in (CERT, KEY, CA)]
    try:
        blobs = []
        for path in paths:
            with open(path, "rb") as f:
                blobs.append(f.read())
    except FileNotFoundError as e:
        return None, f"not enrolled ({os.path.basename(e.filename)} is missing)"
    except OSError as e:
        return None, f"cannot read {e.filename}: {e.strerror}"
    try:
        cert = x509.load_pem_x509_certificate(blobs[0])
        key = serialization.load_pem_private_key(blobs[1], password=None)
        ca = x509.load_pem_x509_certificate(blobs[2])
    except ValueError as e:
        return None, f"unreadable certificate or key: {e}"
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki):
        return None, "host.key does not match host.pem"
    return Identity(ca, cert, key), "enrolled"


def crl_url(config: NodeConfig) -> str:
    """Where to fetch the CRL: [security] crl_url, else the CA's /crl, else nowhere."""
    if config.security.crl_url:
        return config.security.crl_url
    if config.ca.url:
        return config.ca.url.rstrip("/") + "/crl"
    return ""


def ca_virtual_ip(config: NodeConfig) -> ipaddress.IPv4Address | None:
    """The CA's address when C{[ca] url} names a virtual IP literally, else None."""
    host = urlsplit(config.ca.url).hostname if config.ca.url else None
    try:
        ip = ipaddress.IPv4Address(host or "")
    except ValueError:
        return None
    return ip if ip in config.network.network else None


def http_fetch(reactor: Any, ca_pem: bytes | None, timeout: float = 30.0) -> Fetch:
    """A C{Fetch} over twisted.web (HTTPS verified against the WOW's CA)."""
    from twisted.internet.ssl import Certificate, optionsForClientTLS
    from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, readBody
    from twisted.web.iweb import IPolicyForHTTPS
    from zope.interface import implementer

    @implementer(IPolicyForHTTPS)
    class _TrustCa:
        def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
            assert ca_pem is not None
            return optionsForClientTLS(hostname.decode(), trustRoot=Certificate.loadPEM(ca_pem))

    policy = _TrustCa() if ca_pem else BrowserLikePolicyForHTTPS()  # type: ignore[no-untyped-call]
    agent = Agent(reactor, policy, connectTimeout=timeout)  # type: ignore[no-untyped-call]

    def fetch(url: str) -> Deferred[bytes]:
        d = agent.request(b"GET", url.encode())

        def body(response: Any) -> Any:
            if response.code != 200:
                raise CrlError("http", f"HTTP {response.code} from {url}")
            length = response.length
            if isinstance(length, int) and length > MAX_CRL_BYTES:
                raise CrlError("too-large", f"{length} bytes")
            return readBody(response)

        d.addCallback(body)
        d.addTimeout(timeout, reactor)
        return d  # type: ignore[return-value]

    return fetch


class SecurityService(Service):
    """Runs the node's L{SessionManager} and CRL handling under the reactor."""

    log = Logger()

    def __init__(
        self,
        config: NodeConfig,
        reactor: Any,
        counters: Counters,
        local_address: bytes,
        transmit: Transmit,
        fetch: Fetch | None = None,
        address_of: Callable[[], int | None] | None = None,
        size_of: Callable[[], int] | None = None,
    ) -> None:
        """
        @param address_of: the overlay address, known only once the overlay
            runs (the node passes this and an empty C{local_address}).
        """
        self.config = config
        self._address_of = address_of
        #: The overlay's estimated number of nodes (sets the CRL fetch period).
        self._size_of = size_of
        self.reactor = reactor
        self.counters = counters
        self.local_address = local_address
        self.transmit = transmit
        self._fetch = fetch
        sec = config.security
        self.policy = Policy.from_config(sec, config.network)
        ca_ip = ca_virtual_ip(config)
        if ca_ip is not None and sec.enabled and not self.policy.is_public(ca_ip):
            # Enrolment runs over the virtual network, before a certificate
            # exists: the CA's virtual IP is reachable in clear (EST is TLS).
            self.policy = Policy([str(n) for n in self.policy.secure_subnets],
                                 [*sec.public_nodes, str(ca_ip)], sec.enabled)
        self.params = ChannelParams(
            rekey_interval=float(sec.rekey_interval),
            rekey_bytes=sec.rekey_bytes,
            rekey_packets=sec.rekey_packets,
        )
        self.revoked = RevokedSerials()
        self.identity: Identity | None = None
        self.identity_state = "not started"
        self.manager: SessionManager | None = None
        self.crl: CrlState | None = None
        self.crl_schedule = CrlSchedule(float(sec.crl_refresh))
        self.crl_error: str | None = None
        self._tick_call: IDelayedCall | None = None
        self._crl_call: IDelayedCall | None = None
        self._watch_call: IDelayedCall | None = None
        self._installed: tuple[tuple[int, int], ...] | None = None
        #: Told C{(der, source)} of every CRL adopted (the overlay flood listens).
        self.crl_listeners: list[Callable[[bytes, str], None]] = []

    # -- lifecycle ------------------------------------------------------------

    @property
    def have_cert(self) -> bool:
        return self.manager is not None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        if self._address_of is not None:
            address = self._address_of()
            if address is not None:
                self.local_address = address.to_bytes(20, "big")
        if self.config.security.enabled:
            self._watch()

    def _fingerprint(self) -> tuple[tuple[int, int], ...]:
        out = []
        for name in (CERT, KEY, CA):
            try:
                st = os.stat(os.path.join(self.config.node.state_dir, name))
                out.append((st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((0, -1))
        return tuple(out)

    def _watch(self) -> None:
        """Load the identity when first installed or renewed (wow enroll, the Enroller)."""
        self._watch_call = None
        installed = self._fingerprint()
        if installed != self._installed:
            self._installed = installed
            self.reload_identity()
        self._watch_call = self.reactor.callLater(IDENTITY_CHECK_S, self._watch)

    def stopService(self) -> Any:
        for call in (self._tick_call, self._crl_call, self._watch_call):
            if call is not None and call.active():
                call.cancel()
        self._tick_call = self._crl_call = self._watch_call = None
        if self.manager is not None:
            for peer in list(self.manager.channels):
                for datagram in self.manager.close(peer, "shutdown"):
                    self._send_out(peer, datagram)
        return super().stopService()  # type: ignore[no-untyped-call]

    def reload_identity(self) -> bool:
        """(Re)load the installed certificate, e.g. after enrolment or renewal."""
        state_dir = self.config.node.state_dir
        identity, why = load_identity(state_dir)
        if identity is None or self.manager is None:
            self.identity_state = why
        if identity is None:
            if self.manager is not None:
                # A renewal half written (key before certificate): keep the
                # working identity and look again at the next check.
                self.log.info("security: keeping the current certificate: {why}", why=why)
                self._installed = None
                return False
            self.log.info("security: {why}; only public nodes are reachable", why=why)
            self.identity = None
            return False
        if self.crl is None or self.crl.ca_cert != identity.ca_cert:
            self.crl = CrlState(
                identity.ca_cert, self.revoked, self.counters, os.path.join(state_dir, CRL)
            )
            self.crl.load(self.reactor.seconds())
            self._schedule_crl(self.crl_schedule.next_fetch(self.reactor.seconds()))
        sec = self.config.security
        context = DtlsContext(
            identity.ca_cert,
            identity.cert,
            identity.key,
            revoked=self.revoked,
            counters=self.counters,
            require_overlay_uri=sec.require_overlay_uri,
            handshake_timeout=float(sec.handshake_timeout),
        )
        old = self.manager
        self.identity = identity
        self.identity_state = why
        self.manager = SessionManager(
            self.local_address, context, self.reactor, self.params, max_half_open=sec.max_half_open
        )
        if old is not None:  # the peers re-handshake with the new certificate
            for peer in list(old.channels):
                for datagram in old.close(peer, "new-certificate"):
                    self._send_out(peer, datagram)
        self.log.info(
            "security: certificate {serial:x} for {subject}",
            serial=identity.cert.serial_number,
            subject=identity.cert.subject.rfc4514_string(),
        )
        return True

    # -- data path ------------------------------------------------------------

    def _send_out(self, peer: bytes, datagram: bytes) -> None:
        try:
            self.transmit(peer, datagram)
        except Exception:
            self.log.failure("security: transmit to {peer} failed", peer=peer.hex())

    def send(self, peer: bytes, message: bytes, expected_ip: str | None = None) -> bool:
        """Secure C{message} for C{peer}; False when this node has no certificate."""
        manager = self.manager
        if manager is None:
            self.counters.inc("security_packets_dropped", reason="not-enrolled")
            return False
        timers = False
        for datagram in manager.send(peer, message, self.reactor.seconds(), expected_ip):
            self._send_out(peer, datagram)
            # Anything but application data (a handshake began) may bring a
            # deadline forward; plain data never does, so the per-packet
            # path skips the O(peers) deadline scan.
            timers = timers or datagram[1] != 23
        call = self._tick_call
        if timers or call is None or not call.active():
            self._schedule_tick()
        return True

    def receive(self, peer: bytes, header: int, body: Buffer) -> list[bytes]:
        """A secured datagram (framing byte, records) from C{peer}: its plaintexts."""
        manager = self.manager
        if manager is None:
            self.counters.inc("security_records_dropped", reason="not-enrolled")
            return []
        plaintexts, replies = manager.receive_parts(peer, header, body, self.reactor.seconds())
        for datagram in replies:
            self._send_out(peer, datagram)
        if replies:
            self._schedule_tick()
        return plaintexts

    def _schedule_tick(self) -> None:
        manager = self.manager
        if manager is None:
            return
        when = manager.next_deadline()
        if when is None:
            return
        # Never 0: a deadline that stays in the past must not spin the reactor.
        delay = max(0.01, when - self.reactor.seconds())
        call = self._tick_call
        if call is not None and call.active():
            if call.getTime() <= self.reactor.seconds() + delay:
                return
            call.cancel()
        self._tick_call = self.reactor.callLater(delay, self._tick)

    def _tick(self) -> None:
        self._tick_call = None
        manager = self.manager
        if manager is None:
            return
        try:
            for peer, datagram in manager.tick(self.reactor.seconds()):
                self._send_out(peer, datagram)
        except Exception:
            self.log.failure("security: timer run failed")
        self._schedule_tick()

    # -- revocation -------------------------------------------------------------

    def offer_crl(self, der: bytes, source: str = "overlay") -> bool:
        """A CRL fetched or pushed through the overlay; True when it was applied."""
        if self.crl is None:
            self.counters.inc("security_crl_refused", reason="not-enrolled", source=source)
            return False
        try:
            update = self.crl.offer(der, self.reactor.seconds(), source)
        except CrlError as e:
            if e.reason != "not-newer":  # the same CRL again is the normal case
                self.crl_error = str(e)
            elif source == "fetch":
                self.crl_error = None
            return False
        self.crl_error = None
        if update.newly_revoked and self.manager is not None:
            for peer, datagram in self.manager.revoke(update.newly_revoked):
                self._send_out(peer, datagram)
        for listener in self.crl_listeners:
            try:
                listener(der, source)
            except Exception:
                self.log.failure("security: CRL listener failed")
        return True

    def crl_period(self) -> float:
        """
        Seconds to the next regular CRL fetch: the overlay's size times
        L{CRL_SHARE_S}, at least L{MIN_CRL_PERIOD_S}, jittered by ±50 %,
        never more than C{crl_refresh}.
        """
        longest = float(self.config.security.crl_refresh)
        size = 1
        if self._size_of is not None:
            try:
                size = max(1, int(self._size_of()))
            except Exception:
                size = 1
        period = max(MIN_CRL_PERIOD_S, CRL_SHARE_S * size) * random.uniform(0.5, 1.5)
        return min(longest, max(MIN_CRL_PERIOD_S, period))

    def current_crl(self) -> bytes | None:
        """The DER of the CRL in force (as kept in the state directory), if any."""
        if self.crl is None or self.crl.current is None:
            return None
        try:
            with open(os.path.join(self.config.node.state_dir, CRL), "rb") as f:
                return f.read(MAX_CRL_BYTES)
        except OSError:
            return None

    def _schedule_crl(self, when: float) -> None:
        if not crl_url(self.config):
            return
        if self._crl_call is not None and self._crl_call.active():
            self._crl_call.cancel()
        self._crl_call = self.reactor.callLater(
            max(0.0, when - self.reactor.seconds()), self._fetch_crl
        )

    def _fetch_crl(self) -> None:
        self._crl_call = None
        url = crl_url(self.config)
        fetch = self._fetch
        if fetch is None:
            ca_pem = None
            if self.identity is not None and urlsplit(url).scheme == "https":
                ca_pem = self.identity.ca_cert.public_bytes(serialization.Encoding.PEM)
            fetch = self._fetch = http_fetch(self.reactor, ca_pem)
        d = fetch(url)

        def fetched(der: bytes) -> None:
            self.counters.inc("security_crl_fetches", outcome="ok")
            self.offer_crl(der, "fetch")
            current = self.crl.current if self.crl is not None else None
            self.crl_schedule.refresh = self.crl_period()
            self._schedule_crl(self.crl_schedule.fetched(self.reactor.seconds(), current))

        def failed(failure: Any) -> None:
            self.counters.inc("security_crl_fetches", outcome="failed")
            self.crl_error = f"fetching {url}: {failure.getErrorMessage()}"
            self.log.info("security: CRL fetch failed: {error}", error=self.crl_error)
            self._schedule_crl(self.crl_schedule.failed(self.reactor.seconds()))

        d.addCallbacks(fetched, failed)

    # -- control ---------------------------------------------------------------

    def status(self, args: dict[str, Any] | None = None) -> dict[str, Any]:
        """The node's certificate state (for C{wow status})."""
        out: dict[str, Any] = {
            "enabled": self.config.security.enabled,
            "state": self.identity_state,
        }
        if self.identity is not None:
            cert = self.identity.cert
            out["certificate"] = {
                "serial": f"{cert.serial_number:x}",
                "subject": cert.subject.rfc4514_string(),
                "not_after": cert.not_valid_after_utc.timestamp(),
                "revoked": cert.serial_number in self.revoked,
            }
        current = self.crl.current if self.crl is not None else None
        out["crl"] = {
            "url": crl_url(self.config),
            "number": current.number if current else None,
            "next_update": current.next_update if current else None,
            "revoked": len(current.revoked) if current else 0,
            "error": self.crl_error,
        }
        return out

    def summary(self) -> dict[str, Any]:
        """The flat C{security} section of C{wow status}: certificate and CRL state."""
        status = self.status()
        cert = status.get("certificate") or {}
        crl = status["crl"]
        channels = self.manager.channels.values() if self.manager is not None else ()
        return {
            "enabled": status["enabled"],
            "certificate": status["state"] if not cert else
            ("REVOKED" if cert["revoked"] else "valid"),
            "serial": cert.get("serial"),
            "subject": cert.get("subject"),
            "expires": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(cert["not_after"]))
            if cert else None,
            "crl_number": crl["number"],
            "crl_revoked": crl["revoked"],
            "crl_error": crl["error"],
            "secured_peers": sum(1 for c in channels if c.current is not None),
        }

    def peers(self, args: dict[str, Any] | None = None) -> list[dict[str, object]]:
        """Per peer: secured or not, cipher, certificate serial (for C{wow peers})."""
        return self.manager.peers() if self.manager is not None else []

    def register(self, control: Any, status_board: Any | None = None) -> None:
        """Expose C{security} (and C{security-peers}) on the control socket."""
        control.register("security", lambda args: {"status": self.status(), "peers": self.peers()})
        if status_board is not None:
            status_board.contribute("security", self.summary)
