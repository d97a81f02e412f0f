"""
Links from ISC Kea's DHCPv6 server configuration (C{kea-dhcp6.conf}).

Kea's configuration is JSON with comments (C{//} and C{#} to the end of the line, C{/* */}
blocks). Every C{subnet6} entry, at the top level of C{Dhcp6} or inside a
C{shared-networks} entry, becomes one L{Link}: its id is C{"subnet-<id>"} (as
L{bulklq.stores.kea_leases.subnet_link_id} names the leases' links) and its prefixes are the
subnet's prefix plus, as /128 prefixes, the addresses listed under the subnet's (or its
shared network's) C{relay.ip-addresses} (Kea selects the subnet by those too).

A subnet without an explicit C{id} is refused: Kea numbers such subnets itself and the
lease file only records the number, so bulklq cannot know which link they are.
C{<?include ?>} directives are not followed (refused with a clear message).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

from ..model import Link
from .kea_leases import subnet_link_id

__all__ = ["KeaConfigError", "links_from_config", "load_kea_config", "strip_comments"]

#: Largest configuration file read (Kea configurations with many thousands of subnets are
#: a few megabytes).
MAX_CONFIG_SIZE = 64 * 1024 * 1024


class KeaConfigError(ValueError):
    """Kea's configuration cannot be read or does not describe DHCPv6 subnets."""


def strip_comments(text: str) -> str:
    """
    Kea's JSON-with-comments as plain JSON: C{//} and C{#} comments to the end of the line
    and C{/* */} blocks are blanked (newlines kept, so JSON errors name the right line);
    text inside JSON strings is left alone.

    @raise KeaConfigError: for an unterminated C{/*} comment or string.
    """
    out: list[str] = []
    index = 0
    length = len(text)
    start = 0
    while index < length:
        char = text[index]
        if char == '"':
            index += 1
            while index < length and text[index] != '"':
                index += 2 if text[index] == "\\" else 1
            if index >= length:
                raise KeaConfigError("unterminated string in the configuration")
            index += 1
        elif char == "#" or text.startswith("//", index):
            out.append(text[start:index])
            end = text.find("\n", index)
            index = start = length if end < 0 else end
        elif text.startswith("/*", index):
            out.append(text[start:index])
            end = text.find("*/", index + 2)
            if end < 0:
                raise KeaConfigError("unterminated /* comment in the configuration")
            out.append("\n" * text.count("\n", index, end))
            index = start = end + 2
        else:
            index += 1
    out.append(text[start:])
    return "".join(out)


def _relay_addresses(entry: Mapping[str, Any], where: str) -> list[IPv6Network]:
    relay = entry.get("relay")
    if relay is None:
        return []
    if not isinstance(relay, Mapping):
        raise KeaConfigError(f"{where}: relay is not an object")
    addresses = list(relay.get("ip-addresses", []))
    if "ip-address" in relay:
        addresses.append(relay["ip-address"])
    try:
        return [IPv6Network(IPv6Address(str(address))) for address in addresses]
    except ValueError as error:
        raise KeaConfigError(f"{where}: relay address: {error}") from None


def _subnet_links(
    subnets: object, inherited: list[IPv6Network], where: str, links: dict[int, Link]
) -> None:
    if subnets is None:
        return
    if not isinstance(subnets, list):
        raise KeaConfigError(f"{where}: subnet6 is not a list")
    for position, subnet in enumerate(subnets):
        place = f"{where} subnet6[{position}]"
        if not isinstance(subnet, Mapping):
            raise KeaConfigError(f"{place} is not an object")
        try:
            prefix = IPv6Network(str(subnet["subnet"]))
        except KeyError:
            raise KeaConfigError(f"{place} has no subnet prefix") from None
        except ValueError as error:
            raise KeaConfigError(f"{place}: {error}") from None
        subnet_id = subnet.get("id")
        if not isinstance(subnet_id, int) or isinstance(subnet_id, bool) or subnet_id <= 0:
            raise KeaConfigError(
                f"{place} ({prefix}) has no positive integer id: give every Kea subnet "
                f'an explicit "id", the lease file records only that number'
            )
        if subnet_id in links:
            raise KeaConfigError(f"{place}: subnet id {subnet_id} is used twice")
        relays = _relay_addresses(subnet, place) or inherited
        prefixes = tuple(dict.fromkeys([prefix, *relays]))
        links[subnet_id] = Link(subnet_link_id(subnet_id), prefixes)


def links_from_config(config: Mapping[str, Any]) -> dict[int, Link]:
    """
    The links of a decoded Kea configuration, by subnet id.

    @raise KeaConfigError: if it has no C{Dhcp6} object or a subnet is malformed.
    """
    dhcp6 = config.get("Dhcp6")
    if not isinstance(dhcp6, Mapping):
        raise KeaConfigError('the configuration has no "Dhcp6" object')
    links: dict[int, Link] = {}
    _subnet_links(dhcp6.get("subnet6"), [], "Dhcp6", links)
    networks = dhcp6.get("shared-networks", [])
    if not isinstance(networks, list):
        raise KeaConfigError("Dhcp6 shared-networks is not a list")
    for position, network in enumerate(networks):
        where = f"Dhcp6 shared-networks[{position}]"
        if not isinstance(network, Mapping):
            raise KeaConfigError(f"{where} is not an object")
        _subnet_links(network.get("subnet6"), _relay_addresses(network, where), where, links)
    return links


def load_kea_config(path: str | Path) -> dict[int, Link]:
    """
    Read Kea's DHCPv6 configuration file and return its links by subnet id.

    @raise KeaConfigError: if the file cannot be read, is not JSON with comments, or does
        not describe subnets as L{links_from_config} needs.
    """
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CONFIG_SIZE + 1)
    except OSError as error:
        raise KeaConfigError(f"cannot read Kea configuration {path}: {error.strerror}") from None
    if len(raw) > MAX_CONFIG_SIZE:
        raise KeaConfigError(f"Kea configuration {path} exceeds {MAX_CONFIG_SIZE} octets")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise KeaConfigError(f"Kea configuration {path} is not UTF-8: {error}") from None
    if "<?include" in text:
        raise KeaConfigError(
            f"Kea configuration {path} uses <?include ?>: give bulklq the expanded file"
        )
    try:
        config = json.loads(strip_comments(text))
    except ValueError as error:
        raise KeaConfigError(f"Kea configuration {path} is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise KeaConfigError(f"Kea configuration {path} is not a JSON object")
    try:
        return links_from_config(config)
    except KeaConfigError as error:
        raise KeaConfigError(f"Kea configuration {path}: {error}") from None
