#!/usr/bin/env python3
"""
The NAT matrix with real wow-nodes in network namespaces (needs root).

    sudo .venv/bin/python bench/nat_matrix.py [--json] [--trials N]

Builds a public bootstrap node and two sites of each NAT kind (none, full
cone, restricted cone, port-restricted cone, symmetric, double NAT; nftables
routers, wow/lab/nat.py), then for every pair of kinds asks node A for a
direct link to node B (all pairs at once) and reports whether the link is
direct or relayed, the time punching took (from the first probe to the
working link), and whether an overlay ping gets through.  --trials N
repeats the whole matrix on fresh labs (fresh NAT state) and also counts
how often the birthday pairs (symmetric with port-restricted or double)
became direct.  JSON: {"pairs": [{"a", "b", "mode", "ping_ok", "direct_s",
...}], ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wow.lab.natmatrix import BIRTHDAY, NatMatrix, main_json, verdict  # noqa: E402
from wow.lab.netns import Lab, skip_reason  # noqa: E402


def one(say: object) -> tuple[list[dict[str, object]], float]:
    lab = Lab(tag="nb")
    try:
        started = time.monotonic()
        m = NatMatrix(lab, say)
        m.build()
        m.settle()
        rows = m.run()
        return rows, time.monotonic() - started
    finally:
        lab.teardown()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print JSON only")
    ap.add_argument("--trials", type=int, default=1, help="fresh labs to run (default 1)")
    args = ap.parse_args()
    reason = skip_reason("nft")
    if reason:
        print(f"nat_matrix: {reason}", file=sys.stderr)
        return 2

    def say(text: str) -> None:
        if not args.json:
            print(text, flush=True)

    runs = []
    for t in range(args.trials):
        rows, seconds = one(say)
        runs.append((rows, seconds))
        say(f"trial {t + 1}: {seconds:.0f} s, problems: {verdict(rows) or 'none'}")
    rows, seconds = runs[-1]
    out = main_json(rows, seconds)
    birthday = [r for rs, _ in runs for r in rs if (r["a"], r["b"]) in BIRTHDAY]
    out["trials"] = args.trials
    out["birthday_direct"] = f"{sum(r['mode'] == 'direct' for r in birthday)}/{len(birthday)}"
    out["birthday_direct_first_attempt"] = \
        f"{sum(r['first_mode'] == 'direct' for r in birthday)}/{len(birthday)}"
    every = [r for rs, _ in runs for r in rs]
    out["direct_first_attempt"] = \
        f"{sum(r['first_mode'] == 'direct' for r in every)}/{len(every)}"
    times = sorted(float(r["direct_s"]) for r in every if r["direct_s"] is not None)  # type: ignore[arg-type]
    out["median_direct_s_all_trials"] = times[len(times) // 2] if times else None
    out["problems"] = sorted({p for rs, _ in runs for p in verdict(rs)})
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{'A':<16} {'B':<16} {'mode':<8} {'direct s':>9}  ping")
    for r in rows:
        ds = "-" if r["direct_s"] is None else f"{r['direct_s']:.3f}"
        mode = f"{r['mode']}{' (ring)' if r.get('linked_before') else ''}"
        print(f"{r['a']:<16} {r['b']:<16} {mode:<8} {ds:>9}  {'ok' if r['ping_ok'] else 'FAIL'}")
    print(f"median direct_s {out['median_direct_s']}; birthday pairs direct "
          f"{out['birthday_direct']}; problems: {out['problems'] or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
