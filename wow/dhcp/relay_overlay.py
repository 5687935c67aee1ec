"""
The relay agent's transport over the overlay.

Relayed DHCP messages travel as routed overlay messages of kind
L{DHCP_RELAY_KIND}, whose first byte says which way:

- L{TO_SERVER}: a relayed client message, sent to the node that holds the
  DHCP server's virtual IP (found with a DHT get of its lease key, cached
  for at most L{SERVER_CACHE} seconds; messages wait, bounded, while the
  lookup runs);
- L{TO_CLIENT}: a server reply, sent by the server's node to the node named
  in option 82's remote id; accepted only from the node we relayed to.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wow.dhcp.dhtclient import DhtEntry, IDhtClient, failure_reason, lease_key
from wow.dhcp.relay import IRelayTransport, RelayAgent
from wow.metrics import Counters
from wow.overlay import address as A
from wow.overlay import wire as W

#: Overlay application kind of relayed DHCP (0x20-0x3F are application kinds).
DHCP_RELAY_KIND = W.APP_FIRST + 4
TO_SERVER = 1
TO_CLIENT = 2
#: How long the server's node is remembered.
SERVER_CACHE = 30.0
#: Relayed messages waiting for the server's node to be looked up.
MAX_WAITING = 16


@implementer(IRelayTransport)
class OverlayRelayTransport:
    """
    @param overlay: the overlay service (C{send_to(address, kind, payload,
        mode)}, C{register_handler(kind, handler)}).
    """

    log = Logger()

    def __init__(self, overlay: Any, dht: IDhtClient, network: IPv4Network,
                 server: IPv4Address, clock: IReactorTime, counters: Counters) -> None:
        self.overlay = overlay
        self.dht = dht
        self.network = network
        self.server = server
        self.clock = clock
        self.counters = counters
        self.agent: RelayAgent | None = None
        #: the server's node and until when the answer is fresh
        self._server_node: int | None = None
        self._fresh_until = 0.0
        self._waiting: list[bytes] = []
        self._looking = False

    def attach(self, agent: RelayAgent) -> None:
        self.agent = agent
        self.overlay.register_handler(DHCP_RELAY_KIND, self._delivered)

    def _drop(self, reason: str) -> None:
        self.counters.inc("dhcp_relay_dropped", reason=reason)

    # -- sending ----------------------------------------------------------

    def _send(self, address: int, tag: int, payload: bytes) -> None:
        if not self.overlay.send_to(address, DHCP_RELAY_KIND, bytes([tag]) + payload, W.EXACT):
            self._drop("no-overlay-route")

    def send_to_server(self, payload: bytes) -> None:
        if self._server_node is not None and self._fresh_until > self.clock.seconds():
            self._send(self._server_node, TO_SERVER, payload)
            return
        if len(self._waiting) >= MAX_WAITING:
            self._drop("server-lookup-queue-full")
            return
        self._waiting.append(payload)
        if not self._looking:
            self._looking = True
            self.dht.get(lease_key(self.network, self.server)).addCallbacks(
                self._found, self._lookup_failed)

    def _found(self, entries: list[DhtEntry]) -> None:
        self._looking = False
        waiting, self._waiting = self._waiting, []
        if not entries:
            self.counters.inc("dhcp_relay_dropped", amount=len(waiting),
                              reason="server-not-found")
            self.log.warn("no node holds the DHCP server's address {server}",
                          server=self.server)
            return
        entry = entries[0]
        self._server_node = A.from_bytes(entry.owner)
        self._fresh_until = self.clock.seconds() + min(SERVER_CACHE, entry.ttl_left)
        for payload in waiting:
            self._send(self._server_node, TO_SERVER, payload)

    def _lookup_failed(self, failure: Failure) -> None:
        self._looking = False
        waiting, self._waiting = self._waiting, []
        reason = failure_reason(failure)
        self.counters.inc("dhcp_relay_dropped", amount=len(waiting),
                          reason=f"server-lookup-{reason}")

    def send_to_node(self, address: bytes, payload: bytes) -> None:
        self._send(A.from_bytes(address), TO_CLIENT, payload)

    # -- receiving --------------------------------------------------------

    def _delivered(self, delivery: Any) -> None:
        payload: bytes = delivery.payload
        if self.agent is None or not payload:
            self._drop("bad-relay-message")
            return
        tag, body = payload[0], payload[1:]
        if tag == TO_SERVER:
            self.agent.from_relay(body)
        elif tag == TO_CLIENT:
            if delivery.src != self._server_node:
                # Only the node we relayed to may answer for the server.
                self._drop("reply-not-from-server-node")
                return
            self.agent.from_server(body)
        else:
            self._drop("bad-relay-message")
