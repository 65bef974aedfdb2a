"""Commands about the installation: config."""

from __future__ import annotations

import sys

import typer

from statectl.cli import options as opt
from statectl.cli.app import state
from statectl.cli.render import Output, default_output, dumps, write_records

app = typer.Typer()


@app.command("config")
def config_cli(ctx: typer.Context, output: opt.OutputOpt = None) -> None:
    """Show the effective settings and where each came from (passwords masked)."""
    config = state(ctx).config()
    records = [{"setting": s.option.name, "value": s.display_value, "source": s.source} for s in config.describe()]
    fmt = output or default_output(sys.stdout)
    if fmt is Output.json:
        sys.stdout.write(dumps({"config_file": str(config.config_file), "settings": records}) + "\n")
        return
    write_records(records, ["setting", "value", "source"], fmt, sys.stdout)
