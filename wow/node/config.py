"""
The configuration of C{wow-node}, one frozen dataclass per TOML table.

C{etc/wow-node.toml} documents every key with its default; this module is
the single source of truth for names, types, defaults and validation.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from wow.ca.config import NodeCaSection
from wow.dns.config import NodeDnsSection
from wow.util.config import ConfigError, build, load_toml

#: Linux IFNAMSIZ is 16 including the terminating NUL.
MAX_IFNAME = 15

#: The default TAP MTU.  An inner frame (14-byte Ethernet header + MTU) plus
#: the overlay header (44), the data-message header (8), the security
#: session's framing byte (1), the DTLS 1.2 record overhead with AES-GCM
#: (13 header + 8 explicit nonce + 16 tag = 37), UDP (8) and IPv4 (20) must
#: fit a 1500-byte underlay path:
#: 1500 - 20 - 8 - 44 - 8 - 1 - 37 - 14 = 1368; we round down to 1360.
#: docs/architecture.md states the same arithmetic.
UNDERLAY_MTU = 1500
OVERHEAD = 20 + 8 + 44 + 8 + 1 + 37 + 14
DEFAULT_TAP_MTU = 1360
assert DEFAULT_TAP_MTU + OVERHEAD <= UNDERLAY_MTU

_IFNAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_HOSTNAME = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_MAC = re.compile(r"^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$")


@dataclass(frozen=True)
class NodeSection:
    """[node]: identity and where the node keeps its state."""

    #: Host name published for this node (DNS); empty = use the DHCP client's.
    name: str = ""
    #: Directory for keys, leases, certificates (created 0700 if missing).
    state_dir: str = "/var/lib/wow"

    def validate(self) -> None:
        if self.name and not _HOSTNAME.match(self.name):
            raise ConfigError(f"node.name {self.name!r} is not a valid host name")
        if not self.state_dir:
            raise ConfigError("node.state_dir must not be empty")


@dataclass(frozen=True)
class TapSection:
    """[tap]: the virtual NIC."""

    name: str = "wow0"
    mtu: int = DEFAULT_TAP_MTU
    #: The MAC the node answers ARP with (the virtual router); empty = derived.
    router_mac: str = ""
    #: false = an overlay-only node (a pure bootstrap/relay node): no TAP.
    enabled: bool = True
    #: true = IFF_VNET_HDR + TSO offloads on the TAP and UDP GSO/GRO on the
    #: overlay socket: super-frames move as one overlay message (docs/architecture.md).
    #: On by default; a kernel that refuses the offloads gets a plain TAP anyway.
    offload: bool = True
    #: true = packets on established routes move between the TAP and the
    #: overlay socket on a thread of their own (wow/node/dataplane.py): a
    #: third of the round trip of the reactor path on an idle node.  Used
    #: only with [security] enabled = false (it moves packets in clear).
    dataplane: bool = True

    def validate(self) -> None:
        if not self.name or len(self.name) > MAX_IFNAME:
            raise ConfigError(
                f"tap.name {self.name!r} must be 1 to {MAX_IFNAME} characters long"
            )
        if not _IFNAME.match(self.name) or self.name in (".", ".."):
            raise ConfigError(f"tap.name {self.name!r} contains characters not allowed")
        if not 576 <= self.mtu <= 65535:
            raise ConfigError(f"tap.mtu {self.mtu} must be between 576 and 65535")
        if self.router_mac and not _MAC.match(self.router_mac):
            raise ConfigError(f"tap.router_mac {self.router_mac!r} is not a MAC address")


@dataclass(frozen=True)
class NetworkSection:
    """[network]: the virtual IP network shared by every node of a WOW."""

    subnet: str = "10.128.0.0/16"
    #: The virtual router / DHCP server / DNS address, the same on every node.
    gateway: str = "10.128.0.1"
    domain: str = "wow"

    def validate(self) -> None:
        try:
            net = ipaddress.IPv4Network(self.subnet, strict=True)
        except ValueError as e:
            raise ConfigError(
                f"network.subnet {self.subnet!r} is not a valid subnet: {e}") from None
        if net.prefixlen > 30:
            raise ConfigError(f"network.subnet {self.subnet} is too small (at most /30)")
        try:
            gw = ipaddress.IPv4Address(self.gateway)
        except ValueError:
            raise ConfigError(f"network.gateway {self.gateway!r} is not an IPv4 address") from None
        if gw not in net or gw in (net.network_address, net.broadcast_address):
            raise ConfigError(f"network.gateway {gw} is not a host address of {net}")
        labels = self.domain.strip(".").split(".")
        if not self.domain.strip(".") or not all(_HOSTNAME.match(lb) for lb in labels):
            raise ConfigError(f"network.domain {self.domain!r} is not a valid domain name")

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def gateway_address(self) -> ipaddress.IPv4Address:
        return ipaddress.IPv4Address(self.gateway)


@dataclass(frozen=True)
class DhcpSection:
    """[dhcp]: the DHCP server that answers the host's own DHCP client."""

    #: "local": leases from a pool kept in the state dir; "dht": leases
    #: claimed in the overlay's DHT (decentralised); "relay": the host's DHCP
    #: messages relayed (RFC 3046) to one central DHCP server (C{server}).
    #: "dht" is the default: no node is special, and a lone first node (no
    #: bootstrap) is the whole DHT, so it leases too.
    mode: str = "dht"
    lease_time: int = 3600
    #: First and last address handed out; empty = the whole subnet.
    pool_start: str = ""
    pool_end: str = ""
    #: DNS servers given in option 6; empty = the virtual gateway.
    dns_servers: tuple[str, ...] = ()

    #: Relay mode: the DHCP server's address: a virtual IP over the overlay,
    #: an underlay address with C{relay_transport = "udp"}.
    server: str = ""
    #: Relay mode: how relayed messages travel: "overlay" (to the node that
    #: holds C{server}) or "udp" (plain UDP on the underlay, port 67).
    relay_transport: str = "overlay"

    MODES = ("local", "dht", "relay")
    RELAY_TRANSPORTS = ("overlay", "udp")

    def validate(self) -> None:
        if self.mode not in self.MODES:
            raise ConfigError(
                f"dhcp.mode {self.mode!r} is not one of {', '.join(self.MODES)}"
            )
        if self.relay_transport not in self.RELAY_TRANSPORTS:
            raise ConfigError(f"dhcp.relay_transport {self.relay_transport!r} is not one of "
                              f"{', '.join(self.RELAY_TRANSPORTS)}")
        if self.mode == "relay" and not self.server:
            raise ConfigError('dhcp.mode "relay" needs dhcp.server, the DHCP server\'s address')
        if self.server:
            try:
                ipaddress.IPv4Address(self.server)
            except ValueError:
                raise ConfigError(f"dhcp.server {self.server!r} is not an IPv4 address") from None
        # 10 s is far below any sensible production value, but lets tests
        # watch a real client renew.
        if not 10 <= self.lease_time <= 7 * 24 * 3600:
            raise ConfigError(f"dhcp.lease_time {self.lease_time} must be between 10 and 604800")
        for key in ("pool_start", "pool_end"):
            value = getattr(self, key)
            if value:
                try:
                    ipaddress.IPv4Address(value)
                except ValueError:
                    raise ConfigError(f"dhcp.{key} {value!r} is not an IPv4 address") from None
        for server in self.dns_servers:
            try:
                ipaddress.IPv4Address(server)
            except ValueError:
                raise ConfigError(
                    f"dhcp.dns_servers entry {server!r} is not an IPv4 address") from None


def _check_bootstrap(url: str) -> None:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "udp" or not parts.hostname or port is None or parts.path not in ("", "/"):
        raise ConfigError(f"bootstrap {url!r} must look like udp://HOST:PORT")


@dataclass(frozen=True)
class OverlaySection:
    """[overlay]: the peer-to-peer overlay's UDP port and how to join it."""

    #: UDP port for all overlay traffic (0 = any free port).
    listen: int = 4789
    #: Local address to bind ("" = all addresses).
    interface: str = ""
    #: Nodes to join through, as udp://HOST:PORT; empty = start a new ring.
    bootstrap: tuple[str, ...] = ()
    #: Seconds between keepalives on an otherwise silent link (NAT mappings).
    keepalive: float = 15.0
    #: Seconds of silence after which a link is declared dead.
    dead_after: float = 45.0
    #: Near neighbours kept on each side of the ring.
    near: int = 2
    #: Hops a routed message may take.
    ttl: int = 64
    #: Seconds between neighbour-list exchanges with the near neighbours.
    stabilize: float = 10.0
    #: Seconds between lookups of the Chord shortcut targets.
    finger_refresh: float = 300.0
    #: DHT: nodes each value is stored on (the k closest to its key).
    replicas: int = 3
    #: DHT: largest value in bytes.
    dht_max_value: int = 1024
    #: DHT: longest TTL in seconds.
    dht_max_ttl: int = 604800
    #: Seconds without IP traffic after which an on-demand direct link closes.
    ondemand_idle: float = 120.0

    def validate(self) -> None:
        if not 0 <= self.listen <= 65535:
            raise ConfigError(f"overlay.listen {self.listen} is not a UDP port number")
        if not 0.2 <= self.keepalive <= 300:
            raise ConfigError(f"overlay.keepalive {self.keepalive} must be between 0.2 and 300 s")
        if not self.keepalive < self.dead_after <= 3600:
            raise ConfigError(
                f"overlay.dead_after {self.dead_after} must be above overlay.keepalive "
                "and at most 3600 s"
            )
        if not 2 <= self.near <= 8:
            raise ConfigError(f"overlay.near {self.near} must be between 2 and 8")
        if not 8 <= self.ttl <= 255:
            raise ConfigError(f"overlay.ttl {self.ttl} must be between 8 and 255")
        if not 1 <= self.stabilize <= 3600 or not 10 <= self.finger_refresh <= 86400:
            raise ConfigError("overlay.stabilize or overlay.finger_refresh is out of range")
        if not 1 <= self.replicas <= 9:
            raise ConfigError(f"overlay.replicas {self.replicas} must be between 1 and 9")
        if not 1 <= self.dht_max_value <= 1200:
            raise ConfigError(f"overlay.dht_max_value {self.dht_max_value} must be 1 to 1200")
        if not 1 <= self.dht_max_ttl <= 30 * 86400:
            raise ConfigError(f"overlay.dht_max_ttl {self.dht_max_ttl} must be 1 to 2592000")
        for url in self.bootstrap:
            _check_bootstrap(url)
        if self.interface:
            try:
                ipaddress.ip_address(self.interface)
            except ValueError:
                raise ConfigError(
                    f"overlay.interface {self.interface!r} is not an IP address") from None


@dataclass(frozen=True)
class ControlSection:
    """[control]: the local control socket the C{wow} CLI talks to."""

    #: UNIX socket path; empty = control.sock in the state directory.
    socket: str = ""


def _check_listen(value: str, where: str) -> None:
    """An optional ADDRESS:PORT setting ("" = off)."""
    if value:
        from wow.prometheus import parse_listen

        parse_listen(value, where)


@dataclass(frozen=True)
class MetricsSection:
    """[metrics]: the Prometheus endpoint (http://LISTEN/metrics)."""

    #: ADDRESS:PORT to serve metrics on; "" = no metrics endpoint.
    listen: str = ""

    def validate(self) -> None:
        _check_listen(self.listen, "metrics.listen")


@dataclass(frozen=True)
class WebSection:
    """[web]: the local status page with a live picture of the overlay."""

    #: ADDRESS:PORT of the page (keep it local); "" = no page.
    listen: str = ""

    def validate(self) -> None:
        _check_listen(self.listen, "web.listen")


def _check_ip_or_subnet(where: str, value: str) -> None:
    try:
        ipaddress.IPv4Network(value, strict=True)
    except ValueError:
        raise ConfigError(f"{where} {value!r} is not an IPv4 address or subnet") from None


@dataclass(frozen=True)
class SecuritySection:
    """
    [security]: end-to-end DTLS 1.2 between nodes (wow/security/) and who
    may talk in clear.  The node's certificate, key and CA are the files
    C{wow enroll} keeps in the state directory (host.pem, host.key, ca.pem).
    """

    #: false = every packet travels in clear (a WOW without a CA).
    enabled: bool = True
    #: Subnets whose traffic must be secured; [] = the whole network.subnet.
    secure_subnets: tuple[str, ...] = ()
    #: Public nodes (addresses or subnets) any node may reach in clear.
    public_nodes: tuple[str, ...] = ()
    #: Refuse peer certificates that name no overlay address (URI SAN).
    require_overlay_uri: bool = False
    #: Where the CA publishes its DER CRL; "" = CA_URL/crl when [ca] url is
    #: set, else only CRLs pushed over the overlay.
    crl_url: str = ""
    #: Longest wait between CRL fetches, whatever the CRL's nextUpdate says.
    crl_refresh: int = 3600
    #: A session is replaced by a fresh handshake after this many seconds...
    rekey_interval: int = 3600
    #: ...or after carrying this many bytes or packets (both directions).
    rekey_bytes: int = 64 * 2**30
    rekey_packets: int = 2**32
    #: A handshake that has not finished by then is given up.
    handshake_timeout: int = 30
    #: Half-open (not yet established) handshakes held at once (one per peer).
    max_half_open: int = 64

    def validate(self) -> None:
        for i, value in enumerate(self.secure_subnets):
            _check_ip_or_subnet(f"security.secure_subnets[{i}]", value)
        for i, value in enumerate(self.public_nodes):
            _check_ip_or_subnet(f"security.public_nodes[{i}]", value)
        if self.crl_url and urlsplit(self.crl_url).scheme not in ("http", "https"):
            raise ConfigError(f"security.crl_url {self.crl_url!r} must be an http or https URL")
        for key, low, high in (
            ("crl_refresh", 10, 7 * 86400),
            ("rekey_interval", 60, 7 * 86400),
            ("rekey_bytes", 2**20, 2**48),
            ("rekey_packets", 1024, 2**48),
            ("handshake_timeout", 5, 600),
            ("max_half_open", 1, 65536),
        ):
            value = getattr(self, key)
            if not low <= value <= high:
                raise ConfigError(f"security.{key} {value} must be between {low} and {high}")


@dataclass(frozen=True)
class NodeConfig:
    """The whole validated configuration of one C{wow-node}."""

    node: NodeSection = field(default_factory=NodeSection)
    tap: TapSection = field(default_factory=TapSection)
    network: NetworkSection = field(default_factory=NetworkSection)
    dhcp: DhcpSection = field(default_factory=DhcpSection)
    overlay: OverlaySection = field(default_factory=OverlaySection)
    control: ControlSection = field(default_factory=ControlSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    web: WebSection = field(default_factory=WebSection)
    ca: NodeCaSection = field(default_factory=NodeCaSection)
    dns: NodeDnsSection = field(default_factory=NodeDnsSection)
    security: SecuritySection = field(default_factory=SecuritySection)

    def validate(self) -> None:
        net = self.network.network
        for key in ("pool_start", "pool_end"):
            value = getattr(self.dhcp, key)
            if value and ipaddress.IPv4Address(value) not in net:
                raise ConfigError(f"dhcp.{key} {value} is outside network.subnet {net}")
        if self.dhcp.mode == "relay" and self.dhcp.relay_transport == "overlay":
            server = ipaddress.IPv4Address(self.dhcp.server)
            if server not in net or server in (net.network_address, net.broadcast_address,
                                               self.network.gateway_address):
                raise ConfigError(f"dhcp.server {server} must be a virtual host address of {net} "
                                  "(other than the gateway) when relaying over the overlay")
        if self.dhcp.pool_start and self.dhcp.pool_end:
            if ipaddress.IPv4Address(self.dhcp.pool_start) > ipaddress.IPv4Address(
                self.dhcp.pool_end
            ):
                raise ConfigError("dhcp.pool_start comes after dhcp.pool_end")

    @property
    def control_socket(self) -> str:
        import os.path

        return self.control.socket or os.path.join(self.node.state_dir, "control.sock")


def load_node_config(path: str | None,
                     overrides: dict[str, dict[str, Any]] | None = None) -> NodeConfig:
    """
    Load and validate a node configuration.

    @param path: a TOML file, or L{None} for the defaults.
    @param overrides: C{{section: {key: value}}} from the command line; they
        replace the file's values before validation.
    @raise ConfigError: with a one-sentence reason.
    """
    table: dict[str, Any] = load_toml(path) if path else {}
    for section, values in (overrides or {}).items():
        current = table.setdefault(section, {})
        if not isinstance(current, dict):
            raise ConfigError(f"{section} must be a table")
        current.update(values)
    return build(NodeConfig, table, "")
