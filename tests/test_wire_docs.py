"""docs/wire.md's examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

WIRE_PAGE = Path(__file__).resolve().parent.parent / "docs" / "wire.md"


def python_blocks(markdown: str) -> list[str]:
    """The C{python} fenced code blocks of C{markdown}, in order."""
    return re.findall(r"```python\n(.*?)```", markdown, re.DOTALL)


class WireDocsTests(SynchronousTestCase):
    """The wire model page's examples."""

    def test_examples_run(self) -> None:
        """Every python block of docs/wire.md runs (their asserts hold)."""
        blocks = python_blocks(WIRE_PAGE.read_text())
        self.assertGreaterEqual(len(blocks), 5)
        for block in blocks:
            namespace: dict[str, object] = {}
            exec(compile(block, str(WIRE_PAGE), "exec"), namespace)

    def test_first_example_kept(self) -> None:
        """The page still opens with the LEASEQUERY-DONE round trip."""
        first = python_blocks(WIRE_PAGE.read_text())[0]
        self.assertIn('bytes.fromhex("10123456000d0009000b61626f72746564")', first)
        self.assertIn("assert message.encode() == octets", first)
