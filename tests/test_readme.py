"""
The README's quick start, run exactly as written: a fresh virtualenv, C{pip install}, the
server started on the example bindings, a query that must return them, and the stop.

The commands run in a copy of the source tree (so the checkout gets no C{.venv} or PID
file); installing takes some seconds and needs the package index (PyPI) or a pip cache.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent
MARKER = "<!-- readme-test: quickstart -->"


def quickstart_commands(readme: str) -> list[str]:
    """The lines of the code block right after the quick-start marker."""
    after = readme.split(MARKER, 1)[1]
    match = re.match(r"\s*```sh\n(.*?)```", after, re.DOTALL)
    assert match is not None, "no sh code block after the quick-start marker"
    return [line for line in match.group(1).splitlines() if line.strip()]


class ReadmeQuickStartTests(SynchronousTestCase):
    """README.md's quick start stays true."""

    def test_commands_extracted(self) -> None:
        """The quick start is three commands: install and start, query, stop."""
        commands = quickstart_commands((ROOT / "README.md").read_text())
        self.assertEqual(len(commands), 3)
        self.assertIn("twistd", commands[0])
        self.assertTrue(commands[1].startswith(".venv/bin/bulklq query "))

    def test_quickstart(self) -> None:
        """
        Run the README commands in order in a copy of the tree: each exits 0, the query
        prints the four example clients behind relay-1, and the server stops.
        """
        commands = quickstart_commands((ROOT / "README.md").read_text())
        work = Path(self.mktemp()).resolve()
        work.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(ROOT / name, work / name)
        for tree in ("bulklq", "examples"):
            shutil.copytree(ROOT / tree, work / tree, ignore=shutil.ignore_patterns("__pycache__"))
        (work / "twisted" / "plugins").mkdir(parents=True)
        shutil.copy(ROOT / "twisted/plugins/bulklq_plugin.py", work / "twisted/plugins")
        environment = {
            key: value for key, value in os.environ.items() if not key.startswith("VIRTUAL_ENV")
        }

        def stop_server() -> None:
            pidfile = work / "bulklq.pid"
            if pidfile.exists():
                with contextlib.suppress(ValueError, ProcessLookupError):
                    os.kill(int(pidfile.read_text()), signal.SIGKILL)

        self.addCleanup(stop_server)
        outputs = []
        for command in commands:
            result = subprocess.run(
                ["bash", "-c", command],
                cwd=work,
                env=environment,
                check=False,
                capture_output=True,
                text=True,
                timeout=600,
            )
            log = work / "bulklq.log"
            self.assertEqual(
                result.returncode,
                0,
                f"{command}\n{result.stdout}\n{result.stderr}\n"
                + (log.read_text() if log.exists() else ""),
            )
            outputs.append(result.stdout)
        for n in range(0x65, 0x69):
            self.assertIn(f"2001:db8:1::{n:x}", outputs[1])
        self.assertNotIn("2001:db8:2::", outputs[1])
        self.assertTrue((work / ".bulklq-state" / "server-id").exists())
