"""
A point-to-point TAP <-> UDP forwarder built from the data-path pieces.

What this is: a B{test fixture and measuring tool for the data path alone}
-- one TAP, one fixed peer address, no overlay, no handshake, no security,
no routing.  It proves (in C{tests/test_datapath_netns.py}) and measures (in
C{bench/throughput.py}, row C{wow_datapath}) that super-frames read from an
offloading TAP (L{wow.datapath.tapoffload}), carried as numbered pieces
(L{wow.datapath.pieces}) with UDP GSO/GRO (L{wow.datapath.udpgso}) and
written back with their virtio-net header (L{wow.datapath.vnet}) move
unmodified Ethernet between two hosts.  It is I{not} the overlay: the IP
router reuses L{PointToPoint}'s two halves (L{PointToPoint.frame_to_wire},
L{PointToPoint.deliver}) with the overlay's links and headers in place of
the fixed peer and the dummy prefix.

On the wire each datagram is C{prefix} (default 44 zero bytes, standing in
for the overlay header so the measured packet sizes are honest) + the 8-byte
piece header + a chunk of the data message; a data message is the compact
virtio-net header (L{wow.datapath.vnet.to_wire}) followed by the frame.

Run: C{python -m wow.datapath.forwarder --tap T --local IP:PORT --peer
IP:PORT [--address CIDR] [--mtu 1400]}; prints C{forwarder ready} when the
TAP is up and a C{stats {...}} JSON line when stopped with SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wow.datapath import pieces as P
from wow.datapath import udpgso, vnet
from wow.datapath.tapoffload import OffloadTap, TapError
from wow.metrics import Counters

DROPPED = "datapath_frames_dropped"


def piece_payload_for(underlay_mtu: int, ipv6: bool, prefix_len: int) -> int:
    """Bytes of data message per piece so a datagram fits the underlay MTU unfragmented."""
    return underlay_mtu - (40 if ipv6 else 20) - 8 - prefix_len - P.PIECE_HDR_LEN


class PointToPoint:
    """
    The forwarding logic between one TAP and one UDP peer, free of the
    reactor: L{from_tap} and L{from_udp} are called when the descriptors are
    readable; each drains what is waiting and moves it in as few calls as the
    kernel allows.
    """

    log = Logger()

    def __init__(self, tap: OffloadTap, udp: udpgso.GsoUdp, peer: Any,
                 reassembler: P.Reassembler, counters: Counters, *,
                 piece_payload: int, prefix: bytes = b"") -> None:
        self.tap = tap
        self.udp = udp
        self.peer = peer
        self.reassembler = reassembler
        self.counters = counters
        self.piece_payload = piece_payload
        self.prefix = prefix
        self.msg_id = 0
        self.frames_out = 0
        self.frames_in = 0
        self.superframes_out = 0

    # -- TAP -> peer --------------------------------------------------------

    def frame_to_wire(self, buf: bytes) -> tuple[bytearray, int]:
        """The datagrams carrying one buffer read from the TAP: (back-to-back, size of each)."""
        vlen = self.tap.vnet_hdr_len
        if vlen:
            message = vnet.wire_from_raw(buf) + memoryview(buf)[vlen:]
        else:
            message = vnet.WIRE_PLAIN + buf
        self.msg_id = (self.msg_id + 1) & 0xFFFFFFFF
        return P.pack(self.msg_id, message, self.piece_payload, self.prefix)

    def from_tap(self) -> None:
        send_buffer, peer = self.udp.send_buffer, self.peer
        for buf in self.tap.read_batch():
            out, seg = self.frame_to_wire(buf)
            if len(out) > seg:
                self.superframes_out += 1
            send_buffer(out, seg, peer)
            self.frames_out += 1

    # -- peer -> TAP --------------------------------------------------------

    def from_udp(self) -> None:
        add, peer, plen = self.reassembler.add, self.peer, len(self.prefix)
        whole_run = P.whole_run
        host, port = peer[0], peer[1]
        for data, seg, addr in self.udp.recv_batch():
            # IPv6 addresses arrive as 4-tuples (with flow info and scope).
            if addr[1] != port or addr[0] != host:
                self.counters.inc(DROPPED, reason="unknown-source")
                continue
            if seg:
                # Fast path: a GRO burst that is exactly one GSO send.
                run = whole_run(data, seg, plen)
                if run is not None:
                    count, end = run
                    self.reassembler.completed_whole()
                    self.deliver_parts(P.run_chunks(data, seg, plen, count, end))
                    if end == len(data):
                        continue
                    data = data[end:]
            for d in udpgso.split(data, seg):
                if plen:
                    if len(d) < plen:
                        self.counters.inc(DROPPED, reason="short-datagram")
                        continue
                    d = d[plen:]
                message = add(peer, d)
                if message is not None:
                    self.deliver_parts([memoryview(message)])

    def deliver(self, message: bytes) -> None:
        """Write one reassembled data message to the TAP, checking what it claims."""
        self.deliver_parts([memoryview(message)])

    def deliver_parts(self, parts: list[bytes | memoryview]) -> None:
        """
        Write one data message given as consecutive parts (pieces' chunks,
        never joined: the TAP write gathers them) to the TAP.
        """
        try:
            h, used = vnet.from_wire(parts[0])
            parts[0] = parts[0][used:]
            if self.tap.vnet_hdr_len:
                if h.flags or h.gso_type:
                    vnet.check(h, parts[0], sum(map(len, parts)) if len(parts) > 1 else None)
                    parts.insert(0, h.pack())
                else:
                    parts.insert(0, vnet.PLAIN_BYTES)
                self.tap.writev(parts)
            else:
                for f in vnet.plain_frames(h, b"".join(parts)):
                    self.tap.write(f)
        except vnet.VnetError as e:
            self.counters.inc(DROPPED, reason=e.reason)
            return
        self.frames_in += 1

    def stats(self) -> dict[str, Any]:
        return {
            "frames_out": self.frames_out,
            "superframes_out": self.superframes_out,
            "frames_in": self.frames_in,
            "multi_piece_messages_in": self.reassembler.completed_multi,
            "sendmsg_calls": self.udp.sendmsg_calls,
            "datagrams_sent": self.udp.datagrams_sent,
            "gso": self.udp.gso,
            "gro": self.udp.gro,
            "vnet_hdr": bool(self.tap.vnet_hdr_len),
            "offloads": self.tap.offloads,
            "counters": self.counters.snapshot(),
        }


@implementer(IReadDescriptor)
class _Reader:
    """Adapts a descriptor plus a drain function to C{reactor.addReader}."""

    def __init__(self, fd: int, on_readable: Any, name: str) -> None:
        self._fd = fd
        self._on_readable = on_readable
        self._name = name

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> None:
        self._on_readable()

    def logPrefix(self) -> str:
        return self._name

    def connectionLost(self, reason: Failure) -> None:
        pass


def _hostport(s: str) -> tuple[str, int]:
    host, _, port = s.rpartition(":")
    return host.strip("[]"), int(port)


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True)


def run(args: argparse.Namespace, reactor: Any) -> PointToPoint:
    """Open everything and register with C{reactor}; returns the running forwarder."""
    counters = Counters()
    tap = OffloadTap(args.tap, counters, vnet_hdr=not args.no_offload)
    tap.open()
    local, peer = _hostport(args.local), _hostport(args.peer)
    sock = udpgso.open_udp(*local)
    udp = udpgso.GsoUdp(sock, counters, gso=None if not args.no_offload else False,
                        gro=not args.no_offload)
    prefix = b"\0" * args.prefix_bytes
    fwd = PointToPoint(
        tap, udp, peer, P.Reassembler(reactor, counters), counters,
        piece_payload=piece_payload_for(args.underlay_mtu, ":" in local[0], len(prefix)),
        prefix=prefix)
    if args.mtu:
        _ip("link", "set", "dev", tap.name, "mtu", str(args.mtu))
    if args.address:
        _ip("addr", "add", args.address, "dev", tap.name)
    _ip("link", "set", "dev", tap.name, "up")
    reactor.addReader(_Reader(tap.fileno(), fwd.from_tap, "tap"))
    reactor.addReader(_Reader(udp.fileno(), fwd.from_udp, "udp"))
    sweep = LoopingCall(fwd.reassembler.expire)
    sweep.clock = reactor
    sweep.start(1.0, now=False)
    reactor.addSystemEventTrigger(
        "before", "shutdown", lambda: print("stats " + json.dumps(fwd.stats()), flush=True))
    return fwd


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    ap.add_argument("--tap", required=True, help="TAP device name")
    ap.add_argument("--local", required=True, help="IP:PORT to bind (underlay)")
    ap.add_argument("--peer", required=True, help="IP:PORT of the other forwarder")
    ap.add_argument("--address", help="CIDR to put on the TAP")
    ap.add_argument("--mtu", type=int, default=1400, help="TAP MTU (default 1400)")
    ap.add_argument("--underlay-mtu", type=int, default=1500)
    ap.add_argument("--prefix-bytes", type=int, default=44,
                    help="dummy bytes before each piece, standing in for the overlay header")
    ap.add_argument("--no-offload", action="store_true",
                    help="plain TAP and one datagram per call (the per-packet path)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from twisted.internet import epollreactor

    if "twisted.internet.reactor" not in sys.modules:
        epollreactor.install()  # type: ignore[no-untyped-call]
    from twisted.internet import reactor

    from wow.util.fatal import fatal

    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        fwd = run(args, reactor)
    except (TapError, OSError, subprocess.CalledProcessError) as e:
        fatal("wow-datapath-forwarder", str(e), 1)
    print(f"forwarder ready tap={fwd.tap.name} vnet_hdr={fwd.tap.vnet_hdr_len} "
          f"offloads={fwd.tap.offloads:#x} gso={fwd.udp.gso} gro={fwd.udp.gro}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
