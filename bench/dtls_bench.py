#!/usr/bin/env python3
"""
Micro-benchmark of WOW's DTLS 1.2 core, in one process on one core.

For each message size it measures messages per second (seal on one session +
open on the other, so one message is both ends' work) at three levels:

 - C{openssl}: pyOpenSSL alone (C{Connection.send} / C{bio_write} + C{recv}),
   the floor any Python DTLS path pays;
 - C{session}: L{wow.security.dtls.DtlsSession} (record split, replay mirror);
 - C{channel}: L{wow.security.manager.SessionManager} (framing byte, rekey
   checks, channel lookup) - what the router will call; a 60,000-byte
   message (an offloaded super-frame) is sealed as four records in one
   datagram.

and full handshakes per second (both ends, with the cookie exchange).

Run it under the shared lock so benchmarks never overlap:
    flock /tmp/wow-bench.lock .venv/bin/python bench/dtls_bench.py [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.task import Clock  # noqa: E402

from tests.pki import ADDR_A, ADDR_B, IP_B, pki  # noqa: E402
from wow.security.dtls import DtlsContext, DtlsSession, Role, State  # noqa: E402
from wow.security.manager import SessionManager  # noqa: E402


def contexts() -> tuple[DtlsContext, DtlsContext]:
    p = pki()
    return (
        DtlsContext(p.ca.cert, p.a.cert, p.a.key),
        DtlsContext(p.ca.cert, p.b.cert, p.b.key),
    )


def session_pair(clock: Clock) -> tuple[DtlsSession, DtlsSession]:
    ca, cb = contexts()
    client = DtlsSession(Role.CLIENT, ca, ADDR_B, IP_B, clock)
    server = DtlsSession(Role.SERVER, cb, ADDR_A, None, clock)
    queue = [("c", d) for d in client.start()]
    while queue:
        who, d = queue.pop(0)
        target, other = (server, "s") if who == "c" else (client, "c")
        _, back = target.receive(d, 0.0)
        queue.extend((other, b) for b in back)
    assert client.state is State.ESTABLISHED and server.state is State.ESTABLISHED
    return client, server


def manager_pair(clock: Clock) -> tuple[SessionManager, SessionManager]:
    ca, cb = contexts()
    a = SessionManager(ADDR_A, ca, clock)
    b = SessionManager(ADDR_B, cb, clock)
    queue = [(ADDR_A, d) for d in a.send(ADDR_B, b"start", 0.0, IP_B)]
    while queue:
        src, d = queue.pop(0)
        dst, dst_mgr = (ADDR_B, b) if src == ADDR_A else (ADDR_A, a)
        _, back = dst_mgr.receive(src, d, 0.0)
        queue.extend((dst, x) for x in back)
    assert a.channels[ADDR_B].state == "established"
    return a, b


def timed(fn, seconds: float) -> tuple[int, float]:  # type: ignore[no-untyped-def]
    """Run C{fn} (which does 100 records) until C{seconds} pass; (records, elapsed)."""
    n = 0
    start = time.perf_counter()
    cpu0 = time.process_time()
    while time.perf_counter() - start < seconds:
        fn()
        n += 100
    return n, time.process_time() - cpu0


def bench_openssl(size: int, seconds: float) -> tuple[int, float]:
    client, server = session_pair(Clock())
    c, s = client._conn, server._conn
    assert c is not None and s is not None
    payload = os.urandom(size)

    def run() -> None:
        for _ in range(100):
            c.send(payload)
            s.bio_write(c.bio_read(20000))
            s.recv(16384)

    return timed(run, seconds)


def bench_session(size: int, seconds: float) -> tuple[int, float]:
    client, server = session_pair(Clock())
    payload = os.urandom(size)

    def run() -> None:
        send, receive = client.send, server.receive
        for _ in range(100):
            for record in send(payload):
                receive(record, 0.0)

    return timed(run, seconds)


def bench_channel(size: int, seconds: float) -> tuple[int, float]:
    a, b = manager_pair(Clock())
    payload = os.urandom(size)

    def run() -> None:
        send, receive = a.send, b.receive
        for _ in range(100):
            for datagram in send(ADDR_B, payload, 0.0):
                receive(ADDR_A, datagram, 0.0)

    return timed(run, seconds)


def bench_handshakes(seconds: float) -> tuple[int, float]:
    n = 0
    start = time.perf_counter()
    cpu0 = time.process_time()
    while time.perf_counter() - start < seconds:
        session_pair(Clock())
        n += 1
    return n, time.process_time() - cpu0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    args = parser.parse_args()
    pki()  # key generation outside the measurements
    results: dict[str, object] = {"date": time.strftime("%Y-%m-%d"), "rows": []}
    rows: list[dict[str, object]] = []
    for size, levels in (
        (1400, ("openssl", "session", "channel")),
        (16384, ("openssl", "session", "channel")),
        (60000, ("channel",)),
    ):
        for level in levels:
            fn = {"openssl": bench_openssl, "session": bench_session, "channel": bench_channel}[
                level
            ]
            records, cpu = fn(size, args.seconds)
            rate = records / cpu
            rows.append(
                {
                    "level": level,
                    "size": size,
                    "messages_per_s": round(rate),
                    "gbps": round(rate * size * 8 / 1e9, 2),
                    "us_per_message": round(1e6 / rate, 2),
                }
            )
    hs, cpu = bench_handshakes(args.seconds)
    results["rows"] = rows
    results["handshakes_per_s"] = round(hs / cpu, 1)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"DTLS 1.2 in one process, one core, seal + open per message ({results['date']})")
    print(f"{'level':<8} {'bytes':>6} {'messages/s':>10} {'Gbps':>6} {'us/message':>10}")
    for r in rows:
        print(
            f"{r['level']:<8} {r['size']:>6} {r['messages_per_s']:>10} "
            f"{r['gbps']:>6} {r['us_per_message']:>10}"
        )
    print(f"full handshakes (both ends, cookie exchange): {results['handshakes_per_s']}/s")


if __name__ == "__main__":
    main()
