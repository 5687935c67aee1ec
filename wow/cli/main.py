"""
Entry point of the C{wow} command.

Each part contributes its sub-commands from its own module listed in
L{COMMAND_MODULES}: the module's C{register(subparsers)} adds parsers whose
C{func(args) -> int} runs the command.  Exit codes: 0 success, 1 the
operation failed (the daemon refused, a check failed), 2 usage errors,
3 the daemon could not be reached.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from typing import Any

from wow import __version__

COMMAND_MODULES = [
    "wow.cli.node",
    "wow.cli.demo",
    "wow.cli.ca",
    "wow.cli.enroll",

    "wow.cli.overlay",
    "wow.cli.security",
]

#: How C{wow --help} groups the sub-commands (by the part they inspect).
GROUPS = [
    ("this node (wow-node)", ["status", "counters", "leases", "security", "enroll"]),
    ("the overlay", ["peers", "netcheck", "ping", "dht"]),
    ("the community CA (wow-ca)", ["ca"]),
    ("trying WOW", ["demo"]),
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


def add_socket_option(parser: argparse.ArgumentParser) -> None:
    """The options every command that talks to a local wow-node accepts."""
    parser.add_argument(
        "--state-dir",
        default="/var/lib/wow",
        help="the node's state directory (default: %(default)s)",
    )
    parser.add_argument(
        "--socket", default="", help="control socket path (default: STATE_DIR/control.sock)"
    )


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def socket_path(args: argparse.Namespace) -> str:
    import os.path

    return args.socket or os.path.join(args.state_dir, "control.sock")


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wow",
        description="Control and inspect a WOW (wide-area overlay of virtual workstations).",
    )
    parser.add_argument("--version", action="version", version=f"wow {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    _group_help(parser, subparsers)
    return parser


def _group_help(parser: argparse.ArgumentParser, subparsers: Any) -> None:
    """List the sub-commands grouped by part (L{GROUPS}), with the exit codes."""
    helps = {a.dest: a.help or "" for a in subparsers._choices_actions}
    grouped = {n for _, names in GROUPS for n in names}
    groups = [*GROUPS, ("other", sorted(n for n in helps if n not in grouped))]
    lines = []
    for title, names in groups:
        present = [n for n in names if n in helps]
        if present:
            lines.append(f"{title}:")
            lines += [f"  {n:<10} {helps[n]}" for n in present]
    lines += ["", "Read commands take --json; 'wow COMMAND --help' explains each.",
              "Exit status: 0 success, 1 the operation failed (no reply, no value, refused),",
              "2 usage error, 3 the daemon could not be reached."]
    parser.epilog = "\n".join(lines)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    subparsers._choices_actions = []  # listed in the epilog instead
    subparsers.help = "one of the commands below"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
