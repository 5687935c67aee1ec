#!/usr/bin/env python3
"""
DHCP and TAP benchmarks of wow-node (run as root; not a test).

  python bench/dhcp_bench.py [--clients N] [--window W] [--seconds S] [--json]

Measures, against a real C{twistd wow-node} in a fresh network namespace:

  - leases/s: a load generator written with WOW's codecs plays many DHCP
    clients (one MAC each) over a raw AF_PACKET socket on the TAP's host
    side: DISCOVER → OFFER → REQUEST → ACK, with W clients in flight.  Every
    ACK is durable (the lease file is replaced and fsync'd), so this is
    bounded by the disk as much as by the server;
  - TAP frames/s: ARP requests for virtual addresses blasted onto the TAP
    with W in flight; each is read by the reactor loop, answered by the ARP
    responder and written back (one read + one write per frame);

and, in process (no syscalls), the same DHCP handshake through the whole
sans-I/O stack (dispatcher, codecs, server, allocator) for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from ipaddress import IPv4Address
from typing import Any

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)

from wow.dhcp import loadgen  # noqa: E402
from wow.net.arp import ARP_REQUEST, ArpPacket, build_arp  # noqa: E402
from wow.net.dhcp import DHCPACK, DHCPOFFER  # noqa: E402
from wow.net.ethernet import BROADCAST, ETH_P_ARP, EthernetFrame, build_ethernet  # noqa: E402

GW = IPv4Address("10.128.0.1")
PACKET_OUTGOING = 4


def mac_for(i: int) -> bytes:
    return b"\x02\xbe" + i.to_bytes(4, "big")


# -- the generator (runs inside the namespace) -------------------------------


def _socket(tap: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    s.bind((tap, 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.settimeout(3.0)
    return s


def _incoming(s: socket.socket) -> bytes | None:
    """The next frame the node wrote (our own sent frames skipped); None on timeout."""
    while True:
        try:
            data, addr = s.recvfrom(65535)
        except TimeoutError:
            return None
        if addr[2] != PACKET_OUTGOING:
            return data


def gen_dhcp(tap: str, clients: int, window: int) -> dict[str, Any]:
    """Each client: DISCOVER, wait OFFER, REQUEST, wait ACK; W in flight."""
    s = _socket(tap)
    state: dict[int, int] = {}  # xid -> step (1 = discover sent, 2 = request sent)
    sent_at: dict[int, float] = {}
    next_client, done, lost, stalls, latencies = 0, 0, 0, 0, []
    start = time.perf_counter()

    def launch() -> None:
        nonlocal next_client
        xid = next_client + 1
        s.send(loadgen.discover(mac_for(next_client), xid))
        state[xid] = 1
        sent_at[xid] = time.perf_counter()
        next_client += 1

    while next_client < min(window, clients):
        launch()
    while done + lost < clients:
        data = _incoming(s)
        if data is None:  # 3 s of silence: count what is in flight as lost, relaunch
            stalls += 1
            lost += len(state)
            state.clear()
            while next_client < clients and len(state) < window:
                launch()
            if not state:
                break
            continue
        try:
            eth, ip, msg = loadgen.parse_reply(data)
        except Exception:
            continue
        step = state.get(msg.xid)
        if step == 1 and msg.message_type == DHCPOFFER:
            s.send(loadgen.select(bytes(msg.chaddr), msg.xid, msg.yiaddr, GW))
            state[msg.xid] = 2
        elif step == 2 and msg.message_type == DHCPACK:
            del state[msg.xid]
            latencies.append(time.perf_counter() - sent_at.pop(msg.xid))
            done += 1
            if next_client < clients:
                launch()
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "leases": done, "lost": lost, "stalls": stalls, "seconds": round(elapsed, 3),
        "leases_per_s": round(done / elapsed, 1),
        "handshake_ms_p50": round(1000 * latencies[len(latencies) // 2], 2) if latencies else None,
        "handshake_ms_p99": round(1000 * latencies[int(len(latencies) * 0.99)], 2)
        if latencies else None,
    }


def gen_arp(tap: str, seconds: float, window: int) -> dict[str, Any]:
    """ARP requests for virtual addresses, W in flight; count the replies."""
    s = _socket(tap)
    src = b"\x02\xbe\xff\xff\xff\xfe"
    frames = [
        build_ethernet(EthernetFrame(BROADCAST, src, ETH_P_ARP, build_arp(ArpPacket(
            ARP_REQUEST, src, IPv4Address("10.128.0.2"), b"\x00" * 6,
            IPv4Address(int(IPv4Address("10.128.200.0")) + i)))))
        for i in range(256)
    ]
    in_flight, sent, replies = 0, 0, 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        while in_flight < window:
            s.send(frames[sent % 256])
            sent += 1
            in_flight += 1
        data = _incoming(s)
        if data is None:
            in_flight = 0  # lost: refill the window
            continue
        if data[12:14] == b"\x08\x06" and data[20:22] == b"\x00\x02":
            replies += 1
            in_flight -= 1
    elapsed = time.perf_counter() - start
    return {"requests": sent, "replies": replies, "seconds": round(elapsed, 3),
            "replies_per_s": round(replies / elapsed, 1)}


# -- in process ------------------------------------------------------------


def in_process(clients: int) -> dict[str, Any]:
    """The same handshake through the sans-I/O stack, frames in memory."""
    from twisted.internet.testing import MemoryReactorClock

    from wow.metrics import Counters
    from wow.nic.service import NicService
    from wow.node.config import load_node_config
    from wow.testing import FakeTapSyscalls

    with tempfile.TemporaryDirectory() as state:
        config = load_node_config(None, {"node": {"state_dir": state}})
        syscalls = FakeTapSyscalls()
        clock = MemoryReactorClock()
        nic = NicService(config, clock, Counters(), syscalls=syscalls)
        nic.privilegedStartService()
        nic.startService()
        dev = syscalls.devices[0]
        dispatch = nic.dispatcher
        assert dispatch is not None
        start = time.perf_counter()
        for i in range(clients):
            mac = mac_for(i)
            dispatch.frame_received(loadgen.discover(mac, i + 1))
            _, _, offer = loadgen.parse_reply(dev.written[-1])
            dispatch.frame_received(loadgen.select(mac, i + 1, offer.yiaddr, GW))
            clock.advance(0)  # the group commit: write the lease file, then ACK
            _, _, ack = loadgen.parse_reply(dev.written[-1])
            assert ack.message_type == DHCPACK
        elapsed = time.perf_counter() - start
        arp = build_ethernet(EthernetFrame(BROADCAST, mac_for(0), ETH_P_ARP, build_arp(
            ArpPacket(ARP_REQUEST, mac_for(0), IPv4Address("10.128.0.2"), b"\x00" * 6,
                      IPv4Address("10.128.9.9")))))
        n = 20000
        t0 = time.perf_counter()
        for _ in range(n):
            dispatch.frame_received(arp)
        arp_elapsed = time.perf_counter() - t0
        nic.stopService()
    return {"leases_per_s": round(clients / elapsed, 1),
            "arp_replies_per_s": round(n / arp_elapsed, 1)}


# -- driver ------------------------------------------------------------------


def run_inner(args: argparse.Namespace) -> None:
    if args.inner == "dhcp":
        print(json.dumps(gen_dhcp(args.tap, args.clients, args.window)))
    else:
        print(json.dumps(gen_arp(args.tap, args.seconds, args.window)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--inner", choices=("dhcp", "arp"), help=argparse.SUPPRESS)
    parser.add_argument("--tap", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        run_inner(args)
        return 0
    if os.geteuid() != 0:
        print("dhcp_bench: must run as root (namespaces and TAP devices).", file=sys.stderr)
        return 2

    from wow.demo.topology import NodeSite
    from wow.lab.netns import Lab

    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "clients": args.clients,
                               "window": args.window}
    results["in_process"] = in_process(min(args.clients, 2000))
    lab = Lab(tag="nb")
    try:
        site = NodeSite(lab)
        site.start()

        def inner(kind: str) -> dict[str, Any]:
            out = lab.ns_run(site.ns, sys.executable, os.path.abspath(__file__), "--inner", kind,
                             "--tap", site.tap, "--clients", str(args.clients), "--window",
                             str(args.window), "--seconds", str(args.seconds), timeout=600)
            return json.loads(out.stdout)  # type: ignore[no-any-return]

        before = site.control("counters")
        results["dhcp"] = inner("dhcp")
        results["dhcp"]["node_leases"] = len(site.leases())
        results["tap"] = inner("arp")
        after = site.control("counters")

        def delta(name: str) -> float:
            return sum(after.get(name, {}).values()) - sum(before.get(name, {}).values())

        results["node_counters"] = {n: delta(n) for n in (
            "tap_frames_read", "tap_frames_written", "dhcp_acks", "arp_replies",
            "frames_dropped", "dhcp_refused", "lease_file_writes", "tap_errors")}
    finally:
        lab.teardown()
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    d, t, p = results["dhcp"], results["tap"], results["in_process"]
    print(f"DHCP over the TAP: {d['leases_per_s']} leases/s ({d['leases']} clients, "
          f"window {args.window}, lost {d['lost']} in {d['stalls']} stalls; "
          f"handshake p50 {d['handshake_ms_p50']} ms, "
          f"p99 {d['handshake_ms_p99']} ms)")
    print(f"TAP read+answer+write (ARP): {t['replies_per_s']} frames/s "
          f"({t['replies']} replies in {t['seconds']} s, window {args.window})")
    print(f"node counters during the run: {results['node_counters']}")
    print(f"in process, sequential, one fsync'd write per ACK: {p['leases_per_s']} leases/s, "
          f"{p['arp_replies_per_s']} ARP replies/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
