"""twisted.web resources: the status page and its read-only JSON API."""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from twisted.web.static import Data

from wow.control.server import CommandError, Handler
from wow.prometheus import parse_listen

#: Control commands the page may call: read-only ones only.
READ_ONLY = ("status", "peers", "leases", "netcheck")


class ApiResource(Resource):
    """C{GET /api/NAME} → the JSON result of the read-only control command NAME."""

    isLeaf = True
    log = Logger()

    def __init__(self, handlers: dict[str, Handler]) -> None:
        super().__init__()
        self.handlers = handlers

    def render_GET(self, request: Request) -> Any:
        name = (request.postpath[0] if request.postpath else b"").decode("ascii", "replace")
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        handler = self.handlers.get(name)
        if name not in READ_ONLY or handler is None:
            request.setResponseCode(404)
            return json.dumps({"error": f"no such API {name!r}"}).encode()
        d = defer.maybeDeferred(handler, {})

        def done(result: Any) -> None:
            request.write(json.dumps(result, default=str).encode())
            request.finish()

        def failed(failure: Any) -> None:
            if not failure.check(CommandError):
                self.log.failure("web API {name} failed", failure, name=name)
            request.setResponseCode(500)
            request.write(json.dumps({"error": str(failure.value)}).encode())
            request.finish()

        d.addCallbacks(done, failed)
        return NOT_DONE_YET


class PageResource(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(
            b"content-security-policy",
            b"default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'",
        )
        return files("wow.web").joinpath("status.html").read_bytes()


FAVICON = (
    b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
    b'<circle cx="8" cy="8" r="6" fill="none" stroke="#2b6cb0" stroke-width="2"/></svg>'
)


def status_site(handlers: dict[str, Handler]) -> Site:
    root = Resource()
    root.putChild(b"", PageResource())
    root.putChild(b"favicon.svg", Data(FAVICON, "image/svg+xml"))
    root.putChild(b"favicon.ico", Data(FAVICON, "image/svg+xml"))
    root.putChild(b"api", ApiResource(handlers))
    return Site(root)


def web_service(reactor: Any, handlers: dict[str, Handler], listen: str
                ) -> StreamServerEndpointService:
    """Serve the status page on C{listen} (ADDRESS:PORT, a local address)."""
    host, port = parse_listen(listen, "web.listen")
    return StreamServerEndpointService(
        TCP4ServerEndpoint(reactor, port, interface=host), status_site(handlers)
    )
