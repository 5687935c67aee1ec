"""
Central DHCP: an RFC 3046 relay agent on the TAP (sans-I/O).

In C{dhcp.mode = "relay"} the node does not answer its clients itself: it
relays their messages to one standard DHCP server (dnsmasq, ISC, Kea) and
the server's replies back, as a router's relay agent does (RFC 1542 §4,
RFC 3046):

- B{client → server} (L{RelayAgent.handle} with a BOOTREQUEST from the TAP):
  C{giaddr} is set to the relay address (the virtual gateway when relaying
  over the overlay), C{hops} incremented, and option 82 appended with
  sub-options 1 (circuit id: the client's MAC), 2 (remote id: this node's
  20-byte overlay address), 11 (server identifier override, RFC 5107: the
  virtual gateway, so the client's unicast renewals and releases come to the
  TAP and are relayed too) and, when C{giaddr} is not on the virtual subnet,
  5 (link selection, RFC 3527: the gateway, from whose subnet to allocate).
  The message goes to C{send_to_server}.
- B{server → client} (L{RelayAgent.from_server}): a BOOTREPLY whose option 82
  names this node is stripped of option 82 and delivered to the client on
  the TAP as RFC 2131 §4.1 says (NAK broadcast; C{ciaddr} unicast; broadcast
  bit; else unicast to C{yiaddr}), from the virtual gateway.
- B{the server's own node}: the virtual gateway address is the same on every
  node, so the server's replies to C{giaddr}:67 leave on the TAP of the node
  that hosts the server; that node's agent sees them (L{handle} with a
  BOOTREPLY) and sends each to the node named in its remote id
  (C{send_to_node}), or delivers it itself.  Relayed requests that reach the
  server's node (L{from_relay}) are written to its TAP (C{to_local_server}).

An ACK binds the address to the relaying node: it is published in the DHT
(C{dhcp:<network>:<ip>}, value: this node's overlay address, TTL: the lease)
through the same L{IDhtClient} as the DHT allocator, so the IP router finds
it; a RELEASE or NAK deletes it.  The relayed leases are kept in the state
directory so that a restarted node still knows its clients.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface

from wow.dhcp.allocator import BOUND, Lease, client_key
from wow.dhcp.dhtclient import IDhtClient, failure_reason, lease_key
from wow.dhcp.server import LIMITED_BROADCAST, ZERO, DhcpReply
from wow.metrics import Counters
from wow.net.dhcp import (
    BOOTREPLY,
    BOOTREQUEST,
    DHCPACK,
    DHCPDECLINE,
    DHCPNAK,
    DHCPRELEASE,
    OPT_LEASE_TIME,
    OPT_RELAY_AGENT_INFO,
    RAI_CIRCUIT_ID,
    RAI_REMOTE_ID,
    DhcpMessage,
    build_dhcp,
    parse_dhcp,
    relay_agent_info_option,
)
from wow.net.errors import CodecError
from wow.net.ethernet import BROADCAST
from wow.util.durable import atomic_write

#: RFC 3527 link selection and RFC 5107 server identifier override.
RAI_LINK_SELECTION = 5
RAI_SERVER_ID_OVERRIDE = 11
#: RFC 1542 §4.1.1: a relay discards requests that went through this many.
MAX_HOPS = 16
#: How long a relayed lease's DHT record outlives the lease.
GRACE = 30

class IRelayTransport(Interface):
    """How relayed DHCP messages travel between nodes (UDP, the overlay)."""

    def send_to_server(payload: bytes) -> None:
        """A relayed client message, to the DHCP server (or the node hosting it)."""

    def send_to_node(address: bytes, payload: bytes) -> None:
        """A server reply, to the relaying node with overlay address C{address}."""

    def attach(agent: RelayAgent) -> None:
        """Hand what arrives to C{agent.from_server} / C{agent.from_relay} from now on."""


SendToServer = Callable[[bytes], None]
SendToNode = Callable[[bytes, bytes], None]  # (overlay address, DHCP payload)
Deliver = Callable[[DhcpReply], None]


@dataclass(frozen=True)
class RelaySettings:
    """What the agent needs to know; built from the node configuration."""

    #: The virtual gateway: the server identifier clients see.
    gateway: IPv4Address
    network: IPv4Network
    #: This node's overlay address (option 82 remote id).
    me: bytes
    #: C{giaddr}: the gateway over the overlay, our underlay address over UDP.
    giaddr: IPv4Address


class RelayAgent:
    """
    One agent per TAP.  Like L{wow.dhcp.server.DhcpServer} it offers
    L{handle} to the frame dispatcher and L{is_local}/L{mac_of} to the ARP
    responder and the router.
    """

    log = Logger()
    VERSION = 1

    def __init__(self, settings: RelaySettings, path: str, dht: IDhtClient | None,
                 clock: IReactorTime, counters: Counters, send_to_server: SendToServer,
                 deliver: Deliver, send_to_node: SendToNode | None = None,
                 to_local_server: Callable[[bytes], None] | None = None) -> None:
        self.settings = settings
        self.path = path
        self.dht = dht
        self.clock = clock
        self.counters = counters
        self.send_to_server = send_to_server
        self.deliver = deliver
        self.send_to_node = send_to_node
        self.to_local_server = to_local_server
        #: address -> lease of a client on this TAP, learnt from the server's ACKs
        self._leases: dict[IPv4Address, Lease] = {}
        #: addresses whose last publication in the DHT succeeded
        self._published: set[IPv4Address] = set()
        self._load()

    # -- the host's addresses -------------------------------------------

    def _live(self, ip: IPv4Address) -> Lease | None:
        lease = self._leases.get(ip)
        return lease if lease is not None and lease.expires > self.clock.seconds() else None

    def is_local(self, ip: IPv4Address) -> bool:
        return self._live(ip) is not None

    def mac_of(self, ip: IPv4Address) -> bytes | None:
        lease = self._live(ip)
        return lease.mac if lease is not None else None

    def restore(self, leases: list[Lease]) -> None:
        for lease in leases:
            self._leases[lease.ip] = lease

    def leases(self) -> Deferred[list[Lease]]:
        now = self.clock.seconds()
        return succeed(sorted((lease for lease in self._leases.values() if lease.expires > now),
                              key=lambda lease: lease.ip))

    def start(self) -> None:
        """After a restart: publish the leases still bound again."""
        for lease in list(self._leases.values()):
            if lease.expires > self.clock.seconds():
                self._publish(lease.ip, lease.expires - self.clock.seconds())

    # -- persistence ------------------------------------------------------

    def _load(self) -> None:
        try:
            with open(self.path, "rb") as f:
                records = json.loads(f.read())["leases"]
            leases = [Lease.from_json(r) for r in records]
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            self.counters.inc("lease_file_errors", reason="corrupt")
            self.log.error("relayed lease file {path} is unreadable: {error}", path=self.path,
                           error=e)
            return
        self.restore(leases)

    def _save(self) -> None:
        now = self.clock.seconds()
        records = [lease.to_json() for lease in self._leases.values() if lease.expires > now]
        data = json.dumps({"version": self.VERSION, "leases": records}, sort_keys=True)
        atomic_write(self.path, data.encode() + b"\n", mode=0o600)

    # -- drops ----------------------------------------------------------------

    def _drop(self, reason: str, msg: DhcpMessage | None = None) -> Deferred[None]:
        self.counters.inc("dhcp_relay_dropped", reason=reason)
        self.log.info("DHCP message not relayed: {reason} (xid {xid})", reason=reason,
                      xid=f"{msg.xid:#x}" if msg is not None else "-")
        return succeed(None)

    # -- from the TAP -----------------------------------------------------

    def handle(self, msg: DhcpMessage, to_broadcast: bool) -> Deferred[None]:
        """
        A DHCP message to port 67 read from the TAP: a client's request (to
        relay) or, on the server's node, the server's reply (to route).
        Never fails; what is not relayed is counted.
        """
        if msg.op == BOOTREPLY:
            return self._reply_from_tap(msg)
        if msg.op != BOOTREQUEST:
            return self._drop("bad-op", msg)
        if msg.htype != 1 or msg.hlen != 6:
            return self._drop("unsupported-hardware", msg)
        if msg.giaddr != ZERO:
            return self._drop("already-relayed", msg)
        try:
            if msg.option(OPT_RELAY_AGENT_INFO) is not None:
                # RFC 3046 §2.1: from an untrusted circuit, giaddr 0 + option 82: discard.
                return self._drop("client-sent-option-82", msg)
        except CodecError:
            return self._drop("bad-option-82", msg)
        if msg.hops >= MAX_HOPS:
            return self._drop("too-many-hops", msg)
        relayed = self._relayed(msg)
        try:
            payload = build_dhcp(relayed)
        except CodecError:
            return self._drop("unencodable", msg)
        mtype = msg.message_type
        if mtype == DHCPRELEASE:
            self._forget(msg.ciaddr, msg.chaddr[:6], "release")
        elif mtype == DHCPDECLINE and msg.requested_ip is not None:
            self._forget(msg.requested_ip, msg.chaddr[:6], "decline")
        self.counters.inc("dhcp_relayed", direction="to-server")
        self.send_to_server(payload)
        return succeed(None)

    def _relayed(self, msg: DhcpMessage) -> DhcpMessage:
        s = self.settings
        others: list[tuple[int, bytes]] = [(RAI_SERVER_ID_OVERRIDE, s.gateway.packed)]
        if s.giaddr not in s.network:
            others.insert(0, (RAI_LINK_SELECTION, s.gateway.packed))
        option = relay_agent_info_option(circuit_id=bytes(msg.chaddr[:6]), remote_id=s.me,
                                         others=others)
        return replace(msg, giaddr=s.giaddr, hops=msg.hops + 1,
                       options=tuple(msg.options) + (option,))

    def _reply_from_tap(self, msg: DhcpMessage) -> Deferred[None]:
        """The server on this node's TAP answered a relay: route it by remote id."""
        info = self._info(msg)
        if info is None:
            return self._drop("reply-without-option-82", msg)
        remote = info.get(RAI_REMOTE_ID)
        if remote == self.settings.me:
            self._to_client(msg, info)
        elif remote is not None and len(remote) == len(self.settings.me) \
                and self.send_to_node is not None:
            self.counters.inc("dhcp_relayed", direction="to-relaying-node")
            self.send_to_node(remote, build_dhcp(msg))
        else:
            return self._drop("unknown-remote-id", msg)
        return succeed(None)

    # -- from the transport -------------------------------------------------

    def from_server(self, payload: bytes) -> None:
        """A reply of the server that came back over the transport."""
        try:
            msg = parse_dhcp(payload)
        except CodecError as e:
            self.counters.inc("malformed", layer="dhcp", reason=e.reason)
            self._drop("bad-dhcp")
            return
        if msg.op != BOOTREPLY:
            self._drop("not-a-reply", msg)
            return
        info = self._info(msg)
        if info is None:
            self._drop("reply-without-option-82", msg)
            return
        if info.get(RAI_REMOTE_ID) != self.settings.me:
            self._drop("not-our-remote-id", msg)
            return
        self._to_client(msg, info)

    def from_relay(self, payload: bytes) -> None:
        """On the server's node: a relayed request from another node, for the TAP."""
        try:
            msg = parse_dhcp(payload)
        except CodecError as e:
            self.counters.inc("malformed", layer="dhcp", reason=e.reason)
            self._drop("bad-dhcp")
            return
        if msg.op != BOOTREQUEST or msg.giaddr == ZERO or self._info(msg) is None:
            self._drop("not-a-relayed-request", msg)
            return
        if self.to_local_server is None:
            self._drop("no-local-server", msg)
            return
        self.counters.inc("dhcp_relayed", direction="to-local-server")
        self.to_local_server(payload)

    # -- to the client ------------------------------------------------------

    def _info(self, msg: DhcpMessage) -> dict[int, bytes] | None:
        try:
            subs = msg.relay_agent_info
        except CodecError:
            return None
        return dict(subs) if subs else None

    def _to_client(self, msg: DhcpMessage, info: dict[int, bytes]) -> None:
        mac = bytes(msg.chaddr[:6])
        if msg.hlen != 6 or info.get(RAI_CIRCUIT_ID) != mac:
            self._drop("circuit-id-mismatch", msg)
            return
        stripped = replace(msg, options=tuple(
            (code, value) for code, value in msg.options if code != OPT_RELAY_AGENT_INFO))
        mtype = msg.message_type
        if mtype == DHCPACK and msg.yiaddr != ZERO:
            lease_time = stripped.option(OPT_LEASE_TIME)
            seconds = int.from_bytes(lease_time, "big") if lease_time and len(lease_time) == 4 \
                else 3600
            self._learn(stripped, mac, seconds)
        elif mtype == DHCPNAK:
            for ip, lease in list(self._leases.items()):
                if lease.mac == mac:
                    self._forget(ip, mac, "nak")
        self.counters.inc("dhcp_relayed", direction="to-client")
        self.deliver(DhcpReply(stripped, *self._destination(stripped, mac)))

    @staticmethod
    def _destination(msg: DhcpMessage, mac: bytes) -> tuple[bytes, IPv4Address]:
        """RFC 2131 §4.1, as the relay agent on the client's link applies it."""
        if msg.message_type == DHCPNAK:
            return BROADCAST, LIMITED_BROADCAST
        if msg.ciaddr != ZERO:
            return mac, msg.ciaddr
        if msg.broadcast or msg.yiaddr == ZERO:
            return BROADCAST, LIMITED_BROADCAST
        return mac, msg.yiaddr

    # -- leases and the DHT -------------------------------------------------

    def _learn(self, msg: DhcpMessage, mac: bytes, lease_time: int) -> None:
        ip = msg.yiaddr
        for other, lease in list(self._leases.items()):
            if lease.mac == mac and other != ip:
                self._forget(other, mac, "moved")
        self._leases[ip] = Lease(ip, mac, client_key(mac, msg.client_id), BOUND,
                                 self.clock.seconds() + lease_time)
        self._save()
        self.log.info("relayed DHCPACK {ip} to {mac} lease={lease}s", ip=ip, mac=mac.hex(":"),
                      lease=lease_time)
        self._publish(ip, lease_time)

    def _forget(self, ip: IPv4Address, mac: bytes, why: str) -> None:
        lease = self._leases.get(ip)
        if lease is None or lease.mac != mac:
            return
        del self._leases[ip]
        self._published.discard(ip)
        self._save()
        if self.dht is not None:
            self.dht.delete(lease_key(self.settings.network, ip)).addErrback(
                self._dht_failed, "delete", ip)

    def _publish(self, ip: IPv4Address, seconds: float) -> None:
        """Register C{ip} → this node for the IP router."""
        if self.dht is None:
            return
        key = lease_key(self.settings.network, ip)

        def ok(_: None) -> None:
            self._published.add(ip)
            self.counters.inc("dhcp_relay_published", result="ok")

        self._published.discard(ip)
        self.dht.create(key, self.dht.address, max(1, int(seconds)) + GRACE).addCallbacks(
            ok, self._dht_failed, errbackArgs=("publish", ip))

    def published(self, ip: IPv4Address) -> bool:
        """Whether C{ip} is currently published in the DHT as ours."""
        return ip in self._published and self.is_local(ip)

    def _dht_failed(self, failure: Failure, op: str, ip: IPv4Address) -> None:
        reason = failure_reason(failure)
        self.counters.inc("dhcp_relay_published" if op == "publish" else "dhcp_relay_unpublished",
                          result=reason)
        self.log.warn("DHT {op} of relayed lease {ip} failed: {reason}", op=op, ip=ip,
                      reason=reason)

    def host_address_seen(self, ip: IPv4Address, mac: bytes, lifetime: float = 3600) -> None:
        """
        A static address of the host on this TAP (the DHCP server's, on the
        node that hosts it): record and publish it like a lease, so relayed
        requests addressed to it reach this node.
        """
        current = self._live(ip)
        if current is not None and current.mac == mac and ip in self._published \
                and current.expires - self.clock.seconds() > lifetime / 2:
            return
        self._leases[ip] = Lease(ip, mac, client_key(mac, None), BOUND,
                                 self.clock.seconds() + lifetime)
        self._publish(ip, lifetime)

