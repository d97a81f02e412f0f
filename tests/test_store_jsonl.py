"""Tests for L{bulklq.stores.jsonl}, the JSON lines binding format."""

from __future__ import annotations

import io
import json

from twisted.trial.unittest import SynchronousTestCase

from bulklq.model import Binding, Link
from bulklq.stores.jsonl import (
    MAX_LINE_LENGTH,
    JsonlError,
    decode_record,
    encode_binding,
    encode_link,
    read_records,
    write_records,
)
from bulklq.testing import contract_dataset, make_binding, make_duid, make_link
from bulklq.wire import ClientId, RemoteId, UnknownOption

_GOOD = (
    '{"type":"binding","duid":"00:03:00:01:00:00:00:00:00:01","link":"subnet-1",'
    '"cltt":1700000000,"addresses":[{"address":"2001:db8:1::5","preferred":1800,"valid":3600}]}'
)


class RoundTripTests(SynchronousTestCase):
    """Encoding then decoding gives back the same values."""

    def test_contract_dataset_round_trips(self) -> None:
        """Every link and binding of the contract dataset (relay chains, prefixes) round-trips."""
        links, bindings = contract_dataset()
        out = io.StringIO()
        self.assertEqual(write_records(out, links, bindings), len(bindings))
        records = list(read_records(io.StringIO(out.getvalue())))
        self.assertEqual(records, [*links, *bindings])

    def test_explicit_ids_and_options_round_trip(self) -> None:
        """
        Relay-IDs and Remote-IDs that differ from the chain's, and stored client options,
        are written and read back.
        """
        binding = Binding(
            make_duid(4),
            "link-1",
            5,
            relay_ids=(make_duid(900),),
            remote_ids=(RemoteId(9, b"x"),),
            options=(UnknownOption(99, b"\x01\x02"), ClientId(make_duid(4))),
        )
        line = encode_binding(binding)
        self.assertIn('"relay-ids"', line)
        self.assertIn('"remote-ids":["9:78"]', line)
        self.assertEqual(decode_record(line), binding)

    def test_chain_ids_not_repeated(self) -> None:
        """Relay-IDs found in the chain are not written again as C{relay-ids}."""
        line = encode_binding(make_binding(1, relay_id=make_duid(900)))
        self.assertNotIn("relay-ids", line)
        self.assertNotIn("remote-ids", line)

    def test_link(self) -> None:
        """A link line carries its id and prefixes."""
        link = make_link("subnet-9", ["2001:db8:9::/64", "2001:db8:99::/48"])
        self.assertEqual(
            json.loads(encode_link(link)),
            {"type": "link", "id": "subnet-9", "prefixes": ["2001:db8:9::/64", "2001:db8:99::/48"]},
        )
        self.assertEqual(decode_record(encode_link(link)), link)

    def test_hand_written_line(self) -> None:
        """The documented minimal binding line decodes; DUIDs may be colon-hex or plain hex."""
        binding = decode_record(_GOOD)
        assert isinstance(binding, Binding)
        self.assertEqual(binding, make_binding(1, "subnet-1", addresses=["2001:db8:1::5"]))
        plain = decode_record(
            _GOOD.replace("00:03:00:01:00:00:00:00:00:01", "00030001000000000001")
        )
        self.assertEqual(plain, binding)

    def test_blank_lines_skipped(self) -> None:
        """Blank lines between records are ignored."""
        records = list(read_records(["\n", _GOOD + "\n", "   \n"]))
        self.assertEqual(len(records), 1)


class ErrorTests(SynchronousTestCase):
    """Invalid lines give one clear JsonlError naming the problem."""

    def assertRejected(self, line: str, fragment: str) -> None:
        """C{line} is rejected with a message containing C{fragment}."""
        error = self.assertRaises(JsonlError, decode_record, line)
        self.assertIn(fragment, str(error))
        self.assertNotIn("\n", str(error))

    def test_not_json(self) -> None:
        """Text that is not JSON is rejected."""
        self.assertRejected("{nope", "not JSON")

    def test_not_object(self) -> None:
        """A JSON value that is not an object is rejected."""
        self.assertRejected("[1]", "JSON object")

    def test_unknown_type(self) -> None:
        """A record of unknown type is rejected."""
        self.assertRejected('{"type":"lease"}', "'type' must be")

    def test_missing_field(self) -> None:
        """A binding without cltt is rejected, naming the field."""
        self.assertRejected(_GOOD.replace('"cltt":1700000000,', ""), "missing 'cltt'")

    def test_wrong_type(self) -> None:
        """A cltt given as text or as a boolean is rejected."""
        self.assertRejected(_GOOD.replace("1700000000", '"1700000000"'), "'cltt' must be a int")
        self.assertRejected(_GOOD.replace("1700000000", "true"), "'cltt' must be a int")

    def test_unknown_field(self) -> None:
        """A misspelt field is rejected, not ignored."""
        self.assertRejected(_GOOD.replace('"cltt"', '"clt":1,"cltt"'), "unknown field 'clt'")

    def test_bad_duid(self) -> None:
        """A DUID that is not hex is rejected."""
        self.assertRejected(_GOOD.replace("00:03", "zz:03"), "'duid'")

    def test_bad_address(self) -> None:
        """An address that is not IPv6 is rejected."""
        self.assertRejected(_GOOD.replace("2001:db8:1::5", "192.0.2.1"), "192.0.2.1")

    def test_lifetime_range(self) -> None:
        """A lifetime above 32 bits is rejected."""
        self.assertRejected(_GOOD.replace("3600", str(1 << 32)), "'valid'")

    def test_bad_options(self) -> None:
        """Options that are not hex, or not valid options, are rejected."""
        self.assertRejected(_GOOD.replace("}]}", '}],"options":"zz"}'), "not hex")
        self.assertRejected(_GOOD.replace("}]}", '}],"options":"0001"}'), "options")

    def test_bad_relay(self) -> None:
        """A relay without hops, or with a malformed hop, is rejected."""
        self.assertRejected(_GOOD.replace("}]}", '}],"relay":{"peer":"::1","hops":[]}}'), "hops")
        self.assertRejected(
            _GOOD.replace("}]}", '}],"relay":{"peer":"::1","hops":[{"link":"x","peer":"::"}]}}'),
            "relay",
        )

    def test_too_long(self) -> None:
        """A line above the limit is rejected before parsing."""
        self.assertRejected(" " * (MAX_LINE_LENGTH + 1), "exceeds")

    def test_line_numbers(self) -> None:
        """read_records names the source and line of the first bad record."""
        error = self.assertRaises(
            JsonlError, list, read_records([_GOOD, "", "{nope"], "leases.jsonl")
        )
        self.assertTrue(str(error).startswith("leases.jsonl:3: not JSON"), str(error))

    def test_link_errors(self) -> None:
        """A link without an id, or with a bad prefix, is rejected."""
        self.assertRejected('{"type":"link","id":"","prefixes":[]}', "empty")
        self.assertRejected('{"type":"link","id":"a","prefixes":["2001:db8::1/64"]}', "link 'a'")
        self.assertIsInstance(decode_record('{"type":"link","id":"a","prefixes":[]}'), Link)
