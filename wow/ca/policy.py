"""
Signing policies: who decides whether a valid request is signed.

Each policy provides L{ISigningPolicy}; the daemon picks one from
C{policy.kind}.  A policy only decides; queueing, signing and storing are
the authority's job, so every policy gets the same replay protection and
durability for free.

  - L{AutoPolicy}: sign at once.
  - L{ManualPolicy}: queue for the administrator (HTTP 202 + Retry-After).
  - L{LdapPolicy}: the client's HTTP Basic credentials must bind to the site
    directory (ldaptor), optionally as a member of a group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, error
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from wow.ca.config import LdapSection
from wow.ca.csr import ValidCsr


@dataclass(frozen=True)
class SigningRequest:
    """What a policy sees: the validated CSR and the HTTP Basic credentials, if any."""

    csr: ValidCsr
    credentials: tuple[str, str] | None = None


@dataclass(frozen=True)
class Sign:
    """Sign now; C{via} is recorded with the certificate (e.g. C{ldap:alice})."""

    via: str


@dataclass(frozen=True)
class Queue:
    """Keep the request for the administrator; C{requester} is recorded with it."""

    requester: str = ""


@dataclass(frozen=True)
class Refuse:
    """Do not sign: HTTP C{status}, metrics C{reason}, one C{sentence} for the client."""

    status: int
    reason: str
    sentence: str
    #: Ask the client for HTTP Basic credentials (WWW-Authenticate).
    challenge: bool = False


Decision = Sign | Queue | Refuse


class ISigningPolicy(Interface):
    """Decides what happens to a request that passed every CSR check."""

    name = Attribute("The policy's name as written in policy.kind.")

    def decide(request: SigningRequest) -> defer.Deferred[Decision]:
        """Fire with L{Sign}, L{Queue} or L{Refuse}; never errback for a refusal."""


@implementer(ISigningPolicy)
class AutoPolicy:
    """Sign every valid request at once (a closed network, or tests)."""

    name = "auto"

    def decide(self, request: SigningRequest) -> defer.Deferred[Decision]:
        return defer.succeed(Sign("auto"))


@implementer(ISigningPolicy)
class ManualPolicy:
    """Every valid request waits in the durable queue for C{wow ca approve}."""

    name = "manual"

    def decide(self, request: SigningRequest) -> defer.Deferred[Decision]:
        return defer.succeed(Queue())


UNAUTHENTICATED = Refuse(
    401,
    "unauthenticated",
    "this CA signs only for directory users: send your user name and password (HTTP Basic)",
    challenge=True,
)


def escape_filter_value(value: str) -> str:
    """RFC 4515 escaping for a value inside an LDAP search filter."""
    out = value.replace("\\", r"\5c").replace("*", r"\2a").replace("(", r"\28")
    return out.replace(")", r"\29").replace("\0", r"\00")


@implementer(ISigningPolicy)
class LdapPolicy:
    """
    Bind to the site directory as the requesting user.

    The user is first looked up (anonymously or as C{ldap.bind_dn}) so that
    an unknown user and a wrong password are told apart; then we bind as the
    user's DN with the given password, and finally check group membership.
    An unreachable directory is a temporary refusal (503).
    """

    name = "ldap"
    log = Logger()

    def __init__(self, config: LdapSection, reactor: Any, bind_password: str = "") -> None:
        self.config = config
        self.reactor = reactor
        self.bind_password = bind_password

    def decide(self, request: SigningRequest) -> defer.Deferred[Decision]:
        if request.credentials is None:
            return defer.succeed(UNAUTHENTICATED)
        user, password = request.credentials
        if not user or not password:
            # An empty password would be an "unauthenticated bind", which
            # many directories answer with success.
            return defer.succeed(UNAUTHENTICATED)
        d = defer.ensureDeferred(self._check(user, password))
        d.addTimeout(self.config.timeout, self.reactor)
        d.addErrback(self._failed, user)
        return d

    async def _check(self, user: str, password: str) -> Decision:
        from ldaptor.protocols import pureldap
        from ldaptor.protocols.ldap import distinguishedname, ldapclient, ldaperrors, ldapsyntax

        client = await connectProtocol(self._endpoint(), ldapclient.LDAPClient())
        try:
            await client.bind(self.config.bind_dn, self.bind_password)
            base = ldapsyntax.LDAPEntry(client, self.config.base_dn)
            try:
                found = await base.search(
                    filterText=self.config.user_filter.replace("{user}", escape_filter_value(user)),
                    attributes=["1.1"],
                )
            except ldaperrors.LDAPNoSuchObject:
                found = []
            if not found:
                return Refuse(403, "ldap-unknown-user", f"the directory has no user named {user!r}")
            if len(found) > 1:
                return Refuse(
                    403, "ldap-ambiguous-user", f"the directory has several users named {user!r}"
                )
            user_dn = found[0].dn
            try:
                await client.bind(user_dn.getText(), password)
            except ldaperrors.LDAPInvalidCredentials:
                return Refuse(
                    403, "ldap-bad-password", f"the password of directory user {user!r} is wrong"
                )
            if self.config.group_dn:
                group = ldapsyntax.LDAPEntry(client, self.config.group_dn)
                try:
                    entries = await group.search(
                        scope=pureldap.LDAP_SCOPE_baseObject,
                        attributes=[self.config.member_attribute],
                    )
                except ldaperrors.LDAPNoSuchObject:
                    entries = []
                members = set()
                for entry in entries:
                    for value in entry.get(self.config.member_attribute, ()):
                        text = value.decode() if isinstance(value, bytes) else str(value)
                        try:
                            members.add(distinguishedname.DistinguishedName(text))
                        except Exception:
                            continue
                if distinguishedname.DistinguishedName(user_dn.getText()) not in members:
                    return Refuse(
                        403,
                        "ldap-not-in-group",
                        f"directory user {user!r} is not a member of {self.config.group_dn}",
                    )
            return Sign(f"ldap:{user}")
        finally:
            if client.connected:
                client.transport.loseConnection()

    def _endpoint(self) -> Any:
        """TCP, or TLS verified against C{ldap.ca_file} (or the system's CAs) for ldaps."""
        host, port, timeout = self.config.host, self.config.port, self.config.timeout
        if not self.config.tls:
            return TCP4ClientEndpoint(self.reactor, host, port, timeout=timeout)
        from twisted.internet.endpoints import SSL4ClientEndpoint
        from twisted.internet.ssl import Certificate, optionsForClientTLS, platformTrust

        trust: Any = platformTrust()
        if self.config.ca_file:
            with open(self.config.ca_file, "rb") as f:
                trust = Certificate.loadPEM(f.read())
        options = optionsForClientTLS(host, trustRoot=trust)
        return SSL4ClientEndpoint(self.reactor, host, port, options, timeout=timeout)

    def _failed(self, failure: Any, user: str) -> Decision:
        from ldaptor.protocols.ldap.ldapclient import LDAPClientConnectionLostException
        from OpenSSL import SSL

        if failure.check(SSL.Error):
            self.log.warn(
                "LDAP directory {url}: TLS failed: {why}",
                url=self.config.url,
                why=failure.getErrorMessage(),
            )
            return Refuse(
                503,
                "ldap-tls",
                "the user directory's TLS certificate could not be "
                "verified, so the password was not sent",
            )
        if failure.check(
            error.ConnectError,
            error.TimeoutError,
            defer.TimeoutError,
            defer.CancelledError,
            error.ConnectionLost,
            error.ConnectionDone,
            LDAPClientConnectionLostException,
        ):
            self.log.warn(
                "LDAP directory {url} unreachable: {why}",
                url=self.config.url,
                why=failure.getErrorMessage(),
            )
            return Refuse(
                503,
                "ldap-unreachable",
                "the user directory is unreachable, so the request cannot be checked now",
            )
        self.log.failure("LDAP check of user {user} failed", failure, user=user)
        return Refuse(
            503,
            "ldap-error",
            "the user directory answered with an error, so the request cannot be checked now",
        )
