"""
The ldap policy against an in-memory ldaptor directory built from LDIF,
served on loopback TCP: each way of failing gets its own refusal.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

from ldaptor import inmemory
from ldaptor.interfaces import IConnectedLDAPEntry
from ldaptor.protocols.ldap.ldapserver import LDAPServer
from twisted.internet import reactor
from twisted.internet.protocol import ServerFactory
from twisted.python.components import registerAdapter
from twisted.trial.unittest import TestCase

from tests.ca_support import ec_key, make_csr
from wow.ca.config import LdapSection
from wow.ca.csr import CsrRules, check_request
from wow.ca.policy import LdapPolicy, Refuse, Sign, SigningRequest

LDIF = b"""\
dn: dc=org
dc: org
objectClass: dcObject

dn: dc=example,dc=org
dc: example
objectClass: dcObject

dn: ou=people,dc=example,dc=org
ou: people
objectClass: organizationalUnit

dn: ou=groups,dc=example,dc=org
ou: groups
objectClass: organizationalUnit

dn: uid=alice,ou=people,dc=example,dc=org
uid: alice
cn: Alice
objectClass: inetOrgPerson
userPassword: alice-secret

dn: uid=bob,ou=people,dc=example,dc=org
uid: bob
cn: Bob
objectClass: inetOrgPerson
userPassword: bob-secret

dn: cn=wow-nodes,ou=groups,dc=example,dc=org
cn: wow-nodes
objectClass: groupOfNames
member: uid=alice,ou=people,dc=example,dc=org

"""


class _Factory(ServerFactory):
    protocol = LDAPServer

    def __init__(self, root: Any) -> None:
        self.root = root


registerAdapter(lambda factory: factory.root, _Factory, IConnectedLDAPEntry)


async def directory(testcase: TestCase) -> int:
    """Serve the LDIF directory on 127.0.0.1; return its port."""
    root = await inmemory.fromLDIFFile(BytesIO(LDIF))
    port = reactor.listenTCP(0, _Factory(root), interface="127.0.0.1")
    testcase.addCleanup(port.stopListening)
    return port.getHost().port


class LdapPolicyTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.csr = check_request(make_csr(ec_key()), "127.0.0.5", CsrRules())

    async def decide(self, credentials: tuple[str, str] | None, **config: Any) -> Any:
        if "url" not in config:
            config["url"] = f"ldap://127.0.0.1:{await directory(self)}"
        section = LdapSection(base_dn="ou=people,dc=example,dc=org", **config)
        return await LdapPolicy(section, reactor).decide(SigningRequest(self.csr, credentials))

    async def test_member_signs(self) -> None:
        group = "cn=wow-nodes,ou=groups,dc=example,dc=org"
        self.assertEqual(
            await self.decide(("alice", "alice-secret"), group_dn=group), Sign("ldap:alice")
        )

    async def test_any_user_without_group(self) -> None:
        self.assertEqual(await self.decide(("bob", "bob-secret")), Sign("ldap:bob"))

    async def assertRefused(
        self,
        reason: str,
        status: int,
        word: str,
        credentials: tuple[str, str] | None,
        **config: Any,
    ) -> None:
        decision = await self.decide(credentials, **config)
        self.assertIsInstance(decision, Refuse)
        self.assertEqual((decision.reason, decision.status), (reason, status), decision.sentence)
        self.assertIn(word, decision.sentence)

    async def test_wrong_password(self) -> None:
        await self.assertRefused("ldap-bad-password", 403, "password", ("alice", "nope"))

    async def test_unknown_user(self) -> None:
        await self.assertRefused("ldap-unknown-user", 403, "no user", ("mallory", "x"))

    async def test_filter_injection_is_an_unknown_user(self) -> None:
        await self.assertRefused("ldap-unknown-user", 403, "no user", ("*", "alice-secret"))

    async def test_outside_group(self) -> None:
        group = "cn=wow-nodes,ou=groups,dc=example,dc=org"
        await self.assertRefused(
            "ldap-not-in-group", 403, "not a member", ("bob", "bob-secret"), group_dn=group
        )

    async def test_unreachable_directory(self) -> None:
        # Port 1 on loopback: nothing listens, the connection is refused.
        await self.assertRefused(
            "ldap-unreachable",
            503,
            "unreachable",
            ("alice", "alice-secret"),
            url="ldap://127.0.0.1:1",
        )

    async def test_silent_directory_times_out(self) -> None:
        from twisted.internet.protocol import Protocol

        silent = ServerFactory.forProtocol(Protocol)
        port = reactor.listenTCP(0, silent, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        await self.assertRefused(
            "ldap-unreachable",
            503,
            "unreachable",
            ("alice", "alice-secret"),
            url=f"ldap://127.0.0.1:{port.getHost().port}",
            timeout=0.3,
        )

    async def test_no_credentials_or_empty_password_challenged(self) -> None:
        for creds in (None, ("alice", "")):
            decision = await self.decide(creds)
            self.assertEqual(
                (decision.status, decision.reason, decision.challenge),
                (401, "unauthenticated", True),
            )


class LdapEnrolmentTests(TestCase):
    """The whole path: HTTP Basic credentials → ldap policy → certificate."""

    timeout = 30

    async def test_enrolment_needs_directory_credentials(self) -> None:
        from tests.ca_support import start_ca
        from wow.ca.client import EstClient

        port = await directory(self)
        service = await start_ca(
            self,
            policy={"kind": "ldap"},
            ldap={
                "url": f"ldap://127.0.0.1:{port}",
                "base_dn": "ou=people,dc=example,dc=org",
                "group_dn": "cn=wow-nodes,ou=groups,dc=example,dc=org",
            },
        )
        from cryptography.hazmat.primitives import serialization

        pem = service.authority.signer.cert.public_bytes(serialization.Encoding.PEM)
        client = EstClient(reactor, service.url, pem, "127.0.0.5")
        response, body = await client._request(
            b"POST",
            "/.well-known/est/simpleenroll",
            make_csr(),
            {b"content-type": [b"application/pkcs10"]},
        )
        self.assertEqual(response.code, 401)
        self.assertEqual(
            response.headers.getRawHeaders(b"www-authenticate"), [b'Basic realm="wow-ca"']
        )
        bad = await client.post("simpleenroll", make_csr(), ("alice", "wrong"))
        self.assertEqual(bad.status, 403)
        self.assertEqual(service.store.certs("node"), [])
        good = await client.post("simpleenroll", make_csr(), ("alice", "alice-secret"))
        self.assertEqual(good.status, 200)
        [rec] = service.store.certs("node")
        self.assertEqual(rec.via, "ldap:alice")
        self.assertEqual(service.counters.get("ca_refused", reason="unauthenticated"), 1)
        self.assertEqual(service.counters.get("ca_refused", reason="ldap-bad-password"), 1)


class LdapsTests(TestCase):
    """ldaps://: the password only crosses a TLS connection to a verified directory."""

    timeout = 30

    async def directory_tls(self) -> tuple[int, str, str]:
        """Serve the LDIF directory over TLS; return port, its CA file, an unrelated CA file."""
        import os

        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from twisted.internet.ssl import PrivateCertificate

        from wow.ca.issue import Signer, create_ca, private_pem

        now = reactor.seconds()
        signer = Signer(*create_ca("Directory CA", 10, now), 86400)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = signer.issue_server(key.public_key(), ("127.0.0.1",), 77, now, 3600)
        pem = private_pem(key) + cert.public_bytes(serialization.Encoding.PEM)
        root = await inmemory.fromLDIFFile(BytesIO(LDIF))
        options = PrivateCertificate.loadPEM(pem).options()
        port = reactor.listenSSL(0, _Factory(root), options, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        work = self.mktemp()
        os.makedirs(work)
        files = []
        for name, ca in (("good.pem", signer.cert), ("other.pem", create_ca("X", 10, now)[1])):
            path = os.path.join(work, name)
            with open(path, "wb") as f:
                f.write(ca.public_bytes(serialization.Encoding.PEM))
            files.append(path)
        return port.getHost().port, files[0], files[1]

    async def test_ldaps_verified_directory(self) -> None:
        port, good, other = await self.directory_tls()
        csr = check_request(make_csr(ec_key()), "127.0.0.5", CsrRules())
        request = SigningRequest(csr, ("alice", "alice-secret"))
        section = LdapSection(
            url=f"ldaps://127.0.0.1:{port}", ca_file=good, base_dn="ou=people,dc=example,dc=org"
        )
        self.assertEqual(await LdapPolicy(section, reactor).decide(request), Sign("ldap:alice"))
        untrusted = LdapSection(
            url=f"ldaps://127.0.0.1:{port}", ca_file=other, base_dn="ou=people,dc=example,dc=org"
        )
        decision = await LdapPolicy(untrusted, reactor).decide(request)
        self.assertIsInstance(decision, Refuse)
        self.assertEqual((decision.status, decision.reason), (503, "ldap-tls"), decision.sentence)
