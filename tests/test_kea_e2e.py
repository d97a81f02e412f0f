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
from collections.abc import Iterable, Mapping, Sequence
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

import attrs
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.kea_harness import (
    LINKS,
    RELAY_A,
    RELAY_B,
    RELAY_C,
    RELAY_D,
    KeaLab,
    KeaLabError,
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


def run_kea_once(case: SynchronousTestCase) -> LabResult:
    """
    Run the Kea scenario once per test process and return its result.

    Skips (or fails, under C{BULKLQ_REQUIRE_SERVICES=1}) when Kea or network namespaces are
    unavailable. The namespaces, the veth pair and the Kea process are gone when this
    returns, whatever happened; the cleanup is also registered on C{case}.
    """
    reason = unavailable_reason()
    if reason is not None:
        if require_services():
            case.fail(f"BULKLQ_REQUIRE_SERVICES=1 but the Kea lab cannot run: {reason}")
        raise SkipTest(f"Kea end-to-end lab unavailable: {reason}")
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


def expected_bindings(result: LabResult) -> list[ExpectedBinding]:
    """The active bindings after the scenario, from what was sent and what Kea granted."""
    expected = []
    for outcome in result.outcomes:
        if not outcome.active:
            continue
        summary = outcome_summary(outcome)
        expected.append(
            ExpectedBinding(
                duid=outcome.duid.raw,
                subnet_id=outcome.subnet_id,
                addresses=frozenset(address for address, _, _ in outcome.addresses),
                prefixes=frozenset(prefix for prefix, _, _ in outcome.prefixes),
                relay_ids=frozenset(bytes.fromhex(h) for h in summary["relay_ids"]),  # type: ignore[attr-defined]
                remote_ids=frozenset(bytes.fromhex(h) for h in summary["remote_ids"]),  # type: ignore[attr-defined]
                layers=tuple(
                    (
                        hop["hop_count"],
                        IPv6Address(hop["link_address"]),
                        IPv6Address(hop["peer_address"]),
                        bytes.fromhex(hop["options_hex"]),
                    )
                    for hop in summary["relay_chain"]  # type: ignore[attr-defined]
                ),
                granted_valid=max(
                    [valid for _, _, valid in outcome.addresses]
                    + [valid for _, _, valid in outcome.prefixes]
                ),
            )
        )
    return expected


def _all_relay_ids() -> Iterable[bytes]:
    return (duid.raw for duid in (RELAY_A, RELAY_B, RELAY_C, RELAY_D))
