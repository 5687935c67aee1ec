"""
The DHCP server for the host's own client(s) on the TAP (sans-I/O).

L{DhcpServer.handle} takes one parsed DHCP message and returns (maybe
later, the allocator may be remote) the reply to send and where to send it;
it never touches a socket or the reactor.  It implements the server side of
RFC 2131: DISCOVER→OFFER; REQUEST in SELECTING (server identifier checked),
INIT-REBOOT, RENEWING and REBINDING → ACK or NAK; RELEASE; DECLINE; INFORM.

The node is authoritative for its TAP: a client that asks (INIT-REBOOT,
RENEWING, REBINDING) for an address the allocator considers free for it gets
it, so a host keeps its address across a node restart even if the lease file
was lost.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from wow.dhcp.allocator import IAllocator, Lease
from wow.metrics import Counters
from wow.net.dhcp import (
    BOOTREPLY,
    BOOTREQUEST,
    DHCPACK,
    DHCPDECLINE,
    DHCPDISCOVER,
    DHCPINFORM,
    DHCPNAK,
    DHCPOFFER,
    DHCPRELEASE,
    DHCPREQUEST,
    OPT_CLIENT_ID,
    OPT_DNS,
    OPT_DOMAIN_NAME,
    OPT_HOST_NAME,
    OPT_INTERFACE_MTU,
    OPT_LEASE_TIME,
    OPT_MESSAGE,
    OPT_MESSAGE_TYPE,
    OPT_REBINDING_TIME,
    OPT_RENEWAL_TIME,
    OPT_SERVER_ID,
    OPT_SUBNET_MASK,
    DhcpMessage,
    parse_client_fqdn,
)
from wow.net.errors import DHCPError
from wow.net.ethernet import BROADCAST

ZERO = IPv4Address(0)
LIMITED_BROADCAST = IPv4Address("255.255.255.255")

TYPE_NAMES = {
    1: "discover", 2: "offer", 3: "request", 4: "decline", 5: "ack", 6: "nak",
    7: "release", 8: "inform",
}


@dataclass(frozen=True)
class ServerSettings:
    """What the server tells clients; built from the node configuration."""

    server_ip: IPv4Address
    network: IPv4Network
    lease_time: int
    dns_servers: tuple[IPv4Address, ...]
    domain: str
    mtu: int

    @property
    def t1(self) -> int:
        return self.lease_time // 2

    @property
    def t2(self) -> int:
        return self.lease_time * 7 // 8


@dataclass(frozen=True)
class DhcpReply:
    """A message to send and its link/IP destination (RFC 2131 §4.1)."""

    message: DhcpMessage
    dst_mac: bytes
    dst_ip: IPv4Address

    @property
    def type_name(self) -> str:
        return TYPE_NAMES.get(self.message.message_type or 0, "?")


_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def _text(value: str | None) -> str:
    """An option's text with unprintable characters removed, bounded."""
    if not value:
        return ""
    return "".join(ch for ch in value if ch.isprintable())[:255]


def _hostname(msg: DhcpMessage) -> str:
    """Option 12 if it is a valid DNS label (it may become a DNS name), else ""."""
    name = (msg.hostname or "").strip()
    return name if _LABEL.match(name) else ""


def _fqdn(msg: DhcpMessage) -> str:
    """Option 81's name, "" when absent or malformed (it is only recorded)."""
    raw = msg.client_fqdn
    if raw is None:
        return ""
    try:
        return _text(parse_client_fqdn(raw).name)
    except DHCPError:
        return ""


class DhcpServer:
    """
    One server per TAP.  Besides answering, it keeps which addresses are
    offered or bound to clients on this TAP (L{is_local}), because the ARP
    responder must stay silent for those.
    """

    log = Logger()

    def __init__(self, settings: ServerSettings, allocator: IAllocator, clock: IReactorTime,
                 counters: Counters) -> None:
        self.settings = settings
        self.allocator = allocator
        self.clock = clock
        self.counters = counters
        self._local_by_ip: dict[IPv4Address, tuple[bytes, float]] = {}
        #: MAC → the address ACKed to it (offers are not in here).
        self._bound: dict[bytes, tuple[IPv4Address, float]] = {}
        #: Told of every ACK (new or renewed lease) and every release or decline:
        #: C{bound(ip, mac, lease_seconds, hostname, fqdn)} and C{ended(ip, mac)}.
        self.lease_observers: list[Any] = []
        self._handlers: dict[int, Callable[[DhcpMessage, bool], Deferred[DhcpReply | None]]] = {
            DHCPDISCOVER: self._discover,
            DHCPREQUEST: self._request,
            DHCPDECLINE: self._decline,
            DHCPRELEASE: self._release,
            DHCPINFORM: self._inform,
        }

    # -- the host's addresses -------------------------------------------

    def is_local(self, ip: IPv4Address) -> bool:
        """Whether C{ip} is offered or bound to a client on this TAP."""
        entry = self._local_by_ip.get(ip)
        return entry is not None and entry[1] > self.clock.seconds()

    def mac_of(self, ip: IPv4Address) -> bytes | None:
        """The MAC of the local client holding C{ip} (for delivering packets to it)."""
        entry = self._local_by_ip.get(ip)
        return entry[0] if entry is not None and entry[1] > self.clock.seconds() else None

    def ip_of(self, mac: bytes) -> IPv4Address | None:
        """The address ACKed to the client with C{mac} and not yet expired, if any."""
        entry = self._bound.get(mac)
        if entry is None or entry[1] <= self.clock.seconds():
            return None
        return entry[0]

    def restore(self, leases: list[Lease]) -> None:
        """Seed the local view from the allocator's bound leases after a restart."""
        for lease in leases:
            self._remember(lease.mac, lease.ip, lease.expires)
            self._bound[lease.mac] = (lease.ip, lease.expires)

    def _tell(self, event: str, *args: Any) -> None:
        """Notify the lease observers; one failing observer never breaks DHCP."""
        for observer in self.lease_observers:
            try:
                getattr(observer, event)(*args)
            except Exception:
                self.log.failure("lease observer {observer!r} failed", observer=observer)

    def _remember(self, mac: bytes, ip: IPv4Address, expires: float) -> None:
        for other, (m, _) in list(self._local_by_ip.items()):
            if m == mac and other != ip:
                del self._local_by_ip[other]
        self._local_by_ip[ip] = (mac, expires)

    def _forget(self, mac: bytes, ip: IPv4Address | None = None) -> None:
        bound = self._bound.get(mac)
        if bound is not None and (ip is None or bound[0] == ip):
            del self._bound[mac]
        for other, (m, _) in list(self._local_by_ip.items()):
            if m == mac and (ip is None or other == ip):
                del self._local_by_ip[other]

    # -- entry point ------------------------------------------------------

    def handle(self, msg: DhcpMessage, to_broadcast: bool) -> Deferred[DhcpReply | None]:
        """
        Answer one message from the TAP.

        @param to_broadcast: the request was sent to the limited broadcast
            address (tells REBINDING from RENEWING).
        @return: a Deferred firing with the reply, or L{None} when the
            message gets no answer (the reason is logged and counted).
            It never fails.
        """
        reason = self._refusal(msg)
        if reason is not None:
            return self._refuse(msg, reason)
        mtype = msg.message_type
        self.counters.inc("dhcp_messages", type=TYPE_NAMES.get(mtype or 0, "?"))
        handler = self._handlers[mtype]  # type: ignore[index]
        d = maybeDeferred(handler, msg, to_broadcast)
        d.addErrback(self._failed, msg)
        return d

    def _refusal(self, msg: DhcpMessage) -> str | None:
        if msg.op != BOOTREQUEST:
            return "not-a-request"
        if msg.htype != 1 or msg.hlen != 6:
            return "unsupported-hardware"
        if msg.giaddr != ZERO:
            return "relayed"
        mtype = msg.message_type
        if mtype is None:
            return "bootp-not-supported"
        if mtype not in self._handlers:
            return "unexpected-type"
        return None

    def _refuse(self, msg: DhcpMessage, reason: str) -> Deferred[DhcpReply | None]:
        self.counters.inc("dhcp_refused", reason=reason)
        self.log.info("DHCP message from {mac} (xid {xid:#x}) refused: {reason}",
                      mac=self._mac(msg).hex(":"), xid=msg.xid, reason=reason)
        return succeed(None)

    def _failed(self, failure: Failure, msg: DhcpMessage) -> None:
        self.counters.inc("dhcp_refused", reason="allocator-error")
        self.log.failure("allocator failed answering {mac}", failure,
                         mac=self._mac(msg).hex(":"))
        return None

    @staticmethod
    def _mac(msg: DhcpMessage) -> bytes:
        return bytes(msg.chaddr[:6])

    # -- message types ----------------------------------------------------

    def _discover(self, msg: DhcpMessage, to_broadcast: bool) -> Deferred[DhcpReply | None]:
        mac = self._mac(msg)

        def offered(lease: Lease | None) -> DhcpReply | None:
            if lease is None:
                self.counters.inc("dhcp_refused", reason="pool-exhausted")
                self.log.warn("no address left to offer {mac}", mac=mac.hex(":"))
                return None
            self._remember(mac, lease.ip, max(lease.expires, self.clock.seconds() + 1))
            return self._reply(msg, DHCPOFFER, lease.ip, with_lease=True)

        return maybeDeferred(self.allocator.offer, mac, msg.client_id, msg.requested_ip
                             ).addCallback(offered)

    def _request(self, msg: DhcpMessage, to_broadcast: bool) -> Deferred[DhcpReply | None]:
        mac = self._mac(msg)
        server_id = msg.server_id
        requested = msg.requested_ip
        if server_id is not None:
            if server_id != self.settings.server_ip:
                # SELECTING and the client chose another server: drop our offer.
                self._forget(mac)
                maybeDeferred(self.allocator.release, mac, msg.client_id,
                              requested or ZERO).addErrback(lambda f: None)
                return self._refuse(msg, "other-server")
            if requested is None:
                return self._refuse(msg, "no-requested-address")
            return self._bind(msg, requested, "selecting")
        if msg.ciaddr == ZERO:
            if requested is None:
                return self._refuse(msg, "no-requested-address")
            if not self._host_address(requested):
                self.counters.inc("dhcp_naks", reason="wrong-subnet")
                return succeed(self._nak(msg, "requested address is not on this network"))
            return self._bind(msg, requested, "init-reboot")
        state = "rebinding" if to_broadcast else "renewing"
        if not self._host_address(msg.ciaddr):
            self.counters.inc("dhcp_naks", reason="wrong-subnet")
            return succeed(self._nak(msg, "address is not on this network"))
        return self._bind(msg, msg.ciaddr, state)

    def _bind(self, msg: DhcpMessage, ip: IPv4Address, state: str) -> Deferred[DhcpReply | None]:
        mac = self._mac(msg)
        hostname = _hostname(msg)
        if msg.hostname and not hostname:
            self.counters.inc("dhcp_bad_hostname")
            self.log.info("host name {name!r} from {mac} is not a DNS label; not recorded",
                          name=_text(msg.hostname)[:64], mac=mac.hex(":"))
        fqdn = _fqdn(msg)

        def bound(lease: Lease | None) -> DhcpReply:
            if lease is None:
                self.counters.inc("dhcp_naks", reason="address-unavailable")
                self.log.info("DHCPNAK {ip} to {mac} ({state}): not available to it",
                              ip=ip, mac=mac.hex(":"), state=state)
                self._forget(mac)
                return self._nak(msg, "address not available")
            self._remember(mac, lease.ip, lease.expires)
            self._bound[mac] = (lease.ip, lease.expires)
            self._tell("bound", lease.ip, mac, self.settings.lease_time, hostname or "", fqdn or "")
            self.counters.inc("dhcp_acks", state=state)
            self.log.info("DHCPACK {ip} to {mac} ({host}) state={state} lease={lease}s",
                          ip=lease.ip, mac=mac.hex(":"), host=hostname or "-", state=state,
                          lease=self.settings.lease_time)
            return self._reply(msg, DHCPACK, lease.ip, with_lease=True)

        method = self.allocator.renew if state in ("renewing", "rebinding") \
            else self.allocator.commit
        return maybeDeferred(method, mac, msg.client_id, ip, self.settings.lease_time,
                             hostname, fqdn).addCallback(bound)

    def _release(self, msg: DhcpMessage, to_broadcast: bool) -> Deferred[DhcpReply | None]:
        if msg.server_id is not None and msg.server_id != self.settings.server_ip:
            return self._refuse(msg, "other-server")
        mac = self._mac(msg)

        def released(ok: bool) -> None:
            if ok:
                self._forget(mac, msg.ciaddr)
                self._tell("ended", msg.ciaddr, mac)
                self.counters.inc("dhcp_releases")
                self.log.info("DHCPRELEASE {ip} from {mac}", ip=msg.ciaddr, mac=mac.hex(":"))
            else:
                self.counters.inc("dhcp_refused", reason="release-not-held")
            return None

        return maybeDeferred(self.allocator.release, mac, msg.client_id, msg.ciaddr
                             ).addCallback(released)

    def _decline(self, msg: DhcpMessage, to_broadcast: bool) -> Deferred[DhcpReply | None]:
        if msg.server_id is not None and msg.server_id != self.settings.server_ip:
            return self._refuse(msg, "other-server")
        requested = msg.requested_ip
        if requested is None:
            return self._refuse(msg, "no-requested-address")
        mac = self._mac(msg)

        def declined(ok: bool) -> None:
            if ok:
                self._forget(mac, requested)
                self._tell("ended", requested, mac)
                self.counters.inc("dhcp_declines")
                self.log.warn("DHCPDECLINE {ip} from {mac}: address quarantined",
                              ip=requested, mac=mac.hex(":"))
            else:
                self.counters.inc("dhcp_refused", reason="decline-not-held")
            return None

        return maybeDeferred(self.allocator.decline, mac, msg.client_id, requested
                             ).addCallback(declined)

    def _inform(self, msg: DhcpMessage, to_broadcast: bool) -> Deferred[DhcpReply | None]:
        if msg.ciaddr == ZERO:
            return self._refuse(msg, "inform-without-ciaddr")
        self.counters.inc("dhcp_informs")
        return succeed(self._reply(msg, DHCPACK, ZERO, with_lease=False))

    # -- building replies -------------------------------------------------

    def _host_address(self, ip: IPv4Address) -> bool:
        net = self.settings.network
        return (ip in net and ip not in (net.network_address, net.broadcast_address)
                and ip != self.settings.server_ip)

    def _reply(self, msg: DhcpMessage, mtype: int, yiaddr: IPv4Address,
               with_lease: bool) -> DhcpReply:
        s = self.settings
        options: list[tuple[int, bytes]] = [
            (OPT_MESSAGE_TYPE, bytes([mtype])),
            (OPT_SERVER_ID, s.server_ip.packed),
        ]
        if with_lease:
            options += [
                (OPT_LEASE_TIME, struct.pack("!I", s.lease_time)),
                (OPT_RENEWAL_TIME, struct.pack("!I", s.t1)),
                (OPT_REBINDING_TIME, struct.pack("!I", s.t2)),
            ]
        options += [
            (OPT_SUBNET_MASK, s.network.netmask.packed),
            (OPT_DNS, b"".join(ip.packed for ip in s.dns_servers)),
            (OPT_DOMAIN_NAME, s.domain.encode("ascii")),
            (OPT_INTERFACE_MTU, struct.pack("!H", s.mtu)),
        ]
        hostname = _hostname(msg)
        if hostname:
            options.append((OPT_HOST_NAME, hostname.encode("ascii")))
        if msg.client_id:
            options.append((OPT_CLIENT_ID, bytes(msg.client_id)))
        reply = self._message(msg, yiaddr, tuple(options))
        self.counters.inc("dhcp_replies", type=TYPE_NAMES[mtype] if mtype != DHCPACK
                          or with_lease else "ack-inform")
        return DhcpReply(reply, *self._destination(msg, yiaddr))

    def _nak(self, msg: DhcpMessage, text: str) -> DhcpReply:
        options: list[tuple[int, bytes]] = [
            (OPT_MESSAGE_TYPE, bytes([DHCPNAK])),
            (OPT_SERVER_ID, self.settings.server_ip.packed),
            (OPT_MESSAGE, text.encode("ascii")),
        ]
        if msg.client_id:
            options.append((OPT_CLIENT_ID, bytes(msg.client_id)))
        self.counters.inc("dhcp_replies", type="nak")
        # RFC 2131 §4.1: with giaddr 0, a DHCPNAK is always broadcast.
        return DhcpReply(self._message(msg, ZERO, tuple(options), keep_ciaddr=False),
                         BROADCAST, LIMITED_BROADCAST)

    def _message(self, msg: DhcpMessage, yiaddr: IPv4Address,
                 options: tuple[tuple[int, bytes], ...], keep_ciaddr: bool = True) -> DhcpMessage:
        return DhcpMessage(
            op=BOOTREPLY, htype=msg.htype, hlen=msg.hlen, hops=0, xid=msg.xid, secs=0,
            flags=msg.flags, ciaddr=msg.ciaddr if keep_ciaddr else ZERO, yiaddr=yiaddr,
            siaddr=ZERO, giaddr=msg.giaddr, chaddr=msg.chaddr, sname=b"", file=b"",
            options=options,
        )

    def _destination(self, msg: DhcpMessage, yiaddr: IPv4Address) -> tuple[bytes, IPv4Address]:
        """RFC 2131 §4.1 (giaddr is always 0 here: relayed requests are refused)."""
        mac = self._mac(msg)
        if msg.ciaddr != ZERO:
            return mac, msg.ciaddr
        if msg.broadcast or yiaddr == ZERO:
            return BROADCAST, LIMITED_BROADCAST
        return mac, yiaddr
