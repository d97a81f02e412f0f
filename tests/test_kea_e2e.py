"""
End-to-end tests with a real ISC Kea DHCPv6 server (Debian's kea-dhcp6 2.2).

L{tests.kea_harness} runs Kea inside a private network namespace and relays client traffic
to it, so that Kea writes its own lease file. These tests then check:

  - that the lease file holds exactly what Kea granted in its replies (what the kea-csv
    store will read), with the relay chains the harness sent, as Kea stores them;
  - that bulklq, serving that file with the kea-csv store, answers every Bulk Leasequery
    query type with exactly Kea's active leases.

The expectation is computed from what the harness sent and what Kea answered, never by
reading the lease file with bulklq's own parser.

The live tests need root, C{ip netns} and kea-dhcp6; they skip with the reason when those are
missing, except with C{BULKLQ_REQUIRE_SERVICES=1} (CI), where they fail. The fixture tests
(L{KeaFixtureTests}) run everywhere.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP6ClientEndpoint, connectProtocol
from twisted.internet.protocol import connectionDone
from twisted.protocols.basic import Int16StringReceiver
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from bulklq.config import ServerConfig
from bulklq.interfaces import IBindingStore
from bulklq.wire import (
    ClientData,
    ClientId,
    CltTime,
    Duid,
    IAAddress,
    IAPrefix,
    LQQuery,
    LQRelayData,
    Message,
    MessageType,
    Option,
    OptionCode,
    OptionRequest,
    QueryType,
    RelayId,
    RelayMessage,
    RelayMessageOption,
    RemoteId,
    StatusCode,
    StatusCodeOption,
    decode_message,
    encode_options,
)
from tests.kea_harness import (
    LINKS,
    RELAY_A,
    RELAY_B,
    RELAY_C,
    RELAY_D,
    SCENARIO,
    ClientOutcome,
    ClientPlan,
    KeaLab,
    KeaLabError,
    KeaLabUnavailableError,
    LabResult,
    outcome_summary,
    unavailable_reason,
)

FIXTURES = Path(__file__).parent / "fixtures" / "kea"
KEA_22_HEADER = (
    "address,duid,valid_lifetime,expire,subnet_id,pref_lifetime,lease_type,iaid,prefix_len,"
    "fqdn_fwd,fqdn_rev,hostname,hwaddr,state,user_context,hwtype,hwaddr_source"
)

#: The one scenario run of this test process, or the error it ended with.
_LAB_RUNS: dict[str, LabResult | KeaLabError] = {}


def require_services() -> bool:
    """Whether a missing service is a failure (CI) rather than a reason to skip."""
    return os.environ.get("BULKLQ_REQUIRE_SERVICES") == "1"


def skip_unless_lab(case: SynchronousTestCase, reason: str) -> None:
    """Skip C{case} because the lab cannot run, or fail it under C{BULKLQ_REQUIRE_SERVICES=1}."""
    if require_services():
        case.fail(f"BULKLQ_REQUIRE_SERVICES=1 but the Kea lab cannot run: {reason}")
    raise SkipTest(f"Kea end-to-end lab unavailable: {reason}")


def run_kea_once(case: SynchronousTestCase) -> LabResult:
    """
    Run the Kea scenario once per test process and return its result.

    Skips (or fails, under C{BULKLQ_REQUIRE_SERVICES=1}) when Kea or network namespaces are
    unavailable. The namespaces, the veth pair and the Kea process are gone when this
    returns, whatever happened; the cleanup is also registered on C{case}.
    """
    reason = unavailable_reason()
    if reason is not None:
        skip_unless_lab(case, reason)
    if "run" not in _LAB_RUNS:
        lab = KeaLab(timeout=15.0)
        case.addCleanup(lab.close)
        try:
            lab.start()
            _LAB_RUNS["run"] = lab.run_scenario()
        except KeaLabError as error:
            _LAB_RUNS["run"] = error
        finally:
            lab.close()
    run = _LAB_RUNS["run"]
    if isinstance(run, KeaLabUnavailableError):
        skip_unless_lab(case, str(run))
    if isinstance(run, KeaLabError):
        case.fail(f"the Kea lab failed: {run}")
    return run


# --------------------------------------------------------------------------------------------
# An independent reading of a Kea 2.2 lease file: only what the checks below need.


@attrs.frozen
class FileLease:
    """The last row the file holds for one address or prefix."""

    resource: str
    duid: str
    valid_lifetime: int
    preferred_lifetime: int
    expire: int
    subnet_id: int
    lease_type: int
    prefix_length: int
    state: int
    relays: tuple[dict[str, Any], ...]


def _unescape(text: str) -> str:
    return re.sub(r"&#x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), text)


def last_rows(csv_text: str) -> dict[str, FileLease]:
    """Address (or prefix/len) to its last row; rows with valid lifetime 0 included."""
    rows = list(csv.reader(io.StringIO(csv_text)))
    header = rows[0]
    leases: dict[str, FileLease] = {}
    for row in rows[1:]:
        if not row:
            continue
        field = dict(zip(header, row, strict=True))
        lease_type = int(field["lease_type"])
        resource = field["address"]
        if lease_type == 2:
            resource = f"{resource}/{field['prefix_len']}"
        context = _unescape(field["user_context"])
        relays = tuple(json.loads(context)["ISC"]["relays"]) if context else ()
        leases[resource] = FileLease(
            resource=resource,
            duid=field["duid"],
            valid_lifetime=int(field["valid_lifetime"]),
            preferred_lifetime=int(field["pref_lifetime"]),
            expire=int(field["expire"]),
            subnet_id=int(field["subnet_id"]),
            lease_type=lease_type,
            prefix_length=int(field["prefix_len"]),
            state=int(field["state"]),
            relays=relays,
        )
    return leases


def _summary_hops(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "hop": hop["hop_count"],
            "link": hop["link_address"],
            "peer": hop["peer_address"],
            "options": "0x" + hop["options_hex"].upper(),
        }
        for hop in summary["relay_chain"]
    ]


class LeaseFileChecks:
    """
    Checks of a Kea 2.2 lease file against the harness's record of the exchanges (the
    C{outcome_summary} form, which is also the fixture's C{expected.json}).
    """

    def assertLeaseFileMatches(
        self: Any,
        csv_text: str,
        bindings: Sequence[Mapping[str, Any]],
        released: Sequence[Mapping[str, Any]],
        exchanged_between: tuple[int, int],
    ) -> None:
        """Every granted lease is the last row for its resource, active, with its chain."""
        self.assertEqual(csv_text.splitlines()[0], KEA_22_HEADER)
        rows = last_rows(csv_text)
        granted: set[str] = set()
        for binding in bindings:
            leases = [(entry["address"], 0, entry) for entry in binding["addresses"]] + [
                (entry["prefix"], 2, entry) for entry in binding["prefixes"]
            ]
            for resource, lease_type, entry in leases:
                granted.add(resource)
                row = rows.get(resource)
                self.assertIsNotNone(row, f"{binding['client']}: {resource} not in the file")
                assert row is not None
                self.assertEqual(
                    (
                        row.duid,
                        row.subnet_id,
                        row.lease_type,
                        row.state,
                        row.valid_lifetime,
                        row.preferred_lifetime,
                    ),
                    (
                        binding["duid"],
                        binding["subnet_id"],
                        lease_type,
                        0,
                        entry["valid_lifetime"],
                        entry["preferred_lifetime"],
                    ),
                    f"{binding['client']}: {resource}",
                )
                cltt = row.expire - row.valid_lifetime
                self.assertTrue(
                    exchanged_between[0] <= cltt <= exchanged_between[1],
                    f"{resource}: CLTT {cltt} outside the exchanges {exchanged_between}",
                )
                self.assertEqual(
                    list(row.relays), _summary_hops(binding), f"{binding['client']}: relays"
                )
        for client in released:
            for resource in [*client["released_addresses"], *client["released_prefixes"]]:
                row = rows.get(resource)
                self.assertIsNotNone(row, f"{client['client']}: released {resource} never written")
                assert row is not None
                self.assertEqual(
                    row.valid_lifetime, 0, f"{client['client']}: {resource} not deleted"
                )
        live = {resource for resource, row in rows.items() if row.valid_lifetime > 0}
        self.assertEqual(live, granted, "the file's live leases are not exactly those granted")


def _load_fixture_expectation() -> dict[str, Any]:
    expected: dict[str, Any] = json.loads(
        (FIXTURES / "real-kea-2.2-expected.json").read_text(encoding="utf-8")
    )
    return expected


class KeaFixtureTests(LeaseFileChecks, SynchronousTestCase):
    """The committed fixture is a real Kea 2.2 lease file consistent with its record."""

    def test_fixture_lease_file_matches_its_exchanges(self) -> None:
        """
        The committed lease file holds exactly the leases the harness's record says Kea
        granted, with the relay chains sent, and deletion rows for the released ones.
        """
        expected = _load_fixture_expectation()
        self.assertEqual(expected["kea_version"], "2.2.0")
        self.assertLeaseFileMatches(
            (FIXTURES / "real-kea-2.2-leases6.csv").read_text(encoding="utf-8"),
            expected["bindings"],
            expected["released"],
            tuple(expected["exchanged_between"]),
        )

    def test_fixture_covers_the_scenario(self) -> None:
        """
        The fixture has what the kea-csv store tests rely on: several links, IA_NA and
        IA_PD, a two-relay chain, an LDRA hop (link ::), a client on two links, and
        deletion rows.
        """
        expected = _load_fixture_expectation()
        bindings = expected["bindings"]
        self.assertEqual(
            {binding["subnet_id"] for binding in bindings}, {link.subnet_id for link in LINKS}
        )
        self.assertTrue(any(b["addresses"] and b["prefixes"] for b in bindings))
        self.assertTrue(any(len(b["relay_chain"]) == 2 for b in bindings))
        self.assertTrue(
            any(hop["link_address"] == "::" for b in bindings for hop in b["relay_chain"])
        )
        clients = [b["duid"] for b in bindings]
        self.assertTrue(any(clients.count(duid) == 2 for duid in clients))
        released = expected["released"]
        self.assertTrue(any(c["released_addresses"] for c in released))
        self.assertTrue(any(c["released_prefixes"] for c in released))

    def test_fixture_config_is_kea_json_with_comments(self) -> None:
        """
        The committed Kea configuration has comments (as Kea allows) and, once they are
        removed, declares the subnets of the lease file with store-extended-info.
        """
        text = (FIXTURES / "real-kea-2.2-dhcp6.json").read_text(encoding="utf-8")
        self.assertIn("//", text)
        body = "\n".join(
            line for line in text.splitlines() if not line.lstrip().startswith(("//", "#"))
        )
        dhcp6 = json.loads(body)["Dhcp6"]
        self.assertIs(dhcp6["store-extended-info"], True)
        self.assertEqual(
            {(s["id"], s["subnet"]) for s in dhcp6["subnet6"]},
            {(link.subnet_id, str(link.prefix)) for link in LINKS},
        )


class KeaLeaseFileTests(LeaseFileChecks, SynchronousTestCase):
    """What a live Kea 2.2 writes for the harness's relayed exchanges."""

    def setUp(self) -> None:
        """Run Kea's scenario (once per process)."""
        self.result = run_kea_once(self)

    def test_lease_file_matches_exchanges(self) -> None:
        """
        Kea's lease file holds exactly the leases Kea granted in its REPLYs, each with the
        relay chain the harness sent, and deletion rows for the released ones.
        """
        self.assertLeaseFileMatches(
            self.result.lease_file.decode("utf-8"),
            [outcome_summary(o) for o in self.result.outcomes if o.active],
            [
                outcome_summary(o)
                for o in self.result.outcomes
                if o.released_addresses or o.released_prefixes
            ],
            (int(self.result.started_at), int(self.result.finished_at) + 1),
        )

    def test_kea_sorts_relay_options(self) -> None:
        """
        Kea 2.2 writes a relay's options sorted by code: relay D sent RELAY_ID before
        INTERFACE_ID, the file has INTERFACE_ID (18) first.
        """
        rows = last_rows(self.result.lease_file.decode("utf-8"))
        outer = [
            row.relays[0]
            for row in rows.values()
            if row.relays and row.relays[0]["link"] == "2001:db8:fffe::d"
        ]
        self.assertTrue(outer)
        for hop in outer:
            self.assertTrue(hop["options"].startswith("0x0012"), hop["options"])
            self.assertIn(RELAY_D.hex().upper(), hop["options"])

    def test_kea_selects_subnet_through_ldra_and_inner_relay(self) -> None:
        """
        Kea chose the subnet from the relay nearest the client with a usable link-address:
        the LDRA client (inner link ::) is on link 202, the two-relay clients on 303.
        """
        by_name = {(o.name, o.subnet_id) for o in self.result.outcomes}
        self.assertIn(("c9-ldra", 202), by_name)
        self.assertIn(("c7-two-relays", 303), by_name)
        self.assertIn(("c8-two-relays", 303), by_name)


# --------------------------------------------------------------------------------------------
# The expectation for bulklq's answers, from the exchanges.


@attrs.frozen
class ExpectedBinding:
    """One client on one link as bulklq must report it."""

    duid: bytes
    subnet_id: int
    addresses: frozenset[IPv6Address]
    prefixes: frozenset[IPv6Network]
    relay_ids: frozenset[bytes]
    remote_ids: frozenset[bytes]
    layers: tuple[tuple[int, IPv6Address, IPv6Address, bytes], ...]
    granted_valid: int


def expected_bindings(outcomes: Iterable[ClientOutcome]) -> list[ExpectedBinding]:
    """The active bindings after the exchanges, from what was sent and what Kea granted."""
    expected = []
    for outcome in outcomes:
        if not outcome.active:
            continue
        summary = outcome_summary(outcome)
        expected.append(
            ExpectedBinding(
                duid=outcome.duid.raw,
                subnet_id=outcome.subnet_id,
                addresses=frozenset(address for address, _, _ in outcome.addresses),
                prefixes=frozenset(prefix for prefix, _, _ in outcome.prefixes),
                relay_ids=frozenset(bytes.fromhex(h) for h in summary["relay_ids"]),
                remote_ids=frozenset(bytes.fromhex(h) for h in summary["remote_ids"]),
                layers=tuple(
                    (
                        hop["hop_count"],
                        IPv6Address(hop["link_address"]),
                        IPv6Address(hop["peer_address"]),
                        bytes.fromhex(hop["options_hex"]),
                    )
                    for hop in summary["relay_chain"]
                ),
                granted_valid=max(
                    [valid for _, _, valid in outcome.addresses]
                    + [valid for _, _, valid in outcome.prefixes]
                ),
            )
        )
    return expected


# --------------------------------------------------------------------------------------------
# A minimal requestor, written here so that the test does not depend on bulklq.client.


class _Requestor(Int16StringReceiver):
    """
    Sends LEASEQUERY messages and gathers, per transaction-id, the REPLY, DATA and DONE
    messages of each answer; an answer is complete on a REPLY without CLIENT_DATA or on
    DONE.
    """

    MAX_LENGTH = 65535

    def __init__(self) -> None:
        self._answers: dict[int, tuple[Deferred[list[Message]], list[Message]]] = {}
        self._lost = Deferred[None]()

    def ask(self, query: Message) -> Deferred[list[Message]]:
        """Send C{query}; the Deferred fires with every message of its answer."""
        answer = Deferred[list[Message]]()
        self._answers[query.transaction_id] = (answer, [])
        self.sendString(query.encode())
        return answer

    def stringReceived(self, string: bytes) -> None:
        message = decode_message(string)
        assert isinstance(message, Message), message
        answer, messages = self._answers[message.transaction_id]
        messages.append(message)
        done = message.msg_type == MessageType.LEASEQUERY_DONE or (
            message.msg_type == MessageType.LEASEQUERY_REPLY and message.option(ClientData) is None
        )
        if done:
            del self._answers[message.transaction_id]
            answer.callback(messages)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        for answer, _ in self._answers.values():
            answer.errback(reason)
        self._answers.clear()
        self._lost.callback(None)

    def close(self) -> Deferred[None]:
        """Close the connection; the Deferred fires once it is gone."""
        self.transport.loseConnection()
        return self._lost


@attrs.frozen
class ObservedBinding:
    """One CLIENT_DATA of an answer, reduced to what the expectation can say."""

    duid: bytes
    addresses: frozenset[IPv6Address]
    prefixes: frozenset[IPv6Network]
    layers: tuple[tuple[int, IPv6Address, IPv6Address, bytes], ...]
    relay_peer: IPv6Address | None
    clt_time: int
    valid_lifetimes: tuple[int, ...]


def observed(client_data: ClientData) -> ObservedBinding:
    """Reduce a CLIENT_DATA; the relay chain layer by layer, RELAY_MSG left out."""
    client_id = client_data.option(ClientId)
    clt_time = client_data.option(CltTime)
    assert client_id is not None and clt_time is not None, client_data
    layers: list[tuple[int, IPv6Address, IPv6Address, bytes]] = []
    relay_data = client_data.option(LQRelayData)
    layer: RelayMessage | bytes | None = None if relay_data is None else relay_data.relay_message
    while isinstance(layer, RelayMessage):
        layers.append(
            (
                layer.hop_count,
                layer.link_address,
                layer.peer_address,
                encode_options(o for o in layer.options if not isinstance(o, RelayMessageOption)),
            )
        )
        relay_msg = layer.options_of(RelayMessageOption)
        assert len(relay_msg) <= 1, layer
        layer = relay_msg[0].message if relay_msg else None
    assert layer is None, f"the innermost RELAY_MSG was not removed: {layer!r}"
    addresses = client_data.options_of(IAAddress)
    prefixes = client_data.options_of(IAPrefix)
    return ObservedBinding(
        duid=client_id.duid.raw,
        addresses=frozenset(a.address for a in addresses),
        prefixes=frozenset(p.network for p in prefixes),
        layers=tuple(layers),
        relay_peer=None if relay_data is None else relay_data.peer_address,
        clt_time=clt_time.seconds,
        valid_lifetimes=tuple(a.valid_lifetime for a in addresses)
        + tuple(p.valid_lifetime for p in prefixes),
    )


_ENTERPRISE_TEST = 32473
REQUESTOR_DUID = Duid.en(_ENTERPRISE_TEST, b"bulklq-e2e-requestor")
UNSPECIFIED = IPv6Address(0)


def open_kea_csv_store(lease_file: Path, kea_config: Path, reactor: Any) -> IBindingStore:
    """
    The kea-csv store serving C{lease_file} with its links from Kea's C{kea_config}, opened
    by its URI as C{--store} does, following the file.
    """
    from bulklq.stores.kea_csv import open_store_uri

    return open_store_uri(f"kea-csv:{lease_file}?kea-config={kea_config}", reactor)


class ServingTestCase(TestCase):
    """
    Serve a Kea lease file with the kea-csv store and the bulklq server on a loopback TCP
    port, and ask it Bulk Leasequeries with L{_Requestor}. No tests of its own.

    @ivar started_at: Unix time the exchanges began (bounds CLT_TIME).
    """

    started_at: float

    async def _serve(self, lease_file: Path, config_file: Path) -> None:
        from twisted.internet import reactor

        from bulklq.server import BulkLeasequeryFactory

        self.store = open_kea_csv_store(lease_file, config_file, reactor)
        self.addCleanup(self.store.close)
        # A small page size so that answers span several store pages.
        config = ServerConfig(server_duid=Duid.en(_ENTERPRISE_TEST, b"bulklq-e2e"), page_size=3)
        factory = BulkLeasequeryFactory(self.store, config, reactor)
        port = reactor.listenTCP(0, factory, interface="::1")
        self.addCleanup(port.stopListening)
        endpoint = TCP6ClientEndpoint(reactor, "::1", port.getHost().port)
        self.requestor = await connectProtocol(endpoint, _Requestor())
        self.addCleanup(self.requestor.close)
        self._xid = 0

    async def ask(
        self,
        query_type: QueryType,
        link: IPv6Address = UNSPECIFIED,
        query_options: Sequence[Option] = (),
    ) -> tuple[int, list[ObservedBinding]]:
        """
        Ask one Bulk Leasequery (with LQ_RELAY_DATA requested) and return the REPLY's
        status and the bindings of the whole answer.
        """
        self._xid += 1
        query = Message(
            MessageType.LEASEQUERY,
            self._xid,
            (
                ClientId(REQUESTOR_DUID),
                LQQuery(
                    query_type,
                    link,
                    (*query_options, OptionRequest((OptionCode.OPTION_LQ_RELAY_DATA,))),
                ),
            ),
        )
        messages = await self.requestor.ask(query)
        reply, rest = messages[0], messages[1:]
        self.assertEqual(reply.msg_type, MessageType.LEASEQUERY_REPLY)
        status = reply.option(StatusCodeOption)
        bindings: list[ObservedBinding] = []
        for message in (reply, *rest):
            bindings.extend(observed(data) for data in message.options_of(ClientData))
        if rest:
            self.assertEqual(rest[-1].msg_type, MessageType.LEASEQUERY_DONE)
            done_status = rest[-1].option(StatusCodeOption)
            self.assertIn(done_status and done_status.status, (None, StatusCode.Success))
        return (StatusCode.Success if status is None else int(status.status)), bindings

    def assertAnswer(
        self,
        what: str,
        answer: tuple[int, list[ObservedBinding]],
        expected: Iterable[ExpectedBinding],
    ) -> None:
        """The answer succeeded and holds exactly C{expected}, each once, chains included."""
        status, bindings = answer
        self.assertEqual(status, StatusCode.Success, what)
        want = Counter(_describe(e.duid, e.addresses, e.prefixes, e.layers) for e in expected)
        got = Counter(_describe(b.duid, b.addresses, b.prefixes, b.layers) for b in bindings)
        if got != want:
            self.fail(
                f"{what}:\n  missing: {sorted((want - got).elements())}"
                f"\n  unexpected: {sorted((got - want).elements())}"
            )
        elapsed = self._elapsed()
        granted = {(e.duid, e.addresses, e.prefixes): e.granted_valid for e in expected}
        for binding in bindings:
            # The outermost relay's peer-address, as Kea stored it.
            self.assertEqual(binding.relay_peer, binding.layers[0][2], what)
            # Remaining lifetimes: granted less the time since the exchanges (S40, S41).
            self.assertLessEqual(binding.clt_time, elapsed, what)
            limit = granted[(binding.duid, binding.addresses, binding.prefixes)]
            for valid in binding.valid_lifetimes:
                self.assertTrue(0 < valid <= limit, f"{what}: valid lifetime {valid}")

    def _elapsed(self) -> int:
        return int(time.time() - self.started_at) + 2


class KeaBulkLeasequeryTests(ServingTestCase):
    """
    bulklq serving the lease file a real Kea wrote answers every query type with exactly
    Kea's active leases, as the relayed exchanges say they are.
    """

    def setUp(self) -> Deferred[None]:
        """Run Kea's scenario (once per process), then serve its lease file."""
        self.result = run_kea_once(self)
        self.started_at = self.result.started_at
        self.expected = expected_bindings(self.result.outcomes)
        # Not self.mktemp(): under pytest that writes into the working directory.
        directory = Path(tempfile.mkdtemp(prefix="bulklq-kea-e2e-"))
        self.addCleanup(shutil.rmtree, directory, True)
        lease_file = directory / "kea-leases6.csv"
        lease_file.write_bytes(self.result.lease_file)
        config_file = directory / "kea-dhcp6.conf"
        config_file.write_text(self.result.config_text, encoding="utf-8")
        return Deferred.fromCoroutine(self._serve(lease_file, config_file))

    def where(self, predicate: Callable[[ExpectedBinding], bool]) -> list[ExpectedBinding]:
        """The expected bindings satisfying C{predicate}."""
        return [binding for binding in self.expected if predicate(binding)]

    async def _relay_id(self) -> None:
        seen = 0
        for relay in (RELAY_A, RELAY_B, RELAY_C, RELAY_D):
            want = self.where(lambda e, r=relay.raw: r in e.relay_ids)
            seen += len(want)
            self.assertAnswer(
                f"relay-id {relay}",
                await self.ask(QueryType.QUERY_BY_RELAY_ID, query_options=[RelayId(relay)]),
                want,
            )
        self.assertGreater(seen, 0)
        # With a link-address: only the relay's bindings on that link (S48).
        link = LINKS[1]
        self.assertAnswer(
            f"relay-id {RELAY_A} on link {link.subnet_id}",
            await self.ask(
                QueryType.QUERY_BY_RELAY_ID, link.relay_link_address, [RelayId(RELAY_A)]
            ),
            self.where(lambda e: RELAY_A.raw in e.relay_ids and e.subnet_id == link.subnet_id),
        )
        self.assertAnswer(
            "an unknown relay-id",
            await self.ask(
                QueryType.QUERY_BY_RELAY_ID, query_options=[RelayId(Duid.en(1, b"nobody"))]
            ),
            [],
        )

    def test_query_by_relay_id(self) -> Deferred[None]:
        """
        QUERY_BY_RELAY_ID returns the bindings relayed by that relay at any hop of the
        chain Kea stored, with and without a link-address (S47, S48).
        """
        return Deferred.fromCoroutine(self._relay_id())

    async def _link(self) -> None:
        for link in LINKS:
            want = self.where(lambda e, s=link.subnet_id: e.subnet_id == s)
            self.assertTrue(want)
            for address in (link.relay_link_address, link.pool[1]):
                self.assertAnswer(
                    f"link {link.subnet_id} by {address}",
                    await self.ask(QueryType.QUERY_BY_LINK_ADDRESS, address),
                    want,
                )

    def test_query_by_link_address(self) -> Deferred[None]:
        """
        QUERY_BY_LINK_ADDRESS returns every binding on the Kea subnet that contains the
        link-address (S49), including prefix-only and LDRA-relayed clients.
        """
        return Deferred.fromCoroutine(self._link())

    async def _remote_id(self) -> None:
        remote_ids = {remote for e in self.expected for remote in e.remote_ids}
        self.assertGreater(len(remote_ids), 5)
        for remote in sorted(remote_ids):
            self.assertAnswer(
                f"remote-id {remote.hex()}",
                await self.ask(
                    QueryType.QUERY_BY_REMOTE_ID, query_options=[RemoteId.from_bytes(remote)]
                ),
                self.where(lambda e, r=remote: r in e.remote_ids),
            )
        # c11 renewed with a new Remote-ID: the old one matches nothing any more (S50).
        self.assertAnswer(
            "a Remote-ID replaced by a renew",
            await self.ask(
                QueryType.QUERY_BY_REMOTE_ID, query_options=[RemoteId(32473, b"a-11-old")]
            ),
            [],
        )

    def test_query_by_remote_id(self) -> Deferred[None]:
        """
        QUERY_BY_REMOTE_ID matches the whole option value (enterprise number included) of
        the most recent chain only (S50); c10's Remote-ID gives its two bindings.
        """
        return Deferred.fromCoroutine(self._remote_id())

    async def _client_id(self) -> None:
        duids = {e.duid for e in self.expected}
        for duid in sorted(duids):
            self.assertAnswer(
                f"client-id {duid.hex()}",
                await self.ask(QueryType.QUERY_BY_CLIENTID, query_options=[ClientId(Duid(duid))]),
                self.where(lambda e, d=duid: e.duid == d),
            )
        twice = [d for d in duids if len(self.where(lambda e, d=d: e.duid == d)) == 2]
        self.assertEqual(len(twice), 1)
        # Restricted to one link: only that link's binding.
        self.assertAnswer(
            "client-id on one link",
            await self.ask(
                QueryType.QUERY_BY_CLIENTID,
                LINKS[0].relay_link_address,
                [ClientId(Duid(twice[0]))],
            ),
            self.where(lambda e: e.duid == twice[0] and e.subnet_id == LINKS[0].subnet_id),
        )
        released = [o for o in self.result.outcomes if not o.active]
        self.assertTrue(released)
        for outcome in released:
            self.assertAnswer(
                f"client-id of {outcome.name}, who released everything",
                await self.ask(QueryType.QUERY_BY_CLIENTID, query_options=[ClientId(outcome.duid)]),
                [],
            )

    def test_query_by_client_id(self) -> Deferred[None]:
        """
        QUERY_BY_CLIENTID with link :: returns one CLIENT_DATA per link the client is on
        (S11); with a link, only that one; a client that released everything has none.
        """
        return Deferred.fromCoroutine(self._client_id())

    async def _address(self) -> None:
        for e in self.expected:
            for address in sorted(e.addresses):
                self.assertAnswer(
                    f"address {address}",
                    await self.ask(QueryType.QUERY_BY_ADDRESS, query_options=[_iaaddr(address)]),
                    [e],
                )
            for prefix in sorted(e.prefixes):
                inside = prefix.network_address + 1
                self.assertAnswer(
                    f"address {inside} in delegated prefix {prefix}",
                    await self.ask(QueryType.QUERY_BY_ADDRESS, query_options=[_iaaddr(inside)]),
                    [e],
                )
        for outcome in self.result.outcomes:
            for address in outcome.released_addresses:
                status, bindings = await self.ask(
                    QueryType.QUERY_BY_ADDRESS, query_options=[_iaaddr(address)]
                )
                self.assertEqual((status, bindings), (StatusCode.Success, []), str(address))
            for prefix in outcome.released_prefixes:
                # Outside every link and in nobody's prefix any more: NotConfigured (S10).
                status, bindings = await self.ask(
                    QueryType.QUERY_BY_ADDRESS, query_options=[_iaaddr(prefix.network_address)]
                )
                self.assertEqual((status, bindings), (StatusCode.NotConfigured, []), str(prefix))

    def test_query_by_address(self) -> Deferred[None]:
        """
        QUERY_BY_ADDRESS finds the binding of an address Kea assigned and of an address
        inside a prefix Kea delegated (S10); released ones find nothing.
        """
        return Deferred.fromCoroutine(self._address())


def _describe(
    duid: bytes,
    addresses: frozenset[IPv6Address],
    prefixes: frozenset[IPv6Network],
    layers: tuple[tuple[int, IPv6Address, IPv6Address, bytes], ...],
) -> str:
    """A binding as one readable line, for comparisons and failure messages."""
    chain = " / ".join(f"hop {h} link {link} peer {peer} {o.hex()}" for h, link, peer, o in layers)
    leases = ", ".join(map(str, [*sorted(addresses), *sorted(prefixes)]))
    return f"{duid.hex(':')} [{leases}] via {chain or 'no relay'}"


def _iaaddr(address: IPv6Address) -> IAAddress:
    return IAAddress(address, 0, 0)


class KeaLiveFollowTests(ServingTestCase):
    """
    bulklq follows the lease file while Kea is running and writing it: new leases, a
    renew that changes the Remote-ID, and a release are all served.
    """

    def setUp(self) -> None:
        """Start a lab of this test's own, with Kea running until the cleanup."""
        reason = unavailable_reason()
        if reason is not None:
            skip_unless_lab(self, reason)
        self.lab = KeaLab(timeout=15.0)
        self.addCleanup(self.lab.close)
        try:
            self.lab.start()
        except KeaLabUnavailableError as error:
            skip_unless_lab(self, str(error))
        except KeaLabError as error:
            self.fail(f"the Kea lab failed: {error}")
        self.started_at = time.time()
        self.plans = {plan.name: plan for plan in SCENARIO}
        self.outcomes: dict[str, ClientOutcome] = {}

    def play(self, plan: ClientPlan) -> None:
        """Play one client against the running Kea (blocking, a few milliseconds)."""
        try:
            for outcome in self.lab.play(plan):
                self.outcomes[outcome.name] = outcome
        except KeaLabError as error:
            self.fail(f"{plan.name}: {error}")

    async def until_link_answers(self, link: int, expected: list[ExpectedBinding]) -> None:
        """Ask for the link's bindings until the answer is C{expected} (5 s at most)."""
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        address = LINKS[link].relay_link_address
        deadline = time.monotonic() + 5
        while True:
            answer = await self.ask(QueryType.QUERY_BY_LINK_ADDRESS, address)
            if time.monotonic() > deadline or self._matches(answer, expected):
                break
            await deferLater(reactor, 0.2, lambda: None)
        self.assertAnswer(f"link {LINKS[link].subnet_id}", answer, expected)

    def _matches(
        self, answer: tuple[int, list[ObservedBinding]], expected: list[ExpectedBinding]
    ) -> bool:
        want = Counter(_describe(e.duid, e.addresses, e.prefixes, e.layers) for e in expected)
        got = Counter(_describe(b.duid, b.addresses, b.prefixes, b.layers) for b in answer[1])
        return answer[0] == StatusCode.Success and got == want

    async def _follow(self) -> None:
        self.play(self.plans["c1-na-pd"])
        self.play(self.plans["c2-na"])
        await self._serve(self.lab.lease_file, self.lab.config_file)
        await self.until_link_answers(0, expected_bindings(self.outcomes.values()))

        # New leases written while bulklq serves the file.
        self.play(self.plans["c3-pd-only"])
        self.play(self.plans["c11-renewed-new-remote-id"])
        await self.until_link_answers(0, expected_bindings(self.outcomes.values()))
        self.assertAnswer(
            "the Remote-ID c11 had before its renew",
            await self.ask(
                QueryType.QUERY_BY_REMOTE_ID, query_options=[RemoteId(32473, b"a-11-old")]
            ),
            [],
        )

        # c2 comes back and releases its address: its binding goes.
        self.play(attrs.evolve(self.plans["c2-na"], release="all"))
        self.assertFalse(self.outcomes["c2-na"].active)
        await self.until_link_answers(0, expected_bindings(self.outcomes.values()))

    def test_follows_kea_while_it_writes(self) -> Deferred[None]:
        """
        With Kea running, leases it grants after bulklq loaded the file, a renew that
        replaces the Remote-ID (S50) and a release are served once bulklq polled the file.
        """
        return Deferred.fromCoroutine(self._follow())
