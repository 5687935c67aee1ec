"""
Certificate revocation lists: verify, keep the newest, and say when to fetch.

Every CRL, fetched from the CA or pushed through the overlay, goes through
L{verify_crl} (issuer, signature against the CA key, thisUpdate/nextUpdate)
and then L{CrlState.offer}, which takes it only when it is newer than the
current one (CRL number, else thisUpdate) so an old CRL replayed by anyone
cannot un-revoke a certificate.  C{offer} returns the serials the new CRL
revokes that the old one did not: the caller hands them to
L{wow.security.manager.SessionManager.revoke}, which tears the live sessions
down; the shared L{RevokedSerials} refuses new handshakes from then on.

L{CrlSchedule} is the fetch timetable, sans-I/O: fetch on start, then at the
CRL's nextUpdate (never later than C{refresh}), backing off after failures.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.logger import Logger

from wow.metrics import Counters
from wow.security.dtls import RevokedSerials
from wow.util.durable import atomic_write

#: Clock difference tolerated between the CA and this node.
MAX_SKEW_S = 300.0


class CrlError(Exception):
    """A CRL was refused; C{reason} is a short counter label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class VerifiedCrl:
    number: int | None
    this_update: float
    next_update: float | None
    revoked: frozenset[int]
    der: bytes


def verify_crl(data: bytes, ca_cert: x509.Certificate, now: float) -> VerifiedCrl:
    """
    Parse a DER (or PEM) CRL and check it was issued by C{ca_cert}, now.

    @raise CrlError: C{malformed}, C{wrong-issuer}, C{bad-signature},
        C{not-yet-valid}, C{bad-dates} or C{expired}.
    """
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            crl = x509.load_pem_x509_crl(data)
        else:
            crl = x509.load_der_x509_crl(data)
        issuer = crl.issuer
        this_update = crl.last_update_utc.timestamp()
        next_dt = crl.next_update_utc
        revoked = frozenset(r.serial_number for r in crl)
        try:
            number: int | None = crl.extensions.get_extension_for_class(
                x509.CRLNumber
            ).value.crl_number
        except x509.ExtensionNotFound:
            number = None
    except (ValueError, TypeError) as e:
        raise CrlError("malformed", str(e) or "not a CRL") from None
    if issuer != ca_cert.subject:
        raise CrlError("wrong-issuer", f"issued by {issuer.rfc4514_string()}")
    key = ca_cert.public_key()
    if not isinstance(key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
        raise CrlError("bad-signature", "unsupported CA key type")
    try:
        valid = crl.is_signature_valid(key)
    except Exception:
        valid = False
    if not valid:
        raise CrlError("bad-signature", "signature does not verify with the CA key")
    if this_update > now + MAX_SKEW_S:
        raise CrlError("not-yet-valid", "thisUpdate is in the future")
    next_update = next_dt.timestamp() if next_dt is not None else None
    if next_update is not None:
        if next_update < this_update:
            raise CrlError("bad-dates", "nextUpdate comes before thisUpdate")
        if next_update < now - MAX_SKEW_S:
            raise CrlError("expired", "nextUpdate has passed")
    return VerifiedCrl(number, this_update, next_update, revoked, data)


@dataclass(frozen=True)
class CrlUpdate:
    crl: VerifiedCrl
    #: Serials revoked by this CRL and not by the previous one.
    newly_revoked: frozenset[int]


class CrlState:
    """The newest verified CRL of the node's CA and the revoked set it implies."""

    log = Logger()

    def __init__(
        self,
        ca_cert: x509.Certificate,
        revoked: RevokedSerials,
        counters: Counters | None = None,
        path: str | None = None,
    ) -> None:
        self.ca_cert = ca_cert
        self.revoked = revoked
        self.counters = counters if counters is not None else Counters()
        #: Where the current CRL is kept across restarts (atomically written).
        self.path = path
        self.current: VerifiedCrl | None = None

    def is_newer(self, crl: VerifiedCrl) -> bool:
        cur = self.current
        if cur is None:
            return True
        if crl.number is not None and cur.number is not None:
            return crl.number > cur.number
        return crl.this_update > cur.this_update

    def offer(self, data: bytes, now: float, source: str = "fetch") -> CrlUpdate:
        """
        Verify and adopt a CRL from C{source} (C{fetch}, C{overlay}, C{disk}).

        @raise CrlError: when refused (also C{not-newer}); counted and logged.
        """
        try:
            crl = verify_crl(data, self.ca_cert, now)
            if not self.is_newer(crl):
                raise CrlError("not-newer", "not newer than the current CRL")
        except CrlError as e:
            self.counters.inc("security_crl_refused", reason=e.reason, source=source)
            if e.reason != "not-newer":  # the same CRL again is routine: counted only
                self.log.info("CRL from {source} refused: {reason}", source=source,
                              reason=str(e))
            raise
        old = self.current.revoked if self.current is not None else frozenset()
        self.current = crl
        self.revoked.replace(crl.revoked)
        self.counters.inc("security_crl_applied", source=source)
        if self.path is not None and source != "disk":
            atomic_write(self.path, data, mode=0o644)
        newly = crl.revoked - old
        self.log.info(
            "CRL number {number} from {source} applied: {count} revoked, {new} new",
            number=crl.number,
            source=source,
            count=len(crl.revoked),
            new=len(newly),
        )
        return CrlUpdate(crl, newly)

    def load(self, now: float) -> CrlUpdate | None:
        """Adopt the CRL kept on disk, if any and still acceptable."""
        if self.path is None or not os.path.exists(self.path):
            return None
        with open(self.path, "rb") as f:
            data = f.read()
        try:
            return self.offer(data, now, source="disk")
        except CrlError:
            return None


class CrlSchedule:
    """When to fetch the CRL next (sans-I/O: the caller owns the timer)."""

    def __init__(
        self, refresh: float, retry_initial: float = 30.0, retry_max: float = 600.0
    ) -> None:
        self.refresh = refresh
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self._retry = retry_initial
        self._next: float | None = None

    def next_fetch(self, now: float) -> float:
        """The time of the next fetch: now, on start."""
        if self._next is None:
            self._next = now
        return self._next

    def fetched(self, now: float, current: VerifiedCrl | None) -> float:
        """A fetch finished (whether or not its CRL was newer); the next time."""
        self._retry = self.retry_initial
        when = now + self.refresh
        if current is not None and current.next_update is not None:
            if current.next_update > now:
                when = min(when, current.next_update)
            else:  # the CA is late publishing: ask again soon
                when = min(when, now + self.retry_initial)
        self._next = when
        return when

    def failed(self, now: float) -> float:
        """A fetch failed (network, HTTP, refused CRL); retry with backoff."""
        when = now + self._retry
        self._retry = min(self._retry * 2, self.retry_max)
        self._next = when
        return when
