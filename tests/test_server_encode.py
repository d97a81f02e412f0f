"""The fast CLIENT_DATA encoder equals the codec's encoding (S39-S41), for any binding."""

from __future__ import annotations

from ipaddress import IPv6Address, IPv6Network

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from bulklq.model import AddressLease, Binding, PrefixLease
from bulklq.server import ClientDataEncoder, client_data
from bulklq.server._encode import INFINITY, frame
from bulklq.testing import make_relay_data
from bulklq.wire import Duid, MessageType, RemoteId, UnknownOption, decode_message

NOW = 1_700_000_000
lifetimes = st.one_of(st.integers(0, 10_000), st.just(INFINITY), st.integers(0, INFINITY))
addresses = st.builds(
    AddressLease,
    st.integers(0, 2**128 - 1).map(IPv6Address),
    lifetimes,
    lifetimes,
)
prefixes = st.builds(
    PrefixLease,
    st.tuples(st.integers(0, 2**128 - 1), st.integers(0, 128)).map(
        lambda t: IPv6Network((t[0], t[1]), strict=False)
    ),
    lifetimes,
    lifetimes,
)
duids = st.binary(min_size=3, max_size=130).map(lambda raw: Duid(b"\xff\xff" + raw[2:]))
relay = st.one_of(
    st.none(),
    st.builds(
        lambda n: make_relay_data(remote_id=RemoteId(n, b"x" * (n % 7 + 1))),
        st.integers(0, 2**32 - 1),
    ),
)
bindings = st.builds(
    Binding,
    duids,
    st.just("link-1"),
    st.integers(NOW - 20_000, NOW + 10),
    st.lists(addresses, max_size=3).map(tuple),
    st.lists(prefixes, max_size=3).map(tuple),
    relay,
    options=st.lists(
        st.builds(UnknownOption, st.sampled_from([39, 47, 48, 1, 16]), st.binary(max_size=8)),
        max_size=3,
    ).map(tuple),
)
requested = st.frozensets(st.sampled_from([39, 47, 48, 1, 46, 16]), max_size=4)


class EncoderTests(SynchronousTestCase):
    """ClientDataEncoder against the reference built from option values."""

    @settings(max_examples=300, deadline=None)
    @given(bindings, requested, st.integers(0, 0xFFFFFF))
    def test_equals_codec(self, binding: Binding, asked: frozenset[int], xid: int) -> None:
        """S39-S41: the fast frame equals the generic encoding, at any time and ORO; both
        skip a binding with no lease left."""
        expected = client_data(binding, NOW, asked)
        framed = ClientDataEncoder(asked).encode_frame(binding, NOW, (17 << 24) | xid)
        if expected is None:
            self.assertIsNone(framed)
            return
        self.assertEqual(framed, frame(MessageType.LEASEQUERY_DATA, xid, [expected.encode()]))
        assert framed is not None
        decoded = decode_message(framed[2:])
        self.assertEqual(decoded.options, (expected,))  # type: ignore[union-attr]

    def test_common_case(self) -> None:
        """S40, S41: one address, empty ORO (the inlined path): remaining lifetimes and
        CLT_TIME from now - cltt."""
        binding = Binding(
            Duid.ll(1, b"\x02\x00\x00\x00\x0a\xbc"),
            "link-1",
            NOW - 100,
            (AddressLease(IPv6Address("2001:db8:1::1"), 50, 7200),),
        )
        data = ClientDataEncoder().encode(binding, NOW)
        expected = client_data(binding, NOW)
        assert expected is not None
        self.assertEqual(data, expected.encode_data())
        self.assertIn(b"\x00\x2e\x00\x04\x00\x00\x00\x64", data or b"")
        self.assertIn((0).to_bytes(4, "big") + (7100).to_bytes(4, "big"), data or b"")

    @settings(max_examples=300, deadline=None)
    @given(
        duids,
        st.integers(NOW - 20_000, NOW + 10),
        addresses,
        prefixes,
        st.integers(0, 0xFFFFFF),
    )
    def test_address_and_prefix_equals_codec(
        self,
        duid: Duid,
        cltt: int,
        address: AddressLease,
        prefix: PrefixLease,
        xid: int,
    ) -> None:
        """S39-S41: a binding of one address and one delegated prefix (a typical CPE) with
        an empty ORO, the encoder's short path: equal to the generic encoding at any time
        and lifetimes (infinite, expired, not yet started)."""
        binding = Binding(duid, "link-1", cltt, (address,), (prefix,))
        expected = client_data(binding, NOW)
        framed = ClientDataEncoder().encode_frame(binding, NOW, (17 << 24) | xid)
        if expected is None:
            self.assertIsNone(framed)
            return
        self.assertEqual(framed, frame(MessageType.LEASEQUERY_DATA, xid, [expected.encode()]))

    def test_address_and_prefix(self) -> None:
        """S40, S41: one address and one /56, empty ORO: both leases' remaining lifetimes,
        the prefix length and network, and CLT_TIME from now - cltt."""
        binding = Binding(
            Duid.ll(1, b"\x02\x00\x00\x00\x0a\xbc"),
            "link-1",
            NOW - 100,
            (AddressLease(IPv6Address("2001:db8:1::1"), 50, 7200),),
            (PrefixLease(IPv6Network("2001:db8:100::/56"), 3600, 7200),),
        )
        data = ClientDataEncoder().encode(binding, NOW)
        expected = client_data(binding, NOW)
        assert expected is not None
        self.assertEqual(data, expected.encode_data())
        iaprefix = (
            b"\x00\x1a\x00\x19"
            + (3500).to_bytes(4, "big")
            + (7100).to_bytes(4, "big")
            + b"\x38"
            + IPv6Network("2001:db8:100::/56").network_address.packed
        )
        self.assertIn(iaprefix, data or b"")
