"""
EST over real HTTPS on loopback: the in-process wow-ca service and the node's
EST client, with the client's source address bound to 127.0.0.x so the
IP binding is exercised without namespaces.
"""

from __future__ import annotations

import os
import stat

from cryptography import x509
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import FileBodyProducer, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from tests.ca_support import b64, make_csr, start_ca
from wow.ca.client import (
    CA,
    CERT,
    KEY,
    EnrolError,
    Enroller,
    Enrolment,
    EnrolSettings,
    EstClient,
    cert_ip,
    installed,
)
from wow.ca.issue import fingerprint


class _Chunked(FileBodyProducer):
    """A body of unknown length (sent chunked), to test the streaming limit."""

    def __init__(self, data: bytes) -> None:
        from io import BytesIO

        super().__init__(BytesIO(data))
        self.length = UNKNOWN_LENGTH


class EstTests(TestCase):
    timeout = 60

    async def ca(self, **sections: dict) -> object:
        self.service = await start_ca(self, **sections)
        self.fp = fingerprint(self.service.authority.signer.cert)
        return self.service

    def settings(self, name: str = "node", **kw: object) -> EnrolSettings:
        values: dict = {"ca_fingerprint": self.fp, **kw}
        return EnrolSettings(
            url=self.service.url, state_dir=os.path.abspath(self.mktemp()), hostname=name, **values
        )

    def client(self, ip: str, ca_pem: bytes | None = None) -> EstClient:
        from cryptography.hazmat.primitives import serialization

        pem = ca_pem or self.service.authority.signer.cert.public_bytes(serialization.Encoding.PEM)
        return EstClient(reactor, self.service.url, pem, ip)

    async def test_enrol_installs_key_certificate_and_ca(self) -> None:
        await self.ca()
        s = self.settings()
        cert = await Enrolment(reactor, s, "127.0.0.5").run()
        self.assertEqual(cert_ip(cert), "127.0.0.5")
        on_disk, matches, ca = installed(s.state_dir)
        self.assertEqual(on_disk, cert)
        self.assertTrue(matches)
        self.assertEqual(fingerprint(ca), self.fp)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(s.state_dir, KEY)).st_mode), 0o600)
        for name in (CERT, CA):
            self.assertTrue(os.path.exists(os.path.join(s.state_dir, name)))
        [rec] = self.service.store.certs("node")
        self.assertEqual((rec.ip, rec.hostname), ("127.0.0.5", "node"))

    async def test_wrong_fingerprint_refused(self) -> None:
        await self.ca()
        s = self.settings(ca_fingerprint="00" * 32)
        with self.assertRaises(EnrolError) as cm:
            await Enrolment(reactor, s, "127.0.0.5").run()
        self.assertIn("fingerprint", str(cm.exception))
        self.assertEqual(self.service.store.certs("node"), [])

    async def test_request_from_other_address_refused(self) -> None:
        await self.ca()
        answer = await self.client("127.0.0.6").post("simpleenroll", make_csr())
        self.assertEqual(answer.status, 403)
        self.assertEqual(
            answer.message,
            "the request's IP subjectAltName 127.0.0.5 is not the address it came from "
            "(127.0.0.6).",
        )
        self.assertEqual(self.service.counters.get("ca_refused", reason="wrong-ip"), 1)

    async def _post(
        self, path: str, producer: object, ctype: bytes = b"application/pkcs10"
    ) -> tuple[int, bytes]:
        client = self.client("127.0.0.5")
        response = await client.agent.request(
            b"POST",
            (self.service.url + path).encode(),
            Headers({b"content-type": [ctype]}),
            producer,
        )
        return response.code, await readBody(response)

    async def test_oversized_bodies_refused(self) -> None:
        from io import BytesIO

        await self.ca(issue={"max_request_bytes": 2048})
        path = "/.well-known/est/simpleenroll"
        code, body = await self._post(path, FileBodyProducer(BytesIO(b"A" * 100_000)))
        self.assertEqual((code, body), (413, b"the request body is larger than 2048 bytes.\n"))
        code, body = await self._post(path, _Chunked(b"A" * 100_000))
        self.assertEqual(code, 413)
        self.assertEqual(self.service.counters.get("ca_refused", reason="oversized"), 2)
        self.assertEqual(self.service.store.certs("node"), [])

    async def test_wrong_content_type_and_malformed_body(self) -> None:
        from io import BytesIO

        await self.ca()
        path = "/.well-known/est/simpleenroll"
        code, body = await self._post(
            path, FileBodyProducer(BytesIO(b64(make_csr()))), b"application/x-www-form-urlencoded"
        )
        self.assertEqual(code, 415)
        self.assertIn(b"application/pkcs10", body)
        code, body = await self._post(path, FileBodyProducer(BytesIO(b"\x00garbage")))
        self.assertEqual(code, 400)
        self.assertTrue(body.endswith(b".\n") and body.count(b"\n") == 1, body)

    async def test_manual_policy_202_then_certificate(self) -> None:
        await self.ca(policy={"kind": "manual", "retry_after": 3})
        client = self.client("127.0.0.5")
        der = make_csr()
        first = await client.post("simpleenroll", der)
        self.assertEqual((first.status, first.retry_after), (202, 3))
        self.assertIn("waiting for approval", first.message)
        [pending] = self.service.authority.pending()
        self.service.authority.approve(pending["id"])
        second = await client.post("simpleenroll", der)
        self.assertEqual(second.status, 200)
        self.assertEqual(cert_ip(second.certs[0]), "127.0.0.5")

    async def test_enroller_service_polls_until_approved(self) -> None:
        await self.ca(policy={"kind": "manual", "retry_after": 1})
        s = self.settings("polled")
        enroller = Enroller(reactor, s, lambda: "127.0.0.8")
        enroller.startService()
        self.addCleanup(enroller.stopService)
        for _ in range(100):
            if self.service.authority.pending():
                break
            await deferLater(reactor, 0.05, lambda: None)
        [pending] = self.service.authority.pending()
        self.assertTrue(os.path.exists(os.path.join(s.state_dir, "pending.csr")))
        self.service.authority.approve(pending["id"])
        cert = await enroller.installed
        self.assertEqual(cert_ip(cert), "127.0.0.8")
        self.assertFalse(os.path.exists(os.path.join(s.state_dir, "pending.csr")))

    async def test_reenroll_with_tls_client_certificate(self) -> None:
        await self.ca()
        s = self.settings()
        old = await Enrolment(reactor, s, "127.0.0.5").run()
        new = await Enrolment(reactor, s, "127.0.0.5").run(renew=True)
        self.assertNotEqual(old.serial_number, new.serial_number)
        self.assertEqual(cert_ip(new), "127.0.0.5")
        by_serial = {r.serial: r for r in self.service.store.certs("node")}
        self.assertEqual(by_serial[f"{new.serial_number:032x}"].via, "reenroll")
        self.assertEqual(by_serial[f"{old.serial_number:032x}"].revoke_reason, "superseded")
        # Without a client certificate, simplereenroll is refused.
        answer = await self.client("127.0.0.5").post("simplereenroll", make_csr())
        self.assertEqual(answer.status, 403)
        self.assertIn("TLS client certificate", answer.message)

    async def test_revocation_reaches_crl_endpoint(self) -> None:
        await self.ca()
        s = self.settings()
        cert = await Enrolment(reactor, s, "127.0.0.5").run()
        client = self.client("127.0.0.5")
        response, data = await client._request(b"GET", "/crl")
        self.assertEqual(list(x509.load_der_x509_crl(data)), [])
        self.service.authority.revoke("127.0.0.5")
        response, data = await client._request(b"GET", "/crl")
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/pkix-crl"])
        crl = x509.load_der_x509_crl(data)
        self.assertEqual([r.serial_number for r in crl], [cert.serial_number])
        self.assertIsNotNone(crl.next_update_utc)
        response, data = await client._request(b"GET", "/health")
        self.assertIn(b'"status": "ok"', data)

    async def test_ca_unreachable_is_temporary(self) -> None:
        s = EnrolSettings(url="https://127.0.0.1:1", state_dir=self.mktemp(), hostname="n")
        with self.assertRaises(EnrolError) as cm:
            await Enrolment(reactor, s, "127.0.0.5").run()
        self.assertTrue(cm.exception.temporary)
        self.assertIn("cannot reach", str(cm.exception))
