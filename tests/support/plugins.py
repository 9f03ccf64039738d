"""Fake plug-in distributions: a module and its entry point in a folder put on the path, as pip
would install a third-party plug-in."""

from __future__ import annotations

import textwrap
from pathlib import Path


def fake_distribution(site: Path, package: str, plugin: str, source: str) -> None:
    """Install, in ``site``, a distribution ``package`` whose entry point ``plugin`` is a module."""
    module = f"{package.replace('-', '_')}_{plugin.replace('-', '_')}"
    (site / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    info = site / f"{package.replace('-', '_')}-1.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 1.0\n", encoding="utf-8")
    with (info / "entry_points.txt").open("a", encoding="utf-8") as entry_points:
        if entry_points.tell() == 0:
            entry_points.write("[mer]\n")
        entry_points.write(f"{plugin} = {module}\n")
