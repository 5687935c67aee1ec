"""
The node's Enroller service on a L{task.Clock}: enrols when there is no
certificate, sleeps until the renewal time, renews, follows IP changes at
once when woken, and backs off on failures.
"""

from __future__ import annotations

import os
from typing import Any

from cryptography.hazmat.primitives import serialization
from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from tests.ca_support import NOW, b64, ec_key, make_csr
from wow.ca.client import CA, CERT, KEY, EnrolError, Enroller, EnrolSettings, cert_ip, installed
from wow.ca.csr import CsrRules, check_request
from wow.ca.issue import Signer, create_ca, private_pem

DAY = 86400


class FakeEnrolment:
    """Installs a certificate from an in-memory CA, or fails, and records the calls."""

    def __init__(self, world: World, settings: EnrolSettings, ip: str) -> None:
        self.world, self.settings, self.ip = world, settings, ip

    async def run(self, renew: bool = False, deadline: float | None = None) -> Any:
        self.world.calls.append((self.ip, renew))
        if self.world.failures:
            self.world.failures -= 1
            raise EnrolError("the CA is down", temporary=True)
        key = ec_key()
        valid = check_request(b64(make_csr(key, cn="n1", ips=(self.ip,))), self.ip, CsrRules())
        cert = self.world.signer.issue(valid, len(self.world.calls), self.world.clock.seconds())
        d = self.settings.state_dir
        pem = serialization.Encoding.PEM
        for name, data in (
            (KEY, private_pem(key)),
            (CERT, cert.public_bytes(pem)),
            (CA, self.world.signer.cert.public_bytes(pem)),
        ):
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
        return cert


class World:
    def __init__(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(NOW)
        self.signer = Signer(*create_ca("CA", 3650, NOW), 30 * DAY)
        self.calls: list[tuple[str, bool]] = []
        self.failures = 0


class EnrollerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = World()
        self.ip: str | None = "10.128.0.5"
        state = self.mktemp()
        os.makedirs(state)
        settings = EnrolSettings(
            url="https://ca:8443", state_dir=state, hostname="n1", renew_before=7 * DAY
        )
        self.enroller = Enroller(
            self.world.clock,
            settings,
            lambda: self.ip,
            lambda r, s, ip: FakeEnrolment(self.world, s, ip),
        )  # type: ignore[arg-type,return-value]
        self.enroller.startService()
        self.addCleanup(self.enroller.stopService)

    def test_enrol_sleep_renew(self) -> None:
        self.assertEqual(self.world.calls, [("10.128.0.5", False)])
        installed = []
        self.enroller.installed.addCallback(installed.append)
        self.assertEqual(cert_ip(installed[0]), "10.128.0.5")
        # Nothing happens until 7 days before expiry (the lifetime is 30 days) ...
        self.world.clock.advance(23 * DAY - 120)
        self.assertEqual(len(self.world.calls), 1)
        # ... then it renews (simplereenroll), and sleeps again.
        self.world.clock.advance(120)
        self.assertEqual(self.world.calls[-1], ("10.128.0.5", True))
        self.world.clock.advance(DAY)
        self.assertEqual(len(self.world.calls), 2)

    def test_ip_change_enrols_at_once_when_woken(self) -> None:
        self.ip = "10.128.0.9"
        self.enroller.wake()
        self.assertEqual(self.world.calls[-1], ("10.128.0.9", False))

    def test_waits_for_an_ip_and_backs_off_on_failure(self) -> None:
        self.enroller.stopService()
        self.world.calls.clear()
        self.ip = None
        self.world.failures = 3
        self.enroller.startService()
        self.world.clock.advance(60)
        self.assertEqual(self.world.calls, [])
        self.ip = "10.128.0.7"  # a new lease: the installed certificate no longer fits
        self.world.clock.advance(Enroller.NO_IP_DELAY)
        self.assertEqual(len(self.world.calls), 1)
        # Retries after 5, 7.5, 11.25 s (growing by half, at most a minute
        # apart): the fourth attempt succeeds.
        for delay, expected in ((5, 2), (7.5, 3), (11.25, 4)):
            self.world.clock.advance(delay - 0.001)
            self.assertEqual(len(self.world.calls), expected - 1)
            self.world.clock.advance(0.001)
            self.assertEqual(len(self.world.calls), expected)
        cert, matches, _ = installed(self.enroller.settings.state_dir)
        assert cert is not None
        self.assertEqual((cert_ip(cert), matches), ("10.128.0.7", True))
        self.assertEqual(self.enroller.backoff, Enroller.RETRY_MIN)

    def test_enrolment_events_are_counted(self) -> None:
        from wow.metrics import Counters

        self.enroller.stopService()
        counters = Counters()
        self.enroller.counters = counters
        self.world.failures = 2
        self.ip = "10.128.0.8"  # the installed certificate no longer fits
        self.enroller.startService()
        self.world.clock.advance(5)
        self.world.clock.advance(10)
        self.assertEqual(counters.get("enrolments", result="failed-temporarily"), 2)
        self.assertEqual(counters.get("enrolments", result="enrolled"), 1)
        self.world.clock.advance(23 * DAY + 60)
        self.assertEqual(counters.get("enrolments", result="renewed"), 1)
