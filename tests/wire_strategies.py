"""
Hypothesis strategies for bulklq.wire values (importable by any test module).

Every strategy generates values the codec must encode and get back unchanged:
C{decode_message(value.encode()) == value}. Sizes are kept small so that generated messages
stay far below 65535 octets and tests stay fast.
"""

from __future__ import annotations

import struct
from ipaddress import IPv6Address, IPv6Network

from hypothesis import strategies as st

from bulklq.wire import (
    ClientData,
    ClientId,
    CltTime,
    Duid,
    IAAddress,
    IAPrefix,
    InterfaceId,
    LQBaseTime,
    LQClientLink,
    LQEndTime,
    LQQuery,
    LQRelayData,
    LQStartTime,
    Message,
    MessageType,
    Option,
    OptionRequest,
    QueryType,
    RelayId,
    RelayMessage,
    RelayMessageOption,
    RemoteId,
    ServerId,
    StatusCode,
    StatusCodeOption,
    UnknownOption,
)
from bulklq.wire.options import is_modelled

__all__ = [
    "LEASEQUERY_MESSAGE_TYPES",
    "any_messages",
    "binding_data",
    "bulk_messages",
    "client_data",
    "client_ids",
    "duids",
    "ia_addresses",
    "ia_prefixes",
    "ipv6_addresses",
    "lq_queries",
    "lq_relay_data",
    "messages",
    "relay_messages",
    "remote_ids",
    "status_codes",
    "stored_relay_chains",
    "u8",
    "u16",
    "u32",
    "unknown_options",
]

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)

#: Lifetimes: mostly ordinary values, with the edges (0, infinity) often.
lifetimes = st.one_of(st.sampled_from([0, 1, 3600, 7200, 0xFFFFFFFF]), u32)

#: Any IPv6 address without scope.
ipv6_addresses = st.one_of(
    st.sampled_from(["::", "2001:db8:1::1", "fe80::1", "ff02::1:2"]).map(IPv6Address),
    st.integers(0, 2**128 - 1).map(IPv6Address),
)

#: The message types RFC 5460/5007/7653 use, plus REPLY.
LEASEQUERY_MESSAGE_TYPES = (
    MessageType.LEASEQUERY,
    MessageType.LEASEQUERY_REPLY,
    MessageType.LEASEQUERY_DONE,
    MessageType.LEASEQUERY_DATA,
    MessageType.ACTIVELEASEQUERY,
    MessageType.STARTTLS,
    MessageType.REPLY,
)

#: Client/server message types: the Leasequery ones mostly, any other (not 0/12/13) too.
message_types = st.one_of(
    st.sampled_from(LEASEQUERY_MESSAGE_TYPES),
    st.integers(1, 255).filter(lambda value: value not in (12, 13)),
)


def _variable(min_size: int = 1, max_size: int = 12) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=min_size, max_size=max_size)


#: DUIDs of the four known types and of unknown types, all valid.
duids: st.SearchStrategy[Duid] = st.one_of(
    st.builds(Duid.llt, u16, u32, _variable()),
    st.builds(Duid.en, u32, _variable()),
    st.builds(Duid.ll, u16, _variable()),
    st.builds(Duid.uuid, st.binary(min_size=16, max_size=16)),
    st.builds(
        lambda duid_type, rest: Duid(struct.pack("!H", duid_type) + rest),
        u16.filter(lambda value: not 1 <= value <= 4),
        _variable(1, 128),
    ),
)

client_ids = st.builds(ClientId, duids)
server_ids = st.builds(ServerId, duids)
relay_ids = st.builds(RelayId, duids)
remote_ids = st.builds(RemoteId, u32, _variable(1, 16))
interface_ids = st.builds(InterfaceId, _variable(0, 12))

#: Status codes, known (decoded as StatusCode) or not, with UTF-8 text without NUL.
status_codes = st.builds(
    StatusCodeOption,
    st.one_of(st.sampled_from(list(StatusCode)), u16),
    st.text(
        alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\x00"),
        max_size=16,
    ),
)

#: Options whose code bulklq does not model (kept raw).
unknown_options = st.builds(
    UnknownOption, u16.filter(lambda code: not is_modelled(code)), _variable(0, 12)
)

times = st.one_of(
    st.builds(CltTime, u32),
    st.builds(LQBaseTime, u32),
    st.builds(LQStartTime, u32),
    st.builds(LQEndTime, u32),
)
oros = st.builds(OptionRequest, st.lists(u16, max_size=4).map(tuple))
client_links = st.builds(LQClientLink, st.lists(ipv6_addresses, min_size=1, max_size=3).map(tuple))

#: What an IAADDR/IAPREFIX may carry: usually nothing, else a status code or unknown option.
_ia_sub_options = st.lists(st.one_of(status_codes, unknown_options), max_size=2).map(tuple)

ia_addresses = st.builds(IAAddress, ipv6_addresses, lifetimes, lifetimes, _ia_sub_options)
ia_prefixes = st.builds(
    IAPrefix, lifetimes, lifetimes, st.integers(0, 128), ipv6_addresses, _ia_sub_options
)

#: A client's own message as a relay would carry it: raw octets not starting with 12/13.
_client_message_octets = st.one_of(
    st.just(b""),
    st.builds(
        lambda first, rest: bytes((first,)) + rest,
        u8.filter(lambda value: value not in (12, 13)),
        _variable(0, 16),
    ),
)

_relay_options = st.one_of(interface_ids, remote_ids, relay_ids, unknown_options)


def _relay_layer(inner: st.SearchStrategy[RelayMessage | bytes]) -> st.SearchStrategy[RelayMessage]:
    return st.builds(
        lambda msg_type, hops, link, peer, options, relayed: RelayMessage(
            msg_type,
            hops,
            link,
            peer,
            options + (() if relayed is None else (RelayMessageOption(relayed),)),
        ),
        st.sampled_from([MessageType.RELAY_FORW, MessageType.RELAY_REPL]),
        u8,
        ipv6_addresses,
        ipv6_addresses,
        st.lists(_relay_options, max_size=3).map(tuple),
        st.one_of(st.none(), inner),
    )


#: Relay messages: chains of up to four layers, the innermost optionally carrying a
#: client's raw message.
relay_messages: st.SearchStrategy[RelayMessage] = st.recursive(
    _relay_layer(_client_message_octets),
    _relay_layer,
    max_leaves=4,
)

lq_relay_data = st.builds(LQRelayData, ipv6_addresses, relay_messages)


def _client_data(extra: st.SearchStrategy[Option]) -> st.SearchStrategy[ClientData]:
    return st.builds(
        ClientData,
        st.lists(
            st.one_of(
                client_ids,
                ia_addresses,
                ia_prefixes,
                st.builds(CltTime, u32),
                lq_relay_data,
                client_links,
                unknown_options,
                extra,
            ),
            max_size=5,
        ).map(tuple),
    )


#: CLIENT_DATA as a server sends it, sometimes nested in CLIENT_DATA (odd, but valid).
client_data: st.SearchStrategy[ClientData] = st.recursive(
    _client_data(st.nothing()), _client_data, max_leaves=3
)

lq_queries = st.builds(
    LQQuery,
    st.one_of(st.sampled_from(list(QueryType)), u8),
    ipv6_addresses,
    st.lists(
        st.one_of(relay_ids, remote_ids, client_ids, oros, ia_addresses, unknown_options),
        max_size=3,
    ).map(tuple),
)

#: Options a client/server message may carry.
message_options = st.one_of(
    client_ids,
    server_ids,
    lq_queries,
    client_data,
    status_codes,
    oros,
    times,
    client_links,
    relay_ids,
    unknown_options,
)

messages = st.builds(
    Message,
    message_types,
    st.integers(0, 0xFFFFFF),
    st.lists(message_options, max_size=5).map(tuple),
)

#: Any message decode_message may return.
any_messages: st.SearchStrategy[Message | RelayMessage] = st.one_of(messages, relay_messages)


# Realistic Bulk Leasequery traffic: what a requestor and a server actually exchange, valid
# in every decoder's eyes (prefixes without host bits, relay chains without the client's
# message, option codes nobody assigned). Independent decoders are checked against these.

#: Option codes far from any assignment (kept raw by every decoder).
unassigned_options = st.builds(UnknownOption, st.integers(65000, 65535), _variable(0, 8))

clean_prefixes = st.builds(
    lambda preferred, valid, length, address: IAPrefix(
        preferred,
        valid,
        length,
        IPv6Network((address, length), strict=False).network_address,
    ),
    lifetimes,
    lifetimes,
    st.integers(0, 128),
    ipv6_addresses,
)


def _realistic_layer(
    inner: st.SearchStrategy[RelayMessage | None],
) -> st.SearchStrategy[RelayMessage]:
    return st.builds(
        lambda hops, link, peer, options, relayed: RelayMessage(
            MessageType.RELAY_FORW,
            hops,
            link,
            peer,
            options + (() if relayed is None else (RelayMessageOption(relayed),)),
        ),
        st.integers(0, 31),
        ipv6_addresses,
        ipv6_addresses,
        st.lists(st.one_of(interface_ids, remote_ids, relay_ids), max_size=3).map(tuple),
        inner,
    )


#: RELAY-FORW chains of one to three layers, innermost RELAY_MSG removed (as LQ_RELAY_DATA
#: carries them).
stored_relay_chains: st.SearchStrategy[RelayMessage] = st.recursive(
    _realistic_layer(st.none()), _realistic_layer, max_leaves=3
)

binding_data = st.builds(
    lambda client, addresses, prefixes, clt, relay_data, extra: ClientData(
        (client, *addresses, *prefixes, clt, *relay_data, *extra)
    ),
    client_ids,
    st.lists(st.builds(IAAddress, ipv6_addresses, lifetimes, lifetimes), max_size=2),
    st.lists(clean_prefixes, max_size=2),
    st.builds(CltTime, u32),
    st.lists(st.builds(LQRelayData, ipv6_addresses, stored_relay_chains), max_size=1),
    st.lists(unassigned_options, max_size=1),
)

bulk_queries = st.builds(
    lambda xid, requestor, query_type, link, query_options: Message(
        MessageType.LEASEQUERY,
        xid,
        (requestor, LQQuery(query_type, link, query_options)),
    ),
    st.integers(0, 0xFFFFFF),
    client_ids,
    st.sampled_from(list(QueryType)),
    ipv6_addresses,
    st.lists(
        st.one_of(
            relay_ids, remote_ids, client_ids, oros, st.builds(IAAddress, ipv6_addresses, u32, u32)
        ),
        max_size=3,
    ).map(tuple),
)

bulk_replies = st.builds(
    lambda msg_type, xid, head, data, status: Message(msg_type, xid, (*head, *data, *status)),
    st.sampled_from([MessageType.LEASEQUERY_REPLY, MessageType.LEASEQUERY_DATA]),
    st.integers(0, 0xFFFFFF),
    st.lists(st.one_of(client_ids, server_ids), max_size=2),
    st.lists(binding_data, max_size=1),
    st.lists(status_codes, max_size=1),
)

bulk_dones = st.builds(
    lambda xid, status: Message(MessageType.LEASEQUERY_DONE, xid, tuple(status)),
    st.integers(0, 0xFFFFFF),
    st.lists(status_codes, max_size=1),
)

#: A realistic Bulk Leasequery message: LEASEQUERY, LEASEQUERY-REPLY/-DATA or -DONE.
bulk_messages: st.SearchStrategy[Message] = st.one_of(bulk_queries, bulk_replies, bulk_dones)
