"""Options shared by several commands (exact names: scripts depend on them), and the question
a writing command asks before it changes anything."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from statectl.cli.render import Output
from statectl.errors import UsageError

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
Assets = Annotated[bool, typer.Option("--assets", help="Only asset state.")]
Tasks = Annotated[bool, typer.Option("--tasks", help="Only task state.")]
ShardOpt = Annotated[
    str | None,
    typer.Option(
        "--shard",
        help="Only shard I of N (e.g. 0/4): the task state of the dags whose hash mod N is I and the objects "
        "in their folders; asset state is shard 0's. The N shards together are one unsharded run.",
        metavar="I/N",
    ),
]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Run without asking (cron, scripts).")]


def require_yes(*, dry_run: bool, yes: bool, what: str) -> bool:
    """Whether a person is at the terminal; a script must say --yes (or --dry-run) to change anything."""
    interactive = sys.stdin.isatty() and sys.stderr.isatty()
    if not dry_run and not yes and not interactive:
        raise UsageError(f"refusing to {what} without --yes when not on a terminal (or use --dry-run)")
    return interactive


def ask(question: str) -> bool:
    """A yes/no question on stderr (the plan was shown there just before); no is the default."""
    return typer.confirm(question, default=False, err=True)
