"""`sparc-eval plugins`: every runner, reader, model loader and objective, and the distribution that provides it."""

from __future__ import annotations

import typer

from sparc_eval.cli.app import app, console


def _registries() -> list:
    """The four registries, each from its own layer (sparc_eval.registry)."""
    from sparc_eval.data.registry import READERS
    from sparc_eval.models.loaders import LOADERS
    from sparc_eval.models.objectives import OBJECTIVES
    from sparc_eval.tasks.runner import RUNNERS

    return [RUNNERS, READERS, LOADERS, OBJECTIVES]


def _version(source: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(source)
    except metadata.PackageNotFoundError:  # e.g. an entry registered at run time
        return ""


@app.command("plugins")
def plugins_list(
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    check: bool = typer.Option(False, "--check", help="Import every entry too; the first that fails is one error line, exit 2."),
) -> None:
    """List what sparc-eval can be extended with: runners (task kinds), readers (dataset formats), loaders
    (checkpoint sources, --ckpt SOURCE:SPEC) and objectives, each with the distribution that provides it:
    sparc-eval itself or a plugin package (entry-point groups sparc_eval.runners, .readers, .loaders, .objectives).

    Example: sparc-eval plugins --check
    """
    import json

    from rich.table import Table

    rows = []
    for registry in _registries():
        for name, entry in sorted(registry.entries().items()):
            if check:
                registry.get(name)  # a plugin that fails to import raises a SparcEvalError naming it
            rows.append(
                {
                    "kind": registry.kind,
                    "name": name,
                    "target": entry.target,
                    "source": entry.source,
                    "builtin": entry.source == "sparc-eval",
                    "version": _version(entry.source),
                    "group": registry.group,
                }
            )
    if json_out:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="runners, readers, loaders and objectives")
    for column in ("kind", "name", "source", "version", "target"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["kind"], row["name"], row["source"], row["version"], row["target"])
    console.print(table)
    if check:
        console.print(f"all {len(rows)} entries import")
