"""C{wow status}, C{wow peers} and C{wow dht ...}: the overlay seen from the CLI."""

from __future__ import annotations

import argparse
from typing import Any

from wow.cli.main import EXIT_OK, add_json_option, add_socket_option, print_json
from wow.cli.node import query


def _fmt(value: Any) -> str:
    return "-" if value is None else str(value)


def cmd_status(args: argparse.Namespace) -> int:
    status = query(args, "status")
    if args.json:
        print_json(status)
        return EXIT_OK
    for section, body in sorted(status.items()):
        print(f"[{section}]")
        if isinstance(body, dict):
            for key, value in body.items():
                if isinstance(value, dict):
                    value = ", ".join(f"{k} {v:g}" for k, v in value.items()) or "none"
                print(f"  {key:<20} {_fmt(value)}")
        else:
            print(f"  {body}")
    return EXIT_OK


def cmd_peers(args: argparse.Namespace) -> int:
    peers = query(args, "peers")
    if args.json:
        print_json(peers)
        return EXIT_OK
    if not peers:
        print("no links")
        return EXIT_OK
    print(f"{'ADDRESS':<45} {'ENDPOINT':<22} {'KIND':<9} {'RTT ms':>8} {'AGE s':>8}")
    for p in peers:
        print(f"{p['address']:<45} {p['endpoint']:<22} {p['kind']:<9} "
              f"{_fmt(p['rtt_ms']):>8} {p['age_s']:>8}")
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
    return EXIT_OK


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    if "status" not in subparsers.choices:  # wow.cli.node's status shows the overlay too
        p = subparsers.add_parser("status", help="this node's overlay address, endpoints, links")
        add_socket_option(p)
        add_json_option(p)
        p.set_defaults(func=cmd_status)

    p = subparsers.add_parser("peers", help="every overlay link: address, endpoint, kind, RTT")
    add_socket_option(p)
    add_json_option(p)
    p.set_defaults(func=cmd_peers)

    dht = subparsers.add_parser("dht", help="read and write the overlay's DHT")
    ops = dht.add_subparsers(dest="op", metavar="OP", required=True)
    for op, help_text in (("get", "all live values of KEY"),
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
