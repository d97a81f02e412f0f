"""Tests for L{bulklq.identity}: the server DUID and its state file."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from bulklq.config import ConfigError
from bulklq.identity import SERVER_ID_FILE, generate_duid_llt, load_or_create_server_duid
from bulklq.wire import Duid, DuidType

MAC = bytes.fromhex("020000c0ffee")


class ServerDuidTests(SynchronousTestCase):
    """The server DUID is generated once and then stays the same (S3 needs it stable)."""

    def test_generated_llt(self) -> None:
        """A new DUID is a DUID-LLT: Ethernet, seconds since 2000, the MAC address."""
        duid = generate_duid_llt(946684800 + 1000, lambda: MAC)
        self.assertEqual(duid.duid_type, DuidType.DUID_LLT)
        self.assertEqual(duid.hardware_type, 1)
        self.assertEqual(duid.time, 1000)
        self.assertEqual(duid.link_layer_address, MAC)

    def test_default_mac_is_unicast(self) -> None:
        """Without injection, the link-layer address is a real or locally made unicast MAC."""
        duid = generate_duid_llt(2_000_000_000)
        address = duid.link_layer_address
        assert address is not None
        self.assertEqual(len(address), 6)
        self.assertEqual(address[0] & 0x01, 0)

    def test_created_then_reused(self) -> None:
        """The first start writes STATE-DIR/server-id (Kea's colon hex); later starts read it."""
        state = Path(self.mktemp()) / "nested"
        first = load_or_create_server_duid(state, lambda: 946684800 + 5, lambda: MAC)
        self.assertEqual((state / SERVER_ID_FILE).read_text(), f"{first}\n")
        second = load_or_create_server_duid(state, lambda: 946684800 + 999, lambda: b"\x02" * 6)
        self.assertEqual(first, second)
        self.assertEqual(first.time, 5)
        self.assertEqual(sorted(os.listdir(state)), [SERVER_ID_FILE])

    def test_kea_file_accepted(self) -> None:
        """A server-id file written by hand or copied from Kea is used as it is."""
        state = Path(self.mktemp())
        state.mkdir()
        (state / SERVER_ID_FILE).write_text("00:02:00:00:09:bf:01:02\n")
        self.assertEqual(
            load_or_create_server_duid(state), Duid.from_text("00:02:00:00:09:bf:01:02")
        )

    def test_corrupt_file(self) -> None:
        """A file that holds no DUID is an error naming the file, not a new identity."""
        state = Path(self.mktemp())
        state.mkdir()
        (state / SERVER_ID_FILE).write_text("not a duid")
        error = self.assertRaises(ConfigError, load_or_create_server_duid, state)
        self.assertIn(str(state / SERVER_ID_FILE), str(error))
        self.assertIn("--server-duid", str(error))

    def test_unwritable_directory(self) -> None:
        """A state directory that cannot be created is an error naming the path."""
        blocker = Path(self.mktemp())
        blocker.write_text("a file, not a directory")
        error = self.assertRaises(ConfigError, load_or_create_server_duid, blocker / "state")
        self.assertIn("--state-dir", str(error))
        self.assertNotIn("\n", str(error))
