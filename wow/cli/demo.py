"""
C{wow demo}: WOW working on this machine, in network namespaces.

This first form starts one wow-node in a fresh namespace, lets the host's own
ISC dhclient configure its TAP, prints the lease, waits for Ctrl-C (or
C{--duration}) and removes every namespace, device and process it made.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from types import FrameType

from wow.cli.main import EXIT_FAILED, EXIT_OK, EXIT_USAGE

#: Tools the demo drives, and the Debian package that has each.
TOOLS = {"ip": "iproute2", "dhclient": "isc-dhcp-client"}


def say(text: str) -> None:
    print(f"wow demo: {text}", flush=True)


def missing_prerequisite() -> str | None:
    """One sentence saying what is missing and how to get it, or None."""
    if os.geteuid() != 0:
        return ("must run as root (it creates network namespaces and TAP devices); "
                "try: sudo ./run demo")
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun does not exist; load the tun kernel module (modprobe tun)"
    for tool, package in TOOLS.items():
        if shutil.which(tool) is None:
            return (f"{tool} is not installed; install it with: apt-get install {package} "
                    "(or run sudo ./run demo, which installs everything)")
    return None


class _Stop(Exception):
    """SIGTERM/SIGHUP: tear down like Ctrl-C."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop()


def show_lease(site: object, event: list[str]) -> None:
    from wow.demo.topology import NodeSite

    assert isinstance(site, NodeSite)
    lease = site.lease(event)
    (cidr,) = [a for a in site.addresses() if a.split("/")[0] == lease.ip] or [lease.ip]
    records = {r["ip"]: r for r in site.leases()}
    record = records.get(lease.ip, {})
    print()
    print("The host's own DHCP client (ISC dhclient) configured the TAP:")
    rows = [
        ("interface", f"{site.tap} in namespace {site.ns} (MTU {lease.mtu})"),
        ("address", f"{cidr}  (from `ip addr`)"),
        ("netmask", lease.mask),
        ("DNS server", lease.dns),
        ("domain", lease.domain),
        ("lease time", f"{lease.lease_time} s"),
        ("node's lease", f"{record.get('ip', '?')} for {record.get('mac', '?')} "
                         f"({record.get('hostname') or '-'}), expires in "
                         f"{int(record.get('expires_in', 0))} s  (from `wow leases`)"),
    ]
    for key, value in rows:
        print(f"  {key:<13} {value}")
    print(flush=True)


def cmd_demo(args: argparse.Namespace) -> int:
    problem = missing_prerequisite()
    if problem:
        print(f"wow demo: {problem}.", file=sys.stderr)
        return EXIT_FAILED
    if args.duration is not None and args.duration < 0:
        print("wow demo: --duration must not be negative.", file=sys.stderr)
        return EXIT_USAGE
    if args.keep:
        os.environ["WOW_KEEP_LAB_LOGS"] = "1"

    from wow.demo.topology import NodeSite
    from wow.lab.netns import Lab

    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    lab = Lab(tag="d")
    code = EXIT_OK
    try:
        site = NodeSite(lab)
        say(f"starting wow-node in namespace {site.ns} with TAP {site.tap} "
            f"(logs in {lab.workdir})")
        site.start()
        say(f"running the host's DHCP client: dhclient on {site.tap}")
        site.dhclient()
        show_lease(site, site.wait_event("BOUND", timeout=40))
        if args.duration is None:
            say("running; press Ctrl-C to stop")
            while True:
                time.sleep(3600)
        else:
            say(f"running for {args.duration:g} s")
            time.sleep(args.duration)
    except (KeyboardInterrupt, _Stop):
        print()
    except AssertionError as e:
        print(f"wow demo: failed: {str(e).splitlines()[0]}", file=sys.stderr)
        code = EXIT_FAILED
    finally:
        say("tearing down")
        lab.teardown()
        for s, handler in previous.items():
            signal.signal(s, handler)
    left = [ns for ns in os.listdir("/run/netns") if ns.startswith(lab.prefix)] \
        if os.path.isdir("/run/netns") else []
    if left:
        print(f"wow demo: namespaces left behind: {', '.join(left)}", file=sys.stderr)
        return EXIT_FAILED
    say(f"stopped; nothing left behind (prefix {lab.prefix})"
        + (f", logs kept in {lab.workdir}" if args.keep else ""))
    return code


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "demo", help="run a WOW node in a network namespace and show the host's DHCP lease",
        description="Start a wow-node in a fresh network namespace, let the host's own "
                    "dhclient configure its TAP, print the lease, and tear everything down "
                    "on Ctrl-C.  Needs root.",
    )
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="stop after S seconds instead of waiting for Ctrl-C")
    p.add_argument("--keep", action="store_true", help="keep the logs (not the namespaces)")
    p.set_defaults(func=cmd_demo)
