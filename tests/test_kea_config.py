"""Tests for L{bulklq.stores.kea_config}: Kea's dhcp6 configuration as links."""

from __future__ import annotations

import json
from ipaddress import IPv6Network
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from bulklq.stores.kea_config import (
    KeaConfigError,
    links_from_config,
    load_kea_config,
    strip_comments,
)

FIXTURES = Path(__file__).parent / "fixtures" / "kea"


class StripCommentsTests(SynchronousTestCase):
    """Kea's JSON with comments."""

    def test_comment_styles(self) -> None:
        """//, # and /* */ comments go; text in strings stays; line numbers are kept."""
        text = '# top\n{ // a\n"a": "x // y # z /* w */", /* block\nspanning */ "b": 1 # end\n}\n'
        stripped = strip_comments(text)
        self.assertEqual(json.loads(stripped), {"a": "x // y # z /* w */", "b": 1})
        self.assertEqual(stripped.count("\n"), text.count("\n"))

    def test_escaped_quote(self) -> None:
        """An escaped quote does not end a string."""
        self.assertEqual(json.loads(strip_comments('{"a": "q\\" # no"}')), {"a": 'q" # no'})

    def test_unterminated(self) -> None:
        """An unterminated comment or string is an error."""
        self.assertRaises(KeaConfigError, strip_comments, "{ /* open")
        self.assertRaises(KeaConfigError, strip_comments, '{ "open')


class LinksTests(SynchronousTestCase):
    """Subnets become links."""

    def test_real_fixture(self) -> None:
        """The configuration the real Kea 2.2 ran with: three subnets."""
        links = load_kea_config(FIXTURES / "real-kea-2.2-dhcp6.json")
        self.assertEqual(sorted(links), [101, 202, 303])
        self.assertEqual(links[202].link_id, "subnet-202")
        self.assertEqual(links[202].prefixes, (IPv6Network("2001:db8:2::/64"),))

    def test_shared_networks_and_relays(self) -> None:
        """Subnets in shared networks count; relay ip-addresses are /128 prefixes too."""
        links = links_from_config(
            {
                "Dhcp6": {
                    "subnet6": [{"id": 1, "subnet": "2001:db8:1::/64"}],
                    "shared-networks": [
                        {
                            "name": "n",
                            "relay": {"ip-addresses": ["2001:db8:ff::1"]},
                            "subnet6": [
                                {"id": 2, "subnet": "2001:db8:2::/64"},
                                {
                                    "id": 3,
                                    "subnet": "2001:db8:3::/64",
                                    "relay": {"ip-addresses": ["2001:db8:ff::3"]},
                                },
                            ],
                        }
                    ],
                }
            }
        )
        self.assertEqual(
            links[2].prefixes,
            (IPv6Network("2001:db8:2::/64"), IPv6Network("2001:db8:ff::1/128")),
        )
        self.assertEqual(
            links[3].prefixes,
            (IPv6Network("2001:db8:3::/64"), IPv6Network("2001:db8:ff::3/128")),
        )

    def test_errors(self) -> None:
        """Configurations bulklq cannot map to links are refused with the reason."""
        for config, reason in (
            ({}, "Dhcp6"),
            ({"Dhcp6": {"subnet6": [{"subnet": "2001:db8::/64"}]}}, 'explicit "id"'),
            ({"Dhcp6": {"subnet6": [{"id": 1}]}}, "no subnet prefix"),
            ({"Dhcp6": {"subnet6": [{"id": 1, "subnet": "nope"}]}}, "subnet6[0]"),
            (
                {"Dhcp6": {"subnet6": [{"id": 1, "subnet": "2001:db8::/64"}] * 2}},
                "used twice",
            ),
            ({"Dhcp6": {"subnet6": {}}}, "not a list"),
        ):
            error = self.assertRaises(KeaConfigError, links_from_config, config)
            self.assertIn(reason, str(error))

    def test_file_errors(self) -> None:
        """Unreadable, non-JSON and <?include ?> files give one-line errors."""
        directory = Path(self.mktemp())
        directory.mkdir()
        bad = directory / "bad.conf"
        bad.write_text("{ nope }")
        include = directory / "include.conf"
        include.write_text('<?include "other.json"?>\n{}')
        for path, reason in (
            (directory / "missing.conf", "cannot read"),
            (bad, "not valid JSON"),
            (include, "<?include"),
        ):
            error = self.assertRaises(KeaConfigError, load_kea_config, path)
            self.assertIn(reason, str(error))
            self.assertNotIn("\n", str(error))
