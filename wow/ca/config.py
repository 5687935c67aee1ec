"""
The configuration of C{wow-ca}, one frozen dataclass per TOML table.

C{etc/wow-ca.toml} documents every key with its default; this module is the
single source of truth for names, types, defaults and validation.
"""

from __future__ import annotations

import ipaddress
import os.path
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from wow.util.config import ConfigError, build, load_toml

#: Key types a CSR may carry, by the name used in C{issue.key_types}.
KEY_TYPES = ("ec-p256", "ec-p384", "ec-p521", "rsa", "ed25519")
POLICIES = ("auto", "manual", "ldap")


@dataclass(frozen=True)
class CaSection:
    """[ca]: the authority's identity and where it keeps its state."""

    #: Common name of the self-signed CA certificate created on first start.
    name: str = "WOW community CA"
    #: CA key, certificates, the store and the control socket live here.
    state_dir: str = "/var/lib/wow-ca"
    #: Lifetime of the self-signed CA certificate created on first start.
    lifetime_days: int = 3650

    def validate(self) -> None:
        if not self.name.strip():
            raise ConfigError("ca.name must not be empty")
        if not self.state_dir:
            raise ConfigError("ca.state_dir must not be empty")
        if not 1 <= self.lifetime_days <= 36500:
            raise ConfigError(f"ca.lifetime_days {self.lifetime_days} must be between 1 and 36500")


@dataclass(frozen=True)
class ListenSection:
    """[listen]: the HTTPS (EST) endpoint."""

    #: Address to listen on: the CA's virtual IP in a WOW; "" = all addresses.
    address: str = ""
    port: int = 8443
    #: Names (IP addresses or host names) the server's TLS certificate covers;
    #: [] = the listen address, or 127.0.0.1 and localhost when it is "".
    tls_names: tuple[str, ...] = ()

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"listen.port {self.port} is not a TCP port number")
        if self.address:
            try:
                ipaddress.ip_address(self.address)
            except ValueError:
                raise ConfigError(f"listen.address {self.address!r} is not an IP address") from None
        for name in self.tls_names:
            if not name or len(name) > 253 or any(c.isspace() for c in name):
                raise ConfigError(f"listen.tls_names entry {name!r} is not a host name or address")

    @property
    def server_names(self) -> tuple[str, ...]:
        if self.tls_names:
            return self.tls_names
        if self.address and not ipaddress.ip_address(self.address).is_unspecified:
            return (self.address,)
        return ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class IssueSection:
    """[issue]: what a certificate request must look like and what is issued."""

    #: Lifetime of issued node certificates, in seconds (default 30 days).
    lifetime: int = 30 * 24 * 3600
    #: Key types accepted in requests.
    key_types: tuple[str, ...] = ("ec-p256", "ec-p384", "rsa", "ed25519")
    #: Smallest accepted RSA modulus, in bits.
    rsa_min_bits: int = 2048
    #: Largest accepted request body, in bytes.
    max_request_bytes: int = 16384
    #: Revoke a node's earlier certificates for the same IP when a new one is issued.
    revoke_superseded: bool = True
    #: Networks certified addresses must lie in (the WOW's virtual subnets); [] = any.
    networks: tuple[str, ...] = ()

    def validate(self) -> None:
        if not 60 <= self.lifetime <= 10 * 365 * 24 * 3600:
            raise ConfigError(f"issue.lifetime {self.lifetime} must be between 60 s and 10 years")
        if not self.key_types:
            raise ConfigError("issue.key_types must name at least one key type")
        for kt in self.key_types:
            if kt not in KEY_TYPES:
                raise ConfigError(
                    f"issue.key_types entry {kt!r} is not one of {', '.join(KEY_TYPES)}"
                )
        if not 2048 <= self.rsa_min_bits <= 8192:
            raise ConfigError(
                f"issue.rsa_min_bits {self.rsa_min_bits} must be between 2048 and 8192"
            )
        for net in self.networks:
            try:
                ipaddress.ip_network(net, strict=True)
            except ValueError:
                raise ConfigError(f"issue.networks entry {net!r} is not a network") from None
        if not 1024 <= self.max_request_bytes <= 1024 * 1024:
            raise ConfigError(
                f"issue.max_request_bytes {self.max_request_bytes} must be between 1024 and 1048576"
            )


@dataclass(frozen=True)
class PolicySection:
    """[policy]: who decides whether a valid request is signed."""

    #: "auto" (sign at once), "manual" (admin approves) or "ldap" (directory bind).
    kind: str = "auto"
    #: Retry-After (seconds) given to clients whose request waits for approval.
    retry_after: int = 60
    #: Pending requests older than this (seconds) are dropped from the queue.
    pending_ttl: int = 7 * 24 * 3600

    def validate(self) -> None:
        if self.kind not in POLICIES:
            raise ConfigError(f"policy.kind {self.kind!r} is not one of {', '.join(POLICIES)}")
        if not 1 <= self.retry_after <= 86400:
            raise ConfigError(f"policy.retry_after {self.retry_after} must be between 1 and 86400")
        if not 60 <= self.pending_ttl <= 365 * 24 * 3600:
            raise ConfigError(
                f"policy.pending_ttl {self.pending_ttl} must be between 60 s and a year"
            )


@dataclass(frozen=True)
class LdapSection:
    """[ldap]: the site directory the C{ldap} policy binds against."""

    #: Directory URL: ldap://HOST[:PORT], or ldaps://HOST[:PORT] for LDAP over TLS
    #: (use ldaps whenever the directory is not on this host: passwords cross it).
    url: str = "ldap://127.0.0.1:389"
    #: PEM file of the CA that signed the directory's TLS certificate (ldaps);
    #: "" = the system's trusted CAs.
    ca_file: str = ""
    #: Where users are searched for.
    base_dn: str = "ou=people,dc=example,dc=org"
    #: Filter finding one user; {user} is replaced by the escaped user name.
    user_filter: str = "(uid={user})"
    #: Account used for the user search; "" = anonymous.
    bind_dn: str = ""
    #: File holding that account's password (first line); "" = none.
    bind_password_file: str = ""
    #: Group whose members may enrol; "" = any user who can bind.
    group_dn: str = ""
    #: Attribute of the group entry listing member DNs.
    member_attribute: str = "member"
    #: Seconds to wait for the directory before refusing as unreachable.
    timeout: float = 5.0

    def validate(self) -> None:
        parts = urlsplit(self.url)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme not in ("ldap", "ldaps") or not parts.hostname or port == -1:
            raise ConfigError(f"ldap.url {self.url!r} must look like ldap[s]://HOST[:PORT]")
        if "{user}" not in self.user_filter or not self.user_filter.startswith("("):
            raise ConfigError("ldap.user_filter must be an LDAP filter containing {user}")
        if not 0.1 <= self.timeout <= 120:
            raise ConfigError(f"ldap.timeout {self.timeout} must be between 0.1 and 120 seconds")

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or (636 if self.tls else 389)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "ldaps"


@dataclass(frozen=True)
class CrlSection:
    """[crl]: the certificate revocation list served at /crl."""

    #: Seconds between thisUpdate and nextUpdate; the CRL is re-signed at half that.
    lifetime: int = 24 * 3600

    def validate(self) -> None:
        if not 60 <= self.lifetime <= 365 * 24 * 3600:
            raise ConfigError(f"crl.lifetime {self.lifetime} must be between 60 s and a year")


@dataclass(frozen=True)
class ControlSection:
    """[control]: the local socket the C{wow ca} commands talk to."""

    #: UNIX socket path; "" = control.sock in ca.state_dir.
    socket: str = ""


@dataclass(frozen=True)
class CaMetricsSection:
    """[metrics]: the Prometheus endpoint (http://LISTEN/metrics)."""

    #: ADDRESS:PORT to serve metrics on; "" = no metrics endpoint.
    listen: str = ""

    def validate(self) -> None:
        if self.listen:
            from wow.prometheus import parse_listen

            parse_listen(self.listen, "metrics.listen")


@dataclass(frozen=True)
class CaConfig:
    """The whole validated configuration of one C{wow-ca}."""

    ca: CaSection = field(default_factory=CaSection)
    listen: ListenSection = field(default_factory=ListenSection)
    issue: IssueSection = field(default_factory=IssueSection)
    policy: PolicySection = field(default_factory=PolicySection)
    ldap: LdapSection = field(default_factory=LdapSection)
    crl: CrlSection = field(default_factory=CrlSection)
    control: ControlSection = field(default_factory=ControlSection)
    metrics: CaMetricsSection = field(default_factory=CaMetricsSection)

    @property
    def control_socket(self) -> str:
        return self.control.socket or os.path.join(self.ca.state_dir, "control.sock")


def load_ca_config(
    path: str | None, overrides: dict[str, dict[str, Any]] | None = None
) -> CaConfig:
    """
    Load and validate a CA configuration.

    @param path: a TOML file, or L{None} for the defaults.
    @param overrides: C{{section: {key: value}}} from the command line.
    @raise ConfigError: with a one-sentence reason.
    """
    table: dict[str, Any] = load_toml(path) if path else {}
    for section, values in (overrides or {}).items():
        current = table.setdefault(section, {})
        if not isinstance(current, dict):
            raise ConfigError(f"{section} must be a table")
        current.update(values)
    return build(CaConfig, table, "")


@dataclass(frozen=True)
class NodeCaSection:
    """
    [ca] of C{wow-node}: automatic enrolment with the community CA.

    Lives here, next to the CA's own settings, and is added to the node's
    configuration as one field.
    """

    #: The CA's EST endpoint, https://HOST[:PORT]; "" = no automatic enrolment.
    url: str = ""
    #: Host name to certify; "" = node.name, else the machine's host name.
    hostname: str = ""
    #: SHA-256 fingerprint of the CA certificate; "" = trust on first use.
    ca_fingerprint: str = ""
    #: File with user:password (first line), for a CA using the ldap policy.
    credentials_file: str = ""
    #: Renew this many seconds before the certificate expires (at most halfway).
    renew_before: int = 7 * 86400
    #: Seconds per HTTPS request to the CA.
    timeout: float = 30.0

    def validate(self) -> None:
        if self.url:
            parts = urlsplit(self.url)
            try:
                _ = parts.port
            except ValueError:
                raise ConfigError(f"ca.url {self.url!r} has an invalid port") from None
            if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/"):
                raise ConfigError(f"ca.url {self.url!r} must look like https://HOST[:PORT]")
        fp = self.ca_fingerprint.replace(":", "").lower()
        if fp and (len(fp) != 64 or any(c not in "0123456789abcdef" for c in fp)):
            raise ConfigError("ca.ca_fingerprint must be a SHA-256 fingerprint (64 hex digits)")
        if not 60 <= self.renew_before <= 365 * 86400:
            raise ConfigError(
                f"ca.renew_before {self.renew_before} must be between 60 s and a year"
            )
        if not 1 <= self.timeout <= 600:
            raise ConfigError(f"ca.timeout {self.timeout} must be between 1 and 600 seconds")
