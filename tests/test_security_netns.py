"""
The security core for real: two processes in two namespaces over real UDP,
captured with tcpdump on the veth between them.

Asserts what the issue asks of the underlay: no plaintext of a known inner
payload on the wire, and captured datagrams replayed to the receiver are
rejected (nothing delivered twice, the live session untouched).
"""

from __future__ import annotations

import json
import os
import struct
import sys

from cryptography.hazmat.primitives import serialization
from twisted.trial.unittest import SkipTest, TestCase

from tests.netns import HERE, Lab, skip_reason
from tests.pki import ADDR_A, ADDR_B, IP_A, IP_B, Identity, pki

PAYLOAD = "WOW-SECRET-INNER-PAYLOAD"
COUNT = 20
PORT = 4790


def install(state_dir: str, ident: Identity) -> None:
    os.makedirs(state_dir, exist_ok=True)
    files = {
        "host.pem": ident.cert.public_bytes(serialization.Encoding.PEM),
        "host.key": ident.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        "ca.pem": pki().ca.cert.public_bytes(serialization.Encoding.PEM),
    }
    for name, data in files.items():
        with open(os.path.join(state_dir, name), "wb") as f:
            f.write(data)


def udp_payloads(pcap: bytes, src: str, dport: int) -> list[bytes]:
    """UDP payloads from C{src} to port C{dport} in a classic pcap of Ethernet frames."""
    magic = pcap[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    out: list[bytes] = []
    offset = 24
    src_bytes = bytes(int(x) for x in src.split("."))
    while offset + 16 <= len(pcap):
        _, _, incl, _ = struct.unpack(endian + "IIII", pcap[offset : offset + 16])
        frame = pcap[offset + 16 : offset + 16 + incl]
        offset += 16 + incl
        if len(frame) < 14 + 20 + 8 or frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] != 17 or ip[12:16] != src_bytes:
            continue
        udp = ip[ihl:]
        if struct.unpack("!H", udp[2:4])[0] != dport:
            continue
        length = struct.unpack("!H", udp[4:6])[0]
        out.append(bytes(udp[8:length]))
    return out


class UnderlayTests(TestCase):
    timeout = 90

    def setUp(self) -> None:
        reason = skip_reason("tcpdump")
        if reason:
            raise SkipTest(reason)

    def last_stats(self, lab: Lab, proc: object) -> dict[str, dict[str, float]]:
        lines = [ln for ln in lab.log_text(proc).splitlines() if ln.startswith("STATS ")]  # type: ignore[arg-type]
        return json.loads(lines[-1][6:]) if lines else {}

    def test_no_plaintext_and_replays_rejected(self) -> None:
        lab = Lab(tag="s")
        self.addCleanup(lab.teardown)
        n1, n2 = lab.netns("n1"), lab.netns("n2")
        dev_a, dev_b = lab.veth(n1, n2, "v")
        lab.addr(n1, dev_a, "10.201.0.1/24")
        lab.addr(n2, dev_b, "10.201.0.2/24")
        state_a, state_b = (os.path.join(lab.workdir, n) for n in ("a", "b"))
        install(state_a, pki().a)
        install(state_b, pki().b)
        pcap_path = os.path.join(lab.workdir, "underlay.pcap")
        dump = lab.spawn(
            n1,
            [
                "tcpdump",
                "-i",
                dev_a,
                "-n",
                "-U",
                "--immediate-mode",
                "-s",
                "0",
                "-w",
                pcap_path,
                "udp",
            ],
            "tcpdump",
        )
        lab.wait_for_log(dump, "listening on")
        peer = [sys.executable, os.path.join(HERE, "tests", "security_peer.py")]
        receiver = lab.spawn(
            n2,
            peer + ["--state", state_b, "--me", ADDR_B.hex(), "--bind", f"10.201.0.2:{PORT}",
                    "--peer", f"{ADDR_A.hex()}@10.201.0.1:{PORT}", "--peer-vip", IP_A],
            "receiver",
        )  # fmt: skip
        lab.wait_for_log(receiver, "READY")
        sender = lab.spawn(
            n1,
            peer + ["--state", state_a, "--me", ADDR_A.hex(), "--bind", f"10.201.0.1:{PORT}",
                    "--peer", f"{ADDR_B.hex()}@10.201.0.2:{PORT}", "--peer-vip", IP_B,
                    "--send", str(COUNT), "--payload", PAYLOAD],
            "sender",
        )  # fmt: skip
        lab.wait_for_log(sender, f"SENT {COUNT}")
        lab.wait_for_log(receiver, f"GOT {PAYLOAD}-{COUNT - 1}")
        lab.stop(dump)
        with open(pcap_path, "rb") as f:
            pcap = f.read()

        # The inner payload never crossed the underlay in clear...
        self.assertNotIn(PAYLOAD.encode(), pcap)
        captured = udp_payloads(pcap, "10.201.0.1", PORT)
        # ...although it did cross: a handshake and COUNT data datagrams.
        self.assertGreaterEqual(len(captured), COUNT + 3)
        got = [ln for ln in lab.log_text(receiver).splitlines() if ln.startswith("GOT ")]
        self.assertEqual(got, [f"GOT {PAYLOAD}-{i}" for i in range(COUNT)])

        # Replay every captured datagram from A's address (another port).
        script = (
            "import socket,sys,json\n"
            "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            "s.bind(('10.201.0.1',0))\n"
            f"for h in json.load(sys.stdin): s.sendto(bytes.fromhex(h),('10.201.0.2',{PORT}))\n"
        )
        lab.ns_run(
            n1, sys.executable, "-c", script, input=json.dumps([c.hex() for c in captured]).encode()
        )

        def replays_counted() -> bool:
            drops = self.last_stats(lab, receiver).get("security_records_dropped", {})
            return drops.get("reason=replay", 0) >= COUNT

        lab.wait_until(replays_counted, timeout=20, what="replays counted")
        drops = self.last_stats(lab, receiver)["security_records_dropped"]
        self.assertEqual(drops.get("reason=replayed-hello"), 1)
        got = [ln for ln in lab.log_text(receiver).splitlines() if ln.startswith("GOT ")]
        self.assertEqual(len(got), COUNT)  # nothing delivered twice
        self.assertEqual(
            self.last_stats(lab, receiver)["security_handshakes"],
            {"outcome=established,role=server": 1},
        )
