"""
wow-ca enrolment benchmark: a real C{twistd -n wow-ca} (auto policy) on
loopback, enrolled by a blocking EST client from distinct 127.7.x.y source
addresses (one new TLS connection per enrolment, as a node does).

    flock /tmp/wow-bench.lock python bench/ca_bench.py [--count N] [--concurrency C] [--json]

Prints enrolments per second and the p50/p99 latency of one enrolment
(TLS handshake + request + signing + durable commit + answer).  CSRs are
made before the clock starts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)

from tests.ca_process import CaProcess, free_port  # noqa: E402
from wow.ca.blocking import BlockingEst, request_for  # noqa: E402


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
    return ordered[index]


def run(count: int, concurrency: int, warmup: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="wow-ca-bench-") as work:
        ca = CaProcess(os.path.join(work, "state"), free_port(), "auto")
        ca.start()
        try:
            client = BlockingEst("127.0.0.1", ca.port, ca.ca_pem())
            jobs = [
                (
                    f"127.7.{i // 250}.{i % 250 + 1}",
                    request_for(f"127.7.{i // 250}.{i % 250 + 1}", f"bench{i}"),
                )
                for i in range(count + warmup)
            ]
            for ip, csr in jobs[:warmup]:
                assert client.post("simpleenroll", csr, ip).status == 200
            latencies: list[float] = []
            lock = threading.Lock()
            todo = iter(jobs[warmup:])

            def worker() -> None:
                while True:
                    with lock:
                        job = next(todo, None)
                    if job is None:
                        return
                    t0 = time.perf_counter()
                    reply = client.post("simpleenroll", job[1], job[0])
                    elapsed = time.perf_counter() - t0
                    if reply.status != 200:
                        raise SystemExit(f"enrolment failed: {reply.status} {reply.body!r}")
                    with lock:
                        latencies.append(elapsed)

            threads = [threading.Thread(target=worker) for _ in range(concurrency)]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - start
        finally:
            ca.kill()
    return {
        "enrol_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(percentile(latencies, 99) * 1000, 2),
        "count": len(latencies),
        "concurrency": concurrency,
        "policy": "auto",
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.count, args.concurrency, args.warmup)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(
            f"wow-ca auto policy, {result['count']} enrolments, concurrency "
            f"{result['concurrency']}: {result['enrol_per_s']} enrolments/s, "
            f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms "
            f"(target p99 <= 50 ms; load average {result['load_avg_1m']})"
        )


if __name__ == "__main__":
    main()
