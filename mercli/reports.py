"""Rich tables for what the commands show a person (on stderr)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from rich.table import Table

from mercli.contracts import Check


def plugins_table(inventory: dict[str, list[dict[str, Any]]]) -> Table:
    table = Table(title="Installed plug-ins")
    for column in ("stage", "name", "version", "details", "package"):
        table.add_column(column)
    for stage, rows in inventory.items():
        if not rows:
            table.add_row(stage, "[dim](none)[/]", "", "", "")
        for row in rows:
            details = ", ".join(
                f"{key} {row[key]}" for key in ("modality", "level", "dim", "needs_network", "uses_embeddings")
                if key in row and row[key] is not None
            )
            package = f"{row['package']} {row['package_version']}"
            table.add_row(stage, row["name"], row["version"], details or row["description"], package)
    return table


def checks_table(checks: Iterable[Check]) -> Table:
    table = Table(title="mer doctor")
    for column in ("", "check", "detail"):
        table.add_column(column)
    for check in checks:
        mark = "[green]ok[/]" if check.ok else ("[red]FAIL[/]" if check.required else "[yellow]warn[/]")
        table.add_row(mark, check.name, check.detail)
    return table


def config_table(settings: dict[str, dict[str, dict[str, Any]]], workspace: Path, file: Path | None) -> Table:
    table = Table(title=f"Configuration (workspace {workspace}, file {file or 'none'})")
    for column in ("setting", "value", "source"):
        table.add_column(column)
    for section, values in settings.items():
        for key, setting in values.items():
            table.add_row(f"{section}.{key}", repr(setting["value"]), setting["source"])
    return table
