"""
C{wow demo}: WOW working on this machine, in network namespaces.

C{wow demo} builds a small wide-area WOW (L{wow.demo.wan}): an internet
bridge with a public bootstrap node running the CA, and two sites behind NATs
of different kinds with two nodes each; it shows each node joining, getting
its lease, name and certificate, then pings by name and runs iperf3 across
the sites, and tears everything down on Ctrl-C or after C{--duration}.
C{--keep} leaves it running (C{wow demo shell NODE}, C{wow demo down}).

C{wow demo --single} is the first form: one wow-node in a fresh namespace
whose TAP the host's own ISC dhclient configures; it prints the lease.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType

from wow.cli.main import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from wow.lab.netns import Lab

#: Tools the demo drives, and the Debian package that has each.
TOOLS = {"ip": "iproute2", "dhclient": "isc-dhcp-client", "nft": "nftables",
         "iperf3": "iperf3", "ping": "iputils-ping", "getent": "libc-bin"}


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
    if args.action == "shell":
        return demo_shell(args)
    if args.action == "down":
        return demo_down()
    if args.action is not None:
        print(f"wow demo: unknown action {args.action!r} (shell NODE or down).",
              file=sys.stderr)
        return EXIT_USAGE
    if not args.single:
        return demo_wan(args)
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

    def body(lab: Lab) -> tuple[int, bool]:
        site = NodeSite(lab)
        say(f"starting wow-node in namespace {site.ns} with TAP {site.tap} "
            f"(logs in {lab.workdir})")
        site.start()
        say(f"running the host's DHCP client: dhclient on {site.tap}")
        site.dhclient()
        show_lease(site, site.wait_event("BOUND", timeout=40))
        return EXIT_OK, False

    return run_in_lab(args, body)


def run_in_lab(args: argparse.Namespace, body: Callable[[Lab], tuple[int, bool]]) -> int:
    """
    Run C{body} in a fresh lab, then wait for Ctrl-C or C{--duration}, and
    tear everything down (unless C{body} kept it running).  SIGTERM and SIGHUP
    tear down like Ctrl-C.
    """
    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    lab = Lab(tag="d")
    code, kept = EXIT_OK, False
    try:
        code, kept = body(lab)
        if kept:
            return code
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
        if not kept:
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


def demo_wan(args: argparse.Namespace) -> int:
    """The multi-site demo (see L{wow.demo.wan})."""
    problem = missing_prerequisite()
    if problem:
        print(f"wow demo: {problem}.", file=sys.stderr)
        return EXIT_FAILED
    if args.duration is not None and args.duration < 0:
        print("wow demo: --duration must not be negative.", file=sys.stderr)
        return EXIT_USAGE
    from wow.demo.wan import DemoWan, load_state
    from wow.lab.nat import NatKind

    if load_state() is not None:
        print("wow demo: a kept demo is still running; stop it first with: wow demo down.",
              file=sys.stderr)
        return EXIT_FAILED
    kinds = (NatKind(args.nat_a), NatKind(args.nat_b))

    def body(lab: Lab) -> tuple[int, bool]:
        demo = DemoWan(lab, say, kinds)
        say(f"building a WOW on this machine (logs in {lab.workdir})")
        demo.run()
        results = demo.show_traffic()
        code = EXIT_OK if all(results["ping"].values()) and results["iperf3"] else EXIT_FAILED
        if args.keep:
            demo.save()
            demo.how_to_enter()
            return code, True
        return code, False

    return run_in_lab(args, body)


def demo_shell(args: argparse.Namespace) -> int:
    from wow.demo.wan import load_state

    state = load_state()
    if state is None:
        print("wow demo: no demo is running; start one with: wow demo --keep.", file=sys.stderr)
        return EXIT_FAILED
    nodes = state.get("nodes", {})
    if args.node not in nodes:
        print(f"wow demo: no node {args.node!r}; the nodes are {', '.join(sorted(nodes))}.",
              file=sys.stderr)
        return EXIT_USAGE
    ns = nodes[args.node]["ns"]
    os.environ["PS1"] = f"[wow {args.node} {nodes[args.node]['ip']}] \\w# "
    shell = os.environ.get("SHELL", "/bin/bash")
    os.execvp("ip", ["ip", "netns", "exec", ns, shell, "--norc", "-i"])
    return EXIT_OK  # not reached


def demo_down() -> int:
    from wow.demo.wan import STATE_FILE, load_state
    from wow.lab.netns import Lab

    state = load_state()
    if state is None:
        print("wow demo: no kept demo is running.", file=sys.stderr)
        return EXIT_FAILED
    Lab.teardown_state(state)
    os.unlink(STATE_FILE)
    say(f"stopped; nothing left behind (prefix {state['prefix']})")
    return EXIT_OK


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from wow.lab.nat import NatKind

    p = subparsers.add_parser(
        "demo", help="build a small WOW across NATs in network namespaces and show it working",
        description="Build, on this machine, an internet with a public node and the CA, and "
                    "two sites behind NATs with two nodes each; every node is a real wow-node "
                    "whose TAP the host's own dhclient configures.  Shows joins, leases, names "
                    "and certificates, then pings by name and runs iperf3 across the sites.  "
                    "Ctrl-C (or --duration) tears everything down.  Needs root.  "
                    "'wow demo shell NODE' enters a kept demo's node; 'wow demo down' stops it.",
    )
    p.add_argument("action", nargs="?", choices=["shell", "down"],
                   help="shell NODE: a shell inside a kept demo's node; down: stop a kept demo")
    p.add_argument("node", nargs="?", help="the node for 'shell' (pub, a1, a2, b1, b2)")
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="stop S seconds after the traffic test instead of waiting for Ctrl-C")
    p.add_argument("--keep", action="store_true",
                   help="leave the demo running; stop it later with 'wow demo down'")
    kinds = [k.value for k in NatKind if k is not NatKind.PUBLIC]
    p.add_argument("--nat-a", default=NatKind.PORT_RESTRICTED.value, choices=kinds,
                   help="the NAT in front of site 1 (default: %(default)s)")
    p.add_argument("--nat-b", default=NatKind.FULL_CONE.value, choices=kinds,
                   help="the NAT in front of site 2 (default: %(default)s)")
    p.add_argument("--single", action="store_true",
                   help="the first form: one node, the host's dhclient, the lease printed")
    p.set_defaults(func=cmd_demo)
