"""
A minimal secured peer for namespace tests: the security core over a real
UDP socket under the real reactor, without the rest of a node.

    python tests/security_peer.py --state DIR --me HEX --bind IP:PORT \\
        --peer HEX@IP:PORT --peer-vip IP [--send N --payload TEXT]

Prints C{READY} when listening, C{GOT <text>} for each message received,
C{SENT <n>} when done sending, and C{STATS <json>} (its counters) after each
datagram it receives.  The peer is recognised by its UDP source IP only, so
a test can replay captured datagrams from another port.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall

from wow.metrics import Counters
from wow.security.dtls import DtlsContext
from wow.security.manager import SessionManager
from wow.security.service import load_identity

reactor: Any = _reactor


def hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


class Peer(DatagramProtocol):
    def __init__(self, args: argparse.Namespace) -> None:
        identity, why = load_identity(args.state)
        if identity is None:
            sys.exit(f"security_peer: {why}")
        self.counters = Counters()
        ctx = DtlsContext(identity.ca_cert, identity.cert, identity.key, counters=self.counters)
        self.manager = SessionManager(bytes.fromhex(args.me), ctx, reactor)
        peer_hex, _, where = args.peer.partition("@")
        self.peer = bytes.fromhex(peer_hex)
        self.peer_udp = hostport(where)
        self.peer_vip = args.peer_vip
        self.to_send = args.send
        self.payload = args.payload
        self.sent = 0

    def startProtocol(self) -> None:
        print("READY", flush=True)
        LoopingCall(self.tick).start(0.1)
        if self.to_send:
            LoopingCall(self.send_one).start(0.05)

    def write(self, datagrams: list[bytes]) -> None:
        for d in datagrams:
            self.transport.write(d, self.peer_udp)  # type: ignore[union-attr]

    def tick(self) -> None:
        self.write([d for _, d in self.manager.tick(reactor.seconds())])

    def send_one(self) -> None:
        channel = self.manager.channels.get(self.peer)
        if channel is None or channel.state != "established":
            self.write(self.manager.connect(self.peer, reactor.seconds(), self.peer_vip))
            return
        if self.sent >= self.to_send:
            return
        message = f"{self.payload}-{self.sent}".encode()
        self.write(self.manager.send(self.peer, message, reactor.seconds()))
        self.sent += 1
        if self.sent == self.to_send:
            print(f"SENT {self.sent}", flush=True)

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if addr[0] != self.peer_udp[0]:
            return
        plaintexts, replies = self.manager.receive(self.peer, data, reactor.seconds())
        for text in plaintexts:
            print("GOT", text.decode(errors="replace"), flush=True)
        self.write(replies)
        print("STATS", json.dumps(self.counters.snapshot(), sort_keys=True), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--state", required=True)
    parser.add_argument("--me", required=True)
    parser.add_argument("--bind", required=True)
    parser.add_argument("--peer", required=True)
    parser.add_argument("--peer-vip", required=True)
    parser.add_argument("--send", type=int, default=0)
    parser.add_argument("--payload", default="")
    args = parser.parse_args()
    host, port = hostport(args.bind)
    reactor.listenUDP(port, Peer(args), interface=host)
    reactor.run()


if __name__ == "__main__":
    main()
