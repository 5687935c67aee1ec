"""Tests for L{wow.security.service}: the reactor adapter, with task.Clock and fakes."""

from __future__ import annotations

import os
import time
from typing import Any

from cryptography.hazmat.primitives import serialization
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.pki import ADDR_A, ADDR_B, IP_A, IP_B, Identity, make_crl, pki
from wow.metrics import Counters
from wow.node.config import NodeConfig, NodeSection, SecuritySection
from wow.security.service import SecurityService, crl_url, load_identity
from wow.util.config import replace


def install(state_dir: str, ident: Identity, ca: Identity | None = None) -> None:
    os.makedirs(state_dir, exist_ok=True)
    files = {
        "host.pem": ident.cert.public_bytes(serialization.Encoding.PEM),
        "host.key": ident.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        "ca.pem": (ca or pki().ca).cert.public_bytes(serialization.Encoding.PEM),
    }
    for name, data in files.items():
        with open(os.path.join(state_dir, name), "wb") as f:
            f.write(data)


class Wire:
    """Two services whose transmit() queues datagrams for the other."""

    def __init__(self, test: SynchronousTestCase, crl: str = "") -> None:
        self.clock = Clock()
        self.clock.advance(time.time())  # CRL dates are checked against this clock
        self.queue: list[tuple[bytes, bytes, bytes]] = []
        self.inbox: dict[bytes, list[bytes]] = {ADDR_A: [], ADDR_B: []}
        self.drop = 0  # datagrams still to lose
        self.fetched: list[str] = []
        self.crl_answers: list[Deferred[bytes]] = []
        self.services: dict[bytes, SecurityService] = {}
        for addr, ident in ((ADDR_A, pki().a), (ADDR_B, pki().b)):
            state = test.mktemp()
            install(state, ident)
            config = NodeConfig(
                node=NodeSection(state_dir=state),
                security=SecuritySection(crl_url=crl) if crl else SecuritySection(),
            )
            self.services[addr] = SecurityService(
                config, self.clock, Counters(), addr, self._transmit(addr), self._fetch
            )

    def _transmit(self, src: bytes) -> Any:
        def transmit(peer: bytes, datagram: bytes) -> None:
            self.queue.append((src, peer, datagram))

        return transmit

    def _fetch(self, url: str) -> Deferred[bytes]:
        self.fetched.append(url)
        return self.crl_answers.pop(0) if self.crl_answers else fail(OSError("unreachable"))

    def pump(self) -> None:
        while self.queue:
            src, dst, datagram = self.queue.pop(0)
            if self.drop:
                self.drop -= 1
                continue
            service = self.services[dst]
            self.inbox[dst].extend(service.receive(src, datagram[0], datagram[1:]))

    def start(self) -> None:
        for service in self.services.values():
            service.startService()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.pump()


class IdentityTests(SynchronousTestCase):
    def test_missing(self) -> None:
        identity, why = load_identity(self.mktemp())
        self.assertIsNone(identity)
        self.assertEqual(why, "not enrolled (host.pem is missing)")

    def test_key_mismatch(self) -> None:
        state = self.mktemp()
        install(state, pki().a)
        with open(os.path.join(state, "host.key"), "wb") as f:
            f.write(
                pki().b.key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        self.assertEqual(load_identity(state), (None, "host.key does not match host.pem"))

    def test_garbage(self) -> None:
        state = self.mktemp()
        install(state, pki().a)
        with open(os.path.join(state, "host.pem"), "wb") as f:
            f.write(b"not a certificate")
        identity, why = load_identity(state)
        self.assertIsNone(identity)
        self.assertIn("unreadable", why)

    def test_crl_url(self) -> None:
        config = NodeConfig()
        self.assertEqual(crl_url(config), "")
        config = replace(config, ca=replace(config.ca, url="https://10.128.0.1:8443/"))
        self.assertEqual(crl_url(config), "https://10.128.0.1:8443/crl")
        config = replace(config, security=SecuritySection(crl_url="http://10.128.0.9/x.crl"))
        self.assertEqual(crl_url(config), "http://10.128.0.9/x.crl")


class ServiceTests(SynchronousTestCase):
    def test_not_enrolled(self) -> None:
        config = NodeConfig(node=NodeSection(state_dir=self.mktemp()))
        sent: list[Any] = []
        service = SecurityService(config, Clock(), Counters(), ADDR_A, lambda p, d: sent.append(d))
        service.startService()
        self.assertFalse(service.have_cert)
        self.assertFalse(service.send(ADDR_B, b"x"))
        self.assertEqual(service.receive(ADDR_B, 0x80, b"junk"), [])
        self.assertEqual(service.status()["state"], "not enrolled (host.pem is missing)")
        self.assertEqual(service.peers(), [])
        self.assertEqual(sent, [])

    def test_enrolment_picked_up(self) -> None:
        state = self.mktemp()
        config = NodeConfig(node=NodeSection(state_dir=state))
        clock = Clock()
        service = SecurityService(config, clock, Counters(), ADDR_A, lambda p, d: None)
        service.startService()
        self.assertFalse(service.have_cert)
        install(state, pki().a)
        clock.advance(60)
        self.assertTrue(service.have_cert)
        first = service.manager
        clock.advance(60)
        self.assertIs(service.manager, first)  # unchanged files: nothing reloaded
        with open(os.path.join(state, "host.key"), "wb") as f:  # renewal half written
            f.write(b"")
        clock.advance(60)
        self.assertIs(service.manager, first)
        install(state, pki().no_uri)  # renewed: a new certificate
        os.utime(os.path.join(state, "host.pem"), ns=(1, 1))
        clock.advance(60)
        self.assertIsNot(service.manager, first)
        self.assertEqual(
            service.status()["certificate"]["serial"], f"{pki().no_uri.cert.serial_number:x}"
        )
        service.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_exchange_and_control(self) -> None:
        wire = Wire(self)
        wire.start()
        a, b = wire.services[ADDR_A], wire.services[ADDR_B]
        self.assertTrue(a.send(ADDR_B, b"hello b", IP_B))
        wire.pump()
        self.assertTrue(b.send(ADDR_A, b"hello a"))
        wire.pump()
        self.assertEqual(wire.inbox, {ADDR_B: [b"hello b"], ADDR_A: [b"hello a"]})
        handlers: dict[str, Any] = {}

        class Control:
            def register(self, name: str, handler: Any) -> None:
                handlers[name] = handler

        a.register(Control())
        answer = handlers["security"]({})
        self.assertEqual(
            answer["status"]["certificate"]["serial"], f"{pki().a.cert.serial_number:x}"
        )
        (peer,) = answer["peers"]
        self.assertEqual((peer["secured"], peer["peer_ip"]), (True, IP_B))
        self.assertEqual(peer["serial"], f"{pki().b.cert.serial_number:x}")

    def test_timers_drive_retransmission(self) -> None:
        wire = Wire(self)
        wire.start()
        wire.drop = 1  # the first ClientHello is lost
        wire.services[ADDR_A].send(ADDR_B, b"late", IP_B)
        wire.pump()
        self.assertEqual(wire.inbox[ADDR_B], [])
        wire.advance(1.0)
        self.assertEqual(wire.inbox[ADDR_B], [b"late"])

    def test_rekey_by_time_under_the_reactor(self) -> None:
        wire = Wire(self)
        wire.start()
        a = wire.services[ADDR_A]
        a.send(ADDR_B, b"1", IP_B)
        wire.pump()
        first = a.manager.channels[ADDR_B].current  # type: ignore[union-attr]
        wire.advance(3600)
        wire.advance(20)
        self.assertNotEqual(a.manager.channels[ADDR_B].current, first)  # type: ignore[union-attr]
        a.send(ADDR_B, b"2")
        wire.pump()
        self.assertEqual(wire.inbox[ADDR_B], [b"1", b"2"])

    def test_stop_cancels_timers_and_closes(self) -> None:
        wire = Wire(self, crl="https://10.128.0.1/crl")
        wire.start()
        wire.services[ADDR_A].send(ADDR_B, b"x", IP_B)
        wire.pump()
        for service in wire.services.values():
            service.stopService()
        wire.pump()
        self.assertEqual(wire.clock.getDelayedCalls(), [])
        self.assertEqual(wire.services[ADDR_B].peers(), [])


class CrlServiceTests(SynchronousTestCase):
    def test_fetch_on_start_and_at_next_update(self) -> None:
        wire = Wire(self, crl="https://10.128.0.1/crl")
        wire.crl_answers = [succeed(make_crl(pki().ca, [7], number=1)) for _ in range(2)]
        wire.start()
        wire.clock.advance(0)
        self.assertEqual(wire.fetched, ["https://10.128.0.1/crl"] * 2)
        a = wire.services[ADDR_A]
        self.assertEqual(a.status()["crl"]["number"], 1)
        self.assertIn(7, a.revoked)
        # Kept on disk for the next start, and offered to each new overlay link.
        self.assertTrue(os.path.exists(os.path.join(a.config.node.state_dir, "crl.der")))
        crl = a.current_crl()
        assert crl is not None
        self.assertFalse(wire.services[ADDR_B].offer_crl(crl))  # same CRL: not newer
        self.assertEqual(wire.services[ADDR_B].counters.get(
            "security_crl_refused", reason="not-newer", source="overlay"), 1)

    def test_fetch_period_scales_with_the_overlay(self) -> None:
        """Each node fetches every (size x 3 s), jittered; never more often than 10 s."""
        wire = Wire(self, crl="https://10.128.0.1/crl")
        a = wire.services[ADDR_A]
        size = [100]
        a._size_of = lambda: size[0]
        periods = [a.crl_period() for _ in range(200)]
        self.assertTrue(all(150 <= p <= 450 for p in periods), (min(periods), max(periods)))
        self.assertGreater(max(periods) - min(periods), 100)  # jittered
        size[0] = 1
        self.assertTrue(all(10.0 <= a.crl_period() <= 15.0 for _ in range(50)))
        size[0] = 10**6
        self.assertEqual(a.crl_period(), 3600.0)  # [security] crl_refresh is the longest
        wire.crl_answers = [succeed(make_crl(pki().ca, [], number=1))]
        size[0] = 20
        wire.start()
        wire.clock.advance(0)
        (fetch,) = [c for c in wire.clock.getDelayedCalls()
                    if c.func == a._fetch_crl]  # type: ignore[comparison-overlap]
        self.assertTrue(30 <= fetch.getTime() - wire.clock.seconds() <= 90)

    def test_fetch_failure_retried(self) -> None:
        wire = Wire(self, crl="https://10.128.0.1/crl")
        wire.start()
        wire.clock.advance(0)
        a = wire.services[ADDR_A]
        self.assertIn("unreachable", a.status()["crl"]["error"])
        self.assertEqual(a.counters.get("security_crl_fetches", outcome="failed"), 1)
        wire.crl_answers = [succeed(make_crl(pki().ca, [], number=4))]
        wire.clock.advance(30)
        self.assertEqual(a.status()["crl"]["number"], 4)

    def test_pushed_crl_tears_down_sessions(self) -> None:
        wire = Wire(self)
        wire.start()
        a, b = wire.services[ADDR_A], wire.services[ADDR_B]
        b.send(ADDR_A, b"before", IP_A)
        wire.pump()
        crl = make_crl(pki().ca, [pki().b.cert.serial_number], number=2)
        self.assertFalse(a.offer_crl(b"garbage"))
        self.assertIn("malformed", a.status()["crl"]["error"] or "")
        self.assertTrue(a.offer_crl(crl))
        self.assertFalse(a.offer_crl(crl, "fetch"))  # not newer: normal, not an error
        self.assertIsNone(a.status()["crl"]["error"])
        wire.pump()
        self.assertEqual(a.peers()[0]["secured"], False)
        b.send(ADDR_A, b"after")
        wire.pump()
        wire.advance(5)
        self.assertEqual(wire.inbox[ADDR_A], [b"before"])
        self.assertEqual(a.counters.get("security_handshakes_refused", reason="revoked"), 1)


class CliTests(SynchronousTestCase):
    def test_format(self) -> None:
        from wow.cli.security import format_security

        wire = Wire(self)
        wire.start()
        a = wire.services[ADDR_A]
        a.send(ADDR_B, b"x", IP_B)
        wire.pump()
        lines = format_security({"status": a.status(), "peers": a.peers()}, now=time.time())
        self.assertEqual(lines[0], "security: on (enrolled)")
        self.assertIn(f"serial {pki().a.cert.serial_number:x}", lines[1])
        self.assertIn("expires in", lines[1])
        self.assertTrue(lines[-1].startswith(ADDR_B.hex()))
        self.assertIn("ECDHE-ECDSA-AES256-GCM-SHA384", lines[-1])
        self.assertIn(f"{pki().b.cert.serial_number:x}", lines[-1])

    def test_unreachable(self) -> None:
        from wow.cli.main import main

        with self.assertRaises(SystemExit) as cm:
            main(["security", "--socket", self.mktemp()])
        self.assertEqual(cm.exception.code, 3)
