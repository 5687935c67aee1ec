"""
DHCP boot storm over the simulated overlay: how long until every node of a
freshly formed ring holds a unique address claimed in the DHT, and what it
costs (claims that collided, overlay messages).  The nodes run the real
overlay, DHT and DHT allocator code in virtual time (L{wow.dhcp.storm}).

    python bench/dhcp_storm.py [--nodes 50,200] [--pool 0] [--seed 1] [--json]

C{--pool N} restricts the pool to N addresses (0 = the whole /16), to make
the random first picks collide.  Run under C{flock /tmp/wow-bench.lock}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from ipaddress import IPv4Address
from typing import Any

from wow.dhcp.storm import ring, storm


def measure(nodes: int, pool: int, seed: int) -> dict[str, Any]:
    t0 = time.monotonic()
    net = ring(nodes, seed)
    converged = net.ring_errors() == 0
    t1 = time.monotonic()
    kw: dict[str, IPv4Address] = {}
    if pool:
        kw = {"pool_start": IPv4Address("10.128.1.0"),
              "pool_end": IPv4Address("10.128.1.0") + (pool - 1)}
    result = storm(net, seed, **kw)
    ips = {lease.ip for lease in result.bound.values()}
    taken = sum(v for k, v in result.claims.items() if "result=taken" in k)
    ok = sum(v for k, v in result.claims.items() if "result=ok" in k)
    return {
        "nodes": nodes,
        "pool": pool or 65533,
        "ring_converged": converged,
        "bound": len(result.bound),
        "unique": len(ips) == len(result.bound),
        "virtual_s_to_all_bound": round(result.seconds, 2) if result.seconds else None,
        "claims_ok": ok,
        "claims_taken": taken,
        "allocator_errors": len(result.errors),
        "overlay_messages_per_lease": round(result.messages / max(1, len(result.bound)), 1),
        "wall_s_ring": round(t1 - t0, 2),
        "wall_s_storm": round(time.monotonic() - t1, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", default="50,200", help="comma-separated ring sizes")
    parser.add_argument("--pool", type=int, default=0, help="pool size (0 = the whole /16)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = [measure(int(n), args.pool, args.seed) for n in args.nodes.split(",")]
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    for row in rows:
        print(f"{row['nodes']:>5} nodes, pool {row['pool']}: all {row['bound']} bound in "
              f"{row['virtual_s_to_all_bound']} virtual s, unique={row['unique']}, "
              f"claims ok={row['claims_ok']:g} taken={row['claims_taken']:g}, "
              f"{row['overlay_messages_per_lease']} overlay messages per lease "
              f"(wall {row['wall_s_ring']} s ring + {row['wall_s_storm']} s storm)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
