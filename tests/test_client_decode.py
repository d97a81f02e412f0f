"""
Tests for CLIENT_DATA decoding in L{bulklq.client}: the golden vectors through the requestor
protocol, the fast DATA path against the generic codec, and the merge rule (R16).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from ipaddress import IPv6Address, IPv6Network

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from bulklq.client import (
    INFINITE_LIFETIME,
    UNKNOWN_LINK,
    BindingMerger,
    BulkLeasequeryClientProtocol,
    LeaseQuery,
    QueryStatus,
    ServerResult,
    TooManyBindingsError,
    binding_from_client_data,
    fast_data_bindings,
    fast_single_binding,
    granted_lifetime,
    merge_bindings,
)
from bulklq.client._decode import fast_frames_at, fast_single_binding_at
from bulklq.model import AddressLease, Binding, PrefixLease
from bulklq.testing import make_binding, make_relay_data, make_relay_hop
from bulklq.wire import (
    ClientData,
    Duid,
    Message,
    MessageType,
    RemoteId,
    StatusCode,
    UnknownOption,
    WireError,
    decode_message,
)

from .fake_server import REQUESTOR_DUID, SERVER_DUID, client_data, data, frame
from .vectors import CLIENT_DUID as CLIENT
from .vectors import RELAY_DUID as RELAY
from .vectors import vector

NOW = 1_700_000_000


class _FixedXids(random.Random):
    """A random source whose 24-bit draws are the vectors' transaction-id."""

    def getrandbits(self, k: int) -> int:
        return 0x123456


class VectorTests(SynchronousTestCase):
    """The golden vectors, received by the requestor (query xid 0x123456)."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.protocol = BulkLeasequeryClientProtocol(REQUESTOR_DUID, self.clock, 300, _FixedXids())
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.results: list[ServerResult] = []
        self.protocol.query(LeaseQuery.by_relay_id(RELAY)).addCallback(self.results.append)

    def test_query_is_the_vector(self) -> None:
        """R1/R2: the requestor's QUERY_BY_RELAY_ID with relay data is the golden vector."""
        transport = StringTransport()
        protocol = BulkLeasequeryClientProtocol(REQUESTOR_DUID, self.clock, 300, _FixedXids())
        protocol.makeConnection(transport)
        protocol.query(LeaseQuery.by_relay_id(RELAY, relay_data=True))
        self.assertEqual(transport.value(), frame(vector("leasequery-by-relay-id")))
        protocol.connectionLost()
        self.protocol.connectionLost()

    def test_link_and_remote_id_queries(self) -> None:
        """R2: QUERY_BY_LINK_ADDRESS and QUERY_BY_REMOTE_ID encode as the golden vectors."""
        link = LeaseQuery.by_link_address(IPv6Address("2001:db8:1::1"))
        remote = LeaseQuery.by_remote_id(RemoteId(32473, b"circuit-7"))
        self.assertEqual(
            link.to_message(0x123458, REQUESTOR_DUID).encode(), vector("leasequery-by-link-address")
        )
        self.assertEqual(
            remote.to_message(0x123457, REQUESTOR_DUID).encode(), vector("leasequery-by-remote-id")
        )
        self.protocol.connectionLost()

    def test_reply_data_done(self) -> None:
        """
        R8/R9/R10/R16: REPLY with CLIENT_DATA, a DATA and an option-less DONE; the DATA
        vector reports the same client on the same link, so the two merge into one binding.
        """
        self.protocol.dataReceived(
            frame(vector("reply-with-client-data"), vector("data-second-client"))
        )
        self.assertEqual(self.results, [])
        self.protocol.dataReceived(frame(vector("done-empty")))
        (result,) = self.results
        self.assertEqual(result.status, QueryStatus.SUCCESS)
        self.assertEqual(result.server_duid, SERVER_DUID)
        self.assertEqual(result.received, 2)
        (binding,) = result.bindings
        self.assertEqual(binding.client_id, CLIENT)
        self.assertEqual(binding.cltt, NOW - 42)
        self.assertEqual(binding.link_id, "2001:db8:1::1")
        self.assertEqual(
            binding.addresses,
            (
                AddressLease(IPv6Address("2001:db8:1::1"), 3642, 7242),
                AddressLease(IPv6Address("2001:db8:1::2"), 3642, 7242),
            ),
        )
        self.assertEqual(
            binding.prefixes,
            (
                PrefixLease(IPv6Network("2001:db8:ff01::/56"), 3642, 7242),
                PrefixLease(IPv6Network("2001:db8:ff02::/56"), 3642, 7242),
            ),
        )
        self.assertEqual(binding.relay_ids, (RELAY,))
        self.assertEqual(binding.remote_ids, (RemoteId(32473, b"circuit-7"),))
        assert binding.relay_data is not None
        self.assertEqual(binding.relay_data.peer_address, IPv6Address("2001:db8:1::1"))

    def test_done_query_terminated(self) -> None:
        """R18: the QueryTerminated DONE vector ends the stream as terminated."""
        self.protocol.dataReceived(
            frame(vector("reply-with-client-data"), vector("done-query-terminated"))
        )
        (result,) = self.results
        self.assertEqual(result.status, QueryStatus.TERMINATED)
        self.assertEqual((result.status_code, result.status_message), (11, "aborted"))

    def test_reply_not_configured(self) -> None:
        """R10: the NotConfigured REPLY vector is a server error."""
        self.protocol.dataReceived(frame(vector("reply-not-configured")))
        (result,) = self.results
        self.assertEqual(result.status, QueryStatus.SERVER_ERROR)
        self.assertEqual(result.status_code, StatusCode.NotConfigured)
        self.assertEqual(result.status_message, "no such link")

    def test_invalid_vectors_discarded(self) -> None:
        """R7/R12: the invalid DATA vectors are discarded (counted), the stream goes on."""
        self.protocol.dataReceived(
            frame(
                vector("reply-with-client-data"),
                vector("invalid-clt-time-length"),
                vector("invalid-truncated-option"),
                vector("done-empty"),
            )
        )
        (result,) = self.results
        self.assertEqual(result.status, QueryStatus.SUCCESS)
        self.assertEqual((len(result.bindings), result.discarded), (1, 2))

    def test_fast_path_on_vectors(self) -> None:
        """The fast DATA path gives what the codec gives, and declines the invalid vectors."""
        octets = vector("data-second-client")
        self.assertEqual(fast_data_bindings(octets, NOW, None), _generic(octets, None))
        for name in ("invalid-clt-time-length", "invalid-truncated-option"):
            self.assertIsNone(fast_data_bindings(vector(name), NOW, None))
        self.protocol.connectionLost()


def _generic(octets: bytes, link: str | None) -> list[Binding] | None:
    message = decode_message(octets)
    assert isinstance(message, Message)
    found = [binding_from_client_data(item, NOW, link) for item in message.options_of(ClientData)]
    if not found or None in found:
        return None
    return found  # type: ignore[return-value]


_lifetimes = st.one_of(st.integers(0, 5000), st.just(INFINITE_LIFETIME), st.integers(0, 2**32 - 1))
_duids = st.one_of(
    st.binary(min_size=6, max_size=6).map(lambda mac: Duid.ll(1, mac)),
    st.binary(min_size=1, max_size=20).map(lambda ident: Duid.en(32473, ident)),
    st.binary(min_size=16, max_size=16).map(Duid.uuid),
)


@st.composite
def _client_datas(draw: st.DrawFn) -> ClientData:
    from bulklq.wire import IAAddress, IAPrefix

    options = draw(
        st.lists(
            st.one_of(
                st.builds(
                    IAAddress,
                    st.integers(0, 2**128 - 1).map(IPv6Address),
                    _lifetimes,
                    _lifetimes,
                ),
                st.builds(
                    IAPrefix,
                    _lifetimes,
                    _lifetimes,
                    st.integers(0, 128),
                    st.integers(0, 2**128 - 1).map(IPv6Address),
                ),
            ),
            max_size=4,
        )
    )
    clt = draw(st.integers(0, 2**32 - 1))
    relay = draw(
        st.sampled_from(
            [
                None,
                make_relay_data(relay_id=RELAY, remote_id=RemoteId(9, b"port")),
                make_relay_data(
                    make_relay_hop("::", "fe80::2"), make_relay_hop("fe80::1", "fe80::3")
                ),
            ]
        )
    )
    item = client_data(draw(_duids), clt_time=clt, relay_data=relay, extra=options)
    if draw(st.booleans()):
        item = ClientData(tuple(draw(st.permutations(item.options))))
    return item


@st.composite
def _server_ordered(draw: st.DrawFn) -> ClientData:
    """A CLIENT_DATA in the order servers send: CLIENTID, IAADDRs, IAPREFIXes, CLT_TIME."""
    from bulklq.wire import ClientId, CltTime, IAAddress, IAPrefix

    addresses = draw(
        st.lists(
            st.builds(
                IAAddress, st.integers(0, 2**128 - 1).map(IPv6Address), _lifetimes, _lifetimes
            ),
            max_size=4,
        )
    )
    prefixes = draw(
        st.lists(
            st.builds(
                IAPrefix,
                _lifetimes,
                _lifetimes,
                st.integers(0, 128),
                st.integers(0, 2**128 - 1).map(IPv6Address),
            ),
            max_size=4,
        )
    )
    clt = draw(st.one_of(st.integers(0, 100), st.integers(0, 2**32 - 1)))
    return ClientData(
        (ClientId(draw(_duids)), *addresses, *prefixes, CltTime(clt))  # type: ignore[arg-type]
    )


class FastPathTests(SynchronousTestCase):
    """The fast DATA decode is the generic codec's result, or declines."""

    @settings(max_examples=200, deadline=None)
    @given(_server_ordered(), st.sampled_from([None, "2001:db8::1"]))
    def test_single_binding_equal_to_codec(self, item: ClientData, link: str | None) -> None:
        """The one-unpack path agrees with the codec, and takes every usual shape."""
        octets = data(0x10203, item).encode()
        fast = fast_single_binding(octets, NOW, link)
        expected = _generic(octets, link)
        leases = len(item.options) - 2
        if fast is None:
            # Only shapes beyond 3 addresses or 3 prefixes, or none at all, are declined.
            self.assertTrue(
                leases == 0
                or sum(1 for o in item.options if o.code == 5) > 3
                or sum(1 for o in item.options if o.code == 26) > 3
            )
        else:
            self.assertEqual([fast], expected)
        self.assertEqual(fast_data_bindings(octets, NOW, link), expected)

    @settings(max_examples=150, deadline=None)
    @given(
        _server_ordered(),
        st.binary(max_size=40),
        st.binary(max_size=40),
        st.sampled_from([None, "2001:db8::1"]),
    )
    def test_single_binding_in_place(
        self, item: ClientData, before: bytes, after: bytes, link: str | None
    ) -> None:
        """
        Read in place inside a larger buffer (as the protocol reads a received segment),
        a frame gives what it gives on its own, whatever surrounds it; a window cut short
        or running past the frame declines or still agrees with the codec.
        """
        octets = data(0x10203, item).encode()
        buffer = before + octets + after
        start, end = len(before), len(before) + len(octets)
        self.assertEqual(
            fast_single_binding_at(buffer, start, end, NOW, link),
            fast_single_binding(octets, NOW, link),
        )
        for cut in (end - 1, end + min(len(after), 1)):
            if cut == end:
                continue
            window = buffer[start:cut]
            fast = fast_single_binding_at(buffer, start, cut, NOW, link)
            self.assertEqual(fast, fast_single_binding(window, NOW, link))
            if fast is not None:
                self.assertEqual([fast], _generic(window, link))

    @settings(max_examples=150, deadline=None)
    @given(_server_ordered(), st.data())
    def test_single_binding_mangled(self, item: ClientData, draw: st.DataObject) -> None:
        """Altered frames: the one-unpack path declines or agrees with the codec."""
        octets = bytearray(data(0x10203, item).encode())
        position = draw.draw(st.integers(4, len(octets) - 1))
        octets[position] = draw.draw(st.integers(0, 255))
        mangled = bytes(octets)
        fast = fast_single_binding(mangled, NOW, None)
        try:
            generic = _generic(mangled, None)
        except WireError:
            self.assertIsNone(fast)
            return
        if fast is not None:
            self.assertEqual([fast], generic)

    @settings(max_examples=150, deadline=None)
    @given(
        st.lists(_client_datas(), min_size=1, max_size=3), st.sampled_from([None, "2001:db8::1"])
    )
    def test_equal_to_codec(self, items: list[ClientData], link: str | None) -> None:
        """Fast and generic decodes agree on valid DATA messages."""
        octets = data(0x10203, *items).encode()
        self.assertEqual(fast_data_bindings(octets, NOW, link), _generic(octets, link))

    @settings(max_examples=150, deadline=None)
    @given(_client_datas(), st.data())
    def test_mangled(self, item: ClientData, draw: st.DataObject) -> None:
        """On truncated or altered frames the fast path declines or agrees with the codec."""
        octets = bytearray(data(0x10203, item).encode())
        position = draw.draw(st.integers(4, len(octets) - 1))
        if draw.draw(st.booleans()):
            octets[position] = draw.draw(st.integers(0, 255))
        else:
            del octets[position:]
        mangled = bytes(octets)
        fast = fast_data_bindings(mangled, NOW, None)
        try:
            generic = _generic(mangled, None)
        except WireError:
            self.assertIsNone(fast)
            return
        if fast is not None:
            self.assertEqual(fast, generic)

    def test_declines_other_options(self) -> None:
        """Unknown client options go through the codec (into binding.options)."""
        item = client_data(1, ["2001:db8::1"], extra=[UnknownOption(999, b"x")])
        octets = data(1, item).encode()
        self.assertIsNone(fast_data_bindings(octets, NOW, None))
        (binding,) = _generic(octets, None) or []
        self.assertEqual(binding.options, (UnknownOption(999, b"x"),))

    def test_link_choice(self) -> None:
        """
        Without a query link, the link is the innermost global relay link-address, else
        unknown.
        """
        two_hops = make_relay_data(
            make_relay_hop("2001:db8:ffff::1", "fe80::9"),
            make_relay_hop("2001:db8:5::1", "fe80::2"),
        )
        ldra = make_relay_data(
            make_relay_hop("2001:db8:6::1", "fe80::9"), make_relay_hop("::", "fe80::2")
        )
        cases = [(two_hops, "2001:db8:5::1"), (ldra, "2001:db8:6::1"), (None, UNKNOWN_LINK)]
        for relay, expected in cases:
            item = client_data(1, relay_data=relay)
            binding = binding_from_client_data(item, NOW, None)
            assert binding is not None
            self.assertEqual(binding.link_id, expected)

    def test_granted_lifetime(self) -> None:
        """Remaining lifetime plus CLT_TIME; infinity stays infinite, a sum never becomes it."""
        self.assertEqual(granted_lifetime(100, 20), 120)
        self.assertEqual(granted_lifetime(INFINITE_LIFETIME, 20), INFINITE_LIFETIME)
        self.assertEqual(granted_lifetime(INFINITE_LIFETIME - 5, 20), INFINITE_LIFETIME - 1)


class _Stream:
    """A L{FrameStream} and L{Pausable} for L{fast_frames_at}: keeps what it is given."""

    def __init__(self) -> None:
        self.bindings: list[Binding] = []
        self.consume: Callable[[Binding], object] | None = self.bindings.append
        self.received = 0
        self.paused = False


def _usual(message: Message, xid: int) -> bool:
    """
    Whether C{message} is a usual LEASEQUERY-DATA of C{xid}, by the codec's reading: one
    CLIENT_DATA holding CLIENTID, then 0-3 IAADDR, then 0-3 IAPREFIX (at least one lease,
    none with sub-options), then CLT_TIME, and nothing else.
    """
    from bulklq.wire import ClientId, CltTime, IAAddress, IAPrefix

    if message.msg_type != MessageType.LEASEQUERY_DATA or message.transaction_id != xid:
        return False
    if len(message.options) != 1 or not isinstance(message.options[0], ClientData):
        return False
    kinds = [type(option) for option in message.options[0].options]
    addresses, prefixes = kinds.count(IAAddress), kinds.count(IAPrefix)
    if any(option.options for option in message.options[0].options if hasattr(option, "options")):
        return False
    shape = [ClientId] + [IAAddress] * addresses + [IAPrefix] * prefixes + [CltTime]
    return kinds == shape and addresses <= 3 and prefixes <= 3 and addresses + prefixes > 0


@st.composite
def _frames(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """
    Length-prefixed messages as a requestor reads them: mostly usual DATA of xid 0x10203,
    some of another xid, some not usual (relay data, two CLIENT_DATA, an unknown option,
    an altered octet); the whole buffer may end in the middle of a frame.
    """
    messages = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["usual"] * 5 + ["xid", "other", "mangled"]))
        if kind == "usual":
            item = draw(
                _server_ordered().filter(
                    lambda item: (
                        3 <= len(item.options) <= 8
                        and sum(option.code == 5 for option in item.options) <= 3
                        and sum(option.code == 26 for option in item.options) <= 3
                    )
                )
            )
            messages.append(data(0x10203, item).encode())
        elif kind == "xid":
            messages.append(data(0x10204, draw(_server_ordered())).encode())
        elif kind == "other":
            messages.append(data(0x10203, *draw(st.lists(_client_datas(), max_size=2))).encode())
        else:
            octets = bytearray(data(0x10203, draw(_server_ordered())).encode())
            octets[draw(st.integers(4, len(octets) - 1))] = draw(st.integers(0, 255))
            messages.append(bytes(octets))
    buffer = b"".join(len(octets).to_bytes(2, "big") + octets for octets in messages)
    return buffer[: len(buffer) - draw(st.sampled_from([0, 0, 0, 1, 3]))], messages


class FrameRunTests(SynchronousTestCase):
    """L{fast_frames_at}: a run of usual frames of one stream, decoded in place."""

    @settings(max_examples=200, deadline=None)
    @given(_frames(), st.binary(max_size=5), st.sampled_from([UNKNOWN_LINK, "2001:db8::1"]))
    def test_run_is_the_codec(
        self, frames: tuple[bytes, list[bytes]], before: bytes, link: str
    ) -> None:
        """
        R7/R12/R13: the frames consumed are exactly the leading whole frames that are usual
        DATA of the stream's xid by the codec's reading, each giving the codec's binding;
        the offset returned is where the first other frame (or a cut one) starts.
        """
        buffer, messages = frames
        buffer = before + buffer
        expected: list[Binding] = []
        offset = len(before)
        for octets in messages:
            end = offset + 2 + len(octets)
            if end > len(buffer):
                break
            try:
                message = decode_message(octets)
            except WireError:
                break
            if not isinstance(message, Message) or not _usual(message, 0x10203):
                break
            found = binding_from_client_data(
                message.options[0],  # type: ignore[arg-type]
                NOW,
                None if link == UNKNOWN_LINK else link,
            )
            assert found is not None
            expected.append(found)
            offset = end
        stream = _Stream()
        after = fast_frames_at(
            buffer, len(before), len(buffer), 0x11010203, NOW, link, stream, stream
        )
        self.assertEqual(
            (after, stream.bindings, stream.received), (offset, expected, len(expected))
        )

    def test_same_size_other_duid_length(self) -> None:
        """
        Messages of one size whose DUIDs differ in length (and so their shapes) are all
        read: each size's layout is relearnt from the message that does not fit it.
        """
        short = client_data(Duid.ll(1, bytes(6)), ["2001:db8::1"], ["2001:db8:1::/56"])
        long = client_data(Duid.en(9, bytes(range(32))), [], ["2001:db8:2::/48"])
        messages = [data(0x10203, item).encode() for item in (short, long, long, short)]
        self.assertEqual({len(octets) for octets in messages}, {87})
        buffer = b"".join(len(octets).to_bytes(2, "big") + octets for octets in messages)
        for _ in range(2):
            stream = _Stream()
            after = fast_frames_at(buffer, 0, len(buffer), 0x11010203, NOW, "l", stream, stream)
            self.assertEqual(after, len(buffer))
            self.assertEqual(
                stream.bindings,
                [binding_from_client_data(item, NOW, "l") for item in (short, long, long, short)],
            )

    def test_stops_when_told(self) -> None:
        """
        Reading stops before the next frame once the consumer pauses or ends the stream;
        what the consumer raises propagates, its frame counted as consumed.
        """
        messages = [data(0x10203, client_data(n, ["2001:db8::1"])).encode() for n in range(5)]
        buffer = b"".join(len(octets).to_bytes(2, "big") + octets for octets in messages)
        size = 2 + len(messages[0])
        for action in ("pause", "end", "raise"):
            stream = _Stream()

            def consume(binding: Binding, stream: _Stream = stream, action: str = action) -> None:
                stream.bindings.append(binding)
                if len(stream.bindings) == 2:
                    if action == "pause":
                        stream.paused = True
                    elif action == "end":
                        stream.consume = None
                    else:
                        raise ValueError("consumer")

            stream.consume = consume
            if action == "raise":
                with self.assertRaises(ValueError):
                    fast_frames_at(buffer, 0, len(buffer), 0x11010203, NOW, "l", stream, stream)
            else:
                after = fast_frames_at(buffer, 0, len(buffer), 0x11010203, NOW, "l", stream, stream)
                self.assertEqual(after, 2 * size)
            self.assertEqual((len(stream.bindings), stream.received), (2, 2))
            stream.paused = False
            stream.consume = stream.bindings.append
            after = fast_frames_at(
                buffer, 2 * size, len(buffer), 0x11010203, NOW, "l", stream, stream
            )
            self.assertEqual((after, len(stream.bindings)), (len(buffer), 5))


class MergeTests(SynchronousTestCase):
    """R16 / RFC 5007 section 4.3.4."""

    def test_disjoint_merged(self) -> None:
        """R16: an address from one report and a prefix from another make one binding."""
        first = make_binding(1, "l", cltt=100, prefixes=())
        second = make_binding(1, "l", cltt=100, addresses=(), prefixes=["2001:db8:f::/48"])
        merged = merge_bindings(first, second)
        self.assertEqual((merged.addresses, merged.prefixes), (first.addresses, second.prefixes))

    def test_conflict_most_recent_wins(self) -> None:
        """R16: the same address reported twice: the most recent CLT_TIME's lease wins."""
        old = make_binding(1, "l", cltt=100, valid_lifetime=1000)
        new = make_binding(1, "l", cltt=200, valid_lifetime=3000)
        for merged in (merge_bindings(old, new), merge_bindings(new, old)):
            self.assertEqual(merged.cltt, 200)
            self.assertEqual(merged.addresses, new.addresses)

    def test_older_leases_keep_their_expiry(self) -> None:
        """Leases only the older report has are re-based to the newer cltt, same expiry."""
        old = make_binding(1, "l", cltt=100, addresses=["2001:db8::a"], valid_lifetime=1000)
        new = make_binding(
            1, "l", cltt=400, addresses=["2001:db8::b"], valid_lifetime=INFINITE_LIFETIME
        )
        merged = merge_bindings(old, new)
        leases = {str(lease.address): lease for lease in merged.addresses}
        self.assertEqual(leases["2001:db8::a"].valid_lifetime, 700)
        self.assertEqual(leases["2001:db8::b"].valid_lifetime, INFINITE_LIFETIME)
        late = make_binding(1, "l", cltt=5000, addresses=["2001:db8::c"])
        self.assertEqual(merge_bindings(old, late).addresses[0].valid_lifetime, 0)

    def test_relay_data_kept(self) -> None:
        """The newer report's relay data wins, but an older one is kept when the newer has none."""
        relayed = make_binding(1, "l", cltt=100, relay_id=RELAY)
        bare = make_binding(1, "l", cltt=200)
        self.assertEqual(merge_bindings(relayed, bare).relay_ids, (RELAY,))

    def test_merger(self) -> None:
        """The merger keys by (link, DUID), returns key order and enforces its limit."""
        merger = BindingMerger(max_bindings=2)
        merger.add_all([make_binding(2, "b"), make_binding(1, "b"), make_binding(2, "b")])
        self.assertEqual(
            [b.key for b in merger.bindings()], sorted(b.key for b in merger.bindings())
        )
        self.assertEqual(len(merger), 2)
        self.assertRaises(TooManyBindingsError, merger.add, make_binding(3, "b"))
        merger.add(make_binding(1, "b", cltt=5))
