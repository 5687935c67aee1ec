"""
The authority: what happens to an enrolment, from request body to stored certificate.

L{Authority} ties the CSR checks, the signing policy, the signer and the
store together, and is independent of HTTP: it is fed the body, the source
address, the credentials or client certificate and returns an outcome
(L{Issued}, L{Waiting} or L{Refusal}) that the EST resources render.  Every
refusal is logged with its reason and counted; nothing is stored for a
refused request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from wow.ca.csr import CsrRefused, CsrRules, ValidCsr, check_request, spki_digest
from wow.ca.issue import Signer, new_serial, serial_hex
from wow.ca.policy import ISigningPolicy, Queue, Refuse, Sign, SigningRequest
from wow.ca.store import CertRecord, DuplicateRequest, DuplicateSerial, Store, StoreError
from wow.metrics import Counters


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    record: CertRecord


@dataclass(frozen=True)
class Waiting:
    request_id: int
    retry_after: int


@dataclass(frozen=True)
class Refusal:
    status: int
    reason: str
    sentence: str
    challenge: bool = False


Outcome = Issued | Waiting | Refusal

REPLAY = "this certificate request was already used; create a new request"


class AdminError(Exception):
    """An administrator command refused, in one sentence."""


def record_for(
    cert: x509.Certificate,
    csr: ValidCsr | None,
    kind: str,
    ip: str,
    hostname: str,
    overlay: str | None,
    spki_digest: str,
    via: str,
    now: float,
) -> CertRecord:
    return CertRecord(
        serial=serial_hex(cert.serial_number),
        kind=kind,
        ip=ip,
        hostname=hostname,
        overlay=overlay,
        not_before=int(cert.not_valid_before_utc.timestamp()),
        not_after=int(cert.not_valid_after_utc.timestamp()),
        csr_sha256=csr.digest if csr else None,
        spki_sha256=spki_digest,
        der=cert.public_bytes(serialization.Encoding.DER),
        issued_at=int(now),
        via=via,
    )


class Authority:
    """Enrolment, re-enrolment and administration over one store and one signer."""

    log = Logger()
    #: Attempts at drawing a free serial before giving up (a collision of
    #: 128-bit random serials means something is badly wrong).
    SERIAL_ATTEMPTS = 4

    def __init__(
        self,
        store: Store,
        signer: Signer,
        policy: ISigningPolicy,
        rules: CsrRules,
        clock: IReactorTime,
        counters: Counters | None = None,
        retry_after: int = 60,
        supersede: bool = True,
        on_revoked: Callable[[bool], None] | None = None,
    ) -> None:
        self.store = store
        self.signer = signer
        self.policy = policy
        self.rules = rules
        self.clock = clock
        self.counters = counters if counters is not None else Counters()
        self.retry_after = retry_after
        self.supersede = supersede
        #: Called with C{urgent=True} after an administrator's revocation (the
        #: CRL must change at once) and C{False} after supersession by a
        #: newer certificate (a burst of renewals may share one new CRL).
        self.on_revoked = on_revoked or (lambda urgent: None)
        self.counters.describe("ca_refused", "EST requests refused, by reason")
        self.counters.describe("ca_issued", "certificates issued, by how they were approved")
        self.counters.describe("ca_queued", "requests queued for manual approval")

    # -- enrolment ----------------------------------------------------------

    def refuse(
        self, status: int, reason: str, sentence: str, source: str, challenge: bool = False
    ) -> Refusal:
        self.counters.inc("ca_refused", reason=reason)
        self.log.info(
            "refused request from {source}: {reason}: {sentence}",
            source=source,
            reason=reason,
            sentence=sentence,
        )
        return Refusal(status, reason, sentence, challenge)

    def enroll(
        self, body: bytes, source: str, credentials: tuple[str, str] | None = None
    ) -> defer.Deferred[Outcome]:
        """An RFC 7030 simpleenroll (or a poll of a queued one)."""
        try:
            csr = check_request(body, source, self.rules)
        except CsrRefused as e:
            return defer.succeed(self.refuse(e.status, e.reason, e.sentence, source))
        seen = self._seen(csr, source)
        if seen is not None:
            return defer.succeed(seen)
        if self.store.valid_cert_for_key(csr.spki_digest, self.clock.seconds()) is not None:
            return defer.succeed(
                self.refuse(
                    409,
                    "duplicate-key",
                    "this public key is already certified; create a new key or use simplereenroll",
                    source,
                )
            )
        decided = defer.maybeDeferred(self.policy.decide, SigningRequest(csr, credentials))
        outcome: defer.Deferred[Outcome] = decided.addCallback(self._decided, csr, source)
        outcome.addErrback(self._internal, source)
        return outcome

    def _seen(self, csr: ValidCsr, source: str) -> Outcome | None:
        """The outcome for a CSR we know already: a poll, or a replay."""
        queued = self.store.request_by_csr(csr.digest)
        if queued is not None:
            if queued.state == "pending":
                return Waiting(queued.id, self.retry_after)
            if queued.state == "rejected":
                return self.refuse(
                    403,
                    "rejected",
                    f"the administrator rejected this request ({queued.reason})",
                    source,
                )
            if queued.state == "approved" and queued.serial is not None:
                rec = self.store.cert(queued.serial)
                assert rec is not None
                self.store.collect(queued.id)
                if rec.revoked_at is not None:
                    return self.refuse(
                        403,
                        "revoked",
                        "the certificate approved for this request has been revoked",
                        source,
                    )
                return Issued(x509.load_der_x509_certificate(rec.der), rec)
            return self.refuse(409, "replay", REPLAY, source)
        if self.store.cert_by_csr(csr.digest) is not None:
            return self.refuse(409, "replay", REPLAY, source)
        return None

    def _decided(self, decision: Sign | Queue | Refuse, csr: ValidCsr, source: str) -> Outcome:
        if isinstance(decision, Refuse):
            return self.refuse(
                decision.status, decision.reason, decision.sentence, source, decision.challenge
            )
        if isinstance(decision, Queue):
            return self._queue(csr, decision.requester, source)
        return self._sign(csr, decision.via, source)

    def _queue(self, csr: ValidCsr, requester: str, source: str) -> Outcome:
        other = self.store.pending_for_ip(csr.ip)
        if other is not None:
            return self.refuse(
                409,
                "duplicate-pending",
                f"another request for {csr.ip} (number {other.id}) is already waiting for approval",
                source,
            )
        try:
            request_id = self.store.enqueue(
                csr.digest,
                csr.der,
                csr.ip,
                csr.hostname,
                csr.overlay,
                requester,
                self.clock.seconds(),
            )
        except DuplicateRequest:
            queued = self.store.request_by_csr(csr.digest)
            return Waiting(queued.id if queued else 0, self.retry_after)
        self.counters.inc("ca_queued")
        self.log.info(
            "request {id} from {ip} ({hostname}) waits for approval",
            id=request_id,
            ip=csr.ip,
            hostname=csr.hostname,
        )
        return Waiting(request_id, self.retry_after)

    def _issue(
        self, csr: ValidCsr, via: str, store: Callable[[CertRecord], list[str]]
    ) -> tuple[x509.Certificate, CertRecord]:
        """Sign with a fresh serial and store; retry on the (astronomically rare) collision."""
        for _ in range(self.SERIAL_ATTEMPTS):
            now = self.clock.seconds()
            cert = self.signer.issue(csr, new_serial(), now)
            rec = record_for(
                cert, csr, "node", csr.ip, csr.hostname, csr.overlay, csr.spki_digest, via, now
            )
            try:
                superseded = store(rec)
            except DuplicateSerial:
                self.counters.inc("ca_serial_collisions")
                continue
            self.counters.inc("ca_issued", via=via.split(":")[0])
            self.log.info(
                "issued {serial} to {ip} ({hostname}) via {via}",
                serial=rec.serial,
                ip=rec.ip,
                hostname=rec.hostname,
                via=via,
            )
            if superseded:
                self.on_revoked(False)
            return cert, rec
        raise StoreError("could not draw a free serial number")

    def _sign(self, csr: ValidCsr, via: str, source: str) -> Outcome:
        try:
            cert, rec = self._issue(csr, via, lambda r: self.store.add_cert(r, self.supersede))
        except DuplicateRequest:
            return self.refuse(409, "replay", REPLAY, source)
        return Issued(cert, rec)

    def _internal(self, failure: Any, source: str) -> Outcome:
        self.log.failure("enrolment from {source} failed", failure, source=source)
        return self.refuse(500, "internal", "the CA failed to process the request", source)

    # -- re-enrolment -------------------------------------------------------

    def reenroll(
        self, body: bytes, source: str, client_cert: x509.Certificate | None
    ) -> defer.Deferred[Outcome]:
        """An RFC 7030 simplereenroll: the TLS client certificate authorises it."""
        try:
            return defer.succeed(self._reenroll(body, source, client_cert))
        except Exception:
            return defer.fail().addErrback(self._internal, source)

    def _reenroll(self, body: bytes, source: str, client_cert: x509.Certificate | None) -> Outcome:
        if client_cert is None:
            return self.refuse(
                403,
                "no-client-cert",
                "re-enrolment needs the current certificate as TLS client certificate",
                source,
            )
        if not self.signer.issued_by_me(client_cert):
            return self.refuse(
                403,
                "foreign-client-cert",
                "the TLS client certificate was not issued by this CA",
                source,
            )
        rec = self.store.cert(serial_hex(client_cert.serial_number))
        now = self.clock.seconds()
        if rec is None or rec.kind != "node":
            return self.refuse(
                403,
                "unknown-client-cert",
                "the TLS client certificate is not one this CA issued to a node",
                source,
            )
        if rec.revoked_at is not None:
            return self.refuse(
                403, "revoked-client-cert", "the TLS client certificate has been revoked", source
            )
        if rec.not_after <= now:
            return self.refuse(
                403,
                "expired-client-cert",
                "the TLS client certificate has expired; enrol again",
                source,
            )
        try:
            csr = check_request(body, source, self.rules)
        except CsrRefused as e:
            return self.refuse(e.status, e.reason, e.sentence, source)
        if csr.ip != rec.ip:
            return self.refuse(
                403,
                "reenroll-ip",
                f"a renewed certificate must keep the IP address {rec.ip}",
                source,
            )
        if csr.hostname != rec.hostname:
            return self.refuse(
                403,
                "reenroll-hostname",
                f"a renewed certificate must keep the host name {rec.hostname}",
                source,
            )
        if self.store.cert_by_csr(csr.digest) or self.store.request_by_csr(csr.digest):
            return self.refuse(409, "replay", REPLAY, source)
        return self._sign(csr, "reenroll", source)

    # -- administration -----------------------------------------------------

    def pending(self) -> list[dict[str, Any]]:
        return [r.summary() for r in self.store.requests("pending")]

    def approve(self, request_id: int) -> dict[str, Any]:
        queued = self.store.request(request_id)
        if queued is None:
            raise AdminError(f"there is no request {request_id}")
        if queued.state != "pending":
            raise AdminError(f"request {request_id} is {queued.state}, not pending")
        # The request passed every check when it was queued; the stored DER is ours.
        parsed = x509.load_der_x509_csr(queued.csr_der)
        csr = ValidCsr(
            csr=parsed,
            der=queued.csr_der,
            digest=queued.csr_sha256,
            spki_digest=spki_digest(parsed),
            ip=queued.ip,
            hostname=queued.hostname,
            overlay=queued.overlay,
        )
        try:
            _, rec = self._issue(
                csr,
                "manual",
                lambda r: self.store.approve(request_id, r, self.supersede, self.clock.seconds()),
            )
        except StoreError as e:
            raise AdminError(str(e)) from None
        return rec.summary(self.clock.seconds())

    def reject(self, request_id: int, reason: str = "") -> dict[str, Any]:
        try:
            self.store.reject(
                request_id, reason or "rejected by the administrator", self.clock.seconds()
            )
        except StoreError as e:
            raise AdminError(str(e)) from None
        self.log.info("request {id} rejected", id=request_id)
        queued = self.store.request(request_id)
        assert queued is not None
        return queued.summary()

    def revoke(self, target: str, reason: str = "revoked") -> list[str]:
        if not target.strip():
            raise AdminError(
                "say which certificate to revoke: a serial, an IP address or a host name"
            )
        serials = self.store.revoke(target, self.clock.seconds(), reason)
        if not serials:
            raise AdminError(f"no unrevoked certificate matches {target!r}")
        self.log.info("revoked {serials}", serials=", ".join(serials))
        self.on_revoked(True)
        return serials

    def certificates(self) -> list[dict[str, Any]]:
        now = self.clock.seconds()
        return [r.summary(now) for r in self.store.certs()]
