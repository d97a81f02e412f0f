"""
Tests for the twistd plugin's packaging: C{twistd bulklq} is found after install, and the
wheel ships the plugin without C{twisted/__init__.py}, C{twisted/plugins/__init__.py} or a
C{dropin.cache}.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def build_wheel(source: Path, output: Path) -> Path:
    """Build a wheel of C{source} with hatchling into C{output}; return its path."""
    if importlib.util.find_spec("hatchling") is not None:
        command = [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(output)]
    else:  # pip fetches hatchling for an isolated build
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(output), "."]
    subprocess.run(command, cwd=source, check=True, capture_output=True, timeout=300)
    (wheel,) = output.glob("bulklq-*.whl")
    return wheel


class WheelContentsTests(SynchronousTestCase):
    """What the wheel holds."""

    def test_wheel_plugin_layout(self) -> None:
        """
        The wheel has twisted/plugins/bulklq_plugin.py and the bulklq package, and neither
        twisted/__init__.py, twisted/plugins/__init__.py nor any dropin.cache, even when the
        source tree has a stray dropin.cache (it would overwrite Twisted's on install).
        """
        source = Path(self.mktemp()).resolve()
        source.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(ROOT / name, source / name)
        shutil.copytree(
            ROOT / "bulklq", source / "bulklq", ignore=shutil.ignore_patterns("__pycache__")
        )
        plugins = source / "twisted" / "plugins"
        plugins.mkdir(parents=True)
        shutil.copy(ROOT / "twisted/plugins/bulklq_plugin.py", plugins)
        (plugins / "dropin.cache").write_bytes(b"stray cache from a development run")
        wheel = build_wheel(source, source / "dist")
        names = set(zipfile.ZipFile(wheel).namelist())
        self.assertIn("twisted/plugins/bulklq_plugin.py", names)
        self.assertIn("bulklq/tap.py", names)
        self.assertIn("bulklq/py.typed", names)
        self.assertNotIn("twisted/__init__.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        self.assertEqual([name for name in names if name.endswith("dropin.cache")], [])
        self.assertEqual(
            [name for name in names if name.startswith("twisted/")],
            ["twisted/plugins/bulklq_plugin.py"],
        )

    def test_source_tree_has_no_twisted_init(self) -> None:
        """The source tree itself has no __init__.py in twisted/ or twisted/plugins/."""
        self.assertFalse((ROOT / "twisted/__init__.py").exists())
        self.assertFalse((ROOT / "twisted/plugins/__init__.py").exists())
        self.assertIn("dropin.cache", (ROOT / ".gitignore").read_text().split())


class InstalledPluginTests(SynchronousTestCase):
    """The installed plugin, as twistd and twist see it."""

    def test_twistd_lists_bulklq(self) -> None:
        """twistd --help lists the bulklq subcommand."""
        result = subprocess.run(
            [str(BIN / "twistd"), "--help"], check=False, capture_output=True, text=True, timeout=60
        )
        self.assertIn("bulklq", result.stdout)
        self.assertIn("Bulk Leasequery", result.stdout)

    def test_twist_lists_bulklq(self) -> None:
        """twist --help lists the bulklq subcommand."""
        result = subprocess.run(
            [str(BIN / "twist"), "--help"], check=False, capture_output=True, text=True, timeout=60
        )
        self.assertIn("bulklq", result.stdout + result.stderr)

    def test_plugin_is_the_service_maker(self) -> None:
        """The plugin module holds one IServiceMaker pointing at bulklq.tap."""
        from twisted.application.service import IServiceMaker
        from twisted.plugin import getPlugins

        makers = [maker for maker in getPlugins(IServiceMaker) if maker.tapname == "bulklq"]
        self.assertEqual(len(makers), 1)
        self.assertEqual(makers[0].module, "bulklq.tap")
