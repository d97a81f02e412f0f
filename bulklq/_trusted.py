"""
Slot setters for building model and relay values from data already checked, without attrs'
C{__init__} (see L{bulklq.wire._fast} for why that is valid and what it saves).

The stores' fast paths (SQLite, Kea lease decoding, kea-csv) build hundreds of thousands of
bindings per second; they share these setter tables instead of each deriving its own. Each
name is a tuple of C{__set__} callables in the order of the field names given.
"""

from __future__ import annotations

from .model import AddressLease, Binding, PrefixLease
from .wire import Duid, LQRelayData, RelayMessage, RelayMessageOption, RemoteId
from .wire._fast import slot_setters

__all__ = [
    "BINDING_FIELDS",
    "set_address_lease",
    "set_binding",
    "set_duid_raw",
    "set_prefix_lease",
    "set_relay_data",
    "set_relay_message",
    "set_relay_option_message",
    "set_remote_id",
]

#: Binding's fields, in the order of L{set_binding}.
BINDING_FIELDS = (
    "client_id",
    "link_id",
    "cltt",
    "addresses",
    "prefixes",
    "relay_data",
    "relay_ids",
    "remote_ids",
    "options",
)
set_binding = slot_setters(Binding, *BINDING_FIELDS)
#: (address, preferred_lifetime, valid_lifetime)
set_address_lease = slot_setters(AddressLease, "address", "preferred_lifetime", "valid_lifetime")
#: (prefix, preferred_lifetime, valid_lifetime)
set_prefix_lease = slot_setters(PrefixLease, "prefix", "preferred_lifetime", "valid_lifetime")
#: (msg_type, hop_count, link_address, peer_address, options)
set_relay_message = slot_setters(
    RelayMessage, "msg_type", "hop_count", "link_address", "peer_address", "options"
)
#: (peer_address, relay_message)
set_relay_data = slot_setters(LQRelayData, "peer_address", "relay_message")
#: (enterprise_number, remote_id)
set_remote_id = slot_setters(RemoteId, "enterprise_number", "remote_id")
(set_duid_raw,) = slot_setters(Duid, "raw")
(set_relay_option_message,) = slot_setters(RelayMessageOption, "message")
