"""
Bad input for real: a running wow-node in a namespace, its host bound by
its own dhclient, flooded through the TAP (tests/flood.py: packets to ever
new unleased addresses and to one unleased destination, spoofed sources, a
DHCP DISCOVER storm against a small pool).  The node's memory (VmRSS from
/proc) must stop growing once its bounded tables are full, every kind of
bad input must show in the counters, and the node must still answer.
"""

from __future__ import annotations

import json
import os
import sys

from twisted.trial.unittest import SynchronousTestCase

from tests.netns import HERE, Lab, skip_reason
from wow.demo.topology import NodeSite

SKIP = skip_reason("dhclient", "ping")
#: Growth allowed between the end of the warm-up flood and the end of three
#: times as much flood again (the tables are full by then; allocator noise).
RSS_GROWTH_LIMIT_KB = 6 * 1024
#: And in all (an idle node is ~55 MB).
RSS_LIMIT_KB = 160 * 1024


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


class FloodTests(SynchronousTestCase):
    if SKIP:
        skip = SKIP

    def test_memory_bounded_under_flood(self) -> None:
        lab = Lab(tag="pf")
        self.addCleanup(lab.teardown)
        # A pool of 50 addresses: the DISCOVER storm exhausts it at once.
        # Security off: the data plane thread runs (its hand-over to the
        # reactor must stay bounded too).
        n = NodeSite(lab, extra_config='pool_start = "10.128.0.10"\npool_end = "10.128.0.59"\n'
                     '[security]\nenabled = false\n')
        node = n.start()
        n.dhclient()
        host_ip = n.lease(n.wait_event("BOUND")).ip
        router_mac = n.control("status")["nic"]["router_mac"]
        host_mac = open(os.path.join(n.state, "tap-mac")).read().strip()

        def flood(seconds: int) -> dict[str, int]:
            out = lab.ns_run(n.ns, "env", f"PYTHONPATH={HERE}", sys.executable, "-m",
                             "tests.flood", n.tap, router_mac, host_mac, host_ip, str(seconds),
                             timeout=seconds + 60)
            return json.loads(out.stdout)  # type: ignore[no-any-return]

        start = rss_kb(node.pid)
        warm = flood(10)
        before = rss_kb(node.pid)
        more = flood(15)
        after = rss_kb(node.pid)
        print(f"\nflood: rss {start} -> {before} -> {after} kB; warm-up {warm}; then {more}",
              file=sys.stderr)
        self.assertGreater(more["unleased"], warm["unleased"])
        self.assertLess(after, RSS_LIMIT_KB)
        self.assertLess(after - before, RSS_GROWTH_LIMIT_KB,
                        f"RSS grew from {before} kB to {after} kB under the flood")

        counters = n.control("counters")
        self.assertIn("dataplane_wakeups", counters)  # the thread read the flood
        dropped = counters.get("ip_dropped", {})
        self.assertGreater(dropped.get("direction=out,reason=source-not-leased-here", 0), 1000)
        unleased = sum(v for k, v in dropped.items()
                       if "unleased-destination" in k or "queue" in k or "lookup" in k)
        self.assertGreater(unleased, 1000, dropped)
        self.assertGreater(sum(counters.get("dhcp_refused", {}).values()), 100, counters)
        # Still serving: the host's own lease and the gateway answer.
        lab.ns_run(n.ns, "ping", "-c", "1", "-W", "2", "10.128.0.1")
        self.assertEqual([r["ip"] for r in n.leases() if r["ip"] == host_ip], [host_ip])
        print(f"flood: dropped {dropped}", file=sys.stderr)
