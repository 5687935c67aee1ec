"""
C{wow ca}: administer a running wow-ca over its control socket.

Going through the daemon (rather than opening its store) means an approval
is signed with the daemon's key and a revocation re-signs the CRL at once.
"""

from __future__ import annotations

import argparse
import os.path
import sys
import time
from typing import Any

from wow.cli.main import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, add_json_option, print_json
from wow.control.client import ControlError, call


def ca_socket(args: argparse.Namespace) -> str:
    return args.socket or os.path.join(args.state_dir, "control.sock")


def ca_call(args: argparse.Namespace, command: str, request: dict[str, Any] | None = None) -> Any:
    """Call wow-ca; on failure print one sentence and raise SystemExit."""
    path = ca_socket(args)
    try:
        return call(path, command, request)
    except ControlError as e:
        message = str(e)
        unreachable = "no daemon" in message or "not running" in message
        if unreachable:
            message = f"no wow-ca is listening at {path} (is wow-ca running? see --state-dir)"
        print(f"wow ca {args.ca_command}: {message}", file=sys.stderr)
        raise SystemExit(EXIT_UNREACHABLE if unreachable else EXIT_FAILED) from None


def _when(ts: int | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts))


def cmd_pending(args: argparse.Namespace) -> int:
    rows = ca_call(args, "ca.pending")
    if args.json:
        print_json(rows)
    elif not rows:
        print("no pending requests")
    else:
        print(f"{'ID':>5} {'IP':<16} {'HOSTNAME':<24} {'REQUESTED (UTC)':<17} REQUESTER")
        for r in rows:
            print(
                f"{r['id']:>5} {r['ip']:<16} {r['hostname']:<24} {_when(r['created']):<17} "
                f"{r['requester'] or '-'}"
            )
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    rows = ca_call(args, "ca.list")
    if not args.all:
        rows = [r for r in rows if r["kind"] == "node"]
    if args.json:
        print_json(rows)
    elif not rows:
        print("no certificates issued")
    else:
        print(f"{'SERIAL':<32} {'STATE':<8} {'IP':<16} {'HOSTNAME':<24} {'EXPIRES (UTC)':<17} VIA")
        for r in rows:
            print(
                f"{r['serial']:<32} {r['state']:<8} {r['ip']:<16} {r['hostname']:<24} "
                f"{_when(r['not_after']):<17} {r['via']}"
            )
    return EXIT_OK


def cmd_approve(args: argparse.Namespace) -> int:
    rec = ca_call(args, "ca.approve", {"id": args.id})
    print(f"approved request {args.id}: issued {rec['serial']} to {rec['ip']} ({rec['hostname']})")
    return EXIT_OK


def cmd_reject(args: argparse.Namespace) -> int:
    ca_call(args, "ca.reject", {"id": args.id, "reason": args.reason})
    print(f"rejected request {args.id}")
    return EXIT_OK


def cmd_revoke(args: argparse.Namespace) -> int:
    serials = ca_call(args, "ca.revoke", {"target": args.target, "reason": args.reason})
    for serial in serials:
        print(f"revoked {serial}")
    return EXIT_OK


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ca = subparsers.add_parser("ca", help="administer the community CA (wow-ca)")
    ca.add_argument(
        "--state-dir",
        default="/var/lib/wow-ca",
        help="wow-ca's state directory (default: %(default)s)",
    )
    ca.add_argument(
        "--socket", default="", help="wow-ca's control socket (default: STATE_DIR/control.sock)"
    )
    # The same options after the sub-command (wow ca list --state-dir DIR); SUPPRESS
    # keeps them from overwriting the values given before it.
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("--state-dir", help="wow-ca's state directory")
    common.add_argument("--socket", help="wow-ca's control socket")
    sub = ca.add_subparsers(dest="ca_command", metavar="CA_COMMAND", required=True)

    def add(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[common])

    p = add("pending", help="list requests waiting for approval")
    add_json_option(p)
    p.set_defaults(func=cmd_pending)

    p = add("list", help="list issued certificates and their state")
    add_json_option(p)
    p.add_argument("--all", action="store_true", help="include the CA's own HTTPS certificates")
    p.set_defaults(func=cmd_list)

    p = add("approve", help="sign a pending request")
    p.add_argument("id", type=int, help="request number (see wow ca pending)")
    p.set_defaults(func=cmd_approve)

    p = add("reject", help="refuse a pending request")
    p.add_argument("id", type=int, help="request number (see wow ca pending)")
    p.add_argument("--reason", default="", help="told to the node on its next poll")
    p.set_defaults(func=cmd_reject)

    p = add("revoke", help="revoke certificates and re-sign the CRL")
    p.add_argument(
        "target",
        metavar="SERIAL|IP|HOSTNAME",
        help="a serial number, or every certificate of an IP address or host name",
    )
    p.add_argument("--reason", default="", help="recorded with the revocation")
    p.set_defaults(func=cmd_revoke)
