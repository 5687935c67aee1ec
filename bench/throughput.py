#!/usr/bin/env python3
"""
Throughput, round trip and CPU of WOW's data path against the peer VPNs, in
one run, on the topology of C{shared/anchors/run_anchors.sh}: two network
namespaces joined by a veth pair (underlay 10.99.0.1 <-> 10.99.0.2), one
tunnel end in each, inner MTU 1400.

For each path: C{iperf3} one TCP stream A->B (median of C{--reps} runs of
C{--time} s, receiver-side bitrate), C{ping -c 20 -i 0.05} average RTT after
a warm-up, and the CPU (utime+stime from C{/proc/PID/stat}) of the tunnel
processes during the iperf3 runs, in % of one core (send side + receive side).

Paths:
  raw           the veth itself (kernel, GSO/GRO on)
  wow           the full node: C{twistd wow-node} in each namespace (DHT leases,
                each bootstrapping the other, C{[tap] offload = true}), the host's
                own dhclient on each TAP; also reports C{join_s}
  wow_plain     the same with C{[tap] offload = false} (one packet per call)
  wow_secured   the C{wow} path with C{[security] enabled = true}: certificates
                from a test CA for each host's leased IP and overlay address,
                every packet through a DTLS 1.2 session (16 KB records)
  wow_datapath  WOW's data path alone: L{wow.datapath.forwarder} (offloading TAP,
                pieces, UDP GSO/GRO) between the two namespaces -- no overlay, no
                routing, no security; B{not} the full node
  nebula, tinc, openvpn   the peers, if installed (C{--install} fetches them from Debian)

C{join_s} (path C{wow}): a WOW runs (node a, whose host holds a DHT lease,
and an overlay-only node c beside it, since DHT leases need two nodes); node b
joins it: from starting b's C{twistd wow-node} to the first ping reply from a's
host to b's host over the overlay (b starts and links, its host's dhclient
gets a DHT lease, the lease lookup runs); C{bound_s}: until b's host bound.

Usage: C{flock /tmp/wow-bench.lock .venv/bin/python bench/throughput.py --json}
(C{--nic-like}: the veth segments UDP GSO sends in software, as a real NIC would.)
Only addresses inside the two namespaces created here are used; every process
started is killed by PID and the namespaces are deleted, even on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)  # tests/pki.py: the wow_secured path's certificates
UNDER_A, UNDER_B = "10.99.0.1", "10.99.0.2"
INNER_MTU = 1400
PEER_PACKAGES = ("nebula", "tinc", "openvpn", "iperf3", "openssl", "iputils-ping", "ethtool")
HZ = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Tunnel:
    """A running path: where to send to, and whose CPU to count on each side."""

    dst: str
    side_a: list[subprocess.Popen[bytes]] = field(default_factory=list)
    side_b: list[subprocess.Popen[bytes]] = field(default_factory=list)
    label: str = ""
    #: Figures measured while starting (the wow path's join_s).
    extra: dict[str, Any] = field(default_factory=dict)


class Topology:
    """Two namespaces and a veth pair, plus bookkeeping of what was started."""

    def __init__(self, workdir: str, nic_like: bool = False) -> None:
        tag = secrets.token_hex(2)
        self.na, self.nb = f"pb{tag}a", f"pb{tag}b"
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        for ns in (self.na, self.nb):
            self.run(None, "ip", "netns", "add", ns)
            self.run(ns, "ip", "link", "set", "lo", "up")
        self.run(None, "ip", "link", "add", f"pb{tag}va", "netns", self.na, "type", "veth",
                 "peer", "name", f"pb{tag}vb", "netns", self.nb)
        self.run(self.na, "ip", "addr", "add", UNDER_A + "/24", "dev", f"pb{tag}va")
        self.run(self.nb, "ip", "addr", "add", UNDER_B + "/24", "dev", f"pb{tag}vb")
        self.run(self.na, "ip", "link", "set", f"pb{tag}va", "up")
        self.run(self.nb, "ip", "link", "set", f"pb{tag}vb", "up")
        if nic_like:
            # veth flatters: it passes UDP GSO packets whole.  Like a real NIC, segment
            # them on the way out; coalesce them again with GRO on the way in.
            self.run(self.na, "ethtool", "-K", f"pb{tag}va", "tx-udp-segmentation", "off")
            self.run(self.nb, "ethtool", "-K", f"pb{tag}vb", "tx-udp-segmentation", "off")
            for ns, dev in ((self.na, f"pb{tag}va"), (self.nb, f"pb{tag}vb")):
                self.run(ns, "ethtool", "-K", dev, "gro", "on", "rx-udp-gro-forwarding", "on")

    @staticmethod
    def argv(ns: str | None, argv: tuple[str, ...] | list[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv] if ns else list(argv)

    def run(self, ns: str | None, *argv: str, check: bool = True, timeout: float = 120
            ) -> subprocess.CompletedProcess[bytes]:
        r = subprocess.run(self.argv(ns, argv), capture_output=True, timeout=timeout)
        if check and r.returncode:
            raise RuntimeError(f"{' '.join(argv)}: {r.stderr.decode(errors='replace').strip()}")
        return r

    def spawn(self, ns: str, argv: list[str], name: str) -> subprocess.Popen[bytes]:
        """Start a process inside C{ns}; C{ip netns exec} execs it, so the PID is the tunnel's."""
        out = open(os.path.join(self.workdir, name + ".log"), "ab")
        env = dict(os.environ, PYTHONPATH=HERE, PYTHONUNBUFFERED="1")
        p = subprocess.Popen(self.argv(ns, argv), stdout=out, stderr=subprocess.STDOUT, env=env,
                             cwd=HERE, start_new_session=True)
        out.close()
        self.procs.append(p)
        return p

    def log_text(self, name: str) -> str:
        try:
            with open(os.path.join(self.workdir, name + ".log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self, procs: list[subprocess.Popen[bytes]]) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def teardown(self) -> None:
        self.stop(self.procs)
        for ns in (self.na, self.nb):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


# -- measuring ----------------------------------------------------------------


def ticks(procs: list[subprocess.Popen[bytes]]) -> int:
    total = 0
    for p in procs:
        try:
            with open(f"/proc/{p.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total


def host_busy(interval: float = 0.5) -> float:
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        return sum(v), v[3] + v[4]

    t0, i0 = sample()
    time.sleep(interval)
    t1, i1 = sample()
    return 100.0 * ((t1 - t0) - (i1 - i0)) / max(1, t1 - t0)


def wait_quiet(limit: float = 15.0) -> float:
    """Wait (bounded) for the host to be nearly idle, since others share it; last busy %."""
    deadline = time.monotonic() + limit
    busy = host_busy()
    while busy >= 10 and time.monotonic() < deadline:
        busy = host_busy()
    return busy


def wait_ping(topo: Topology, dst: str, limit: float = 30) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if topo.run(topo.na, "ping", "-c1", "-W1", "-q", dst, check=False).returncode == 0:
            return True
        time.sleep(0.3)
    return False


def measure(topo: Topology, t: Tunnel, reps: int, seconds: int) -> dict[str, Any]:
    if not wait_ping(topo, t.dst):
        return {"error": f"no connectivity to {t.dst}"}
    topo.run(topo.na, "ping", "-c", "5", "-i", "0.1", "-q", t.dst, check=False)
    ping_busy = round(wait_quiet(), 1)
    out = topo.run(topo.na, "ping", "-c", "20", "-i", "0.05", "-q", t.dst, check=False)
    rtt = None
    for line in out.stdout.decode().splitlines():
        if line.startswith("rtt") or line.startswith("round-trip"):
            rtt = float(line.split("=")[1].split("/")[1])
    runs: list[float] = []
    ta = tb = 0
    elapsed = 0.0
    busy: list[float] = []
    errors: list[str] = []
    for r in range(reps):
        for _attempt in (1, 2):
            busy.append(round(wait_quiet(), 1))
            srv = topo.spawn(topo.nb, ["iperf3", "-s", "-1", "-B", t.dst], f"iperf-s-{r}")
            for _ in range(50):
                if b"LISTEN" in topo.run(topo.nb, "ss", "-ltn", "sport = :5201",
                                         check=False).stdout:
                    break
                time.sleep(0.1)
            a0, b0, w0 = ticks(t.side_a), ticks(t.side_b), time.monotonic()
            res = topo.run(topo.na, "timeout", str(seconds + 25), "iperf3", "-c", t.dst, "-t",
                           str(seconds), "-J", check=False)
            a1, b1, w1 = ticks(t.side_a), ticks(t.side_b), time.monotonic()
            topo.stop([srv])
            try:
                mbps = json.loads(res.stdout)["end"]["sum_received"]["bits_per_second"] / 1e6
            except (ValueError, KeyError, TypeError):
                errors.append(f"run {r + 1}: {res.stdout.decode(errors='replace')[-200:]}")
                continue
            runs.append(mbps)
            ta, tb, elapsed = ta + a1 - a0, tb + b1 - b0, elapsed + w1 - w0
            break
    if not runs:
        return {"error": "; ".join(errors) or "no iperf3 result", "rtt_ms": rtt}
    cpu_a = 100.0 * ta / HZ / elapsed if t.side_a else None
    cpu_b = 100.0 * tb / HZ / elapsed if t.side_b else None
    result: dict[str, Any] = {
        "mbps": round(statistics.median(runs)),
        "mbps_runs": [round(x) for x in runs],
        "rtt_ms": rtt,
        "cpu_pct": round((cpu_a or 0) + (cpu_b or 0)) if t.side_a or t.side_b else None,
        "cpu_pct_send": None if cpu_a is None else round(cpu_a),
        "cpu_pct_recv": None if cpu_b is None else round(cpu_b),
        "host_busy_before_pct": busy,
        "host_busy_before_ping_pct": ping_busy,
    }
    if t.label:
        result["label"] = t.label
    result.update(t.extra)
    if errors:
        result["errors"] = errors
    return result


# -- paths ----------------------------------------------------------------------


def python_for_wow() -> str:
    venv = os.path.join(HERE, ".venv", "bin", "python")
    return venv if os.path.exists(venv) else sys.executable


def path_raw(topo: Topology) -> Tunnel:
    return Tunnel(UNDER_B, label="raw veth (kernel, GSO/GRO on, MTU 1500)")


def _forwarders(topo: Topology, name: str, net: str, *extra: str) -> tuple[
        subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    py = python_for_wow()

    def start(ns: str, side: str, local: str, peer: str) -> subprocess.Popen[bytes]:
        return topo.spawn(ns, [py, "-m", "wow.datapath.forwarder", "--tap", "wdp" + side,
                               "--local", local + ":5555", "--peer", peer + ":5555",
                               "--address", f"{net}.{1 if side == 'a' else 2}/24",
                               "--mtu", str(INNER_MTU), *extra], f"{name}-{side}")

    return start(topo.na, "a", UNDER_A, UNDER_B), start(topo.nb, "b", UNDER_B, UNDER_A)


def path_wow_datapath(topo: Topology) -> Tunnel:
    a, b = _forwarders(topo, "wow_datapath", "10.100.9")
    return Tunnel("10.100.9.2", [a], [b],
                  "WOW data path alone (offload TAP + pieces + UDP GSO/GRO, Twisted; "
                  "no overlay/security) -- not the full node")


def path_wow_datapath_plain(topo: Topology) -> Tunnel:
    a, b = _forwarders(topo, "wow_datapath_plain", "10.100.10", "--no-offload")
    return Tunnel("10.100.10.2", [a], [b],
                  "the same forwarder one packet per call (plain TAP, no GSO/GRO)")


WOW_PORT = 4789
WOW_CONFIG = """
[dhcp]
mode = "dht"
lease_time = 600
[overlay]
keepalive = 1.0
dead_after = 6.0
stabilize = 2.0
[security]
enabled = {security}
[tap]
{tap}
"""


def _bound(events: str) -> str | None:
    try:
        with open(events) as f:
            for ln in f:
                parts = ln.split()
                if parts[:1] in (["BOUND"], ["REBOOT"]) and len(parts) > 1:
                    return parts[1]
    except FileNotFoundError:
        pass
    return None


def _install_certificate(state: str, ip: str) -> None:
    """
    A certificate for C{ip} and the node's overlay address, from the test CA
    (tests/pki.py), installed as C{wow enroll} would (the node loads it within 5 s).
    """
    from cryptography.hazmat.primitives import serialization

    from tests.pki import node_cert, pki
    from wow.control.client import call

    address = str(call(os.path.join(state, "control.sock"), "status")["overlay"]["address"])
    ident = node_cert(pki().ca, ip, bytes.fromhex(address.removeprefix("wow:")))
    pem = serialization.Encoding.PEM
    files = {"host.key": ident.key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()),
             "host.pem": ident.cert.public_bytes(pem),
             "ca.pem": pki().ca.cert.public_bytes(pem)}
    for fname, data in files.items():
        with open(os.path.join(state, fname), "wb") as f:
            f.write(data)


def _wow_nodes(topo: Topology, name: str, offload: bool, secured: bool = False) -> Tunnel:
    from wow.demo.clients import dhclient_argv

    py = python_for_wow()
    base = os.path.join(topo.workdir, name)
    os.makedirs(base)
    configs = {}
    for kind, tap in (("node", f"offload = {'true' if offload else 'false'}"),
                      ("relay", "enabled = false")):
        configs[kind] = os.path.join(base, f"{kind}.toml")
        with open(configs[kind], "w") as f:
            f.write(WOW_CONFIG.format(tap=tap, security="true" if secured else "false"))
    # a and c (an overlay-only node next to a) form the WOW; b joins it.
    sides = {"a": (topo.na, WOW_PORT, UNDER_A, WOW_PORT + 1),
             "c": (topo.na, WOW_PORT + 1, UNDER_A, WOW_PORT),
             "b": (topo.nb, WOW_PORT, UNDER_A, WOW_PORT)}
    nodes: dict[str, subprocess.Popen[bytes]] = {}

    def start(side: str) -> None:
        ns, port, peer, peer_port = sides[side]
        d = os.path.join(base, side)
        os.makedirs(d)
        tap = f"{name[:8]}{side}"
        nodes[side] = topo.spawn(ns, [
            py, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile",
            os.path.join(d, "twistd.pid"), "wow-node", "--config",
            configs["relay" if side == "c" else "node"], "--state-dir",
            os.path.join(d, "state"), "--tap", tap, "--listen", str(port),
            "--bootstrap", f"udp://{peer}:{peer_port}"], f"{name}-{side}")
        deadline = time.monotonic() + 30
        ready = "overlay ready" if side == "c" else "wow-node ready"
        while ready not in topo.log_text(f"{name}-{side}"):
            if time.monotonic() > deadline or nodes[side].poll() is not None:
                raise RuntimeError(f"{name}-{side}: the node did not start")
            time.sleep(0.02)
        if side != "c":
            # The host's own DHCP client, as soon as the TAP exists.
            topo.spawn(ns, dhclient_argv(tap, d, timeout=60), f"{name}-dhclient-{side}")

    def bound(side: str, limit: float) -> str | None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            ip = _bound(os.path.join(base, side, "dhclient-events.log"))
            if ip:
                return ip
            time.sleep(0.02)
        return None

    # The WOW exists: node a (its host bound) and c.  Then node b joins it (t0).
    start("c")
    start("a")
    ip_a = bound("a", 45)
    if ip_a is None:
        raise RuntimeError(f"{name}: the first host did not get a virtual IP")
    t0 = time.monotonic()
    start("b")
    ip_b = bound("b", 45)
    if ip_b is None:
        raise RuntimeError(f"{name}: the joining host did not get a virtual IP")
    bound_s = time.monotonic() - t0
    if secured:
        for side, ip in (("a", ip_a), ("b", ip_b)):
            _install_certificate(os.path.join(base, side, "state"), ip)
    joined = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = topo.run(topo.nb, "ping", "-c1", "-W1", "-q", ip_a, check=False)
        if r.returncode == 0:
            joined = time.monotonic() - t0
            break
    if joined is None:
        raise RuntimeError(f"{name}: no ping reply from the other node")
    ips = {"a": ip_a, "b": ip_b}
    label = ("WOW node end to end: twistd wow-node x2, DHT leases, dhclient, "
             + ("offload TAP + UDP GSO/GRO" if offload else "plain TAP, one packet per call")
             + ("; DTLS 1.2 end to end (join_s includes loading the certificates)"
                if secured else ""))
    return Tunnel(ips["b"], [nodes["a"]], [nodes["b"]], label,
                  extra={"join_s": round(joined, 2), "bound_s": round(bound_s, 2)})


def path_wow(topo: Topology) -> Tunnel:
    return _wow_nodes(topo, "wow", True)


def path_wow_secured(topo: Topology) -> Tunnel:
    return _wow_nodes(topo, "wowsec", True, secured=True)


def path_wow_plain(topo: Topology) -> Tunnel:
    return _wow_nodes(topo, "wowplain", False)


def path_nebula(topo: Topology) -> Tunnel:
    d = os.path.join(topo.workdir, "nebula")
    os.makedirs(d)
    subprocess.run(["nebula-cert", "ca", "-name", "bench", "-duration", "24h"], cwd=d,
                   check=True, capture_output=True)
    for n, ip in (("a", "10.100.5.1/24"), ("b", "10.100.5.2/24")):
        subprocess.run(["nebula-cert", "sign", "-name", n, "-ip", ip, "-out-crt", f"{n}.crt",
                        "-out-key", f"{n}.key"], cwd=d, check=True, capture_output=True)
    for n, ip in (("a", UNDER_A), ("b", UNDER_B)):
        lh = ("am_lighthouse: true" if n == "a"
              else 'am_lighthouse: false\n  hosts: ["10.100.5.1"]')
        with open(os.path.join(d, f"{n}.yml"), "w") as f:
            f.write(f"""pki: {{ca: {d}/ca.crt, cert: {d}/{n}.crt, key: {d}/{n}.key}}
static_host_map:
  "10.100.5.1": ["{UNDER_A}:4242"]
  "10.100.5.2": ["{UNDER_B}:4242"]
lighthouse:
  {lh}
  interval: 60
listen: {{host: {ip}, port: 4242}}
punchy: {{punch: false}}
cipher: aes
tun: {{disabled: false, dev: neb{n}, mtu: {INNER_MTU}}}
logging: {{level: info, format: text}}
firewall:
  outbound: [{{port: any, proto: any, host: any}}]
  inbound: [{{port: any, proto: any, host: any}}]
""")
    a = topo.spawn(topo.na, ["nebula", "-config", f"{d}/a.yml"], "nebula-a")
    time.sleep(0.3)
    b = topo.spawn(topo.nb, ["nebula", "-config", f"{d}/b.yml"], "nebula-b")
    return Tunnel("10.100.5.2", [a], [b], "nebula (L3 tun, UDP, Noise + AES-256-GCM)")


def path_tinc(topo: Topology) -> Tunnel:
    base = os.path.join(topo.workdir, "tinc")
    for n, ip, tip in (("a", UNDER_A, "10.100.3.1"), ("b", UNDER_B, "10.100.3.2")):
        d = os.path.join(base, n)
        os.makedirs(os.path.join(d, "hosts"))
        conf = (f"Name = {n}\nMode = switch\nInterface = tinc{n}\nAddressFamily = ipv4\n"
                f"BindToAddress = {ip}\nDevice = /dev/net/tun\n")
        if n == "b":
            conf += "ConnectTo = a\n"
        with open(os.path.join(d, "tinc.conf"), "w") as f:
            f.write(conf)
        with open(os.path.join(d, "hosts", n), "w") as f:
            f.write(f"Address = {ip}\nPort = 655\nCipher = aes-256-cbc\nDigest = sha256\n")
        up = os.path.join(d, "tinc-up")
        with open(up, "w") as f:
            f.write(f"#!/bin/sh\nip link set $INTERFACE mtu {INNER_MTU} up\n"
                    f"ip addr add {tip}/24 dev $INTERFACE\n")
        os.chmod(up, 0o755)
        subprocess.run(["tincd", "-c", d, "-K2048"], stdin=subprocess.DEVNULL,
                       capture_output=True, check=True)
    shutil.copy(os.path.join(base, "a", "hosts", "a"), os.path.join(base, "b", "hosts", "a"))
    shutil.copy(os.path.join(base, "b", "hosts", "b"), os.path.join(base, "a", "hosts", "b"))
    a = topo.spawn(topo.na, ["tincd", "-c", f"{base}/a", "-D", "-d1",
                             f"--pidfile={base}/a/pid"], "tinc-a")
    time.sleep(0.3)
    b = topo.spawn(topo.nb, ["tincd", "-c", f"{base}/b", "-D", "-d1",
                             f"--pidfile={base}/b/pid"], "tinc-b")
    return Tunnel("10.100.3.2", [a], [b], "tinc 1.0 switch mode, UDP, aes-256-cbc+HMAC-SHA256")


def path_openvpn(topo: Topology) -> Tunnel:
    d = os.path.join(topo.workdir, "openvpn")
    os.makedirs(d)
    fp = {}
    for n in ("a", "b"):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "30", "-keyout",
                        f"{d}/{n}.key", "-out", f"{d}/{n}.crt", "-subj", f"/CN=ovpn-{n}"],
                       check=True, capture_output=True)
        out = subprocess.run(["openssl", "x509", "-in", f"{d}/{n}.crt", "-noout", "-fingerprint",
                              "-sha256"], check=True, capture_output=True, text=True).stdout
        fp[n] = out.strip().split("=", 1)[1]
    common = ["--dev-type", "tap", "--proto", "udp", "--port", "1194", "--tun-mtu",
              str(INNER_MTU), "--cipher", "AES-256-GCM", "--data-ciphers", "AES-256-GCM",
              "--disable-dco", "--verb", "3"]
    a = topo.spawn(topo.na, ["openvpn", "--dev", "ovpna", *common, "--local", UNDER_A,
                             "--remote", UNDER_B, "--ifconfig", "10.100.2.1", "255.255.255.0",
                             "--tls-server", "--dh", "none", "--cert", f"{d}/a.crt", "--key",
                             f"{d}/a.key", "--peer-fingerprint", fp["b"]], "openvpn-a")
    b = topo.spawn(topo.nb, ["openvpn", "--dev", "ovpnb", *common, "--local", UNDER_B,
                             "--remote", UNDER_A, "--ifconfig", "10.100.2.2", "255.255.255.0",
                             "--tls-client", "--cert", f"{d}/b.crt", "--key", f"{d}/b.key",
                             "--peer-fingerprint", fp["a"]], "openvpn-b")
    return Tunnel("10.100.2.2", [a], [b], "OpenVPN TAP/UDP, TLS p2p, AES-256-GCM")


#: name -> (binary that must be installed, or None; starter)
PATHS: dict[str, tuple[str | None, Callable[[Topology], Tunnel]]] = {
    "raw": (None, path_raw),
    "wow": ("dhclient", path_wow),
    "wow_plain": ("dhclient", path_wow_plain),
    "wow_secured": ("dhclient", path_wow_secured),
    "wow_datapath": (None, path_wow_datapath),
    "wow_datapath_plain": (None, path_wow_datapath_plain),
    "nebula": ("nebula", path_nebula),
    "tinc": ("tincd", path_tinc),
    "openvpn": ("openvpn", path_openvpn),
}
DEFAULT_PATHS = ("raw", "wow_datapath", "wow", "wow_secured", "nebula", "tinc", "openvpn")
#: Paths that are WOW's, compared with every other (non-raw) path in "ratios".
WOW_PATHS = ("wow", "wow_plain", "wow_secured", "wow_datapath", "wow_datapath_plain")


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for mine in WOW_PATHS:
        m = results.get(mine)
        if not m or "mbps" not in m:
            continue
        for other, o in results.items():
            if other in WOW_PATHS or "mbps" not in o:
                continue
            r: dict[str, float] = {"mbps": round(m["mbps"] / o["mbps"], 2) if o["mbps"] else 0}
            if m.get("rtt_ms") and o.get("rtt_ms"):
                r["rtt_ms"] = round(m["rtt_ms"] / o["rtt_ms"], 2)
            out.setdefault(mine, {})[other] = r
    return out


def install_peers() -> None:
    missing = [p for p in PEER_PACKAGES
               if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode]
    if missing:
        log(f"installing {' '.join(missing)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["flock", "/tmp/wow-apt.lock", "apt-get", "install", "-y", "-qq",
                        "--no-install-recommends", *missing], env=env, capture_output=True)


def versions() -> dict[str, str]:
    def first(*argv: str) -> str:
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return "-"
        return (r.stdout or r.stderr).strip().splitlines()[0] if (r.stdout or r.stderr) else "-"

    return {"kernel": os.uname().release, "cpus": str(os.cpu_count()),
            "iperf3": first("iperf3", "--version"), "nebula": first("nebula", "-version"),
            "tinc": first("tincd", "--version"), "openvpn": first("openvpn", "--version")}


def main() -> int:
    ap = argparse.ArgumentParser(description="WOW data path vs peer VPNs, one run.")
    ap.add_argument("--json", action="store_true", help="print JSON (else a table)")
    ap.add_argument("--paths", default=",".join(DEFAULT_PATHS),
                    help=f"comma-separated, from: {', '.join(PATHS)}")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--time", type=int, default=8, help="seconds per iperf3 run")
    ap.add_argument("--no-install", action="store_true", help="do not apt-get the peers")
    ap.add_argument("--keep-logs", action="store_true")
    ap.add_argument("--nic-like", action="store_true",
                    help="make the veth segment UDP GSO sends in software, like a real NIC")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("throughput: must run as root (network namespaces).", file=sys.stderr)
        return 2
    if not args.no_install:
        install_peers()
    workdir = tempfile.mkdtemp(prefix="wow-bench-")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    results: dict[str, Any] = {}
    topo = Topology(workdir, nic_like=args.nic_like)
    try:
        for name in args.paths.split(","):
            binary, starter = PATHS[name]
            if binary and shutil.which(binary) is None:
                log(f"[{name}] not installed, skipped")
                continue
            log(f">>> [{name}]")
            started = len(topo.procs)
            try:
                tunnel = starter(topo)
                results[name] = measure(topo, tunnel, args.reps, args.time)
            except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                results[name] = {"error": str(e)}
            finally:
                topo.stop(topo.procs[started:])
                if name.startswith("wow_datapath"):
                    stats = [ln for side in "ab"
                             for ln in topo.log_text(f"{name}-{side}").splitlines()
                             if ln.startswith("stats ")]
                    if stats and "mbps" in results.get(name, {}):
                        results[name]["forwarder_stats"] = [json.loads(s[6:]) for s in stats]
            brief = {k: v for k, v in results[name].items() if k != "forwarder_stats"}
            log(f"    {json.dumps(brief)}")
            time.sleep(0.3)
    finally:
        topo.teardown()
        if not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"logs in {workdir}")
    results["ratios"] = ratios(results)
    results["meta"] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                       "reps": args.reps, "seconds": args.time, "inner_mtu": INNER_MTU,
                       "nic_like": args.nic_like,
                       "versions": versions()}
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"{'path':14} {'Mbps':>7} {'RTT ms':>7} {'CPU %':>6}")
        for name, r in results.items():
            if name in ("ratios", "meta"):
                continue
            cells = [str(r.get(k) if r.get(k) is not None else "-")
                     for k in ("mbps", "rtt_ms", "cpu_pct")]
            print(f"{name:14} {cells[0]:>7} {cells[1]:>7} {cells[2]:>6}  {r.get('error', '')}")
        print("ratios:", json.dumps(results["ratios"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
