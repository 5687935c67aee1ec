#!/usr/bin/env python3
"""
Simulate N overlay nodes (the real OverlayNode and DHT code) in one process.

    python bench/overlay_sim.py --nodes 10000 [--churn 0.1] --seed 1 --json

Phases, all in virtual time: nodes join one after another through random
already-running nodes; we wait until every node's successor and predecessor
are right; we measure steady-state traffic; we store values in the DHT and
route random exact-mode probes; optionally a fraction of nodes leaves and as
many new ones join, after which we wait for the ring again, route probes
again and read back every value stored before the churn.

The signature scheme is the simulator's cheap stand-in (wow.overlay.identity
SimulatedCrypto) unless --real-crypto is given; the real ECDSA path is
covered by the unit and integration tests.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wow.overlay.node import OverlayParams  # noqa: E402
from wow.overlay.sim import SimNetwork  # noqa: E402


def wait_converged(net: SimNetwork, limit: float, step: float = 2.0) -> float | None:
    """Run until the ring is correct; the virtual seconds it took, or None."""
    start = net.now
    while net.now - start <= limit:
        if net.ring_errors() == 0:
            return net.now - start
        net.run_until(net.now + step)
    return None


def route_probes(net: SimNetwork, count: int, first_id: int) -> tuple[float, list[int]]:
    addresses = list(net.by_address)
    net.probes.clear()
    for i in range(count):
        src = net.random_node()
        dst = net.rng.choice(addresses)
        net.send_probe(src, dst, first_id + i)
    net.run_until(net.now + 20)
    hops = sorted(net.probes.values())
    return len(hops) / count, hops


NAT_KINDS = ("full-cone", "restricted-cone", "port-restricted", "symmetric", "double")


def punch_pairs(net: SimNetwork, natted: list[Any], count: int) -> dict[str, Any]:
    """Random pairs of NATed nodes ask for direct links: how many get one, how fast."""
    modes = {"direct": 0, "relayed": 0, "routed": 0}
    times = []
    for _ in range(count):
        (ka, a), (kb, b) = net.rng.sample(natted, 2)
        if b.me in a.table.links:
            continue
        a.request_link(b.me)
        net.poke(a)
        net.run_until(net.now + 6)
        if b.me in a.table.links:
            modes["direct"] += 1
            if b.me in a.direct_after:
                times.append(a.direct_after[b.me])
        else:
            modes["relayed" if b.me in a.relay_via else "routed"] += 1
    tried = sum(modes.values())
    return {"punch_pairs": tried,
            **{f"punch_{k}": round(v / max(1, tried), 3) for k, v in modes.items()},
            "punch_median_s": round(statistics.median(times), 3) if times else None}


def run(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.monotonic()
    lo, hi = (float(x) / 1000 for x in args.latency_ms.split(","))
    net = SimNetwork(seed=args.seed, latency=(lo, hi), loss=args.loss, params=OverlayParams(),
                     real_crypto=args.real_crypto)
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.verbose else (lambda *a: None)
    first = net.add_node([])
    endpoints = [net.endpoint(first)]
    natted: list[Any] = []

    def join_one() -> None:
        boot = [net.rng.choice(endpoints) for _ in range(2)]
        if args.nat and net.rng.random() < args.nat:
            # behind a router of a random kind (wow.nat.simnat); not a bootstrap
            kind = net.rng.choice(NAT_KINDS)
            if kind == "double":
                nat = net.add_nat("port-restricted", parent=net.add_nat("port-restricted"))
            else:
                nat = net.add_nat(kind)
            natted.append((kind, net.add_node(boot, nat=nat)))
            return
        endpoints.append(net.endpoint(net.add_node(boot)))

    interval = 1.0 / args.join_rate
    for _ in range(args.nodes - 1):
        net.run_until(net.now + interval)
        join_one()
    log(f"joined {args.nodes} at t={net.now:.0f} wall={time.monotonic() - t0:.0f}s")
    converge = wait_converged(net, args.converge_limit)
    converged = converge is not None
    log(f"converged={converged} after {converge} wall={time.monotonic() - t0:.0f}s")

    # Let shortcut lookups settle, then measure steady-state traffic.
    net.run_until(net.now + args.settle)
    m0, t_start = net.messages, net.now
    log(json.dumps(net.counters.snapshot().get("overlay_links_down")))
    net.run_until(net.now + args.steady)
    msgs_per_node_min = (net.messages - m0) / len(net.nodes) / ((net.now - t_start) / 60)
    links = [len(n.table.links) for n in net.by_address.values()]
    log(json.dumps(net.counters.snapshot().get("overlay_links_down")))
    log(f"steady measured wall={time.monotonic() - t0:.0f}s")

    # DHT values stored before any churn.
    stored: dict[bytes, bytes] = {}
    put_ok = []
    for i in range(args.keys):
        key, value = f"key-{i}".encode(), f"value-{i}".encode()
        node = net.random_node()
        d = node.dht.put(key, value, 3600)
        d.addCallbacks(lambda _, k=key: put_ok.append(k), lambda f: None)
        net.poke(node)
        stored[key] = value
    net.run_until(net.now + 15)

    success, hops = route_probes(net, args.routes, 0)
    log(f"routes {success} wall={time.monotonic() - t0:.0f}s")
    punching = punch_pairs(net, natted, args.pairs) if natted and args.pairs else {}
    result: dict[str, Any] = {
        "nodes": args.nodes,
        "seed": args.seed,
        "churn": args.churn,
        "converged": converged,
        "converge_virtual_s": round(converge, 1) if converge is not None else None,
        "mean_hops": round(statistics.mean(hops), 3) if hops else None,
        "p99_hops": hops[max(0, math.ceil(0.99 * len(hops)) - 1)] if hops else None,
        "hop_target": round(0.6 * math.log2(args.nodes), 2),
        "links_per_node_mean": round(statistics.mean(links), 2),
        "msgs_per_node_per_min_steady": round(msgs_per_node_min, 1),
        "route_success": success,
        "dht_put_success": len(put_ok) / max(1, args.keys),
        **punching,
    }

    if args.churn > 0:
        count = int(args.churn * args.nodes)
        leavers = net.rng.sample(list(net.by_address.values()), count)
        step = args.churn_period / max(1, count)
        for node in leavers:
            net.run_until(net.now + step / 2)
            net.remove_node(node, graceful=not args.crash)
            endpoints.remove(net.endpoint(node))
            net.run_until(net.now + step / 2)
            join_one()
        log(f"churned {count} out and in, wall={time.monotonic() - t0:.0f}s")
        reconverge = wait_converged(net, args.converge_limit)
        result["converged"] = converged and reconverge is not None
        result["reconverge_virtual_s"] = round(reconverge, 1) if reconverge is not None else None
        net.run_until(net.now + args.settle)
        success_after, hops_after = route_probes(net, args.routes, 10 ** 6)
        result["route_success_before_churn"] = result["route_success"]
        result["route_success"] = success_after
        result["mean_hops_after_churn"] = round(statistics.mean(hops_after), 3) \
            if hops_after else None

    # Values stored before the churn = the puts that reported success.
    stored = {k: v for k, v in stored.items() if k in put_ok}
    found = []
    for key, value in stored.items():
        node = net.random_node()
        d = node.dht.get(key)
        d.addCallbacks(
            lambda vals, v=value, k=key: found.append(k) if any(x.value == v for x in vals)
            else log(f"get {k!r}: {len(vals)} values"),
            lambda f, k=key: log(f"get {k!r}: {f.getErrorMessage()}"),
        )
        net.poke(node)
    net.run_until(net.now + 20)
    result["dht_get_success"] = round(len(found) / max(1, len(stored)), 4)
    result["virtual_s"] = round(net.now, 1)
    result["messages"] = net.messages
    result["wall_s"] = round(time.monotonic() - t0, 1)
    log(json.dumps(net.counters.snapshot(), sort_keys=True))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)
    # CPU seconds: wall time depends on what else the shared machine runs.
    result["cpu_s"] = round(usage.ru_utime + usage.ru_stime, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--churn", type=float, default=0.0,
                   help="fraction of nodes that leave, and as many that join, after convergence")
    p.add_argument("--crash", action="store_true",
                   help="churned nodes vanish without closing their links (default: close them)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--latency-ms", default="10,80", help="one-way latency range LO,HI")
    p.add_argument("--loss", type=float, default=0.0, help="datagram loss probability")
    p.add_argument("--join-rate", type=float, default=100.0, help="joins per virtual second")
    p.add_argument("--converge-limit", type=float, default=600.0)
    p.add_argument("--settle", type=float, default=60.0)
    p.add_argument("--steady", type=float, default=30.0)
    p.add_argument("--churn-period", type=float, default=60.0)
    p.add_argument("--keys", type=int, default=500)
    p.add_argument("--routes", type=int, default=2000)
    p.add_argument("--real-crypto", action="store_true", help="real ECDSA (slow)")
    p.add_argument("--nat", type=float, default=0.0,
                   help="fraction of joining nodes behind a NAT router of a random kind")
    p.add_argument("--pairs", type=int, default=100,
                   help="with --nat: NATed pairs that ask for a direct link")
    p.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    args = p.parse_args(argv)
    result = run(args)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        for k, v in sorted(result.items()):
            print(f"{k:32} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
