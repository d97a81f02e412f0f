"""
ISC Kea's DHCPv6 leases as bulklq bindings, shared by the memfile and PostgreSQL stores.

Kea stores one row per lease (address or delegated prefix) in its memfile CSV lease file and
in the C{lease6} table of its SQL lease databases; both carry the same columns and the same
C{user_context} JSON. This module holds what does not depend on where the row came from:

  - L{KeaLease6}: one lease row, with typed columns;
  - L{unescape}: Kea's C{&#xNN} escaping of text columns (memfile);
  - L{relay_hops} / L{relay_data_from_hops}: the relay chain Kea keeps in C{user_context}
    (C{"store-extended-info": true}), rebuilt as the LQ_RELAY_DATA option RFC 5007 and
    RFC 5460 send;
  - L{bindings_from_leases}: active leases grouped into one L{Binding} per client (DUID) and
    subnet (link).

B{Relay information.} Kea 2.3.2 and newer write
C{{"ISC": {"relay-info": [{"hop", "link", "peer", "options", "remote-id", "relay-id"}]}}};
Kea 2.2 writes C{{"ISC": {"relays": [{"hop", "link", "peer", "options"}]}}}. Both lists are
outermost relay first, and C{options} is C{0x} followed by the hex (either case) of that
relay's options, RELAY_MSG excluded. The format is decided per row, never from the file
header: Kea 3.2 keeps 2.2 rows as they were when it converts a 2.2 file. In the C{relays}
form the Remote-ID, Relay-ID and Interface-ID are parsed out of C{options}; in the
C{relay-info} form the decoded C{remote-id}/C{relay-id} are used as well.

B{LQ_RELAY_DATA.} The chain is rebuilt as nested RELAY-FORW messages, outermost first, each
with its stored hop count, link-address, peer-address and options, each nesting the next one
in a RELAY_MSG option, and the innermost one without RELAY_MSG (the client's message is not
stored). Its peer-address is the outermost relay's peer-address as Kea stored it.

B{Bindings.} A binding is every active lease (state 0, valid lifetime above 0, C{expire}
after now) of one DUID in one subnet. Its C{cltt} and relay chain are those of the newest
lease (largest C{expire - valid_lifetime}; on a tie the one given last). Leases renewed
earlier keep their true expiry: their lifetimes are shortened by how much older their own
CLTT is, so C{binding.cltt + lease.valid_lifetime} is the lease's C{expire}. The binding's
Relay-IDs and Remote-IDs are those of every hop of every one of its leases' chains (newest
lease first, without repeats), since Kea's own Bulk Leasequery matches each lease's stored
chain.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache
from ipaddress import IPv6Address, IPv6Network
from socket import AF_INET6, inet_pton
from typing import Any, NamedTuple

import attrs

from .._trusted import (
    set_address_lease,
    set_binding,
    set_duid_raw,
    set_prefix_lease,
    set_relay_data,
    set_relay_message,
    set_relay_option_message,
    set_remote_id,
)
from ..model import AddressLease, Binding, Link, PrefixLease
from ..wire import (
    Duid,
    InterfaceId,
    LQRelayData,
    MessageType,
    Option,
    RelayId,
    RelayMessage,
    RelayMessageOption,
    RemoteId,
    WireError,
    decode_options,
)
from ..wire._fast import ipv6_from_int
from ..wire._fast import new as _new
from ..wire.duid import duid_problem

# Bindings are built for every lease a query returns: without attrs' __init__ overhead
# (the values are checked before they get here; see bulklq.wire._fast).
_set_binding = set_binding
_set_address, _set_preferred, _set_valid = set_address_lease
_set_prefix, _set_prefix_preferred, _set_prefix_valid = set_prefix_lease
_set_relay_message = set_relay_message
_set_relay_data = set_relay_data
_set_remote = set_remote_id
_set_relay_option = (set_relay_option_message,)
_set_duid_raw = set_duid_raw
_set_lazy_summary: Any = None  # set below, once _LazyRelayData exists

__all__ = [
    "LEASE_TYPE_NA",
    "LEASE_TYPE_PD",
    "LEASE_TYPE_TA",
    "MAX_RELAY_HOPS",
    "NO_RELAY",
    "NO_RELAY_SUMMARY",
    "STATE_DEFAULT",
    "KeaLease6",
    "KeaLeaseError",
    "KeaRelayHop",
    "LeasePart",
    "RelayInfo",
    "RelaySummary",
    "assemble_binding",
    "bindings_from_leases",
    "cached_relay_info",
    "checked_binding",
    "client_duid",
    "client_link_address",
    "escaped_relay_summary",
    "interface_ids",
    "is_active",
    "lease_item",
    "lease_part",
    "lease_relay_hops",
    "links_from_link_addresses",
    "parse_address",
    "parse_user_context",
    "relay_data_from_hops",
    "relay_hops",
    "relay_info",
    "relay_summary",
    "shared_summary",
    "subnet_link_id",
    "unescape",
]

#: C{lease_type} of an IA_NA address.
LEASE_TYPE_NA = 0
#: C{lease_type} of an IA_TA (temporary) address.
LEASE_TYPE_TA = 1
#: C{lease_type} of an IA_PD delegated prefix.
LEASE_TYPE_PD = 2
#: C{state} of a lease in use (others: 1 declined, 2 expired-reclaimed, 3 released, ...).
STATE_DEFAULT = 0

#: Relay chains longer than this are refused (RFC 8415 allows a hop count up to 32).
MAX_RELAY_HOPS = 32

#: Upper bound on the hex text of one relay's options (a relay message fits in 65535 octets).
_MAX_OPTIONS_HEX = 2 + 2 * 65535
#: The top 10 bits of a link-local address (fe80::/10).
_LINK_LOCAL_TOP_BITS = 0xFE80 >> 6
_ESCAPE = re.compile(r"&#x([0-9a-fA-F]{2})")
_json_decode = json.JSONDecoder().decode
_option_header = struct.Struct(">HH").unpack_from
_HEX = re.compile(r"^[0-9a-fA-F]*$")


class KeaLeaseError(ValueError):
    """A Kea lease row or its user context cannot be turned into bulklq values."""


@attrs.frozen
class KeaLease6:
    """
    One row of Kea's C{lease6} data (memfile CSV or SQL table), with typed columns.

    @ivar address: the address, or the delegated prefix's first address.
    @ivar duid: the client's DUID octets.
    @ivar valid_lifetime: seconds; 0 in a memfile row means the lease was deleted.
    @ivar expire: Unix seconds at which the lease expires (CLTT + valid lifetime).
    @ivar subnet_id: Kea's subnet id (the link).
    @ivar lease_type: L{LEASE_TYPE_NA}, L{LEASE_TYPE_TA} or L{LEASE_TYPE_PD}.
    @ivar prefix_len: the delegated prefix's length (128 for addresses).
    @ivar state: L{STATE_DEFAULT} (0) for a lease in use.
    @ivar user_context: the C{user_context} JSON text, unescaped, or C{None} when empty.
    @ivar hwaddr: the client's hardware address octets, or C{None}.
    @ivar pool_id: Kea 2.4+'s pool id, or C{None} when the source has no such column.
    """

    address: IPv6Address
    duid: bytes
    valid_lifetime: int
    expire: int
    subnet_id: int
    pref_lifetime: int = 0
    lease_type: int = LEASE_TYPE_NA
    iaid: int = 0
    prefix_len: int = 128
    state: int = STATE_DEFAULT
    user_context: str | None = None
    hwaddr: bytes | None = None
    pool_id: int | None = None

    @property
    def cltt(self) -> int:
        """Client last transaction time: C{expire - valid_lifetime}."""
        return self.expire - self.valid_lifetime

    def context(self) -> dict[str, Any] | None:
        """
        The decoded C{user_context}, or C{None} when there is none.

        @raise KeaLeaseError: if it is not a JSON object.
        """
        return parse_user_context(self.user_context)


def is_active(lease: KeaLease6, now: float) -> bool:
    """Whether C{lease} is a lease in use at Unix time C{now}: state 0, not expired."""
    return lease.state == STATE_DEFAULT and lease.valid_lifetime > 0 and lease.expire > now


def subnet_link_id(subnet_id: int) -> str:
    """The bulklq link id of Kea's subnet C{subnet_id}: C{"subnet-8"}."""
    return f"subnet-{subnet_id}"


def _replace_escape(match: re.Match[str]) -> str:
    return chr(int(match.group(1), 16))


def unescape(text: str) -> str:
    """
    Undo Kea's memfile escaping: C{&#xNN} (C{&#x2c} comma, C{&#x26} ampersand, any other
    octet) becomes the character C{NN}. Text without C{&#x} is returned as it is.
    """
    # Kea escapes commas and ampersands; other escapes are rare and need the full pass.
    # (Replacing an escape by a comma cannot make a new "&#x".)
    plain = text.replace("&#x2c", ",")
    if "&#x" not in plain:
        return plain
    if "&#x" in plain.replace("&#x26", ""):
        return _ESCAPE.sub(_replace_escape, text)
    return plain.replace("&#x26", "&")


def parse_user_context(text: str | None) -> dict[str, Any] | None:
    """
    The JSON object in a C{user_context} column, or C{None} for an empty one.

    @raise KeaLeaseError: if the text is not a JSON object.
    """
    if text is None or not text.strip():
        return None
    try:
        value = _json_decode(text)
    except ValueError as error:
        raise KeaLeaseError(f"user_context is not JSON: {error}") from None
    if not isinstance(value, dict):
        raise KeaLeaseError("user_context is not a JSON object")
    return value


@attrs.frozen
class KeaRelayHop:
    """
    One relay of a stored chain, as Kea keeps it in C{user_context}.

    @ivar hop: the relay's hop count.
    @ivar link: its link-address.
    @ivar peer: its peer-address.
    @ivar options: its options (RELAY_MSG excluded), decoded.
    @ivar remote_id: the decoded C{remote-id} of a C{relay-info} entry, if any.
    @ivar relay_id: the decoded C{relay-id} of a C{relay-info} entry, if any.
    """

    hop: int
    link: IPv6Address
    peer: IPv6Address
    options: tuple[Option, ...] = ()
    remote_id: RemoteId | None = None
    relay_id: Duid | None = None


def _hex_octets(value: object, what: str) -> bytes:
    if type(value) is str:
        # Fast path: fromhex skips whitespace, so a length check keeps it exact.
        text = value[2:] if value[:2] in ("0x", "0X") else value
        if ":" in text:
            text = text.replace(":", "")
        try:
            octets = bytes.fromhex(text)
        except ValueError:
            pass
        else:
            if 2 * len(octets) == len(text):
                return octets
    if not isinstance(value, str):
        raise KeaLeaseError(f"{what} is not a hex string")
    text = value.strip()
    if text[:2] in ("0x", "0X"):
        text = text[2:]
    text = text.replace(":", "")
    if len(text) % 2 or not _HEX.match(text):
        raise KeaLeaseError(f"{what} {value!r} is not hex")
    return bytes.fromhex(text)


def parse_address(text: str) -> IPv6Address:
    """
    Parse an IPv6 address's text (without zone id), faster than C{IPv6Address(text)}.

    @raise ValueError: if C{text} is not an IPv6 address.
    """
    try:
        return IPv6Address(inet_pton(AF_INET6, text))
    except (OSError, TypeError):
        raise ValueError(f"{text!r} is not an IPv6 address") from None


@lru_cache(maxsize=8192)
def _link_address(text: str) -> IPv6Address:
    # Relay link-addresses repeat across many leases: parse each spelling once.
    return parse_address(text)


@lru_cache(maxsize=8192)
def _relay_options(hex_text: str) -> tuple[Option, ...]:
    if len(hex_text) > _MAX_OPTIONS_HEX:
        raise KeaLeaseError(f"relay options of {len(hex_text)} characters are too long")
    octets = _hex_octets(hex_text, "relay options")
    try:
        return decode_options(octets, 0, len(octets), 1)
    except WireError as error:
        raise KeaLeaseError(f"relay options: {error}") from None


def _hop_fields(
    entry: object, index: int, count: int, decoded_ids: bool
) -> tuple[int, str, str, bytes | None, str | None, object, object]:
    """
    The parts of one relay entry: hop count, link and peer text, options octets and their
    hex text (C{None} when absent; both checked), and the decoded C{remote-id} and
    C{relay-id} values of a C{relay-info} entry (C{None} when absent; not yet checked: they
    count only when the options lack that option).
    """
    if type(entry) is not dict and not isinstance(entry, Mapping):
        raise KeaLeaseError(f"relay {index} is not a JSON object")
    hop = entry.get("hop", count - 1 - index)
    if not isinstance(hop, int) or isinstance(hop, bool) or not 0 <= hop <= 255:
        raise KeaLeaseError(f"relay {index} hop {hop!r} is not 0..255")
    link = str(entry.get("link", "::"))
    peer = str(entry.get("peer", "::"))
    options_text = entry.get("options")
    octets = None
    if options_text is not None:
        if not isinstance(options_text, str):
            raise KeaLeaseError(f"relay {index} options is not a hex string")
        if len(options_text) > _MAX_OPTIONS_HEX:
            raise KeaLeaseError(f"relay options of {len(options_text)} characters are too long")
        octets = _hex_octets(options_text, "relay options")
    remote = relay = None
    if decoded_ids:
        remote = entry.get("remote-id")
        relay = entry.get("relay-id")
    return hop, link, peer, octets, options_text, remote, relay


def _hop_from_json(entry: object, index: int, count: int, decoded_ids: bool) -> KeaRelayHop:
    hop, link_text, peer_text, _, options_text, remote, relay = _hop_fields(
        entry, index, count, decoded_ids
    )
    try:
        link = _link_address(link_text)
        peer = parse_address(peer_text)
    except ValueError as error:
        raise KeaLeaseError(f"relay {index}: {error}") from None
    options: tuple[Option, ...] = ()
    if options_text is not None:
        options = _relay_options(options_text)
    remote_id = relay_id = None
    # The decoded fields repeat what the options hold; they count when options lack it.
    types = {type(option) for option in options}
    try:
        if remote is not None and RemoteId not in types:
            remote_id = RemoteId.from_bytes(_hex_octets(remote, "remote-id"))
        if relay is not None and RelayId not in types:
            relay_id = Duid.from_bytes(_hex_octets(relay, "relay-id"))
    except WireError as error:
        raise KeaLeaseError(f"relay {index}: {error}") from None
    return KeaRelayHop(hop, link, peer, options, remote_id, relay_id)


def relay_hops(context: Mapping[str, Any] | None) -> tuple[KeaRelayHop, ...]:
    """
    The relay chain stored in a decoded C{user_context}, outermost relay first.

    Reads C{ISC.relay-info} (Kea 2.3.2+) or else C{ISC.relays} (Kea 2.2); an empty tuple when
    the context holds neither (the client was not relayed, or Kea ran without
    C{store-extended-info}).

    @raise KeaLeaseError: if the relay information is present but malformed.
    """
    if not context:
        return ()
    isc = context.get("ISC")
    if isc is None:
        return ()
    if not isinstance(isc, Mapping):
        raise KeaLeaseError("user_context ISC is not a JSON object")
    decoded_ids = "relay-info" in isc
    entries = isc.get("relay-info") if decoded_ids else isc.get("relays")
    if entries is None:
        return ()
    if not isinstance(entries, list):
        raise KeaLeaseError("relay information is not a JSON list")
    if len(entries) > MAX_RELAY_HOPS:
        raise KeaLeaseError(f"relay chain of {len(entries)} hops exceeds {MAX_RELAY_HOPS}")
    count = len(entries)
    return tuple(
        _hop_from_json(entry, index, count, decoded_ids) for index, entry in enumerate(entries)
    )


class RelaySummary(NamedTuple):
    """
    A lease's relay information in a compact form: what indexing needs, and the chain's
    checked parts, from which L{RelaySummary.info} builds the L{RelayInfo} when a binding
    is built. L{relay_summary} computes it faster than L{relay_info}, with the same checks.

    @ivar hops: the chain, outermost relay first, packed in one octet string: for each
        relay its hop count (1 octet), link-address and peer-address (16 octets each), the
        length of its options (2 octets, big-endian) and those options' octets; empty
        without a chain.
    @ivar relay_ids: the Relay-ID DUID octets of every hop, as L{RelayInfo.relay_ids}.
    @ivar remote_ids: the REMOTE_ID option data (enterprise number and remote-id) of every
        hop, as L{RelayInfo.remote_ids}.
    @ivar link_address: L{RelayInfo.link_address} as a number, or C{None}.
    """

    hops: bytes = b""
    relay_ids: tuple[bytes, ...] = ()
    remote_ids: tuple[bytes, ...] = ()
    link_address: int | None = None

    def info(self) -> RelayInfo:
        """The L{RelayInfo} (equal to what L{relay_info} gives for the same context)."""
        hops = self.hops
        if not hops:
            return NO_RELAY
        return self._info(self.relay_data())

    def lazy_info(self) -> RelayInfo:
        """
        L{info}, except that the LQ_RELAY_DATA is built only when something reads it (the
        server does only for a query whose ORO asks for it): it equals and hashes as the
        one L{info} gives.
        """
        if not self.hops:
            return NO_RELAY
        relay_data = _new(_LazyRelayData)
        _set_lazy_summary(relay_data, self)
        return self._info(relay_data)

    def binding_parts(
        self,
    ) -> tuple[LQRelayData | None, tuple[Duid, ...], tuple[RemoteId, ...]]:
        """
        What a binding takes from L{lazy_info}: the (lazy) LQ_RELAY_DATA, the Relay-IDs
        and the Remote-IDs, without the L{RelayInfo}; Relay-ID tuples are shared by the
        summaries that share their octets (the clients of one relay).
        """
        if not self.hops:
            return None, (), ()
        relay_data = _new(_LazyRelayData)
        _set_lazy_summary(relay_data, self)
        ids = self.relay_ids
        # Summaries share their Relay-ID tuples (_shared): look them up by identity.
        found = _RELAY_DUIDS.get(id(ids))
        if found is not None and found[0] is ids:
            duids = found[1]
        else:
            duids = tuple(_duid_of(raw) for raw in ids)
            if len(_RELAY_DUIDS) >= 65536:
                _RELAY_DUIDS.clear()
            _RELAY_DUIDS[id(ids)] = (ids, duids)
        if not self.remote_ids:
            return relay_data, duids, ()
        set_enterprise, set_value = _set_remote
        remote_ids = []
        for data in self.remote_ids:
            remote_id = _new(RemoteId)
            prefix = data[:4]
            enterprise = _ENTERPRISES.get(prefix)
            if enterprise is None:
                enterprise = int.from_bytes(prefix)
                if len(_ENTERPRISES) >= 4096:
                    _ENTERPRISES.clear()
                _ENTERPRISES[prefix] = enterprise
            set_enterprise(remote_id, enterprise)
            set_value(remote_id, data[4:])
            remote_ids.append(remote_id)
        return relay_data, duids, tuple(remote_ids)

    def _info(self, relay_data: LQRelayData) -> RelayInfo:
        remote_ids = []
        for data in self.remote_ids:
            remote_id = _new(RemoteId)
            _set_remote[0](remote_id, int.from_bytes(data[:4]))
            _set_remote[1](remote_id, data[4:])
            remote_ids.append(remote_id)
        link_address = self.link_address
        return RelayInfo(
            relay_data,
            tuple(_duid_of(raw) for raw in self.relay_ids),
            tuple(remote_ids),
            None if link_address is None else ipv6_from_int(link_address),
        )

    def relay_data(self) -> LQRelayData:
        """The LQ_RELAY_DATA option of a summary with a chain."""
        hops = self.hops
        set_type, set_hop, set_link, set_peer, set_options = _set_relay_message
        layers = []
        offset = 0
        while offset < len(hops):
            hop, link, peer, length = _unpack_hop(hops, offset)
            start = offset + _HOP_HEADER.size
            offset = start + length
            layers.append((hop, link, peer, start, offset))
        message: RelayMessage | None = None
        for hop, link, peer, start, end in reversed(layers):
            options = decode_options(hops, start, end, 1)
            if message is not None:
                nested = _new(RelayMessageOption)
                _set_relay_option[0](nested, message)
                options = (*options, nested)
            message = _new(RelayMessage)
            set_type(message, _RELAY_FORW)
            set_hop(message, hop)
            set_link(message, ipv6_from_int(int.from_bytes(link)))
            set_peer(message, ipv6_from_int(int.from_bytes(peer)))
            set_options(message, options)
        assert message is not None
        relay_data = _new(LQRelayData)
        _set_relay_data[0](relay_data, message.peer_address)
        _set_relay_data[1](relay_data, message)
        return relay_data


class _LazyRelayData(LQRelayData):
    """
    An LQ_RELAY_DATA built from its L{RelaySummary} the first time a field is read: most
    bindings a query returns are sent without relay data (an ORO without it), and building
    the chain is most of the cost of building a binding. It compares and hashes as the
    L{LQRelayData} it stands for, either way round.
    """

    __slots__ = ("_summary",)

    def __getattr__(self, name: str) -> Any:
        # Called only for a field not set yet (an empty slot).
        if name not in ("peer_address", "relay_message"):
            raise AttributeError(name)
        built = object.__getattribute__(self, "_summary").relay_data()
        _set_relay_data[0](self, built.peer_address)
        _set_relay_data[1](self, built.relay_message)
        return object.__getattribute__(self, name)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LQRelayData):
            return NotImplemented
        return (self.peer_address, self.relay_message) == (
            other.peer_address,
            other.relay_message,
        )

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = LQRelayData.__hash__


#: id(Relay-ID octets tuple) -> (that tuple, its Duid objects), shared by the bindings of
#: a relay's clients.
_RELAY_DUIDS: dict[int, tuple[tuple[bytes, ...], tuple[Duid, ...]]] = {}
#: Enterprise number octets -> the number (one object for the many Remote-IDs of a vendor).
_ENTERPRISES: dict[bytes, int] = {}


def _duid_of(raw: bytes) -> Duid:
    duid = _new(Duid)
    _set_duid_raw(duid, raw)
    return duid


_RELAY_FORW = MessageType.RELAY_FORW
_set_lazy_summary = _LazyRelayData._summary.__set__  # type: ignore[attr-defined]

#: The summary of a lease stored without a relay chain.
NO_RELAY_SUMMARY = RelaySummary()


def _scan_ids(
    octets: bytes, options_text: str, relay_ids: list[bytes], remote_ids: list[bytes]
) -> tuple[bool, bool]:
    """
    Append the Relay-IDs and Remote-IDs of a relay's options (whether it had each kind).
    Options other than INTERFACE_ID, REMOTE_ID and RELAY_ID, and anything not well formed,
    go through the strict decoder (which raises L{KeaLeaseError} where L{relay_info} would).
    """
    relays_before = len(relay_ids)
    remotes_before = len(remote_ids)
    offset = 0
    end = len(octets)
    while offset < end:
        if end - offset < 4:
            break
        code, length = _option_header(octets, offset)
        begin = offset + 4
        offset = begin + length
        if offset > end:
            break
        if code == 53:
            raw = octets[begin:offset]
            if duid_problem(raw) is not None:
                break
            relay_ids.append(raw)
        elif code == 37:
            if length < 5:
                break
            remote_ids.append(octets[begin:offset])
        elif code != 18:
            break
    else:
        return len(relay_ids) > relays_before, len(remote_ids) > remotes_before
    del relay_ids[relays_before:]
    del remote_ids[remotes_before:]
    has_relay = has_remote = False
    for option in _relay_options(options_text):
        if type(option) is RelayId:
            relay_ids.append(option.duid.raw)
            has_relay = True
        elif type(option) is RemoteId:
            remote_ids.append(option.encode_data())
            has_remote = True
    return has_relay, has_remote


def relay_summary(user_context: str | None) -> RelaySummary:
    """
    The L{RelaySummary} of an (unescaped) C{user_context} JSON text: it raises
    L{KeaLeaseError} exactly when L{relay_info} does, and its ids and link-address are
    those of L{relay_info}'s result.
    """
    if not user_context:
        return NO_RELAY_SUMMARY
    try:
        # Kea writes no whitespace around the object: one scanner call, else the full path.
        context, end = _scan_json(user_context, 0)
    except (StopIteration, ValueError):
        end = -1
    if end != len(user_context) or type(context) is not dict:
        context = parse_user_context(user_context)
    if not context:
        return NO_RELAY_SUMMARY
    isc = context.get("ISC")
    if isc is None:
        return NO_RELAY_SUMMARY
    if type(isc) is not dict and not isinstance(isc, Mapping):
        raise KeaLeaseError("user_context ISC is not a JSON object")
    decoded_ids = "relay-info" in isc
    entries = isc.get("relay-info") if decoded_ids else isc.get("relays")
    if entries is None:
        return NO_RELAY_SUMMARY
    if not isinstance(entries, list):
        raise KeaLeaseError("relay information is not a JSON list")
    count = len(entries)
    if count > MAX_RELAY_HOPS:
        raise KeaLeaseError(f"relay chain of {count} hops exceeds {MAX_RELAY_HOPS}")
    if not count:
        return NO_RELAY_SUMMARY
    summary = _usual_summary(entries, count, decoded_ids)
    if summary is not None:
        return summary
    relay_ids: list[bytes] = []
    remote_ids: list[bytes] = []
    hops: list[Any] = []
    link_address = None
    for index, entry in enumerate(entries):
        hop, link_text, peer_text, octets, options_text, remote, relay = _hop_fields(
            entry, index, count, decoded_ids
        )
        try:
            link = _link_number(link_text)
        except (OSError, ValueError):
            raise KeaLeaseError(f"relay {index}: {link_text!r} is not an IPv6 address") from None
        try:
            peer = int.from_bytes(inet_pton(AF_INET6, peer_text))
        except (OSError, ValueError):
            raise KeaLeaseError(f"relay {index}: {peer_text!r} is not an IPv6 address") from None
        hops.append(_pack_hop(hop, link, peer, octets or b""))
        if link and link >> 118 != _LINK_LOCAL_TOP_BITS:
            link_address = link  # the last such hop is the one nearest the client
        has_relay = has_remote = False
        if octets is not None and options_text is not None:
            has_relay, has_remote = _scan_ids(octets, options_text, relay_ids, remote_ids)
        try:
            if remote is not None and not has_remote:
                remote_ids.append(
                    RemoteId.from_bytes(_hex_octets(remote, "remote-id")).encode_data()
                )
            if relay is not None and not has_relay:
                relay_ids.append(Duid.from_bytes(_hex_octets(relay, "relay-id")).raw)
        except WireError as error:
            raise KeaLeaseError(f"relay {index}: {error}") from None
    return RelaySummary(
        b"".join(hops),
        _shared(tuple(dict.fromkeys(relay_ids))),
        tuple(dict.fromkeys(remote_ids)),
        link_address,
    )


def escaped_relay_summary(text: str) -> RelaySummary:
    """
    C{relay_summary(unescape(text))} for the escaped C{user_context} of a memfile row.

    A one-hop chain written exactly as Kea writes it (Kea 2.2's sorted C{relays} keys, or
    Kea 2.4+'s C{relay-info} order) is read with one regular expression instead of the
    escapes and the JSON decoder; its values (hex, addresses, the hop count) can hold no
    escape or quote, so the entry is the one the JSON would give, and it goes through the
    same checks. Any other text goes through L{relay_summary}.

    @raise KeaLeaseError: as L{relay_summary}.
    """
    match = _KEA_RELAY_INFO(text)
    if match is not None:
        hop, link, peer, remote, relay, options = match.groups()
        entry = {"hop": int(hop), "link": link, "peer": peer, "options": options}
        if remote is not None:
            entry["remote-id"] = remote
        if relay is not None:
            entry["relay-id"] = relay
        summary = _usual_summary([entry], 1, True)
        if summary is not None:
            return summary
    else:
        match = _KEA_RELAYS(text)
        if match is not None:
            hop, link, options, peer = match.groups()
            entry = {"hop": int(hop), "link": link, "options": options, "peer": peer}
            summary = _usual_summary([entry], 1, False)
            if summary is not None:
                return summary
    return relay_summary(unescape(text))


#: Parts of a one-hop chain as Kea writes it in a lease file (commas escaped).
_KEA_HOP = r"(0|[1-9][0-9]{0,2})"
_KEA_ADDRESS = r'"([0-9A-Fa-f:.]*)"'
_KEA_HEX = r'"([0-9A-Fa-f]*)"'
_KEA_OPTIONS = r'"(0x[0-9A-Fa-f]*)"'
#: Kea 2.4+: hop, link, peer, remote-id and relay-id (when the relay sent them), options.
_KEA_RELAY_INFO = re.compile(
    rf'\{{ "ISC": \{{ "relay-info": \[ \{{ "hop": {_KEA_HOP}&#x2c "link": {_KEA_ADDRESS}'
    rf'&#x2c "peer": {_KEA_ADDRESS}(?:&#x2c "remote-id": {_KEA_HEX})?'
    rf'(?:&#x2c "relay-id": {_KEA_HEX})?&#x2c "options": {_KEA_OPTIONS} \}} \] \}} \}}'
).fullmatch
#: Kea 2.2: hop, link, options, peer (its keys sorted).
_KEA_RELAYS = re.compile(
    rf'\{{ "ISC": \{{ "relays": \[ \{{ "hop": {_KEA_HOP}&#x2c "link": {_KEA_ADDRESS}'
    rf'&#x2c "options": {_KEA_OPTIONS}&#x2c "peer": {_KEA_ADDRESS} \}} \] \}} \}}'
).fullmatch


_scan_json = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[attr-defined]
#: A relay of a packed chain (L{RelaySummary.hops}): hop count, link-address, peer-address,
#: length of the options that follow.
_HOP_HEADER = struct.Struct(">B16s16sH")
_unpack_hop = _HOP_HEADER.unpack_from
_pack_header = _HOP_HEADER.pack


def _pack_hop(hop: int, link: int, peer: int, octets: bytes) -> bytes:
    """One relay of a packed chain (checked values: the options fit in 65535 octets)."""
    return _pack_header(hop, link.to_bytes(16), peer.to_bytes(16), len(octets)) + octets


_new_summary = tuple.__new__


def _usual_summary(entries: list[Any], count: int, decoded_ids: bool) -> RelaySummary | None:
    """
    L{relay_summary}'s result for the chain Kea usually writes (entries that are JSON
    objects with an int C{hop}, text addresses, C{0x}-prefixed options holding only
    INTERFACE_ID, REMOTE_ID and well-formed RELAY_ID options, and any decoded C{remote-id}
    or C{relay-id} also present in the options), faster; C{None} for anything else, which
    the general path then reads (and refuses with its own message when malformed).
    """
    relay_ids: list[bytes] = []
    remote_ids: list[bytes] = []
    hops: list[Any] = []
    link_address = None
    for index, entry in enumerate(entries):
        if type(entry) is not dict:
            return None
        hop = entry.get("hop", count - 1 - index)
        link_text = entry.get("link", "::")
        peer_text = entry.get("peer", "::")
        options_text = entry.get("options")
        if (
            type(hop) is not int
            or not 0 <= hop <= 255
            or type(link_text) is not str
            or type(peer_text) is not str
        ):
            return None
        try:
            link = _LINK_NUMBERS.get(link_text)
            if link is None:
                link = _link_number(link_text)
            peer = inet_pton(AF_INET6, peer_text)
        except (OSError, ValueError):
            return None
        has_relay = has_remote = False
        if options_text is None:
            octets = b""
        else:
            if (
                type(options_text) is not str
                or len(options_text) > _MAX_OPTIONS_HEX
                or options_text[:2] not in ("0x", "0X")
            ):
                return None
            try:
                octets = bytes.fromhex(options_text[2:])
            except ValueError:
                return None
            end = len(octets)
            if 2 * end + 2 != len(options_text):
                return None  # whitespace fromhex skipped
            offset = 0
            while offset < end:
                if end - offset < 4:
                    return None
                code, length = _option_header(octets, offset)
                begin = offset + 4
                offset = begin + length
                if offset > end:
                    return None
                if code == 53:
                    raw = octets[begin:offset]
                    if raw not in _VALID_RELAY_IDS:
                        if duid_problem(raw) is not None:
                            return None
                        if len(_VALID_RELAY_IDS) >= 65536:
                            _VALID_RELAY_IDS.clear()
                        _VALID_RELAY_IDS.add(raw)
                    relay_ids.append(raw)
                    has_relay = True
                elif code == 37:
                    if length < 5:
                        return None
                    remote_ids.append(octets[begin:offset])
                    has_remote = True
                elif code != 18:
                    return None
        if decoded_ids and (
            (not has_remote and entry.get("remote-id") is not None)
            or (not has_relay and entry.get("relay-id") is not None)
        ):
            return None  # the decoded id counts: the general path checks and adds it
        hops.append(_pack_header(hop, link.to_bytes(16), peer, len(octets)) + octets)
        if link and link >> 118 != _LINK_LOCAL_TOP_BITS:
            link_address = link
    return _new_summary(
        RelaySummary,
        (
            hops[0] if len(hops) == 1 else b"".join(hops),
            _shared(tuple(relay_ids) if len(relay_ids) < 2 else tuple(dict.fromkeys(relay_ids))),
            tuple(remote_ids) if len(remote_ids) < 2 else tuple(dict.fromkeys(remote_ids)),
            link_address,
        ),
    )


def shared_summary(values: Sequence[Any]) -> RelaySummary:
    """
    The L{RelaySummary} of the plain values of one (C{tuple(summary)}, as another process
    sends it), sharing its Relay-ID tuple and its link-address with the summaries before
    (as L{relay_summary} does).

    @raise ValueError: if C{values} are not four values.
    """
    if not values[0]:
        return NO_RELAY_SUMMARY
    hops, relay_ids, remote_ids, link_address = values
    if link_address is not None:
        # One number object per link-address, as _link_number gives (few relays).
        found = _SHARED_LINKS.get(link_address)
        if found is None:
            if len(_SHARED_LINKS) >= 65536:
                _SHARED_LINKS.clear()
            found = _SHARED_LINKS[link_address] = link_address
        link_address = found
    return _new_summary(RelaySummary, (hops, _shared(relay_ids), remote_ids, link_address))


#: Link-addresses of the summaries made by L{shared_summary} (a number -> that number).
_SHARED_LINKS: dict[int, int] = {}


#: Relay-ID octets known to be valid DUIDs (few relays serve many clients).
_VALID_RELAY_IDS: set[bytes] = set()

#: Relay-ID tuples seen: few relays serve many clients, so summaries share them.
_SHARED: dict[tuple[bytes, ...], tuple[bytes, ...]] = {}


def _shared(ids: tuple[bytes, ...]) -> tuple[bytes, ...]:
    found = _SHARED.get(ids)
    if found is None:
        if len(_SHARED) >= 65536:
            _SHARED.clear()
        found = _SHARED[ids] = ids
    return found


#: Link-addresses seen (text -> number); bounded by L{_link_number}.
_LINK_NUMBERS: dict[str, int] = {}


def _link_number(text: str) -> int:
    number = _LINK_NUMBERS.get(text)
    if number is None:
        number = int.from_bytes(inet_pton(AF_INET6, text))
        if len(_LINK_NUMBERS) >= 8192:
            _LINK_NUMBERS.clear()
        _LINK_NUMBERS[text] = number
    return number


def lease_relay_hops(lease: KeaLease6) -> tuple[KeaRelayHop, ...]:
    """
    The relay chain stored with C{lease}, outermost relay first (see L{relay_hops}).

    @raise KeaLeaseError: if its user context or relay information is malformed.
    """
    return relay_hops(lease.context())


def relay_data_from_hops(hops: Sequence[KeaRelayHop]) -> LQRelayData | None:
    """
    The LQ_RELAY_DATA option for a stored chain, or C{None} for an empty one.

    RELAY-FORW layers outermost first, each nesting the next in RELAY_MSG, the innermost
    without RELAY_MSG; the peer-address is the outermost relay's.

    @raise KeaLeaseError: if the chain cannot be encoded (a message over 65535 octets).
    """
    if not hops:
        return None
    message: RelayMessage | None = None
    for hop in reversed(hops):
        options = hop.options
        if message is not None:
            options = (*options, RelayMessageOption(message))
        message = RelayMessage(MessageType.RELAY_FORW, hop.hop, hop.link, hop.peer, options)
    assert message is not None
    return LQRelayData(hops[0].peer, message)


def _identities(
    hops: Sequence[KeaRelayHop],
) -> tuple[list[Duid], list[RemoteId]]:
    relay_ids: list[Duid] = []
    remote_ids: list[RemoteId] = []
    for hop in hops:
        for option in hop.options:
            if type(option) is RelayId:
                relay_ids.append(option.duid)
            elif type(option) is RemoteId:
                remote_ids.append(option)
        if hop.relay_id is not None:
            relay_ids.append(hop.relay_id)
        if hop.remote_id is not None:
            remote_ids.append(hop.remote_id)
    return relay_ids, remote_ids


def client_link_address(hops: Sequence[KeaRelayHop]) -> IPv6Address | None:
    """
    The link-address Kea selects the subnet by: that of the relay nearest the client that is
    neither C{::} nor link-local (a lightweight relay, RFC 6221, puts C{::} there). C{None}
    when no relay has one.
    """
    for hop in reversed(hops):
        value = int(hop.link)
        if value and value >> 118 != _LINK_LOCAL_TOP_BITS:
            return hop.link
    return None


def interface_ids(hops: Sequence[KeaRelayHop]) -> tuple[bytes, ...]:
    """The Interface-ID values found in a stored chain, outermost relay first."""
    return tuple(
        option.value for hop in hops for option in hop.options if type(option) is InterfaceId
    )


def _unique(values: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(dict.fromkeys(values))


@attrs.frozen
class RelayInfo:
    """
    What a lease's stored relay chain gives a binding.

    @ivar relay_data: the rebuilt LQ_RELAY_DATA, or C{None} when the lease has no chain.
    @ivar relay_ids: the Relay-IDs of every hop, outermost first, without repeats.
    @ivar remote_ids: the Remote-IDs of every hop, outermost first, without repeats.
    @ivar link_address: the link-address Kea selected the subnet by
        (L{client_link_address}), or C{None}.
    """

    relay_data: LQRelayData | None
    relay_ids: tuple[Duid, ...] = ()
    remote_ids: tuple[RemoteId, ...] = ()
    link_address: IPv6Address | None = None

    @classmethod
    def from_hops(cls, hops: Sequence[KeaRelayHop]) -> RelayInfo:
        """The relay information of a stored chain (outermost hop first)."""
        if not hops:
            return NO_RELAY
        relay_ids, remote_ids = _identities(hops)
        return cls(
            relay_data_from_hops(hops),
            _unique(relay_ids),
            _unique(remote_ids),
            client_link_address(hops),
        )


#: The relay information of a lease stored without a relay chain.
NO_RELAY = RelayInfo(None)


def relay_info(user_context: str | None) -> RelayInfo:
    """
    The relay information in an (unescaped) C{user_context} JSON text.

    @raise KeaLeaseError: if the text is not a JSON object or its relay chain is malformed.
    """
    if not user_context:
        return NO_RELAY
    return RelayInfo.from_hops(relay_hops(parse_user_context(user_context)))


@lru_cache(maxsize=4096)
def cached_relay_info(user_context: str | None) -> RelayInfo:
    """
    L{relay_info}, remembering the most recent distinct contexts (many leases share one:
    the rows of a transaction, the clients of a relay without per-client options).

    @raise KeaLeaseError: as L{relay_info}.
    """
    return relay_info(user_context)


#: One active lease as a part of a binding: the lease with the lifetimes granted at its own
#: CLTT, that CLTT, and its relay information.
LeasePart = tuple[AddressLease | PrefixLease, int, RelayInfo]


def _make_network_builder() -> Callable[[int, int], IPv6Network]:
    """
    C{IPv6Network((value, length))} for a network address C{value} without host bits and a
    length below 127, without the constructor's parsing, if this Python's C{IPv6Network}
    keeps its state as it does in 3.11 to 3.13 (checked against the constructor); else the
    constructor itself.
    """
    make_netmask = IPv6Network._make_netmask  # type: ignore[attr-defined]

    def build(value: int, length: int) -> IPv6Network:
        network = _new(IPv6Network)
        state = network.__dict__
        state["network_address"] = ipv6_from_int(value)
        state["netmask"], state["_prefixlen"] = make_netmask(length)
        return network

    def construct(value: int, length: int) -> IPv6Network:
        return IPv6Network((value, length))

    try:
        for value, length in ((0x20010DB8 << 96, 32), (0x20010DB8000001 << 72, 56), (0, 0)):
            built, reference = build(value, length), IPv6Network((value, length))
            if not (
                built == reference
                and hash(built) == hash(reference)
                and str(built) == str(reference)
                and built.network_address == reference.network_address
                and built.broadcast_address == reference.broadcast_address
                and built.netmask == reference.netmask
                and IPv6Address(value + 1) in built
            ):  # pragma: no cover - another Python's ipaddress
                return construct
    except Exception:  # pragma: no cover - another Python's ipaddress
        return construct
    return build


#: C{_network(value, length)}: see L{_make_network_builder}.
_network = _make_network_builder()


def lease_item(
    address: IPv6Address, lease_type: int, prefix_len: int, preferred: int, valid: int
) -> AddressLease | PrefixLease:
    """
    The address or delegated prefix of a lease row, with the lifetimes of the row.

    @raise KeaLeaseError: for an unknown lease type or an invalid prefix.
    """
    if lease_type == LEASE_TYPE_PD:
        value = int(address)
        if 0 <= prefix_len < 127 and not value & ((1 << (128 - prefix_len)) - 1):
            network = _network(value, prefix_len)
        else:
            try:
                # An int, not the address: IPv6Network would format and re-parse it.
                network = IPv6Network((value, prefix_len))
            except ValueError as error:
                raise KeaLeaseError(f"prefix: {error}") from None
        prefix_lease = _new(PrefixLease)
        _set_prefix(prefix_lease, network)
        _set_prefix_preferred(prefix_lease, preferred)
        _set_prefix_valid(prefix_lease, valid)
        return prefix_lease
    if lease_type in (LEASE_TYPE_NA, LEASE_TYPE_TA):
        lease = _new(AddressLease)
        _set_address(lease, address)
        _set_preferred(lease, preferred)
        _set_valid(lease, valid)
        return lease
    raise KeaLeaseError(f"lease_type {lease_type} is not 0, 1 or 2")


def lease_part(lease: KeaLease6, info: RelayInfo | None = None) -> LeasePart:
    """
    C{lease} as a part of its binding; C{info} saves decoding its user context again.

    @raise KeaLeaseError: if its lease type, prefix or user context is malformed.
    """
    item = lease_item(
        lease.address,
        lease.lease_type,
        lease.prefix_len,
        lease.pref_lifetime,
        lease.valid_lifetime,
    )
    if info is None:
        info = relay_info(lease.user_context)
    return (item, lease.cltt, info)


def client_duid(octets: bytes) -> Duid:
    """
    The DUID of a lease's C{duid} column.

    @raise KeaLeaseError: if it is not a valid DUID.
    """
    problem = duid_problem(octets)
    if problem is not None:
        raise KeaLeaseError(f"duid: {WireError(problem, 0)}")
    return _duid_of(bytes(octets))


def assemble_binding(duid: Duid, link_id: str, parts: Iterable[LeasePart]) -> Binding | None:
    """
    The binding of one client's active leases on one link, or C{None} when C{parts} is
    empty.

    The newest part (largest CLTT; the last given on a tie) gives the binding its CLTT and
    relay chain; the other parts' lifetimes are shortened by how much older their CLTT is,
    so that each lease keeps its own expiry. Relay-IDs and Remote-IDs are those of every
    part (newest first, without repeats). Addresses and prefixes are sorted.
    """
    items = list(parts)
    if not items:
        return None
    if len(items) == 1:
        item, cltt, info = items[0]
        if type(item) is PrefixLease:
            return _binding(duid, link_id, cltt, (), (item,), info, info.relay_ids, info.remote_ids)
        return _binding(
            duid,
            link_id,
            cltt,
            (item,),  # type: ignore[arg-type]
            (),
            info,
            info.relay_ids,
            info.remote_ids,
        )
    newest = items[0]
    for part in items:
        if part[1] >= newest[1]:
            newest = part
    cltt = newest[1]
    info = newest[2]
    addresses: list[AddressLease] = []
    prefixes: list[PrefixLease] = []
    shared_info = True
    for given, item_cltt, item_info in items:
        if item_info is not info:
            shared_info = False
        item = given
        if item_cltt != cltt:
            age = cltt - item_cltt
            valid = given.valid_lifetime - age
            if valid <= 0:
                continue
            preferred = max(0, min(valid, given.preferred_lifetime - age))
            item = attrs.evolve(given, preferred_lifetime=preferred, valid_lifetime=valid)
        if type(item) is PrefixLease:
            prefixes.append(item)
        else:
            addresses.append(item)  # type: ignore[arg-type]
    if len(addresses) > 1:
        addresses.sort(key=_address_key)
    if len(prefixes) > 1:
        prefixes.sort(key=_prefix_key)
    if shared_info:
        relay_ids, remote_ids = info.relay_ids, info.remote_ids
    else:
        ordered = sorted(items, key=_part_age)
        relay_ids = _unique(relay_id for part in ordered for relay_id in part[2].relay_ids)
        remote_ids = _unique(remote_id for part in ordered for remote_id in part[2].remote_ids)
    return _binding(
        duid, link_id, cltt, tuple(addresses), tuple(prefixes), info, relay_ids, remote_ids
    )


def checked_binding(  # noqa: PLR0917 - positional like Binding(...)
    duid: Duid,
    link_id: str,
    cltt: int,
    addresses: tuple[AddressLease, ...],
    prefixes: tuple[PrefixLease, ...],
    info: RelayInfo,
) -> Binding:
    """
    C{Binding(duid, link_id, cltt, addresses, prefixes, ...)} with C{info}'s relay data and
    ids, for values already checked (addresses and prefixes sorted), faster than the class.
    """
    return _binding(duid, link_id, cltt, addresses, prefixes, info, info.relay_ids, info.remote_ids)


def _binding(  # noqa: PLR0917 - a hot constructor, positional like Binding(...)
    duid: Duid,
    link_id: str,
    cltt: int,
    addresses: tuple[AddressLease, ...],
    prefixes: tuple[PrefixLease, ...],
    info: RelayInfo,
    relay_ids: tuple[Duid, ...],
    remote_ids: tuple[RemoteId, ...],
) -> Binding:
    """C{Binding(...)} for checked values, without attrs' __init__."""
    binding = _new(Binding)
    (
        set_client,
        set_link,
        set_cltt,
        set_addresses,
        set_prefixes,
        set_relay,
        set_ids,
        set_remotes,
        set_options,
    ) = _set_binding
    set_client(binding, duid)
    set_link(binding, link_id)
    set_cltt(binding, cltt)
    set_addresses(binding, addresses)
    set_prefixes(binding, prefixes)
    set_relay(binding, info.relay_data)
    set_ids(binding, relay_ids)
    set_remotes(binding, remote_ids)
    set_options(binding, ())
    return binding


def _part_age(part: LeasePart) -> int:
    return -part[1]


def bindings_from_leases(
    leases: Iterable[KeaLease6],
    now: float,
    link_id: Callable[[int], str] = subnet_link_id,
    on_error: Callable[[KeaLease6, KeaLeaseError], None] | None = None,
) -> list[Binding]:
    """
    Group the active leases among C{leases} into bindings, one per (subnet, DUID).

    Inactive leases (see L{is_active}) are ignored. See the module docstring and
    L{assemble_binding} for how the binding's CLTT, lifetimes, relay chain and identities
    are chosen. The result is in no particular order.

    @param link_id: maps a subnet id to the binding's link id (default L{subnet_link_id}).
    @param on_error: called with a lease whose DUID, type, prefix or relay information is
        malformed; that lease is left out. Without it, the error is raised.
    @raise KeaLeaseError: for a malformed lease when C{on_error} is not given.
    """
    groups: dict[tuple[int, bytes], list[LeasePart]] = {}
    cache: dict[str | None, RelayInfo] = {}
    duids: dict[bytes, Duid] = {}
    for lease in leases:
        if not is_active(lease, now):
            continue
        try:
            if lease.duid not in duids:
                duids[lease.duid] = client_duid(lease.duid)
            info = cache.get(lease.user_context)
            if info is None:
                info = cache[lease.user_context] = relay_info(lease.user_context)
            part = lease_part(lease, info)
        except KeaLeaseError as error:
            if on_error is None:
                raise
            on_error(lease, error)
            continue
        groups.setdefault((lease.subnet_id, lease.duid), []).append(part)
    bindings = []
    for (subnet_id, duid), parts in groups.items():
        binding = assemble_binding(duids[duid], link_id(subnet_id), parts)
        if binding is not None:
            bindings.append(binding)
    return bindings


def _address_key(lease: AddressLease) -> IPv6Address:
    return lease.address


def _prefix_key(lease: PrefixLease) -> tuple[IPv6Address, int]:
    return (lease.prefix.network_address, lease.prefix.prefixlen)


def links_from_link_addresses(
    addresses_by_subnet: Mapping[int, Iterable[IPv6Address]],
    link_id: Callable[[int], str] = subnet_link_id,
) -> list[Link]:
    """
    Links for subnets known only from their leases' relay link-addresses: each subnet's link
    gets one /128 prefix per distinct link-address (see L{client_link_address}), so that an
    LQ query naming that link-address finds the subnet.
    """
    return [
        Link(
            link_id(subnet_id),
            tuple(IPv6Network(address) for address in sorted(set(addresses))),
        )
        for subnet_id, addresses in sorted(addresses_by_subnet.items())
    ]
