"""The overlay wire format: round trips, and garbage never raises anything but WireError."""

from __future__ import annotations

import msgpack
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from wow.overlay import address as A
from wow.overlay import wire as W
from wow.overlay.dht import record_from_wire

addresses = st.integers(min_value=0, max_value=A.MODULUS - 1)
routed_kinds = st.sampled_from([W.CTRL, W.DHT, W.DATA, *range(W.APP_FIRST, W.APP_LAST + 1)])
link_kinds = st.sampled_from(sorted(W.LINK_KINDS))
msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=40)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner,
                                                                 max_size=4),
    max_leaves=10,
)


class HeaderTests(SynchronousTestCase):
    def test_header_is_44_bytes(self) -> None:
        data = W.pack(W.EXACT, W.DATA, 64, 0, 1, 2, b"")
        self.assertEqual(len(data), 44)
        self.assertEqual(data[:4], bytes([1, (W.EXACT << 6) | W.DATA, 64, 0]))
        self.assertEqual(data[4:24], A.to_bytes(1))
        self.assertEqual(data[24:44], A.to_bytes(2))

    @given(st.sampled_from([W.EXACT, W.CLOSEST, W.CLOSEST_OTHER]), routed_kinds,
           st.integers(0, 255), st.integers(0, 255), addresses, addresses,
           st.binary(max_size=W.MAX_PAYLOAD))
    def test_routed_round_trip(self, mode: int, kind: int, ttl: int, hops: int, src: int,
                               dst: int, payload: bytes) -> None:
        hdr, body = W.unpack(W.pack(mode, kind, ttl, hops, src, dst, payload))
        self.assertEqual((hdr.version, hdr.mode, hdr.kind, hdr.ttl, hdr.hops, hdr.src, hdr.dst),
                         (W.VERSION, mode, kind, ttl, hops, src, dst))
        self.assertEqual(body, payload)

    @given(link_kinds, addresses, addresses)
    def test_link_round_trip(self, kind: int, src: int, dst: int) -> None:
        hdr, _ = W.unpack(W.pack(W.LOCAL, kind, 1, 0, src, dst, b"x"))
        self.assertEqual((hdr.mode, hdr.kind), (W.LOCAL, kind))

    @given(st.binary(max_size=1600))
    def test_garbage_raises_only_wire_error(self, data: bytes) -> None:
        try:
            W.unpack(data)
        except W.WireError as e:
            self.assertIn(e.reason, {"truncated", "oversized", "bad-version", "bad-type"})

    def test_reasons(self) -> None:
        good = W.pack(W.EXACT, W.CTRL, 8, 0, 1, 2, b"")
        for data, reason in [
            (good[:43], "truncated"),
            (good + b"x" * W.MAX_DATAGRAM, "oversized"),
            (b"\x02" + good[1:], "bad-version"),
            (good[:1] + bytes([W.PING | (W.EXACT << 6)]) + good[2:], "bad-type"),
            (good[:1] + bytes([W.CTRL]) + good[2:], "bad-type"),
        ]:
            with self.assertRaises(W.WireError) as cm:
                W.unpack(data)
            self.assertEqual(cm.exception.reason, reason)

    def test_rewrite_hop(self) -> None:
        data = W.pack(W.CLOSEST, W.DHT, 9, 1, 5, 6, b"p")
        hdr, body = W.unpack(W.rewrite_hop(data, 8, 2))
        self.assertEqual((hdr.ttl, hdr.hops, hdr.src, hdr.dst, body), (8, 2, 5, 6, b"p"))


class PayloadTests(SynchronousTestCase):
    @given(st.binary(max_size=300))
    def test_decode_garbage(self, data: bytes) -> None:
        try:
            self.assertIsInstance(W.decode(data), dict)
        except W.WireError as e:
            self.assertEqual(e.reason, "bad-payload")

    @given(st.dictionaries(st.text(max_size=4), msgpack_values, max_size=6))
    def test_decode_round_trip(self, obj: dict) -> None:  # type: ignore[type-arg]
        self.assertEqual(W.decode(W.encode(obj)), obj)

    def test_limits(self) -> None:
        with self.assertRaises(W.WireError):
            W.decode(msgpack.packb({"a": list(range(1000))}))
        with self.assertRaises(W.WireError):
            W.decode(msgpack.packb([1, 2]))

    @given(st.dictionaries(st.sampled_from(list("kvotixs")), msgpack_values, max_size=7))
    def test_record_decoder(self, m: dict) -> None:  # type: ignore[type-arg]
        try:
            record_from_wire(m, 1024)
        except W.WireError as e:
            self.assertEqual(e.reason, "bad-payload")

    @given(msgpack_values)
    def test_endpoint_decoder(self, v: object) -> None:
        try:
            ip, port = W.as_endpoint(v)
            self.assertTrue(0 < port < 65536)
        except W.WireError:
            pass


class DataHeaderTests(SynchronousTestCase):
    @given(st.integers(0, 2**32 - 1), st.integers(1, 2**16 - 1), st.binary(max_size=20))
    def test_round_trip(self, mid: int, count: int, piece: bytes) -> None:
        index = count - 1
        self.assertEqual(W.unpack_data_header(W.pack_data_header(mid, index, count) + piece),
                         (mid, index, count, piece))

    @given(st.binary(max_size=12))
    def test_garbage(self, data: bytes) -> None:
        try:
            W.unpack_data_header(data)
        except W.WireError as e:
            self.assertIn(e.reason, {"truncated", "bad-payload"})
