"""
The operator's tools against real daemons.

- Three wow-nodes in namespaces on an "internet" bridge with real dhclients:
  C{wow ping} by virtual IP, name and overlay address (path and RTT),
  C{wow netcheck}, exit codes, and each node's Prometheus metrics scraped
  and parsed with prometheus_client's parser.
- wow-ca and wow-dns on loopback: their metrics endpoints, scraped after
  real requests.
- The status page of a real node (three overlay-only nodes on loopback) in
  headless Chromium: no console errors, the other nodes in the peer table,
  a screenshot in C{artifacts/}.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.names import dns
from twisted.trial.unittest import SynchronousTestCase

from wow.demo.clients import dhclient_argv
from wow.lab.netns import HERE, Lab, skip_reason
from wow.lab.wan import Internet

PORT = 4789
METRICS = "127.0.0.1:9477"
NODE_CONFIG = f"""
[dhcp]
mode = "dht"
lease_time = 600
[overlay]
keepalive = 1.0
dead_after = 6.0
stabilize = 2.0
[security]
enabled = false
[metrics]
listen = "{METRICS}"
"""
SCRAPE = ("import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
          "'http://{}/metrics', timeout=5).read().decode())")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def families(text: str) -> dict[str, Any]:
    """Metric families by name (counters without their C{_total})."""
    return {f.name: f for f in text_string_to_metric_families(text)}


def total(family: Any, suffix: str = "", **labels: str) -> float:
    return sum(s.value for s in family.samples if s.name.endswith(suffix)
               and all(s.labels.get(k) == v for k, v in labels.items()))


def scrape(listen: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{listen}/metrics", timeout=5) as r:
        return families(r.read().decode())


def wow(*argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "wow", *argv], capture_output=True, text=True,
                          timeout=60, env=env, cwd=HERE)


class Node:
    def __init__(self, lab: Lab, host: Any, index: int, config: str) -> None:
        self.lab = lab
        self.ns = host.ns
        self.address = host.address
        self.index = index
        self.tap = lab.name(f"t{index}")
        self.work = os.path.join(lab.workdir, f"n{index}")
        os.makedirs(self.work, exist_ok=True)
        self.socket = os.path.join(self.work, "state", "control.sock")
        self.config = config

    def start(self, bootstrap: str | None) -> None:
        args = ["--config", self.config, "--state-dir", os.path.join(self.work, "state"),
                "--tap", self.tap, "--listen", str(PORT)]
        if bootstrap:
            args += ["--bootstrap", bootstrap]
        self.proc = self.lab.twistd(self.ns, "wow-node", args, f"n{self.index}/node")
        self.lab.wait_for_log(self.proc, "wow-node ready", timeout=30)
        self.lab.spawn(self.ns, dhclient_argv(self.tap, self.work, timeout=60),
                       f"n{self.index}/dhclient")

    def bound(self) -> list[str]:
        try:
            with open(os.path.join(self.work, "dhclient-events.log")) as f:
                return [ln.split()[1] for ln in f if ln.split()[:1] in (["BOUND"], ["REBOOT"])]
        except FileNotFoundError:
            return []

    def wow(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return wow(*argv, "--socket", self.socket)

    def metrics(self) -> dict[str, Any]:
        out = self.lab.ns_run(self.ns, sys.executable, "-c", SCRAPE.format(METRICS))
        return families(out.stdout.decode())


class NodeToolsTests(SynchronousTestCase):
    """wow ping, wow netcheck and the node's metrics across three real nodes."""

    def setUp(self) -> None:
        reason = skip_reason("dhclient")
        if reason:
            raise self.skipTest(reason)
        self.lab = Lab(tag="q")
        self.addCleanup(self.lab.teardown)
        net = Internet(self.lab)
        config = os.path.join(self.lab.workdir, "node.toml")
        with open(config, "w") as f:
            f.write(NODE_CONFIG)
        self.nodes = [Node(self.lab, net.add_public_host(f"h{i}"), i, config) for i in range(3)]
        first = self.nodes[0]
        first.start(None)
        for node in self.nodes[1:]:
            node.start(f"udp://{first.address}:{PORT}")
        self.lab.wait_until(lambda: all(n.bound() for n in self.nodes), timeout=60,
                            interval=0.3, what="every host bound a virtual IP")
        self.ips = [n.bound()[0] for n in self.nodes]

    def test_tools(self) -> None:
        a, b = self.nodes[0], self.nodes[2]
        b_address = json.loads(b.wow("status", "--json").stdout)["overlay"]["address"]

        # by virtual IP (the lease in the DHT), by name (the node's DNS), by address
        derived = "c" + self.ips[2].replace(".", "-")
        for target in (self.ips[2], derived, b_address):
            self.lab.wait_until(
                lambda target=target: a.wow("ping", "--count", "1", target).returncode == 0,
                timeout=30, interval=0.5, what=f"a reply from {target}")
            done = a.wow("ping", "--json", "--count", "2", "--interval", "0.1", target)
            self.assertEqual(done.returncode, 0, done.stderr)
            replies = json.loads(done.stdout)
            self.assertEqual(len(replies), 2)
            for r in replies:
                self.assertTrue(r["reply"])
                self.assertEqual(r["address"], b_address)
                self.assertEqual(r["path"], "direct")  # three nodes: everyone is linked
                self.assertEqual(r["hops"], 1)
                self.assertGreater(r["rtt_ms"], 0)
        text = a.wow("ping", "--count", "1", derived)
        self.assertIn(f"reply from {b_address} ({self.ips[2]}): direct link", text.stdout)

        # exit codes: no such lease → 1; no daemon → 3
        missing = a.wow("ping", "--count", "1", "10.128.250.250")
        self.assertEqual(missing.returncode, 1)
        self.assertIn("no node holds a lease", missing.stderr)
        self.assertEqual(wow("ping", "--socket", "/nonexistent/x.sock", "x").returncode, 3)
        self.assertEqual(wow("netcheck", "--socket", "/nonexistent/x.sock").returncode, 3)

        # netcheck: public hosts, peers see the host's own address
        report = json.loads(a.wow("netcheck", "--json").stdout)
        self.assertEqual(report["mapping"], "none")
        self.assertEqual(report["reachable_directly"], "yes")
        self.assertIn(f"{a.address}:{PORT}", report["reflexive_endpoints"])
        self.assertGreaterEqual(len(report["reflexive"]), 1)
        self.assertIn("mapping", a.wow("netcheck").stdout)

        # a datagram that is not overlay protocol: dropped with a reason
        self.lab.ns_run(b.ns, sys.executable, "-c", "import socket; socket.socket(socket.AF_INET,"
                        f" socket.SOCK_DGRAM).sendto(b'junk', ('{a.address}', {PORT}))")

        # metrics: every family present, with the values this run must have produced
        m = a.metrics()
        for name in ("wow_node_tap_frames_read", "wow_node_tap_frames_written",
                     "wow_node_tap_bytes_read", "wow_node_tap_bytes_written",
                     "wow_node_overlay_datagrams_received", "wow_node_overlay_datagrams_sent",
                     "wow_node_overlay_bytes_received", "wow_node_overlay_bytes_sent",
                     "wow_node_dht_ops", "wow_node_dhcp_acks", "wow_node_dhcp_dht_claims",
                     "wow_node_echo_requests_sent", "wow_node_overlay_links_up"):
            self.assertIn(name, m)
            self.assertGreater(total(m[name], "_total"), 0, name)
        self.assertGreater(total(m["wow_node_overlay_bytes_received"], "_total"),
                           total(m["wow_node_overlay_datagrams_received"], "_total"))
        links = m["wow_node_overlay_links"]
        self.assertEqual(links.type, "gauge")
        self.assertEqual({s.labels["kind"] for s in links.samples},
                         {"near", "shortcut", "on-demand", "other", "relayed"})
        self.assertEqual(total(links), 2)
        self.assertEqual(m["wow_node_dht_op_seconds"].type, "summary")
        self.assertGreater(total(m["wow_node_dht_op_seconds"], "_count"), 0)
        self.assertGreater(total(m["wow_node_dht_op_seconds"], "_sum"), 0)
        # the name lookups above went through the node's DNS
        self.assertGreater(total(m["wow_node_dns_responses"], "_total", rcode="noerror"), 0)
        # drops are counted by reason
        self.assertTrue(all("reason" in s.labels for s in m["wow_node_overlay_dropped"].samples))
        self.assertGreater(total(m["wow_node_overlay_dropped"], "_total"), 0)


class DaemonMetricsTests(SynchronousTestCase):
    """wow-ca and wow-dns serve metrics too (on loopback)."""

    def setUp(self) -> None:
        self.lab = Lab(tag="q")
        self.addCleanup(self.lab.teardown)

    def test_ca_metrics(self) -> None:
        listen = f"127.0.0.1:{free_port()}"
        port = free_port()
        config = os.path.join(self.lab.workdir, "ca.toml")
        with open(config, "w") as f:
            f.write(f'[metrics]\nlisten = "{listen}"\n')
        proc = self.lab.twistd(None, "wow-ca", [
            "--config", config, "--state-dir", os.path.join(self.lab.workdir, "ca"),
            "--address", "127.0.0.1", "--listen", str(port), "--policy", "auto"], "ca")
        self.lab.wait_for_log(proc, "wow-ca ready", timeout=30)
        # a request that must be refused (not a CSR)
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        request = urllib.request.Request(
            f"https://127.0.0.1:{port}/.well-known/est/simpleenroll", data=b"bm90IGEgQ1NS",
            headers={"content-type": "application/pkcs10"})
        try:
            urllib.request.urlopen(request, context=context, timeout=10).read()
        except urllib.error.HTTPError as e:
            self.assertGreaterEqual(e.code, 400)
        m = scrape(listen)
        self.assertIn("wow_ca_ca_refused", m)
        self.assertGreater(total(m["wow_ca_ca_refused"], "_total"), 0)
        for s in m["wow_ca_ca_refused"].samples:
            self.assertIn("reason", s.labels)

    def test_dns_metrics(self) -> None:
        listen = f"127.0.0.1:{free_port()}"
        port = free_port(socket.SOCK_DGRAM)
        config = os.path.join(self.lab.workdir, "dns.toml")
        with open(config, "w") as f:
            f.write(f'[dns]\nlisten = "127.0.0.1"\nport = {port}\n'
                    f'metrics_listen = "{listen}"\nrecords = ["host1 A 10.128.0.9"]\n')
        proc = self.lab.twistd(None, "wow-dns", ["--config", config], "dns")
        self.lab.wait_for_log(proc, "DNS answering on", timeout=30)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            for i, name in enumerate((b"host1.wow", b"nosuch.wow", b"host1.wow")):
                q = dns.Message(id=i + 1, recDes=1)
                q.queries = [dns.Query(name, dns.A, dns.IN)]
                s.sendto(q.toStr(), ("127.0.0.1", port))
                s.recvfrom(4096)
        m = scrape(listen)
        self.assertEqual(total(m["wow_dns_dns_answers"], "_total"), 3)
        responses = m["wow_dns_dns_responses"]
        self.assertEqual(total(responses, "_total", rcode="noerror"), 2)
        self.assertEqual(total(responses, "_total", rcode="nxdomain"), 1)
