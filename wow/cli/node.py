"""Sub-commands that inspect a running wow-node over its control socket."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from wow.cli.main import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    add_json_option,
    add_socket_option,
    print_json,
    socket_path,
)
from wow.control.client import ControlError, call


def query(args: argparse.Namespace, command: str, request: dict[str, Any] | None = None) -> Any:
    """Call the node; on failure print one sentence and raise SystemExit."""
    try:
        return call(socket_path(args), command, request)
    except ControlError as e:
        print(f"wow {command}: {e}", file=sys.stderr)
        unreachable = "no daemon" in str(e) or "not running" in str(e)
        raise SystemExit(EXIT_UNREACHABLE if unreachable else EXIT_FAILED) from None


def cmd_leases(args: argparse.Namespace) -> int:
    leases = query(args, "leases")
    if args.json:
        print_json(leases)
        return EXIT_OK
    if not leases:
        print("no leases")
        return EXIT_OK
    print(f"{'IP':<16} {'MAC':<18} {'HOSTNAME':<20} {'EXPIRES IN':>10}")
    for lease in leases:
        print(
            f"{lease['ip']:<16} {lease['mac']:<18} {lease.get('hostname') or '-':<20} "
            f"{int(lease['expires_in']):>9}s"
        )
    return EXIT_OK


def _print_section(value: Any, indent: int = 0) -> None:
    for key, item in sorted(value.items()) if isinstance(value, dict) else ():
        if isinstance(item, dict):
            print(f"{' ' * indent}{key}:")
            _print_section(item, indent + 2)
        else:
            print(f"{' ' * indent}{key}: {item}")


def cmd_status(args: argparse.Namespace) -> int:
    status = query(args, "status")
    if args.json:
        print_json(status)
    else:
        _print_section(status)
    return EXIT_OK


def cmd_counters(args: argparse.Namespace) -> int:
    counters = query(args, "counters")
    if args.json:
        print_json(counters)
        return EXIT_OK
    for name, series in sorted(counters.items()):
        for labels, value in sorted(series.items()):
            print(f"{name}{'{' + labels + '}' if labels else ''} {value:g}")
    return EXIT_OK


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("leases", help="list the DHCP leases this node handed out")
    add_socket_option(p)
    add_json_option(p)
    p.set_defaults(func=cmd_leases)
    p = subparsers.add_parser("status", help="show the node's status (TAP, leases, uptime, ...)")
    add_socket_option(p)
    add_json_option(p)
    p.set_defaults(func=cmd_status)
    p = subparsers.add_parser("counters", help="show every counter (drops with their reasons)")
    add_socket_option(p)
    add_json_option(p)
    p.set_defaults(func=cmd_counters)
