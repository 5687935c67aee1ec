"""
The fast data path for real: two sites on a plain "internet" bridge, each a
namespace with a wow-node (C{[tap] offload = true}) and the host's own
dhclient.  TCP (iperf3) between the hosts moves super-frames: the counters
show them read whole from the TAP, sent as one GSO send per message on the
direct link, taken whole from GRO bursts and written whole to the other TAP.
A mixed pair (one node without offloads) shows the plain TAP receiving the
super-frames segmented in software, and its plain packets arriving intact.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.test_ip_overlay_integration import CONFIG, PORT, Node
from wow.lab.netns import Lab, skip_reason
from wow.lab.wan import Internet


def total(counters: dict[str, dict[str, float]], name: str, **labels: str) -> float:
    """The sum of counter C{name}'s series whose labels include C{labels}."""
    want = [f"{k}={v}" for k, v in labels.items()]
    return sum(v for key, v in counters.get(name, {}).items()
               if all(w in key.split(",") for w in want))


class FastPathTests(SynchronousTestCase):
    def setUp(self) -> None:
        reason = skip_reason("dhclient", "ping", "iperf3")
        if reason:
            raise self.skipTest(reason)
        self.lab = Lab(tag="f")
        self.addCleanup(self.lab.teardown)
        self.net = Internet(self.lab)

    def _config(self, name: str, offload: bool) -> str:
        path = os.path.join(self.lab.workdir, name)
        with open(path, "w") as f:
            f.write(CONFIG + f"[tap]\noffload = {'true' if offload else 'false'}\n")
        return path

    def _pair(self, offloads: tuple[bool, bool]) -> tuple[list[Node], list[str]]:
        nodes = [Node(self.lab, self.net.add_public_host(f"h{i}"), i,
                      self._config(f"n{i}.toml", off))
                 for i, off in enumerate(offloads)]
        nodes[0].start(None)
        nodes[1].start(f"udp://{nodes[0].address}:{PORT}")
        for n in nodes:
            n.dhclient()
        self.lab.wait_until(lambda: all(n.bound() for n in nodes), timeout=60, interval=0.3,
                            what="both hosts bound a virtual IP")
        ips = [n.bound()[0] for n in nodes]
        for a, ip in ((nodes[0], ips[1]), (nodes[1], ips[0])):
            self.lab.wait_until(lambda a=a, ip=ip: a.run(
                "ping", "-c", "1", "-W", "1", ip, check=False).returncode == 0,
                timeout=20, what=f"ping {a.index} -> {ip}")
        return nodes, ips

    def _iperf(self, client: Node, server: Node, ip: str, *extra: str) -> dict[str, Any]:
        proc = self.lab.spawn(server.ns, ["iperf3", "-s", "-B", ip, "-1"], "iperf3-s")
        time.sleep(0.5)
        out = client.run("iperf3", "-c", ip, "-t", "3", "-J", *extra, timeout=60)
        self.lab.stop(proc)
        result: dict[str, Any] = json.loads(out.stdout)
        self.assertNotIn("error", result)
        return result

    def test_offload_pair(self) -> None:
        nodes, ips = self._pair((True, True))
        tcp = self._iperf(nodes[0], nodes[1], ips[1])
        received = tcp["end"]["sum_received"]["bytes"]
        self.assertGreater(received, 5_000_000)
        back = self._iperf(nodes[1], nodes[0], ips[0])
        self.assertGreater(back["end"]["sum_received"]["bytes"], 5_000_000)
        c0, c1 = nodes[0].ctl("counters"), nodes[1].ctl("counters")
        # the sender moved super-frames as one GSO send each on the direct link
        self.assertGreater(total(c0, "overlay_link_messages_sent"), 100)
        # the receiver took them whole from GRO bursts and wrote them whole
        self.assertGreater(total(c1, "overlay_fastpath_messages"), 100)
        self.assertGreater(total(c1, "tap_superframes_written"), 100)
        self.assertEqual(total(c1, "ip_dropped", direction="in"), 0)
        self.assertEqual(total(c1, "datapath_pieces_dropped"), 0)
        # small packets still work both ways (ping of a full-MTU packet)
        ok = nodes[1].run("ping", "-c", "2", "-s", "1300", "-M", "do", ips[0], check=False)
        self.assertEqual(ok.returncode, 0, ok.stdout)

    def test_mixed_pair(self) -> None:
        nodes, ips = self._pair((True, False))
        # offload -> plain: super-frames cut into packets in software at the receiver
        tcp = self._iperf(nodes[0], nodes[1], ips[1])
        self.assertGreater(tcp["end"]["sum_received"]["bytes"], 1_000_000)
        c1 = nodes[1].ctl("counters")
        self.assertGreater(total(c1, "tap_software_segmented"), 100)
        self.assertEqual(total(c1, "frames_dropped", reason="rejected"), 0)
        # plain -> offload: ordinary packets
        back = self._iperf(nodes[1], nodes[0], ips[0])
        self.assertGreater(back["end"]["sum_received"]["bytes"], 1_000_000)

    def test_frag_needed(self) -> None:
        self._frag_needed(False)

    def test_frag_needed_offload(self) -> None:
        """The same through offloading TAPs (the default) and the data plane thread."""
        self._frag_needed(True)
        # and full-MTU packets with DF still cross
        nodes, ips = self.nodes, self.ips
        ok = nodes[0].run("ping", "-c", "2", "-W", "2", "-s", "1332", "-M", "do", ips[1],
                          check=False)
        self.assertEqual(ok.returncode, 0, ok.stdout)

    def _frag_needed(self, offload: bool) -> None:
        nodes, ips = self._pair((offload, offload))
        self.nodes, self.ips = nodes, ips
        # the host sends 1400-byte packets with DF on a 1360 TAP: ICMP
        # "fragmentation needed" with MTU 1360 comes back from the gateway
        tap = nodes[0].tap
        nodes[0].run("ip", "link", "set", "dev", tap, "mtu", "1500")
        out = nodes[0].run("ping", "-c", "2", "-W", "1", "-s", "1400", "-M", "do", ips[1],
                           check=False)
        text = (out.stdout + out.stderr).decode()
        self.assertIn("mtu = 1360", text.lower().replace("mtu=", "mtu = "))
        c0 = nodes[0].ctl("counters")
        self.assertGreater(total(c0, "icmp_frag_needed_sent"), 0)
