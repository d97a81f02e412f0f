"""
Tests for C{bulklq query} (L{bulklq.cli.query}) and the output formats
(L{bulklq.client.output}): arguments, every format, next-hop choice, progress, exit codes,
and one real run in a subprocess against a server on loopback.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from ipaddress import IPv6Address, IPv6Network

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, threads
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from bulklq.cli import query as cli
from bulklq.client import UNKNOWN_LINK, ServerAddress, binding_from_client_data
from bulklq.client.output import (
    JsonLinesWriter,
    NextHop,
    RoutesWriter,
    binding_to_json,
    format_address,
    next_hop,
)
from bulklq.model import AddressLease, Binding, PrefixLease
from bulklq.testing import make_binding, make_relay_data, make_relay_hop
from bulklq.wire import (
    ClientData,
    CltTime,
    Duid,
    IAAddress,
    IAPrefix,
    Message,
    MessageType,
    QueryType,
    RelayId,
    RemoteId,
    StatusCode,
    StatusCodeOption,
    UnknownOption,
    WireError,
    decode_message,
)

from .fake_server import (
    FakeServerFactory,
    InMemoryEndpoint,
    answer,
    client_data,
    refuse,
    stall,
)

NOW = 1_700_000_000
RELAY_TEXT = "00:04:00:01:02:03:04:05:06:07:08:09:0a:0b:0c:0d:0e:0f"


def parse(*argv: str) -> argparse.Namespace:
    """Parse C{bulklq query ARGV}."""
    parser = argparse.ArgumentParser(prog="bulklq")
    cli.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["query", *argv])


class _Tty(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


class ArgumentTests(SynchronousTestCase):
    """Arguments and their errors."""

    def usage_error(self, *argv: str) -> str:
        """Parse C{argv}, expecting exit status 2; return what was written to stderr."""
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        with self.assertRaises(SystemExit) as caught:
            parse(*argv)
        self.assertEqual(caught.exception.code, cli.EXIT_USAGE)
        return err.getvalue()

    def test_bad_arguments_one_line(self) -> None:
        """Bad arguments give one line on stderr and status 2, no traceback."""
        for argv in (
            ("::1", "--relay-id", "xyz"),
            ("::1", "--remote-id", "nothex"),
            ("::1", "--link", "not-an-address"),
            ("::1", "--relay-id", RELAY_TEXT, "--client-id", RELAY_TEXT),
            ("::1", "--port", "70000"),
            ("::1", "--timeout", "0"),
            ("--link", "::1"),
            ("::1", "--format", "xml"),
        ):
            text = self.usage_error(*argv)
            self.assertEqual(text.count("\n"), 1, (argv, text))
            self.assertNotIn("Traceback", text)

    def test_build_query(self) -> None:
        """R2/R4: each option makes its query type; --link restricts others; port 547 default."""
        cases = [
            (("--relay-id", RELAY_TEXT), QueryType.QUERY_BY_RELAY_ID),
            (("--remote-id", "32473:636972637569742d37"), QueryType.QUERY_BY_REMOTE_ID),
            (("--client-id", "00:03:00:01:02:00:00:00:0a:bc"), QueryType.QUERY_BY_CLIENTID),
            (("--address", "2001:db8::5"), QueryType.QUERY_BY_ADDRESS),
            (("--link", "2001:db8:1::1"), QueryType.QUERY_BY_LINK_ADDRESS),
        ]
        for argv, query_type in cases:
            arguments = parse("::1", *argv)
            self.assertEqual(cli.build_query(arguments).query_type, query_type)
            self.assertEqual(arguments.port, 547)
        restricted = cli.build_query(
            parse("::1", "--relay-id", RELAY_TEXT, "--link", "2001:db8::1")
        )
        self.assertEqual(restricted.link_address, IPv6Address("2001:db8::1"))
        self.assertEqual(restricted.query_option, RelayId(Duid.from_text(RELAY_TEXT)))
        remote = cli.build_query(parse("::1", "--remote-id", "32473:6162", "--relay-data"))
        self.assertEqual(remote.query_option, RemoteId(32473, b"ab"))
        self.assertTrue(remote.relay_data)

    def test_default_requestor_duid(self) -> None:
        """R1: the default requestor DUID is a valid DUID-UUID, the same on every call."""
        self.assertEqual(cli.default_requestor_duid(), cli.default_requestor_duid())
        self.assertEqual(cli.default_requestor_duid().duid_type, 4)


class CommandTestCase(SynchronousTestCase):
    """Run the command on a Clock against fake servers in memory."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.endpoints: dict[ServerAddress, InMemoryEndpoint] = {}

    def serve(self, name: str, behaviour: object, **kwargs: object) -> None:
        """A fake server for C{name}."""
        self.endpoints[ServerAddress.parse(name)] = InMemoryEndpoint(
            FakeServerFactory(behaviour),  # type: ignore[arg-type]
            **kwargs,  # type: ignore[arg-type]
        )

    def command(self, *argv: str, tty: bool = False) -> tuple[int, str, str]:
        """Run C{bulklq query ARGV}; return status, stdout and stderr."""
        out = io.StringIO()
        err = _Tty() if tty else io.StringIO()
        running = defer.Deferred.fromCoroutine(
            cli.run_query(
                self.clock,
                parse(*argv),
                out,
                err,
                endpoint_factory=self.endpoints.__getitem__,
                now=lambda: NOW,
            )
        )
        for _ in range(2000):
            for endpoint in self.endpoints.values():
                endpoint.flush()
            if running.called:
                break
            self.clock.advance(1)
        code = self.successResultOf(running)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        return code, out.getvalue(), err.getvalue()


def _two_clients() -> list[object]:
    relay = make_relay_data(make_relay_hop("2001:db8:1::1", "fe80::a1"))
    return [
        client_data(1, ["2001:db8:1::1"], ["2001:db8:ff01::/56"], clt_time=100),
        client_data(2, prefixes=["2001:db8:ff02::/56"], relay_data=relay),
    ]


class FormatTests(CommandTestCase):
    """Every --format."""

    def setUp(self) -> None:
        super().setUp()
        self.serve("2001:db8::547", answer(_two_clients()))  # type: ignore[arg-type]

    def test_jsonl(self) -> None:
        """jsonl: one JSON object per binding; lifetimes as granted at cltt, with expiry."""
        code, out, err = self.command(
            "2001:db8::547", "--relay-id", RELAY_TEXT, "--format", "jsonl"
        )
        self.assertEqual((code, err), (0, ""))
        lines = [json.loads(line) for line in out.splitlines()]
        # Key order: link id, then DUID ("2001:db8:1::1" sorts before "unknown").
        self.assertEqual(
            [line["client_id"] for line in lines],
            ["00:03:00:01:00:00:00:00:00:02", "00:03:00:01:00:00:00:00:00:01"],
        )
        second, first = lines
        self.assertEqual(first["cltt"], NOW - 100)
        self.assertEqual(first["link"], "unknown")
        self.assertEqual(
            first["addresses"],
            [
                {
                    "address": "2001:db8:1::1",
                    "preferred_lifetime": 1900,
                    "valid_lifetime": 3700,
                    "expires": NOW + 3600,
                }
            ],
        )
        self.assertEqual(first["prefixes"][0]["prefix"], "2001:db8:ff01::/56")
        self.assertEqual(second["link"], "2001:db8:1::1")
        self.assertEqual(second["relay_ids"], [])

    def test_json(self) -> None:
        """json: one document with each server's status and the bindings."""
        code, out, _ = self.command("2001:db8::547", "--relay-id", RELAY_TEXT, "--format", "json")
        document = json.loads(out)
        self.assertEqual(code, 0)
        (server,) = document["servers"]
        self.assertEqual((server["server"], server["status"]), ("[2001:db8::547]:547", "success"))
        self.assertEqual(server["received"], 2)
        self.assertEqual(len(document["bindings"]), 2)

    def test_csv(self) -> None:
        """csv: a header and one row per address or prefix."""
        _, out, _ = self.command("2001:db8::547", "--relay-id", RELAY_TEXT, "--format", "csv")
        rows = out.splitlines()
        self.assertEqual(
            rows[0], "client_id,link,cltt,type,lease,preferred_lifetime,valid_lifetime,expires"
        )
        self.assertEqual(len(rows), 4)
        self.assertIn(f"address,2001:db8:1::1,1900,3700,{NOW + 3600}", rows[2])

    def test_table(self) -> None:
        """table: one line per lease with the lifetimes left now, and a count."""
        _, out, _ = self.command("2001:db8::547", "--relay-id", RELAY_TEXT)
        lines = out.splitlines()
        self.assertTrue(lines[0].startswith("CLIENT-DUID"))
        self.assertEqual(len(lines), 5)
        self.assertIn(" 1800 ", lines[1])
        self.assertEqual(lines[-1], "2 bindings")

    def test_routes(self) -> None:
        """
        routes: ip -6 route replace per delegated prefix; next hop: the address, else the
        relay peer.
        """
        _, out, _ = self.command(
            "2001:db8::547", "--relay-id", RELAY_TEXT, "--format", "routes", "--dev", "eth1"
        )
        self.assertEqual(
            sorted(out.splitlines()),
            [
                "ip -6 route replace 2001:db8:ff01::/56 via 2001:db8:1::1 dev eth1",
                "ip -6 route replace 2001:db8:ff02::/56 via fe80::a1 dev eth1",
            ],
        )

    def test_routes_link_local_needs_dev(self) -> None:
        """routes: a link-local next hop without --dev becomes a comment, not a broken route."""
        _, out, _ = self.command("2001:db8::547", "--relay-id", RELAY_TEXT, "--format", "routes")
        self.assertIn("# 2001:db8:ff02::/56: next hop fe80::a1 is link-local: give --dev", out)

    def test_stream(self) -> None:
        """--stream prints bindings as they arrive (unmerged); not allowed with json."""
        code, out, _ = self.command(
            "2001:db8::547", "--relay-id", RELAY_TEXT, "--format", "jsonl", "--stream"
        )
        self.assertEqual((code, len(out.splitlines())), (0, 2))
        code, _, err = self.command(
            "2001:db8::547", "--relay-id", RELAY_TEXT, "--format", "json", "--stream"
        )
        self.assertEqual(code, 2)
        self.assertEqual(err.count("\n"), 1)

    def test_stream_jsonl_lines(self) -> None:
        """
        R12: --stream --format jsonl (lines written straight from the usual DATA) writes the
        lines the merged output has, relay data included, and skips what R12 discards.
        """
        self.endpoints.clear()
        datas = [
            client_data(n, [f"2001:db8:1::{n:x}"], [f"2001:db8:ff{n:02x}::/56"], clt_time=n)
            for n in range(3, 40)
        ]
        datas += [*_two_clients(), client_data(50, ["2001:db8:1::50"], clt_time=None)]
        self.serve("::1", answer(datas))  # type: ignore[arg-type]
        argv = ("::1", "--link", "2001:db8:1::1", "--format", "jsonl", "--retries", "0")
        streamed = self.command(*argv, "--stream")
        merged = self.command(*argv)
        self.assertEqual(streamed[0], 0)
        self.assertEqual(streamed[2], merged[2])
        self.assertEqual(len(streamed[1].splitlines()), 39)
        self.assertEqual(sorted(streamed[1].splitlines()), sorted(merged[1].splitlines()))
        self.assertIn("1 discarded", merged[2])

    def test_stream_progress_counts_frames(self) -> None:
        """With --stream, the progress line counts the bindings written from frames too."""
        self.endpoints.clear()
        datas = [client_data(n, [f"2001:db8::{n}"], ["2001:db8:f::/48"]) for n in range(1, 8)]
        self.serve("2001:db8::547", stall(datas))  # type: ignore[arg-type]
        argv = ("2001:db8::547", "--link", "2001:db8::1", "--timeout", "5", "--retries", "0")
        code, out, err = self.command(*argv, "--stream", "--format", "jsonl", tty=True)
        self.assertEqual(code, cli.EXIT_INCOMPLETE)
        self.assertIn("\r7 bindings", err)
        self.assertEqual(len(out.splitlines()), 7)

    def test_progress_only_on_a_terminal(self) -> None:
        """Progress goes to stderr only when stderr is a terminal."""
        self.endpoints.clear()
        datas = [client_data(n) for n in range(1, 6)]
        self.serve("2001:db8::547", stall(datas))  # type: ignore[arg-type]
        code, _, err = self.command(
            "2001:db8::547", "--link", "2001:db8::1", "--timeout", "5", "--retries", "0", tty=True
        )
        self.assertEqual(code, cli.EXIT_INCOMPLETE)
        self.assertIn("\r5 bindings", err)
        code, _, err = self.command(
            "2001:db8::547", "--link", "2001:db8::1", "--timeout", "5", "--retries", "0"
        )
        self.assertNotIn("\r", err)
        self.assertIn("timeout", err)


class _ClosedPipe(io.StringIO):
    """An output whose reader went away after C{room} characters."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room

    def write(self, text: str) -> int:
        if self.tell() + len(text) > self.room:
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(text)


class ExitCodeTests(CommandTestCase):
    """Exit codes."""

    def test_broken_pipe(self) -> None:
        """
        141 and no traceback when the output is closed early (| head), streaming or not,
        with lines written from frames or from bindings, in batches or one by one.
        """
        self.serve("::1", answer([client_data(n) for n in range(1, 50)]))
        self.serve("::2", answer([client_data(n, ["::1"], ["1::/48"]) for n in range(1, 50)]))
        for extra in (
            ("::1",),
            ("::1", "--stream"),
            ("::2", "--stream"),
            ("::2", "--stream", "--format", "csv"),
        ):
            out = _ClosedPipe(300)
            err = io.StringIO()
            running = defer.Deferred.fromCoroutine(
                cli.run_query(
                    self.clock,
                    parse("--link", "2001:db8::1", "--format", "jsonl", *extra),
                    out,
                    err,
                    endpoint_factory=self.endpoints.__getitem__,
                )
            )
            for endpoint in self.endpoints.values():
                endpoint.flush()
            self.assertEqual(self.successResultOf(running), cli.EXIT_BROKEN_PIPE)
            self.assertNotIn("Traceback", err.getvalue())
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_success_without_bindings(self) -> None:
        """0: success, including no bindings."""
        self.serve("::1", answer([]))
        code, out, err = self.command("::1", "--link", "2001:db8::1", "--format", "jsonl")
        self.assertEqual((code, out, err), (0, "", ""))

    def test_server_error(self) -> None:
        """3: a server answered with an error status; the status is named on stderr."""
        self.serve("::1", refuse(StatusCode.NotConfigured, "no such link"))
        code, _, err = self.command("::1", "--link", "2001:db8::1")
        self.assertEqual(code, cli.EXIT_SERVER_ERROR)
        self.assertIn("NotConfigured: no such link", err)

    def test_incomplete(self) -> None:
        """4: a data timeout is an incomplete answer."""
        self.serve("::1", stall([client_data(1), client_data(2)]))
        code, _, _ = self.command(
            "::1", "--link", "2001:db8::1", "--timeout", "10", "--retries", "0"
        )
        self.assertEqual(code, cli.EXIT_INCOMPLETE)

    def test_connection_failure_wins(self) -> None:
        """5: no connection; with several servers the highest code applies, data still printed."""
        self.serve("::1", answer([client_data(1)]))
        self.serve("::2", answer([]), refuse=10)
        code, out, err = self.command(
            "::1", "::2", "--link", "2001:db8::1", "--retries", "1", "--format", "jsonl"
        )
        self.assertEqual(code, cli.EXIT_CONNECTION_FAILED)
        self.assertEqual(len(out.splitlines()), 1)
        self.assertIn("[::2]:547: connection-failed", err)


def _option(code: int, body: bytes) -> bytes:
    """One option's octets."""
    return code.to_bytes(2, "big") + len(body).to_bytes(2, "big") + body


_any_address = st.one_of(
    st.integers(0, 2**128 - 1),
    st.integers(0, 2**32 - 1).map(lambda v: v | 0xFFFF00000000),
    st.integers(0, 2**32 - 1),
    st.integers(0, 0xFFFF).map(lambda v: v << 64),
    st.integers(0, 0xFFFF).map(lambda v: (0x20010DB8 << 96) | v),
).map(IPv6Address)
_remaining = st.one_of(
    st.integers(0, 5000), st.sampled_from([0xFFFFFFFE, 0xFFFFFFFF]), st.integers(0, 2**32 - 1)
)
_valid_duids = st.one_of(
    st.binary(min_size=6, max_size=6).map(lambda mac: Duid.ll(1, mac).raw),
    st.binary(min_size=1, max_size=120).map(lambda ident: Duid.en(32473, ident).raw),
    st.binary(min_size=16, max_size=16).map(lambda value: Duid.uuid(value).raw),
    st.binary(min_size=1, max_size=20).map(lambda lla: Duid.llt(1, 7, lla).raw),
    st.binary(min_size=1, max_size=60).map(lambda rest: b"\x12\x34" + rest),
)
# Any octets at all, so also DUIDs too short or too long for their type.
_odd_duids = st.one_of(
    _valid_duids,
    st.tuples(st.integers(0, 5), st.binary(max_size=140)).map(
        lambda pair: pair[0].to_bytes(2, "big") + pair[1]
    ),
    st.tuples(st.integers(0, 5), st.binary(max_size=10)).map(
        lambda pair: pair[0].to_bytes(2, "big") + pair[1]
    ),
    st.binary(max_size=3),
)


@st.composite
def _addresses_option(draw: st.DrawFn) -> bytes:
    return IAAddress(draw(_any_address), draw(_remaining), draw(_remaining)).encode()


@st.composite
def _prefix_option(draw: st.DrawFn) -> bytes:
    return IAPrefix(
        draw(_remaining), draw(_remaining), draw(st.integers(0, 128)), draw(_any_address)
    ).encode()


@st.composite
def _data_frames(draw: st.DrawFn, usual: bool | None = None) -> tuple[bytes, bool]:
    """
    A LEASEQUERY-DATA message and whether it is of the usual shape: one CLIENT_DATA with
    a valid CLIENTID first, one IAADDR and at most one IAPREFIX (or an IAPREFIX alone),
    CLT_TIME last. Otherwise: the usual shape with one thing changed (a DUID of any length
    and type, an option moved, added or cut short, a lease with sub-options, relay data,
    several CLIENT_DATA), or any list of such options.
    """
    kind = "usual" if usual else draw(st.sampled_from(["usual", "near", "any"]))
    if usual is False and kind == "usual":
        kind = "near"
    clt_time = CltTime(draw(st.one_of(st.integers(0, 100), st.integers(0, 2**32 - 1)))).encode()
    relay = make_relay_data(make_relay_hop("2001:db8:1::1", "fe80::a1"), relay_id=Duid.ll(1, b"r"))
    oddities = st.one_of(
        _odd_duids.map(lambda duid: _option(1, duid)),
        _addresses_option(),
        _prefix_option(),
        st.just(clt_time),
        st.binary(max_size=6).map(lambda octets: _option(46, octets)),
        st.just(relay.encode()),
        st.just(IAAddress(IPv6Address(1), 5, 6, (StatusCodeOption(0, "x"),)).encode()),
        st.just(IAPrefix(5, 6, 48, IPv6Address(1 << 100), (StatusCodeOption(0, "x"),)).encode()),
        st.tuples(st.integers(60, 300), st.binary(max_size=9)).map(lambda pair: _option(*pair)),
    )
    shape = draw(st.sampled_from([(1, 1), (1, 0), (0, 1)]))
    parts = [
        _option(1, draw(_valid_duids)),
        *(draw(_addresses_option()) for _ in range(shape[0])),
        *(draw(_prefix_option()) for _ in range(shape[1])),
        clt_time,
    ]
    if kind == "near":
        change = draw(st.sampled_from(["duid", "replace", "insert", "delete", "move"]))
        index = draw(st.integers(0, len(parts) - 1))
        if change == "duid":
            parts[0] = _option(1, draw(_odd_duids))
        elif change == "replace":
            parts[index] = draw(oddities)
        elif change == "insert":
            parts.insert(index, draw(oddities))
        elif change == "delete":
            del parts[index]
        else:
            parts.insert(draw(st.integers(0, len(parts) - 1)), parts.pop(index))
    elif kind == "any":
        parts = draw(st.lists(oddities, max_size=7))
    client_datas = [_option(45, b"".join(parts))]
    if kind != "usual":
        if draw(st.booleans()):
            client_datas.append(_option(45, _option(1, draw(_valid_duids)) + clt_time))
        if draw(st.booleans()):
            client_datas.insert(draw(st.integers(0, 1)), UnknownOption(200, b"top").encode())
    head = Message(MessageType.LEASEQUERY_DATA, 0x10203, ()).encode()
    return head + b"".join(draw(st.permutations(client_datas))), kind == "usual"


class OutputTests(SynchronousTestCase):
    """Output helpers."""

    def test_jsonl_matches_json_dumps(self) -> None:
        """The hand-built jsonl line is exactly json.dumps of binding_to_json."""
        bindings = [
            make_binding(7, prefixes=["2001:db8:ff00::/40"]),
            make_binding(8, 'li"nk', addresses=["::ffff:1.2.3.4", "2001:db8::"]),
            make_binding(9, valid_lifetime=0xFFFFFFFF),
            make_binding(10, relay_id=Duid.uuid(bytes(16))),
        ]
        for binding in bindings:
            out = io.StringIO()
            JsonLinesWriter(out).binding(binding)
            self.assertEqual(
                out.getvalue(), json.dumps(binding_to_json(binding), separators=(",", ":")) + "\n"
            )

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.builds(
                Binding,
                st.binary(min_size=3, max_size=20).map(Duid),
                st.text(max_size=12),
                st.integers(0, 2**33),
                st.lists(
                    st.builds(
                        AddressLease,
                        st.one_of(
                            st.integers(0, 2**128 - 1),
                            st.integers(0, 2**32 - 1).map(lambda v: v | 0xFFFF00000000),
                            st.integers(0, 0xFFFF).map(lambda v: v << 64),
                        ).map(IPv6Address),
                        st.sampled_from([0, 1800, 0xFFFFFFFE, 0xFFFFFFFF]),
                        st.sampled_from([0, 3600, 0xFFFFFFFE, 0xFFFFFFFF]),
                    ),
                    max_size=3,
                ).map(tuple),
                st.lists(
                    st.builds(
                        PrefixLease,
                        st.tuples(st.integers(0, 2**128 - 1), st.integers(0, 128)).map(
                            lambda pair: IPv6Network(pair, strict=False)
                        ),
                        st.sampled_from([0, 1800, 0xFFFFFFFF]),
                        st.sampled_from([0, 3600, 0xFFFFFFFF]),
                    ),
                    max_size=3,
                ).map(tuple),
            ),
            max_size=7,
        ),
        st.sampled_from([1, 2, 3, 512]),
    )
    def test_jsonl_writer_is_json_dumps(self, bindings: list[Binding], batch: int) -> None:
        """
        The hand-built jsonl lines, written one by one or in batches, are exactly
        json.dumps of binding_to_json, for any link text, DUID, address and lifetime.
        """
        out = io.StringIO()
        writer = JsonLinesWriter(out, batch)
        writer.start()
        for binding in bindings:
            writer.binding(binding)
        writer.finish(None)
        self.assertEqual(
            out.getvalue(),
            "".join(
                json.dumps(binding_to_json(binding), separators=(",", ":")) + "\n"
                for binding in bindings
            ),
        )

    @settings(max_examples=400, deadline=None)
    @given(
        _data_frames(),
        st.binary(max_size=24),
        st.binary(max_size=24),
        st.sampled_from([UNKNOWN_LINK, "2001:db8::1", 'li"nk\u00e9\n']),
        st.one_of(st.integers(0, 2**33), st.just(NOW)),
    )
    def test_jsonl_frame_is_binding_line(
        self,
        case: tuple[bytes, bool],
        before: bytes,
        after: bytes,
        link: str,
        received_at: int,
    ) -> None:
        """
        R12: JsonLinesWriter.frame, read in place, takes every DATA of the usual shape and
        nothing else: what it takes is exactly one CLIENT_DATA the codec decodes into one
        binding without relay data, and the line is the one JsonLinesWriter.binding writes
        for that binding (random DUIDs, relay data, leases, lifetimes, unknown options).
        """
        octets, usual = case
        fast = io.StringIO()
        taken = JsonLinesWriter(fast).frame(
            before + octets + after, len(before), len(before) + len(octets), received_at, link
        )
        if usual:
            self.assertTrue(taken)
        if not taken:
            self.assertEqual(fast.getvalue(), "")
            return
        message = decode_message(octets)
        assert isinstance(message, Message)
        self.assertEqual([type(option) for option in message.options], [ClientData])
        binding = binding_from_client_data(
            message.options[0],  # type: ignore[arg-type]
            received_at,
            None if link == UNKNOWN_LINK else link,
        )
        assert binding is not None
        self.assertIsNone(binding.relay_data)
        self.assertEqual(binding.options, ())
        slow = io.StringIO()
        JsonLinesWriter(slow).binding(binding)
        self.assertEqual(fast.getvalue(), slow.getvalue())

    def test_jsonl_frame_duids(self) -> None:
        """
        JsonLinesWriter.frame takes a CLIENTID exactly when the codec accepts its DUID: every
        type's shortest and longest, one octet either side, and unknown types.
        """
        rest = IAAddress(IPv6Address(1), 1, 2).encode() + CltTime(3).encode()
        head = Message(MessageType.LEASEQUERY_DATA, 0x10203, ()).encode()
        for duid_type in range(7):
            for length in (*range(21), *range(126, 134)):
                raw = (duid_type.to_bytes(2, "big") + bytes(range(1, 140)))[:length]
                octets = head + _option(45, _option(1, raw) + rest)
                taken = JsonLinesWriter(io.StringIO()).frame(octets, 0, len(octets), NOW, "l")
                try:
                    decode_message(octets)
                except WireError:
                    self.assertFalse(taken, (duid_type, length))
                else:
                    self.assertTrue(taken, (duid_type, length))

    @settings(max_examples=300, deadline=None)
    @given(_data_frames(usual=True), st.data())
    def test_jsonl_frame_mangled(self, case: tuple[bytes, bool], draw: st.DataObject) -> None:
        """
        On an altered or cut frame, JsonLinesWriter.frame declines, or writes the line of
        what the codec decodes from it.
        """
        octets = bytearray(case[0])
        position = draw.draw(st.integers(4, len(octets) - 1))
        if draw.draw(st.booleans()):
            octets[position] = draw.draw(st.integers(0, 255))
        else:
            del octets[position:]
        mangled = bytes(octets)
        fast = io.StringIO()
        taken = JsonLinesWriter(fast).frame(mangled + bytes(30), 0, len(mangled), NOW, "l")
        try:
            message = decode_message(mangled)
        except WireError:
            self.assertFalse(taken)
            return
        assert isinstance(message, Message)
        bindings = [
            binding_from_client_data(item, NOW, "l") for item in message.options_of(ClientData)
        ]
        if taken:
            self.assertEqual(len(message.options), 1)
            (binding,) = bindings
            assert binding is not None
            slow = io.StringIO()
            JsonLinesWriter(slow).binding(binding)
            self.assertEqual(fast.getvalue(), slow.getvalue())

    def test_jsonl_batches(self) -> None:
        """With a batch, lines are written batch by batch, and the rest by finish."""
        out = io.StringIO()
        writer = JsonLinesWriter(out, 2)
        for number in range(3):
            writer.binding(make_binding(number + 1))
        self.assertEqual(len(out.getvalue().splitlines()), 2)
        writer.finish(None)
        self.assertEqual(len(out.getvalue().splitlines()), 3)

    def test_format_address(self) -> None:
        """format_address is str() of the address, also for IPv4-mapped ones."""
        for text in ("::", "::1", "2001:db8::1:0:0:1", "::ffff:1.2.3.4", "fe80::1", "1::"):
            address = IPv6Address(text)
            self.assertEqual(format_address(address), str(address))

    def test_next_hop_choices(self) -> None:
        """routes next hop: address, relay (innermost hop's peer-address), auto."""
        relay = make_relay_data(
            make_relay_hop("2001:db8:ffff::1", "2001:db8:ffff::2"),
            make_relay_hop("2001:db8:1::1", "fe80::77"),
        )
        both = make_binding(1, relay_data=relay)
        bare = make_binding(2, addresses=[])
        relay_only = make_binding(3, addresses=[], relay_data=relay)
        self.assertEqual(next_hop(both), IPv6Address("2001:db8:1::1"))
        self.assertEqual(next_hop(both, NextHop.RELAY), IPv6Address("fe80::77"))
        self.assertIsNone(next_hop(bare))
        self.assertIsNone(next_hop(relay_only, NextHop.ADDRESS))
        self.assertEqual(next_hop(relay_only), IPv6Address("fe80::77"))

    def test_routes_comments(self) -> None:
        """routes: expired prefixes and prefixes without a next hop are comments."""
        out = io.StringIO()
        writer = RoutesWriter(out, now=lambda: 1_700_000_000 + 10_000)
        expired: Binding = make_binding(1, prefixes=["2001:db8:f::/48"])
        writer.binding(expired)
        writer.binding(
            make_binding(
                2,
                addresses=[AddressLease(IPv6Address("2001:db8::2"), 0, 0)],
                prefixes=["2001:db8:e::/48"],
                valid_lifetime=0xFFFFFFFF,
            )
        )
        self.assertEqual(
            out.getvalue().splitlines(),
            [
                "# 2001:db8:f::/48: expired (client 00:03:00:01:00:00:00:00:00:01)",
                "# 2001:db8:e::/48: no next hop for client 00:03:00:01:00:00:00:00:00:02 "
                "(no address; ask for --relay-data)",
            ],
        )


def _command(*argv: str) -> subprocess.CompletedProcess[bytes]:
    """Run C{python -m bulklq.cli.query ARGV} (in a thread, so the reactor keeps serving)."""
    return subprocess.run(
        [sys.executable, "-m", "bulklq.cli.query", *argv],
        capture_output=True,
        timeout=60,
        check=False,
        env=dict(os.environ),
    )


class SubprocessTests(TestCase):
    """The real command, with the real reactor, against a server on loopback."""

    def test_jsonl_over_loopback(self) -> defer.Deferred[None]:
        """The command connects over TCP, prints jsonl and exits 0 (task.react)."""
        from twisted.internet import reactor

        port = reactor.listenTCP(  # type: ignore[attr-defined]
            0,
            FakeServerFactory(answer(_two_clients())),
            interface="127.0.0.1",  # type: ignore[arg-type]
        )
        self.addCleanup(port.stopListening)
        argv = (f"127.0.0.1:{port.getHost().port}", "--link", "2001:db8:1::1", "--format", "jsonl")

        def check(done: subprocess.CompletedProcess[bytes]) -> None:
            self.assertEqual((done.returncode, done.stderr), (0, b""))
            lines = done.stdout.decode().splitlines()
            self.assertEqual(len(lines), 2)
            self.assertEqual(json.loads(lines[0])["link"], "2001:db8:1::1")

        return threads.deferToThread(_command, *argv).addCallback(check)

    def test_connection_refused_exit_code(self) -> defer.Deferred[None]:
        """Exit status 5 and one line on stderr when nothing listens."""

        def check(done: subprocess.CompletedProcess[bytes]) -> None:
            self.assertEqual(done.returncode, cli.EXIT_CONNECTION_FAILED)
            self.assertEqual(done.stdout, b"")
            self.assertEqual(done.stderr.count(b"\n"), 1)

        argv = ("127.0.0.1:1", "--link", "::1", "--retries", "0", "--format", "jsonl")
        return threads.deferToThread(_command, *argv).addCallback(check)
