#!/usr/bin/env python3
"""
wow-dns against dnsmasq at N names, with dnsperf as the load generator.

    sudo flock /tmp/wow-bench.lock .venv/bin/python bench/dns_bench.py --names 1000000 --json

Both servers load the same N names (WOW from a hosts-style names file,
dnsmasq from an ``addn-hosts`` file), listen on 127.0.0.1 and are pinned to
one core while dnsperf runs on the other.  For each server: the saturated
queries/s (median of --runs runs), p50/p99 latency at a fixed --rate
queries/s (median of the runs' p50 and p99: single p99s are noisy on a
shared machine), resident memory after the runs, and the time from start
until the last name resolves.  Then the original system's problem:
``getent hosts`` against a hosts file of 1,000 and of N lines (in a private
mount namespace, /etc/hosts bind-mounted).  Finally WOW's in-process time
per query (engine.answer) at 1,000 and at N names, which shows that a
lookup does not depend on the number of names.

Traffic goes only to 127.0.0.1.  Needs root (taskset is optional, unshare
and mount for the hosts-file part), dnsperf and dnsmasq (Debian packages
``dnsperf`` and ``dnsmasq-base``).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import os
import random
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
DOMAIN = "wow"


def subnet_for(n: int) -> ipaddress.IPv4Network:
    bits = max(16, math.ceil(math.log2(n + 2)))
    return ipaddress.IPv4Network(f"10.0.0.0/{32 - bits}")


def address(net: ipaddress.IPv4Network, i: int) -> str:
    return str(net.network_address + 1 + i)


def write_files(work: str, n: int) -> dict[str, str]:
    net = subnet_for(n)
    paths = {k: os.path.join(work, k) for k in ("wow.hosts", "dnsmasq.hosts", "etc.hosts")}
    with open(paths["wow.hosts"], "w") as wow, open(paths["dnsmasq.hosts"], "w") as dm:
        for i in range(n):
            ip = address(net, i)
            wow.write(f"{ip} h{i}\n")
            dm.write(f"{ip} h{i}.{DOMAIN}\n")
    return paths


def free_port() -> int:
    while True:
        port = random.randint(20000, 60000)
        ok = True
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            s = socket.socket(socket.AF_INET, kind)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                ok = False
            finally:
                s.close()
        if ok:
            return port


def dns_query(name: str) -> bytes:
    labels = b"".join(bytes((len(p),)) + p.encode() for p in name.split("."))
    return struct.pack(">HHHHHH", random.randint(0, 0xFFFF), 0x0100, 1, 0, 0, 0) + labels + \
        b"\x00\x00\x01\x00\x01"


def answers(port: int, name: str) -> bool:
    """Whether the server on 127.0.0.1:port answers NOERROR with a record for name."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.3)
    try:
        s.sendto(dns_query(name), ("127.0.0.1", port))
        data = s.recv(4096)
        return len(data) >= 12 and data[3] & 0xF == 0 and data[6:8] != b"\x00\x00"
    except OSError:
        return False
    finally:
        s.close()


def pin(core: int) -> list[str]:
    if shutil.which("taskset") and os.cpu_count() and os.cpu_count() > 1:  # type: ignore[operator]
        return ["taskset", "-c", str(core)]
    return []


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def start_and_wait(argv: list[str], port: int, last_name: str, log: str, timeout: float
                   ) -> tuple[subprocess.Popen[bytes], float]:
    started = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=HERE,
                                start_new_session=True)
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"{argv[0]} exited early; see {log}")
        if answers(port, last_name):
            return proc, time.monotonic() - started
        time.sleep(0.05)
    stop(proc)
    raise SystemExit(f"{' '.join(argv[:3])}... did not answer within {timeout} s; see {log}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def dnsperf(port: int, qfile: str, duration: float, rate: int | None) -> dict[str, float]:
    argv = [*pin(0), "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", qfile,
            "-l", str(duration), "-c", "1", "-T", "1"]
    if rate:
        argv += ["-Q", str(rate), "-v"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60).stdout
    m = re.search(r"Queries per second:\s+([\d.]+)", out)
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    result = {"qps": float(m.group(1)) if m else 0.0, "lost": float(lost.group(1)) if lost else 0}
    if rate:
        lat = sorted(float(x) * 1000 for x in re.findall(r"^> \S+ \S+ \S+ ([\d.]+)$", out, re.M))
        if lat:
            result["p50_ms"] = lat[len(lat) // 2]
            result["p99_ms"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    return result


#: name → (argv, port, number of names, query file)
Servers = dict[str, tuple[list[str], int, int, str]]


def measure_servers(servers: Servers, args: Any, work: str) -> dict[str, dict[str, Any]]:
    """
    Start every server, then alternate their dnsperf runs (A, B, A, B, ...)
    so that a change in the machine's background load hits both alike.
    """
    procs: dict[str, subprocess.Popen[bytes]] = {}
    loads: dict[str, float] = {}
    try:
        for name, (argv, port, n, _) in servers.items():
            print(f"[{name}] starting with {n} names ...", file=sys.stderr, flush=True)
            procs[name], loads[name] = start_and_wait(
                argv, port, f"h{n - 1}.{DOMAIN}", os.path.join(work, name + ".log"),
                args.load_timeout)
            print(f"[{name}] answering after {loads[name]:.1f} s", file=sys.stderr, flush=True)
        sat: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
        fixed: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
        for _ in range(args.runs):
            for name, (_, port, _, qfile) in servers.items():
                sat[name].append(dnsperf(port, qfile, args.duration, None))
        for _ in range(args.runs):
            for name, (_, port, _, qfile) in servers.items():
                fixed[name].append(dnsperf(port, qfile, args.duration, args.rate))
        results = {}
        for name in servers:
            results[name] = {
                "qps": round(statistics.median(r["qps"] for r in sat[name])),
                "qps_runs": [round(r["qps"]) for r in sat[name]],
                "p50_ms": round(statistics.median(r.get("p50_ms", math.nan)
                                                  for r in fixed[name]), 3),
                "p99_ms": round(statistics.median(r.get("p99_ms", math.nan)
                                                  for r in fixed[name]), 3),
                "p99_runs_ms": [round(r.get("p99_ms", math.nan), 3) for r in fixed[name]],
                "rss_mb": round(rss_mb(procs[name].pid), 1),
                "load_s": round(loads[name], 2),
                "lost": sum(r["lost"] for r in sat[name] + fixed[name]),
            }
            print(f"[{name}] {results[name]}", file=sys.stderr, flush=True)
        return results
    finally:
        for proc in procs.values():
            stop(proc)


GETENT_SCRIPT = r"""
import subprocess, sys, time, statistics
hosts, name, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
subprocess.run(["mount", "--bind", hosts, "/etc/hosts"], check=True)
times = []
for _ in range(runs):
    t = time.perf_counter()
    r = subprocess.run(["getent", "hosts", name], capture_output=True)
    times.append(time.perf_counter() - t)
    assert r.returncode == 0, r
print(statistics.median(times) * 1000)
"""


def getent_ms(hosts_lines: list[str] | str, name: str, work: str, runs: int) -> float:
    path = os.path.join(work, "etc.hosts")
    if isinstance(hosts_lines, list):
        with open(path, "w") as f:
            f.write("127.0.0.1 localhost\n")
            f.writelines(hosts_lines)
    else:
        path = hosts_lines
    out = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c",
                          GETENT_SCRIPT, path, name, str(runs)],
                         capture_output=True, text=True, timeout=600, check=True)
    return round(float(out.stdout.strip()), 2)


def in_process_us(n: int, samples: int = 200_000) -> float:
    """engine.answer time per query (fast path) with n names loaded."""
    import gc

    from twisted.internet.task import Clock

    from wow.dns.authority import ZoneAuthority
    from wow.dns.engine import DnsEngine, Sources
    from wow.dns.names import to_wire
    from wow.dns.store import CompactStore
    from wow.metrics import Counters

    net = subnet_for(n)
    store = CompactStore(to_wire(DOMAIN), net)
    store.load_hosts(f"{address(net, i)} h{i}".encode() for i in range(n))
    clock = Clock()
    engine = DnsEngine(ZoneAuthority(DOMAIN, net, store, clock), clock, Counters(),
                       Sources(["127.0.0.0/8"]))
    rng = random.Random(7)
    queries = [dns_query(f"h{rng.randrange(n)}.{DOMAIN}") for _ in range(10_000)]
    answer = engine.answer
    best = float("inf")
    rounds = 5
    for _ in range(rounds):
        t = time.perf_counter()
        for i in range(samples):
            answer(queries[i % 10_000], "127.0.0.1")
        best = min(best, (time.perf_counter() - t) / samples)
    assert engine.fast_answers == rounds * samples
    del store, engine
    gc.unfreeze()
    gc.collect()
    return round(best * 1e6, 2)


def wow_server(work: str, names_file: str, n: int) -> tuple[list[str], int, int, str]:
    """Config and query file for one wow-dns with the n names of names_file."""
    rng = random.Random(1)
    qfile = os.path.join(work, "queries.txt")
    with open(qfile, "w") as f:
        f.writelines(f"h{rng.randrange(n)}.{DOMAIN} A\n" for _ in range(100_000))
    port = free_port()
    conf = os.path.join(work, "wow-dns.toml")
    with open(conf, "w") as f:
        f.write(f'[dns]\nlisten = "127.0.0.1"\nport = {port}\ndomain = "{DOMAIN}"\n'
                f'subnet = "{subnet_for(n)}"\nnames_file = "{names_file}"\n'
                'allowed_sources = ["127.0.0.0/8"]\n')
    return [*pin(1), *TWISTD, "-n", "--pidfile=", "wow-dns", "--config", conf], port, n, qfile


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", type=int, default=1_000_000)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per dnsperf run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=int, default=2000, help="q/s for the latency runs")
    parser.add_argument("--load-timeout", type=float, default=600)
    parser.add_argument("--skip-dnsmasq", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    for tool in ("dnsperf", "dnsmasq", "getent", "unshare"):
        if shutil.which(tool) is None:
            raise SystemExit(f"dns_bench: needs {tool} (Debian: dnsperf, dnsmasq-base)")
    n = args.names
    work = tempfile.mkdtemp(prefix="wow-dns-bench-")
    try:
        paths = write_files(work, n)
        servers: Servers = {
            "wow": wow_server(work, paths["wow.hosts"], n),
        }
        if not args.skip_dnsmasq:
            dm_port = free_port()
            servers["dnsmasq"] = (
                [*pin(1), "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
                 "--no-resolv", "--no-hosts", f"--addn-hosts={paths['dnsmasq.hosts']}",
                 "--listen-address=127.0.0.1", "--bind-interfaces", f"--port={dm_port}",
                 f"--local=/{DOMAIN}/", "--pid-file=", "--user=root", "--group=root",
                 "--log-facility=-"],
                dm_port, n, servers["wow"][3])
        if n != 1000:
            # The same server with 1,000 names, measured in the same rounds.
            small = os.path.join(work, "small")
            os.makedirs(small)
            servers["wow_1k"] = wow_server(small, write_files(small, 1000)["wow.hosts"], 1000)
        results: dict[str, Any] = {"names": n, "date": time.strftime("%Y-%m-%d"),
                                   "duration_s": args.duration, "runs": args.runs,
                                   "rate": args.rate}
        results.update(measure_servers(servers, args, work))
        if "wow_1k" in results:
            small_result = results.pop("wow_1k")
            results["wow"]["qps_1k"] = small_result["qps"]
            results["wow"]["p50_ms_1k"] = small_result["p50_ms"]
        print("[hosts file] getent hosts ...", file=sys.stderr, flush=True)
        hosts_1k = [f"{address(subnet_for(1000), i)} h{i}.{DOMAIN}\n" for i in range(1000)]
        big = os.path.join(work, "big.hosts")
        with open(big, "w") as f:
            f.write("127.0.0.1 localhost\n")
            with open(paths["dnsmasq.hosts"]) as src:
                shutil.copyfileobj(src, f)
        results["hosts_file"] = {
            "lookup_ms_1k": getent_ms(hosts_1k, f"h500.{DOMAIN}", work, 21),
            "lookup_ms_1m": getent_ms(big, f"h{n // 2}.{DOMAIN}", work, 5),
        }
        print("[in-process] engine.answer at 1,000 and N names ...", file=sys.stderr, flush=True)
        results["wow"]["lookup_us_1k"] = in_process_us(1000)
        results["wow"]["lookup_us_1m"] = in_process_us(n)
        if "dnsmasq" in results:
            w, d = results["wow"], results["dnsmasq"]
            results["ratios"] = {
                "qps_vs_dnsmasq": round(w["qps"] / d["qps"], 2) if d["qps"] else None,
                "p99_minus_dnsmasq_ms": round(w["p99_ms"] - d["p99_ms"], 3),
                "rss_vs_dnsmasq": round(w["rss_mb"] / d["rss_mb"], 2) if d["rss_mb"] else None,
            }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for key, value in results.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
