"""
The Twisted adapter on real loopback UDP sockets: two services link, the DHT
works through Deferreds, control commands report status and peers, and the
send path survives oversized datagrams and refused ports.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from wow.control.status import add_status_section
from wow.metrics import Counters
from wow.node.config import load_node_config
from wow.overlay import address as A
from wow.overlay import wire as W
from wow.overlay.identity import KEY_FILE
from wow.overlay.service import OverlayService


class FakeControl:
    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}

    def register(self, name: str, handler: Any) -> None:
        self.handlers[name] = handler


class LoopbackOverlays:
    """Test mixin: real overlay services on loopback, and waiting for a condition."""

    mktemp: Any
    addCleanup: Any
    fail: Any

    def make(self, bootstrap: list[str] | None = None) -> OverlayService:
        """A real overlay service on loopback (fast keepalives), stopped after the test."""
        state = os.path.abspath(self.mktemp())
        config = load_node_config(None, {
            "node": {"state_dir": state},
            "overlay": {"listen": 0, "interface": "127.0.0.1", "bootstrap": bootstrap or [],
                        "keepalive": 0.5, "dead_after": 2.0},
        })
        svc = OverlayService(config, reactor, Counters())
        svc.startService()
        self.addCleanup(svc.stopService)
        return svc

    async def wait(self, predicate: Any, timeout: float = 10) -> None:
        for _ in range(int(timeout / 0.05)):
            if predicate():
                return
            await task.deferLater(reactor, 0.05, lambda: None)
        self.fail("condition not reached")


class OverlayServiceTests(LoopbackOverlays, TestCase):
    timeout = 30


    async def test_link_dht_and_control(self) -> None:
        a = self.make([])
        port = a.port.getHost().port
        b = self.make([f"udp://127.0.0.1:{port}"])
        await self.wait(lambda: a.node.table.links and b.node.table.links)
        key_path = os.path.join(a.config.node.state_dir, KEY_FILE)
        self.assertEqual(stat.S_IMODE(os.stat(key_path).st_mode), 0o600)

        self.assertTrue(await defer.Deferred.fromCoroutine(self._dht(a, b)))

        control = FakeControl()
        b.register_control(control)
        status = await defer.maybeDeferred(control.handlers["status"], {})
        self.assertEqual(status["overlay"]["address"], A.to_text(b.address))
        self.assertEqual(status["overlay"]["reflexive_endpoint"],
                         ["127.0.0.1", b.port.getHost().port])
        self.assertEqual(status["overlay"]["links"], 1)
        peers = control.handlers["peers"]({})
        self.assertEqual([p["address"] for p in peers], [A.to_text(a.address)])
        self.assertEqual(peers[0]["endpoint"], f"127.0.0.1:{port}")
        got = await control.handlers["dht.get"]({"key": "hello"})
        self.assertEqual(got[0]["value"], "world")

        # Application handlers and link events.
        seen: list[bytes] = []
        a.register_handler(W.APP_FIRST + 2, lambda d: seen.append(d.payload))
        self.assertTrue(b.send_to(a.address, W.APP_FIRST + 2, b"ping"))
        await self.wait(lambda: seen == [b"ping"])
        events: list[str] = []
        a.add_observer(lambda ev, link: events.append(ev))
        await b.stopService()
        await self.wait(lambda: events == ["down"])

    async def _dht(self, a: OverlayService, b: OverlayService) -> bool:
        await b.dht.put(b"hello", b"world", 60)
        values = await a.dht.get(b"hello")
        self.assertEqual([(v.value, v.owner) for v in values], [(b"world", b.address)])
        return True

    def test_send_errors_are_counted_not_raised(self) -> None:
        a = self.make([])
        a._send(b"x" * 70000, ("127.0.0.1", 9))
        self.assertEqual(a.counters.get("overlay_dropped", reason="oversized-send"), 1)
        a._send(b"x", ("127.0.0.1", 9))  # nobody listens: ignored

    def test_status_sections_aggregate(self) -> None:
        control = FakeControl()
        add_status_section(control, "overlay", lambda args: {"a": 1})
        add_status_section(control, "tap", lambda args: defer.succeed({"b": 2}))
        d = control.handlers["status"]({})
        self.assertEqual(self.successResultOf(d), {"overlay": {"a": 1}, "tap": {"b": 2}})
