"""
The NAT matrix for real (wow/lab/natmatrix.py): 13 wow-nodes behind every
kind of nftables NAT router; every pair of kinds pings, the pairs hole
punching can open are direct (birthday probing included), symmetric with
symmetric goes through a one-hop relay.  Then every router restarts (NAT
state flushed) and the links recover within 30 s.
"""

from __future__ import annotations

import time

from twisted.trial.unittest import SynchronousTestCase

from wow.lab.natmatrix import NatMatrix, verdict
from wow.lab.netns import Lab, skip_reason


class NatMatrixTests(SynchronousTestCase):
    def setUp(self) -> None:
        reason = skip_reason("nft", "conntrack")
        if reason:
            raise self.skipTest(reason)
        self.lab = Lab(tag="nt")
        self.addCleanup(self.lab.teardown)

    def test_matrix_then_routers_restart(self) -> None:
        m = NatMatrix(self.lab)
        m.build()
        m.settle()
        rows = m.run()
        self.assertEqual(verdict(rows), [], rows)
        relayed = [r for r in rows if r["mode"] == "relayed"]
        self.assertEqual(len(relayed), 1)
        boot_and_nodes = {n.address for n in [m.boot, *m.nodes.values()] if n is not None}
        self.assertIn(relayed[0]["via"], boot_and_nodes)  # one hop, through a node
        times = sorted(r["direct_s"] for r in rows if r["direct_s"] is not None)
        self.assertLessEqual(times[len(times) // 2], 2.0)

        # Every router restarts: conntrack and the cone maps are gone.  The
        # full cone - port-restricted pair asked for its link above.
        a, b = m.nodes["full-cone", 0], m.nodes["port-restricted", 1]
        assert m.internet is not None
        m.internet.flush_nat_state()
        flushed = time.monotonic()
        deadline = flushed + 30
        ok = False
        while time.monotonic() < deadline and not ok:
            r = a.ctl("ping", {"target": b.address, "timeout": 1}, timeout=5)
            ok = bool(r.get("reply")) and r.get("path") == "direct"
            if not ok:
                time.sleep(0.5)
        self.assertTrue(ok, f"no direct path {time.monotonic() - flushed:.0f} s after the flush")
