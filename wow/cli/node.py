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


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("leases", help="list the DHCP leases this node handed out")
    add_socket_option(p)
    add_json_option(p)
    p.set_defaults(func=cmd_leases)
