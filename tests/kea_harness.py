"""
A private laboratory with a real ISC Kea DHCPv6 server, for end-to-end tests.

L{KeaLab} creates two network namespaces joined by a veth pair, runs C{kea-dhcp6} (Debian's
2.2 package) in the foreground in one of them with C{store-extended-info} and a memfile lease
file in a temporary directory, and acts, from the other namespace, as one or more relay agents:
it sends RELAY-FORW messages built with L{bulklq.wire} to Kea's UDP port 547 and reads the
RELAY-REPL answers, walking SOLICIT, ADVERTISE, REQUEST, REPLY (and RENEW or RELEASE for some
clients) so that Kea writes its own lease file.

Nothing leaves the machine: every address used lives inside the namespaces the lab creates,
and the lab removes them (and stops Kea) in L{KeaLab.close}, which is idempotent and also runs
when L{KeaLab.start} fails half-way.

L{SCENARIO} lists the clients, links and relay chains; L{KeaLab.run_scenario} plays it and
returns what was sent and what Kea granted, from which a test computes the bindings it expects
bulklq to serve, without reading the lease file.

Running it needs root, C{ip netns} (iproute2) and C{kea-dhcp6}; L{unavailable_reason} says
why the lab cannot run here, or C{None}.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

import attrs

from bulklq.testing import relay_identity_options
from bulklq.wire import (
    ClientId,
    Duid,
    IAAddress,
    IAPrefix,
    InterfaceId,
    Message,
    MessageType,
    Option,
    OptionCode,
    RelayId,
    RelayMessage,
    RelayMessageOption,
    RemoteId,
    ServerId,
    StatusCode,
    StatusCodeOption,
    UnknownOption,
    decode_message,
    decode_options,
    encode_options,
)

__all__ = [
    "KEA_DHCP6_ENV",
    "RELAY_ADDRESS",
    "SCENARIO",
    "SERVER_ADDRESS",
    "ClientOutcome",
    "ClientPlan",
    "KeaLab",
    "KeaLabError",
    "KeaLabUnavailableError",
    "LabResult",
    "LinkPlan",
    "RelayHop",
    "find_kea_dhcp6",
    "kea_config_text",
    "unavailable_reason",
]

#: Environment variable naming the kea-dhcp6 binary (set by .ci/setup.d/40-kea.sh).
KEA_DHCP6_ENV = "BULKLQ_KEA_DHCP6"

#: The relay's end of the veth pair (in the relay namespace) and Kea's end (in Kea's).
RELAY_ADDRESS = IPv6Address("2001:db8:ffff::1")
SERVER_ADDRESS = IPv6Address("2001:db8:ffff::2")
_VETH_PREFIX_LENGTH = 64

#: Kea's server DUID (DUID-EN, enterprise 2495 = ISC), fixed so the fixture is reproducible.
SERVER_DUID = Duid.en(2495, b"bulklq-e2e")

_CLONE_NEWNET = 0x40000000
_DHCP_PORT = 547
_OPTION_ELAPSED_TIME = 8


class KeaLabError(Exception):
    """The lab could not be set up, or Kea did not answer as a DHCPv6 server must."""


class KeaLabUnavailableError(KeaLabError):
    """This machine cannot host the lab (e.g. creating a network namespace is not allowed)."""


# --------------------------------------------------------------------------------------------
# The scenario: links (Kea subnets), relays and clients.


@attrs.frozen
class LinkPlan:
    """
    One link: a Kea subnet with an address pool and, optionally, a prefix-delegation pool.

    @ivar subnet_id: Kea's subnet id (deliberately not 1, 2, 3: a store must read it).
    @ivar relay_link_address: the link-address the link's relay puts in RELAY-FORW.
    """

    subnet_id: int
    prefix: IPv6Network
    pool: tuple[IPv6Address, IPv6Address]
    relay_link_address: IPv6Address
    pd_pool: IPv6Network | None = None
    delegated_length: int = 56
    preferred_lifetime: int = 3000
    valid_lifetime: int = 4000


@attrs.frozen
class RelayHop:
    """
    One RELAY-FORW layer as a relay agent builds it.

    Options are sent in this order; C{hop_count} is the layer's hop-count field.
    """

    link_address: IPv6Address
    peer_address: IPv6Address
    hop_count: int
    options: tuple[Option, ...]


@attrs.frozen
class ClientPlan:
    """
    One client: its DUID, the links it asks on, the relay chain (outermost first), and
    what happens after it got its leases.

    @ivar chains: for each link it asks on, the relay chain its messages travel through,
        outermost layer first (the one Kea receives).
    @ivar renew_chain: if set, the client renews on its first link through this chain
        (e.g. with a new Remote-ID) after its REPLY.
    @ivar release: C{"all"}, C{"na"}, C{"pd"} or C{None}: which of its leases it releases
        on its first link (after any renew).
    """

    name: str
    duid: Duid
    chains: tuple[tuple[int, tuple[RelayHop, ...]], ...]
    want_na: bool = True
    want_pd: bool = False
    renew_chain: tuple[RelayHop, ...] | None = None
    release: str | None = None


def _hop(
    link: str,
    peer: str,
    hop_count: int,
    *,
    interface_id: bytes | None = None,
    remote_id: RemoteId | None = None,
    relay_id: Duid | None = None,
) -> RelayHop:
    options = relay_identity_options(interface_id, remote_id, relay_id)
    return RelayHop(IPv6Address(link), IPv6Address(peer), hop_count, tuple(options))


_ENTERPRISE = 32473  # RFC 5612 documentation enterprise number

LINKS: tuple[LinkPlan, ...] = (
    LinkPlan(
        subnet_id=101,
        prefix=IPv6Network("2001:db8:1::/64"),
        pool=(IPv6Address("2001:db8:1::1000"), IPv6Address("2001:db8:1::1fff")),
        relay_link_address=IPv6Address("2001:db8:1::1"),
        pd_pool=IPv6Network("2001:db8:8100::/40"),
        delegated_length=56,
    ),
    LinkPlan(
        subnet_id=202,
        prefix=IPv6Network("2001:db8:2::/64"),
        pool=(IPv6Address("2001:db8:2::2000"), IPv6Address("2001:db8:2::2fff")),
        relay_link_address=IPv6Address("2001:db8:2::1"),
        pd_pool=IPv6Network("2001:db8:8200::/40"),
        delegated_length=60,
        preferred_lifetime=5000,
        valid_lifetime=7200,
    ),
    LinkPlan(
        subnet_id=303,
        prefix=IPv6Network("2001:db8:3::/64"),
        pool=(IPv6Address("2001:db8:3::3000"), IPv6Address("2001:db8:3::3fff")),
        relay_link_address=IPv6Address("2001:db8:3::1"),
        pd_pool=IPv6Network("2001:db8:8300::/40"),
        delegated_length=64,
    ),
)

#: Relay agents' DUIDs (their OPTION_RELAY_ID).
RELAY_A = Duid.en(_ENTERPRISE, b"relay-a")
RELAY_B = Duid.ll(1, bytes.fromhex("02000000000b"))
RELAY_C = Duid.en(_ENTERPRISE, b"relay-c-access")
RELAY_D = Duid.llt(1, 700000000, bytes.fromhex("02000000000d"))


def _remote(circuit: str) -> RemoteId:
    return RemoteId(_ENTERPRISE, circuit.encode("ascii"))


def _a(link: int, n: int, *, remote: str | None = None) -> RelayHop:
    """Relay A, a single relay serving links 101 and 202."""
    return _hop(
        str(LINKS[link].relay_link_address),
        f"fe80::a:{n:x}",
        0,
        interface_id=f"A/eth{link}/{n}".encode(),
        remote_id=_remote(remote or f"a-{n}"),
        relay_id=RELAY_A,
    )


def _b(n: int, *, remote: str | None = None) -> RelayHop:
    """Relay B, a single relay on link 202."""
    return _hop(
        str(LINKS[1].relay_link_address),
        f"fe80::b:{n:x}",
        0,
        interface_id=f"B/ge-0/0/{n}".encode(),
        remote_id=_remote(remote or f"b-{n}"),
        relay_id=RELAY_B,
    )


def _cd(n: int) -> tuple[RelayHop, ...]:
    """Two relays: access relay C on link 303, behind aggregation relay D."""
    inner = _hop(
        str(LINKS[2].relay_link_address),
        f"fe80::c:{n:x}",
        0,
        interface_id=f"C/port{n}".encode(),
        remote_id=_remote(f"c-{n}"),
        relay_id=RELAY_C,
    )
    # Relay D sends RELAY_ID before INTERFACE_ID: Kea 2.2 stores relay options sorted by
    # code, so the lease file (and bulklq's LQ_RELAY_DATA) has them the other way round.
    outer = RelayHop(
        IPv6Address("2001:db8:fffe::d"),
        IPv6Address("2001:db8:fffe::c"),
        1,
        (RelayId(RELAY_D), InterfaceId(b"D/uplink-c")),
    )
    return (outer, inner)


def _ldra(n: int) -> tuple[RelayHop, ...]:
    """A lightweight relay (RFC 6221, link-address ::) behind relay B on link 202."""
    inner = _hop(
        "::",
        f"fe80::1d:{n:x}",
        0,
        interface_id=f"LDRA/port{n}".encode(),
        remote_id=_remote(f"ldra-{n}"),
    )
    outer = _hop(
        str(LINKS[1].relay_link_address),
        f"fe80::1d:{n:x}",
        1,
        interface_id=b"B/ldra-uplink",
        relay_id=RELAY_B,
    )
    return (outer, inner)


SCENARIO: tuple[ClientPlan, ...] = (
    ClientPlan(
        "c1-na-pd",
        Duid.llt(1, 700000001, bytes.fromhex("020000000101")),
        ((101, (_a(0, 1),)),),
        want_pd=True,
    ),
    ClientPlan("c2-na", Duid.ll(1, bytes.fromhex("020000000102")), ((101, (_a(0, 2),)),)),
    ClientPlan(
        "c3-pd-only",
        Duid.en(_ENTERPRISE, b"cpe-0003"),
        ((101, (_a(0, 3),)),),
        want_na=False,
        want_pd=True,
    ),
    ClientPlan(
        "c4-na-pd-link202",
        Duid.uuid(bytes(range(0x40, 0x50))),
        ((202, (_a(1, 4),)),),
        want_pd=True,
    ),
    ClientPlan(
        "c5-released",
        Duid.ll(1, bytes.fromhex("020000000105")),
        ((202, (_b(5),)),),
        want_pd=True,
        release="all",
    ),
    ClientPlan(
        "c6-released-na-keeps-pd",
        Duid.ll(1, bytes.fromhex("020000000106")),
        ((202, (_b(6),)),),
        want_pd=True,
        release="na",
    ),
    ClientPlan(
        "c7-two-relays",
        Duid.llt(1, 700000007, bytes.fromhex("020000000107")),
        ((303, _cd(7)),),
        want_pd=True,
    ),
    ClientPlan("c8-two-relays", Duid.en(_ENTERPRISE, b"cpe-0008"), ((303, _cd(8)),)),
    ClientPlan(
        "c9-ldra",
        Duid.ll(1, bytes.fromhex("020000000109")),
        ((202, _ldra(9)),),
        want_pd=True,
    ),
    ClientPlan(
        "c10-two-links",
        Duid.llt(1, 700000010, bytes.fromhex("02000000010a")),
        ((101, (_a(0, 10, remote="a-10"),)), (202, (_a(1, 10, remote="a-10"),))),
    ),
    ClientPlan(
        "c11-renewed-new-remote-id",
        Duid.ll(1, bytes.fromhex("02000000010b")),
        ((101, (_a(0, 11, remote="a-11-old"),)),),
        want_pd=True,
        renew_chain=(_a(0, 11, remote="a-11-new"),),
    ),
    ClientPlan(
        "c12-pd-released",
        Duid.en(_ENTERPRISE, b"cpe-0012"),
        ((202, (_b(12),)),),
        want_na=False,
        want_pd=True,
        release="pd",
    ),
)


# --------------------------------------------------------------------------------------------
# What the lab reports.


@attrs.frozen
class ClientOutcome:
    """
    What one client holds on one link once the scenario is over, from Kea's replies.

    @ivar chain: the relay chain of the client's last message that wrote its leases
        (REQUEST or RENEW), outermost first.
    @ivar addresses: (address, preferred, valid) as Kea granted them and not released.
    @ivar prefixes: (prefix, preferred, valid) likewise.
    @ivar released_addresses: addresses Kea granted and the client then released.
    @ivar released_prefixes: prefixes likewise.
    """

    name: str
    duid: Duid
    subnet_id: int
    chain: tuple[RelayHop, ...]
    addresses: tuple[tuple[IPv6Address, int, int], ...]
    prefixes: tuple[tuple[IPv6Network, int, int], ...]
    released_addresses: tuple[IPv6Address, ...] = ()
    released_prefixes: tuple[IPv6Network, ...] = ()
    last_transaction: float = 0.0

    @property
    def active(self) -> bool:
        """Whether the client still holds a lease on this link."""
        return bool(self.addresses or self.prefixes)


def stored_hop(hop: RelayHop) -> RelayHop:
    """
    The hop as Kea 2.2 keeps it in the lease file: options sorted by code (a stable sort:
    repeated options stay in arrival order), RELAY_MSG left out.
    """
    kept = [option for option in hop.options if not isinstance(option, RelayMessageOption)]
    return attrs.evolve(hop, options=tuple(sorted(kept, key=lambda option: option.code)))


def hop_summary(hop: RelayHop) -> dict[str, Any]:
    """A JSON-friendly description of a stored hop."""
    stored = stored_hop(hop)
    return {
        "hop_count": stored.hop_count,
        "link_address": str(stored.link_address),
        "peer_address": str(stored.peer_address),
        "options_hex": encode_options(stored.options).hex(),
    }


@attrs.frozen
class LabResult:
    """What a scenario run produced: Kea's files and what every client ended up with."""

    lease_file: bytes
    config_text: str
    outcomes: tuple[ClientOutcome, ...]
    kea_version: str
    started_at: float
    finished_at: float


# --------------------------------------------------------------------------------------------
# Environment checks.


def find_kea_dhcp6() -> str | None:
    """The kea-dhcp6 binary: C{$BULKLQ_KEA_DHCP6}, then PATH, then /usr/sbin."""
    configured = os.environ.get(KEA_DHCP6_ENV)
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    found = shutil.which("kea-dhcp6")
    if found:
        return found
    return "/usr/sbin/kea-dhcp6" if os.access("/usr/sbin/kea-dhcp6", os.X_OK) else None


def unavailable_reason() -> str | None:
    """Why the lab cannot run on this machine, or C{None} if it can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root (network namespaces and kea-dhcp6)"
    if shutil.which("ip") is None:
        return "needs the ip command (iproute2) for network namespaces"
    if find_kea_dhcp6() is None:
        return "kea-dhcp6 not found (apt-get install kea-dhcp6-server, or set BULKLQ_KEA_DHCP6)"
    if not Path("/proc/thread-self/ns/net").exists():
        return "no network namespace support (/proc/thread-self/ns/net missing)"
    return None


# --------------------------------------------------------------------------------------------
# Kea configuration.


def kea_config_text(
    links: Sequence[LinkPlan],
    interface: str,
    lease_file: str,
    log_file: str,
    data_directory: str,
) -> str:
    """
    Kea's dhcp6 configuration for C{links}, as text with comments (Kea accepts C{//} and
    C{#} comments; bulklq's C{--kea-config} reader must too).
    """
    subnets = []
    for link in links:
        subnet: dict[str, object] = {
            "id": link.subnet_id,
            "subnet": str(link.prefix),
            "pools": [{"pool": f"{link.pool[0]} - {link.pool[1]}"}],
            "preferred-lifetime": link.preferred_lifetime,
            "valid-lifetime": link.valid_lifetime,
            "renew-timer": link.preferred_lifetime // 2,
            "rebind-timer": link.preferred_lifetime * 4 // 5,
        }
        if link.pd_pool is not None:
            subnet["pd-pools"] = [
                {
                    "prefix": str(link.pd_pool.network_address),
                    "prefix-len": link.pd_pool.prefixlen,
                    "delegated-len": link.delegated_length,
                }
            ]
        subnets.append(subnet)
    dhcp6 = {
        "interfaces-config": {
            "interfaces": [f"{interface}/{SERVER_ADDRESS}"],
            "service-sockets-max-retries": 50,
            "service-sockets-retry-wait-time": 100,
        },
        "server-id": {
            "type": "EN",
            "enterprise-id": SERVER_DUID.enterprise_number,
            "identifier": (SERVER_DUID.identifier or b"").hex(),
            "persist": False,
        },
        "data-directory": data_directory,
        "lease-database": {
            "type": "memfile",
            "persist": True,
            "name": lease_file,
            "lfc-interval": 0,
        },
        "store-extended-info": True,
        "subnet6": subnets,
        "loggers": [
            {
                "name": "kea-dhcp6",
                "output_options": [{"output": log_file}],
                "severity": "DEBUG",
                "debuglevel": 40,
            }
        ],
    }
    body = json.dumps({"Dhcp6": dhcp6}, indent=4)
    return (
        "// Kea 2.2 dhcp6 configuration written by bulklq's end-to-end harness\n"
        "// (tests/kea_harness.py). Kea keeps relay information in the lease file only with\n"
        "// store-extended-info.\n"
        "# Subnet ids are deliberately not 1, 2, 3.\n" + body + "\n"
    )


# --------------------------------------------------------------------------------------------
# Network namespaces.

_libc = ctypes.CDLL(None, use_errno=True)


@contextmanager
def _in_netns(name: str) -> Iterator[None]:
    """
    Run the block with this thread in network namespace C{name}; sockets created inside
    stay in it after the thread goes back.
    """
    with (
        open(f"/run/netns/{name}", "rb") as target,
        open("/proc/thread-self/ns/net", "rb") as home,
    ):
        if _libc.setns(target.fileno(), _CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise KeaLabError(f"setns({name}): {os.strerror(code)}")
        try:
            yield
        finally:
            if _libc.setns(home.fileno(), _CLONE_NEWNET) != 0:  # pragma: no cover
                # Carrying on in the lab's namespace would be worse than stopping here.
                os.abort()


def _ip(*args: str) -> None:
    try:
        subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)
    except subprocess.CalledProcessError as error:
        raise KeaLabError(f"ip {' '.join(args)}: {error.stderr.strip()}") from None


def _ip_quiet(*args: str) -> None:
    subprocess.run(["ip", *args], capture_output=True, timeout=10, check=False)


def _netns_exec(namespace: str, *args: str) -> None:
    _ip("netns", "exec", namespace, *args)


# --------------------------------------------------------------------------------------------
# DHCPv6 messages a client and its relays send.


def _ia_na(iaid: int, addresses: Sequence[IAAddress] = ()) -> UnknownOption:
    return UnknownOption(
        OptionCode.OPTION_IA_NA, struct.pack("!III", iaid, 0, 0) + encode_options(addresses)
    )


def _ia_pd(iaid: int, prefixes: Sequence[IAPrefix] = ()) -> UnknownOption:
    return UnknownOption(
        OptionCode.OPTION_IA_PD, struct.pack("!III", iaid, 0, 0) + encode_options(prefixes)
    )


def _ia_contents(option: Option) -> tuple[int, tuple[Option, ...]]:
    """IAID and the options inside an IA_NA or IA_PD received as UnknownOption."""
    assert isinstance(option, UnknownOption)
    if len(option.data) < 12:
        raise KeaLabError(f"IA option {option.code} of {len(option.data)} octets from Kea")
    (iaid,) = struct.unpack_from("!I", option.data)
    return iaid, decode_options(option.data, 12, len(option.data), 1)


def _wrap(client_message: bytes, chain: Sequence[RelayHop]) -> bytes:
    """Wrap a client's message in the relay chain (outermost first)."""
    wrapped: RelayMessage | bytes = client_message
    for hop in reversed(chain):
        wrapped = RelayMessage(
            MessageType.RELAY_FORW,
            hop.hop_count,
            hop.link_address,
            hop.peer_address,
            (*hop.options, RelayMessageOption(wrapped)),
        )
    assert isinstance(wrapped, RelayMessage)
    return wrapped.encode()


def _unwrap(reply: bytes, depth: int) -> Message:
    """The client message inside C{depth} RELAY-REPL layers."""
    message = decode_message(reply)
    for _ in range(depth):
        if not isinstance(message, RelayMessage) or message.msg_type != MessageType.RELAY_REPL:
            raise KeaLabError(f"expected RELAY-REPL from Kea, got {message!r}")
        relay_msg = message.option(RelayMessageOption)
        if relay_msg is None:
            raise KeaLabError("RELAY-REPL without RELAY_MSG")
        inner = relay_msg.message
        message = decode_message(inner) if isinstance(inner, bytes) else inner
    if not isinstance(message, Message):
        raise KeaLabError(f"expected a client message inside the relay chain, got {message!r}")
    return message


def _status_of(options: Sequence[Option]) -> int:
    for option in options:
        if isinstance(option, StatusCodeOption):
            return int(option.status)
    return StatusCode.Success


# --------------------------------------------------------------------------------------------
# The lab.


@attrs.define
class KeaLab:
    """
    Two namespaces, a veth pair, a kea-dhcp6 process and a relay socket.

    Use L{start}, then L{run_scenario}, then L{close} (idempotent; call it in a cleanup).
    """

    links: Sequence[LinkPlan] = LINKS
    kea_binary: str | None = None
    timeout: float = 20.0
    suffix: str = attrs.field(factory=lambda: f"{os.getpid() % 10000:04d}{secrets.token_hex(2)}")
    workdir: Path | None = None
    _namespaces: list[str] = attrs.field(factory=list)
    _process: subprocess.Popen[bytes] | None = None
    _socket: socket.socket | None = None
    _own_workdir: bool = False
    _transaction: int = 0x100

    @property
    def relay_namespace(self) -> str:
        """The namespace the relay (this process's socket) lives in."""
        return f"bulklq-relay-{self.suffix}"

    @property
    def kea_namespace(self) -> str:
        """The namespace kea-dhcp6 runs in."""
        return f"bulklq-kea-{self.suffix}"

    @property
    def kea_interface(self) -> str:
        """Kea's end of the veth pair (at most 15 characters)."""
        return f"blqk{self.suffix}"[:15]

    @property
    def relay_interface(self) -> str:
        """The relay's end of the veth pair."""
        return f"blqr{self.suffix}"[:15]

    @property
    def lease_file(self) -> Path:
        """Kea's memfile lease file."""
        assert self.workdir is not None
        return self.workdir / "kea-leases6.csv"

    @property
    def config_file(self) -> Path:
        """The configuration Kea runs with."""
        assert self.workdir is not None
        return self.workdir / "kea-dhcp6.conf"

    @property
    def log_file(self) -> Path:
        """Kea's log."""
        assert self.workdir is not None
        return self.workdir / "kea-dhcp6.log"

    def start(self) -> None:
        """Create namespaces and veth, start Kea and wait until it serves; clean up on error."""
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        binary = self.kea_binary or find_kea_dhcp6()
        if binary is None:
            raise KeaLabError("kea-dhcp6 not found")
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="bulklq-kea-"))
            self._own_workdir = True
        for namespace in (self.relay_namespace, self.kea_namespace):
            try:
                _ip("netns", "add", namespace)
            except KeaLabError as error:
                reason = f"cannot create a network namespace: {error}"
                raise KeaLabUnavailableError(reason) from None
            self._namespaces.append(namespace)
        _ip(
            "link", "add", self.relay_interface, "netns", self.relay_namespace,
            "type", "veth", "peer", "name", self.kea_interface, "netns", self.kea_namespace,
        )  # fmt: skip
        for namespace, interface, address in (
            (self.relay_namespace, self.relay_interface, RELAY_ADDRESS),
            (self.kea_namespace, self.kea_interface, SERVER_ADDRESS),
        ):
            # No duplicate address detection: there is nobody else on this wire, and a
            # tentative address cannot be bound.
            for key in ("all", "default", interface):
                _netns_exec(namespace, "sysctl", "-q", "-w", f"net.ipv6.conf.{key}.accept_dad=0")
            _ip("-n", namespace, "link", "set", "lo", "up")
            _ip(
                "-n", namespace, "addr", "add", f"{address}/{_VETH_PREFIX_LENGTH}",
                "dev", interface, "nodad",
            )  # fmt: skip
            _ip("-n", namespace, "link", "set", interface, "up")
        for namespace, interface in (
            (self.relay_namespace, self.relay_interface),
            (self.kea_namespace, self.kea_interface),
        ):
            self._wait_link_up(namespace, interface)

        self.config_file.write_text(
            kea_config_text(
                self.links,
                self.kea_interface,
                str(self.lease_file),
                str(self.log_file),
                str(self.workdir),
            )
        )
        environment = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "KEA_PIDFILE_DIR": str(self.workdir),
            "KEA_LOCKFILE_DIR": str(self.workdir),
        }
        with open(self.workdir / "kea-dhcp6.stdout", "wb") as output:
            self._process = subprocess.Popen(
                ["ip", "netns", "exec", self.kea_namespace, binary, "-c", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=environment,
                start_new_session=True,
            )
        self._wait_started()

        with _in_netns(self.relay_namespace):
            relay = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        self._socket = relay
        relay.bind((str(RELAY_ADDRESS), _DHCP_PORT))
        relay.settimeout(0.5)

    def _wait_link_up(self, namespace: str, interface: str) -> None:
        """Wait for the veth's carrier: Kea opens no socket on an interface not running."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            result = subprocess.run(
                ["ip", "-n", namespace, "-o", "link", "show", "dev", interface],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
            if "LOWER_UP" in result.stdout and "state UP" in result.stdout:
                return
            time.sleep(0.02)
        raise KeaLabError(f"{interface} in {namespace} did not come up")

    def _wait_started(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise KeaLabError(
                    f"kea-dhcp6 exited with {self._process.returncode}: {self.log_tail()}"
                )
            log = self._read_log()
            if "DHCP6_STARTED" in log:
                return
            if "DHCP6_INIT_FAIL" in log or "DHCP6_CONFIG_LOAD_FAIL" in log:
                raise KeaLabError(f"kea-dhcp6 did not start: {self.log_tail()}")
            time.sleep(0.05)
        raise KeaLabError(f"kea-dhcp6 did not start within {self.timeout} s: {self.log_tail()}")

    def _read_log(self) -> str:
        assert self.workdir is not None
        text = ""
        for path in (self.log_file, self.workdir / "kea-dhcp6.stdout"):
            with suppress(FileNotFoundError):
                text += path.read_text(errors="replace")
        return text

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of Kea's log and output, for error messages."""
        if self.workdir is None:
            return "(no log)"
        return "\n".join(self._read_log().splitlines()[-lines:])

    def kea_version(self) -> str:
        """C{kea-dhcp6 -v}."""
        binary = self.kea_binary or find_kea_dhcp6() or "kea-dhcp6"
        result = subprocess.run(
            [binary, "-v"], capture_output=True, text=True, timeout=10, check=False
        )
        return result.stdout.strip()

    def stop_kea(self) -> None:
        """Stop Kea with SIGTERM (it flushes and closes its lease file), then SIGKILL."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def close(self) -> None:
        """Stop Kea, close the relay socket, delete the namespaces (and so the veth pair)."""
        try:
            self.stop_kea()
        finally:
            if self._socket is not None:
                self._socket.close()
                self._socket = None
            while self._namespaces:
                namespace = self._namespaces.pop()
                _ip_quiet("netns", "del", namespace)
            if self._own_workdir and self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)
                self.workdir = None
                self._own_workdir = False

    # ----------------------------------------------------------------------------------------
    # Talking to Kea.

    def _next_transaction(self) -> int:
        self._transaction += 1
        return self._transaction & 0xFFFFFF

    def exchange(self, message: Message, chain: Sequence[RelayHop], expect: MessageType) -> Message:
        """
        Send C{message} through C{chain} and return Kea's answer of type C{expect}, retrying
        a few times (UDP).
        """
        assert self._socket is not None
        packet = _wrap(message.encode(), chain)
        destination = (str(SERVER_ADDRESS), _DHCP_PORT)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            self._socket.sendto(packet, destination)
            try:
                while True:
                    data, _ = self._socket.recvfrom(65535)
                    answer = _unwrap(data, len(chain))
                    if answer.transaction_id == message.transaction_id:
                        if answer.msg_type != expect:
                            raise KeaLabError(f"Kea answered {message.msg_type!r} with {answer!r}")
                        return answer
            except TimeoutError:
                if self._process is not None and self._process.poll() is not None:
                    raise KeaLabError(f"kea-dhcp6 died: {self.log_tail()}") from None
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.ENETUNREACH):
                    raise
        raise KeaLabError(f"no answer from Kea to {message.msg_type!r}: {self.log_tail()}")

    def _client_options(
        self, plan: ClientPlan, ia_na: Sequence[IAAddress] | None, ia_pd: Sequence[IAPrefix] | None
    ) -> list[Option]:
        options: list[Option] = [
            ClientId(plan.duid),
            UnknownOption(_OPTION_ELAPSED_TIME, b"\x00\x00"),
        ]
        if ia_na is not None:
            options.append(_ia_na(1, ia_na))
        if ia_pd is not None:
            options.append(_ia_pd(2, ia_pd))
        return options

    def _leases(
        self, reply: Message
    ) -> tuple[list[tuple[IPv6Address, int, int]], list[tuple[IPv6Network, int, int]]]:
        addresses: list[tuple[IPv6Address, int, int]] = []
        prefixes: list[tuple[IPv6Network, int, int]] = []
        for option in reply.options:
            if isinstance(option, UnknownOption) and option.code in (
                OptionCode.OPTION_IA_NA,
                OptionCode.OPTION_IA_PD,
            ):
                _, inner = _ia_contents(option)
                status = _status_of(inner)
                if status != StatusCode.Success:
                    raise KeaLabError(f"Kea refused an IA: status {status} in {reply!r}")
                for lease in inner:
                    if isinstance(lease, IAAddress):
                        addresses.append(
                            (lease.address, lease.preferred_lifetime, lease.valid_lifetime)
                        )
                    elif isinstance(lease, IAPrefix):
                        prefixes.append(
                            (lease.network, lease.preferred_lifetime, lease.valid_lifetime)
                        )
        return addresses, prefixes

    def _server_id(self, message: Message) -> ServerId:
        server_id = message.option(ServerId)
        if server_id is None:
            raise KeaLabError(f"no SERVERID in {message!r}")
        return server_id

    def _obtain(
        self, plan: ClientPlan, chain: Sequence[RelayHop]
    ) -> tuple[ServerId, list[tuple[IPv6Address, int, int]], list[tuple[IPv6Network, int, int]]]:
        """SOLICIT, ADVERTISE, REQUEST, REPLY."""
        solicit = Message(
            MessageType.SOLICIT,
            self._next_transaction(),
            tuple(
                self._client_options(
                    plan, () if plan.want_na else None, () if plan.want_pd else None
                )
            ),
        )
        advertise = self.exchange(solicit, chain, MessageType.ADVERTISE)
        server_id = self._server_id(advertise)
        offered_na, offered_pd = self._leases(advertise)
        request = Message(
            MessageType.REQUEST,
            self._next_transaction(),
            (
                *self._client_options(
                    plan,
                    [IAAddress(a, 0, 0) for a, _, _ in offered_na] if plan.want_na else None,
                    [IAPrefix(0, 0, p.prefixlen, p.network_address) for p, _, _ in offered_pd]
                    if plan.want_pd
                    else None,
                ),
                server_id,
            ),
        )
        reply = self.exchange(request, chain, MessageType.REPLY)
        addresses, prefixes = self._leases(reply)
        if plan.want_na and not addresses:
            raise KeaLabError(f"{plan.name}: Kea granted no address: {reply!r}")
        if plan.want_pd and not prefixes:
            raise KeaLabError(f"{plan.name}: Kea delegated no prefix: {reply!r}")
        return server_id, addresses, prefixes

    def _renew(
        self,
        plan: ClientPlan,
        chain: Sequence[RelayHop],
        server_id: ServerId,
        addresses: Sequence[tuple[IPv6Address, int, int]],
        prefixes: Sequence[tuple[IPv6Network, int, int]],
    ) -> tuple[list[tuple[IPv6Address, int, int]], list[tuple[IPv6Network, int, int]]]:
        renew = Message(
            MessageType.RENEW,
            self._next_transaction(),
            (
                *self._client_options(
                    plan,
                    [IAAddress(a, 0, 0) for a, _, _ in addresses] if addresses else None,
                    [IAPrefix(0, 0, p.prefixlen, p.network_address) for p, _, _ in prefixes]
                    if prefixes
                    else None,
                ),
                server_id,
            ),
        )
        return self._leases(self.exchange(renew, chain, MessageType.REPLY))

    def _release(
        self,
        plan: ClientPlan,
        chain: Sequence[RelayHop],
        server_id: ServerId,
        addresses: Sequence[IPv6Address],
        prefixes: Sequence[IPv6Network],
    ) -> None:
        release = Message(
            MessageType.RELEASE,
            self._next_transaction(),
            (
                *self._client_options(
                    plan,
                    [IAAddress(a, 0, 0) for a in addresses] if addresses else None,
                    [IAPrefix(0, 0, p.prefixlen, p.network_address) for p in prefixes]
                    if prefixes
                    else None,
                ),
                server_id,
            ),
        )
        reply = self.exchange(release, chain, MessageType.REPLY)
        status = _status_of(reply.options)
        if status != StatusCode.Success:
            raise KeaLabError(f"{plan.name}: RELEASE answered with status {status}: {reply!r}")

    def play(self, plan: ClientPlan) -> list[ClientOutcome]:
        """Play one client's exchanges; one outcome per link it asked on."""
        outcomes = []
        for index, (subnet_id, chain) in enumerate(plan.chains):
            server_id, addresses, prefixes = self._obtain(plan, chain)
            last_chain = chain
            released_addresses: list[IPv6Address] = []
            released_prefixes: list[IPv6Network] = []
            if index == 0 and plan.renew_chain is not None:
                addresses, prefixes = self._renew(
                    plan, plan.renew_chain, server_id, addresses, prefixes
                )
                last_chain = plan.renew_chain
            last_transaction = time.time()
            if index == 0 and plan.release is not None:
                if plan.release in ("all", "na"):
                    released_addresses = [address for address, _, _ in addresses]
                    addresses = []
                if plan.release in ("all", "pd"):
                    released_prefixes = [prefix for prefix, _, _ in prefixes]
                    prefixes = []
                self._release(plan, last_chain, server_id, released_addresses, released_prefixes)
            outcomes.append(
                ClientOutcome(
                    plan.name,
                    plan.duid,
                    subnet_id,
                    tuple(last_chain),
                    tuple(addresses),
                    tuple(prefixes),
                    tuple(released_addresses),
                    tuple(released_prefixes),
                    last_transaction,
                )
            )
        return outcomes

    def run_scenario(self, scenario: Sequence[ClientPlan] = SCENARIO) -> LabResult:
        """Play every client, stop Kea, and return its lease file and the outcomes."""
        started_at = time.time()
        outcomes: list[ClientOutcome] = []
        for plan in scenario:
            outcomes.extend(self.play(plan))
        finished_at = time.time()
        self.stop_kea()
        return LabResult(
            lease_file=self.lease_file.read_bytes(),
            config_text=self.config_file.read_text(),
            outcomes=tuple(outcomes),
            kea_version=self.kea_version(),
            started_at=started_at,
            finished_at=finished_at,
        )


def outcome_summary(outcome: ClientOutcome) -> dict[str, Any]:
    """A JSON-friendly description of what one client holds (or released) on one link."""
    relay_ids: list[str] = []
    remote_ids: list[str] = []
    for hop in outcome.chain:
        for option in hop.options:
            if isinstance(option, RelayId):
                relay_ids.append(option.duid.hex())
            elif isinstance(option, RemoteId):
                remote_ids.append(option.encode_data().hex())
    return {
        "client": outcome.name,
        "duid": str(outcome.duid),
        "subnet_id": outcome.subnet_id,
        "addresses": [
            {"address": str(address), "preferred_lifetime": preferred, "valid_lifetime": valid}
            for address, preferred, valid in outcome.addresses
        ],
        "prefixes": [
            {"prefix": str(prefix), "preferred_lifetime": preferred, "valid_lifetime": valid}
            for prefix, preferred, valid in outcome.prefixes
        ],
        "released_addresses": [str(address) for address in outcome.released_addresses],
        "released_prefixes": [str(prefix) for prefix in outcome.released_prefixes],
        "relay_chain": [hop_summary(hop) for hop in outcome.chain],
        "relay_ids": relay_ids,
        "remote_ids": remote_ids,
    }


def fixture_documents(result: LabResult) -> dict[str, bytes]:
    """
    The fixture files for C{result}: Kea's lease file as written, the configuration Kea ran
    with (temporary paths replaced by Debian's usual ones), and what the harness sent and
    Kea granted, computed from the exchanges rather than from the lease file.
    """
    config = result.config_text
    match = re.search(r'"data-directory": "([^"]+)"', config)
    if match is not None:
        workdir = match.group(1)
        config = config.replace(f"{workdir}/kea-leases6.csv", "/var/lib/kea/kea-leases6.csv")
        config = config.replace(f"{workdir}/kea-dhcp6.log", "/var/log/kea/kea-dhcp6.log")
        config = config.replace(workdir, "/var/lib/kea")
    config = re.sub(r"blqk[0-9a-f]+", "veth-kea", config)
    expected = {
        "kea_version": result.kea_version,
        "generated_by": "scripts/make-kea-fixture (tests/kea_harness.py)",
        "exchanged_between": [int(result.started_at), int(result.finished_at) + 1],
        "note": (
            "bindings: what each client holds per link, from Kea's REPLY messages (not from "
            "the lease file); relay_chain is outermost first, with options in the order Kea "
            "2.2 stores them (sorted by code). released: what clients gave back."
        ),
        "bindings": [outcome_summary(o) for o in result.outcomes if o.active],
        "released": [
            outcome_summary(o)
            for o in result.outcomes
            if o.released_addresses or o.released_prefixes
        ],
    }
    return {
        "real-kea-2.2-leases6.csv": result.lease_file,
        "real-kea-2.2-dhcp6.json": config.encode(),
        "real-kea-2.2-expected.json": (json.dumps(expected, indent=2) + "\n").encode(),
    }


def run_lab(scenario: Sequence[ClientPlan] = SCENARIO, timeout: float = 20.0) -> LabResult:
    """Start a lab, play C{scenario}, and tear everything down again."""
    lab = KeaLab(timeout=timeout)
    try:
        lab.start()
        return lab.run_scenario(scenario)
    finally:
        lab.close()
