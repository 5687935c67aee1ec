"""
The demo WOW: a small wide-area network on this machine.

An "internet" bridge carries a public node (the bootstrap node, which also
runs the community CA on its virtual IP); two sites sit behind NAT routers of
different kinds, each with two nodes.  Every node is a real C{twistd
wow-node} in its own namespace whose TAP is configured by the host's own
ISC dhclient (with Debian's unmodified dhclient-script, so the namespace's
/etc/resolv.conf points at WOW's DNS).  Nodes take their addresses from the
DHT, publish their names, enrol with the CA over the virtual network, and
then ordinary tools (ping by name, iperf3) run across the sites.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from wow.control.client import ControlError, call
from wow.lab.nat import NatKind
from wow.lab.netns import Lab
from wow.lab.wan import Host, Internet

PORT = 4789
CA_PORT = 8443
#: How long the traffic test waits for each path to open before measuring.
PATH_SETTLE_S = 30.0
#: The virtual IP the CA's node asks its DHCP for.
CA_ADDRESS = "10.128.0.2"
STATE_FILE = "/run/wow-demo/state.json"

NODE_CONFIG = """\
[node]
name = "{name}"
[dhcp]
mode = "dht"
lease_time = 600
[overlay]
bootstrap = [{bootstrap}]
keepalive = 5.0
dead_after = 20.0
stabilize = 3.0
[security]
enabled = true
# The CA's node is the public node: reachable in clear, so nodes can enrol.
public_nodes = ["{public}"]
crl_refresh = {crl_refresh}
{ca}
"""

DHCLIENT_CONF = """\
timeout 60;
retry 2;
send host-name = "{name}";
request subnet-mask, domain-name-servers, domain-name, host-name, interface-mtu;
"""


@dataclass
class DemoNode:
    name: str
    host: Host
    work: str
    tap: str
    proc: subprocess.Popen[bytes] | None = None
    ip: str = ""
    steps: dict[str, str] = field(default_factory=dict)

    @property
    def ns(self) -> str:
        return self.host.ns

    @property
    def socket(self) -> str:
        return os.path.join(self.work, "state", "control.sock")

    def ctl(self, command: str, args: dict[str, Any] | None = None) -> Any:
        return call(self.socket, command, args, timeout=5)

    def where(self) -> str:
        if self.host.site is None or self.host.site.kind is NatKind.PUBLIC:
            return "internet"
        return f"site {self.host.site.index} ({self.host.site.kind.value} NAT)"


class DemoWan:
    """Builds, runs and reports on the demo; L{lab} owns everything made."""

    def __init__(self, lab: Lab, say: Callable[[str], None],
                 kinds: tuple[NatKind, NatKind] = (NatKind.PORT_RESTRICTED, NatKind.FULL_CONE)
                 ) -> None:
        self.lab = lab
        self.say = say
        self.kinds = kinds
        self.net: Internet | None = None
        self.nodes: list[DemoNode] = []
        self.ca: subprocess.Popen[bytes] | None = None
        #: Seconds between CRL fetches ([security] crl_refresh).
        self.crl_refresh = 300
        #: Appended to every node's configuration (tests: e.g. "[tap]\noffload = true").
        self.extra_config = ""

    # -- building -----------------------------------------------------------

    def build(self) -> None:
        lab = self.lab
        self.net = net = Internet(lab)
        pub = net.add_public_host("pub")
        self.nodes.append(self._node("pub", pub))
        for s, kind in enumerate(self.kinds):
            site = net.add_site(kind, hosts=2)
            for h, host in enumerate(site.hosts):
                self.nodes.append(self._node(f"{'ab'[s]}{h + 1}", host))
        self.say(f"built the internet (198.18.0.0/24) and two sites behind "
                 f"{self.kinds[0].value} and {self.kinds[1].value} NAT routers "
                 f"(namespaces {lab.prefix}*)")

    def _node(self, name: str, host: Host) -> DemoNode:
        work = os.path.join(self.lab.workdir, name)
        os.makedirs(os.path.join(work, "state"), exist_ok=True)
        return DemoNode(name, host, work, self.lab.name(f"{name}t"))

    def _write_config(self, node: DemoNode, ca_url: str) -> str:
        boot = "" if node.name == "pub" else f'"udp://{self.nodes[0].host.address}:{PORT}"'
        ca = f'[ca]\nurl = "{ca_url}"\n' if ca_url else ""
        path = os.path.join(node.work, "wow-node.toml")
        with open(path, "w") as f:
            f.write(NODE_CONFIG.format(name=node.name, bootstrap=boot, ca=ca,
                                       public=CA_ADDRESS, crl_refresh=self.crl_refresh)
                    + self.extra_config)
        return path

    def start_node(self, node: DemoNode, ca_url: str = "") -> None:
        config = self._write_config(node, ca_url)
        node.proc = self.lab.spawn(node.ns, [
            sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
            "--pidfile", os.path.join(node.work, "twistd.pid"), "wow-node",
            "--config", config, "--state-dir", os.path.join(node.work, "state"),
            "--tap", node.tap, "--listen", str(PORT)], f"{node.name}/wow-node")
        self.lab.wait_for_log(node.proc, "wow-node ready", timeout=30)
        self._step(node, "started", f"wow-node up in {node.where()}, underlay "
                                    f"{node.host.address}")

    def start_dhclient(self, node: DemoNode, requested: str = "") -> None:
        self.lab.resolv_conf(node.ns, "# written by dhclient-script\n")
        conf = os.path.join(node.work, "dhclient.conf")
        with open(conf, "w") as f:
            f.write(DHCLIENT_CONF.format(name=node.name))
            if requested:
                f.write(f"send dhcp-requested-address {requested};\n")
        self.lab.spawn(node.ns, [
            "dhclient", "-d", "-4", "-cf", conf,
            "-pf", os.path.join(node.work, "dhclient.pid"),
            "-lf", os.path.join(node.work, "dhclient.leases"), node.tap],
            f"{node.name}/dhclient")

    def start_ca(self, node: DemoNode) -> str:
        assert node.ip == CA_ADDRESS, f"the CA's node got {node.ip}, not {CA_ADDRESS}"
        state = os.path.join(self.lab.workdir, "ca")
        self.ca = self.lab.spawn(node.ns, [
            sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
            "--pidfile", os.path.join(self.lab.workdir, "ca.pid"), "wow-ca",
            "--state-dir", state, "--listen", str(CA_PORT), "--address", node.ip,
            "--policy", "auto"], "wow-ca")
        self.lab.wait_for_log(self.ca, "wow-ca ready", timeout=30)
        url = f"https://{node.ip}:{CA_PORT}"
        self._step(node, "ca", f"wow-ca (EST, auto policy) listening on {url}")
        return url

    # -- watching -----------------------------------------------------------

    def _step(self, node: DemoNode, step: str, text: str) -> None:
        if node.steps.get(step) != text:
            node.steps[step] = text
            self.say(f"{node.name:>4}: {text}")

    def poll(self, node: DemoNode) -> None:
        """Report whatever changed for C{node}: joined, lease, name, certificate."""
        try:
            status = node.ctl("status")
        except ControlError:
            return
        overlay = status.get("overlay", {})
        links = overlay.get("links", 0)
        if links:
            self._step(node, "joined",
                       f"joined the overlay as {str(overlay.get('address', ''))[:12]}… "
                       f"({links} links)")
        out = self.lab.ns_run(node.ns, "ip", "-4", "-o", "addr", "show", "dev", node.tap,
                              check=False).stdout.decode().split()
        if "inet" in out:
            node.ip = out[out.index("inet") + 1].split("/")[0]
            self._step(node, "lease", f"dhclient got {node.ip} (from the DHT allocator)")
        if node.ip:
            got = self.lab.ns_run(node.ns, "getent", "hosts", f"{node.name}.wow",
                                  check=False).stdout.decode().split()
            if got[:1] == [node.ip]:
                self._step(node, "name", f"{node.name}.wow resolves to {node.ip} "
                                         "(OS resolver → WOW DNS → DHT)")
        cert = os.path.join(node.work, "state", "host.pem")
        if os.path.exists(cert):
            self._step(node, "cert", "certificate from wow-ca installed (IP SAN "
                                     f"{node.ip})")

    def wait_for(self, what: str, done: Callable[[DemoNode], bool],
                 nodes: list[DemoNode] | None = None, timeout: float = 90) -> None:
        nodes = nodes if nodes is not None else self.nodes
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in nodes:
                self.poll(node)
            if all(done(n) for n in nodes):
                return
            time.sleep(0.5)
        missing = ", ".join(n.name for n in nodes if not done(n))
        raise AssertionError(f"{what} not reached within {timeout:g} s for {missing}")

    # -- the whole show -------------------------------------------------------

    def run(self) -> None:
        self.build()
        pub = self.nodes[0]
        ca_url = f"https://{CA_ADDRESS}:{CA_PORT}"
        for node in self.nodes:
            self.start_node(node, "" if node is pub else ca_url)
        self.wait_for("every node joining the overlay", lambda n: "joined" in n.steps)
        # The CA's node asks for a well-known address, so the others' ca.url
        # can name it before it exists.
        self.start_dhclient(pub, requested=CA_ADDRESS)
        self.wait_for("pub's lease", lambda n: bool(n.ip), [pub])
        self.start_ca(pub)
        for node in self.nodes[1:]:
            self.start_dhclient(node)
        self.wait_for("every node's lease and name", lambda n: "name" in n.steps)
        self.wait_for("every node's certificate", lambda n: "cert" in n.steps,
                      self.nodes[1:], timeout=180)

    def show_traffic(self, iperf_seconds: float = 3) -> dict[str, Any]:
        """Ping by name and iperf3 across the sites; print the results and the links."""
        results: dict[str, Any] = {"ping": {}, "iperf3": None}
        a, b = self.nodes[1], self.nodes[3]
        print()
        print("Across sites and NATs, by name:")
        pairs = ((a, b), (b, a), (a, self.nodes[0]), (self.nodes[2], self.nodes[4]))
        for src, dst in pairs:
            # The first packets of a pair wait for lease lookups and an
            # on-demand link; give each path up to PATH_SETTLE_S to open.
            deadline = time.monotonic() + PATH_SETTLE_S
            while time.monotonic() < deadline and self.lab.ns_run(
                    src.ns, "ping", "-c", "1", "-W", "1", f"{dst.name}.wow",
                    check=False, timeout=10).returncode != 0:
                time.sleep(0.5)
        for src, dst in pairs:
            out = self.lab.ns_run(src.ns, "ping", "-c", "3", "-i", "0.2", "-W", "3",
                                  f"{dst.name}.wow", check=False, timeout=30)
            text = out.stdout.decode()
            summary = [ln for ln in text.splitlines() if "rtt" in ln or "packets" in ln]
            ok = out.returncode == 0
            results["ping"][f"{src.name}->{dst.name}"] = ok
            print(f"  ping {src.name} → {dst.name}.wow: "
                  + ("; ".join(s.strip() for s in summary) if summary else "failed"))
        server = self.lab.spawn(b.ns, ["iperf3", "-s", "-1", "-B", b.ip], "iperf3-server")
        time.sleep(0.5)
        try:
            out = self.lab.ns_run(a.ns, "iperf3", "-c", f"{b.name}.wow", "-t",
                                  f"{iperf_seconds:g}", "--connect-timeout", "5000", "-J",
                                  check=False, timeout=60)
        except subprocess.TimeoutExpired:
            out = subprocess.CompletedProcess([], 1, b"", b"")
        self.lab.stop(server)
        try:
            report = json.loads(out.stdout)
            mbps = report["end"]["sum_received"]["bits_per_second"] / 1e6
            results["iperf3"] = mbps
            print(f"  iperf3 {a.name} → {b.name}.wow: {mbps:.0f} Mbit/s over "
                  f"{iperf_seconds:g} s (TCP)")
        except (ValueError, KeyError):
            print(f"  iperf3 {a.name} → {b.name}.wow: failed")
        print()
        print("Links each node holds (direct UDP paths; other peers are reached through them):")
        for node in self.nodes:
            try:
                peers = node.ctl("peers")
            except ControlError as e:
                print(f"  {node.name}: {e}")
                continue
            names = {self._address_of(n): n.name for n in self.nodes}
            parts = []
            for p in peers:
                who = names.get(p["address"], p["address"][:10] + "…")
                path = p.get("path", "direct")
                via = f" via {names.get(p.get('via', ''), p.get('via', ''))}" \
                    if path == "relayed" else ""
                secured = f", DTLS {p['cipher']}" if p.get("secured") else ""
                parts.append(f"{who} ({p['kind']}, {path}{via}{secured})")
            print(f"  {node.name:>4}: " + ", ".join(parts))
        print()
        self.show_nat_and_overlay_ping(results)
        return results

    def show_nat_and_overlay_ping(self, results: dict[str, Any]) -> None:
        """What C{wow netcheck} and C{wow ping} say on each node."""
        from wow.cli.overlay import _describe_reply

        print("What each node learnt about its NAT from its peers (wow netcheck):")
        results["netcheck"] = {}
        for node in self.nodes:
            try:
                r = node.ctl("netcheck")
            except ControlError as e:
                print(f"  {node.name:>4}: {e}")
                continue
            results["netcheck"][node.name] = r["mapping"]
            seen = ", ".join(r["reflexive_endpoints"]) or "not yet"
            print(f"  {node.name:>4}: seen as {seen}; mapping {r['mapping']}; "
                  f"reachable directly: {r['reachable_directly']}")
        a, b = self.nodes[1], self.nodes[3]
        print(f"Overlay ping {a.name} → {b.name} (wow ping {b.name}):")
        try:
            r = a.ctl("ping", {"target": b.name, "timeout": 3})
            print("  " + (_describe_reply(r) if r.get("reply") else f"no reply: {r['reason']}"))
            results["overlay_ping"] = r
        except ControlError as e:
            print(f"  {e}")
        print()

    def _address_of(self, node: DemoNode) -> str:
        try:
            return str(node.ctl("status")["overlay"]["address"])
        except (ControlError, KeyError):
            return ""

    def how_to_enter(self) -> None:
        print("The demo keeps running. Enter a node with:")
        for node in self.nodes:
            print(f"  wow demo shell {node.name:<4}  # {node.where()}, {node.ip}")
        print("Stop it and remove everything with:  wow demo down")

    def save(self) -> None:
        os.makedirs(os.path.dirname(STATE_FILE), exist_ok=True)
        state = self.lab.to_state()
        state["nodes"] = {n.name: {"ns": n.ns, "ip": n.ip} for n in self.nodes}
        with open(STATE_FILE, "w") as f:
            json.dump(state, f)


def load_state() -> dict[str, Any] | None:
    try:
        with open(STATE_FILE) as f:
            return json.load(f)  # type: ignore[no-any-return]
    except FileNotFoundError:
        return None
