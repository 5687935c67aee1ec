"""
The virtio-net header codec, its compact wire form, its validation, and the
software checksum / segmentation fallbacks -- checked against an independent
word-by-word RFC 1071 checksum.
"""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from wow.datapath import vnet
from wow.datapath.testing import tcp_frame, udp_frame


def ref_sum(data: bytes) -> int:
    """RFC 1071 with an end-around carry, one 16-bit word at a time."""
    if len(data) % 2:
        data += b"\0"
    s = 0
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return s


def l4_valid(frame: bytes) -> bool:
    """Whether the TCP/UDP checksum of a plain IPv4/IPv6 frame verifies."""
    etype = struct.unpack_from("!H", frame, 12)[0]
    if etype == vnet.ETH_P_IP:
        ihl = (frame[14] & 15) * 4
        proto, addrs, l4 = frame[23], frame[26:34], 14 + ihl
    else:
        proto, addrs, l4 = frame[20], frame[22:54], 54
    seg = frame[l4:]
    pseudo = addrs + struct.pack("!IxxxB", len(seg), proto)
    return ref_sum(pseudo + seg) == 0xFFFF


def ip4_valid(frame: bytes) -> bool:
    ihl = (frame[14] & 15) * 4
    return ref_sum(frame[14:14 + ihl]) == 0xFFFF


headers = st.builds(
    vnet.VnetHeader, *(st.integers(0, 255),) * 2, *(st.integers(0, 0xFFFF),) * 5)


class HeaderCodecTests(SynchronousTestCase):
    @given(headers)
    def test_round_trip(self, h: vnet.VnetHeader) -> None:
        raw = h.pack()
        self.assertEqual(len(raw), vnet.VNET_HDR_LEN)
        self.assertEqual(vnet.parse(raw + b"frame"), h)

    def test_little_endian_layout(self) -> None:
        h = vnet.VnetHeader(1, 4, 0x0102, 0x0304, 0x0506, 0x0708, 0x090A)
        self.assertEqual(h.pack(), bytes.fromhex("0104 0201 0403 0605 0807 0a09"))

    def test_short(self) -> None:
        with self.assertRaises(vnet.VnetError) as e:
            vnet.parse(b"\0" * 11)
        self.assertEqual(e.exception.reason, "short-vnet-header")

    @given(st.binary(max_size=20))
    def test_parse_arbitrary(self, data: bytes) -> None:
        try:
            vnet.parse(data)
        except vnet.VnetError:
            self.assertLess(len(data), 12)


u16 = st.integers(0, 0xFFFF)
wire_headers = st.one_of(
    st.sampled_from([0, vnet.F_DATA_VALID]).map(lambda f: vnet.VnetHeader(f)),
    st.tuples(st.sampled_from([1, 3]), u16, u16).map(
        lambda t: vnet.VnetHeader(t[0], 0, 0, 0, t[1], t[2])),
    st.tuples(st.integers(0, 3), st.integers(1, 255), u16, u16, u16, u16).map(
        lambda t: vnet.VnetHeader(*t)),
)


class WireFormTests(SynchronousTestCase):
    @given(wire_headers, st.binary(max_size=8))
    def test_round_trip(self, h: vnet.VnetHeader, rest: bytes) -> None:
        w = vnet.to_wire(h)
        self.assertEqual(vnet.from_wire(w + rest), (h, len(w)))
        self.assertEqual(vnet.wire_from_raw(h.pack()), w)

    def test_sizes(self) -> None:
        self.assertEqual(vnet.to_wire(vnet.PLAIN), b"\0")
        h, _ = tcp_frame(b"x" * 100)
        self.assertEqual(len(vnet.to_wire(h)), 5)
        h, _ = tcp_frame(b"x" * 3000, mss=1000)
        self.assertEqual(len(vnet.to_wire(h)), 10)

    @given(st.binary(max_size=16))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        try:
            h, used = vnet.from_wire(data)
        except vnet.VnetError as e:
            self.assertIn(e.reason, {"short-wire-header", "bad-wire-flags"})
        else:
            self.assertLessEqual(used, len(data))
            self.assertEqual(vnet.to_wire(h), data[:used])

    def test_rejects_gso_without_csum_fields(self) -> None:
        with self.assertRaises(vnet.VnetError):
            vnet.from_wire(b"\x80" + b"\0" * 9)


class ChecksumTests(SynchronousTestCase):
    @given(st.binary(max_size=3000))
    def test_ones_sum_matches_reference(self, data: bytes) -> None:
        self.assertEqual(vnet.ones_sum(data) % 0xFFFF, ref_sum(data) % 0xFFFF)
        if any(data):
            self.assertNotEqual(vnet.ones_sum(data), 0)

    @given(st.binary(max_size=2000), st.booleans())
    def test_finish_tcp(self, payload: bytes, v6: bool) -> None:
        h, frame = tcp_frame(payload, v6=v6)
        self.assertFalse(l4_valid(frame) and any(payload))
        done = vnet.finish_checksum(h, frame)
        self.assertTrue(l4_valid(done))
        self.assertEqual(len(done), len(frame))

    @given(st.binary(max_size=2000), st.booleans())
    def test_finish_udp(self, payload: bytes, v6: bool) -> None:
        h, frame = udp_frame(payload, v6=v6)
        done = vnet.finish_checksum(h, frame)
        self.assertTrue(l4_valid(done))
        self.assertNotEqual(done[h.csum_start + 6:h.csum_start + 8], b"\0\0")

    def test_finish_nothing_to_do(self) -> None:
        self.assertEqual(vnet.finish_checksum(vnet.PLAIN, b"abc"), b"abc")

    def test_finish_out_of_frame(self) -> None:
        with self.assertRaises(vnet.VnetError):
            vnet.finish_checksum(vnet.VnetHeader(1, 0, 0, 0, 30, 16), b"\0" * 40)


class SegmentTests(SynchronousTestCase):
    @given(st.integers(0, 20000), st.integers(48, 3000), st.booleans(), st.booleans(),
           st.sampled_from([0x10, 0x18, 0x19, 0x98]), st.integers(0, 0xFFFFFFFF),
           st.integers(0, 0xFFFF))
    def test_tcp(self, size: int, mss: int, v6: bool, ecn: bool, flags: int, seq: int,
                 ip_id: int) -> None:
        payload = bytes(i * 7 % 251 for i in range(size))
        h, frame = tcp_frame(payload, v6=v6, mss=mss, flags=flags, seq=seq, ip_id=ip_id,
                             ecn=ecn)
        segs = vnet.segment(h, frame)
        l4 = h.csum_start
        self.assertEqual(len(segs), max(1, -(-size // mss)))
        got = b""
        for i, s in enumerate(segs):
            data = s[l4 + 20:]
            self.assertLessEqual(len(data), mss)
            self.assertTrue(l4_valid(s), f"segment {i}")
            self.assertEqual(struct.unpack_from("!I", s, l4 + 4)[0], (seq + len(got)) % 2**32)
            f = s[l4 + 13]
            last, first = i == len(segs) - 1, i == 0
            self.assertEqual(bool(f & 0x09), bool(flags & 0x09) and last)
            self.assertEqual(bool(f & 0x80), bool(flags & 0x80) and first)
            if v6:
                self.assertEqual(struct.unpack_from("!H", s, 18)[0], len(s) - 54)
            else:
                self.assertTrue(ip4_valid(s))
                self.assertEqual(struct.unpack_from("!H", s, 16)[0], len(s) - 14)
                self.assertEqual(struct.unpack_from("!H", s, 18)[0], (ip_id + i) & 0xFFFF)
            got += data
        self.assertEqual(got, payload)

    @given(st.integers(1, 9000), st.integers(48, 1500), st.booleans())
    def test_udp(self, size: int, mss: int, v6: bool) -> None:
        payload = bytes(i % 256 for i in range(size))
        h, frame = udp_frame(payload, v6=v6, mss=mss)
        segs = vnet.segment(h, frame)
        got = b""
        for s in segs:
            self.assertTrue(l4_valid(s))
            ulen = struct.unpack_from("!H", s, h.csum_start + 4)[0]
            self.assertEqual(ulen, len(s) - h.csum_start)
            got += s[h.csum_start + 8:]
        self.assertEqual(got, payload)

    def test_plain_frames(self) -> None:
        self.assertEqual(vnet.plain_frames(vnet.PLAIN, b"x" * 20), [b"x" * 20])
        h, frame = tcp_frame(b"hello")
        [done] = vnet.plain_frames(h, frame)
        self.assertTrue(l4_valid(done))
        h, frame = tcp_frame(b"y" * 5000, mss=1000)
        self.assertEqual(len(vnet.plain_frames(h, frame)), 5)


class CheckTests(SynchronousTestCase):
    def reason(self, h: vnet.VnetHeader, frame: bytes) -> str | None:
        try:
            vnet.check(h, frame)
        except vnet.VnetError as e:
            return e.reason
        return None

    def test_accepts_kernel_headers(self) -> None:
        for v6 in (False, True):
            for mss in (0, 1000):
                self.assertIsNone(self.reason(*tcp_frame(b"z" * 3000, v6=v6, mss=mss)))
                self.assertIsNone(self.reason(*udp_frame(b"z" * 3000, v6=v6, mss=mss)))
        self.assertIsNone(self.reason(vnet.PLAIN, b"\0" * 60))

    def test_rejections(self) -> None:
        h, f = tcp_frame(b"z" * 3000, mss=1000)
        h6, f6 = tcp_frame(b"z" * 3000, mss=1000, v6=True)
        hu, fu = udp_frame(b"z" * 3000, mss=1000)
        cases = {
            "bad-flags": (h._replace(flags=4), f),
            "short-frame": (vnet.PLAIN, b"\0" * 10),
            "csum-out-of-frame": (h._replace(csum_start=len(f)), f),
            "gso-size-without-gso": (vnet.PLAIN._replace(gso_size=5), f),
            "unsupported-gso-type": (h._replace(gso_type=vnet.GSO_UDP), f),
            "ecn-on-udp": (hu._replace(gso_type=vnet.GSO_UDP_L4 | vnet.GSO_ECN), fu),
            "gso-without-csum": (h._replace(flags=0), f),
            "bad-gso-size": (h._replace(gso_size=1), f),
            "hdr-len-out-of-frame": (h._replace(hdr_len=len(f) + 1), f),
        }
        for want, (hh, ff) in cases.items():
            self.assertEqual(self.reason(hh, ff), want, want)
        for hh, ff in [(h._replace(gso_type=vnet.GSO_TCPV6), f),
                       (h6._replace(gso_type=vnet.GSO_TCPV4), f6),
                       (h._replace(gso_type=vnet.GSO_UDP_L4, csum_offset=6), f),
                       (hu._replace(gso_type=vnet.GSO_TCPV4, csum_offset=16), fu),
                       (h._replace(csum_start=h.csum_start + 4), f)]:
            self.assertEqual(self.reason(hh, ff), "gso-type-mismatch")

    @given(headers, st.binary(max_size=120))
    def test_arbitrary(self, h: vnet.VnetHeader, frame: bytes) -> None:
        try:
            vnet.check(h, frame)
        except vnet.VnetError:
            return
        if h.gso_type:
            # Whatever passes can be segmented in software without error.
            try:
                vnet.segment(h, frame)
            except vnet.VnetError:
                pass

    @given(headers, st.binary(min_size=14, max_size=200))
    def test_segment_arbitrary_never_crashes(self, h: vnet.VnetHeader, frame: bytes) -> None:
        try:
            vnet.plain_frames(h, frame)
        except vnet.VnetError:
            pass
