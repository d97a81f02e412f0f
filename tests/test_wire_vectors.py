"""
The golden wire vectors (tests/fixtures/vectors, decoded identically by tshark, dhcpkit and
scapy): each valid one decodes to the documented field values and re-encodes to the same
octets; each C{invalid-*} one is refused with L{WireError}.
"""

from __future__ import annotations

from ipaddress import IPv6Address

from twisted.trial.unittest import SynchronousTestCase

from bulklq.wire import (
    ClientData,
    ClientId,
    CltTime,
    DuidType,
    IAAddress,
    IAPrefix,
    InterfaceId,
    LQQuery,
    LQRelayData,
    Message,
    MessageType,
    OptionRequest,
    QueryType,
    RelayId,
    RelayMessage,
    RemoteId,
    ServerId,
    StatusCode,
    StatusCodeOption,
    WireError,
    decode_message,
)

from .vectors import (
    CLIENT_DUID,
    RELAY_DUID,
    REQUESTOR_DUID,
    SERVER_DUID,
    invalid_vector_names,
    valid_vector_names,
    vector,
)


def decoded_message(testcase: SynchronousTestCase, name: str) -> Message:
    """Decode vector C{name}, asserting it is a client/server message."""
    message = decode_message(vector(name))
    testcase.assertIsInstance(message, Message)
    assert isinstance(message, Message)
    return message


class VectorSetTests(SynchronousTestCase):
    """The fixture set itself."""

    def test_all_present(self) -> None:
        """The ten documented vectors are all copied into the fixtures."""
        self.assertEqual(
            valid_vector_names(),
            [
                "data-second-client",
                "done-empty",
                "done-query-terminated",
                "leasequery-by-link-address",
                "leasequery-by-relay-id",
                "leasequery-by-remote-id",
                "reply-not-configured",
                "reply-with-client-data",
            ],
        )
        self.assertEqual(
            invalid_vector_names(), ["invalid-clt-time-length", "invalid-truncated-option"]
        )

    def test_round_trip(self) -> None:
        """Every valid vector re-encodes to exactly its octets, and decodes to equal values."""
        for name in valid_vector_names():
            octets = vector(name)
            message = decode_message(octets)
            self.assertEqual(message.encode(), octets, name)
            self.assertEqual(decode_message(message.encode()), message, name)

    def test_invalid_rejected(self) -> None:
        """Every C{invalid-*} vector is refused with WireError (and only WireError)."""
        for name in invalid_vector_names():
            self.assertRaises(WireError, decode_message, vector(name))


class DuidFieldTests(SynchronousTestCase):
    """The DUIDs the vectors use, read through the typed properties."""

    def test_requestor_duid_en(self) -> None:
        """The requestor's CLIENTID is a DUID-EN, enterprise 32473, identifier requestor-1."""
        client_id = decoded_message(self, "leasequery-by-relay-id").option(ClientId)
        assert client_id is not None
        duid = client_id.duid
        self.assertEqual(duid.duid_type, DuidType.DUID_EN)
        self.assertEqual(duid.enterprise_number, 32473)
        self.assertEqual(duid.identifier, b"requestor-1")
        self.assertIsNone(duid.hardware_type)
        self.assertEqual(duid, REQUESTOR_DUID)

    def test_server_duid_llt(self) -> None:
        """The SERVERID is a DUID-LLT: hw-type 1, time 700000000, link-layer 02:00:00:00:00:01."""
        server_id = decoded_message(self, "reply-not-configured").option(ServerId)
        assert server_id is not None
        duid = server_id.duid
        self.assertEqual(duid.duid_type, DuidType.DUID_LLT)
        self.assertEqual(duid.hardware_type, 1)
        self.assertEqual(duid.time, 700000000)
        self.assertEqual(duid.link_layer_address, bytes.fromhex("020000000001"))
        self.assertEqual(str(duid), "00:01:00:01:29:b9:27:00:02:00:00:00:00:01")

    def test_client_duid_ll(self) -> None:
        """The client's DUID is a DUID-LL: hw-type 1, link-layer 02:00:00:00:0a:bc."""
        client_data = decoded_message(self, "reply-with-client-data").option(ClientData)
        assert client_data is not None
        client_id = client_data.option(ClientId)
        assert client_id is not None
        duid = client_id.duid
        self.assertEqual(duid.duid_type, DuidType.DUID_LL)
        self.assertEqual(duid.hardware_type, 1)
        self.assertEqual(duid.link_layer_address, bytes.fromhex("020000000abc"))
        self.assertIsNone(duid.time)
        self.assertEqual(duid, CLIENT_DUID)

    def test_relay_duid_uuid(self) -> None:
        """The RELAY_ID is a DUID-UUID 000102030405060708090a0b0c0d0e0f."""
        query = decoded_message(self, "leasequery-by-relay-id").option(LQQuery)
        assert query is not None
        relay_id = query.option(RelayId)
        assert relay_id is not None
        duid = relay_id.duid
        self.assertEqual(duid.duid_type, DuidType.DUID_UUID)
        self.assertEqual(duid.uuid_bytes, bytes.fromhex("000102030405060708090a0b0c0d0e0f"))
        self.assertIsNone(duid.enterprise_number)
        self.assertEqual(duid, RELAY_DUID)


class LeasequeryVectorTests(SynchronousTestCase):
    """The three LEASEQUERY vectors."""

    def test_by_relay_id(self) -> None:
        """
        LEASEQUERY xid 0x123456: CLIENTID, LQ_QUERY type 3 (QUERY_BY_RELAY_ID), link ::,
        query-options RELAY_ID and ORO asking for LQ_RELAY_DATA (47).
        """
        message = decoded_message(self, "leasequery-by-relay-id")
        self.assertEqual(message.msg_type, MessageType.LEASEQUERY)
        self.assertEqual(message.transaction_id, 0x123456)
        self.assertEqual(
            message,
            Message(
                MessageType.LEASEQUERY,
                0x123456,
                (
                    ClientId(REQUESTOR_DUID),
                    LQQuery(
                        QueryType.QUERY_BY_RELAY_ID,
                        IPv6Address("::"),
                        (RelayId(RELAY_DUID), OptionRequest((47,))),
                    ),
                ),
            ),
        )
        query = message.option(LQQuery)
        assert query is not None
        self.assertIs(query.query_type, QueryType.QUERY_BY_RELAY_ID)

    def test_by_remote_id(self) -> None:
        """
        LEASEQUERY xid 0x123457: LQ_QUERY type 5 with REMOTE_ID enterprise 32473,
        remote-id 'circuit-7'.
        """
        message = decoded_message(self, "leasequery-by-remote-id")
        self.assertEqual(message.transaction_id, 0x123457)
        query = message.option(LQQuery)
        assert query is not None
        self.assertEqual(query.query_type, QueryType.QUERY_BY_REMOTE_ID)
        self.assertEqual(query.link_address, IPv6Address("::"))
        remote_id = query.option(RemoteId)
        assert remote_id is not None
        self.assertEqual(remote_id.enterprise_number, 32473)
        self.assertEqual(remote_id.remote_id, b"circuit-7")
        self.assertEqual(str(remote_id), "32473:636972637569742d37")
        self.assertEqual(message.option(ClientId), ClientId(REQUESTOR_DUID))

    def test_by_link_address(self) -> None:
        """LEASEQUERY xid 0x123458: LQ_QUERY type 4, link 2001:db8:1::1, no query-options."""
        message = decoded_message(self, "leasequery-by-link-address")
        self.assertEqual(message.transaction_id, 0x123458)
        self.assertEqual(
            message.options,
            (
                ClientId(REQUESTOR_DUID),
                LQQuery(QueryType.QUERY_BY_LINK_ADDRESS, IPv6Address("2001:db8:1::1")),
            ),
        )


def expected_client_data(address: str, prefix: str) -> ClientData:
    """The CLIENT_DATA both reply vectors carry, for C{address} and C{prefix}."""
    return ClientData(
        (
            ClientId(CLIENT_DUID),
            IAAddress(IPv6Address(address), 3600, 7200),
            IAPrefix(3600, 7200, 56, IPv6Address(prefix)),
            CltTime(42),
            LQRelayData(
                IPv6Address("2001:db8:1::1"),
                RelayMessage(
                    MessageType.RELAY_FORW,
                    0,
                    IPv6Address("2001:db8:1::1"),
                    IPv6Address("fe80::1"),
                    (
                        InterfaceId(b"eth0/1"),
                        RemoteId(32473, b"circuit-7"),
                        RelayId(RELAY_DUID),
                    ),
                ),
            ),
        )
    )


class ReplyVectorTests(SynchronousTestCase):
    """LEASEQUERY-REPLY, -DATA and -DONE vectors."""

    def test_reply_with_client_data(self) -> None:
        """
        LEASEQUERY-REPLY: CLIENTID, SERVERID, CLIENT_DATA with the client's DUID-LL, IAADDR
        2001:db8:1::1 3600/7200, IAPREFIX 2001:db8:ff01::/56 3600/7200, CLT_TIME 42 and
        LQ_RELAY_DATA (peer 2001:db8:1::1; RELAY-FORW hop 0, link 2001:db8:1::1, peer
        fe80::1, INTERFACE_ID eth0/1, REMOTE_ID, RELAY_ID).
        """
        message = decoded_message(self, "reply-with-client-data")
        self.assertEqual(message.msg_type, MessageType.LEASEQUERY_REPLY)
        self.assertEqual(message.transaction_id, 0x123456)
        self.assertEqual(message.option(ClientId), ClientId(REQUESTOR_DUID))
        self.assertEqual(message.option(ServerId), ServerId(SERVER_DUID))
        client_data = message.option(ClientData)
        self.assertEqual(client_data, expected_client_data("2001:db8:1::1", "2001:db8:ff01::"))
        assert client_data is not None
        prefix = client_data.option(IAPrefix)
        assert prefix is not None
        self.assertEqual(str(prefix.network), "2001:db8:ff01::/56")
        clt_time = client_data.option(CltTime)
        assert clt_time is not None
        self.assertEqual(clt_time.seconds, 42)

    def test_relay_chain(self) -> None:
        """The LQ_RELAY_DATA's relay chain is one RELAY-FORW layer, read field by field."""
        message = decoded_message(self, "reply-with-client-data")
        client_data = message.option(ClientData)
        assert client_data is not None
        relay_data = client_data.option(LQRelayData)
        assert relay_data is not None
        self.assertEqual(relay_data.peer_address, IPv6Address("2001:db8:1::1"))
        layers = relay_data.relay_message.layers()
        self.assertEqual(len(layers), 1)
        relay = layers[0]
        self.assertIs(relay.msg_type, MessageType.RELAY_FORW)
        self.assertEqual(relay.hop_count, 0)
        self.assertEqual(relay.link_address, IPv6Address("2001:db8:1::1"))
        self.assertEqual(relay.peer_address, IPv6Address("fe80::1"))
        self.assertIsNone(relay.inner)
        self.assertEqual(relay.option(InterfaceId), InterfaceId(b"eth0/1"))
        self.assertEqual(relay.option(RemoteId), RemoteId(32473, b"circuit-7"))
        relay_id = relay.option(RelayId)
        assert relay_id is not None
        self.assertEqual(relay_id.duid.uuid_bytes, bytes(range(16)))

    def test_data_second_client(self) -> None:
        """LEASEQUERY-DATA with one CLIENT_DATA: address 2001:db8:1::2, prefix ff02::/56."""
        message = decoded_message(self, "data-second-client")
        self.assertEqual(message.msg_type, MessageType.LEASEQUERY_DATA)
        self.assertEqual(message.transaction_id, 0x123456)
        self.assertEqual(
            message.options, (expected_client_data("2001:db8:1::2", "2001:db8:ff02::"),)
        )

    def test_done_empty(self) -> None:
        """LEASEQUERY-DONE with no options: four octets."""
        message = decoded_message(self, "done-empty")
        self.assertEqual(message, Message(MessageType.LEASEQUERY_DONE, 0x123456, ()))
        self.assertEqual(len(vector("done-empty")), 4)

    def test_done_query_terminated(self) -> None:
        """LEASEQUERY-DONE with STATUS_CODE 11 (QueryTerminated) 'aborted'."""
        message = decoded_message(self, "done-query-terminated")
        self.assertEqual(message.msg_type, MessageType.LEASEQUERY_DONE)
        status = message.option(StatusCodeOption)
        assert status is not None
        self.assertIs(status.status, StatusCode.QueryTerminated)
        self.assertEqual(status.message, "aborted")

    def test_reply_not_configured(self) -> None:
        """LEASEQUERY-REPLY with CLIENTID, SERVERID, STATUS_CODE 9 'no such link'."""
        message = decoded_message(self, "reply-not-configured")
        self.assertEqual(
            message,
            Message(
                MessageType.LEASEQUERY_REPLY,
                0x123456,
                (
                    ClientId(REQUESTOR_DUID),
                    ServerId(SERVER_DUID),
                    StatusCodeOption(StatusCode.NotConfigured, "no such link"),
                ),
            ),
        )


class InvalidVectorTests(SynchronousTestCase):
    """The two invalid vectors fail where and why the README says."""

    def test_clt_time_length(self) -> None:
        """A CLT_TIME of option-len 3 is refused, naming option 46 and its offset."""
        error = self.assertRaises(WireError, decode_message, vector("invalid-clt-time-length"))
        self.assertEqual(error.option_code, 46)
        self.assertEqual(error.offset, 26)
        self.assertEqual(str(error), "CLT_TIME must be 4 octets, not 3 (option 46, offset 26)")

    def test_truncated_option(self) -> None:
        """A CLIENT_DATA claiming 20 octets with 4 present is refused at its header."""
        error = self.assertRaises(WireError, decode_message, vector("invalid-truncated-option"))
        self.assertEqual(error.option_code, 45)
        self.assertEqual(error.offset, 4)
        self.assertIn("overruns", str(error))
