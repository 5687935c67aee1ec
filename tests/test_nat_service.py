"""
The overlay service's NAT-traversal I/O on loopback: a link made from an
extra (birthday) socket lives on that socket both ways; interface addresses
become candidates; the C{connect} control command; C{wow peers} shows
relayed peers with their relay.
"""

from __future__ import annotations

import io
from contextlib import redirect_stdout

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.test_overlay_service import LoopbackOverlays
from wow.control.server import CommandError
from wow.nat.interfaces import candidate_addresses, interface_addresses
from wow.nat.punch import Probe, Puncher
from wow.overlay import wire as W
from wow.overlay.punching import Punch


class AuxSocketTests(LoopbackOverlays, TestCase):
    timeout = 30

    async def test_link_on_an_extra_socket(self) -> None:
        a, b = self.make(), self.make()
        assert a.node is not None and b.node is not None
        b_ep = ("127.0.0.1", b.port.getHost().port)
        now = reactor.seconds()
        punch = Punch(b.node.me, Puncher([b_ep], now), b"n" * 16, requester=True, started=now)
        a.node.punches[b.node.me] = punch
        a.node._send_probe(punch, Probe(b_ep, socket=5), now)
        await self.wait(lambda: b.node.me in a.node.table.links and a.node.me in b.node.table.links)
        link = a.node.table.links[b.node.me]
        self.assertEqual(link.sock, 5)
        aux_port = a._aux[5].getHost().port
        self.assertEqual(b.node.table.links[a.node.me].endpoint, ("127.0.0.1", aux_port))
        self.assertNotIn(b.node.me, a.node.punches)  # done
        seen: list[bytes] = []
        b.register_handler(W.APP_FIRST + 3, lambda d: seen.append(d.payload))
        self.assertTrue(a.send_to(b.node.me, W.APP_FIRST + 3, b"over the extra socket"))
        await self.wait(lambda: seen == [b"over the extra socket"])
        self.assertEqual(a.counters.get("overlay_dropped", reason="not-linked"), 0)

    def test_connect_command(self) -> None:
        a = self.make()
        with self.assertRaises(CommandError):
            a.control_connect({"address": "nonsense"})
        out = a.control_connect({"address": "wow:" + "ab" * 20})
        self.assertEqual(out["linked"], False)
        assert a.node is not None
        self.assertIn(int("ab" * 20, 16), a.node.ondemand)

    def test_local_addresses_are_candidates(self) -> None:
        a = self.make()
        assert a.node is not None
        port = a.port.getHost().port
        self.assertEqual(a.node.local_addresses, [("127.0.0.1", port)])  # the bound interface
        self.assertIn(("127.0.0.1", port), a.node.candidates(reactor.seconds()))


class InterfaceTests(SynchronousTestCase):
    def test_filters(self) -> None:
        found = [("lo", "127.0.0.1"), ("eth0", "198.19.1.10"), ("wow0", "10.128.3.4"),
                 ("eth1", "169.254.1.1"), ("eth2", "10.128.9.9"), ("eth3", "198.19.1.10")]
        self.assertEqual(candidate_addresses(found, ["wow0"], ["10.128.0.0/16"]),
                         ["198.19.1.10"])

    def test_this_host(self) -> None:
        names = [n for n, _ in interface_addresses()]
        self.assertIn("lo", names)


class PeersOutputTests(SynchronousTestCase):
    def test_relayed_row_names_the_relay(self) -> None:
        from wow.cli import overlay

        rows = [{"address": "wow:" + "1" * 40, "endpoint": "198.18.0.10:4789", "kind": "near",
                 "rtt_ms": 0.4, "age_s": 3.0, "path": "direct"},
                {"address": "wow:" + "2" * 40, "endpoint": "-", "kind": "on-demand",
                 "rtt_ms": None, "age_s": None, "path": "relayed", "via": "wow:" + "1" * 40}]
        original = overlay.query
        overlay.query = lambda args, command, request=None: rows  # type: ignore[assignment]
        self.addCleanup(setattr, overlay, "query", original)
        buf = io.StringIO()
        with redirect_stdout(buf):
            overlay.cmd_peers(type("Args", (), {"json": False})())  # type: ignore[arg-type]
        lines = buf.getvalue().splitlines()
        self.assertTrue(lines[1].endswith("direct"), lines[1])
        self.assertTrue(lines[2].endswith(f"relayed via wow:{'1' * 40}"), lines[2])
