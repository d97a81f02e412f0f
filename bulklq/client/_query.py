"""
What a requestor asks: L{LeaseQuery}, and the LEASEQUERY message that carries it.
"""

from __future__ import annotations

from ipaddress import IPv6Address

import attrs

from ..wire import (
    ClientId,
    Duid,
    IAAddress,
    LQQuery,
    Message,
    MessageType,
    OptionCode,
    OptionRequest,
    QueryType,
    RelayId,
    RemoteId,
)
from ..wire import Option as WireOption

__all__ = ["UNSPECIFIED", "LeaseQuery"]

#: The link-address C{::}: "any link" in a query.
UNSPECIFIED = IPv6Address(0)


@attrs.frozen
class LeaseQuery:
    """
    One Bulk Leasequery, independent of transaction-id and requestor DUID.

    Build one with the class methods; each puts exactly the query-option its type needs in
    the LQ_QUERY (R2). C{relay_data} asks for LQ_RELAY_DATA (option 47) through the ORO
    inside LQ_QUERY.

    @ivar query_type: the RFC 5007/5460 query-type.
    @ivar link_address: the LQ_QUERY link-address (C{::} for "any link").
    @ivar query_option: the query-option the type needs (C{None} for QUERY_BY_LINK_ADDRESS).
    @ivar relay_data: whether to ask for OPTION_LQ_RELAY_DATA.
    """

    query_type: QueryType
    link_address: IPv6Address = UNSPECIFIED
    query_option: WireOption | None = None
    relay_data: bool = False

    @classmethod
    def by_relay_id(
        cls, relay_id: Duid, link_address: IPv6Address = UNSPECIFIED, relay_data: bool = False
    ) -> LeaseQuery:
        """QUERY_BY_RELAY_ID (3): bindings relayed by C{relay_id}, optionally on one link."""
        return cls(QueryType.QUERY_BY_RELAY_ID, link_address, RelayId(relay_id), relay_data)

    @classmethod
    def by_link_address(cls, link_address: IPv6Address, relay_data: bool = False) -> LeaseQuery:
        """QUERY_BY_LINK_ADDRESS (4): every binding on the link holding C{link_address}."""
        return cls(QueryType.QUERY_BY_LINK_ADDRESS, link_address, None, relay_data)

    @classmethod
    def by_remote_id(
        cls, remote_id: RemoteId, link_address: IPv6Address = UNSPECIFIED, relay_data: bool = False
    ) -> LeaseQuery:
        """QUERY_BY_REMOTE_ID (5): bindings relayed with C{remote_id} (whole value)."""
        return cls(QueryType.QUERY_BY_REMOTE_ID, link_address, remote_id, relay_data)

    @classmethod
    def by_client_id(
        cls, client_id: Duid, link_address: IPv6Address = UNSPECIFIED, relay_data: bool = False
    ) -> LeaseQuery:
        """QUERY_BY_CLIENTID (2): the client's bindings (one per link, or on one link)."""
        return cls(QueryType.QUERY_BY_CLIENTID, link_address, ClientId(client_id), relay_data)

    @classmethod
    def by_address(
        cls, address: IPv6Address, link_address: IPv6Address = UNSPECIFIED, relay_data: bool = False
    ) -> LeaseQuery:
        """QUERY_BY_ADDRESS (1): the binding holding C{address} (or a prefix containing it)."""
        return cls(QueryType.QUERY_BY_ADDRESS, link_address, IAAddress(address, 0, 0), relay_data)

    def to_message(self, transaction_id: int, requestor_duid: Duid) -> Message:
        """
        The LEASEQUERY message: CLIENTID (the requestor's DUID) and exactly one LQ_QUERY (R1).
        """
        query_options: list[WireOption] = []
        if self.query_option is not None:
            query_options.append(self.query_option)
        if self.relay_data:
            query_options.append(OptionRequest((OptionCode.OPTION_LQ_RELAY_DATA,)))
        return Message(
            MessageType.LEASEQUERY,
            transaction_id,
            (
                ClientId(requestor_duid),
                LQQuery(self.query_type, self.link_address, tuple(query_options)),
            ),
        )

    def describe(self) -> str:
        """A short text for logs and messages (C{relay-id 00:04:...})."""
        option = self.query_option
        if isinstance(option, RelayId):
            what = f"relay-id {option.duid}"
        elif isinstance(option, ClientId):
            what = f"client-id {option.duid}"
        elif isinstance(option, RemoteId):
            what = f"remote-id {option}"
        elif isinstance(option, IAAddress):
            what = f"address {option.address}"
        else:
            what = f"link {self.link_address}"
        if self.query_type != QueryType.QUERY_BY_LINK_ADDRESS and self.link_address != UNSPECIFIED:
            what += f" on link {self.link_address}"
        return what
