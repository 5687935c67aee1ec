"""
The EST (RFC 7030) HTTPS front end: twisted.web resources over the authority.

Thin adapters: each resource reads the request (body, source address,
Basic credentials, TLS client certificate), hands it to the L{Authority}
and renders the outcome.  Oversized bodies are cut off while they arrive
(L{EstRequest}), never buffered whole.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from io import BytesIO
from typing import Any

from cryptography import x509
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server

from wow.ca.authority import Authority, Issued, Outcome, Refusal, Waiting
from wow.ca.issue import est_certs

PKCS7 = b"application/pkcs7-mime; smime-type=certs-only"
PKCS10 = "application/pkcs10"


class EstRequest(server.Request):
    """A request whose body stops being stored once it exceeds the site's limit."""

    too_large = False
    _received = 0

    def _limit(self) -> int:
        site = getattr(self.channel, "site", None)
        return int(getattr(site, "max_body", 16384))

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self._limit():
            self.too_large = True
            self.content = BytesIO()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.too_large:
            return
        self._received += len(data)
        if self._received > self._limit():
            self.too_large = True
            self.content = BytesIO()
            return
        super().handleContentChunk(data)


class EstSite(server.Site):
    requestFactory = EstRequest

    def __init__(self, root: resource.Resource, max_body: int, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self.max_body = max_body


def render_outcome(request: server.Request, outcome: Outcome) -> bytes:
    """Status, headers and body for one outcome."""
    if isinstance(outcome, Issued):
        request.setResponseCode(200)
        request.setHeader(b"content-type", PKCS7)
        request.setHeader(b"content-transfer-encoding", b"base64")
        return est_certs([outcome.cert])
    if isinstance(outcome, Waiting):
        request.setResponseCode(202)
        request.setHeader(b"retry-after", str(outcome.retry_after).encode())
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return (
            f"request {outcome.request_id} is waiting for approval; "
            f"retry after {outcome.retry_after} seconds\n"
        ).encode()
    return render_refusal(request, outcome)


def render_refusal(request: server.Request, refusal: Refusal) -> bytes:
    request.setResponseCode(refusal.status)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    if refusal.challenge:
        request.setHeader(b"www-authenticate", b'Basic realm="wow-ca"')
    return (refusal.sentence.rstrip(".") + ".\n").encode()


def source_address(request: server.Request) -> str:
    return str(request.getClientAddress().host)


def peer_certificate(request: server.Request) -> x509.Certificate | None:
    transport = request.channel.transport if request.channel else None
    get = getattr(transport, "getPeerCertificate", None)
    if get is None:
        return None
    peer = get()
    return peer.to_cryptography() if peer is not None else None


def basic_credentials(request: server.Request) -> tuple[str, str] | None:
    if not request.getHeader(b"authorization"):
        return None
    user = request.getUser()
    password = request.getPassword()
    if not user and not password:
        return None
    return user.decode("utf-8", "replace"), password.decode("utf-8", "replace")


class _EnrollBase(resource.Resource):
    isLeaf = True
    log = Logger()

    def __init__(self, authority: Authority) -> None:
        super().__init__()
        self.authority = authority

    def process(self, request: server.Request, body: bytes, source: str) -> Any:
        raise NotImplementedError

    def render_POST(self, request: server.Request) -> bytes | int:
        source = source_address(request)
        if getattr(request, "too_large", False):
            limit = getattr(getattr(request.channel, "site", None), "max_body", 0)
            return render_refusal(
                request,
                self.authority.refuse(
                    413, "oversized", f"the request body is larger than {limit} bytes", source
                ),
            )
        ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if ctype and ctype != PKCS10.encode():
            return render_refusal(
                request,
                self.authority.refuse(
                    415,
                    "content-type",
                    f"the request must be sent as {PKCS10}, not {ctype.decode('ascii', 'replace')}",
                    source,
                ),
            )
        assert request.content is not None
        body = request.content.read()
        finished: list[object] = []

        def done(result: object) -> None:
            finished.append(result)

        request.notifyFinish().addBoth(done)
        d = self.process(request, body, source)

        def answer(outcome: Outcome) -> None:
            if finished:
                return  # the client went away; the outcome is stored anyway
            request.write(render_outcome(request, outcome))
            request.finish()

        def crashed(failure: Failure) -> None:
            self.log.failure("rendering an EST answer failed", failure)
            if not finished:
                request.setResponseCode(500)
                request.finish()

        d.addCallback(answer).addErrback(crashed)
        return server.NOT_DONE_YET


class SimpleEnroll(_EnrollBase):
    def process(self, request: server.Request, body: bytes, source: str) -> Any:
        return self.authority.enroll(body, source, basic_credentials(request))


class SimpleReenroll(_EnrollBase):
    def process(self, request: server.Request, body: bytes, source: str) -> Any:
        return self.authority.reenroll(body, source, peer_certificate(request))


class StaticBytes(resource.Resource):
    """GET answered from a callable, so the content can change (the CRL)."""

    isLeaf = True

    def __init__(
        self,
        content_type: bytes,
        content: Callable[[], bytes],
        extra: dict[bytes, bytes] | None = None,
    ) -> None:
        super().__init__()
        self.content_type = content_type
        self.content = content
        self.extra = extra or {}

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", self.content_type)
        for k, v in self.extra.items():
            request.setHeader(k, v)
        return self.content()


def build_root(
    authority: Authority, crl: Callable[[], bytes], health: Callable[[], dict[str, Any]]
) -> resource.Resource:
    """The URL tree: /.well-known/est/{cacerts,simpleenroll,simplereenroll}, /crl, /health."""
    root = resource.Resource()
    well_known = resource.Resource()
    est = resource.Resource()
    root.putChild(b".well-known", well_known)
    well_known.putChild(b"est", est)
    cacerts = est_certs([authority.signer.cert])
    est.putChild(
        b"cacerts", StaticBytes(PKCS7, lambda: cacerts, {b"content-transfer-encoding": b"base64"})
    )
    est.putChild(b"simpleenroll", SimpleEnroll(authority))
    est.putChild(b"simplereenroll", SimpleReenroll(authority))
    root.putChild(b"crl", StaticBytes(b"application/pkix-crl", crl))
    root.putChild(
        b"health",
        StaticBytes(
            b"application/json", lambda: json.dumps(health(), sort_keys=True).encode() + b"\n"
        ),
    )
    return root


class EstTlsContextFactory(ssl.ContextFactory):
    """
    The server's TLS context: its CA-issued certificate, TLS 1.2 or newer,
    and a client certificate requested but optional, so simplereenroll can
    see the node's current certificate while simpleenroll needs none.  The
    client certificate is checked by the authority (issuer, store,
    revocation), not by OpenSSL, so a stale one never breaks the handshake.
    """

    def __init__(self, key_pem: bytes, cert_pem: bytes, ca_cert: x509.Certificate) -> None:
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
        ctx.use_privatekey(crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem))
        ctx.use_certificate(crypto.load_certificate(crypto.FILETYPE_PEM, cert_pem))
        ctx.check_privatekey()
        ca = crypto.X509.from_cryptography(ca_cert)
        ctx.add_extra_chain_cert(ca)
        ctx.add_client_ca(ca)
        ctx.set_verify(SSL.VERIFY_PEER, lambda conn, cert, errno, depth, ok: True)
        ctx.set_session_id(b"wow-ca")
        self._context = ctx

    def getContext(self) -> SSL.Context:
        return self._context
