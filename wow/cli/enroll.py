"""
C{wow enroll}: obtain this node's certificate from the community CA over EST.

Creates the key and a CSR for the given virtual IP, enrols from that address,
polls while the CA keeps the request for approval, and installs the key,
certificate and CA certificate in the state directory.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import socket
import sys
from typing import Any

from wow.cli.main import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE


def read_credentials(path: str) -> tuple[str, str]:
    """C{user:password} on the first line of C{path}."""
    with open(path, encoding="utf-8") as f:
        line = f.readline().rstrip("\n")
    user, sep, password = line.partition(":")
    if not sep or not user:
        raise ValueError(f"{path} must hold user:password on its first line")
    return user, password


def cmd_enroll(args: argparse.Namespace) -> int:
    from twisted.internet import defer, task

    from wow.ca.client import (
        EnrolError,
        Enrolment,
        EnrolSettings,
        Reenrol,
        WaitUntil,
        installed,
        plan,
    )
    from wow.ca.csr import OVERLAY_URI_PREFIX, is_hostname

    try:
        ip = str(ipaddress.ip_address(args.ip))
    except ValueError:
        print(f"wow enroll: --ip {args.ip!r} is not an IP address", file=sys.stderr)
        return EXIT_USAGE
    hostname = (args.hostname or socket.gethostname()).lower()
    if not is_hostname(hostname):
        print(
            f"wow enroll: {hostname!r} is not a valid host name (use --hostname)", file=sys.stderr
        )
        return EXIT_USAGE
    overlay = None
    if args.overlay_address:
        if not re.fullmatch(r"[0-9a-fA-F]{40}", args.overlay_address):
            print("wow enroll: --overlay-address must be 40 hex digits", file=sys.stderr)
            return EXIT_USAGE
        overlay = OVERLAY_URI_PREFIX + args.overlay_address.lower()
    credentials = None
    try:
        if args.credentials:
            credentials = read_credentials(args.credentials)
        elif args.user:
            import getpass

            credentials = (args.user, getpass.getpass(f"directory password for {args.user}: "))
    except (OSError, ValueError, EOFError) as e:
        print(f"wow enroll: {e or 'no password given'}", file=sys.stderr)
        return EXIT_USAGE
    settings = EnrolSettings(
        url=args.ca,
        state_dir=args.state_dir,
        hostname=hostname,
        overlay=overlay,
        credentials=credentials,
        ca_fingerprint=args.ca_fingerprint,
        timeout=args.timeout,
    )
    result: dict[str, Any] = {}

    async def main(reactor: Any) -> None:
        enrolment = Enrolment(reactor, settings, ip, report=lambda s: print(f"wow enroll: {s}"))
        deadline = reactor.seconds() + args.wait if args.wait > 0 else None
        cert, matches, ca = installed(args.state_dir)
        what = plan(reactor.seconds(), cert, matches, ca, ip, hostname, args.renew_before)
        if isinstance(what, WaitUntil) and not (args.renew or args.force):
            assert cert is not None
            print(
                f"wow enroll: already enrolled: certificate {cert.serial_number:032x} for {ip} "
                f"is valid until {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC "
                f"(--renew or --force to replace it)"
            )
            result["code"] = EXIT_OK
            return
        renew = not args.force and (
            isinstance(what, Reenrol) or (args.renew and isinstance(what, WaitUntil))
        )
        try:
            await enrolment.run(renew=renew, deadline=deadline)
            result["code"] = EXIT_OK
        except EnrolError as e:
            print(f"wow enroll: {e}", file=sys.stderr)
            unreachable = e.temporary and e.status == 0
            result["code"] = EXIT_UNREACHABLE if unreachable else EXIT_FAILED

    try:
        task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
    except SystemExit as e:
        if e.code not in (0, None):
            return int(e.code) if isinstance(e.code, int) else EXIT_FAILED
    return int(result.get("code", EXIT_FAILED))


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("enroll", help="get this node's certificate from the CA (EST)")
    p.add_argument(
        "--ca", required=True, metavar="URL", help="the CA, e.g. https://10.128.0.2:8443"
    )
    p.add_argument("--ip", required=True, help="this node's virtual IP (requests are sent from it)")
    p.add_argument("--hostname", default="", help="host name to certify (default: this host's)")
    p.add_argument(
        "--state-dir",
        default="/var/lib/wow",
        help="where host.key, host.pem and ca.pem go (default: %(default)s)",
    )
    p.add_argument(
        "--ca-fingerprint",
        default="",
        help="SHA-256 fingerprint of the CA certificate (default: trust on first use)",
    )
    p.add_argument(
        "--credentials",
        default="",
        metavar="FILE",
        help="file with user:password for a CA using the ldap policy",
    )
    p.add_argument(
        "--user",
        default="",
        help="directory user for a CA using the ldap policy (the password is asked for)",
    )
    p.add_argument(
        "--overlay-address",
        default="",
        metavar="HEX",
        help="the node's 160-bit overlay address (40 hex digits), certified as a URI",
    )
    p.add_argument(
        "--wait",
        type=float,
        default=3600,
        help="seconds to keep polling while approval is pending (0 = forever)",
    )
    p.add_argument(
        "--renew",
        action="store_true",
        help="renew the installed certificate now (simplereenroll)",
    )
    p.add_argument(
        "--force", action="store_true", help="enrol afresh even if a valid certificate is installed"
    )
    p.add_argument(
        "--renew-before",
        type=float,
        default=7 * 86400,
        help="renew when the certificate expires within this many seconds (default: 7 days)",
    )
    p.add_argument("--timeout", type=float, default=30, help="seconds per HTTPS request")
    p.set_defaults(func=cmd_enroll)
