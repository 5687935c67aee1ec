"""C{wow peers}, C{wow dht ...} and friends: the overlay seen from the CLI (C{wow status}
is L{wow.cli.node}'s and shows the overlay too)."""

from __future__ import annotations

import argparse
from typing import Any

from wow.cli.main import EXIT_FAILED, EXIT_OK, add_json_option, add_socket_option, print_json
from wow.cli.node import query


def _fmt(value: Any) -> str:
    return "-" if value is None else str(value)


def cmd_peers(args: argparse.Namespace) -> int:
    peers = query(args, "peers")
    if args.json:
        print_json(peers)
        return EXIT_OK
    if not peers:
        print("no links")
        return EXIT_OK
    secured = any("secured" in p for p in peers)  # a node with [security] on
    head = f"{'ADDRESS':<45} {'ENDPOINT':<22} {'KIND':<9} {'RTT ms':>8} {'AGE s':>8}"
    print(head + (f"  {'SECURED':<7} {'CIPHER':<30} {'SERIAL':<32}" if secured else "") + "  PATH")
    for p in peers:
        line = (f"{p['address']:<45} {p['endpoint']:<22} {p['kind']:<9} "
                f"{_fmt(p['rtt_ms']):>8} {_fmt(p['age_s']):>8}")
        if secured:
            line += (f"  {'yes' if p.get('secured') else 'no':<7} {_fmt(p.get('cipher')):<30} "
                     f"{_fmt(p.get('serial')):<32}")
        path = p.get("path", "direct")
        if path == "relayed":
            path = f"relayed via {p.get('via', '?')}"
        print(f"{line}  {path}")
    return EXIT_OK


def cmd_dht(args: argparse.Namespace) -> int:
    request: dict[str, Any] = {"key": args.key}
    if getattr(args, "value", None) is not None:
        request["value"] = args.value
    if getattr(args, "ttl", None) is not None:
        request["ttl"] = args.ttl
    result = query(args, f"dht.{args.op}", request)
    if args.json:
        print_json(result)
    elif args.op == "get":
        if not result:
            print("no values")
        for v in result:
            print(f"{v['value']}\t{v['owner']}\t{v['ttl_s']:g}s")
    else:
        print("ok")
    # like grep: a get that finds nothing exits 1, so scripts can test for a key
    return EXIT_FAILED if args.op == "get" and not result else EXIT_OK


def cmd_netcheck(args: argparse.Namespace) -> int:
    report = query(args, "netcheck")
    if args.json:
        print_json(report)
        return EXIT_OK
    print(f"overlay address     {report.get('address', '-')}")
    print(f"local endpoints     {', '.join(report.get('local', [])) or 'none known yet'}")
    print(f"reflexive endpoints {', '.join(report.get('reflexive_endpoints', [])) or 'none yet'}")
    for o in report.get("reflexive", []):
        print(f"  peer {o['peer'][:12]} at {o['destination']:<21} saw us as {o['seen_as']}"
              f" ({o['age_s']:g} s ago)")
    print(f"mapping             {report.get('mapping', 'unknown')}")
    changed = report.get("mapping_changed")
    if changed:
        print(f"mapping changed     {changed['age_s']:g} s ago: {changed['old']} -> "
              f"{changed['new']} (seen by {changed['peer'][:16]})")
    print(f"reachable directly  {report.get('reachable_directly', 'unknown')}: "
          f"{report.get('explanation', '')}")
    return EXIT_OK


def _describe_reply(r: dict[str, Any]) -> str:
    who = r["address"] + (f" ({r['ip']})" if r.get("ip") else "")
    if r["path"] == "relayed":
        path = f"relayed via {r['via'] or 'the overlay'}, {r['hops']} hops"
    elif r["path"] == "direct":
        path = "direct link, 1 hop"
    else:
        path = "this node"
    return f"reply from {who}: {path}, rtt {r['rtt_ms']:.2f} ms"


def cmd_ping(args: argparse.Namespace) -> int:
    import time

    results = []
    for i in range(args.count):
        if i:
            time.sleep(args.interval)
        r = query(args, "ping", {"target": args.target, "timeout": args.timeout})
        results.append(r)
        if not args.json:
            print(_describe_reply(r) if r.get("reply") else
                  f"no reply from {r.get('address', args.target)}: {r.get('reason', '')}")
    replies = [r for r in results if r.get("reply")]
    if args.json:
        print_json(results)
    else:
        rtts = [r["rtt_ms"] for r in replies]
        summary = f"{len(results)} sent, {len(replies)} replies"
        if rtts:
            summary += (f", rtt min/avg/max {min(rtts):.2f}/{sum(rtts) / len(rtts):.2f}/"
                        f"{max(rtts):.2f} ms")
        print(summary)
    return EXIT_OK if replies else EXIT_FAILED


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "peers",
        help="every overlay link: address, endpoint, kind, RTT, direct or relayed (via whom)")
    add_socket_option(p)
    add_json_option(p)
    p.set_defaults(func=cmd_peers)

    p = subparsers.add_parser(
        "netcheck", help="our endpoints as peers see them, the NAT's mapping, direct reachability")
    add_socket_option(p)
    add_json_option(p)
    p.set_defaults(func=cmd_netcheck)

    p = subparsers.add_parser(
        "ping", help="overlay echo to a name, virtual IP or overlay address: path and RTT",
        description="Send overlay echo requests routed to TARGET (a DNS name, a virtual IP "
        "resolved through its DHCP lease in the DHT, or an overlay address wow:HEX) and print "
        "the path (direct link or relayed, hops) and round-trip time. Exit status: 0 if any "
        "reply came, 1 if none, 3 if the node is unreachable.")
    p.add_argument("target", help="NAME, IP or overlay ADDRESS")
    p.add_argument("--count", "-c", type=int, default=3, help="requests (default %(default)s)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between requests")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for each reply")
    add_socket_option(p)
    add_json_option(p)
    p.set_defaults(func=cmd_ping)

    dht = subparsers.add_parser("dht", help="read and write the overlay's DHT")
    ops = dht.add_subparsers(dest="op", metavar="OP", required=True)
    for op, help_text in (("get", "all live values of KEY (exit 1 when there are none)"),
                          ("put", "add VALUE under KEY"),
                          ("create", "claim KEY with VALUE unless another node holds it"),
                          ("delete", "delete this node's VALUE (or all its values) of KEY")):
        q = ops.add_parser(op, help=help_text)
        q.add_argument("key")
        if op in ("put", "create"):
            q.add_argument("value")
            q.add_argument("--ttl", type=int, default=3600, help="seconds (default %(default)s)")
        elif op == "delete":
            q.add_argument("value", nargs="?", default="")
        add_socket_option(q)
        add_json_option(q)
        q.set_defaults(func=cmd_dht)
