"""The daemon side of the control socket."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.internet.interfaces import IReactorUNIX
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

#: A command handler: takes the request's C{args}, returns a JSON-able value
#: or a Deferred of one; raises L{CommandError} for a refusal.
Handler = Callable[[dict[str, Any]], Any]

MAX_REQUEST = 64 * 1024


class CommandError(Exception):
    """A refusal the client should see as its one-sentence error."""


class ControlProtocol(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = MAX_REQUEST
    log = Logger()

    def __init__(self, handlers: dict[str, Handler]) -> None:
        self.handlers = handlers

    def lineLengthExceeded(self, line: bytes) -> None:
        self._send({"ok": False, "error": "request too long"})
        self.transport.loseConnection()

    def lineReceived(self, line: bytes) -> None:
        try:
            request = json.loads(line)
            command = request["command"]
            args = request.get("args") or {}
            if not isinstance(command, str) or not isinstance(args, dict):
                raise ValueError("bad types")
        except (ValueError, KeyError, TypeError):
            self._send({"ok": False, "error": "malformed control request"})
            return
        handler = self.handlers.get(command)
        if handler is None:
            self._send({"ok": False, "error": f"unknown command {command!r}"})
            return
        d = defer.maybeDeferred(handler, args)
        d.addCallbacks(
            lambda result: self._send({"ok": True, "result": result}),
            self._failed,
            errbackArgs=(command,),
        )

    def _failed(self, failure: Any, command: str) -> None:
        if failure.check(CommandError):
            self._send({"ok": False, "error": str(failure.value)})
        else:
            self.log.failure("control command {command} failed", failure, command=command)
            self._send({"ok": False, "error": f"internal error in {command}"})

    def _send(self, obj: dict[str, Any]) -> None:
        if self.transport is not None:
            self.sendLine(json.dumps(obj, default=str).encode())


class ControlFactory(Factory):
    def __init__(self) -> None:
        self.handlers: dict[str, Handler] = {}

    def register(self, name: str, handler: Handler) -> None:
        self.handlers[name] = handler

    def buildProtocol(self, addr: Any) -> ControlProtocol:
        proto = ControlProtocol(self.handlers)
        proto.factory = self
        return proto


class ControlService(StreamServerEndpointService):
    """
    Listens on the control socket, mode 0600 (root-only when run as root).

    A stale socket left by a killed daemon is removed before listening.
    """

    def __init__(self, reactor: IReactorUNIX, path: str) -> None:
        self.path = path
        self.factory = ControlFactory()
        super().__init__(UNIXServerEndpoint(reactor, path, mode=0o600, wantPID=True), self.factory)

    def register(self, name: str, handler: Handler) -> None:
        self.factory.register(name, handler)

    def privilegedStartService(self) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), mode=0o700, exist_ok=True)
        super().privilegedStartService()
