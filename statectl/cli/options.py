"""Options shared by several commands (exact names: scripts depend on them)."""

from __future__ import annotations

from typing import Annotated

import typer

from statectl.cli.render import Output

Dag = Annotated[str | None, typer.Option("--dag", help="DAG id of the task scope.")]
Run = Annotated[str | None, typer.Option("--run", help="Run id of the task scope.")]
Task = Annotated[str | None, typer.Option("--task", help="Task id of the task scope.")]
MapIndex = Annotated[int | None, typer.Option("--map-index", help="Map index (default -1, not mapped).")]
Asset = Annotated[str | None, typer.Option("--asset", help="Asset scope, by asset name.")]
AssetUri = Annotated[str | None, typer.Option("--asset-uri", help="Asset scope, by asset URI.")]
OutputOpt = Annotated[
    Output | None,
    typer.Option("-o", "--output", help="Output format (default: table on a terminal, plain otherwise)."),
]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Show what would change and change nothing.")]
