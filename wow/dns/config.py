"""
The configuration of C{wow-dns} (and of the DNS a node embeds).

C{etc/wow-dns.toml} documents every key with its default; this module is
the single source of truth for names, types, defaults and validation.
Static records are zone-file-like lines (C{"ca A 10.128.0.2"}) parsed here
into twisted.names records, so a typo is a one-sentence L{ConfigError} at
start-up rather than a surprise at query time.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from twisted.names import dns

from wow.dns.authority import SoaSettings, StaticRecord
from wow.dns.names import BadName, in_zone, to_wire
from wow.util.config import ConfigError, build, load_toml

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
STATIC_TYPES = ("A", "AAAA", "CNAME", "TXT", "MX", "SRV", "NS", "PTR")


def _check_domain(where: str, domain: str) -> None:
    labels = domain.strip(".").split(".")
    if not domain.strip(".") or not all(_LABEL.match(lb) for lb in labels):
        raise ConfigError(f"{where} {domain!r} is not a valid domain name")


def parse_upstream(where: str, text: str) -> tuple[str, int]:
    """C{"IP"} or C{"IP:PORT"} (IPv6 as C{"[IP]:PORT"}) → (ip, port)."""
    host, port = text, 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ConfigError(f"{where} {text!r} must look like IP or IP:PORT")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        if not p.isdigit():
            raise ConfigError(f"{where} {text!r} must look like IP or IP:PORT")
        port = int(p)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{where} {text!r} is not an IP address (names are not allowed)"
                          ) from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"{where} {text!r} has a port outside 1-65535")
    return host, port


def _absolute(name: str, domain: str) -> str:
    if name == "@":
        return domain.rstrip(".") + "."
    return name if name.endswith(".") else f"{name}.{domain.rstrip('.')}."


def parse_static(line: str, domain: str, default_ttl: int, check_zone: bool = True
                 ) -> StaticRecord:
    """
    One static record: C{NAME [TTL] TYPE DATA...}; NAME relative to the
    domain unless it ends with a dot, C{@} for the apex.

    @raise ConfigError: naming the line and what is wrong with it.
    """
    where = f"dns.records entry {line!r}"
    try:
        fields = shlex.split(line)
    except ValueError as e:
        raise ConfigError(f"{where} cannot be split: {e}") from None
    if len(fields) < 3:
        raise ConfigError(f"{where} must look like NAME [TTL] TYPE DATA")
    name, rest = fields[0], fields[1:]
    ttl = default_ttl
    if rest[0].isdigit():
        ttl, rest = int(rest[0]), rest[1:]
    if len(rest) < 2:
        raise ConfigError(f"{where} must look like NAME [TTL] TYPE DATA")
    rtype, data = rest[0].upper(), rest[1:]
    if rtype not in STATIC_TYPES:
        raise ConfigError(f"{where} has type {rtype}; supported: {', '.join(STATIC_TYPES)}")
    try:
        owner = to_wire(_absolute(name, domain))
    except BadName as e:
        raise ConfigError(f"{where}: {e}") from None
    if check_zone and not in_zone(owner, to_wire(domain)):
        raise ConfigError(f"{where} is outside the domain {domain}")

    def target(text: str) -> bytes:
        return _absolute(text, domain).rstrip(".").encode()

    try:
        payload: Any
        if rtype == "A" and len(data) == 1:
            ipaddress.IPv4Address(data[0])
            payload = dns.Record_A(data[0], ttl)
        elif rtype == "AAAA" and len(data) == 1:
            ipaddress.IPv6Address(data[0])
            payload = dns.Record_AAAA(data[0], ttl)
        elif rtype in ("CNAME", "NS", "PTR") and len(data) == 1:
            cls = {"CNAME": dns.Record_CNAME, "NS": dns.Record_NS, "PTR": dns.Record_PTR}[rtype]
            payload = cls(target(data[0]), ttl)
        elif rtype == "TXT" and data:
            payload = dns.Record_TXT(*[d.encode() for d in data], ttl=ttl)
        elif rtype == "MX" and len(data) == 2:
            payload = dns.Record_MX(int(data[0]), target(data[1]), ttl)
        elif rtype == "SRV" and len(data) == 4:
            payload = dns.Record_SRV(int(data[0]), int(data[1]), int(data[2]), target(data[3]),
                                     ttl)
        else:
            raise ValueError("wrong number of fields")
    except ValueError as e:
        raise ConfigError(f"{where} has bad {rtype} data: {e}") from None
    return StaticRecord(owner, getattr(dns, rtype), ttl, payload)


def check_static(records: list[StaticRecord]) -> None:
    """A CNAME must be the only record at its name (RFC 1034 §3.6.2)."""
    types: dict[bytes, set[int]] = {}
    for r in records:
        types.setdefault(r.name, set()).add(r.type)
    for name, kinds in types.items():
        if dns.CNAME in kinds and len(kinds) > 1:
            raise ConfigError(f"dns.records: {name!r} has a CNAME and other records")


@dataclass(frozen=True)
class ZoneSection:
    """What the zone holds; shared by C{wow-dns} and the node's C{[dns]}."""

    #: TTL of static and bulk-loaded records (leased names follow their lease).
    ttl: int = 300
    #: Answer C{cA-B-C-D.DOMAIN} for every address that has a record.
    derived_names: bool = True
    #: Static records, C{"NAME [TTL] TYPE DATA"}, e.g. C{"ca A 10.128.0.2"}.
    records: tuple[str, ...] = ()
    #: Upstream resolvers ("IP" or "IP:PORT") for names outside the zone;
    #: empty = REFUSED for those names.
    upstreams: tuple[str, ...] = ()
    #: Clients allowed to query (CIDRs); empty = the virtual subnet and loopback.
    allowed_sources: tuple[str, ...] = ()
    #: Largest UDP answer we send (EDNS0); 1232 avoids IP fragmentation.
    max_udp_size: int = 1232
    #: Negative-caching TTL (SOA minimum, RFC 2308).
    negative_ttl: int = 60

    def validate_zone(self, where: str) -> None:
        if not 0 <= self.ttl <= 7 * 24 * 3600:
            raise ConfigError(f"{where}.ttl {self.ttl} must be between 0 and 604800")
        if not 0 <= self.negative_ttl <= 86400:
            raise ConfigError(f"{where}.negative_ttl {self.negative_ttl} must be 0 to 86400")
        if not 512 <= self.max_udp_size <= 4096:
            raise ConfigError(f"{where}.max_udp_size {self.max_udp_size} must be 512 to 4096")
        for up in self.upstreams:
            parse_upstream(f"{where}.upstreams entry", up)
        for src in self.allowed_sources:
            try:
                ipaddress.ip_network(src, strict=False)
            except ValueError:
                raise ConfigError(f"{where}.allowed_sources entry {src!r} is not a network"
                                  ) from None

    def upstream_servers(self) -> list[tuple[str, int]]:
        return [parse_upstream("upstream", u) for u in self.upstreams]

    def sources(self, subnet: str) -> list[str]:
        return list(self.allowed_sources) or [subnet, "127.0.0.0/8", "::1/128"]

    def soa(self) -> SoaSettings:
        return SoaSettings(minimum=self.negative_ttl)


@dataclass(frozen=True)
class DnsSection(ZoneSection):
    """[dns] of C{wow-dns}: the central server."""

    #: Address to answer on (UDP and TCP).
    listen: str = "127.0.0.1"
    port: int = 53
    #: The virtual domain.
    domain: str = "wow"
    #: The virtual subnet (its reverse zone is served; its hosts may recurse).
    subnet: str = "10.128.0.0/16"
    #: Hosts-style file ("IP NAME [ALIAS...]"), loaded at start; "" = none.
    names_file: str = ""
    #: Name of this server in NS/SOA (relative to the domain) and its address
    #: ("" = no glue record).
    nameserver: str = "ns"
    nameserver_address: str = ""
    #: Seconds an idle TCP client may keep its connection.
    tcp_idle_timeout: int = 30
    #: Prometheus endpoint, ADDRESS:PORT (served at /metrics); "" = off.
    metrics_listen: str = ""

    def validate(self) -> None:
        self.validate_zone("dns")
        try:
            ipaddress.ip_address(self.listen)
        except ValueError:
            raise ConfigError(f"dns.listen {self.listen!r} is not an IP address") from None
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"dns.port {self.port} is not a port number")
        _check_domain("dns.domain", self.domain)
        try:
            ipaddress.IPv4Network(self.subnet, strict=True)
        except ValueError as e:
            raise ConfigError(f"dns.subnet {self.subnet!r} is not a valid subnet: {e}") from None
        if self.nameserver_address:
            try:
                ipaddress.IPv4Address(self.nameserver_address)
            except ValueError:
                raise ConfigError(f"dns.nameserver_address {self.nameserver_address!r} is "
                                  "not an IPv4 address") from None
        if self.metrics_listen:
            from wow.prometheus import parse_listen

            parse_listen(self.metrics_listen, "dns.metrics_listen")
        if not 1 <= self.tcp_idle_timeout <= 3600:
            raise ConfigError(f"dns.tcp_idle_timeout {self.tcp_idle_timeout} must be 1 to 3600")
        check_static(self.static_records())

    def static_records(self) -> list[StaticRecord]:
        return [parse_static(line, self.domain, self.ttl) for line in self.records]


@dataclass(frozen=True)
class NodeDnsSection(ZoneSection):
    """[dns] of C{wow-node}: the resolver the node answers on its gateway address."""

    #: Answer DNS on the virtual gateway address (DHCP option 6).
    enabled: bool = True

    def validate(self) -> None:
        self.validate_zone("dns")
        # The domain is [network]'s; whether names are inside it is checked
        # when the node builds its DNS.
        for line in self.records:
            parse_static(line, "wow", self.ttl, check_zone=False)


@dataclass(frozen=True)
class DnsConfig:
    """The whole validated configuration of C{wow-dns}."""

    dns: DnsSection = field(default_factory=DnsSection)


def load_dns_config(path: str | None, overrides: dict[str, Any] | None = None) -> DnsConfig:
    """Load and validate; C{overrides} are C{[dns]} keys from the command line."""
    table: dict[str, Any] = load_toml(path) if path else {}
    if overrides:
        section = table.setdefault("dns", {})
        if not isinstance(section, dict):
            raise ConfigError("dns must be a table")
        section.update(overrides)
    return build(DnsConfig, table, "")
